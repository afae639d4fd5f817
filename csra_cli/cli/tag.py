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
from ..engine.run_spec import RunSpec
from ..errors import CSRAError
from .common import (EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, MULTI_RUN_OPTIONS, QuietOpt, TopKOpt, app, check_engine,
                  check_inputs_exist, check_output, handle_errors, in_range, resolved_run, runner_for)
from .options import REQUIRED, Opt, OptionGroup
from .report import ReportOpt, check_report_path, write_tag_report
from ..results.sidecars import keyword_hierarchy

# The tag command's options besides the model and run ones, in the values its body reads.
INPUTS = OptionGroup(
    "TagInputs", "Inputs",
    inputs=Opt(Annotated[List[str], typer.Argument(help="Image files, folders, glob patterns, or - for paths on stdin (one a line).")], REQUIRED),
    null=Opt(Annotated[bool, typer.Option("--null", "-0", help="Paths on stdin end with NUL, not newline (find -print0).")], False),
    recursive=Opt(Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.")], True))
OUTPUT = OptionGroup(
    "TagOutput", "Output",
    out=Opt(Annotated[str, typer.Option("--out", "-o", help="Output file (.csv/.json/.jsonl/.sqlite) or - for stdout.")], "-"),
    fmt=Opt(Annotated[Optional[str], typer.Option("--format", "-f", help="csv, json, jsonl or sqlite (default: from --out; jsonl on stdout).")]),
    resume=Opt(Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into the same --out.")], False),
    update=Opt(Annotated[bool, typer.Option("--update", help="Bring an existing --out up to date with the inputs: tag new and changed images (size+mtime, then sha256), drop records of removed ones, keep the rest without decoding them; other settings tag every image again.")], False),
    overwrite=Opt(Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out and --report page.")], False),
    report=Opt(ReportOpt))
SELECTION = OptionGroup(
    "TagSelection", "Tags",
    threshold=Opt(Annotated[Optional[float], typer.Option("--threshold", "-t", callback=in_range("--threshold", 0, 1), help="One threshold for every class (default: the model card's, per class where it has them).")]),
    thresholds=Opt(Annotated[Optional[str], typer.Option("--thresholds", help="Per-class thresholds: JSON {class: t} or CSV class,threshold.")]),
    top_k=Opt(TopKOpt),
    classes=Opt(Annotated[Optional[str], typer.Option("--classes", help="Only these classes (comma-separated).")]),
    scores=Opt(Annotated[bool, typer.Option("--scores", help="Add every class's score to each record (keyed by the model's class names).")], False),
    exclude=Opt(Annotated[Optional[str], typer.Option("--exclude", help="Never give these tags (comma-separated class or tag names).")]),
    rename=Opt(Annotated[Optional[str], typer.Option("--rename", help="Write tags under other names: old=new,old2=new2, or a JSON {old: new} / CSV old,new file (default: the card's display names).")]),
    keywords=Opt(Annotated[str, typer.Option("--keywords", help="For a model whose card has broader terms (--model imagenet): fine (golden retriever), broad (dog, animal) or both; each term once an image. XMP keyword paths read animal|dog|golden retriever.")], "both"))
SIDECARS = OptionGroup(
    "SidecarOptions", "Sidecars",
    sidecar=Opt(Annotated[List[str], typer.Option("--sidecar", help="Also write txt (comma-separated tags) and/or xmp sidecars: --sidecar txt,xmp or the flag twice.")], []),
    xmp_name=Opt(Annotated[str, typer.Option("--xmp-name", help="full: photo.jpg.xmp, stem: photo.xmp.")], "full"),
    overwrite_sidecars=Opt(Annotated[bool, typer.Option("--overwrite-sidecars", help="Replace .txt sidecars that csra did not write (a user's own captions are kept otherwise).")], False),
    caption_sep=Opt(Annotated[str, typer.Option("--caption-sep", help="Between the tags of a .txt caption.")], ", "),
    caption_ext=Opt(Annotated[str, typer.Option("--caption-ext", help="File extension of the captions (e.g. .caption).")], ".txt"),
    prepend=Opt(Annotated[Optional[str], typer.Option("--prepend", help="Fixed tags at the start of every caption (comma-separated), e.g. a trigger word.")]),
    append=Opt(Annotated[Optional[str], typer.Option("--append", help="Fixed tags at the end of every caption (comma-separated).")]),
    caption_dir=Opt(Annotated[Optional[str], typer.Option("--caption-dir", help="Write the captions into this folder, mirroring the input folders' tree, instead of beside the images.")]),
    embed=Opt(Annotated[bool, typer.Option("--embed", help="Write the tags INTO the image files (JPEG, TIFF, PNG, WebP): XMP dc:subject and lr:hierarchicalSubject, IPTC Keywords; the user's keywords and the pixels are kept. Changes your files: opt-in.")], False),
    keep_mtime=Opt(Annotated[bool, typer.Option("--keep-mtime", help="With --embed: give each file back its modification time.")], False))
TagInputs = INPUTS.build
TagOutput = OUTPUT.build
TagSelection = SELECTION.build
SidecarOptions = SIDECARS.build


@app.command()
@handle_errors
@INPUTS.into("inputs")
@OUTPUT.into("output")
@MULTI_RUN_OPTIONS.into("run")
@SELECTION.into("selection")
@SIDECARS.into("sidecars")
def tag(inputs: "TagInputs", output: "TagOutput", run: RunSpec, selection: "TagSelection", sidecars: "SidecarOptions",
        quiet: QuietOpt = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="List the images it would read and the files it would write (on stdout), and stop: no model runs.")] = False):
    """Tag images and write one record per image (path, tags, scores, error).

    Exit codes: 0 all images tagged, 1 some images could not be read (see their error
    records), 2 bad usage or input, 130 interrupted (run again with --resume)."""
    try:
        _tag(inputs, output, run, selection, sidecars, quiet, dry_run)
    except KeyboardInterrupt:  # Ctrl-C before the first image (the tag loop handles its own)
        error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    except FileExistsError:  # an output csra would replace: handle_errors says so in one line
        raise
    except OSError as exc:  # a full disk, /dev/full, an I/O error: one line, earlier outputs intact
        if exc.errno == errno.EPIPE:  # csra tag ... | head: the reader is gone, nobody to tell
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE)
        where = exc.filename
        if where is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            where = "stdout" if output.out == "-" else output.out  # a full disk's write() names no file
        raise CSRAError(f"cannot write{f' {where}' if where else ''}: {exc.strerror or exc}") from exc


EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, AttributeError, ValueError):
        pass


def sidecar_kinds(sidecars) -> list[str]:
    """--sidecar txt,xmp or the flag twice -> ["txt", "xmp"]; anything else is refused."""
    kinds = [s.strip() for value in sidecars.sidecar for s in value.split(",") if s.strip()]
    for s in kinds:
        if s not in ("txt", "xmp"):
            raise CSRAError(f"--sidecar {s!r}: use txt, xmp or txt,xmp")
    if sidecars.xmp_name not in ("full", "stem"):
        raise CSRAError("--xmp-name: use full or stem")
    captioned = ("caption_sep", ", "), ("caption_ext", ".txt"), ("prepend", None), ("append", None), ("caption_dir", None)
    given = [f"--{k.replace('_', '-')}" for k, default in captioned if getattr(sidecars, k) != default]
    if given and "txt" not in kinds:
        raise CSRAError(f"{given[0]} shapes the .txt captions; add --sidecar txt")
    if sidecars.keep_mtime and not sidecars.embed:
        raise CSRAError("--keep-mtime is about the files --embed writes into; add --embed")
    return kinds


def caption_style(sidecars, inputs):
    """The .txt captions' style from the options (folders they mirror: the input folders)."""
    from ..data.inputs import IMAGE_EXTENSIONS
    from ..results.sidecars import CaptionStyle

    ext = sidecars.caption_ext if sidecars.caption_ext.startswith(".") else "." + sidecars.caption_ext
    if ext in (".", ".xmp") or "/" in ext or ext.lower() in IMAGE_EXTENSIONS:
        raise CSRAError(f"--caption-ext {sidecars.caption_ext!r}: give an extension such as .txt or .caption")
    fixed = lambda text: tuple(t.strip() for t in (text or "").split(",") if t.strip())  # noqa: E731
    folder = None
    if sidecars.caption_dir:
        check_output(sidecars.caption_dir, "--caption-dir")
        folder = Path(sidecars.caption_dir)
        if folder.exists() and not folder.is_dir():
            raise CSRAError(f"--caption-dir {folder}: exists and is not a folder")
    roots = tuple(a for a in inputs.inputs if a != "-" and os.path.isdir(a))
    return CaptionStyle(sidecars.caption_sep, ext, fixed(sidecars.prepend), fixed(sidecars.append), folder, roots)


def list_dry_run(inputs, output, page, writer, skip) -> None:
    """--dry-run: each image that would be read and each file that would be written, as
    ``read PATH`` / ``write PATH`` lines (``(replace)`` where one is there), on stdout."""
    from ..data.inputs import expand_inputs

    def line(verb: str, path) -> None:
        note = " (replace)" if verb == "write" and Path(path).exists() else ""
        typer.echo(f"{verb}\t{path}{note}")

    for p in expand_inputs(inputs.inputs, inputs.recursive, sys.stdin, warn=warn, null=inputs.null):
        if skip and p in skip:
            continue
        line("read", p)
        for side in writer.paths(p):
            line("write", side)
    if output.out != "-":
        line("write", output.out)
    if page:
        line("write", page)


def check_streams(inputs, output) -> None:
    """What stdin and stdout can be asked for, refused before any work."""
    if output.resume and output.out == "-":
        raise CSRAError("--resume continues an output file; give --out FILE")
    if output.resume and output.overwrite:
        raise CSRAError("--resume and --overwrite contradict each other; pick one")
    if output.update and output.out == "-":
        raise CSRAError("--update brings an output file up to date; give --out FILE")
    if output.update and (output.resume or output.overwrite):
        other = "--resume (an interrupted --update continues by itself)" if output.resume else "--overwrite"
        raise CSRAError(f"--update and {other} do not go together; pick one")
    if inputs.inputs.count("-") > 1:
        raise CSRAError("'-' (stdin) may be given once")
    if "-" in inputs.inputs and sys.stdin is None:
        raise CSRAError("'-' reads paths from stdin, but stdin is closed")
    if inputs.null and "-" not in inputs.inputs:
        raise CSRAError("--null is about paths on stdin; give - as an input")
    if output.out == "-" and sys.stdout is None:
        raise CSRAError("stdout is closed; give --out FILE")


def check_uris(inputs, run: RunSpec, kinds: list[str], embedding: bool = False, updating: bool = False) -> None:
    """URI inputs are read by a cluster's workers, and have no folder for sidecars."""
    from ..data.remote import is_uri

    uris = [a for a in inputs.inputs if is_uri(a)]
    if uris and run.engine != "ray":
        raise CSRAError(f"{uris[0]}: URI inputs are listed here and read by the cluster's workers; add --engine ray")
    if uris and kinds:
        raise CSRAError(f"{uris[0]}: sidecars are written beside local images; leave out --sidecar for URI inputs")
    if uris and embedding:
        raise CSRAError(f"{uris[0]}: --embed writes into local image files; leave it out for URI inputs")
    if uris and updating:
        raise CSRAError(f"{uris[0]}: --update compares local files with what the output recorded; it takes local inputs")
    check_inputs_exist([a for a in inputs.inputs if not is_uri(a)])


def _tag(inputs, output, run: RunSpec, selection, sidecars, quiet: bool, dry_run: bool = False):
    from ..console import start_progress
    from ..data.inputs import expand_inputs
    from ..engine.device import set_threads
    from ..engine.tagging import TagHooks, policy_for, run_settings, run_tagging
    from ..results.sidecars import SidecarWriter
    from ..results.sinks import FileSink, StreamSink, format_for, read_output

    kinds = sidecar_kinds(sidecars)
    captions = caption_style(sidecars, inputs)
    check_streams(inputs, output)
    out = output.out
    fmt = format_for(out, output.fmt)
    # the page is made anew from the output: --resume may rebuild the one it made before
    page = check_report_path(output.report, out, overwrite=output.overwrite or output.resume)
    streamed: list[dict] = []  # the records for --report when they go to stdout
    check_uris(inputs, run, kinds, sidecars.embed, output.update)
    check_output(out)
    started = time.time()
    run, card = resolved_run(run)
    if card is not None:
        policy_for(card, selection)  # --classes, --thresholds, --top-k refused before any export
    writer = SidecarWriter(kinds, sidecars.xmp_name, sidecars.overwrite_sidecars, captions)
    if dry_run:  # what the run would refuse, it refuses here too
        from ..results.sinks import done_keys, refuse_existing

        if output.update:
            raise CSRAError("--dry-run lists a fresh or resumed run; an --update's plan needs the model's settings, "
                            "so it is printed when the --update runs")
        if out != "-" and not (output.resume or output.overwrite):
            refuse_existing(Path(out))
        done = done_keys(Path(out), fmt) if output.resume else None
        list_dry_run(inputs, output, page, writer, done)
        raise typer.Exit(EXIT_OK)
    check_engine(run)
    if len(run.models) > 1 and run.engine != "local":
        raise CSRAError("several --model in one run go with --engine local (Ray runs one model)")
    set_threads()
    runner = runner_for(run)
    preparing = time.time() - started  # loading, and a first-use ONNX export: part of the elapsed time
    policy = policy_for(runner.card, selection)
    columns = runner.card.classes if selection.scores else None
    weights = (run.models[0].path or run.models[0].source) if len(run.models) == 1 else None
    settings = None if out == "-" else run_settings(runner, weights, policy)
    warnings: list[str] = []
    paths = expand_inputs(inputs.inputs, inputs.recursive, sys.stdin, warn=(lambda m: warnings.append(m) or warn(m)),
                          null=inputs.null)
    if output.update:
        paths = list(paths)  # the plan compares the output with all of them
    sink = (StreamSink(fmt, columns) if out == "-"
            else FileSink(Path(out), fmt, columns, output.resume, output.overwrite, settings,
                          paths if output.update else None))
    if sink.retrying:
        info(f"trying again {sink.retrying} image(s) that failed in the earlier run")
    plan = getattr(sink, "plan", None)
    if plan is not None:
        paths = paths + plan.outside
    total = None
    if not quiet and "-" not in inputs.inputs:
        total = (len(paths) if isinstance(paths, list)
                 else sum(1 for _ in expand_inputs(inputs.inputs, inputs.recursive))) - len(sink.done)
    embedder = keyword_embedder(sidecars, quiet)

    def on_record(rec):
        if page and out == "-":
            streamed.append(rec)
        if rec["error"]:
            return
        hierarchy = keyword_hierarchy(list(rec["scores"]), policy.broader, policy.keywords)  # the fine tags' paths
        for problem in writer.write(rec["path"], rec["tags"], hierarchy):
            warn(f"{rec['path']}: {problem}")
        if embedder:
            embedder(rec, hierarchy)

    progress = start_progress(total, "tagging", quiet)
    hooks = TagHooks(on_record=on_record, progress=progress.advance if progress else None, skip=sink.done)
    try:
        if run.engine == "local":
            stats = run_tagging(runner, paths, [sink], policy, run, hooks, settings)
        else:
            from ..engine.ray_engine import run_tagging_ray

            stats = run_tagging_ray(runner, paths, [sink], policy, run, hooks, settings)
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
        print_tag_summary(stats, out, preparing, runner)
        if plan is not None:
            print_update_summary(plan, out)
    raise typer.Exit(EXIT_SOME_FAILED if stats.failed else EXIT_OK)


def keyword_embedder(sidecars, quiet: bool):
    """--embed: a per-record hook that writes the tags into the image file and puts the file's
    new fingerprint in the record (so --update does not take csra's own write for an edit); a
    file it cannot write safely is reported and left as it was. None without --embed."""
    if not sidecars.embed:
        return None
    from ..results.embedded import NotEmbedded, embed_keywords

    if not quiet:
        warn("--embed: writing keywords INTO the image files (their pixels and your own keywords are kept)")

    def embed(rec: dict, hierarchy: list[str] | None = None) -> None:
        try:
            file = embed_keywords(rec["path"], rec["tags"], sidecars.keep_mtime, hierarchy)
        except (NotEmbedded, OSError) as exc:
            warn(f"{rec['path']}: keywords not embedded ({exc})")
            return
        if "file" in rec:
            rec["file"] = file

    return embed


def ran_as(runner) -> str:
    """The model and how it ran: "csra-voc-effl2-512, int8 (onnxruntime, CPU)"; several: each, "; "-joined."""
    from ..engine.runners import OnnxRunner, precision_of

    if hasattr(runner, "runners"):
        return "; ".join(ran_as(r) for r in runner.runners)
    engine = "onnxruntime" if isinstance(getattr(runner, "runner", runner), OnnxRunner) else "PyTorch"
    device = str(getattr(runner, "device", "cpu")).split(":")[0].upper()
    if getattr(runner, "on_gpu", False):
        device = "CUDA"
    tta = ", flip TTA" if getattr(runner, "tta", False) else ""
    return f"{runner.card.name}, {precision_of(runner)} ({engine}, {device}{tta})"


def print_update_summary(plan, out: str) -> None:
    """What --update did: the counts, and the records it dropped (their files are gone)."""
    info(f"updated {out}: {plan.summary()}")
    for gone in plan.removed[:10]:
        info(f"  removed (the file is gone): {gone}")
    if len(plan.removed) > 10:
        info(f"  … and {len(plan.removed) - 10} more removed")


def print_tag_summary(stats, out: str, preparing: float = 0.0, runner=None) -> None:
    from rich.table import Table

    table = Table(title="csra tag", show_header=False)
    if runner is not None:
        table.add_row("model", ran_as(runner))
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


