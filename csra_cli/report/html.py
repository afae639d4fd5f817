"""What both report pages share: escaping, data embedded safely in a page, Pillow thumbnails."""
from __future__ import annotations

import base64
import html
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from PIL import Image, ImageOps

from ..cpu import cpu_cores

THUMB_PX = 160


def esc(text) -> str:
    """HTML-escaped text; a file name that is not UTF-8 (kept as surrogate escapes) shows its
    undecodable bytes as \\udcXX rather than breaking the page."""
    return html.escape(str(text).encode("utf-8", "backslashreplace").decode("utf-8"), quote=True)


def script_json(obj) -> str:
    """JSON to put inside <script type="application/json">: no '<' can close the tag early."""
    # ASCII: a file name that is not UTF-8 travels as \\udcXX escapes, which any page can hold
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def thumbnail(path: str, size: int = THUMB_PX, quality: int = 60) -> str:
    """A small JPEG of the image as base64 ("" when it cannot be read: the card says so)."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, much faster
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size), Image.Resampling.BILINEAR)
            if img.mode != "RGB":
                img = img.convert("RGB")
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality, optimize=False)
    except Exception:  # noqa: BLE001 - a broken or missing image gets an empty card, never ends the page
        return ""
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(paths: Iterable[str], size: int = THUMB_PX, workers: int | None = None) -> list[str]:
    """Thumbnails in the order of ``paths``; Pillow decodes outside the GIL, so threads overlap."""
    workers = workers or min(8, cpu_cores())
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: thumbnail(p, size), paths, chunksize=16))


def link_to(path: str, page: Path) -> str:
    """A link from the page to the image (relative, so a moved folder keeps working)."""
    try:
        return quote(os.fsencode(Path(os.path.relpath(Path(path).resolve(), page.resolve().parent)).as_posix()))
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_uri()


BASE_CSS = """
:root{--bg:#f6f6f4;--fg:#1d1d1b;--muted:#6b6b66;--card:#fff;--line:#deded8;--accent:#2457c5;--bad:#b3261e}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;
background:var(--bg);color:var(--fg)}header{padding:14px 20px;border-bottom:1px solid var(--line);background:#fff}
h1{font-size:18px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 8px}.muted{color:var(--muted)}
main{padding:12px 20px}a{color:var(--accent)}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
"""
