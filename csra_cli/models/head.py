"""The CSRA classifier head (Zhu & Wu, ICCV 2021), laid out like the official code.

State-dict keys are ``multi_head.<i>.head.weight`` so that a model holding this module as
``classifier`` loads the official checkpoints unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# The official code stores T = infinity as 99 and treats it as max pooling.
INF_TEMPERATURE = 99
TEMPERATURES = {
    1: [1],
    2: [1, INF_TEMPERATURE],
    4: [1, 2, 4, INF_TEMPERATURE],
    6: [1, 2, 3, 4, 5, INF_TEMPERATURE],
    8: [1, 2, 3, 4, 5, 6, 7, INF_TEMPERATURE],
}


class CSRA(nn.Module):
    """One residual-attention head: logit = mean(s) + lam * sum(s * softmax(T s))."""

    def __init__(self, in_channels: int, num_classes: int, temperature: float, lam: float,
                 normalized: bool = True):
        super().__init__()
        self.temperature = temperature
        self.lam = lam
        self.normalized = normalized
        # not normalised: a pretrained classifier's own rows and bias (the training-free setting)
        self.head = nn.Conv2d(in_channels, num_classes, 1, bias=not normalized)

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Class score maps (B, C, H, W): the 1x1 conv divided by each class row's L2 norm (as
        is, for a pretrained classifier's rows: its average is then the classifier's logit)."""
        if not self.normalized:
            return self.head(x)
        norm = self.head.weight.flatten(1).norm(dim=1)
        return self.head(x) / norm.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.score_maps(x).flatten(2)
        base = score.mean(dim=2)
        if self.temperature == INF_TEMPERATURE or math.isinf(self.temperature):
            att = score.amax(dim=2)
        else:
            att = (score * torch.softmax(score * self.temperature, dim=2)).sum(dim=2)
        return base + self.lam * att


class MultiHeadCSRA(nn.Module):
    """Sum of CSRA heads with the paper's temperature settings for 1, 2, 4, 6 or 8 heads."""

    def __init__(self, in_channels: int, num_classes: int, num_heads: int = 1, lam: float = 0.1,
                 temperatures: list[float] | None = None, normalized: bool = True):
        super().__init__()
        if temperatures is None and num_heads not in TEMPERATURES:
            raise ValueError(f"num_heads must be one of {sorted(TEMPERATURES)}, got {num_heads}")
        temperatures = temperatures or TEMPERATURES[num_heads]
        if len(temperatures) != num_heads:
            raise ValueError(f"{num_heads} heads need {num_heads} temperatures, got {len(temperatures)}")
        self.num_heads = num_heads
        self.lam = lam
        self.multi_head = nn.ModuleList(
            CSRA(in_channels, num_classes, t, lam, normalized) for t in temperatures
        )

    @property
    def num_classes(self) -> int:
        return self.multi_head[0].head.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.multi_head[0](x)
        for head in self.multi_head[1:]:
            logits = logits + head(x)
        return logits

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Class score maps (B, C, H, W) summed over the heads. Each head has its own 1x1 conv;
        the sum is the map whose spatial mean is the base part of the model's logit, so it shows
        where the whole model finds each class rather than one head's view."""
        maps = self.multi_head[0].score_maps(x)
        for head in self.multi_head[1:]:
            maps = maps + head.score_maps(x)
        return maps
