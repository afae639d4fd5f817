"""``csra export``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .app import ArchOpt, ClassNamesOpt, HeadsOpt, LamOpt, ModelOpt, app, handle_errors, load_model_for
from ..console import info
from ..errors import CSRAError


@app.command()
@handle_errors
def export(
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (verified with onnxruntime).")] = False,
    torchscript: Annotated[bool, typer.Option("--torchscript", help="Export to TorchScript (verified).")] = False,
    model: ModelOpt = None,
    arch: ArchOpt = None,
    heads: HeadsOpt = None,
    lam: LamOpt = None,
    class_names: ClassNamesOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (default: <model>.onnx / .pt).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (18+ uses the torch.export-based exporter).")] = 18,
    dynamic_size: Annotated[bool, typer.Option("--dynamic-size", help="Dynamic height/width (batch is always dynamic).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="ONNX weights and activations in fp16.")] = False,
    verify_images: Annotated[List[str], typer.Option("--verify-image", help="Real images to verify on (repeatable).")] = [],
):
    """Export a model; the file carries classes, preprocessing and thresholds, and is checked
    against PyTorch on the spot (max |Δlogit| ≤ 1e-4 in fp32, else the export fails)."""
    from ..engine.export import export_onnx, export_torchscript, verify_onnx, verify_torchscript

    if not onnx and not torchscript:
        raise CSRAError("say which format: --onnx and/or --torchscript")
    if out is not None and onnx and torchscript:
        raise CSRAError("--out names one file; export one format at a time when giving --out")
    m = load_model_for(model, arch, heads, lam, class_names)
    failed = False
    for fmt, ext, do_export, verify in (("onnx", ".onnx", onnx, "onnx"), ("torchscript", ".pt", torchscript, "ts")):
        if not do_export:
            continue
        dest = out or Path(f"{m.card.name}{'-fp16' if fmt == 'onnx' and fp16 else ''}{ext}")
        if fmt == "onnx":
            export_onnx(m, dest, opset, dynamic_size, fp16)
            result = verify_onnx(m, dest, verify_images, dynamic_size)
        else:
            export_torchscript(m, dest)
            result = verify_torchscript(m, dest, verify_images)
        verdict = "ok" if result["ok"] else "FAILED"
        info(f"{fmt}: wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB); max |Δlogit| vs PyTorch "
             f"{result['max_abs_diff']:.2e} on {result['inputs']} inputs (tolerance {result['tolerance']:g}): {verdict}")
        if not result["ok"]:
            failed = True
            dest.unlink(missing_ok=True)
    if failed:
        raise typer.Exit(1)
