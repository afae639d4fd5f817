"""The model card: everything needed to use a weights file, stored as JSON beside it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CARD_VERSION = 1


@dataclass
class ModelCard:
    name: str
    arch: str
    num_heads: int
    lam: float
    classes: list[str]
    input_size: int = 448
    resize: str = "squash"  # squash to input_size x input_size, as the official code does
    mean: list[float] | None = None  # None: RGB in [0, 1] fed as is (official ResNet models)
    std: list[float] | None = None
    threshold: float = 0.5
    thresholds: dict[str, float] | None = None  # per-class, chosen on a validation split
    arch_kwargs: dict = field(default_factory=dict)  # e.g. a ViT's img_size / depth
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    license: str = ""
    attribution: str = ""
    sha256: str = ""  # of the weights file
    card_version: int = CARD_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        known = {f.name for f in fields(cls)}
        missing = {"name", "arch", "num_heads", "lam", "classes"} - data.keys()
        if missing:
            raise ValueError(f"model card lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a valid model card ({exc})") from exc
        return cls.from_dict(data)

    def class_thresholds(self, default: float | None = None) -> list[float]:
        """One threshold per class: the per-class ones where known, else the global one."""
        base = self.threshold if default is None else default
        per = self.thresholds or {}
        return [float(per.get(c, base)) for c in self.classes]
