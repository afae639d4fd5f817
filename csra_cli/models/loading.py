"""``load_model``: one call for the default model, a registry name, our files and official .pth.

``resolve`` and ``find_card`` do not import torch, so a CPU run through onnxruntime can find the
model's card (and its cached export) without it; loading weights imports torch on first use."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import registry
from .card import ModelCard, ModelFiles, model_files, weights_mismatch
from .spec import ModelSpec
from ..data.classes import resolve_classes
from ..errors import CheckpointError, ModelNotFound

if TYPE_CHECKING:
    import torch

    from .csra import CSRAModel

OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
MODEL_FILE_SUFFIXES = OFFICIAL_SUFFIXES + (".safetensors", ".json")  # --model X.suffix is a file
# Preprocessing of the official models: ResNet takes RGB in [0, 1] at 448, ViT mean = std = 0.5.
OFFICIAL_RESNET = {"input_size": 448, "mean": None, "std": None}
OFFICIAL_VIT = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def official_card(state: dict, path: Path, arch: str | None = None, num_heads: int | None = None,
                  lam: float | None = None, classes=None, name: str | None = None, **extra) -> ModelCard:
    """The card of an official checkpoint: what its keys say, completed by the caller's settings."""
    from .checkpoint import infer_settings

    info = infer_settings(state)
    if num_heads is not None and num_heads != info["num_heads"]:
        raise CheckpointError(f"{path}: the checkpoint has {info['num_heads']} CSRA heads, not {num_heads} (drop --heads or fix it)")
    arch = arch or info.get("arch")
    if arch is None:
        raise CheckpointError(f"{path}: cannot tell the architecture from the keys; pass --arch")
    if info.get("arch") and arch != info["arch"] and not (arch == "vit" and info["arch"].startswith("vit")):
        raise CheckpointError(f"{path}: the keys are those of {info['arch']}, not {arch} (fix --arch)")
    arch_kwargs = dict(info.get("arch_kwargs", {}))
    arch_kwargs.update(extra.pop("arch_kwargs", None) or {})
    is_vit = arch.startswith("vit")
    pre = dict(OFFICIAL_VIT, input_size=arch_kwargs.get("img_size", 224)) if is_vit else dict(OFFICIAL_RESNET)
    pre.update({k: v for k, v in extra.items() if k in ("input_size", "mean", "std") and v is not None})
    try:
        names = resolve_classes(classes, info["num_classes"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return ModelCard(
        name=name or path.stem, arch=arch, num_heads=info["num_heads"],
        lam=0.1 if lam is None else float(lam), classes=names, arch_kwargs=arch_kwargs,
        training={"source": f"official CSRA checkpoint {path.name}"}, **pre,
    )


def model_from_card(card: ModelCard, state: dict, source: str) -> "CSRAModel":
    import torch

    from .checkpoint import load_weights
    from .csra import create_model

    try:
        model = create_model(card.arch, card.num_classes, card.num_heads, card.lam, card=card, **card.arch_kwargs)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: weights hold NaN or infinite values ({', '.join(bad[:3])}); the file is broken")
    load_weights(model, state, source)
    return model.eval()


def load_official(path: str | Path, **settings) -> "CSRAModel":
    from .checkpoint import read_state_dict

    path = Path(path)
    state = read_state_dict(path)
    card = official_card(state, path, **settings)
    return model_from_card(card, state, str(path))


def _apply_overrides(card: ModelCard, overrides: dict) -> ModelCard:
    for key in ("lam", "threshold", "input_size"):
        if overrides.get(key) is not None:
            setattr(card, key, overrides[key])
    return card


def load_csra(path: str | Path, **overrides) -> "CSRAModel":
    from .checkpoint import read_csra

    card, state = read_csra(path)
    return model_from_card(_apply_overrides(card, overrides), state, str(path))


def find_card(model: ModelSpec) -> tuple[ModelFiles, ModelCard] | None:
    """The files and card of a model in our format (.safetensors + card), without torch;
    None for an official checkpoint (its card comes from its keys) or an unreadable card."""
    path = resolve_spec(model).path
    if path.suffix not in (".safetensors", ".json"):
        return None
    try:
        card = ModelCard.load(path.with_suffix(".json"))
    except (ValueError, OSError):
        return None
    files = model_files(path, card)
    if not files.weights.is_file() or weights_mismatch(path, files.card, card):
        return None  # loading says why
    return files, _apply_overrides(card, {"lam": model.lam})


def resolve(name_or_path: str | None) -> tuple[Path, dict | None]:
    """A name, a path or None (the default model) -> the file to load and its registry entry."""
    name_or_path = name_or_path or registry.default_name()
    path = Path(name_or_path).expanduser()
    # A model name wins over a same-named folder or extension-less file in the working folder
    # (a folder called "fast" must not hide --model fast); a path with a model suffix is a path.
    own = registry.imported(name_or_path)
    if own is None:  # "fast", "default": short names of shipped models
        name_or_path = registry.canonical(name_or_path)
    named = own is not None or registry.is_name(name_or_path)
    if path.suffix in MODEL_FILE_SUFFIXES or (path.exists() and not named):
        if not path.exists():
            card = path.with_suffix(".json")
            hint = f" (its card is there: --model {card})" if path.suffix == ".safetensors" and card.is_file() else ""
            raise ModelNotFound(f"{path}: no such model file{hint}")
        if path.is_dir():
            raise ModelNotFound(f"{path}: is a directory, expected a model file")
        return path, None
    local = own if own is not None else registry.imported(name_or_path)  # a short name's canonical one
    if local is not None:
        return local, None
    entry = registry.entry(name_or_path)
    found = registry.installed_path(entry)
    if found is None:
        raise ModelNotFound(f"model '{entry['name']}' is not installed; run: csra models download {entry['name']}")
    from .download import recorded_digest_mismatch

    problem = recorded_digest_mismatch(found)
    if problem:
        raise CheckpointError(f"{problem}; run: csra models download {entry['name']} --force")
    return found, entry


def resolve_spec(model: ModelSpec) -> ModelSpec:
    """The spec with the file its source names and that file's registry entry (``resolve``),
    looked up once: a spec already resolved is returned as it is."""
    if model.path is not None:
        return model
    path, entry = resolve(model.source)
    return replace(model, path=path, entry=entry)


def load_spec(model: ModelSpec) -> "CSRAModel":
    """The PyTorch model a ModelSpec names (``load_model`` with its options)."""
    model = resolve_spec(model)
    return _load_resolved(model.path, model.entry, arch=model.arch, num_heads=model.heads, lam=model.lam,
                          classes=model.class_names)


def load_model(name_or_path: str | None = None, device: "str | torch.device | None" = None,
               arch: str | None = None, num_heads: int | None = None, lam: float | None = None,
               classes=None, **overrides) -> "CSRAModel":
    """A CSRA model in eval mode with ``.card``, ``.preprocess`` and ``.predict``.

    ``name_or_path``: None (the shipped default), a registry name, our ``.safetensors``/``.json``,
    or an official ``.pth`` (then ``arch``, ``num_heads``, ``lam``, ``classes`` complete what the
    keys cannot tell)."""
    path, entry = resolve(name_or_path)
    model = _load_resolved(path, entry, arch=arch, num_heads=num_heads, lam=lam, classes=classes, **overrides)
    if device is not None:
        model.to(device)
    return model


def _load_resolved(path: Path, entry: dict | None, arch=None, num_heads=None, lam=None, classes=None,
                   **overrides) -> "CSRAModel":
    if path.suffix in (".safetensors", ".json"):
        return load_csra(path, lam=lam, **overrides)
    if entry is not None:  # a downloaded official release: the registry knows its settings
        arch = arch or entry.get("arch")
        lam = entry.get("lam") if lam is None else lam
        classes = classes or entry.get("classes")
        overrides.setdefault("name", entry["name"])
        for key in ("input_size", "mean", "std"):
            if key in entry:
                overrides.setdefault(key, entry[key])
    return load_official(path, arch=arch, num_heads=num_heads, lam=lam, classes=classes, **overrides)
