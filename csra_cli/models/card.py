"""The model card: everything needed to use a weights file, stored as JSON beside it."""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

CARD_VERSION = 1
MAX_INPUT_SIZE = 2048  # 448 is the official size; far beyond this one image no longer fits in memory


def heads_text(num_heads: int) -> str:
    """'1 head', '4 heads': how messages name a head count."""
    return f"{num_heads} head{'' if num_heads == 1 else 's'}"


def check_name(name, what: str = "model name") -> str:
    """A name that becomes a file name in $CSRA_HOME: no folders, no way out of it."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or "/" in name or "\\" in name \
            or "\0" in name or ".." in name or name.startswith("."):
        raise ValueError(f"{what} {name!r}: use a plain name without '/', '\\', '..' or a leading '.'")
    return name


def _number(value, what: str, lo: float, hi: float, integer: bool = False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{what} is {value!r}; expected {'an integer' if integer else 'a number'} "
                         f"from {lo:g} to {hi:g}")
    return value


HEAD_STYLES = ("csra", "classifier")
ACTIVATIONS = ("sigmoid", "softmax")


def probabilities(logits: np.ndarray, activation: str = "sigmoid") -> np.ndarray:
    """Logits (N, C) -> scores in [0, 1] as the model was trained: per class (sigmoid) or shared
    over the classes (softmax)."""
    x = np.asarray(logits, dtype=np.float32)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-x))


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
    # The name a tag is written as, per class (tvmonitor -> tv); scores keep the class names.
    display_names: dict[str, str] | None = None
    arch_kwargs: dict = field(default_factory=dict)  # e.g. a ViT's img_size / depth
    # "csra": the paper's head (L2-normalised class rows, no bias), trained; "classifier": a
    # pretrained classifier's own weights and bias as the 1x1 class-score convolution, unchanged
    # (the paper's training-free setting).
    head_style: str = "csra"
    temperatures: list[float] | None = None  # one per head; None: the paper's for num_heads (99 = max)
    # How logits become scores: "sigmoid" (multi-label training) or "softmax" (a classifier
    # trained with one label an image, such as ImageNet's).
    activation: str = "sigmoid"
    # Per class, its broader terms from the broadest ("animal", "dog" for a golden retriever):
    # written after the fine tags (csra tag --keywords) and as keyword hierarchies in XMP.
    broader: dict[str, list[str]] | None = None
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    # The int8 export shipped beside the card measured against fp32 on labelled data (mAP of each,
    # drop, dataset, command): --precision auto runs it on the CPU when the drop is small enough.
    int8_check: dict = field(default_factory=dict)
    license: str = ""
    attribution: str = ""
    sha256: str = ""  # of the weights file
    # Another weights file in the card's folder: run-size variants of one network (the shipped
    # default and "fast") share one file. "" means NAME.safetensors beside NAME.json.
    weights_file: str = ""
    card_version: int = CARD_VERSION

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Types, ranges and lengths, so a bad card fails here in one line, not as a traceback
        or a silently wrong run later."""
        from ..data.preprocess import RESIZE_MODES

        check_name(self.name)
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch is {self.arch!r}; expected an architecture name")
        _number(self.num_heads, "num_heads", 1, 64, integer=True)
        _number(self.lam, "lam", 0, 1e3)
        if not isinstance(self.classes, (list, tuple)) or not self.classes or \
                not all(isinstance(c, str) and c for c in self.classes):
            raise ValueError("classes must be a non-empty list of names")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes holds the same name twice")
        _number(self.input_size, "input_size", 16, MAX_INPUT_SIZE, integer=True)
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize is {self.resize!r}; expected {', '.join(RESIZE_MODES)}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is None:
                continue
            if not isinstance(values, (list, tuple)) or len(values) != 3:
                raise ValueError(f"{key} is {values!r}; expected 3 numbers (R, G, B)")
            for v in values:
                _number(v, key, 1e-6 if key == "std" else -10, 10)
        _number(self.threshold, "threshold", 0, 1)
        if self.thresholds is not None:
            if not isinstance(self.thresholds, dict):
                raise ValueError("thresholds must map class names to numbers")
            for c, t in self.thresholds.items():
                _number(t, f"thresholds[{c!r}]", 0, 1)
        if self.display_names is not None:
            if not isinstance(self.display_names, dict) or not all(
                    isinstance(v, str) and v.strip() for v in self.display_names.values()):
                raise ValueError("display_names must map class names to non-empty names")
            unknown = sorted(set(self.display_names) - set(self.classes))
            if unknown:
                raise ValueError(f"display_names names unknown classes: {', '.join(unknown)}")
        if self.weights_file != "" and not _is_weights_name(self.weights_file, "weights_file"):
            raise ValueError(f"weights_file is {self.weights_file!r}; expected a .safetensors file name "
                             "in the card's folder")
        if self.head_style not in HEAD_STYLES:
            raise ValueError(f"head_style is {self.head_style!r}; expected {', '.join(HEAD_STYLES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation is {self.activation!r}; expected {', '.join(ACTIVATIONS)}")
        if self.temperatures is not None and (not isinstance(self.temperatures, list)
                                              or len(self.temperatures) != self.num_heads):
            raise ValueError(f"temperatures must list one temperature per head ({self.num_heads})")
        for t in self.temperatures or []:
            _number(t, "temperature", 1e-3, 1e3)
        if self.broader is not None:
            if not isinstance(self.broader, dict) or not all(
                    isinstance(v, list) and all(isinstance(t, str) and t for t in v) for v in self.broader.values()):
                raise ValueError("broader must map class names to lists of terms")
            unknown = sorted(set(self.broader) - set(self.classes))
            if unknown:
                raise ValueError(f"broader names unknown classes: {', '.join(unknown[:5])}")
        for key in ("arch_kwargs", "training", "metrics", "int8_check"):
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"{key} must be an object")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tag_names(self) -> list[str]:
        """The name each class's tag is written as: its display name, else the class name."""
        shown = self.display_names or {}
        return [shown.get(c, c) for c in self.classes]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def embedded_json(self) -> str:
        """The card as an export carries it: weights_file names a file beside a card, not in an export."""
        return json.dumps({**asdict(self), "weights_file": ""}, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise ValueError("a model card is a JSON object")
        missing = {"name", "arch", "num_heads", "lam", "classes"} - data.keys()
        if missing:
            raise ValueError(f"model card lacks {', '.join(sorted(missing))}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"not a valid model card ({exc})") from exc

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a valid model card ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def class_thresholds(self, default: float | None = None) -> list[float]:
        """One threshold per class: the per-class ones where known, else the global one."""
        base = self.threshold if default is None else default
        per = self.thresholds or {}
        return [float(per.get(c, base)) for c in self.classes]


class ModelFiles(NamedTuple):
    """The files of a model in our format."""
    weights: Path
    card: Path

    @property
    def int8(self) -> Path:
        """Where its int8 export may ship, NAME.int8.onnx beside the card, so that a shipped model
        runs in int8 without calibration images on the user's machine."""
        return self.card.with_name(self.card.stem + ".int8.onnx")


def _is_weights_name(name, what: str = "weights_file") -> bool:
    """A .safetensors file in the card's folder (check_name raises for a way out of it)."""
    return isinstance(name, str) and check_name(name, what).endswith(".safetensors")


def model_files(path: str | Path, card: ModelCard | None = None) -> ModelFiles:
    """The weights and card of a model in our format, given either file; any other file (an
    official checkpoint) is its own weights. ``card``: the card, where the caller has loaded it;
    else the card file is read for its ``weights_file`` only, unvalidated (a bad card is reported
    where it is loaded)."""
    path = Path(path)
    card_file = path.with_suffix(".json")
    if path.suffix != ".json":
        return ModelFiles(path, card_file)
    if card is not None:
        shared = card.weights_file
    else:
        try:
            shared = json.loads(card_file.read_text()).get("weights_file")
            shared = shared if shared and _is_weights_name(shared) else ""
        except (OSError, ValueError, AttributeError):
            shared = ""
    return ModelFiles(card_file.with_name(shared or card_file.stem + ".safetensors"), card_file)


def weights_mismatch(weights: Path, card_file: Path, card: ModelCard) -> str | None:
    """The problem, if a .safetensors path was given whose card beside it runs another file."""
    if weights.suffix == ".safetensors" and card.weights_file and card.weights_file != weights.name:
        return (f"{weights}: its card {card_file.name} runs {card.weights_file} (weights_file), "
                f"not this file; use --model {card_file}")
    return None
