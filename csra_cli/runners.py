"""Backends that turn a uint8 image batch into class probabilities: PyTorch or onnxruntime."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .card import ModelCard
from .loader import autocast_dtype, pick_device
from .preprocess import Preprocess


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

    def __init__(self, path: str, device: str = "auto", threads: int = 0):
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
        meta = self.session.get_modelmeta().custom_metadata_map
        if "csra_card" not in meta:
            raise ValueError(f"{path}: no csra_card metadata; export it with 'csra export --onnx'")
        self.card = ModelCard.from_dict(json.loads(meta["csra_card"]))
        self.pre = Preprocess.from_card(self.card)
        self.input = self.session.get_inputs()[0]
        self.fp16 = self.input.type == "tensor(float16)"
        self.pin = False

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = self.pre.normalize(batch).numpy()
        if self.fp16:
            x = x.astype(np.float16)
        logits = self.session.run(None, {self.input.name: x})[0].astype(np.float32)
        return 1.0 / (1.0 + np.exp(-logits))
