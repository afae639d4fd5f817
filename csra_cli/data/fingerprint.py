"""What identifies an image file's content across runs: its size and mtime (the fast check)
and the sha256 of its bytes (the truth), recorded with each record so ``--update`` knows which
images changed without decoding them."""
from __future__ import annotations

import os


def fingerprint(path: str) -> dict | None:
    """{"size", "mtime_ns", "sha256"} of a local file (the stat is taken first, so a file that
    changes while it is read looks changed next time, never the reverse); None where there is no
    local file to read (a URI, a missing or unreadable file)."""
    from ..fileio import sha256_file

    try:
        st = os.stat(path)
        digest = sha256_file(path)
    except (OSError, ValueError):
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def looks_unchanged(recorded: dict | None, st: os.stat_result) -> bool:
    """The fast check: the same size and mtime as recorded (then the bytes are not read)."""
    return bool(recorded) and (recorded.get("size"), recorded.get("mtime_ns")) == (st.st_size, st.st_mtime_ns)


def is_fingerprint(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("size"), int) and isinstance(value.get("mtime_ns"), int)
            and isinstance(value.get("sha256"), str) and len(value["sha256"]) == 64)
