"""The paper's training-free claim on our data: EfficientNet-Lite2's ImageNet classifier with
CSRA's residual attention added without training (logit = mean + lambda x attention over its
class-score maps), against lambda = 0 (the classifier as it is), mapped onto VOC and COCO through
the shipped WordNet class maps (a dataset class's score: the sum of the softmax scores of the
ImageNet classes under it; mAP over the classes ImageNet covers).

    python benchmarks/training_free.py ../shared/data [--sizes 260 320 384] [--out /tmp/training_free.json]

lambda and T are chosen on 1,000 VOC *train* photos, then reported on VOC val and coco-tiny;
the tag threshold (on the fine classes' softmax score) is chosen the same way, by the F1 of the
VOC tags the fine tags map onto (OF1)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
LAMBDAS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
TEMPERATURES = [1, 2, 4, 99]
THRESHOLDS = [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5]


def score_maps(paths: list[str], size: int, batch: int = 16) -> np.ndarray:
    """Class-score maps (N, 1000, h*w) of the ImageNet classifier over the last feature map, fp16."""
    from csra_cli.data.loader import stream_batches
    from csra_cli.data.preprocess import Preprocess
    from csra_cli.models.backbones import create_backbone, imagenet_efficientnet_lite

    torch.set_num_threads(2)
    net = create_backbone("efficientnet_lite2", pretrained=True).eval()
    fc = imagenet_efficientnet_lite(2, None)
    w, b = fc["_fc.weight"], fc["_fc.bias"]
    pre = Preprocess(size, [0.5] * 3, [0.5] * 3)
    out = []
    with torch.inference_mode():
        for d in stream_batches(paths, pre, batch, 1):
            x = pre.normalize(d.images)
            maps = net(x).flatten(2)  # (B, 1280, hw)
            out.append((torch.einsum("cd,bdn->bcn", w, maps) + b[None, :, None]).half().numpy())
    return np.concatenate(out)


def logits(maps: np.ndarray, lam: float, temperature: float) -> np.ndarray:
    s = torch.from_numpy(maps).float()
    base = s.mean(2)
    if lam == 0:
        return base.numpy()
    att = s.amax(2) if temperature >= 99 else (s * torch.softmax(s * temperature, 2)).sum(2)
    return (base + lam * att).numpy()


def mapped(probs: np.ndarray, classes: list[str], grouped: dict) -> tuple[np.ndarray, list[str]]:
    from csra_cli.evaluation.scoring import combine_classes

    return combine_classes(probs, classes, grouped)


def evaluate(probs, classes, grouped, labels, label_classes) -> dict:
    from csra_cli.evaluation.metrics import evaluate as metrics

    scores, targets = mapped(probs, classes, grouped)
    cols = [label_classes.index(t) for t in targets]
    return metrics(scores, labels[:, cols], targets, 0.5)["mAP"]


def tag_f1(probs, classes, grouped, labels, label_classes, threshold: float) -> dict:
    """OF1/CF1 of the dataset tags that the fine tags (softmax >= threshold) map onto."""
    index = {c: i for i, c in enumerate(classes)}
    targets = [t for t in grouped["map"] if t in label_classes]
    predicted = np.stack([(probs[:, [index[c] for c in grouped["map"][t]]] >= threshold).any(1) for t in targets], 1)
    truth = labels[:, [label_classes.index(t) for t in targets]] > 0
    tp, fp, fn = (predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0)
    op, orc = tp.sum() / max(1, tp.sum() + fp.sum()), tp.sum() / max(1, tp.sum() + fn.sum())
    cp = np.mean(tp / np.maximum(1, tp + fp))
    cr = np.mean(tp / np.maximum(1, tp + fn))
    return {"OF1": round(float(200 * op * orc / max(1e-9, op + orc)), 2),
            "CF1": round(float(200 * cp * cr / max(1e-9, cp + cr)), 2),
            "tags_per_image": round(float(predicted.sum(1).mean()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shared", type=Path, help="the shared data folder (voc2007/, coco-tiny/)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320])
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/training_free.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "weights"))
    import make_imagenet_model as maker  # noqa: E402  (the class table and maps it ships)

    from csra_cli.data.selection import open_dataset
    from csra_cli.evaluation.scoring import read_grouped_map

    classes = json.loads((HERE.parent / "weights" / f"{maker.NAME}.json").read_text())["classes"]
    voc_map, coco_map = read_grouped_map("imagenet-to-voc"), read_grouped_map("imagenet-to-coco")
    root = args.shared / "voc2007" / "VOCdevkit"
    coco = args.shared / "coco-tiny"
    sets = {"voc-train": open_dataset("voc", str(root), "train"), "voc-val": open_dataset("voc", str(root), "val")}
    coco_sets = [open_dataset("coco", annotations=str(coco / "annotations" / f"instances_{s}2017.json"),
                              images=str(coco / f"{s}2017")) for s in ("train", "val")]
    report = {"sizes": {}, "voc_not_covered": voc_map["not_covered"], "coco_not_covered": coco_map["not_covered"]}
    rng = np.random.default_rng(0)
    train_pick = np.sort(rng.choice(len(sets["voc-train"]), args.train_images, replace=False))
    for size in args.sizes:
        t = time.time()
        maps = {"voc-train": score_maps([sets["voc-train"].paths[i] for i in train_pick], size),
                "voc-val": score_maps(sets["voc-val"].paths, size),
                "coco": score_maps(coco_sets[0].paths + coco_sets[1].paths, size)}
        labels = {"voc-train": sets["voc-train"].labels[train_pick], "voc-val": sets["voc-val"].labels,
                  "coco": np.concatenate([coco_sets[0].labels, coco_sets[1].labels])}
        label_classes = {"voc-train": sets["voc-train"].classes, "voc-val": sets["voc-val"].classes,
                         "coco": coco_sets[0].classes}
        grouped = {"voc-train": voc_map, "voc-val": voc_map, "coco": coco_map}
        rows = []
        for lam in LAMBDAS:
            for temp in TEMPERATURES if lam else [1]:
                row = {"lam": lam, "T": temp}
                for k in maps:
                    probs = torch.softmax(torch.from_numpy(logits(maps[k], lam, temp)), 1).numpy()
                    row[k] = round(float(evaluate(probs, classes, grouped[k], labels[k], label_classes[k])), 2)
                rows.append(row)
                print(size, row, file=sys.stderr, flush=True)
        best = max(rows, key=lambda r: r["voc-train"])
        probs = {k: torch.softmax(torch.from_numpy(logits(maps[k], best["lam"], best["T"])), 1).numpy() for k in maps}
        thresholds = {str(th): tag_f1(probs["voc-train"], classes, voc_map, labels["voc-train"],
                                      label_classes["voc-train"], th) for th in THRESHOLDS}
        chosen = max(thresholds, key=lambda th: thresholds[th]["OF1"])
        report["sizes"][size] = {
            "sweep": rows, "chosen_on_voc_train": best, "seconds": round(time.time() - t, 1),
            "threshold_on_voc_train": thresholds, "threshold": float(chosen),
            "val_tags_at_threshold": tag_f1(probs["voc-val"], classes, voc_map, labels["voc-val"],
                                            label_classes["voc-val"], float(chosen)),
            "val_tags_at_threshold_lambda0": tag_f1(
                torch.softmax(torch.from_numpy(logits(maps["voc-val"], 0, 1)), 1).numpy(), classes, voc_map,
                labels["voc-val"], label_classes["voc-val"], float(chosen))}
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({s: {k: v for k, v in r.items() if k != "sweep"} for s, r in report["sizes"].items()}, indent=1))


if __name__ == "__main__":
    main()
