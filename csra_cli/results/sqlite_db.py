"""The SQLite output: a database to query rather than a text file to read.

``images(id, path, error, model, tagged_at, file_size, file_mtime_ns, file_sha256, settings_id)``
holds one row per image (the file's size, mtime and sha256 when it was tagged, which ``--update``
compares; ``settings(id, json)``: the settings that made its tags, one row per distinct set); ``tags(image_id, tag,
score)`` one row per tag given (best first); with --scores, ``scores(image_id, class, score)``
holds every class's score; ``image_paths(image_id, abs_path)`` the normalised absolute path of
each image (records keep paths as given), which ``--resume`` matches images by. "Photos with a
dog and a person" is then one query (see the README).
It is written at the end of a run from the journal, like the text formats.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

SCHEMA = """
CREATE TABLE settings(id INTEGER PRIMARY KEY, json TEXT NOT NULL UNIQUE);
CREATE TABLE images(id INTEGER PRIMARY KEY, path TEXT NOT NULL, error TEXT, model TEXT, tagged_at TEXT,
                    file_size INTEGER, file_mtime_ns INTEGER, file_sha256 TEXT, settings_id INTEGER REFERENCES settings(id));
CREATE TABLE tags(image_id INTEGER NOT NULL REFERENCES images(id), tag TEXT NOT NULL, score REAL);
CREATE TABLE scores(image_id INTEGER NOT NULL REFERENCES images(id), class TEXT NOT NULL, score REAL NOT NULL);
CREATE TABLE image_paths(image_id INTEGER PRIMARY KEY REFERENCES images(id), abs_path TEXT NOT NULL);
"""
# Made after the rows go in (faster than keeping them up to date row by row).
INDEXES = """
CREATE INDEX images_path ON images(path);
CREATE INDEX tags_tag ON tags(tag, score);
CREATE INDEX tags_image ON tags(image_id);
CREATE INDEX scores_class ON scores(class, score);
CREATE INDEX scores_image ON scores(image_id);
"""


def _path_cell(path: str) -> str | bytes:
    """A file name as SQLite stores it: text, or its raw bytes (a BLOB) when it is not valid UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def write_db(path: str | Path, records: Iterable[dict]) -> None:
    """A fresh database at ``path`` (an empty file or none) with these records, in their order."""
    from .record import settings_text

    con = sqlite3.connect(path)
    settings_ids: dict[str, int] = {}
    try:
        con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        with con:
            for i, rec in enumerate(records, 1):
                text = settings_text(rec.get("settings"))
                if text and text not in settings_ids:
                    settings_ids[text] = len(settings_ids) + 1
                    con.execute("INSERT INTO settings VALUES (?, ?)", (settings_ids[text], text))
                f = rec.get("file") or {}
                con.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (i, _path_cell(rec["path"]), rec.get("error") or None, rec.get("model"), rec.get("tagged_at"),
                             f.get("size"), f.get("mtime_ns"), f.get("sha256"), settings_ids.get(text)))
                if rec.get("key"):
                    con.execute("INSERT INTO image_paths VALUES (?, ?)", (i, _path_cell(rec["key"])))
                con.executemany("INSERT INTO tags VALUES (?, ?, ?)",
                                [(i, t, rec["scores"].get(t)) for t in rec["tags"]])
                if rec.get("all_scores"):
                    con.executemany("INSERT INTO scores VALUES (?, ?, ?)",
                                    [(i, c, s) for c, s in rec["all_scores"].items()])
        con.executescript(INDEXES)
        con.commit()
    finally:
        con.close()


def read_db(path: str | Path) -> Iterator[dict]:
    """The records of a csra database (``make_record``'s, with ``key``: the image's absolute
    path), in id order. A database of an older csra has no abs_path, fingerprints or settings."""
    import json

    from .record import make_record

    # as_uri percent-encodes '#', '?' and '%': in a raw "file:" URI they would cut the name short
    con = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        tags: dict[int, list] = {}
        for image_id, tag, score in con.execute("SELECT image_id, tag, score FROM tags ORDER BY image_id, rowid"):
            tags.setdefault(image_id, []).append((tag, score))
        every: dict[int, dict] = {}
        for image_id, cls, score in con.execute("SELECT image_id, class, score FROM scores ORDER BY image_id, rowid"):
            every.setdefault(image_id, {})[cls] = score
        keys: dict[int, str] = {}
        if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'image_paths'").fetchone():
            keys = {i: os.fsdecode(k) if isinstance(k, bytes) else k
                    for i, k in con.execute("SELECT image_id, abs_path FROM image_paths")}
        columns = {row[1] for row in con.execute("PRAGMA table_info(images)")}
        settings: dict[int, dict] = {}
        if "settings_id" in columns:
            settings = {i: json.loads(text) for i, text in con.execute("SELECT id, json FROM settings")}
        provenance = ("file_size, file_mtime_ns, file_sha256, settings_id" if "settings_id" in columns
                      else "NULL, NULL, NULL, NULL")
        for image_id, p, error, model, tagged_at, size, mtime_ns, sha, settings_id in con.execute(
                f"SELECT id, path, error, model, tagged_at, {provenance} FROM images ORDER BY id"):
            given = tags.get(image_id, [])
            if isinstance(p, bytes):
                p = os.fsdecode(p)
            file = {"size": size, "mtime_ns": mtime_ns, "sha256": sha} if sha else None
            rec = make_record(p, [t for t, _ in given], dict(given), error or "", every.get(image_id), model, tagged_at,
                              file=file, settings=settings.get(settings_id))
            if keys.get(image_id):
                rec["key"] = keys[image_id]
            yield rec
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path}: not a csra SQLite output ({exc})") from None
    finally:
        con.close()
