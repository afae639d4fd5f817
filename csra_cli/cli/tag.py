"""``csra tag``."""
from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..console import err, error, info, warn
from ..errors import CSRAError
from .app import (EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, ArchOpt, BackendOpt, BatchSizeOpt, ClassNamesOpt,
                  DeviceOpt, EngineOpt, HeadsOpt, LamOpt, ModelOpt, PrecisionOpt, QuietOpt, TTAOpt, RayAddressOpt, TopKOpt,
                  WorkersOpt, app, check_inputs_exist, check_output, handle_errors, in_range, ray_spec_for,
                  resolve_workers, runner_for)
from .report import ReportOpt, check_report_path, write_tag_report


@app.command()
@handle_errors
def tag(
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders, glob patterns, or - for paths on stdin (one a line).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output file (.csv/.json/.jsonl/.sqlite) or - for stdout.")] = "-",
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="csv, json, jsonl or sqlite (default: from --out; jsonl on stdout).")] = None,
    model: ModelOpt = None,
    arch: ArchOpt = None,
    heads: HeadsOpt = None,
    lam: LamOpt = None,
    class_names: ClassNamesOpt = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", callback=in_range("--threshold", 0, 1), help="One threshold for every class (default: the model card's, per class where it has them).")] = None,
    thresholds: Annotated[Optional[str], typer.Option("--thresholds", help="Per-class thresholds: JSON {class: t} or CSV class,threshold.")] = None,
    top_k: TopKOpt = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Only these classes (comma-separated).")] = None,
    scores: Annotated[bool, typer.Option("--scores", help="Add every class's score to each record.")] = False,
    sidecar: Annotated[List[str], typer.Option("--sidecar", help="Also write txt (comma-separated tags) and/or xmp sidecars: --sidecar txt,xmp or the flag twice.")] = [],  # noqa: B006
    xmp_name: Annotated[str, typer.Option("--xmp-name", help="full: photo.jpg.xmp, stem: photo.xmp.")] = "full",
    overwrite_sidecars: Annotated[bool, typer.Option("--overwrite-sidecars", help="Replace .txt sidecars that csra did not write (a user's own captions are kept otherwise).")] = False,
    null: Annotated[bool, typer.Option("--null", "-0", help="Paths on stdin end with NUL, not newline (find -print0).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.")] = True,
    batch_size: BatchSizeOpt = 16,
    workers: WorkersOpt = -1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    backend: BackendOpt = "auto",
    tta: TTAOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into the same --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    report: ReportOpt = None,
    quiet: QuietOpt = False,
):
    """Tag images and write one record per image (path, tags, scores, error).

    Exit codes: 0 all images tagged, 1 some images could not be read (see their error
    records), 2 bad usage or input, 130 interrupted (run again with --resume)."""
    try:
        _tag(**locals())
    except KeyboardInterrupt:  # Ctrl-C before the first image (the tag loop handles its own)
        error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    except OSError as exc:  # a full disk, /dev/full, an I/O error: one line, earlier outputs intact
        if exc.errno == errno.EPIPE:  # csra tag ... | head: the reader is gone, nobody to tell
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE)
        where = f" {exc.filename}" if exc.filename else ""
        raise CSRAError(f"cannot write{where}: {exc.strerror or exc}") from exc


EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, AttributeError, ValueError):
        pass


def _tag(inputs, out, fmt, model, arch, heads, lam, class_names, threshold, thresholds, top_k, classes, scores,
         sidecar, xmp_name, overwrite_sidecars, null, recursive, batch_size, workers, device, precision, backend,
         tta, engine, ray_address, resume, overwrite, report, quiet):
    import numpy as np

    from ..console import start_progress
    from ..data.inputs import expand_inputs
    from ..data.remote import is_uri
    from ..engine.device import set_threads
    from ..engine.tagging import class_subset, read_thresholds_file, run_tagging
    from ..results.sidecars import SidecarWriter
    from ..results.sinks import FileSink, StreamSink, format_for, read_output

    sidecar = [s.strip() for value in sidecar for s in value.split(",") if s.strip()]
    for s in sidecar:
        if s not in ("txt", "xmp"):
            raise CSRAError(f"--sidecar {s!r}: use txt, xmp or txt,xmp")
    if xmp_name not in ("full", "stem"):
        raise CSRAError("--xmp-name: use full or stem")
    if resume and out == "-":
        raise CSRAError("--resume continues an output file; give --out FILE")
    if resume and overwrite:
        raise CSRAError("--resume and --overwrite contradict each other; pick one")
    if inputs.count("-") > 1:
        raise CSRAError("'-' (stdin) may be given once")
    if "-" in inputs and sys.stdin is None:
        raise CSRAError("'-' reads paths from stdin, but stdin is closed")
    if null and "-" not in inputs:
        raise CSRAError("--null is about paths on stdin; give - as an input")
    if out == "-" and sys.stdout is None:
        raise CSRAError("stdout is closed; give --out FILE")
    fmt = format_for(out, fmt)
    page = check_report_path(report, out)
    streamed: list[dict] = []  # the records for --report when they go to stdout
    uris = [a for a in inputs if is_uri(a)]
    if uris and engine != "ray":
        raise CSRAError(f"{uris[0]}: URI inputs are listed here and read by the cluster's workers; add --engine ray")
    if uris and sidecar:
        raise CSRAError(f"{uris[0]}: sidecars are written beside local images; leave out --sidecar for URI inputs")
    check_inputs_exist([a for a in inputs if not is_uri(a)])
    check_output(out)
    started = time.time()
    workers = resolve_workers(workers)
    spec = ray_spec_for(engine, model, backend, device, precision, arch, heads, lam, class_names, tta)
    set_threads()
    runner = runner_for(model, backend, device, precision, arch, heads, lam, class_names, tta)
    preparing = time.time() - started  # loading, and a first-use ONNX export: part of the elapsed time
    names = runner.card.classes
    # --threshold sets every class; the card's per-class thresholds apply only without a flag
    per_class = (np.full(len(names), threshold, dtype=np.float64) if threshold is not None
                 else np.array(runner.card.class_thresholds(), dtype=np.float64))
    if thresholds:
        table = read_thresholds_file(thresholds, names)
        per_class = np.array([table.get(c, t) for c, t in zip(names, per_class)])
    allowed = class_subset(classes, names)
    sink = (StreamSink(fmt, names if scores else None) if out == "-"
            else FileSink(Path(out), fmt, names if scores else None, resume, overwrite))
    if sink.retrying:
        info(f"trying again {sink.retrying} image(s) that failed in the earlier run")
    warnings: list[str] = []
    total = None
    if not quiet and "-" not in inputs:
        total = sum(1 for _ in expand_inputs(inputs, recursive)) - len(sink.done)

    sidecars = SidecarWriter(sidecar, xmp_name, overwrite_sidecars)

    def on_record(rec):
        if page and out == "-":
            streamed.append(rec)
        if rec["error"]:
            return
        for problem in sidecars.write(rec["path"], rec["tags"]):
            warn(f"{rec['path']}: {problem}")

    paths = expand_inputs(inputs, recursive, sys.stdin, warn=(lambda m: warnings.append(m) or warn(m)), null=null)
    progress = start_progress(total, "tagging", quiet)
    common = dict(batch_size=batch_size, top_k=top_k, allowed=allowed, all_scores=scores, on_record=on_record,
                  progress=progress.advance if progress else None, skip=sink.done)
    try:
        if spec is None:
            stats = run_tagging(runner, paths, [sink], per_class, workers=workers, **common)
        else:
            from ..engine.ray_engine import run_tagging_ray

            stats = run_tagging_ray(runner, spec, paths, [sink], per_class, address=ray_address, **common)
    except BaseException as exc:
        if progress:
            progress.stop()
        try:
            sink.abort()  # the journal stays for --resume, the lock goes
        except OSError:
            pass  # the stream that failed fails again; the first error is the one to report
        if not isinstance(exc, KeyboardInterrupt):
            raise
        where = f"; run the same command with --resume to continue into {out}" if out != "-" else ""
        error(f"interrupted{where}")
        raise typer.Exit(EXIT_INTERRUPTED)
    if progress:
        progress.stop()
    try:
        sink.close()
    except BaseException:
        try:
            sink.abort()
        except OSError:
            pass
        raise
    if page:
        write_tag_report(streamed if out == "-" else read_output(Path(out), fmt), page, "" if out == "-" else out, quiet)
    if stats.tagged + stats.failed + stats.skipped == 0:
        warn("no images found in the inputs")
    if not quiet:
        print_tag_summary(stats, out, preparing)
    raise typer.Exit(EXIT_SOME_FAILED if stats.failed else EXIT_OK)


def print_tag_summary(stats, out: str, preparing: float = 0.0) -> None:
    from rich.table import Table

    table = Table(title="csra tag", show_header=False)
    table.add_row("tagged", str(stats.tagged))
    table.add_row("failed", str(stats.failed))
    if stats.skipped:
        table.add_row("already done (resume)", str(stats.skipped))
    table.add_row("elapsed", f"{stats.elapsed + preparing:.1f} s"
                  + (f" ({preparing:.1f} s preparing the model)" if preparing >= 1 else ""))
    table.add_row("images/s", f"{stats.rate:.1f}")
    table.add_row("model idle", f"{100 * stats.model_idle:.0f}% (waiting for decoding)")
    table.add_row("output", "stdout" if out == "-" else out)
    err.print(table)
    for path, reason in stats.failures[:10]:
        err.print(f"  [red]failed[/] {path}: {reason}", soft_wrap=True)
    if len(stats.failures) > 10:
        err.print(f"  … and {len(stats.failures) - 10} more (see the error column of the output)")


