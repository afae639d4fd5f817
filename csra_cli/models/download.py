"""Downloading model files into the cache: streamed, sha256-checked, atomic."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..fileio import atomic_temp
from ..errors import DownloadError


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0,
             progress: Callable[[int, int | None], None] | None = None) -> str:
    """Fetch ``url`` to ``dest`` and return its sha256. A digest mismatch or a broken transfer
    leaves nothing at ``dest``."""
    digest = hashlib.sha256()
    fd, tmp = atomic_temp(dest, ".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    total = resp.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else None
                    done = 0
                    while block := resp.read(1 << 20):
                        fh.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"download of {url} failed: {reason}") from exc
            if total is not None and done != total:
                raise DownloadError(f"download of {url} was cut short ({done} of {total} bytes)")
        got = digest.hexdigest()
        if sha256 and got.lower() != sha256.lower():
            raise DownloadError(f"download of {url} is corrupt: sha256 {got}, expected {sha256}; nothing was kept")
        os.replace(tmp, dest)
        return got
    finally:
        Path(tmp).unlink(missing_ok=True)
