"""``csra export``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import (DATASET_OPTIONS, MODEL_OPTIONS, DatasetOptions, OverwriteOpt, app, check_inputs_exist, check_output,
                     handle_errors, load_model_for, open_selected)
from ..console import info
from ..errors import CSRAError
from ..models.spec import ModelSpec
from .options import Opt, OptionGroup

# int8 quantisation: asked for, and calibrated on what.
INT8_OPTIONS = OptionGroup(
    "Int8Options", "int8",
    int8=Opt(Annotated[bool, typer.Option("--int8", help="With --onnx: int8 static quantisation (QDQ, per-channel weights) "
                                          "for the CPU, calibrated on --calibrate-on; also cached for --precision int8.")], False),
    calibrate_on=Opt(Annotated[Optional[str], typer.Option("--calibrate-on", help="int8 calibration images: a folder, a glob, "
                                                           "or a .txt list (one path a line, # comments).")]),
    calibration_images=Opt(Annotated[int, typer.Option("--calibration-images", min=1, help="Use at most N calibration images.")], 150))
Int8Options = INT8_OPTIONS.build
# How the ONNX graph is written.
GRAPH_OPTIONS = OptionGroup(
    "GraphOptions", "ONNX graph",
    opset=Opt(Annotated[int, typer.Option(help="ONNX opset (18+ uses the torch.export-based exporter).")], 18),
    dynamic_size=Opt(Annotated[bool, typer.Option("--dynamic-size", help="Dynamic height/width (batch is always dynamic).")], False),
    fp16=Opt(Annotated[bool, typer.Option("--fp16", help="ONNX weights and activations in fp16.")], False))
GraphOptions = GRAPH_OPTIONS.build


class ExportFailed(CSRAError):
    """The model did not export, or the export does not match PyTorch: not a usage error."""

    exit_code = 1


@app.command()
@handle_errors
@MODEL_OPTIONS.into("model")
@INT8_OPTIONS.into("int8")
@GRAPH_OPTIONS.into("graph")
@DATASET_OPTIONS.into("check", defaults={"dataset": None, "split": "val"}, help={
    "dataset": "With --int8: measure mAP in fp32 and int8 on this labelled set (voc, coco or csv, as in csra eval) "
               "and keep the result with the export; --precision auto then runs int8 on the CPU when it loses "
               "at most 0.3 points. Without it, auto stays fp32 for this model."})
def export(
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (verified with onnxruntime).")] = False,
    torchscript: Annotated[bool, typer.Option("--torchscript", help="Export to TorchScript (verified).")] = False,
    *,
    model: ModelSpec,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (default: <model>.onnx / .pt).")] = None,
    graph: "GraphOptions",
    verify_images: Annotated[List[str], typer.Option("--verify-image", help="Real images to verify on (repeatable).")] = [],
    int8: "Int8Options",
    check: "DatasetOptions",
    overwrite: OverwriteOpt = False,
):
    """Export a model; the file carries classes, preprocessing and thresholds, and is checked
    against PyTorch on the spot (max |Δlogit| ≤ 1e-4 in fp32, else the export fails)."""
    if not onnx and not torchscript:
        raise CSRAError("say which format: --onnx and/or --torchscript")
    if out is not None and onnx and torchscript:
        raise CSRAError("--out names one file; export one format at a time when giving --out")
    check_output(out, overwrite=overwrite)
    check_inputs_exist(verify_images, "--verify-image")
    if int8.int8:
        if not onnx or torchscript or graph.fp16:
            raise CSRAError("--int8 goes with --onnx alone (not --torchscript or --fp16)")
        return export_int8(model, out, int8, check, overwrite)
    if check.dataset:
        raise CSRAError("--dataset checks an int8 export: it goes with --onnx --int8")
    m = load_model_for(model)
    wanted = [(fmt, ext) for fmt, ext, asked in (("onnx", ".onnx", onnx), ("torchscript", ".pt", torchscript)) if asked]
    dests = {fmt: out or Path(f"{m.card.name}{'-fp16' if fmt == 'onnx' and graph.fp16 else ''}{ext}") for fmt, ext in wanted}
    for dest in dests.values():  # the default names too, before any export work
        check_output(dest, overwrite=overwrite)
    for fmt, dest in dests.items():
        size, result = export_verified(m, fmt, dest, graph.opset, graph.dynamic_size, graph.fp16, verify_images)
        info(f"{fmt}: wrote {dest} ({size / 1e6:.1f} MB); max |Δlogit| vs PyTorch "
             f"{result['max_abs_diff']:.2e} on {result['inputs']} inputs (tolerance {result['tolerance']:g}): ok")


def export_verified(m, fmt: str, dest: Path, opset: int, dynamic_size: bool, fp16: bool, verify_images: list[str]):
    """Export into a temporary file beside ``dest``, verify it, and only then rename it onto
    ``dest``: a failed export or verification leaves nothing behind."""
    import os

    from ..engine.export import export_onnx, export_torchscript, verify_onnx, verify_torchscript
    from ..fileio import atomic_temp

    fd, tmp = atomic_temp(dest, dest.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            if fmt == "onnx":
                export_onnx(m, tmp, opset, dynamic_size, fp16)
                result = verify_onnx(m, tmp, verify_images, dynamic_size)
            else:
                export_torchscript(m, tmp)
                result = verify_torchscript(m, tmp, verify_images)
        except (CSRAError, FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception as exc:  # an exporter or onnxruntime failure: one line, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ExportFailed(f"{fmt} export failed, nothing written ({first})") from exc
        if not result["ok"]:
            raise ExportFailed(f"{fmt}: the export differs from PyTorch by {result['max_abs_diff']:.2e} "
                            f"(tolerance {result['tolerance']:g}); nothing written")
        size = tmp.stat().st_size
        os.replace(tmp, dest)
        return size, result
    finally:
        tmp.unlink(missing_ok=True)


def calibration_paths(spec: str | None, limit: int) -> list[str]:
    """The first ``limit`` images of a folder, glob or .txt list (in its order)."""
    from ..data.inputs import expand_inputs

    if not spec:
        raise CSRAError("--int8 needs --calibrate-on IMAGES: 100-200 photos like the ones to tag "
                        "(for the shipped model: benchmarks/int8_calibration_voc_train.txt, run from VOCdevkit)")
    listed = Path(spec)
    if listed.is_file() and listed.suffix.lower() in (".txt", ".lst"):
        paths = [ln.strip() for ln in listed.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    else:
        paths = list(expand_inputs([spec]))
    if not paths:
        raise CSRAError(f"--calibrate-on {spec}: no images found")
    return paths[:limit]


def export_int8(model: ModelSpec, out: Path | None, int8, check, overwrite: bool = False) -> None:
    """The verified fp32 export (cached), quantised into the cache and copied to --out; with a
    dataset in ``check``, both measured on it and the result kept beside the cached export."""
    import os
    import shutil

    from ..fileio import atomic_temp, atomic_write_bytes
    from ..engine.quantize import quantize_int8
    from ..engine.runners import INT8_MAX_DROP, cache_path, cached_onnx, export_key, int8_check_path, int8_passes
    from ..models.card import model_files
    from ..models.loading import resolve_spec

    calibrate_on = int8.calibrate_on
    images = calibration_paths(calibrate_on, int8.calibration_images)
    dataset = open_selected(check) if check.dataset else None
    model = resolve_spec(model)
    m = load_model_for(model)
    dest = out or Path(f"{m.card.name}-int8.onnx")
    check_output(dest, overwrite=overwrite)  # before the calibration's minutes
    weights = model_files(model.path).weights
    fp32 = cached_onnx(m, weights)
    key = export_key(weights, m.card, "int8")  # once: it reads the weights' sha256 memo
    cached = cache_path(weights, m.card, "int8", key)
    int8_check_path(cached).unlink(missing_ok=True)  # a check of an earlier calibration no longer holds
    if dataset is not None:
        labelled_classes(dataset, m.card)  # before the calibration's minutes
    info(f"int8: calibrating on {len(images)} images …")
    # a list file by its name: the machine's folders say nothing about the calibration set
    source = Path(calibrate_on).name if Path(calibrate_on).is_file() else str(calibrate_on)
    record = quantize_int8(Path(fp32), cached, m.card, images, source=source,
                           key=key)
    if dest.resolve() != cached.resolve():
        fd, tmp = atomic_temp(dest, dest.suffix)
        os.close(fd)
        try:
            shutil.copyfile(cached, tmp)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
    info(f"onnx int8: wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB), calibrated on {record['images']} images "
         f"({record['method']}); cached for --precision int8")
    result = check_int8(Path(fp32), cached, m.card, dataset) if dataset is not None else None
    if result is None:
        info("not checked on labelled data (no --dataset): --precision auto keeps fp32 for this model")
        return
    atomic_write_bytes(int8_check_path(cached), (json.dumps(result, indent=2) + "\n").encode())
    verdict = ("--precision auto now runs int8 on the CPU" if int8_passes(result)
               else f"more than {INT8_MAX_DROP} points: --precision auto keeps fp32")
    info(f"int8 check on {result['dataset']} ({result['images']} images): mAP fp32 {result['fp32_mAP']:.2f}, "
         f"int8 {result['int8_mAP']:.2f} ({result['int8_mAP'] - result['fp32_mAP']:+.2f}); {verdict}")


def check_int8(fp32: Path, int8: Path, card, dataset) -> dict:
    """mAP of both exports on a labelled set (classes matched by name, as csra eval does)."""
    import numpy as np

    from ..cpu import default_workers
    from ..engine.runners import INT8_MAX_DROP, cpu_runner
    from ..evaluation.metrics import evaluate
    from ..evaluation.scoring import score_images

    data_cols, model_cols = labelled_classes(dataset, card)
    maps = {}
    for precision, path in (("fp32", fp32), ("int8", int8)):
        info(f"int8 check: scoring {len(dataset)} images in {precision} …")
        scores, _ = score_images(cpu_runner(path, card), dataset.paths, 16, default_workers())
        sc, lab = scores[:, model_cols], dataset.labels[:, data_cols]
        readable = ~np.isnan(sc).any(axis=1)
        maps[precision] = evaluate(sc[readable], lab[readable], [card.classes[c] for c in model_cols])["mAP"]
    return {"dataset": dataset.name, "images": len(dataset), "fp32_mAP": round(float(maps["fp32"]), 2),
            "int8_mAP": round(float(maps["int8"]), 2), "max_drop": INT8_MAX_DROP,
            "measured_with": "csra export --onnx --int8 --dataset ..."}


def labelled_classes(dataset, card) -> tuple[list[int], list[int]]:
    """The (dataset, model) columns of the classes both share; an error where none is shared."""
    from ..evaluation.scoring import match_classes

    data_cols, model_cols, _, _ = match_classes(dataset, card.classes, {})
    return data_cols, model_cols
