"""``csra eval``."""
from __future__ import annotations

import json
import time
from typing import Annotated, Optional

import typer

from .app import (ArchOpt, BackendOpt, BatchSizeOpt, ClassNamesOpt, DeviceOpt, EngineOpt, HeadsOpt, LamOpt, ModelOpt,
                  PrecisionOpt, QuietOpt, TTAOpt, RayAddressOpt, WorkersOpt, app, check_output, handle_errors, in_range,
                  ray_spec_for, resolve_workers, runner_for)
from ..console import err, start_progress, warn
from ..errors import CSRAError
from .report import ReportOpt, check_report_path


@app.command("eval")
@handle_errors
def eval_cmd(
    dataset: Annotated[str, typer.Option(help="voc, coco or csv.")],
    root: Annotated[Optional[str], typer.Option(help="VOC: VOCdevkit or VOC2007 folder.")] = None,
    split: Annotated[str, typer.Option(help="VOC split (difficult-only classes are ignored on test).")] = "test",
    annotations: Annotated[Optional[str], typer.Option(help="COCO: instances JSON (2014 or 2017).")] = None,
    images: Annotated[Optional[str], typer.Option(help="COCO: images folder.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="CSV: labels file with the columns path,tags.")] = None,
    tag_sep: Annotated[str, typer.Option(help="CSV: tag separator.")] = ";",
    class_map: Annotated[Optional[str], typer.Option(help="Dataset name -> model name: JSON or CSV file, or coco-to-voc / voc-to-coco.")] = None,
    model: ModelOpt = None,
    arch: ArchOpt = None,
    heads: HeadsOpt = None,
    lam: LamOpt = None,
    class_names: ClassNamesOpt = None,
    scores: Annotated[Optional[str], typer.Option("--scores", help="Evaluate this scores CSV instead of running a model.")] = None,
    save_scores: Annotated[Optional[str], typer.Option("--save-scores", help="Write image x class scores to this CSV.")] = None,
    calibrate: Annotated[Optional[str], typer.Option("--calibrate", help="Write per-class F1-maximising thresholds (JSON).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", "-t", callback=in_range("--threshold", 0, 1),
                                             help="Threshold for CP/CR/CF1/OP/OR/OF1.")] = 0.5,
    ap: Annotated[str, typer.Option("--ap", help="exact (non-interpolated, as the paper) or voc07-11pt.")] = "exact",
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the full report as JSON (- for stdout).")] = None,
    html_report: ReportOpt = None,
    batch_size: BatchSizeOpt = 16,
    workers: WorkersOpt = -1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    backend: BackendOpt = "auto",
    tta: TTAOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    quiet: QuietOpt = False,
):
    """mAP (paper protocol), CP/CR/CF1/OP/OR/OF1 and per-class numbers on a labelled set.

    The report goes to stdout (a table on a terminal, plain text in a pipe or file); with
    --json - the JSON alone goes there and the table to stderr."""
    import numpy as np

    from ..data.selection import open_dataset
    from ..evaluation.scoring import align_scores, match_classes, read_class_map, read_scores, score_images, write_scores
    from ..engine.device import set_threads
    from ..engine.runners import precision_of
    from ..evaluation.metrics import best_f1_thresholds, evaluate

    if scores and tta:
        raise CSRAError("--tta changes how a model scores images; with --scores FILE no model runs")
    if ap not in ("exact", "voc07-11pt"):
        raise CSRAError("--ap: use exact or voc07-11pt")
    for flag, path in (("--json", json_out), ("--save-scores", save_scores), ("--calibrate", calibrate)):
        check_output(path, flag)
    page = check_report_path(html_report, json_out, save_scores, calibrate)
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
        workers = resolve_workers(workers)
        spec = ray_spec_for(engine, model, backend, device, precision, arch, heads, lam, class_names, tta)
        set_threads()
        runner = runner_for(model, backend, device, precision, arch, heads, lam, class_names, tta)
        card, model_classes, model_name = runner.card, runner.card.classes, runner.card.name
        progress = start_progress(len(data), "scoring", quiet)
        try:
            advance = progress.advance if progress else None
            if spec is None:
                all_scores, failures = score_images(runner, data.paths, batch_size, workers, advance)
            else:
                from ..engine.ray_engine import score_images_ray

                all_scores, failures = score_images_ray(runner, spec, data.paths, batch_size, advance, ray_address)
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
        "model": model_name, "precision": None if scores else precision_of(runner), "tta": tta, "dataset": data.name,
        "split": split if dataset == "voc" else None,
        "threshold": threshold, "ap": ap, "classes_evaluated": classes, "dataset_classes_left_out": left_data,
        "model_classes_unmatched": left_model, "num_images_labelled": len(data),
        "num_images_failed": len(failures), "failed": [{"path": p, "error": e} for p, e in failures],
        "seconds": round(time.time() - started, 2),
    })
    if calibrate:
        from ..fileio import atomic_write_bytes
        from pathlib import Path

        t = best_f1_thresholds(sc[readable], lab[readable])
        atomic_write_bytes(Path(calibrate), json.dumps({c: round(float(v), 4) for c, v in zip(classes, t)},
                                                        indent=2).encode())
    if page:
        write_eval_report(report, classes, sc[readable], lab[readable],
                          [p for p, ok in zip(data.paths, readable) if ok], threshold,
                          per if "model_thresholds" in report else None, page, quiet)
    if not quiet:
        from rich.console import Console

        print_report(report, err if json_out == "-" else Console(highlight=False))
    if json_out:
        text = json.dumps(finite(report), indent=2, allow_nan=False) + "\n"
        if json_out == "-":
            typer.echo(text, nl=False)
        else:
            from ..fileio import atomic_write_bytes
            from pathlib import Path

            atomic_write_bytes(Path(json_out), text.encode())
    if failures:
        warn(f"{len(failures)} images could not be read and are not in the metrics (listed under 'failed')")
        raise typer.Exit(1)


def write_eval_report(report, classes, scores, labels, paths, threshold, model_thresholds, page, quiet) -> None:
    from ..console import info
    from ..evaluation.metrics import pr_curve
    from ..report.eval_report import build_eval_report

    curves = [pr_curve(scores[:, j], labels[:, j]) for j in range(len(classes))]
    marks = {"threshold": [threshold] * len(classes)}
    if model_thresholds:
        marks["model's threshold"] = model_thresholds
    stats = build_eval_report(finite(report), classes, curves, scores, labels, paths, marks, page)
    if not quiet:
        info(f"report: {page} ({stats['bytes'] / 1e6:.1f} MB, {stats['seconds']:.1f} s)")


def finite(obj):
    """NaN (a metric with nothing to average) becomes null, so the JSON is strict."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def print_report(r: dict, console) -> None:
    """The per-class table and the summary lines: a rich table on a terminal, plain aligned
    text otherwise (for files, pipes and diff)."""
    title = (f"{r['model']}{' (' + r['precision'] + ')' if r.get('precision') not in (None, 'fp32') else ''} "
             f"on {r['dataset']} ({r['num_images']} images, {r['seconds']} s)")
    header = ("class", "AP", "P", "R", "positives")
    rows = [(c, "-" if v["AP"] is None else f"{v['AP']:.1f}", f"{v['precision']:.1f}", f"{v['recall']:.1f}",
             str(v["positives"])) for c, v in r["per_class"].items()]
    if console.is_terminal:
        from rich.table import Table

        t = Table(title=title)
        for col in header:
            t.add_column(col, justify="right" if col != "class" else "left")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    else:
        widths = [max(len(str(x[i])) for x in (header, *rows)) for i in range(len(header))]
        console.print(title, soft_wrap=True, markup=False)
        for row in (header, *rows):
            console.print("  ".join([row[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(row[1:], widths[1:])]),
                          soft_wrap=True, markup=False)
    line = "  ".join(f"{k} {r[k]:.1f}" for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"))
    console.print(f"[bold]{line}[/]  (threshold {r['threshold']})", soft_wrap=True)
    if "model_thresholds" in r:
        mt = r["model_thresholds"]
        console.print("at the model's per-class thresholds: " + "  ".join(f"{k} {mt[k]:.1f}" for k in mt),
                      soft_wrap=True)
    if r["classes_without_positives"]:
        console.print(f"classes with no positive (not in mAP): {', '.join(r['classes_without_positives'])}",
                      soft_wrap=True, markup=False)
