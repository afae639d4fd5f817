"""``csra eval``."""
from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np
import typer

from .cli import app, default_workers, get_runner, handle_errors
from .console import err, info, make_progress, progress_enabled, warn
from .errors import CSRAError


@app.command("eval")
@handle_errors
def eval_cmd(
    dataset: str = typer.Option(..., help="voc, coco or csv."),
    root: Optional[str] = typer.Option(None, help="VOC: VOCdevkit or VOC2007 folder."),
    split: str = typer.Option("test", help="VOC split (difficult-only classes are ignored on test)."),
    annotations: Optional[str] = typer.Option(None, help="COCO: instances JSON (2014 or 2017)."),
    images: Optional[str] = typer.Option(None, help="COCO: images folder."),
    labels: Optional[str] = typer.Option(None, help="CSV: labels file with the columns path,tags."),
    tag_sep: str = typer.Option(";", help="CSV: tag separator."),
    class_map: Optional[str] = typer.Option(None, help="Dataset name -> model name: JSON or CSV file, or coco-to-voc / voc-to-coco."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or file (default: shipped model)."),
    arch: Optional[str] = typer.Option(None),
    heads: Optional[int] = typer.Option(None),
    lam: Optional[float] = typer.Option(None),
    class_names: Optional[str] = typer.Option(None, "--class-names", help="Class names of an official .pth."),
    scores: Optional[str] = typer.Option(None, "--scores", help="Evaluate this scores CSV instead of running a model."),
    save_scores: Optional[str] = typer.Option(None, "--save-scores", help="Write image x class scores to this CSV."),
    calibrate: Optional[str] = typer.Option(None, "--calibrate", help="Write per-class F1-maximising thresholds (JSON)."),
    threshold: float = typer.Option(0.5, "--threshold", "-t"),
    ap: str = typer.Option("exact", "--ap", help="exact (non-interpolated, as the paper) or voc07-11pt."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the full report as JSON (- for stdout)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b"),
    workers: int = typer.Option(-1, "--workers", "-j"),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("auto"),
    backend: str = typer.Option("auto", help="auto (onnxruntime on CPU, PyTorch on GPU), torch, or onnx."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """mAP (paper protocol), CP/CR/CF1/OP/OR/OF1 and per-class numbers on a labelled set."""
    from .data_args import open_dataset
    from .evaluation import align_scores, match_classes, read_class_map, read_scores, score_images, write_scores
    from .loader import set_threads
    from .metrics import best_f1_thresholds, evaluate

    if ap not in ("exact", "voc07-11pt"):
        raise CSRAError("--ap: use exact or voc07-11pt")
    data = open_dataset(dataset, root, split, annotations, images, labels, tag_sep)
    if len(data) == 0:
        raise CSRAError(f"{data.name}: no labelled images")
    started = time.time()
    failures: list = []
    card = None
    if scores:
        score_paths, model_classes, all_scores = read_scores(scores)
        all_scores = align_scores(data, score_paths, all_scores)
        model_name = scores
    else:
        workers = default_workers() if workers < 0 else workers
        set_threads()
        runner = get_runner(model, backend, device, precision, arch, heads, lam, class_names)
        card, model_classes, model_name = runner.card, runner.card.classes, runner.card.name
        show = progress_enabled(quiet)
        progress = task = None
        if show:
            progress, task = make_progress(len(data), "scoring")
            progress.start()
        try:
            all_scores, failures = score_images(runner, data.paths, batch_size, workers,
                                                (lambda n: progress.advance(task, n)) if progress else None)
        finally:
            if progress:
                progress.stop()
        if save_scores:
            write_scores(save_scores, data.paths, model_classes, all_scores)
    data_cols, model_cols, left_data, left_model = match_classes(data, model_classes, read_class_map(class_map))
    if left_data and not quiet:
        warn(f"dataset classes without a model class, left out: {', '.join(left_data)}")
    classes = [model_classes[c] for c in model_cols]
    lab = data.labels[:, data_cols]
    sc = all_scores[:, model_cols]
    readable = ~np.isnan(sc).any(axis=1)
    if (~readable).any() and not failures:
        failures = [(p, "no score") for p, ok in zip(data.paths, readable) if not ok]
    report = evaluate(sc[readable], lab[readable], classes, threshold, ap)
    if card is not None and card.thresholds:
        per = [card.thresholds.get(c, card.threshold) for c in classes]
        at = evaluate(sc[readable], lab[readable], classes, per, ap)
        report["model_thresholds"] = {k: at[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    report.update({
        "model": model_name, "dataset": data.name, "split": split if dataset == "voc" else None,
        "threshold": threshold, "ap": ap, "classes_evaluated": classes, "dataset_classes_left_out": left_data,
        "model_classes_unmatched": left_model, "num_images_labelled": len(data),
        "num_images_failed": len(failures), "failed": [{"path": p, "error": e} for p, e in failures],
        "seconds": round(time.time() - started, 2),
    })
    if calibrate:
        from .checkpoint import atomic_write_bytes
        from pathlib import Path

        t = best_f1_thresholds(sc[readable], lab[readable])
        atomic_write_bytes(Path(calibrate), json.dumps({c: round(float(v), 4) for c, v in zip(classes, t)},
                                                        indent=2).encode())
    if not quiet:
        print_report(report)
    if json_out:
        text = json.dumps(finite(report), indent=2, allow_nan=False) + "\n"
        if json_out == "-":
            typer.echo(text, nl=False)
        else:
            from .checkpoint import atomic_write_bytes
            from pathlib import Path

            atomic_write_bytes(Path(json_out), text.encode())
    if failures:
        warn(f"{len(failures)} images could not be read and are not in the metrics (listed under 'failed')")
        raise typer.Exit(1)


def finite(obj):
    """NaN (a metric with nothing to average) becomes null, so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def print_report(r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{r['model']} on {r['dataset']} ({r['num_images']} images, {r['seconds']} s)")
    for col in ("class", "AP", "P", "R", "positives"):
        t.add_column(col, justify="right" if col != "class" else "left")
    for c, v in r["per_class"].items():
        t.add_row(c, "-" if v["AP"] is None else f"{v['AP']:.1f}", f"{v['precision']:.1f}", f"{v['recall']:.1f}",
                  str(v["positives"]))
    err.print(t)
    line = "  ".join(f"{k} {r[k]:.1f}" for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"))
    err.print(f"[bold]{line}[/]  (threshold {r['threshold']})")
    if "model_thresholds" in r:
        mt = r["model_thresholds"]
        err.print("at the model's per-class thresholds: " + "  ".join(f"{k} {mt[k]:.1f}" for k in mt))
    if r["classes_without_positives"]:
        err.print(f"classes with no positive (not in mAP): {', '.join(r['classes_without_positives'])}")
