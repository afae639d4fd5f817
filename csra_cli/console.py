"""stderr output: one-line errors, progress (a bar on a terminal, plain lines in logs), summary tables."""
from __future__ import annotations

import os
import sys
import time



class _StderrConsole:
    """rich's Console on stderr, made on first use: importing rich is ~20 ms, a tenth of a
    one-image run's start, and off a terminal one-line messages do not need it (see _say)."""

    _console = None

    def __getattr__(self, name):
        if _StderrConsole._console is None:
            from rich.console import Console

            _StderrConsole._console = Console(stderr=True, highlight=False)
        return getattr(_StderrConsole._console, name)


err = _StderrConsole()


def _say(style: str, label: str, message: str) -> None:
    """One message line, ``label`` (error:, warning: or nothing) in ``style`` before it: through
    rich on a terminal (colour), as plain text elsewhere, which is what rich writes there too."""
    if sys.stderr.isatty() or _StderrConsole._console is not None and _StderrConsole._console.is_terminal:
        from rich.markup import escape

        # escaped: a message is plain text ("pip install 'csra[ray]'" must keep its brackets)
        err.print(f"[{style}]{label}[/] {escape(message)}" if label else escape(message), soft_wrap=True)
    else:
        sys.stderr.write(f"{label} {message}\n" if label else message + "\n")
        sys.stderr.flush()


def error(message: str) -> None:
    _say("bold red", "error:", message)


def warn(message: str) -> None:
    _say("yellow", "warning:", message)


def info(message: str) -> None:
    if "[" in message:  # it may hold rich markup
        err.print(message, soft_wrap=True)
    else:
        _say("", "", message)


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


_last_status_line = float("-inf")


def status(text: str) -> None:
    """A one-line status that rewrites itself on a terminal; in a log (nohup, CI) the same text as
    a plain line every CSRA_STATUS_SECONDS (30), so a long run still shows it is alive."""
    global _last_status_line
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text}\033[K")
        sys.stderr.flush()
        return
    now = time.monotonic()
    if now - _last_status_line >= float(os.environ.get("CSRA_STATUS_SECONDS", "30")):
        _last_status_line = now
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def status_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


class LogProgress:
    """Progress for logs (CI, cron, cluster jobs): a plain line every few seconds, no bar, no
    carriage returns. tqdm was not used for this: off a terminal it still redraws with \\r."""

    def __init__(self, total: int | None, description: str, every: float | None = None, stream=None):
        self.total, self.description, self.done = total, description, 0
        self.every = every if every is not None else float(os.environ.get("CSRA_PROGRESS_SECONDS", "5"))
        self.stream = stream or sys.stderr
        self.started = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if not self.total:
            return f"{self.description}: {self.done} images, {rate:.1f} img/s, {clock(elapsed)} elapsed"
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = clock(left) if left == left else "?"
        return (f"{self.description}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                f"{rate:.1f} img/s, ETA {eta}")

    def stop(self) -> None:
        pass


class BarProgress:
    """The rich bar, with the same two calls as LogProgress."""

    def __init__(self, total: int | None, description: str):
        self.progress, self.task = make_progress(total, description)
        self.progress.start()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def stop(self) -> None:
        self.progress.stop()


def start_progress(total: int | None, description: str, quiet: bool):
    """A bar on a terminal, plain lines every few seconds otherwise, nothing with --quiet."""
    if quiet:
        return None
    return BarProgress(total, description) if sys.stderr.isatty() else LogProgress(total, description)


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
