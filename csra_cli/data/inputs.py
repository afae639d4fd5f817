"""Turning command-line inputs (files, folders, globs, ``-`` for stdin) into image paths.

Order is deterministic: arguments in the order given, folders walked in sorted order. Files
named explicitly are always tried (so a bad one becomes an error record); inside folders a file
counts as an image by its extension (any case) or, failing that, by its first bytes.
"""
from __future__ import annotations

import errno
import glob
import os
import stat
import sys
from typing import Iterable, Iterator, TextIO

from .remote import is_uri, list_uri

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff",
                    ".gif", ".heic", ".heif", ".avif"}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_GLOB_CHARS = set("*?[")


def looks_like_image(path: str) -> bool:
    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return True
    return head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis")


def walk_images(folder: str, recursive: bool = True, warn=None) -> Iterator[str]:
    """Image files under ``folder``, sorted; follows symlinks but never loops. What cannot be
    used (a dangling symlink, a symlink loop, a FIFO or device) gets a warning, and where its
    name says image it is still yielded, so that it becomes an error record."""
    seen: set[tuple[int, int]] = set()

    def say(message: str) -> None:
        if warn:
            warn(message)

    def visit(d: str) -> Iterator[str]:
        try:
            st = os.stat(d)
        except OSError as exc:
            say(f"{d}: cannot read folder ({exc.strerror or exc})")
            return
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop or a folder reached twice
            say(f"{d}: folder already visited (a symlink loop?); skipped")
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            say(f"{d}: cannot read folder ({exc.strerror or exc})")
            return
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    yield from visit(e.path)
                continue
            try:
                is_file = e.is_file()
            except OSError:
                is_file = False
            if is_file:
                if looks_like_image(e.path):
                    yield e.path
                continue
            why = _unusable(e.path)
            candidate = os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            say(f"{e.path}: {why}; " + ("not an image file" if candidate else "skipped"))
            if candidate:
                yield e.path

    yield from visit(folder)


def _unusable(path: str) -> str:
    """Why a folder entry that is neither a folder nor a regular file cannot be read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return "dangling symlink"
        return exc.strerror or str(exc)
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    return "not a regular file"


def read_stdin_paths(stream, null: bool = False) -> Iterator[str]:
    """Paths on stdin, exactly as given: one a line (only the newline is taken off), or
    NUL-terminated with ``null`` (``find -print0``). Bytes that are not UTF-8 are kept
    (surrogateescape), as the file system gives them."""
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (tests, StringIO)
        text = stream.read() if null else None
        parts = text.split("\0") if null else (line[:-1] if line.endswith("\n") else line for line in stream)
        for part in parts:
            if part:
                yield part
        return
    sep = b"\0" if null else b"\n"
    pending = b""
    while block := raw.read1(1 << 16) if hasattr(raw, "read1") else raw.read(1 << 16):
        pending += block
        *done, pending = pending.split(sep)
        for part in done:
            if part:
                yield os.fsdecode(part)
    if pending:
        yield os.fsdecode(pending)


def expand_inputs(args: Iterable[str], recursive: bool = True, stdin: TextIO | None = None,
                  warn=None, null: bool = False) -> Iterator[str]:
    """Every image path the arguments name, each once, in a deterministic order."""
    seen: set[str] = set()

    def once(paths: Iterable[str]) -> Iterator[str]:
        for p in paths:
            key = p if is_uri(p) else os.path.normpath(os.path.abspath(p))
            if key not in seen:
                seen.add(key)
                yield p

    for arg in args:
        if arg == "-":
            yield from once(read_stdin_paths(stdin or sys.stdin, null))
        elif is_uri(arg):  # s3://bucket/prefix and the like: listed here, read by the workers
            yield from once(list_uri(arg, IMAGE_EXTENSIONS, recursive))
        elif os.path.isdir(arg):
            yield from once(walk_images(arg, recursive, warn))
        elif not os.path.lexists(arg) and _GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches and warn:
                warn(f"{arg}: the pattern matches nothing")
            for m in matches:
                if os.path.isdir(m):
                    yield from once(walk_images(m, recursive, warn))
                else:
                    yield from once([m])
        else:
            yield from once([arg])  # missing or unreadable files become error records
