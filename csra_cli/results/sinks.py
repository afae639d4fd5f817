"""Result records and where they go: CSV, JSON, JSON Lines, SQLite, written so nothing is lost.

A run to a file appends each record to a journal (``.NAME.partial.jsonl`` beside the output,
flushed per batch). When the run ends the output is rendered from the journal into a temporary
file and renamed into place, so the output is always complete or absent; after Ctrl-C or
kill -9, ``--resume`` continues from the journal (or from a finished output) and the final file
holds every image exactly once.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from ..fileio import atomic_temp

FORMATS = ("csv", "json", "jsonl", "sqlite")
SQLITE_EXTS = ("sqlite", "sqlite3", "db")


def format_for(out: str, fmt: str | None) -> str:
    if out == "-" and fmt == "sqlite":
        raise ValueError("--format sqlite writes a database file; give --out FILE.sqlite")
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format '{fmt}' (use {', '.join(FORMATS)})")
        return fmt
    if out == "-":
        return "jsonl"
    ext = Path(out).suffix.lower().lstrip(".")
    if ext in FORMATS:
        return ext
    if ext == "ndjson":
        return "jsonl"
    if ext in SQLITE_EXTS:
        return "sqlite"
    raise ValueError(f"cannot tell the format of '{out}' from its extension; use .csv/.json/.jsonl/.sqlite or --format")


def make_record(path: str, tags: list[str], scores: dict[str, float], error: str = "",
                all_scores: dict[str, float] | None = None, model: str | None = None,
                tagged_at: str | None = None) -> dict:
    rec = {"path": path, "tags": tags, "scores": scores, "error": error or None}
    if all_scores is not None:
        rec["all_scores"] = all_scores
    if model is not None:  # kept in the journal for the SQLite output; the text formats leave them out
        rec["model"], rec["tagged_at"] = model, tagged_at
    return rec


def public_record(rec: dict) -> dict:
    """The JSON shape: path, tags, scores (tag -> score; every class with --scores), error."""
    scores = rec.get("all_scores") or rec["scores"]
    return {"path": rec["path"], "tags": rec["tags"], "scores": scores, "error": rec["error"]}


class CSVRenderer:
    def __init__(self, fh: TextIO, classes: list[str] | None):
        self.classes = classes
        self.writer = csv.writer(fh, lineterminator="\n")
        self.writer.writerow(["path", "tags", "error"] + (classes or []))

    def write(self, rec: dict) -> None:
        row = [rec["path"], ";".join(rec["tags"]), rec["error"] or ""]
        if self.classes:
            scores = rec.get("all_scores") or {}
            row += ["" if c not in scores else f"{scores[c]:.6f}" for c in self.classes]
        self.writer.writerow(row)

    def close(self) -> None:
        pass


class JSONLRenderer:
    def __init__(self, fh: TextIO, classes=None):
        self.fh = fh

    def write(self, rec: dict) -> None:
        self.fh.write(json.dumps(public_record(rec), ensure_ascii=False) + "\n")

    def close(self) -> None:
        pass


class JSONRenderer:
    """A JSON array written record by record (never all in memory)."""

    def __init__(self, fh: TextIO, classes=None):
        self.fh, self.first = fh, True
        fh.write("[")

    def write(self, rec: dict) -> None:
        self.fh.write(("\n" if self.first else ",\n") + json.dumps(public_record(rec), ensure_ascii=False))
        self.first = False

    def close(self) -> None:
        self.fh.write("\n]\n")


RENDERERS = {"csv": CSVRenderer, "jsonl": JSONLRenderer, "json": JSONRenderer}


def journal_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial.jsonl")


def read_journal(path: Path) -> Iterator[dict]:
    """Records of a journal; a last line cut by a kill is skipped."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                break


def read_output(path: Path, fmt: str) -> Iterator[dict]:
    """Records of a finished output (for --resume after a completed run)."""
    if fmt == "sqlite":
        from .sqlite_db import read_db

        for p, tags, scores, error, all_scores, model, tagged_at in read_db(path):
            yield make_record(p, tags, scores, error, all_scores, model, tagged_at)
        return
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            extra = [c for c in (reader.fieldnames or []) if c not in ("path", "tags", "error")]
            for row in reader:
                tags = [t for t in row["tags"].split(";") if t]
                all_scores = {c: float(row[c]) for c in extra if row.get(c)} or None
                scores = {t: (all_scores or {}).get(t) for t in tags}
                yield make_record(row["path"], tags, scores, row["error"], all_scores)
        return
    text = path.read_text(encoding="utf-8")
    items = json.loads(text) if fmt == "json" else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    for it in items:
        yield make_record(it["path"], it["tags"], {t: it["scores"].get(t) for t in it["tags"]},
                          it.get("error") or "", it["scores"] if len(it["scores"]) > len(it["tags"]) else None)


class FileSink:
    """Journal while running, atomic render at the end."""

    def __init__(self, out: Path, fmt: str, classes: list[str] | None, resume: bool, overwrite: bool):
        self.out, self.fmt, self.classes = out, fmt, classes
        self.journal = journal_path(out)
        self.done: set[str] = set()
        if out.is_dir():
            raise ValueError(f"--out {out}: is a directory; give a file name such as {out / 'tags.csv'}")
        if not out.parent.exists():
            raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
        if resume:
            if not self.journal.exists() and out.exists():
                self._seed_journal(read_output(out, fmt))
            if self.journal.exists():
                self._truncate_partial_line()
                self.done = {r["path"] for r in read_journal(self.journal)}
        else:
            if (out.exists() or self.journal.exists()) and not overwrite:
                what = out if out.exists() else self.journal
                raise FileExistsError(f"{what} exists; use --overwrite to replace it or --resume to continue it")
            self.journal.unlink(missing_ok=True)
        self.fh = open(self.journal, "a", encoding="utf-8")

    def _seed_journal(self, records: Iterable[dict]) -> None:
        with open(self.journal, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")

    def _truncate_partial_line(self) -> None:
        data = self.journal.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.journal, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def write(self, rec: dict) -> None:
        self.fh.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        """Render the journal into the output atomically, then drop the journal."""
        self.fh.close()
        fd, tmp = atomic_temp(self.out)
        try:
            if self.fmt == "sqlite":  # a database, not a text stream: SQLite writes the temporary file
                os.close(fd)
                from .sqlite_db import write_db

                write_db(tmp, read_journal(self.journal))
            else:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                    renderer = RENDERERS[self.fmt](fh, self.classes)
                    for rec in read_journal(self.journal):
                        renderer.write(rec)
                    renderer.close()
            os.replace(tmp, self.out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.journal.unlink(missing_ok=True)

    def abort(self) -> None:
        """Interrupted: keep the journal for --resume."""
        self.fh.flush()
        self.fh.close()


class StreamSink:
    """Records straight to stdout as they come (``--out -``)."""

    def __init__(self, fmt: str, classes: list[str] | None, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.done: set[str] = set()
        self.renderer = RENDERERS[fmt](self.stream, classes)

    def write(self, rec: dict) -> None:
        self.renderer.write(rec)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.renderer.close()
        self.stream.flush()

    def abort(self) -> None:
        self.stream.flush()
