"""Backends that turn a uint8 image batch into class probabilities: PyTorch or onnxruntime."""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from ..models.card import ModelCard
from .device import autocast_dtype, pick_device
from ..data.preprocess import Preprocess


class TorchRunner:
    def __init__(self, model, device: str = "auto", precision: str = "auto"):
        self.device = pick_device(device)
        self.card: ModelCard = model.card
        self.pre = Preprocess.from_card(self.card)
        self.dtype = autocast_dtype(self.device, precision)
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.pin = self.device.type == "cuda"

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = self.pre.normalize(batch.to(self.device, non_blocking=True))
        x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
               else contextlib.nullcontext())
        with ctx:
            logits = self.model(x)
        return torch.sigmoid(logits.float()).cpu().numpy()


class OnnxRunner:
    """An exported ``.onnx`` file through onnxruntime (CUDA provider when present)."""

    def __init__(self, path: str, device: str = "auto", threads: int = 0, card: ModelCard | None = None):
        import json

        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        # onnxruntime does the compute: an idle-spinning torch thread pool would only compete with it
        torch.set_num_threads(1)
        meta = self.session.get_modelmeta().custom_metadata_map
        if card is None and "csra_card" not in meta:
            raise ValueError(f"{path}: no csra_card metadata; export it with 'csra export --onnx'")
        try:
            self.card = card or ModelCard.from_dict(json.loads(meta["csra_card"]))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: its csra_card metadata is not a valid model card ({exc})") from exc
        self.pre = Preprocess.from_card(self.card)
        self.input = self.session.get_inputs()[0]
        self.fp16 = self.input.type == "tensor(float16)"
        self.pin = False

    # On the CPU small batches ran fastest (73.8 img/s at 1 vs 63.0 at 16 for the default model).
    cpu_chunk = 1

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = self.pre.normalize_numpy(batch.numpy())
        if self.fp16:
            x = x.astype(np.float16)
        step = len(x) if self.on_gpu else self.cpu_chunk
        logits = np.concatenate([self.session.run(None, {self.input.name: x[i:i + step]})[0]
                                 for i in range(0, len(x), step)]).astype(np.float32)
        return 1.0 / (1.0 + np.exp(-logits))


def _graph_digest(model) -> str:
    """Identity of what the exported graph computes: the weights and the card fields that shape it."""
    from ..models.checkpoint import state_digest

    c = model.card
    shape = repr((c.arch, c.num_heads, c.lam, c.input_size, sorted(c.arch_kwargs.items()), ONNX_OPSET))
    return state_digest(model, shape.encode())[:24]


ONNX_OPSET = 18  # the torch.export-based exporter: its graph ran ~1.4x faster than opset 17's here


def cached_onnx(model) -> str:
    """The model as a verified ONNX file in $CSRA_HOME/onnx, exported on first use."""
    from pathlib import Path

    from ..fileio import atomic_temp, remove_stale
    from ..errors import CSRAError
    from .export import export_onnx, verify_onnx
    from ..models.registry import cache_dir

    path = cache_dir() / "onnx" / f"{model.card.name}-{_graph_digest(model)}.onnx"
    if path.is_file():
        return str(path)
    remove_stale(path.parent.glob(".*.onnx"), 3600)  # temporaries of exports killed an hour ago or more
    from ..console import info

    info("preparing the model for onnxruntime (one-time export, ~30 s)…")
    fd, tmp = atomic_temp(path, ".onnx")
    os.close(fd)
    try:
        export_onnx(model, Path(tmp), opset=ONNX_OPSET)
        check = verify_onnx(model, Path(tmp))
        if not check["ok"]:
            raise CSRAError(f"the ONNX export differs from PyTorch by {check['max_abs_diff']:.2e}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return str(path)


def auto_runner(model, device: str = "auto", precision: str = "auto"):
    """onnxruntime on the CPU (about 3x PyTorch's speed for these models on this project's
    machines, see benchmarks/RESULTS.md), PyTorch elsewhere or if the export fails."""
    dev = pick_device(device)
    if dev.type != "cpu" or precision in ("fp16", "bf16") or os.environ.get("CSRA_BACKEND") == "torch":
        return TorchRunner(model, device, precision)
    try:
        import onnxruntime  # noqa: F401

        return OnnxRunner(cached_onnx(model), "cpu", threads=os.cpu_count() or 1, card=model.card)
    except Exception as exc:  # any failure here only costs speed
        from ..console import warn

        warn(f"onnxruntime unavailable for this model ({str(exc).splitlines()[0][:200]}); using PyTorch")
        return TorchRunner(model, device, precision)


def make_runner(model: str | None, backend: str = "auto", device: str = "auto", precision: str = "auto",
                arch=None, heads=None, lam=None, class_names=None):
    """The runner for a model name or file. auto: onnxruntime on the CPU (a cached, verified
    export of the model), PyTorch elsewhere; onnx: an exported ``.onnx`` file."""
    from pathlib import Path

    from ..errors import CSRAError
    from ..models.loading import load_model
    from .device import parse_device

    device = parse_device(device)
    backend = os.environ.get("CSRA_BACKEND", "auto") if backend == "auto" else backend
    if backend == "onnx":
        if not model or not model.endswith(".onnx"):
            raise CSRAError("--backend onnx needs --model FILE.onnx (make one with 'csra export --onnx')")
        if not Path(model).is_file():
            raise CSRAError(f"{model}: no such file")
        return OnnxRunner(model, device)
    if backend not in ("auto", "torch"):
        raise CSRAError(f"--backend {backend!r}: use auto, torch or onnx")
    if model and model.endswith(".onnx"):
        return OnnxRunner(model, device)
    m = load_model(model, arch=arch, num_heads=heads, lam=lam, classes=class_names)
    return auto_runner(m, device, precision) if backend == "auto" else TorchRunner(m, device, precision)
