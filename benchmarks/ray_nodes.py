"""csra tag --engine ray on 1, 2 and 3 nodes of one machine (ray.cluster_utils.Cluster, 2 CPUs a
node), default model: time to the first record and the steady rate (first record to last), read
from the journal as the run writes it; the local engine on the same photos for comparison.

    python benchmarks/voc_val_list.py ../shared/data/voc2007/VOCdevkit val | head -500 > /tmp/voc500.txt
    python benchmarks/ray_nodes.py /tmp/voc500.txt

On a 2-core machine the nodes share the same two cores: more nodes add scheduling, not compute;
the figures show the engine's overhead and that it spreads work, not a speed-up.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray.cluster_utils


def timed_run(paths_file: str, env: dict, engine: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="csra-nodes-") as tmp:
        out = Path(tmp) / "tags.jsonl"
        journal = out.with_name(f".{out.name}.partial.jsonl")
        cmd = [sys.executable, "-m", "csra_cli", "tag", "-", "-o", str(out), "-q", "--engine", engine]
        start = time.time()
        with open(paths_file) as fh:
            proc = subprocess.Popen(cmd, stdin=fh, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first = None
        seen = []  # (time, records so far)
        while proc.poll() is None:
            try:
                n = journal.read_bytes().count(b"\n")
            except FileNotFoundError:
                n = 0
            if n and first is None:
                first = time.time()
            if n:
                seen.append((time.time(), n))
            time.sleep(0.05)
        end = time.time()
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.read().decode())
        total = sum(1 for _ in out.open())
        last_t, last_n = seen[-1] if seen else (end, total)
        first_n = seen[0][1] if seen else 0
        return {"engine": engine, "images": total, "wall_s": round(end - start, 2),
                "first_record_s": round((first or end) - start, 2),
                "steady_images_per_s": round((last_n - first_n) / max(last_t - first, 1e-9), 1) if first else None}


def main(paths_file: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    results = [timed_run(paths_file, env, "local")]
    for nodes in (1, 2, 3):
        cluster = ray.cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        try:
            r = timed_run(paths_file, {**env, "RAY_ADDRESS": cluster.address}, "ray")
        finally:
            cluster.shutdown()
        results.append({"nodes": nodes, **r})
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"cpu_cores": os.cpu_count(), "runs": results}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
