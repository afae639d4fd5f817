"""``--update``: which records of an output still hold, and which images to tag (again).

An output's record holds while its image file is there with the content it had (the same size
and mtime, else the same sha256) and was tagged with this run's settings. Records of images that
are gone are dropped (and listed); images whose bytes changed, that were tagged with other
settings (another model, precision, thresholds, …), that failed before or that carry no
fingerprint (an output of an older csra) are tagged again, wherever they are (inside this run's
inputs or not: every record of the output ends up under one set of settings); images of the
inputs the output does not have yet are new. Kept records are not decoded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from ..data.fingerprint import fingerprint, is_fingerprint, looks_unchanged


_SETTING_WORDS = {"model": "model", "model_sha256": "model weights", "precision": "precision", "tta": "--tta",
                  "threshold": "threshold", "top_k": "--top-k", "classes": "--classes/--exclude"}


def settings_change(old: dict, new: dict) -> str:
    """What differs between two ``tagging.run_settings`` ("" when nothing that shapes the tags does):
    the readable fields by name, else the policy digest's parts together."""
    changed = []
    for key, words in _SETTING_WORDS.items():
        if old.get(key) != new.get(key):
            shown = "" if key in ("model_sha256", "classes") else f" {old.get(key)} -> {new.get(key)}"
            changed.append(words + shown)
    if not changed and old.get("policy") != new.get("policy"):
        changed.append("per-class thresholds, --rename or --scores")
    return "; ".join(changed)


@dataclass
class UpdatePlan:
    kept: list[dict] = field(default_factory=list)  # records that hold (fingerprint refreshed if only the mtime moved)
    outside: list[str] = field(default_factory=list)  # images outside the inputs to tag again
    new: int = 0
    changed: int = 0  # other bytes, or no fingerprint recorded
    resettled: int = 0  # tagged with other settings
    retried: int = 0  # failed before
    removed: list[str] = field(default_factory=list)  # paths of records dropped: their files are gone
    reason: str = ""  # how the settings differ, for the summary

    @property
    def unchanged(self) -> int:
        return len(self.kept)

    def summary(self) -> str:
        """``12 new, 3 changed, 2 removed, 4,811 unchanged`` (and the re-tagged, the tried again)."""
        parts = [f"{self.new:,} new", f"{self.changed:,} changed", f"{len(self.removed):,} removed",
                 f"{self.unchanged:,} unchanged"]
        if self.resettled:
            parts.append(f"{self.resettled:,} tagged again with the new settings ({self.reason})")
        if self.retried:
            parts.append(f"{self.retried:,} that failed before tried again")
        return ", ".join(parts)


def plan_update(base: Iterable[dict], inputs: list[str], settings: dict) -> UpdatePlan:
    """The plan for an output whose records are ``base`` (journal or finished output, with keys)
    and a run over ``inputs`` (paths as given) with ``settings``."""
    from .record import path_key

    plan = UpdatePlan()
    wanted = {path_key(p) for p in inputs}
    known: set[str] = set()
    for rec in base:
        key = rec.get("key") or path_key(rec["path"])
        if key in known:
            continue
        known.add(key)
        try:
            st = os.stat(key)
        except (FileNotFoundError, NotADirectoryError):
            plan.removed.append(rec["path"])
            continue
        except OSError:
            st = None  # unreadable now: tagging it again records why
        verdict = _verdict(rec, st, settings)
        if isinstance(verdict, dict):
            plan.kept.append(verdict)
            continue
        if verdict == "settings":
            plan.resettled += 1
            plan.reason = plan.reason or (settings_change(rec["settings"], settings) if rec.get("settings")
                                          else "an older csra recorded none")
        elif verdict == "failed":
            plan.retried += 1
        else:
            plan.changed += 1
        if key not in wanted:
            plan.outside.append(key)
    plan.new = len(wanted - known)
    return plan


def _verdict(rec: dict, st, settings: dict) -> dict | str:
    """The record to keep (its fingerprint refreshed where only the mtime moved), or why its
    image is tagged again: "failed", "settings" or "changed"."""
    if rec["error"]:
        return "failed"
    if not rec.get("settings") or settings_change(rec["settings"], settings):
        return "settings"
    recorded = rec.get("file")
    if st is None or not is_fingerprint(recorded):
        return "changed"
    if looks_unchanged(recorded, st):
        return rec
    now = fingerprint(rec.get("key") or rec["path"])  # touched, or edited: the bytes tell
    if now is not None and now["sha256"] == recorded["sha256"] and now["size"] == recorded["size"]:
        return {**rec, "file": now}
    return "changed"
