"""The Typer app, the error handling every command shares, and the options several commands take.

Options used by more than one command are declared here once (``Annotated`` types) and reused,
so ``--model``, ``--device`` and the rest mean the same everywhere. Nothing here imports torch.
"""
from __future__ import annotations

import functools
import os
from typing import Annotated, Optional

import typer

from .. import __version__
from ..console import error
from ..errors import CSRAError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Tag images with CSRA multi-label models: tag, eval, train, export, bench, explain, models.")
models_app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                         help="List, inspect, download and import models.")
app.add_typer(models_app, name="models")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_state = {"debug": False}


def handle_errors(fn):
    """Expected failures become one line on stderr and exit code 2 (a traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CSRAError, ValueError, FileExistsError, FileNotFoundError, IsADirectoryError,
                PermissionError, NotImplementedError) as exc:
            if _state["debug"]:
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            error(msg)
            raise typer.Exit(getattr(exc, "exit_code", EXIT_USAGE))

    return wrapper


def version_callback(value: bool):
    if value:
        typer.echo(f"csra {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    _state["debug"] = debug


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def resolve_workers(workers: int) -> int:
    """-1 (the default): cores - 1, at most 4."""
    return default_workers() if workers < 0 else workers


def _check_device(value: str) -> str:
    from ..engine.device import parse_device

    try:
        return parse_device(value)
    except CSRAError as exc:  # one line, like every other usage error
        error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None


# ----------------------------------------------------------------------------- shared options
# The model to use: a registry name, our .safetensors, an official .pth or an exported .onnx.
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model name, .safetensors, official .pth or .onnx (default: the shipped model).")]
# What an official .pth cannot tell by its keys.
ArchOpt = Annotated[Optional[str], typer.Option(help="Architecture of an official .pth (else inferred from its keys).")]
HeadsOpt = Annotated[Optional[int], typer.Option(help="CSRA heads of an official .pth (checked against its keys).")]
LamOpt = Annotated[Optional[float], typer.Option(help="Lambda of an official .pth.")]
ClassNamesOpt = Annotated[Optional[str], typer.Option(
    "--class-names", help="Class names of an official .pth: voc, coco, wider, a,b,c or a file.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", callback=_check_device)]
PrecisionOpt = Annotated[str, typer.Option(
    help="auto (fp16/bf16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16, or int8 (CPU, onnxruntime: "
         "a cached quantised export from 'csra export --onnx --int8').")]
BackendOpt = Annotated[str, typer.Option(
    help="auto (onnxruntime on CPU, PyTorch on GPU), torch, or onnx with --model FILE.onnx.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", help="Decoding processes (-1: cores - 1, at most 4).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise CSRAError(f"--precision {precision!r}: use {', '.join(PRECISIONS)}")
    return precision


def load_model_for(model, arch=None, heads=None, lam=None, class_names=None):
    """The PyTorch model named by the shared model options."""
    from ..models.loading import load_model

    return load_model(model, arch=arch, num_heads=heads, lam=lam, classes=class_names)


def runner_for(model, backend, device, precision, arch=None, heads=None, lam=None, class_names=None):
    """The runner (PyTorch or onnxruntime) named by the shared model and device options."""
    from ..engine.runners import make_runner

    return make_runner(model, backend, device, check_precision(precision), arch, heads, lam, class_names)
