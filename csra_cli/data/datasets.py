"""Labelled image sets: VOC layout, COCO instances JSON and a plain ``path,tags`` CSV.

Labels are an int8 matrix (images x classes): 1 positive, 0 negative, -1 ignored (a VOC class
present only through "difficult" objects, on the test split, as the official protocol does).
"""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classes import VOC_CLASSES
from ..errors import CSRAError

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


@dataclass
class LabelledSet:
    paths: list[str]
    labels: np.ndarray  # int8 (N, C)
    classes: list[str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def without(self, left_out: set[str]) -> "LabelledSet":
        """The same set less the images at these paths."""
        keep = [i for i, p in enumerate(self.paths) if p not in left_out]
        return LabelledSet([self.paths[i] for i in keep], self.labels[keep], self.classes, self.name)


def voc_root(root: str | Path) -> Path:
    """Accept VOCdevkit, VOCdevkit/VOC2007 or the folder above VOCdevkit."""
    root = Path(root)
    if not root.exists():
        raise CSRAError(f"--root {root}: no such folder")
    for cand in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise CSRAError(f"{root}: not a VOC2007 folder (expected Annotations/ and ImageSets/Main/ in it or in VOC2007/)")


def read_voc(root: str | Path, split: str = "test") -> LabelledSet:
    root = voc_root(root)
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        paper = " (the paper's evaluation split)" if split == "test" else ""
        hint = f"; pass --split {'val' if 'val' in have else have[0]}" if have else ""
        raise CSRAError(f"{root}: no split '{split}'{paper}; its splits are {', '.join(have) or 'none'}{hint}")
    ids = [ln.split()[0] for ln in ids_file.read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
    paths = []
    for row, image_id in enumerate(ids):
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        easy, hard = set(), set()
        for obj in tree.iter("object"):
            name = obj.findtext("name", "").strip()
            if name in index:
                (hard if obj.findtext("difficult", "0").strip() == "1" else easy).add(index[name])
        labels[row, list(easy)] = POSITIVE
        if split == "test":  # difficult-only classes are ignored on test, negative elsewhere
            labels[row, list(hard - easy)] = IGNORED
        paths.append(str(root / "JPEGImages" / f"{image_id}.jpg"))
    return LabelledSet(paths, labels, list(VOC_CLASSES), f"voc2007/{split}")


def read_coco(annotations: str | Path, images: str | Path | None = None) -> LabelledSet:
    """Positive for every category with an instance; images without annotations are left out."""
    annotations = Path(annotations)
    if not annotations.is_file():
        raise CSRAError(f"{annotations}: no such COCO annotations file")
    data = json.loads(annotations.read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    col = {c["id"]: i for i, c in enumerate(cats)}
    images_dir = Path(images) if images else annotations.parent.parent / annotations.stem.split("_")[-1]
    by_image: dict[int, set[int]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], set()).add(col[ann["category_id"]])
    kept = [im for im in sorted(data["images"], key=lambda im: im["id"]) if im["id"] in by_image]
    labels = np.zeros((len(kept), len(cats)), dtype=np.int8)
    for row, im in enumerate(kept):
        labels[row, list(by_image[im["id"]])] = POSITIVE
    paths = [str(images_dir / im["file_name"]) for im in kept]
    return LabelledSet(paths, labels, [c["name"] for c in cats], f"coco/{annotations.stem}")


def read_csv_labels(path: str | Path, sep: str = ";", classes: list[str] | None = None) -> LabelledSet:
    """``path,tags`` rows; paths relative to the CSV's folder or absolute."""
    path = Path(path)
    if not path.is_file():
        raise CSRAError(f"{path}: no such labels file")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "tags"} <= set(reader.fieldnames):
                raise CSRAError(f"{path}: needs the columns path,tags (got {reader.fieldnames})")
            for r in reader:
                tags = [t.strip() for t in (r["tags"] or "").split(sep) if t.strip()]
                p = Path(r["path"])
                rows.append((str(p if p.is_absolute() else path.parent / p), tags))
    except UnicodeDecodeError as exc:
        raise CSRAError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                        "save the labels file as UTF-8") from None
    except csv.Error as exc:
        raise CSRAError(f"{path}: not a readable CSV ({exc})") from None
    names = classes or sorted({t for _, tags in rows for t in tags})
    index = {c: i for i, c in enumerate(names)}
    labels = np.zeros((len(rows), len(names)), dtype=np.int8)
    for i, (_, tags) in enumerate(rows):
        labels[i, [index[t] for t in tags if t in index]] = POSITIVE
    return LabelledSet([p for p, _ in rows], labels, names, f"csv/{path.name}")
