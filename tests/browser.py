"""A real headless browser for the report pages (Debian's chromium); tests skip where it is absent."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium) to load the "
                                                            "report pages in a real browser")


def _run(page: Path, *args: str, fragment: str = "") -> str:
    with tempfile.TemporaryDirectory() as profile:  # its own profile: runs beside each other never share one
        cmd = [CHROMIUM, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--virtual-time-budget=3000", *args, page.resolve().as_uri() + fragment]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout


def screenshot(page: Path, png: Path, size=(1280, 900), fragment: str = "") -> Path:
    _run(page, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", fragment=fragment)
    return png


def dump_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran."""
    return _run(page, "--dump-dom", fragment=fragment)


def cards(dom: str) -> list[tuple[set[str], bool]]:
    """(tags, visible) of each card in a dumped tag page."""
    out = []
    for attrs in re.findall(r'<div class="card"([^>]*)>', dom):
        tags = re.search(r'data-tags="\|?([^"]*?)\|?"', attrs).group(1)
        out.append(({t for t in tags.split("|") if t}, "hidden" not in attrs))
    return out
