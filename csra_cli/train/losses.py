"""Training losses: binary cross-entropy (the paper's) and the asymmetric loss (ASL).

ASL (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021) down-weights the
many easy negatives of multi-label data: negatives get a focusing exponent ``gamma_neg`` and a
probability margin ``clip`` (a negative scored below it costs nothing), positives ``gamma_pos``.
Both losses average over the labelled (image, class) pairs, so learning rates carry over.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "asl")


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weight)


def asl_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, gamma_neg: float = 4.0,
             gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p  # shifted probability of the negatives
    pos = targets * torch.log(p.clamp(min=eps)) * (1 - p).pow(gamma_pos)
    neg = (1 - targets) * torch.log((1 - p_neg).clamp(min=eps)) * p_neg.pow(gamma_neg)
    return -((pos + neg) * weight).sum() / weight.sum().clamp(min=1)


def make_loss(name: str):
    if name == "bce":
        return bce_loss
    if name == "asl":
        return asl_loss
    raise ValueError(f"--loss {name!r}: use {' or '.join(LOSSES)}")
