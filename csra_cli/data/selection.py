"""Dataset selection shared by ``csra train`` and ``csra eval``."""
from __future__ import annotations

from .datasets import LabelledSet, read_coco, read_csv_labels, read_voc
from ..errors import CSRAError

DATASETS = ("voc", "coco", "csv")


# Where ``--dataset voc`` looks without --root, in this order (relative to the working folder).
VOC_PLACES = ("VOCdevkit", "VOC2007", "data/VOCdevkit", ".")


def find_voc() -> str:
    """A VOCdevkit in the usual places, else one line saying where it looked and what to pass."""
    from pathlib import Path

    for place in VOC_PLACES:
        p = Path(place)
        for cand in (p, p / "VOC2007"):
            if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
                return str(cand)
    looked = ", ".join(f"./{p}" if p != "." else "." for p in VOC_PLACES)
    raise CSRAError(f"--dataset voc: no VOCdevkit found (looked in {looked}); "
                    "give --root PATH/VOCdevkit, the folder that holds VOC2007/")


def open_dataset(kind: str, root: str | None = None, split: str = "test", annotations: str | None = None,
                 images: str | None = None, labels: str | None = None, tag_sep: str = ";",
                 classes: list[str] | None = None) -> LabelledSet:
    if kind == "voc":
        return read_voc(root or find_voc(), split)
    if kind == "coco":
        if not annotations:
            raise CSRAError("--dataset coco needs --annotations instances_*.json (and --images FOLDER)")
        return read_coco(annotations, images)
    if kind == "csv":
        if not labels:
            raise CSRAError("--dataset csv needs --labels FILE.csv with the columns path,tags")
        return read_csv_labels(labels, tag_sep, classes)
    raise CSRAError(f"--dataset {kind!r}: use {', '.join(DATASETS)}")
