"""How onnxruntime should use the CPU's cores: "threads" (one image at a time over every core)
against "lanes" (one image per core at a time, one thread each, up to 4 lanes; csra's default).

    python benchmarks/cpu_parallelism.py IMAGE_LIST [MODEL] [ROUNDS]

Model only (a batch of 16 real images, int8 and fp32, rounds alternating ABBA so that a machine
whose speed drifts slows both alike), then `csra tag` on the whole list as a whole process in each
mode (CSRA_CPU_PARALLELISM), alternating too. Prints one JSON object."""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def whole_process(paths: list[str], model: str, precision: str, mode: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CSRA_CPU_PARALLELISM": mode}
        t = time.perf_counter()
        subprocess.run(["csra", "tag", "-", "--out", f"{tmp}/tags.csv", "--model", model, "--precision", precision],
                       input="\n".join(paths), text=True, env=env, check=True, capture_output=True)
        return round(len(paths) / (time.perf_counter() - t), 2)


def main() -> None:
    from csra_cli.engine import runners as R
    from csra_cli.engine.bench import alternating_rates

    paths = open(sys.argv[1]).read().split()
    model = sys.argv[2] if len(sys.argv) > 2 else "default"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    out = {"cpu_count": os.cpu_count(), "images": len(paths), "model": model}
    for precision in ("fp32", "int8"):
        base = R.make_runner(model, "auto", "cpu", precision)
        if not isinstance(base, R.OnnxRunner) or base.precision != precision:
            sys.exit(f"{model}: no {precision} export on the CPU; run 'csra tag' with --precision {precision} once")
        cores = R.cpu_cores()
        lanes = min(cores, R.MAX_CPU_LANES)
        modes = {"threads": R.OnnxRunner(base.path, "cpu", threads=cores, card=base.card),
                 "lanes": R.OnnxRunner(base.path, "cpu", threads=cores // lanes, card=base.card, lanes=lanes)}
        batch = np.stack([base.pre.load(p) for p in paths[:16]])
        rates = alternating_rates(modes, batch, rounds)
        out[f"model_only_{precision}"] = {
            **{k: {"images_per_s": float(np.median(v)), "rounds": v} for k, v in rates.items()},
            "lanes_vs_threads": round(float(np.median([a / b for a, b in zip(rates["lanes"], rates["threads"])])), 2)}
        tagged = {"threads": [], "lanes": []}
        for i in range(2):
            for mode in ("threads", "lanes") if i % 2 == 0 else ("lanes", "threads"):
                tagged[mode].append(whole_process(paths, model, precision, mode))
        out[f"whole_process_{precision}"] = {
            **{k: {"images_per_s": float(np.median(v)), "runs": v} for k, v in tagged.items()},
            "lanes_vs_threads": round(float(np.median(tagged["lanes"]) / np.median(tagged["threads"])), 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
