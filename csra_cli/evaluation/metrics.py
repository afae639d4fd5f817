"""Multi-label metrics as the CSRA paper reports them (percentages)."""
from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray, mode: str = "exact") -> float:
    """AP of one class; labels 1/0, with -1 (ignored) entries dropped first.

    ``exact``: non-interpolated AP, sum over distinct thresholds of (R_n - R_{n-1}) * P_n (tied
    scores count as one threshold, so the result does not depend on the order of ties).
    ``voc07-11pt``: the VOC2007 devkit's 11-point interpolated AP. NaN when there is no positive."""
    keep = labels >= 0
    s, y = scores[keep].astype(np.float64), labels[keep] == 1
    npos = int(y.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of tied scores
    precision, recall = tp[last] / (tp[last] + fp[last]), tp[last] / npos
    if mode == "voc07-11pt":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    if mode != "exact":
        raise ValueError(f"unknown AP mode {mode!r}")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def class_average_precisions(scores: np.ndarray, labels: np.ndarray, mode: str = "exact") -> np.ndarray:
    """AP of each class (column), NaN for a class without positives."""
    return np.array([average_precision(scores[:, c], labels[:, c], mode) for c in range(labels.shape[1])])


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, thresholds) -> dict:
    """CP, CR, CF1, OP, OR, OF1 (in %) and per-class precision/recall at per-class thresholds."""
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (scores.shape[1],))
    valid = labels >= 0
    pred = (scores >= thresholds) & valid
    pos = (labels == 1)
    tp = (pred & pos).sum(0).astype(np.float64)
    npred, npos = pred.sum(0).astype(np.float64), pos.sum(0).astype(np.float64)
    prec, rec = _safe_div(tp, npred), _safe_div(tp, npos)
    cp, cr = prec.mean(), rec.mean()
    op = tp.sum() / npred.sum() if npred.sum() else 0.0
    orr = tp.sum() / npos.sum() if npos.sum() else 0.0
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    return {"CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * f1(cp, cr),
            "OP": 100 * op, "OR": 100 * orr, "OF1": 100 * f1(op, orr),
            "precision": 100 * prec, "recall": 100 * rec}


def evaluate(scores: np.ndarray, labels: np.ndarray, classes: list[str], threshold: float | list = 0.5,
             ap_mode: str = "exact") -> dict:
    """mAP over the classes with at least one positive, threshold metrics, per-class numbers."""
    aps = class_average_precisions(scores, labels, ap_mode)
    at = threshold_metrics(scores, labels, threshold)
    has_pos = ~np.isnan(aps)
    report = {"mAP": float(100 * aps[has_pos].mean()) if has_pos.any() else float("nan")}
    report.update({k: float(at[k]) for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")})
    report["num_images"] = int(scores.shape[0])
    report["classes_without_positives"] = [c for c, ok in zip(classes, has_pos) if not ok]
    report["per_class"] = {
        c: {"AP": None if np.isnan(aps[i]) else float(100 * aps[i]), "precision": float(at["precision"][i]),
            "recall": float(at["recall"][i]), "positives": int((labels[:, i] == 1).sum())}
        for i, c in enumerate(classes)
    }
    return report


def best_f1_thresholds(scores: np.ndarray, labels: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Per class, the score threshold that maximises that class's F1 on these labels (0.5 for a
    class with no positive). The threshold sits midway between the two neighbouring scores."""
    out = np.full(scores.shape[1], 0.5)
    for c in range(scores.shape[1]):
        keep = labels[:, c] >= 0
        s, y = scores[keep, c], labels[keep, c] == 1
        if y.sum() == 0:
            continue
        order = np.argsort(-s, kind="mergesort")
        s, y = s[order], y[order]
        tp = np.cumsum(y)
        f1 = 2 * tp / (np.arange(1, len(s) + 1) + y.sum())
        last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
        k = last[np.argmax(f1[last])]
        nxt = s[k + 1] if k + 1 < len(s) else 0.0
        out[c] = max(floor, float((s[k] + nxt) / 2))
    return out


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> dict:
    """One class's precision-recall curve: one point per distinct score (the same points as
    ``average_precision`` sums over), ignored (-1) labels dropped; empty lists without a positive."""
    keep = labels >= 0
    s, y = scores[keep].astype(np.float64), labels[keep] == 1
    npos = int(y.sum())
    if npos == 0:
        return {"threshold": [], "precision": [], "recall": []}
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    return {"threshold": s[last].tolist(), "precision": (tp[last] / (tp[last] + fp[last])).tolist(),
            "recall": (tp[last] / npos).tolist()}
