"""The ``csra`` command line (Typer)."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .console import err, error, info, warn
from .errors import CSRAError

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
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Print the version and exit."),
):
    _state["debug"] = debug


def parse_device(device: str) -> str:
    ok = device in ("auto", "cpu", "mps") or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise CSRAError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def get_model(model: Optional[str], arch: Optional[str] = None, heads: Optional[int] = None,
              lam: Optional[float] = None, class_names: Optional[str] = None):
    from .api import load_model

    return load_model(model, arch=arch, num_heads=heads, lam=lam, classes=class_names)


def get_runner(model: Optional[str], backend: str, device: str, precision: str, arch=None, heads=None,
               lam=None, class_names=None):
    """auto: onnxruntime on the CPU (a cached, verified export of the model), PyTorch elsewhere."""
    from .runners import OnnxRunner, TorchRunner, auto_runner

    device = parse_device(device)
    backend = os.environ.get("CSRA_BACKEND", "auto") if backend == "auto" else backend
    if backend == "onnx":
        if not model or not model.endswith(".onnx"):
            raise CSRAError("--backend onnx needs --model FILE.onnx (make one with 'csra export --onnx')")
        if not Path(model).is_file():
            raise CSRAError(f"{model}: no such file")
        return OnnxRunner(model, device)
    if backend not in ("auto", "torch"):
        raise CSRAError(f"--backend {backend!r}: use auto, torch or onnx")
    if model and model.endswith(".onnx"):
        return OnnxRunner(model, device)
    m = get_model(model, arch, heads, lam, class_names)
    return auto_runner(m, device, precision) if backend == "auto" else TorchRunner(m, device, precision)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1) - 1))


# ------------------------------------------------------------------------------------------ tag

def read_thresholds_file(path: str, classes: list[str]) -> dict[str, float]:
    import csv

    p = Path(path)
    if not p.is_file():
        raise CSRAError(f"--thresholds {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            data = json.loads(text)
            data = data.get("thresholds", data)
            table = {str(k): float(v) for k, v in data.items()}
        else:
            rows = list(csv.reader(text.splitlines()))
            if rows and rows[0] and rows[0][0].strip().lower() in ("class", "name", "tag"):
                rows = rows[1:]
            table = {r[0].strip(): float(r[1]) for r in rows if len(r) >= 2}
    except (ValueError, json.JSONDecodeError, AttributeError) as exc:
        raise CSRAError(f"--thresholds {path}: expected JSON {{class: threshold}} or CSV class,threshold ({exc})")
    unknown = sorted(set(table) - set(classes))
    if unknown:
        raise CSRAError(f"--thresholds {path}: unknown classes {', '.join(unknown)} (model classes: {', '.join(classes)})")
    return table


def class_subset(spec: Optional[str], classes: list[str]):
    import numpy as np

    if not spec:
        return None
    wanted = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise CSRAError(f"--classes: unknown {', '.join(unknown)}; the model's classes are {', '.join(classes)}")
    return np.array([c in wanted for c in classes])


@app.command()
@handle_errors
def tag(
    inputs: List[str] = typer.Argument(..., help="Image files, folders, glob patterns, or - for paths on stdin."),
    out: str = typer.Option("-", "--out", "-o", help="Output file (.csv/.json/.jsonl) or - for stdout."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="csv, json or jsonl (default: from --out; jsonl on stdout)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name, .safetensors, official .pth or .onnx (default: the shipped model)."),
    arch: Optional[str] = typer.Option(None, help="Architecture of an official .pth (else inferred from its keys)."),
    heads: Optional[int] = typer.Option(None, help="CSRA heads of an official .pth (checked against its keys)."),
    lam: Optional[float] = typer.Option(None, help="Lambda of an official .pth."),
    class_names: Optional[str] = typer.Option(None, "--class-names", help="Class names of an official .pth: voc, coco, wider, a,b,c or a file."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="One threshold for every class (default: the model card's, per class where it has them)."),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", help="Per-class thresholds: JSON {class: t} or CSV class,threshold."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="At most K tags per image, best first."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Only these classes (comma-separated)."),
    scores: bool = typer.Option(False, "--scores", help="Add every class's score to each record."),
    sidecar: List[str] = typer.Option([], "--sidecar", help="Also write txt (comma-separated tags) and/or xmp sidecars."),
    xmp_name: str = typer.Option("full", "--xmp-name", help="full: photo.jpg.xmp, stem: photo.xmp."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Walk folders recursively."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1),
    workers: int = typer.Option(-1, "--workers", "-j", help="Decoding processes (-1: cores - 1, at most 4)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", help="auto (fp16/bf16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16."),
    backend: str = typer.Option("auto", help="auto (onnxruntime on CPU, PyTorch on GPU), torch, or onnx with --model FILE.onnx."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into the same --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
):
    """Tag images and write one record per image (path, tags, scores, error).

    Exit codes: 0 all images tagged, 1 some images could not be read (see their error
    records), 2 bad usage or input, 130 interrupted (run again with --resume)."""
    import numpy as np

    from .console import make_progress, progress_enabled
    from .inputs import expand_inputs
    from .loader import set_threads
    from .outputs import FileSink, StreamSink, format_for
    from .sidecars import write_txt, write_xmp
    from .tagging import run_tagging

    for s in sidecar:
        if s not in ("txt", "xmp"):
            raise CSRAError(f"--sidecar {s!r}: use txt or xmp")
    if xmp_name not in ("full", "stem"):
        raise CSRAError("--xmp-name: use full or stem")
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise CSRAError(f"--precision {precision!r}: use auto, fp32, fp16 or bf16")
    if resume and out == "-":
        raise CSRAError("--resume continues an output file; give --out FILE")
    if resume and overwrite:
        raise CSRAError("--resume and --overwrite contradict each other; pick one")
    if inputs.count("-") > 1:
        raise CSRAError("'-' (stdin) may be given once")
    fmt = format_for(out, fmt)
    workers = default_workers() if workers < 0 else workers
    set_threads()
    runner = get_runner(model, backend, device, precision, arch, heads, lam, class_names)
    names = runner.card.classes
    per_class = np.array(runner.card.class_thresholds(threshold), dtype=np.float64)
    if thresholds:
        table = read_thresholds_file(thresholds, names)
        per_class = np.array([table.get(c, t) for c, t in zip(names, per_class)])
    allowed = class_subset(classes, names)
    sink = (StreamSink(fmt, names if scores else None) if out == "-"
            else FileSink(Path(out), fmt, names if scores else None, resume, overwrite))
    warnings: list[str] = []
    show = progress_enabled(quiet)
    total = None
    if show and "-" not in inputs:
        total = sum(1 for _ in expand_inputs(inputs, recursive)) - len(sink.done)

    def on_record(rec):
        if rec["error"]:
            return
        try:
            if "txt" in sidecar:
                write_txt(rec["path"], rec["tags"])
            if "xmp" in sidecar:
                write_xmp(rec["path"], rec["tags"], xmp_name)
        except (OSError, ValueError) as exc:
            warn(f"{rec['path']}: sidecar not written ({exc})")

    paths = expand_inputs(inputs, recursive, sys.stdin, warn=(lambda m: warnings.append(m) or warn(m)))
    progress = task = None
    if show:
        progress, task = make_progress(total, "tagging")
        progress.start()
    try:
        stats = run_tagging(runner, paths, [sink], per_class, batch_size=batch_size, workers=workers,
                            top_k=top_k, allowed=allowed, all_scores=scores, on_record=on_record,
                            progress=(lambda n: progress.advance(task, n)) if progress else None,
                            skip=sink.done)
    except KeyboardInterrupt:
        sink.abort()
        if progress:
            progress.stop()
        where = f"; run the same command with --resume to continue into {out}" if out != "-" else ""
        error(f"interrupted{where}")
        raise typer.Exit(EXIT_INTERRUPTED)
    if progress:
        progress.stop()
    sink.close()
    if stats.tagged + stats.failed + stats.skipped == 0:
        warn("no images found in the inputs")
    if not quiet:
        print_tag_summary(stats, out)
    raise typer.Exit(EXIT_SOME_FAILED if stats.failed else EXIT_OK)


def print_tag_summary(stats, out: str) -> None:
    from rich.table import Table

    table = Table(title="csra tag", show_header=False)
    table.add_row("tagged", str(stats.tagged))
    table.add_row("failed", str(stats.failed))
    if stats.skipped:
        table.add_row("already done (resume)", str(stats.skipped))
    table.add_row("elapsed", f"{stats.elapsed:.1f} s")
    table.add_row("images/s", f"{stats.rate:.1f}")
    table.add_row("output", "stdout" if out == "-" else out)
    err.print(table)
    for path, reason in stats.failures[:10]:
        err.print(f"  [red]failed[/] {path}: {reason}", soft_wrap=True)
    if len(stats.failures) > 10:
        err.print(f"  … and {len(stats.failures) - 10} more (see the error column of the output)")


def main():
    app()


# Subcommands that live in their own modules register themselves on import.
from . import cli_models  # noqa: E402,F401
from . import cli_train  # noqa: E402,F401
from . import cli_eval  # noqa: E402,F401
from . import cli_export  # noqa: E402,F401
from . import cli_bench  # noqa: E402,F401
from . import cli_explain  # noqa: E402,F401
