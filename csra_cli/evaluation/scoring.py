"""``csra eval`` parts: scoring a labelled set, matching class names, the scores cache."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.datasets import LabelledSet
from ..errors import CSRAError
from ..data.loader import scored_batches, stream_batches


def score_images(runner, paths: list[str], batch_size: int, workers: int,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Probabilities (N, C) in the order of ``paths``; unreadable images get NaN rows and are
    returned as (path, reason) so they are reported, never silently dropped."""
    scores = np.full((len(paths), len(runner.card.classes)), np.nan, dtype=np.float32)
    failures: list[tuple[str, str]] = []
    row = 0
    batches = stream_batches(paths, runner.pre, batch_size, workers, runner.pin)
    for decoded, probs in scored_batches(runner, batches):
        good = [i for i, e in enumerate(decoded.errors) if not e]
        scores[[row + i for i in good]] = probs
        failures += [(p, e) for p, e in zip(decoded.paths, decoded.errors) if e]
        row += len(decoded.paths)
        if progress:
            progress(len(decoded.paths))
    return scores, failures


def read_class_map(path: str | None) -> dict[str, str]:
    from ..data.classes import BUILTIN_CLASS_MAPS

    if not path:
        return {}
    if path in BUILTIN_CLASS_MAPS:
        return dict(BUILTIN_CLASS_MAPS[path])
    if read_grouped_map(path) is not None:  # many-to-one: applied to the scores (combine_classes)
        return {}
    p = Path(path)
    if not p.is_file():
        raise CSRAError(f"--class-map {path}: no such file")
    if p.suffix.lower() == ".json":
        return {str(k): str(v) for k, v in json.loads(p.read_text()).items()}
    with open(p, newline="") as fh:
        return {r[0].strip(): r[1].strip() for r in csv.reader(fh) if len(r) >= 2 and not r[0].startswith("#")}


def read_grouped_map(name: str | None) -> dict | None:
    """A many-to-one class map ({"map": {dataset class: [model classes]}, ...}, such as the
    shipped imagenet-to-voc and imagenet-to-coco, by name or file); None for a plain map."""
    from ..models.registry import weights_dir

    if not name:
        return None
    p = Path(name)
    if not p.is_file() and p.suffix == "" and (weights_dir() / f"{name}.json").is_file():
        p = weights_dir() / f"{name}.json"
    if p.suffix.lower() != ".json" or not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise CSRAError(f"--class-map {name}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("map"), dict):
        return None
    if not all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in data["map"].values()):
        raise CSRAError(f"--class-map {name}: its map must give each dataset class a list of model classes")
    return data


def combine_classes(scores: np.ndarray, model_classes: list[str], grouped: dict) -> tuple[np.ndarray, list[str]]:
    """Scores over the model's classes -> scores over the dataset classes a many-to-one map
    names, each the sum (or the maximum, "combine": "max") of its model classes' scores."""
    index = {c: i for i, c in enumerate(model_classes)}
    reduce = np.max if grouped.get("combine") == "max" else np.sum
    targets = [t for t, sources in grouped["map"].items() if any(c in index for c in sources)]
    if not targets:
        raise CSRAError("the class map names none of the model's classes")
    out = np.stack([reduce(scores[:, [index[c] for c in grouped["map"][t] if c in index]], axis=1)
                    for t in targets], axis=1)
    return out, targets


def match_classes(data: LabelledSet, model_classes: list[str], class_map: dict[str, str]
                  ) -> tuple[list[int], list[int], list[str], list[str]]:
    """Columns (dataset, model) of the classes both sides share after the class map, and the
    names left out on each side."""
    index = {c: i for i, c in enumerate(model_classes)}
    data_cols, model_cols, used = [], [], set()
    for j, name in enumerate(data.classes):
        target = class_map.get(name, name)
        if target in index and target not in used:
            data_cols.append(j)
            model_cols.append(index[target])
            used.add(target)
    if not data_cols:
        raise CSRAError(f"no dataset class matches a model class (dataset: {', '.join(data.classes[:30])}; "
                        f"model: {', '.join(model_classes[:30])}); pass --class-map FILE")
    left_data = [c for j, c in enumerate(data.classes) if j not in set(data_cols)]
    left_model = [c for c in model_classes if c not in used]
    return data_cols, model_cols, left_data, left_model


def write_scores(path: str, paths: list[str], classes: list[str], scores: np.ndarray) -> None:
    from ..fileio import atomic_write_bytes
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", *classes])
    for p, row in zip(paths, scores):
        # 9 significant digits round-trip a float32 exactly: no ties made up, mAP unchanged on re-reading
        w.writerow([p, *("" if np.isnan(v) else f"{v:.9g}" for v in np.asarray(row, dtype=np.float32))])
    atomic_write_bytes(Path(path), buf.getvalue().encode())


def read_scores(path: str) -> tuple[list[str], list[str], np.ndarray]:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise CSRAError(f"--scores {path}: no such file")
    df = pd.read_csv(p)
    if df.columns[0] != "path" or len(df.columns) < 2:
        raise CSRAError(f"--scores {path}: expected the columns path, then one per class")
    return df["path"].astype(str).tolist(), list(df.columns[1:]), df.iloc[:, 1:].to_numpy(dtype=np.float32)


def align_scores(data: LabelledSet, score_paths: list[str], scores: np.ndarray) -> np.ndarray:
    """Rows of a scores file in the dataset's order, matched by path (or by file name)."""
    by_path = {p: i for i, p in enumerate(score_paths)}
    by_name = {Path(p).name: i for i, p in enumerate(score_paths)}
    rows = []
    for p in data.paths:
        i = by_path.get(p, by_path.get(str(Path(p).resolve()), by_name.get(Path(p).name)))
        if i is None:
            raise CSRAError(f"--scores: no row for {p}; the scores file must cover every labelled image")
        rows.append(i)
    return scores[rows]
