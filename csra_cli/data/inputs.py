"""Turning command-line inputs (files, folders, globs, ``-`` for stdin) into image paths.

Order is deterministic: arguments in the order given, folders walked in sorted order. Files
named explicitly are always tried (so a bad one becomes an error record); inside folders a file
counts as an image by its extension (any case) or, failing that, by its first bytes.
"""
from __future__ import annotations

import glob
import os
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
    """Image files under ``folder``, sorted; follows symlinks but never loops."""
    seen: set[tuple[int, int]] = set()

    def visit(d: str) -> Iterator[str]:
        try:
            st = os.stat(d)
        except OSError as exc:
            if warn:
                warn(f"{d}: cannot read folder ({exc.strerror or exc})")
            return
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop or a folder reached twice
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if warn:
                warn(f"{d}: cannot read folder ({exc.strerror or exc})")
            return
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                continue
            if is_dir:
                if recursive:
                    yield from visit(e.path)
            elif e.is_file() and looks_like_image(e.path):
                yield e.path

    yield from visit(folder)


def read_stdin_paths(stream: TextIO) -> Iterator[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def expand_inputs(args: Iterable[str], recursive: bool = True, stdin: TextIO | None = None,
                  warn=None) -> Iterator[str]:
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
            yield from once(read_stdin_paths(stdin or sys.stdin))
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
