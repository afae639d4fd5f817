"""The one current speed table of benchmarks/RESULTS.md and the README, from one run:
the default and `fast`, each in int8 and fp32 (model only, end to end against model only on the
same photos, `csra tag` as a whole process), the demo-style and val-style loops, a plain
onnxruntime script on the exported file, camera-size photos, and the start-up times.

    python benchmarks/voc_val_list.py ../shared/data/voc2007/VOCdevkit val | head -200 > /tmp/val200.txt
    python benchmarks/camera_photos.py /tmp/val200.txt /tmp/camera12mp 100 > /tmp/camera100.txt
    python benchmarks/current_table.py /tmp/val200.txt /tmp/camera100.txt /tmp/current_table.json

Writes every measurement as JSON and prints the markdown table. Run it on a quiet machine: it
takes about 10 minutes on 2 cores."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def plain_onnxruntime(path: str, paths: list[str], size: int, mean, std) -> dict:
    """What a user's own script on the exported file does: one image at a time, PIL decode and
    resize, numpy normalisation, an InferenceSession with onnxruntime's default threads."""
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
        if mean is not None:
            x = (x - np.array(mean, np.float32).reshape(1, 3, 1, 1)) / np.array(std, np.float32).reshape(1, 3, 1, 1)
        session.run(None, {name: x})
    seconds = time.perf_counter() - start
    return {"images_per_s": round(len(paths) / seconds, 2), "seconds": round(seconds, 2)}


def main(voc_list: str, camera_list: str, out: str) -> None:
    from csra_cli.cpu import cpu_info, default_workers
    from csra_cli.engine.bench import bench_against_ceiling, run_bench
    from csra_cli.engine.device import set_threads
    from csra_cli.engine.run_spec import RunSpec
    from csra_cli.engine.runners import build_runner
    from csra_cli.models.spec import ModelSpec

    set_threads()
    voc = [ln.strip() for ln in Path(voc_list).read_text().splitlines() if ln.strip()]
    camera = [ln.strip() for ln in Path(camera_list).read_text().splitlines() if ln.strip()]
    results = {"cpu": cpu_info(), "images": len(voc), "camera_images": len(camera), "runs": {}}
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    for model in ("default", "fast"):
        for precision in ("int8", "fp32"):
            run = RunSpec(models=(ModelSpec(model),), precision=precision, workers=default_workers())
            log(f"== {model} {precision}")
            first = model == "default" and precision == "int8"  # the baselines once: PyTorch fp32 loops
            r = run_bench(run, voc, 0, baselines=first, log=log, whole_process=True)
            runner = build_runner(run.model, run)
            log("camera-size photos, end to end against model only …")
            r["camera"] = bench_against_ceiling(runner, camera, run.batch_size, run.workers)
            log("plain onnxruntime script …")
            r["plain_onnxruntime"] = plain_onnxruntime(runner.path, voc, runner.card.input_size,
                                                       runner.card.mean, runner.card.std)
            results["runs"][f"{model}-{precision}"] = r
            Path(out).write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict) -> str:
    runs = results["runs"]
    demo = runs["default-int8"]["demo_style"]["images_per_s"]
    rows = ["| images/s (200 VOC val photos unless said) | default int8 | default fp32 | fast int8 | fast fp32 |",
            "|---|---|---|---|---|"]

    def row(label, get):
        cells = []
        for key in ("default-int8", "default-fp32", "fast-int8", "fast-fp32"):
            try:
                cells.append(get(runs[key]))
            except (KeyError, TypeError):
                cells.append("")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    row("model only (the ceiling: decoded photos in memory)", lambda r: f"{r['ceiling']['model_only_images_per_s']}")
    row("end to end in process (decode + model)", lambda r: f"{r['ceiling']['end_to_end_images_per_s']}")
    row("**end to end / model only**", lambda r: f"**{100 * r['ceiling']['end_to_end_share_of_model_only']:.1f}%**")
    row("camera-size (12 MP) photos: model only", lambda r: f"{r['camera']['model_only_images_per_s']}")
    row("camera-size photos: end to end", lambda r: f"{r['camera']['end_to_end_images_per_s']}")
    row("**camera-size: end to end / model only**", lambda r: f"**{100 * r['camera']['end_to_end_share_of_model_only']:.1f}%**")
    row("`csra tag` as a whole process", lambda r: f"{r['whole_process']['images_per_s']}")
    row("whole process vs the default's demo-style loop", lambda r: f"{r['whole_process']['images_per_s'] / demo:.2f}×")
    row("plain onnxruntime script on the same export", lambda r: f"{r['plain_onnxruntime']['images_per_s']}")
    row("int8 vs fp32, model only (alternating rounds)", lambda r: f"{r['int8_vs_fp32_model_only']}×")
    row("one-image `csra tag` / `import torch` (best of 3)", lambda r: f"{r['startup']['tag_one_vs_import_torch']}×")
    d = runs["default-int8"]
    lines = ["\n".join(rows), "",
             f"Demo-style loop (PyTorch fp32, one image at a time): {demo} images/s; val-style loop: "
             f"{d['val_style']['images_per_s']} images/s. Whole process vs demo in alternating rounds: "
             f"{d['ratios']['whole_process_tag_vs_demo']}× (rounds {d['ratios']['whole_process_tag_vs_demo_rounds']}). "
             f"Start-up: import torch {d['startup']['import_torch_s']} s, csra --version {d['startup']['version_s']} s, "
             f"one-image tag {d['startup']['tag_one_s']} s. CPU: {results['cpu'].get('cpu_model')}, "
             f"flags {' '.join(results['cpu'].get('cpu_flags', []))}."]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":  # the table again from a run's JSON
        print(table(json.loads(Path(sys.argv[2]).read_text())))
        sys.exit()
    if len(sys.argv) != 4:
        sys.exit("usage: current_table.py VOC_LIST.txt CAMERA_LIST.txt OUT.json")
    main(*sys.argv[1:])
