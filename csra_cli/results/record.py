"""One image's record as csra keeps it (journal, outputs), and its settings as text."""
from __future__ import annotations

import json
import os


def make_record(path: str, tags: list[str], scores: dict[str, float], error: str = "",
                all_scores: dict[str, float] | None = None, model: str | None = None,
                tagged_at: str | None = None, file: dict | None = None, settings: dict | None = None) -> dict:
    """One image's record. ``model``/``tagged_at``: kept for the SQLite output (the text formats
    leave them out); ``file``: the image file's fingerprint (size, mtime_ns, sha256) and
    ``settings``: what made the tags (see ``tagging.run_settings``), kept by file outputs for
    ``--update`` and ``--resume``."""
    rec = {"path": path, "tags": tags, "scores": scores, "error": error or None}
    if all_scores is not None:
        rec["all_scores"] = all_scores
    if model is not None:
        rec["model"], rec["tagged_at"] = model, tagged_at
    if file is not None:
        rec["file"] = file
    if settings is not None:
        rec["settings"] = settings
    return rec


def settings_text(settings: dict | None) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":")) if settings else ""


def path_key(path: str) -> str:
    """What identifies an image across runs: its normalised absolute path (a URI as it is:
    it does not depend on the working folder, and s3://b/a//x and s3://b/a/x are two objects)."""
    from ..data.remote import is_uri

    return path if is_uri(path) else os.path.normpath(os.path.abspath(path))
