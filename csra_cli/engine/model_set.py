"""Several models in one run (``csra tag --model default --model imagenet``): each image is
decoded once, resized once for each model's input size, and every model scores it.

The set presents itself to the rest of csra as one model whose classes are the models' classes
in turn, so records, sidecars, SQLite and the report hold every model's tags with no change of
their own: a record's tags are every model's that pass their own model's thresholds, best first
by score (``--top-k`` counts them all together: a softmax model's scores are far below a sigmoid
model's), its scores are keyed by class name, and a class name a later model shares with an
earlier one is written ``MODEL:class`` (MODEL: the later model's card name). The record's model field names
them all, joined by ``,`` (``csra-voc-effl2-512+int8,csra-imagenet-effl2``)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..data.loader import Done
from ..data.preprocess import MultiPreprocess
from ..models.card import ModelCard


def merged_card(cards: list[ModelCard]) -> ModelCard:
    """One card over several models' classes (per class: its model's threshold and broader terms)."""
    classes, thresholds, broader, shown = [], {}, {}, {}
    taken: set[str] = set()
    for k, card in enumerate(cards):
        own = dict(zip(card.classes, card.class_thresholds()))
        names = dict(zip(card.classes, card.tag_names()))
        for c in card.classes:
            name = c if c not in taken else f"{card.name}:{c}"
            if name in taken:  # the same model twice
                name = f"{card.name}#{k + 1}:{c}"
            taken.add(name)
            classes.append(name)
            thresholds[name] = own[c]
            if names[c] != c:
                shown[name] = names[c] if names[c] not in shown.values() else f"{card.name}:{names[c]}"
            if card.broader and card.broader.get(c):
                broader[name] = card.broader[c]
    first = cards[0]
    return replace(first, name=",".join(c.name for c in cards), classes=classes, thresholds=thresholds,
                   threshold=first.threshold, display_names=shown or None, broader=broader or None,
                   metrics={}, int8_check={}, training={}, sha256="", weights_file="")


class ModelSet:
    """Runners of several models behind one runner's interface (``card``, ``pre``, ``submit``)."""

    def __init__(self, runners: list):
        self.runners = runners
        self.card = merged_card([r.card for r in runners])
        self.pre = MultiPreprocess([r.pre for r in runners])
        self.pin = False
        self.tta = any(getattr(r, "tta", False) for r in runners)

    @property
    def precision(self) -> str:
        from .runners import precision_of

        return ",".join(precision_of(r) for r in self.runners)

    def __call__(self, batch) -> np.ndarray:
        return self.submit(batch).result()

    def submit(self, batch) -> "_Joined":
        """Queue the batch on every model at once (their lanes share the cores)."""
        parts = []
        for runner in self.runners:
            images = batch.for_size(runner.pre.size)
            submit = getattr(runner, "submit", None)
            parts.append(submit(images) if submit is not None else Done(runner(images)))
        return _Joined(parts)


class _Joined:
    def __init__(self, parts: list):
        self.parts = parts

    def result(self) -> np.ndarray:
        return np.concatenate([p.result() for p in self.parts], axis=1)
