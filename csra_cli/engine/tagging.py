"""The tag loop: stream images through the model and hand each record to the sinks."""
from __future__ import annotations

import json
import time
from pathlib import Path
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from ..data.loader import DecodePool, Decoded, LoaderStats, scored_batches, stream_batches
from ..errors import CSRAError
from ..results.sinks import make_record

if TYPE_CHECKING:
    from .run_spec import RunSpec


@dataclass
class TagStats:
    tagged: int = 0
    failed: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.time)
    failures: list = field(default_factory=list)
    model_idle: float = 0.0  # share of the run the model waited for decoded images

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    @property
    def rate(self) -> float:
        return (self.tagged + self.failed) / max(self.elapsed, 1e-9)


@dataclass(frozen=True, eq=False)
class TagPolicy:
    """How scores become an image's tags: each class's threshold, at most ``top_k`` (best
    first), only the ``allowed`` classes (None: all), whether records keep every score, and the
    name each class's tag is written as (None: the class names)."""

    thresholds: np.ndarray
    top_k: int | None = None
    allowed: np.ndarray | None = None
    all_scores: bool = False
    names: list[str] | None = None
    # tag name -> its broader terms, broadest first (the card's, for models that have them), and
    # which of fine tags and broader terms an image's tags hold: fine, broad or both
    broader: dict[str, list[str]] | None = None
    keywords: str = "both"


@dataclass(frozen=True)
class TagHooks:
    """What a tag run calls besides the sinks: per record (sidecars), per batch (progress), and
    the images to leave out (an output's finished ones)."""

    on_record: Callable[[dict], None] | None = None
    progress: Callable[[int], None] | None = None
    skip: set[str] | None = None


def policy_for(card, selection) -> TagPolicy:
    """The policy a command's selection options (threshold, thresholds, top_k, classes, scores)
    make for a model: --threshold sets every class; the card's per-class thresholds apply only
    without it; a thresholds file overrides the classes it names."""
    names = card.classes
    if selection.top_k is not None and selection.top_k > len(names):
        raise CSRAError(f"--top-k {selection.top_k}: {card.name} has only {len(names)} classes")
    per_class = (np.full(len(names), selection.threshold, dtype=np.float64) if selection.threshold is not None
                 else np.array(card.class_thresholds(), dtype=np.float64))
    if selection.thresholds:
        table = read_thresholds_file(selection.thresholds, names)
        per_class = np.array([table.get(c, t) for c, t in zip(names, per_class)])
    shown = card.tag_names()
    renames = read_renames(selection.rename, names, shown)
    shown = [renames.get(c, s) for c, s in zip(names, shown)]
    allowed = class_subset(selection.classes, names)
    left_out = class_subset(selection.exclude, names, "--exclude", shown)  # by class or tag name
    if left_out is not None:
        allowed = ~left_out if allowed is None else allowed & ~left_out
    keywords = getattr(selection, "keywords", "both")
    if keywords not in KEYWORD_MODES:
        raise CSRAError(f"--keywords {keywords!r}: use fine, broad or both")
    broader = ({s: card.broader[c] for c, s in zip(names, shown) if card.broader.get(c)} if card.broader else None)
    return TagPolicy(per_class, selection.top_k, allowed, selection.scores, shown if shown != names else None,
                     broader, keywords)


KEYWORD_MODES = ("fine", "broad", "both")


def keyword_tags(fine: list[str], policy: TagPolicy) -> list[str]:
    """An image's tags: its fine tags (best first) and/or their broader terms, each term once
    (two dog breeds give "dog" once), in the order first met; fine tags first with both."""
    if not policy.broader or policy.keywords == "fine":
        return fine
    broad = [b for t in fine for b in reversed(policy.broader.get(t, []))]  # the nearest term first
    words = broad if policy.keywords == "broad" else fine + broad
    return list(dict.fromkeys(words))


def read_renames(spec: str | None, classes: list[str], shown: list[str]) -> dict[str, str]:
    """--rename old=new,old2=new2 or a file (JSON {old: new} or CSV old,new): class -> tag name.
    ``old`` is a class or its display name; a name may be given to one class only."""
    if not spec:
        return {}
    p = Path(spec)
    if p.is_file():
        text = p.read_text(encoding="utf-8")
        try:
            pairs = (list(json.loads(text).items()) if p.suffix.lower() == ".json" or text.lstrip().startswith("{")
                     else [tuple(c.strip() for c in ln.split(",", 1)) for ln in text.splitlines() if "," in ln])
        except (ValueError, AttributeError) as exc:
            raise CSRAError(f"--rename {spec}: expected JSON {{old: new}} or CSV old,new lines ({exc})") from None
    else:
        pairs = [tuple(x.strip() for x in item.split("=", 1)) for item in spec.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise CSRAError(f"--rename {spec!r}: give old=new pairs, comma-separated (or a JSON/CSV file)")
    by_name = {**{s: c for c, s in zip(classes, shown)}, **{c: c for c in classes}}
    table = {}
    for old, new in pairs:
        if old not in by_name:
            raise CSRAError(f"--rename: unknown class {old!r}; the model's classes are {', '.join(classes)}")
        if not isinstance(new, str) or not new.strip() or ";" in new:
            raise CSRAError(f"--rename {old}={new!r}: give a non-empty name without ';'")
        table[by_name[old]] = new.strip()
    final = [table.get(c, s) for c, s in zip(classes, shown)]
    twice = sorted({n for n in final if final.count(n) > 1})
    if twice:
        raise CSRAError(f"--rename: {', '.join(twice)} would name two classes; give each class its own name")
    return table


def choose_tags(probs: np.ndarray, policy: TagPolicy) -> list[int]:
    """Class indices above their thresholds, best first, at most top_k, within the allowed ones."""
    ok = probs >= policy.thresholds
    if policy.allowed is not None:
        ok &= policy.allowed
    idx = np.nonzero(ok)[0]
    idx = idx[np.argsort(-probs[idx], kind="mergesort")]
    return idx[:policy.top_k].tolist() if policy.top_k else idx.tolist()


def image_record(path: str, probs: np.ndarray | None, error: str, classes: list[str], policy: TagPolicy,
                 stamp: dict | None = None, file: dict | None = None) -> dict:
    """The record of one image from its probabilities (or the reason it could not be read);
    every engine builds its records here, so they are the same whichever ran the model.
    ``stamp``: the model's name, the time and the run's settings; ``file``: the image file's
    fingerprint (both kept by file outputs)."""
    if error:
        return make_record(path, [], {}, error, file=file, **(stamp or {}))
    chosen = choose_tags(probs, policy)
    names = policy.names or classes  # tags (and their scores) by tag name; the full table by class
    fine = [names[c] for c in chosen]
    return make_record(path, keyword_tags(fine, policy), {names[c]: round(float(probs[c]), 6) for c in chosen},
                       "", {c: round(float(s), 6) for c, s in zip(classes, probs)} if policy.all_scores else None,
                       file=file, **(stamp or {}))


def record_stamp(runner, settings: dict | None = None) -> dict:
    """Which model tagged an image (``+int8`` for its int8 export, ``+tta`` with flip averaging),
    when (UTC), and with which ``settings`` (``run_settings``)."""
    stamp = {"model": model_name(runner), "tagged_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if settings is not None:
        stamp["settings"] = settings
    return stamp


def model_name(runner) -> str:
    """A runner's model as records name it: the card's name, ``+int8`` for its int8 export,
    ``+tta`` with flip averaging; several models (a ModelSet) joined by ``,``."""
    from .runners import precision_of

    if hasattr(runner, "runners"):
        return ",".join(model_name(r) for r in runner.runners)
    return (runner.card.name + ("+int8" if precision_of(runner) == "int8" else "")
            + ("+tta" if getattr(runner, "tta", False) else ""))


def run_settings(runner, weights: str | Path | None, policy: TagPolicy) -> dict:
    """What made a run's tags, recorded with each record of a file output so that --update and
    --resume never mix two settings' tags silently: the model (name and its weights file's
    sha256), precision, TTA, and the tag policy (its readable parts, and ``policy``: a digest of
    all of it, thresholds, top-k, classes, tag names and --scores, which is what is compared)."""
    import hashlib

    from .runners import precision_of, weights_sha256

    card = runner.card
    try:
        sha = (weights_sha256(Path(weights)) if weights
               else ",".join(r.card.sha256 for r in runner.runners) if hasattr(runner, "runners") else card.sha256)
    except OSError:
        sha = card.sha256
    t = policy.thresholds
    whole = {"thresholds": [round(float(x), 6) for x in t], "top_k": policy.top_k,
             "allowed": None if policy.allowed is None else [bool(a) for a in policy.allowed],
             "names": policy.names, "scores": policy.all_scores}
    if policy.broader:  # only then: the digests of earlier outputs stay as they were
        whole["keywords"] = policy.keywords
    digest = hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest()[:16]
    classes = None if policy.allowed is None else [c for c, a in zip(card.classes, policy.allowed) if a]
    return {"model": card.name, "model_sha256": sha or "", "precision": precision_of(runner),
            "tta": bool(getattr(runner, "tta", False)),
            "threshold": round(float(t[0]), 6) if len(t) and np.all(t == t[0]) else "per-class",
            "top_k": policy.top_k, "classes": classes, "policy": digest}


def deliver(rec: dict, sinks: list, stats: TagStats, on_record: Callable[[dict], None] | None = None) -> None:
    """Count a record and hand it to the per-record hook (sidecars, keywords in the file) and then
    the sinks: a record is journaled only once its image's files are written (a kill between the
    two tags the image again, never leaves it done without them), and a hook that changes the
    image file puts its new fingerprint in the record."""
    if rec["error"]:
        stats.failed += 1
        stats.failures.append((rec["path"], rec["error"]))
    else:
        stats.tagged += 1
    if on_record:
        on_record(rec)
    for sink in sinks:
        sink.write(rec)


def pending(paths: Iterable[str], skip, stats: TagStats) -> Iterator[str]:
    """The paths not done yet (``skip``: the output's finished images), counting the others."""
    for p in paths:
        if skip and p in skip:
            stats.skipped += 1
        else:
            yield p


def run_tagging(runner, paths: Iterable[str], sinks: list, policy: TagPolicy, run: "RunSpec",
                hooks: TagHooks = TagHooks(), settings: dict | None = None) -> TagStats:
    """Tag ``paths`` on this machine: decoding in ``run.workers`` processes, batches of
    ``run.batch_size`` through ``runner``, each record to the sinks. With ``settings`` (a file
    output) each record carries them and its image file's fingerprint."""
    stats = TagStats()
    waits = LoaderStats()
    # one pool for the whole run; the fingerprints are read there, beside the decoding
    with DecodePool(runner.pre, run.resolved_workers, fingerprints=settings is not None) as pool:
        batches = stream_batches(pending(paths, hooks.skip, stats), runner.pre, run.batch_size, pool=pool, stats=waits)
        for decoded, probs in scored_batches(runner, batches, batch_size=run.batch_size):
            _emit(runner, decoded, probs, stats, sinks, policy, hooks.on_record, settings)
            if hooks.progress:
                hooks.progress(len(decoded.paths))
    stats.model_idle = waits.idle_share
    return stats


def _emit(runner, decoded: Decoded, probs: np.ndarray, stats: TagStats, sinks, policy: TagPolicy, on_record,
          settings) -> None:
    """Hand a scored batch's records on (paths, errors and fingerprints from ``decoded``)."""
    classes = runner.card.classes
    errors, files = decoded.errors, decoded.files
    row = {i: r for r, i in enumerate(i for i, e in enumerate(errors) if not e)}
    stamp = record_stamp(runner, settings)
    for i, path in enumerate(decoded.paths):
        rec = image_record(path, None if errors[i] else probs[row[i]], errors[i], classes, policy, stamp,
                           files[i] if files else None)
        deliver(rec, sinks, stats, on_record)
    for sink in sinks:
        sink.flush()


def read_thresholds_file(path: str, classes: list[str]) -> dict[str, float]:
    import csv

    p = Path(path)
    if not p.is_file():
        raise CSRAError(f"--thresholds {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            data = json.loads(text)
            data = data.get("thresholds", data)
            table = {str(k): float(v) for k, v in data.items()}
        else:
            rows = list(csv.reader(text.splitlines()))
            if rows and rows[0] and rows[0][0].strip().lower() in ("class", "name", "tag"):
                rows = rows[1:]
            table = {r[0].strip(): float(r[1]) for r in rows if len(r) >= 2}
    except (ValueError, json.JSONDecodeError, AttributeError) as exc:
        raise CSRAError(f"--thresholds {path}: expected JSON {{class: threshold}} or CSV class,threshold ({exc})")
    bad = [f"{c}: {t:g}" for c, t in table.items() if not 0.0 <= t <= 1.0]  # also catches NaN
    if bad:
        raise CSRAError(f"--thresholds {path}: thresholds must be between 0 and 1 ({', '.join(bad)})")
    unknown = sorted(set(table) - set(classes))
    if unknown:
        raise CSRAError(f"--thresholds {path}: unknown classes {', '.join(unknown)} (model classes: {', '.join(classes)})")
    return table


def class_subset(spec: str | None, classes: list[str], flag: str = "--classes", shown: list[str] | None = None):
    """The classes a comma-separated list names, as a mask (None without a list); ``shown``: the
    tag names a class may be named by too."""
    if spec is None:
        return None
    wanted = [c.strip() for c in spec.split(",") if c.strip()]
    if not wanted:
        raise CSRAError(f"{flag}: give at least one class name (comma-separated)")
    known = set(classes) | set(shown or ())
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise CSRAError(f"{flag}: unknown {', '.join(unknown)}; the model's classes are {', '.join(classes)}")
    return np.array([c in wanted or s in wanted for c, s in zip(classes, shown or classes)])
