"""``csra bench``: our pipeline against two baselines measured in the same run.

* model only: preprocessed batches already in memory;
* end to end: decode + preprocess + model through the same streaming loader as ``csra tag``;
* demo-style baseline: one image at a time, PIL open, Resize, ToTensor, fp32 forward;
* val-style baseline: torchvision transforms in a DataLoader, batch 16, fp32 (official val.py).
"""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..cpu import cpu_cores, cpu_info
from ..models.csra import torch_probabilities
from ..models.loading import load_spec
from .run_spec import RunSpec


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its finished worker processes (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def synthetic_images(n: int, folder: Path, size=(500, 375)) -> list[str]:
    """n JPEG photos-like images (smooth gradients plus noise), the size of a VOC image."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    paths = []
    for i in range(n):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 7) % 256, (xx + yy) % 256], -1)
        arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"synthetic_{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


def _latencies(times: list[float]) -> dict:
    if not times:
        return {"p50_ms": None, "p95_ms": None}
    a = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2)}


def _random_batch(runner, batch_size: int) -> np.ndarray:
    size = runner.card.input_size
    return np.random.default_rng(0).integers(0, 256, (batch_size, 3, size, size), dtype=np.uint8)


def bench_model_only(runner, batch_size: int, repeats: int = 3) -> dict:
    batch = _random_batch(runner, batch_size)
    runner(batch)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner(batch)
        _sync(runner)
        times.append(time.perf_counter() - t)
    return {"images_per_s": round(batch_size * len(times) / sum(times), 2), **_latencies(times)}


def _sync(runner) -> None:
    device = getattr(runner, "device", None)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_pipeline(runner, paths: list[str], batch_size: int, workers: int, pool=None) -> tuple[dict, dict]:
    """Our streaming loop, as ``csra tag`` runs it (the model one batch ahead of the caller);
    returns the timing (with the share of the run the model waited for decoded images) and each
    image's score vector (for agreement). ``pool``: a DecodePool to reuse."""
    from ..data.loader import LoaderStats, scored_batches, stream_batches

    scores, times = {}, []
    waits = LoaderStats()
    start = last = time.perf_counter()
    batches = stream_batches(paths, runner.pre, batch_size, workers, runner.pin, pool=pool, stats=waits)
    for decoded, probs in scored_batches(runner, batches):
        good = [i for i, e in enumerate(decoded.errors) if not e]
        for r, i in enumerate(good):
            scores[decoded.paths[i]] = probs[r]
        now = time.perf_counter()
        times.append(now - last)
        last = now
    total = time.perf_counter() - start
    return {"images_per_s": round(len(paths) / total, 2), "seconds": round(total, 2),
            "model_idle_pct": round(100 * waits.idle_share, 1), **_latencies(times)}, scores


CEILING_IMAGES = 400


def bench_against_ceiling(runner, paths: list[str], batch_size: int, workers: int, rounds: int = 3) -> dict:
    """End to end against the model alone on the same photos, with the same runner (precision,
    lanes, threads), in alternating rounds (the order reversed every round, so that a machine
    whose speed drifts slows both alike): model only runs the photos decoded beforehand, batch
    by batch, as the pipeline hands them over; end to end decodes them from their files through
    one decode pool kept for the rounds (its start is start-up, timed apart). Both hand batches
    to the model the same way (``scored_batches``). The share is the median of the rounds' ratios."""
    from ..data.loader import DecodePool, scored_batches, stream_batches

    paths = paths[:CEILING_IMAGES]  # held decoded in memory: ~0.8 MB an image at 512 px
    decoded = list(stream_batches(paths, runner.pre, batch_size, workers))
    n = sum(len(d.paths) for d in decoded)
    with DecodePool(runner.pre, workers) as pool:
        bench_pipeline(runner, paths[: batch_size * 4], batch_size, workers, pool)  # warm-up; the workers start
        rates = {"model_only": [], "end_to_end": []}
        for i in range(rounds):
            for kind in ("model_only", "end_to_end") if i % 2 == 0 else ("end_to_end", "model_only"):
                t = time.perf_counter()
                if kind == "model_only":  # the same queueing as end to end, minus the decoding
                    for _ in scored_batches(runner, decoded):
                        pass
                    _sync(runner)
                else:
                    bench_pipeline(runner, paths, batch_size, workers, pool)
                rates[kind].append(round(n / (time.perf_counter() - t), 2))
    shares = [e / m for e, m in zip(rates["end_to_end"], rates["model_only"])]
    return {"model_only_images_per_s": round(float(np.median(rates["model_only"])), 2),
            "end_to_end_images_per_s": round(float(np.median(rates["end_to_end"])), 2),
            "end_to_end_share_of_model_only": round(float(np.median(shares)), 3), "rounds": rates,
            "images": n, "lanes": getattr(runner, "lanes", None)}


def _timed(cmd: list[str], env: dict | None = None) -> float:
    import subprocess

    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - t


def bench_startup(model_name, image: str, precision: str, tries: int = 3) -> dict:
    """Wall time of whole processes, best of ``tries`` each, in turn: `python -c "import torch"`
    (the yardstick), `csra --version`, and `csra tag` of one image (its export already cached by
    this run)."""
    csra = [sys.executable, "-m", "csra_cli"]
    model = ["-m", model_name] if model_name else []
    commands = {"import_torch_s": [sys.executable, "-c", "import torch"], "version_s": csra + ["--version"],
                "tag_one_s": csra + ["tag", image, "--out", "-", "-q", "--precision", precision] + model}
    _timed(commands["tag_one_s"])  # once first: the saved optimised graph is written by a first run
    times = {k: float("inf") for k in commands}
    for _ in range(tries):
        for k, cmd in commands.items():
            times[k] = min(times[k], _timed(cmd))
    base = times["import_torch_s"]
    return {**{k: round(v, 3) for k, v in times.items()},
            "version_vs_import_torch": round(times["version_s"] / base, 2),
            "tag_one_vs_import_torch": round(times["tag_one_s"] / base, 2)}


def bench_whole_process(model_name, paths: list[str], precision: str, batch_size: int, workers: int) -> dict:
    """`csra tag` on the images as a whole process, start-up and writing included."""
    with tempfile.TemporaryDirectory(prefix="csra-bench-") as tmp:
        listing = Path(tmp) / "paths.txt"
        listing.write_text("\n".join(paths) + "\n")
        cmd = [sys.executable, "-m", "csra_cli", "tag", "-", "-o", str(Path(tmp) / "tags.csv"), "-q",
               "--precision", precision, "-b", str(batch_size), "-j", str(workers)]
        cmd += ["-m", model_name] if model_name else []
        import subprocess

        t = time.perf_counter()
        with open(listing) as fh:
            subprocess.run(cmd, stdin=fh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        total = time.perf_counter() - t
    return {"images_per_s": round(len(paths) / total, 2), "seconds": round(total, 2)}


def whole_process_vs_demo(torch_model, model_name, paths: list[str], precision: str, batch_size: int,
                         workers: int, rounds: int = 3) -> dict:
    """``csra tag`` as a whole process and the demo-style loop, ``rounds`` times each, the order
    reversed every round; the ratio is the median of the rounds' (a machine whose speed drifts
    slows both alike)."""
    runs = {"whole_process": [], "demo_style": []}
    for i in range(rounds):
        for kind in ("whole_process", "demo_style") if i % 2 == 0 else ("demo_style", "whole_process"):
            runs[kind].append(bench_whole_process(model_name, paths, precision, batch_size, workers)
                              if kind == "whole_process" else bench_demo_style(torch_model, paths))
    ratios = [d["seconds"] / w["seconds"] for w, d in zip(runs["whole_process"], runs["demo_style"])]
    pick = int(np.argsort(ratios)[len(ratios) // 2])  # the median round's own figures
    return {"whole_process": {**runs["whole_process"][pick], "rounds_s": [r["seconds"] for r in runs["whole_process"]]},
            "demo_style": {**runs["demo_style"][pick], "rounds_s": [r["seconds"] for r in runs["demo_style"]]},
            "ratios": {"whole_process_tag_vs_demo": round(float(np.median(ratios)), 2),
                       "whole_process_tag_vs_demo_rounds": [round(r, 2) for r in ratios]}}


def _official_transform(card):
    from torchvision import transforms

    steps = [transforms.Resize((card.input_size, card.input_size)), transforms.ToTensor()]
    if card.mean is not None:
        steps.append(transforms.Normalize(card.mean, card.std))
    return transforms.Compose(steps)


def bench_demo_style(model, paths: list[str]) -> dict:
    """One image at a time, as the official demo.py does."""
    from PIL import Image

    tf = _official_transform(model.card)
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    times = []
    start = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            t = time.perf_counter()
            x = tf(Image.open(p).convert("RGB")).unsqueeze(0)
            model(x)
            times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    return {"images_per_s": round(len(paths) / total, 2), "seconds": round(total, 2), **_latencies(times)}


class _OfficialDataset(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.open(self.paths[i]).convert("RGB")), self.paths[i]


def bench_val_style(model, paths: list[str], workers: int) -> tuple[dict, dict]:
    """torchvision transforms in a DataLoader, batch 16, fp32, as the official val.py."""
    loader = torch.utils.data.DataLoader(_OfficialDataset(paths, _official_transform(model.card)), batch_size=16,
                                         num_workers=workers, shuffle=False)
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    scores, times = {}, []
    start = last = time.perf_counter()
    with torch.no_grad():
        for x, batch_paths in loader:
            probs = torch_probabilities(model(x), model.card)
            scores.update(zip(batch_paths, probs))
            now = time.perf_counter()
            times.append(now - last)
            last = now
    total = time.perf_counter() - start
    return {"images_per_s": round(len(paths) / total, 2), "seconds": round(total, 2), **_latencies(times)}, scores


def tag_agreement(ours: dict, reference: dict, thresholds: np.ndarray) -> float:
    """Share of images whose tag set is the same under both preprocessings (%)."""
    common = [p for p in ours if p in reference]
    if not common:
        return float("nan")
    same = sum(bool(np.array_equal(ours[p] >= thresholds, reference[p] >= thresholds)) for p in common)
    return round(100.0 * same / len(common), 2)


def _precision_twin(runner, run: RunSpec):
    """The same model in the other CPU precision (int8 for an fp32 onnxruntime run, fp32 for an
    int8 one) as (precision, runner); None where there is no int8 export of it."""
    from .runners import OnnxRunner, build_runner

    other = {"fp32": "int8", "int8": "fp32"}.get(getattr(runner, "precision", ""))
    if (not isinstance(runner, OnnxRunner) or other is None or run.precision not in ("auto", "fp32", "int8")
            or run.model.is_onnx):
        return None
    try:
        twin = build_runner(run.model, RunSpec(models=run.models, device="cpu", precision=other))
    except Exception:  # no int8 export: nothing to compare
        return None
    ok = isinstance(twin, OnnxRunner) and twin.precision == other and twin.path != runner.path
    return (other, twin) if ok else None


def alternating_rates(runners: dict, batch: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """images/s of each runner on ``batch``, once per round after one warm-up each, the order
    reversed every round (ABBA)."""
    for r in runners.values():
        r(batch)  # warm-up
    rates = {k: [] for k in runners}
    order = list(runners)
    for i in range(rounds):
        for k in order if i % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            runners[k](batch)
            _sync(runners[k])
            rates[k].append(round(len(batch) / (time.perf_counter() - t), 2))
    return rates


def bench_int8_vs_fp32(runners: dict, batch_size: int, rounds: int = 4) -> dict:
    """Model-only speed of int8 against fp32, one batch each per round, the order reversed every
    round (ABBA), so that a machine whose speed drifts during the run (RESULTS.md saw 2x) slows
    both alike; the ratio is the median of the rounds'."""
    rates = alternating_rates(runners, _random_batch(next(iter(runners.values())), batch_size), rounds)
    ratio = float(np.median([a / b for a, b in zip(rates["int8"], rates["fp32"])]))
    return {**{f"model_only_{p}": {"images_per_s": round(float(np.median(v)), 2), "rounds": v}
               for p, v in rates.items()},
            "int8_vs_fp32_model_only": round(ratio, 2)}


def run_bench(run: RunSpec, images: list[str] | None, synthetic: int, baselines: bool = True, log=None,
              whole_process: bool = False) -> dict:
    """``run``'s model as it says to run it (its ``workers`` already resolved), on ``images`` or
    ``synthetic`` generated ones."""
    from .runners import build_runner, precision_of

    tmp = None
    if not images:
        tmp = tempfile.TemporaryDirectory(prefix="csra-bench-")
        images = synthetic_images(synthetic, Path(tmp.name))
    model_name, batch_size, workers, precision = run.model.source, run.batch_size, run.workers, run.precision
    runner = build_runner(run.model, run)
    card = runner.card
    say = log or (lambda m: None)
    result = {"model": card.name, "arch": card.arch, "input_size": card.input_size,
              "backend": "onnxruntime" if type(runner).__name__ == "OnnxRunner" else "torch",
              "runner_precision": precision_of(runner), "cpu_lanes": getattr(runner, "lanes", None), **cpu_info(),
              "device": str(getattr(runner, "device", "cpu")), "precision": precision, "batch_size": batch_size,
              "workers": workers, "images": len(images), "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "cpu_cores": cpu_cores(), "python": sys.version.split()[0],
              "torch": torch.__version__}
    say("model only …")
    result["model_only"] = bench_model_only(runner, batch_size)
    say("end to end (ours) …")
    bench_pipeline(runner, images[: min(len(images), batch_size * 2)], batch_size, workers)  # warm-up
    result["end_to_end"], ours = bench_pipeline(runner, images, batch_size, workers)
    say("end to end against model only on the same photos (alternating rounds) …")
    result["ceiling"] = bench_against_ceiling(runner, images, batch_size, workers)
    twin = _precision_twin(runner, run)
    if twin is not None:  # the same model in the other CPU precision, for the speed ratio
        say("model only, int8 against fp32 (alternating) …")
        result.update(bench_int8_vs_fp32({result["runner_precision"]: runner, twin[0]: twin[1]}, batch_size))
    whole = whole_process and run.backend == "auto" and not run.model.is_onnx
    if whole:
        say("start-up …")
        result["startup"] = bench_startup(model_name, images[0], precision)
    if baselines and not run.model.is_onnx:  # PyTorch loops of the same model
        torch_model = load_spec(run.model)
        torch.set_num_threads(cpu_cores())  # the baselines run in PyTorch
        if whole:  # csra tag as a whole process against the demo loop, in alternating rounds
            say("whole process: csra tag against the demo-style loop, alternating rounds …")
            result.update(whole_process_vs_demo(torch_model, model_name, images, precision, batch_size, workers))
        else:
            say("baseline: demo-style loop …")
            result["demo_style"] = bench_demo_style(torch_model, images)
        say("baseline: val-style loop …")
        result["val_style"], ref = bench_val_style(torch_model, images, workers)
        e2e = result["end_to_end"]["images_per_s"]
        result["ratios"] = {**result.get("ratios", {}),
                            "end_to_end_vs_demo": round(e2e / result["demo_style"]["images_per_s"], 2),
                            "end_to_end_vs_val": round(e2e / result["val_style"]["images_per_s"], 2)}
        result["tags_same_as_exact_resize_pct"] = tag_agreement(ours, ref, np.array(card.class_thresholds()))
    elif whole:
        say("whole process: csra tag …")
        result["whole_process"] = bench_whole_process(model_name, images, precision, batch_size, workers)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if tmp:
        tmp.cleanup()
    return result
