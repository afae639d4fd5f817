"""``csra export``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .app import ArchOpt, ClassNamesOpt, HeadsOpt, LamOpt, ModelOpt, app, check_inputs_exist, check_output, handle_errors, load_model_for
from ..console import info
from ..errors import CSRAError


class ExportFailed(CSRAError):
    """The model did not export, or the export does not match PyTorch: not a usage error."""

    exit_code = 1


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
    if not onnx and not torchscript:
        raise CSRAError("say which format: --onnx and/or --torchscript")
    if out is not None and onnx and torchscript:
        raise CSRAError("--out names one file; export one format at a time when giving --out")
    check_output(out)
    check_inputs_exist(verify_images, "--verify-image")
    m = load_model_for(model, arch, heads, lam, class_names)
    for fmt, ext, do_export in (("onnx", ".onnx", onnx), ("torchscript", ".pt", torchscript)):
        if not do_export:
            continue
        dest = out or Path(f"{m.card.name}{'-fp16' if fmt == 'onnx' and fp16 else ''}{ext}")
        size, result = export_verified(m, fmt, dest, opset, dynamic_size, fp16, verify_images)
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
