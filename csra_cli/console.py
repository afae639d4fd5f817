"""stderr output: one-line errors, progress bars only on a terminal, summary tables."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    # escaped: a message is plain text ("pip install 'csra[ray]'" must keep its brackets)
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def info(message: str) -> None:
    err.print(message, soft_wrap=True)


def progress_enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def make_progress(total: int | None, description: str):
    """A rich progress bar on stderr: done/total, images/s, ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return super().render(task).__class__(f"{speed:.1f} img/s" if speed else "… img/s")

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        Rate(""), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=err, transient=False)
    task = progress.add_task(description, total=total)
    return progress, task


def status(text: str) -> None:
    """A one-line status that rewrites itself, shown only on a terminal (logs stay clean)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text}\033[K")
        sys.stderr.flush()


def status_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
