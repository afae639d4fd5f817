"""Reading and writing model files.

* Official CSRA ``.pth`` checkpoints: plain state dicts (maybe wrapped, maybe with the
  DataParallel ``module.`` prefix, maybe fp16), loaded with ``weights_only=True`` only.
* Our own format: ``NAME.safetensors`` with the card ``NAME.json`` beside it (or a card naming
  another weights file in its folder: a run-size variant of that model).
"""
from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import torch

from .card import ModelCard, model_files, weights_mismatch
from ..errors import CheckpointError
from ..fileio import atomic_write_bytes

_HEAD_KEY = re.compile(r"^classifier\.multi_head\.(\d+)\.head\.weight$")


def state_digest(module: torch.nn.Module, extra: bytes = b"") -> str:
    """sha256 of a module's state-dict names and tensor bytes (independent of memory format,
    e.g. channels-last), plus ``extra``."""
    digest = hashlib.sha256(extra)
    for k, v in module.state_dict().items():
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """An official checkpoint's tensors, ``module.`` prefixes stripped. Never runs pickled code."""
    path = Path(path)
    _check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds pickled code or objects, not plain tensors "
            "(only weights_only checkpoints are loaded; re-save it as a plain state dict)"
        ) from exc
    except Exception as exc:  # zip/pickle corruption of many kinds
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def infer_settings(state: dict[str, torch.Tensor]) -> dict:
    """What the keys tell: architecture, its sizes, number of classes and heads."""
    heads = sorted(int(m.group(1)) for k in state if (m := _HEAD_KEY.match(k)))
    if not heads:
        raise CheckpointError("no CSRA head found (expected keys classifier.multi_head.<i>.head.weight)")
    info: dict = {"num_heads": len(heads), "num_classes": state["classifier.multi_head.0.head.weight"].shape[0]}
    if "cls_token" in state:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape[-1]
        grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        named = {(768, 12): "vit_b16", (1024, 24): "vit_l16"}.get((dim, depth))
        info.update(arch=named or "vit", arch_kwargs={"img_size": grid * patch})
        if not named:
            info["arch_kwargs"].update(patch_size=patch, embed_dim=dim, depth=depth, attn_heads=max(1, dim // 64))
    elif "conv1.weight" in state:
        counts = [1 + max((int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")), default=-1)
                  for i in range(1, 5)]
        bottleneck = any(k.endswith("conv3.weight") for k in state)
        table = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
                 (True, (3, 4, 6, 3)): "resnet50", (True, (3, 4, 23, 3)): "resnet101",
                 (True, (3, 8, 36, 3)): "resnet152"}
        info["arch"] = table.get((bottleneck, tuple(counts)))
    elif "conv_stem.weight" in state:
        blocks = sum(1 for k in state if re.match(r"^blocks\.\d+\.\d+\.bn1\.weight$", k))
        last = state["conv_head.weight"].shape[1]  # Lite1 and Lite2 differ only in width
        info["arch"] = {(16, 320): "efficientnet_lite0", (21, 320): "efficientnet_lite1",
                        (21, 352): "efficientnet_lite2"}.get((blocks, last))
    return info


def describe_mismatch(model_state: dict, ckpt_state: dict, limit: int = 8) -> str:
    """A readable diff of missing, unexpected and wrongly shaped keys."""
    missing = [k for k in model_state if k not in ckpt_state]
    unexpected = [k for k in ckpt_state if k not in model_state]
    shapes = [f"{k} {tuple(ckpt_state[k].shape)} (model {tuple(model_state[k].shape)})"
              for k in model_state if k in ckpt_state and model_state[k].shape != ckpt_state[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" … and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with a readable diff on mismatch."""
    model_state = model.state_dict()
    diff = describe_mismatch(model_state, state)
    if diff:
        raise CheckpointError(f"{source} does not fit the model: {diff} (wrong --arch/--heads/--classes?)")
    model.load_state_dict({k: v.to(model_state[k].dtype) for k, v in state.items()}, strict=True)


def card_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def save_csra(model: torch.nn.Module, card: ModelCard, path: str | Path, half: bool = False) -> Path:
    """Write ``path`` (.safetensors) and its card; the card records the weights' sha256."""
    from safetensors.torch import save

    path = Path(path).with_suffix(".safetensors")
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    data = save(tensors, metadata={"format": "pt", "csra_card": "json-beside"})
    atomic_write_bytes(path, data)
    card.sha256 = hashlib.sha256(data).hexdigest()
    card.weights_file = ""  # the weights are written beside the card, whatever the card ran before
    atomic_write_bytes(card_path(path), card.to_json().encode())
    return path


def read_csra(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Our format: the card and the tensors (path to the .safetensors or the .json)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _check_file(path)
    cpath = card_path(path)
    if not cpath.exists():
        raise CheckpointError(f"{path}: its model card {cpath.name} is missing beside it")
    try:
        card = ModelCard.load(cpath)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    weights = model_files(path, card).weights
    problem = weights_mismatch(path, cpath, card)
    if problem:
        raise CheckpointError(problem)
    if not weights.is_file():
        where = "named by its weights_file" if card.weights_file else "expected beside it"
        raise CheckpointError(f"{cpath}: its weights {weights.name} ({where}) are missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from exc
    return card, state
