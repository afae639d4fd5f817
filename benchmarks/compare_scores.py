#!/usr/bin/env python3
"""Is model B really better than model A on a VOC split? A paired bootstrap over images.

Both models' scores come from `csra eval --dataset voc --split S --save-scores FILE`. The images are
resampled with replacement (the same draw for both models, so what the two share cancels) and
the mAP difference is recomputed each time; the 95% interval of those differences says whether a
gain is larger than what the choice of 990 validation photos moves by itself.

Usage: benchmarks/compare_scores.py VOCdevkit SPLIT A.csv B.csv [more.csv ...] [--draws 2000]
Prints, for each file after the first, mAP(B) - mAP(A), its 95% interval and the share of draws
where B is ahead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from csra_cli.data.datasets import read_voc  # noqa: E402
from csra_cli.evaluation.metrics import class_average_precisions  # noqa: E402
from csra_cli.evaluation.scoring import align_scores, read_scores  # noqa: E402


def mean_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    return 100 * float(np.nanmean(class_average_precisions(scores, labels)))


def load(path: str, data) -> np.ndarray:
    paths, classes, scores = read_scores(path)
    if classes != data.classes:
        sys.exit(f"{path}: classes differ from the dataset's ({', '.join(classes[:5])}, ...)")
    return align_scores(data, paths, scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("split")
    ap.add_argument("baseline")
    ap.add_argument("others", nargs="+")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = read_voc(args.root, args.split)
    base = load(args.baseline, data)
    draws = np.random.default_rng(args.seed).integers(0, len(data), size=(args.draws, len(data)))
    base_map = mean_ap(base, data.labels)
    base_boot = np.array([mean_ap(base[d], data.labels[d]) for d in draws])
    print(f"{args.baseline}: mAP {base_map:.2f} on {data.name} ({len(data)} images); {args.draws} paired draws")
    for other in args.others:
        scores = load(other, data)
        other_map = mean_ap(scores, data.labels)
        boot = np.array([mean_ap(scores[d], data.labels[d]) for d in draws]) - base_boot
        lo, hi = np.percentile(boot, [2.5, 97.5])
        print(f"{other}: mAP {other_map:.2f}, difference {other_map - base_map:+.2f} "
              f"(95% interval {lo:+.2f} to {hi:+.2f}; ahead in {100 * (boot > 0).mean():.1f}% of draws)")


if __name__ == "__main__":
    main()
