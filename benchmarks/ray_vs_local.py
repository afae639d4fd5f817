"""The Ray engine against the local engine on the same images, default model, one run each.

    python benchmarks/voc_val_list.py ../shared/data/voc2007/VOCdevkit val > /tmp/voc_val.txt
    python benchmarks/ray_vs_local.py /tmp/voc_val.txt

Prints JSON: wall time with start-up, the steady rate (first record to last) and the time to the
first record, for each engine; the tags of both runs are compared.
"""
import json
import sys
import time

import numpy as np

from csra_cli.engine.device import set_threads
from csra_cli.engine.ray_engine import run_tagging_ray
from csra_cli.engine.run_spec import RunSpec
from csra_cli.engine.runners import build_runner
from csra_cli.engine.tagging import TagPolicy, run_tagging


class Collect:
    """A sink that keeps the records and when each batch arrived."""

    def __init__(self):
        self.records, self.times, self.done = [], [], set()

    def write(self, rec):
        self.records.append(rec)

    def flush(self):
        self.times.append(time.time())


def measure(name, run):
    sink, started = Collect(), time.time()
    run(sink)
    first, last = sink.times[0], sink.times[-1]
    n = len(sink.records)
    return sink.records, {"engine": name, "images": n, "wall_s": round(last - started, 2),
                          "first_record_s": round(first - started, 2),
                          "steady_images_per_s": round(n / max(last - first, 1e-9), 1)}


def main(list_file: str, batch_size: int = 16):
    paths = [ln.strip() for ln in open(list_file) if ln.strip()]
    set_threads()
    run = RunSpec(batch_size=batch_size, workers=1)  # the shipped model, --backend auto (onnxruntime on the CPU)
    runner = build_runner(run.model, run)
    policy = TagPolicy(np.array(runner.card.class_thresholds()))
    local, local_stats = measure("local", lambda s: run_tagging(runner, paths, [s], policy, run))
    on_ray, ray_stats = measure("ray", lambda s: run_tagging_ray(runner, paths, [s], policy, run))
    same = sum(a["tags"] == b["tags"] for a, b in zip(local, on_ray))
    print(json.dumps({"local": local_stats, "ray": ray_stats, "same_tags": f"{same}/{len(paths)}",
                      "overhead_wall": round(ray_stats["wall_s"] / local_stats["wall_s"], 2),
                      "overhead_steady": round(local_stats["steady_images_per_s"]
                                               / ray_stats["steady_images_per_s"], 2)}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
