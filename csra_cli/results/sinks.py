"""Result records and where they go: CSV, JSON, JSON Lines, SQLite, written so nothing is lost.

A run to a file appends each record to a journal (``.NAME.partial.jsonl`` beside the output,
flushed per batch). When the run ends the output is rendered from the journal into a temporary
file and renamed into place, so the output is always complete or absent; after Ctrl-C or
kill -9, ``--resume`` continues from the journal (or from a finished output) and the final file
holds every image exactly once.

One run at a time per output: a second run on the same ``--out`` is refused (an exclusive
``flock`` on ``.NAME.lock``). Finished images are known by their normalised absolute path, so
``photos``, ``./photos`` and ``/abs/photos`` resume the same run; records keep the path as given,
and a finished output keeps those absolute paths beside it (``.NAME.csra-index.json``; SQLite in
its ``image_paths`` table) for a --resume from another folder. The journal, the lock and the index
are never opened through a symlink or into a file that is not the user's own (``open_own``).
File names that are not UTF-8 travel losslessly: raw bytes in the journal (surrogateescape); the
outputs stay valid UTF-8 for every reader (U+FFFD in ``path``) and carry the exact bytes
percent-encoded in ``path_bytes`` (a JSON field, a last CSV column where needed, a BLOB in
SQLite). CSV cells that a spreadsheet would run as a formula (``= + - @``, tab, CR) get a leading
``'`` (the JSON outputs keep the exact path).
"""
from __future__ import annotations

import csv
import errno
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from ..data.fingerprint import is_fingerprint
from ..errors import CSRAError
from .record import make_record, path_key, settings_text  # noqa: F401 - one place for these
from ..fileio import atomic_temp, fsync_dir, fsync_file, open_own, temp_leftovers

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


class DoneSet(set):
    """Keys of finished images; ``path in done`` normalises the path first."""

    def __contains__(self, path) -> bool:
        return set.__contains__(self, path_key(path))


def text_of(value: str) -> str:
    """Valid Unicode text for an output: bytes of a name that are not UTF-8 (carried inside csra
    as surrogate escapes) become U+FFFD; the exact bytes travel in ``path_bytes``."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def path_bytes(path: str) -> str | None:
    """The exact bytes of a path that is not valid UTF-8, percent-encoded (lossless:
    ``urllib.parse.unquote_to_bytes`` gives them back); None for every other path."""
    from urllib.parse import quote

    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return quote(os.fsencode(path), safe="/ ")


def path_from(text: str, raw: str | None) -> str:
    """The path a record names: from its ``path_bytes`` where it has them."""
    from urllib.parse import unquote_to_bytes

    return os.fsdecode(unquote_to_bytes(raw)) if raw else text


def to_json(obj) -> str:
    """JSON text that is valid UTF-8 and that every JSON reader takes (no lone surrogates)."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(_texts(obj), ensure_ascii=False)
    return text


def _texts(obj):
    if isinstance(obj, str):
        return text_of(obj)
    if isinstance(obj, dict):
        return {text_of(k): _texts(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_texts(v) for v in obj]
    return obj


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(text: str) -> str:
    """A cell a spreadsheet shows as text, never runs: ``'`` before a formula start (and before
    a leading ``'`` itself, so reading back is exact)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_uncell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def public_record(rec: dict, provenance: bool = False) -> dict:
    """The JSON shape: path, tags, scores (tag -> score; every class with --scores), error, and
    ``path_bytes`` for a path that is not valid UTF-8 (``path`` then shows U+FFFD for its bad bytes);
    with ``provenance`` (file outputs) the image's ``file`` fingerprint and the ``settings`` that
    made its tags, where the record has them."""
    scores = rec.get("all_scores") or rec["scores"]
    out = {"path": text_of(rec["path"]), "tags": rec["tags"], "scores": scores, "error": rec["error"]}
    raw = path_bytes(rec["path"])
    if raw is not None:
        out["path_bytes"] = raw
    if provenance:
        for field in PROVENANCE:
            if rec.get(field) is not None:
                out[field] = rec[field]
    return out


PROVENANCE = ("file", "settings")
# CSV columns of the provenance, after the scores (``settings`` as compact JSON text).
FILE_COLUMNS = ("file_size", "file_mtime_ns", "file_sha256", "settings")


def file_cells(rec: dict) -> list[str]:
    f = rec.get("file") or {}
    return [str(f.get("size", "")), str(f.get("mtime_ns", "")), f.get("sha256", ""), settings_text(rec.get("settings"))]


def file_from_cells(row: dict) -> tuple[dict | None, dict | None]:
    """(file, settings) back from a CSV row's provenance cells (None where they are empty)."""
    file = ({"size": int(row["file_size"]), "mtime_ns": int(row["file_mtime_ns"]), "sha256": row["file_sha256"]}
            if row.get("file_sha256") else None)
    settings = json.loads(row["settings"]) if row.get("settings") else None
    return file, settings


class CSVRenderer:
    """``path,tags,error`` (then every class's score with --scores), with ``provenance`` (file
    outputs) ``file_size,file_mtime_ns,file_sha256,settings``, and a last column ``path_bytes``
    where some path is not valid UTF-8 (``raw_column``)."""

    def __init__(self, fh: TextIO, classes: list[str] | None, raw_column: bool = False, provenance: bool = False):
        self.classes, self.raw_column, self.provenance = classes, raw_column, provenance
        self.writer = csv.writer(fh, lineterminator="\n")
        self.writer.writerow(["path", "tags", "error"] + [csv_cell(c) for c in classes or []]
                             + (list(FILE_COLUMNS) if provenance else []) + (["path_bytes"] if raw_column else []))

    def write(self, rec: dict) -> None:
        row = [csv_cell(text_of(rec["path"])), csv_cell(";".join(rec["tags"])), csv_cell(text_of(rec["error"] or ""))]
        if self.classes:
            scores = rec.get("all_scores") or {}
            row += ["" if c not in scores else f"{scores[c]:.6f}" for c in self.classes]
        if self.provenance:
            row += file_cells(rec)
        if self.raw_column:
            row.append(path_bytes(rec["path"]) or "")
        self.writer.writerow(row)

    def close(self) -> None:
        pass


class JSONLRenderer:
    def __init__(self, fh: TextIO, classes=None, raw_column=False, provenance: bool = False):
        self.fh, self.provenance = fh, provenance

    def write(self, rec: dict) -> None:
        self.fh.write(to_json(public_record(rec, self.provenance)) + "\n")

    def close(self) -> None:
        pass


class JSONRenderer:
    """A JSON array written record by record (never all in memory)."""

    def __init__(self, fh: TextIO, classes=None, raw_column=False, provenance: bool = False):
        self.fh, self.first, self.provenance = fh, True, provenance
        fh.write("[")

    def write(self, rec: dict) -> None:
        self.fh.write(("\n" if self.first else ",\n") + to_json(public_record(rec, self.provenance)))
        self.first = False

    def close(self) -> None:
        self.fh.write("\n]\n")


RENDERERS = {"csv": CSVRenderer, "jsonl": JSONLRenderer, "json": JSONRenderer}


def journal_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial.jsonl")


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """An exclusive lock on one output, so two runs never write it at once."""

    def __init__(self, out: Path):
        import fcntl

        self.path, self.fd = lock_path(out), None
        while True:
            fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CSRAError(f"another csra run is writing {out}; wait for it to finish "
                                    f"(or give a different --out)") from None
                raise
            try:  # the previous holder may have removed the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: nobody can lock a stale file
            os.close(self.fd)
            self.fd = None


_JOURNAL_FLAGS = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "r+b": os.O_RDWR}


def open_journal(path: Path, mode: str):
    """The journal, never through a symlink or into another user's file (``open_own``)."""
    fd = open_own(path, _JOURNAL_FLAGS[mode])
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding="utf-8", errors="surrogateescape")


def read_journal(path: Path) -> Iterator[dict]:
    """Records of a journal; a last line cut by a kill is skipped."""
    with open_journal(path, "r") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                break


def read_output(path: Path, fmt: str) -> Iterator[dict]:
    """Records of a finished output (csra report, --resume after a completed run). Anything that
    is not a csra output of that format (a cell past the CSV size limit, a nesting bomb, wrong
    types) is one CSRAError naming the file, never a traceback."""
    try:
        for rec in _read_output(path, fmt):
            yield _checked(rec)
    except CSRAError:
        raise
    except (csv.Error, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            UnicodeDecodeError) as exc:
        text = str(exc).strip()
        why = ("nested too deeply" if isinstance(exc, RecursionError)
               else text.splitlines()[0][:200] if text else type(exc).__name__)
        raise CSRAError(f"{path}: cannot read it as a csra {fmt} output ({why})") from None


def _checked(rec: dict) -> dict:
    """A record with the types csra writes: path text, tags a list of text, scores numbers."""
    ok = (isinstance(rec["path"], str) and isinstance(rec["tags"], list) and all(isinstance(t, str) for t in rec["tags"])
          and isinstance(rec["scores"], dict)
          and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in rec["scores"].values())
          and isinstance(rec["error"], (str, type(None)))
          and (rec.get("all_scores") is None or isinstance(rec["all_scores"], dict))
          and (rec.get("file") is None or is_fingerprint(rec["file"]))
          and (rec.get("settings") is None or isinstance(rec["settings"], dict)))
    if not ok:
        raise TypeError(f"a record of the wrong shape for {str(rec['path'])[:80]!r}")
    return rec


def _read_output(path: Path, fmt: str) -> Iterator[dict]:
    if fmt == "sqlite":
        from .sqlite_db import read_db

        yield from read_db(path)
        return
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            reader = csv.reader(fh)
            header = [csv_uncell(c) for c in next(reader, [])]
            if header[:3] != ["path", "tags", "error"]:
                raise ValueError("its header is not path,tags,error")
            extra = [c for c in header[3:] if c != "path_bytes" and c not in FILE_COLUMNS]
            for cells in reader:
                row = dict(zip(header, cells))
                tags = [t for t in csv_uncell(row["tags"]).split(";") if t]
                all_scores = {c: float(row[c]) for c in extra if row.get(c)} or None
                scores = {t: (all_scores or {}).get(t) for t in tags}
                file, settings = file_from_cells(row)
                yield make_record(path_from(csv_uncell(row["path"]), row.get("path_bytes")), tags, scores,
                                  csv_uncell(row["error"]), all_scores, file=file, settings=settings)
        return
    text = path.read_text(encoding="utf-8")
    items = json.loads(text) if fmt == "json" else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    if not isinstance(items, list):
        raise TypeError("not a list of records")
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("scores"), dict) or not isinstance(it.get("tags"), list):
            raise TypeError("a record is not {path, tags, scores, error}")
        full = len(it["scores"]) > len(it["tags"])  # --scores: every class's
        # not the full table: the scores as written (broader terms have none; --keywords broad
        # keeps the classes' scores without their names among the tags)
        chosen = {t: it["scores"][t] for t in it["tags"] if t in it["scores"]} if full else dict(it["scores"])
        yield make_record(path_from(it["path"], it.get("path_bytes")), it["tags"], chosen, it.get("error") or "",
                          it["scores"] if full else None, file=it.get("file"), settings=it.get("settings"))


def index_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.csra-index.json")


def write_index(out: Path, keys: Iterable[str]) -> None:
    """Beside a finished output: the absolute path of each record's image, in order, and the
    output's size and mtime (an index of another version of the file is not used). Records keep
    paths as given, relative to the folder of the run that made them; --resume from another
    folder matches images by these, as the journal does. Losing it only costs that match."""
    from ..fileio import atomic_write_bytes

    st = out.stat()
    index = {"output_size": st.st_size, "output_mtime_ns": st.st_mtime_ns, "keys": list(keys)}
    try:
        atomic_write_bytes(index_path(out), json.dumps(index, ensure_ascii=False).encode("utf-8", "surrogateescape"))
    except OSError:
        pass


def read_index(out: Path) -> list[str] | None:
    """The keys ``write_index`` left for this very output file; None where there are none."""
    try:
        with os.fdopen(open_own(index_path(out), os.O_RDONLY), "rb") as fh:
            index = json.loads(fh.read().decode("utf-8", "surrogateescape"))
        st = out.stat()
        if (index["output_size"], index["output_mtime_ns"]) == (st.st_size, st.st_mtime_ns):
            keys = index["keys"]
            return keys if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    return None


def finished_records(out: Path, fmt: str) -> list[dict]:
    """The records of a finished output with their images' keys, for --resume without a journal:
    from its index, else from paths as given, which is right only from the folder it was made in,
    so an output none of whose relative paths is there from here is refused, not tagged twice."""
    records = list(read_output(out, fmt))
    if records and all(r.get("key") for r in records):  # SQLite keeps them in image_paths
        return records
    keys = read_index(out)
    if keys is not None and len(keys) == len(records):
        return [{**r, "key": k} for r, k in zip(records, keys)]
    relative = [r["path"] for r in records if not os.path.isabs(r["path"]) and not r["error"]]
    from ..data.remote import is_uri

    relative = [p for p in relative if not is_uri(p)]
    if relative and not any(os.path.lexists(p) for p in relative):
        raise CSRAError(f"--resume: {out} names its images relative to the folder it was made in "
                        f"({relative[0]} is not here); run from that folder, or use --overwrite")
    return records


def refuse_existing(out: Path) -> None:
    """A run without --resume/--overwrite never replaces an output, nor the journal of one."""
    journal = journal_path(out)
    if out.exists() or os.path.lexists(journal):
        what = out if out.exists() else journal
        raise FileExistsError(f"{what} exists; use --overwrite to replace it or --resume to continue it")


def done_keys(out: Path, fmt: str) -> DoneSet:
    """The images an output (its journal, else the finished file) already has, without changing
    anything: what --resume would leave out."""
    journal = journal_path(out)
    records = read_journal(journal) if os.path.lexists(journal) else finished_records(out, fmt) if out.exists() else []
    done = DoneSet()
    done.update(r.get("key") or path_key(r["path"]) for r in records if not r["error"])
    return done


class FileSink:
    """Journal while running, atomic render at the end. ``settings``: the run's (``run_settings``),
    which --resume checks the output's records against; ``update``: the run's input paths for
    --update (see ``update.plan_update``), whose ``plan`` says what it does."""

    def __init__(self, out: Path, fmt: str, classes: list[str] | None, resume: bool, overwrite: bool,
                 settings: dict | None = None, update: list[str] | None = None):
        self.out, self.fmt, self.classes, self.settings = out, fmt, classes, settings
        self.journal = journal_path(out)
        self.done = DoneSet()
        self.retrying = 0  # images whose earlier attempt failed, tried again on --resume
        self.plan = None
        if out.is_dir():
            raise ValueError(f"--out {out}: is a directory; give a file name such as {out / 'tags.csv'}")
        if not out.parent.exists():
            raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
        self.lock = OutputLock(out)
        try:
            for tmp in temp_leftovers(out):  # a run killed while rendering; we hold the lock
                tmp.unlink(missing_ok=True)
            if update is not None:
                self._prepare_update(update)
            else:
                self._prepare(resume, overwrite)
            self.fh = open_journal(self.journal, "a")
        except BaseException:
            self.lock.release()
            raise

    def _prepare(self, resume: bool, overwrite: bool) -> None:
        out = self.out
        if resume:
            if not os.path.lexists(self.journal) and out.exists():
                self._rewrite_journal(finished_records(out, self.fmt))
            if os.path.lexists(self.journal):
                self._truncate_partial_line()
                self._check_settings(read_journal(self.journal))
                if any(r["error"] for r in read_journal(self.journal)):
                    self._rewrite_journal(read_journal(self.journal))
                for r in read_journal(self.journal):
                    set.add(self.done, r.get("key") or path_key(r["path"]))
        else:
            if not overwrite:
                refuse_existing(out)
            self.journal.unlink(missing_ok=True)

    def _check_settings(self, records: Iterable[dict]) -> None:
        """--resume continues a run with the same settings, or is refused (never a silent mix);
        records of an older csra, which has none, are taken as they are."""
        from .update import settings_change

        if self.settings is None:
            return
        for r in records:
            change = r.get("settings") and settings_change(r["settings"], self.settings)
            if change:
                raise CSRAError(f"--resume: {self.out} was tagged with other settings ({change}); run with the "
                                f"same options, or --update to tag its images again with these")

    def _prepare_update(self, inputs: list[str]) -> None:
        """The journal starts as the records that still hold (an interrupted --update or run
        continues from its journal); ``done`` is their images, which are not decoded."""
        from .update import plan_update

        if os.path.lexists(self.journal):
            self._truncate_partial_line()
            base: Iterable[dict] = read_journal(self.journal)
        else:
            base = finished_records(self.out, self.fmt) if self.out.exists() else []
        self.plan = plan_update(base, inputs, self.settings or {})
        self._rewrite_journal(self.plan.kept)
        set.update(self.done, (r.get("key") or path_key(r["path"]) for r in self.plan.kept))

    def _rewrite_journal(self, records: Iterable[dict]) -> None:
        """The journal holding ``records`` less the failures (--resume tries those again),
        replaced atomically."""
        fd, tmp = atomic_temp(self.journal)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
                for r in records:
                    if r["error"]:
                        self.retrying += 1
                        continue
                    fh.write(self._journal_line(r))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.journal)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _journal_line(rec: dict) -> str:
        rec = rec if "key" in rec else {**rec, "key": path_key(rec["path"])}
        return json.dumps(rec, ensure_ascii=False) + "\n"

    def _truncate_partial_line(self) -> None:
        with open_journal(self.journal, "r+b") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def write(self, rec: dict) -> None:
        self.fh.write(self._journal_line(rec))

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        """Render the journal into the output atomically and durably, then drop the journal."""
        self.fh.close()
        fd, tmp = atomic_temp(self.out)
        try:
            if self.fmt == "sqlite":  # a database, not a text stream: SQLite writes the temporary file
                os.close(fd)
                from .sqlite_db import write_db

                write_db(tmp, read_journal(self.journal))
                fsync_file(tmp)
            else:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                    raw = any(path_bytes(r["path"]) for r in read_journal(self.journal))
                    renderer = RENDERERS[self.fmt](fh, self.classes, raw, provenance=True)
                    for rec in read_journal(self.journal):
                        renderer.write(rec)
                    renderer.close()
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.out)
            fsync_dir(self.out.parent)  # the rename is on disk before the journal goes
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.fmt != "sqlite":  # a database holds its keys itself
            write_index(self.out, (r.get("key") or path_key(r["path"]) for r in read_journal(self.journal)))
        self.journal.unlink(missing_ok=True)
        self.lock.release()

    def abort(self) -> None:
        """Interrupted: keep the journal for --resume."""
        try:
            if not self.fh.closed:
                self.fh.flush()
                self.fh.close()
        finally:
            self.lock.release()


class StreamSink:
    """Records straight to stdout as they come (``--out -``)."""

    def __init__(self, fmt: str, classes: list[str] | None, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.done = DoneSet()
        self.retrying = 0
        try:  # every text is valid already; a stray surrogate must not end the run
            self.stream.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
        # A stream cannot look ahead for names that are not UTF-8: its CSV always has path_bytes.
        self.renderer = RENDERERS[fmt](self.stream, classes, True)

    def write(self, rec: dict) -> None:
        self.renderer.write(rec)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.renderer.close()
        self.stream.flush()

    def abort(self) -> None:
        self.stream.flush()
