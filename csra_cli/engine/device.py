"""Where the model runs: device choice, autocast precision, thread counts."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import CSRAError

if TYPE_CHECKING:  # torch is imported where a device is actually needed
    import torch


def parse_device(device: str) -> str:
    """Check a --device value before anything is loaded."""
    ok = device in ("auto", "cpu", "mps", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise CSRAError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_device(name: str = "auto") -> "torch.device":
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CSRAError(f"--device {name}: CUDA is not available here (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CSRAError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CSRAError(f"--device {name}: MPS is not available here (use --device cpu or auto)")
    return device


def autocast_dtype(device: "torch.device", precision: str = "auto") -> "torch.dtype | None":
    """None for fp32; fp16/bf16 autocast where asked, and by default on CUDA."""
    import torch

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def set_threads() -> None:
    """The model keeps every core: decoding a photo is a small share of the work, and giving a
    core to each worker made tagging ~1.5x slower on 2 cores (benchmarks/RESULTS.md)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
