"""Dataset selection shared by ``csra train`` and ``csra eval``."""
from __future__ import annotations

from .datasets import LabelledSet, read_coco, read_csv_labels, read_voc
from ..errors import CSRAError

DATASETS = ("voc", "coco", "csv")


def open_dataset(kind: str, root: str | None = None, split: str = "test", annotations: str | None = None,
                 images: str | None = None, labels: str | None = None, tag_sep: str = ";",
                 classes: list[str] | None = None) -> LabelledSet:
    if kind == "voc":
        if not root:
            raise CSRAError("--dataset voc needs --root (VOCdevkit or VOCdevkit/VOC2007)")
        return read_voc(root, split)
    if kind == "coco":
        if not annotations:
            raise CSRAError("--dataset coco needs --annotations instances_*.json (and --images FOLDER)")
        return read_coco(annotations, images)
    if kind == "csv":
        if not labels:
            raise CSRAError("--dataset csv needs --labels FILE.csv with the columns path,tags")
        return read_csv_labels(labels, tag_sep, classes)
    raise CSRAError(f"--dataset {kind!r}: use {', '.join(DATASETS)}")
