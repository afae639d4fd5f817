"""``csra eval``."""
from __future__ import annotations

import json
import time
from typing import Annotated, Optional

import typer

from .common import (DATASET_OPTIONS, RUN_OPTIONS, DatasetOptions, OverwriteOpt, QuietOpt, app, check_engine,
                  check_output, handle_errors, in_range, open_selected, runner_for)
from ..console import err, start_progress, warn
from ..engine.run_spec import RunSpec
from ..errors import CSRAError
from .options import Opt, OptionGroup
from .report import ReportOpt, check_report_path

# What eval writes besides its report on stdout.
OUTPUTS = OptionGroup(
    "EvalOutputs", "Outputs",
    save_scores=Opt(Annotated[Optional[str], typer.Option("--save-scores", help="Write image x class scores to this CSV.")]),
    calibrate=Opt(Annotated[Optional[str], typer.Option("--calibrate", help="Write per-class F1-maximising thresholds (JSON).")]),
    json_out=Opt(Annotated[Optional[str], typer.Option("--json", help="Write the full report as JSON (- for stdout).")]),
    html_report=Opt(ReportOpt),
    overwrite=Opt(OverwriteOpt, False))
# How scores are judged.
MEASURES = OptionGroup(
    "EvalMeasures", "Metrics",
    class_map=Opt(Annotated[Optional[str], typer.Option(help="Dataset name -> model name: JSON or CSV file, or coco-to-voc / voc-to-coco; "
                                                       "imagenet-to-voc / imagenet-to-coco sum the ImageNet classes under each.")]),
    threshold=Opt(Annotated[float, typer.Option("--threshold", "-t", callback=in_range("--threshold", 0, 1),
                                                help="Threshold for CP/CR/CF1/OP/OR/OF1.")], 0.5),
    ap=Opt(Annotated[str, typer.Option("--ap", help="exact (non-interpolated, as the paper) or voc07-11pt.")], "exact"))
EvalOutputs = OUTPUTS.build
EvalMeasures = MEASURES.build


@app.command("eval")
@handle_errors
@DATASET_OPTIONS.into("data")
@MEASURES.into("measures")
@RUN_OPTIONS.into("run")
@OUTPUTS.into("outputs")
def eval_cmd(
    data: "DatasetOptions",
    measures: "EvalMeasures",
    run: RunSpec,
    outputs: "EvalOutputs",
    scores: Annotated[Optional[str], typer.Option("--scores", help="Evaluate this scores CSV instead of running a model.")] = None,
    quiet: QuietOpt = False,
):
    """mAP (paper protocol), CP/CR/CF1/OP/OR/OF1 and per-class numbers on a labelled set.

    The report goes to stdout (a table on a terminal, plain text in a pipe or file); with
    --json - the JSON alone goes there and the table to stderr."""
    import numpy as np

    from ..evaluation.scoring import (align_scores, combine_classes, match_classes, read_class_map,
                                      read_grouped_map, read_scores)

    if scores and run.tta:
        raise CSRAError("--tta changes how a model scores images; with --scores FILE no model runs")
    if measures.ap not in ("exact", "voc07-11pt"):
        raise CSRAError("--ap: use exact or voc07-11pt")
    for flag, path in (("--json", outputs.json_out), ("--save-scores", outputs.save_scores),
                       ("--calibrate", outputs.calibrate)):
        check_output(path, flag, outputs.overwrite)
    page = check_report_path(outputs.html_report, outputs.json_out, outputs.save_scores, outputs.calibrate,
                             overwrite=outputs.overwrite)
    dataset = open_selected(data)
    if len(dataset) == 0:
        raise CSRAError(f"{dataset.name}: no labelled images")
    started = time.time()
    failures: list = []
    card = precision = None
    if scores:
        score_paths, model_classes, all_scores = read_scores(scores)
        all_scores = align_scores(dataset, score_paths, all_scores)
        model_name = scores
    else:
        card, precision, all_scores, failures = model_scores(dataset, run, quiet)
        model_classes, model_name = card.classes, card.name
        if outputs.save_scores:
            from ..evaluation.scoring import write_scores

            write_scores(outputs.save_scores, dataset.paths, model_classes, all_scores)
    grouped = read_grouped_map(measures.class_map)
    if grouped is not None:  # many model classes onto each dataset class (imagenet-to-voc)
        all_scores, model_classes = combine_classes(all_scores, model_classes, grouped)
        card = None  # the card's thresholds are its own classes'
    data_cols, model_cols, left_data, left_model = match_classes(dataset, model_classes,
                                                                 read_class_map(measures.class_map))
    if left_data and not quiet:
        warn(f"dataset classes without a model class, left out: {', '.join(left_data)}")
    classes = [model_classes[c] for c in model_cols]
    lab = dataset.labels[:, data_cols]
    sc = all_scores[:, model_cols]
    readable = ~np.isnan(sc).any(axis=1)
    if (~readable).any() and not failures:
        failures = [(p, "no score") for p, ok in zip(dataset.paths, readable) if not ok]
    report, per = measure(sc[readable], lab[readable], classes, measures, card)
    report.update({
        "model": model_name, "precision": precision, "tta": run.tta, "dataset": dataset.name,
        "split": data.split if data.dataset == "voc" else None,
        "threshold": measures.threshold, "ap": measures.ap, "classes_evaluated": classes,
        "dataset_classes_left_out": left_data, "model_classes_unmatched": left_model,
        "num_images_labelled": len(dataset), "num_images_failed": len(failures),
        "failed": [{"path": p, "error": e} for p, e in failures], "seconds": round(time.time() - started, 2),
    })
    if outputs.calibrate:
        from ..evaluation.metrics import best_f1_thresholds

        t = best_f1_thresholds(sc[readable], lab[readable])
        write_text(outputs.calibrate, json.dumps({c: round(float(v), 4) for c, v in zip(classes, t)}, indent=2))
    if page:
        write_eval_report(report, classes, sc[readable], lab[readable],
                          [p for p, ok in zip(dataset.paths, readable) if ok], measures.threshold, per, page, quiet)
    if not quiet:
        from rich.console import Console

        print_report(report, err if outputs.json_out == "-" else Console(highlight=False))
    if outputs.json_out:
        text = json.dumps(finite(report), indent=2, allow_nan=False) + "\n"
        if outputs.json_out == "-":
            typer.echo(text, nl=False)
        else:
            write_text(outputs.json_out, text)
    if failures:
        warn(f"{len(failures)} images could not be read and are not in the metrics (listed under 'failed')")
        raise typer.Exit(1)


def model_scores(dataset, run: RunSpec, quiet: bool):
    """(card, precision, (N, C) probabilities, failures) of the run's model on the dataset's images,
    on this machine or on Ray as the run says."""
    from ..engine.device import set_threads
    from ..engine.runners import precision_of
    from ..evaluation.scoring import score_images

    check_engine(run)
    set_threads()
    runner = runner_for(run)
    progress = start_progress(len(dataset), "scoring", quiet)
    try:
        advance = progress.advance if progress else None
        if run.engine == "local":
            all_scores, failures = score_images(runner, dataset.paths, run.batch_size, run.resolved_workers, advance)
        else:
            from ..engine.ray_engine import score_images_ray

            all_scores, failures = score_images_ray(runner, dataset.paths, run, advance)
    finally:
        if progress:
            progress.stop()
    return runner.card, precision_of(runner), all_scores, failures


def measure(scores, labels, classes: list[str], measures, card) -> tuple[dict, list[float] | None]:
    """The metrics at the asked threshold, plus CP…OF1 at the model card's per-class thresholds
    where it has them (and those thresholds, for the page's marks)."""
    from ..evaluation.metrics import evaluate

    report = evaluate(scores, labels, classes, measures.threshold, measures.ap)
    if card is None or not card.thresholds:
        return report, None
    per = [card.thresholds.get(c, card.threshold) for c in classes]
    at = evaluate(scores, labels, classes, per, measures.ap)
    report["model_thresholds"] = {k: at[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    return report, per


def write_text(path: str, text: str) -> None:
    from pathlib import Path

    from ..fileio import atomic_write_bytes

    atomic_write_bytes(Path(path), text.encode())


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
