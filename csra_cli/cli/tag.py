"""``csra tag``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..console import err, error, warn
from ..errors import CSRAError
from .app import (EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, ArchOpt, BackendOpt, BatchSizeOpt, ClassNamesOpt,
                  DeviceOpt, HeadsOpt, LamOpt, ModelOpt, PrecisionOpt, QuietOpt, WorkersOpt, app, handle_errors,
                  resolve_workers, runner_for)


@app.command()
@handle_errors
def tag(
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders, glob patterns, or - for paths on stdin.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output file (.csv/.json/.jsonl) or - for stdout.")] = "-",
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="csv, json or jsonl (default: from --out; jsonl on stdout).")] = None,
    model: ModelOpt = None,
    arch: ArchOpt = None,
    heads: HeadsOpt = None,
    lam: LamOpt = None,
    class_names: ClassNamesOpt = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="One threshold for every class (default: the model card's, per class where it has them).")] = None,
    thresholds: Annotated[Optional[str], typer.Option("--thresholds", help="Per-class thresholds: JSON {class: t} or CSV class,threshold.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="At most K tags per image, best first.")] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Only these classes (comma-separated).")] = None,
    scores: Annotated[bool, typer.Option("--scores", help="Add every class's score to each record.")] = False,
    sidecar: Annotated[List[str], typer.Option("--sidecar", help="Also write txt (comma-separated tags) and/or xmp sidecars.")] = [],  # noqa: B006
    xmp_name: Annotated[str, typer.Option("--xmp-name", help="full: photo.jpg.xmp, stem: photo.xmp.")] = "full",
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.")] = True,
    batch_size: BatchSizeOpt = 16,
    workers: WorkersOpt = -1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    backend: BackendOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into the same --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    quiet: QuietOpt = False,
):
    """Tag images and write one record per image (path, tags, scores, error).

    Exit codes: 0 all images tagged, 1 some images could not be read (see their error
    records), 2 bad usage or input, 130 interrupted (run again with --resume)."""
    import numpy as np

    from ..console import make_progress, progress_enabled
    from ..data.inputs import expand_inputs
    from ..engine.device import set_threads
    from ..engine.tagging import class_subset, read_thresholds_file, run_tagging
    from ..results.sidecars import write_txt, write_xmp
    from ..results.sinks import FileSink, StreamSink, format_for

    for s in sidecar:
        if s not in ("txt", "xmp"):
            raise CSRAError(f"--sidecar {s!r}: use txt or xmp")
    if xmp_name not in ("full", "stem"):
        raise CSRAError("--xmp-name: use full or stem")
    if resume and out == "-":
        raise CSRAError("--resume continues an output file; give --out FILE")
    if resume and overwrite:
        raise CSRAError("--resume and --overwrite contradict each other; pick one")
    if inputs.count("-") > 1:
        raise CSRAError("'-' (stdin) may be given once")
    fmt = format_for(out, fmt)
    workers = resolve_workers(workers)
    set_threads()
    runner = runner_for(model, backend, device, precision, arch, heads, lam, class_names)
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
    table.add_row("model idle", f"{100 * stats.model_idle:.0f}% (waiting for decoding)")
    table.add_row("output", "stdout" if out == "-" else out)
    err.print(table)
    for path, reason in stats.failures[:10]:
        err.print(f"  [red]failed[/] {path}: {reason}", soft_wrap=True)
    if len(stats.failures) > 10:
        err.print(f"  … and {len(stats.failures) - 10} more (see the error column of the output)")


