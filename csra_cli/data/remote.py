"""Inputs behind a URI (``s3://bucket/photos/``, ``gs://…``, any filesystem pyarrow reads).

The driver lists them here and the workers read them here, so the images never have to be on
the driver's disk. pyarrow comes with the ``ray`` extra and is imported only when a URI is given.
S3 credentials and endpoints come from the usual ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for
a server other than Amazon's) or from the URI's query (``?endpoint_override=host:port``).
"""
from __future__ import annotations

import os
import re
from typing import Iterator

from ..errors import CSRAError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """s3://…, gs://…, hdfs://… (not file://, which is a local path to everything else)."""
    return bool(_URI.match(path)) and not path.lower().startswith("file://")


def _filesystem(uri: str):
    try:
        from pyarrow import fs
    except ImportError:
        raise CSRAError(f"{uri}: reading URIs needs pyarrow: pip install 'csra[ray]'") from None
    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise CSRAError(f"{uri}: {str(exc).splitlines()[0]}") from None
    return fs, filesystem, path


def list_uri(uri: str, extensions: set[str], recursive: bool = True) -> Iterator[str]:
    """The image files a URI names, sorted: the object itself, or those under a prefix with one
    of ``extensions`` (any case; there is no cheap way to sniff remote bytes)."""
    fs, filesystem, path = _filesystem(uri)
    scheme = uri.split("://", 1)[0]
    try:
        info = filesystem.get_file_info(path)
        if info.type != fs.FileType.Directory:
            yield uri  # a single object; a missing one becomes an error record
            return
        found = filesystem.get_file_info(fs.FileSelector(path, recursive=recursive))
    except OSError as exc:
        raise CSRAError(f"{uri}: cannot list it ({str(exc).splitlines()[0]})") from None
    for f in sorted(found, key=lambda f: f.path):
        if f.type == fs.FileType.File and os.path.splitext(f.path)[1].lower() in extensions:
            yield f"{scheme}://{f.path}"


def read_uri(uri: str) -> bytes:
    """The bytes of one object (raises FileNotFoundError / OSError like a local read would)."""
    _, filesystem, path = _filesystem(uri)
    with filesystem.open_input_file(path) as fh:
        return fh.read()
