"""Downloading model files into the cache: streamed, sha256-checked, atomic."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from ..fileio import atomic_temp
from ..errors import DownloadError


def digest_record(dest: Path) -> Path:
    """Where the sha256 of a download without a published digest is kept, to check it later."""
    return dest.with_name(dest.name + ".sha256")


def recorded_digest_mismatch(path: Path) -> str | None:
    """The problem, if ``path`` no longer has the sha256 recorded when it was downloaded."""
    from ..fileio import sha256_file

    record = digest_record(path)
    if not record.is_file():
        return None
    want = record.read_text().split()[0] if record.read_text().strip() else ""
    got = sha256_file(path)
    return None if got == want else f"{path} changed since it was downloaded (sha256 {got}, recorded {want})"


def check_model_file(path: Path) -> None:
    """A downloaded file must be model weights: not an HTML or text page (a login wall, an error
    page), and loadable without running code (weights_only / safetensors)."""
    from .checkpoint import read_state_dict

    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"{")) or (head and all(
            32 <= b < 127 or b in (9, 10, 13) for b in head)):
        raise DownloadError("the server sent an HTML/text page, not model weights; nothing was kept")
    if path.suffix == ".safetensors" or path.name.endswith(".safetensors.part"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as exc:
            raise DownloadError(f"the file is not valid safetensors ({exc}); nothing was kept") from exc
        return
    try:
        read_state_dict(path)
    except Exception as exc:
        raise DownloadError(f"the file is not a loadable checkpoint ({exc}); nothing was kept") from exc


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0,
             progress: Callable[[int, int | None], None] | None = None,
             check: Callable[[Path], None] | None = None) -> str:
    """Fetch ``url`` to ``dest`` and return its sha256. A digest mismatch, a broken transfer or
    a file that ``check`` refuses leaves nothing at ``dest``."""
    import urllib.error  # here: urllib.request (ssl, http, email) is 30 ms of every start otherwise
    import urllib.request

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
        if check:
            try:
                check(Path(tmp))
            except DownloadError as exc:
                raise DownloadError(f"download of {url}: {exc}") from exc
        os.replace(tmp, dest)
        return got
    finally:
        Path(tmp).unlink(missing_ok=True)
