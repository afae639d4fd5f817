"""Where the model runs: device choice, autocast precision, thread counts."""
from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING

from ..cpu import cpu_cores
from ..errors import CSRAError

if TYPE_CHECKING:  # torch is imported where a device is actually needed
    import torch


def parse_device(device: str) -> str:
    """Check a --device value before anything is loaded."""
    ok = device in ("auto", "cpu", "mps", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise CSRAError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def runs_on_cpu(name: str) -> bool:
    """Whether a --device value means the CPU, told without importing torch (which takes seconds):
    cpu, or auto on a machine with no GPU device node (NVIDIA, ROCm, WSL) that is not an Apple
    silicon Mac. Once torch is loaded anyway, torch decides."""
    if name == "cpu":
        return True
    if name != "auto":
        return False
    if "torch" in sys.modules:
        return pick_device("auto").type == "cpu"
    if any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")):
        return False
    return not (sys.platform == "darwin" and platform.machine() == "arm64")


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
    core to each worker made tagging ~1.5x slower on 2 cores (benchmarks/RESULTS.md).
    Only where torch is loaded already (TorchRunner calls it too): importing it here would
    cost an onnxruntime run seconds for nothing."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(cpu_cores())
