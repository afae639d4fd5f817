"""``csra report``: a tag output (CSV/JSON/JSONL/SQLite) as one HTML page to look at."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import info
from ..errors import CSRAError
from .common import OverwriteOpt, QuietOpt, app, check_output, handle_errors

# Shared by ``tag --report`` and ``eval --report``.
ReportOpt = Annotated[Optional[str], typer.Option(
    "--report", help="Also write a self-contained HTML page to look at (thumbnails, filters).")]


def check_report_path(report: str | None, *others: str | None, overwrite: bool = False,
                      flag: str = "--report") -> Path | None:
    """The page's path, refused early (before a long run) when it cannot be written, or when it
    exists and --overwrite was not given."""
    if not report:
        return None
    page = Path(report)
    if page.suffix.lower() not in (".html", ".htm"):
        raise CSRAError(f"{flag} {report}: give a file name ending in .html")
    if page.is_dir() or not page.parent.is_dir():
        raise CSRAError(f"{flag} {report}: the folder {page.parent} does not exist" if not page.parent.is_dir()
                        else f"{flag} {report}: is a folder")
    if any(o and o != "-" and Path(o).resolve() == page.resolve() for o in others):
        raise CSRAError(f"{flag} {report}: is also the output; give the page its own name")
    check_output(page, flag, overwrite)  # the one rule for files that exist
    return page


def write_tag_report(records, page: Path, source: str, quiet: bool) -> None:
    from ..report.tag_report import build_tag_report, plural

    stats = build_tag_report(records, page, title=f"csra tags: {Path(source).name}" if source else "csra tags",
                             source=source)
    if not quiet:
        info(f"report: {page} ({plural(stats['images'], 'image')}, {plural(stats['errors'], 'error')}, "
             f"{stats['bytes'] / 1e6:.1f} MB, {stats['seconds']:.1f} s)")


@app.command()
@handle_errors
def report(
    tags_file: Annotated[str, typer.Argument(help="A csra tag output: .csv, .json, .jsonl or .sqlite/.db.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The HTML page to write.")] = "tags.html",
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="csv, json, jsonl or sqlite (default: from the file name).")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
):
    """A self-contained HTML page of tagged images: thumbnails, tag counts that filter, a search box,
    the images that could not be read listed apart. It opens offline (no server, nothing fetched)."""
    from ..results.sinks import format_for, read_output

    source = Path(tags_file)
    if not source.is_file():
        raise CSRAError(f"{tags_file}: no such file")
    fmt = format_for(tags_file, fmt)
    page = check_report_path(out, tags_file, overwrite=overwrite, flag="--out")
    records = list(read_output(source, fmt))  # a malformed file: one line naming it (CSRAError)
    write_tag_report(records, page, tags_file, quiet)
