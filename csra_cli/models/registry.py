"""Known models: ``weights/registry.json`` (shipped) and the local cache (``$CSRA_HOME``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelNotFound
from .card import check_name, model_files

_PACKAGE = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = _PACKAGE / "weights"  # where the wheel puts weights/


def weights_dir() -> Path:
    """The shipped ``weights/`` folder: inside the package when installed, at the repo top in a checkout."""
    if WEIGHTS_DIR.is_dir():
        return WEIGHTS_DIR
    return _PACKAGE.parent / "weights"


def cache_dir() -> Path:
    return Path(os.environ.get("CSRA_HOME") or Path.home() / ".cache" / "csra")


def registry_file() -> Path:
    """The shipped registry, or ``$CSRA_REGISTRY`` (a registry file of one's own)."""
    return Path(os.environ.get("CSRA_REGISTRY") or weights_dir() / "registry.json")


def load_registry() -> dict:
    return json.loads(registry_file().read_text())


def entries() -> list[dict]:
    return load_registry()["models"]


def default_name() -> str:
    return load_registry()["default"]


def aliases() -> dict[str, str]:
    """Short names of shipped models ("default", "fast") -> their registry names."""
    reg = load_registry()
    return {"default": reg["default"], **reg.get("aliases", {})}


def canonical(name: str) -> str:
    return aliases().get(name, name)


def is_name(name: str) -> bool:
    """A short name or a registry entry's name."""
    return name in aliases() or any(e["name"] == name for e in entries())


def _own_model(card: Path) -> Path | None:
    """The file to load for a model of ours in the cache, given its card: the weights when they
    are the card's own, else the card (it names weights shared with another model)."""
    if not card.is_file():
        return None
    weights = model_files(card).weights
    if not weights.is_file():
        return None
    return weights if weights.stem == card.stem else card


def imported(name: str) -> Path | None:
    """A model converted with ``csra models import`` (or copied) into the cache under this name."""
    try:
        check_name(name)
    except ValueError:
        return None
    return _own_model(cache_dir() / f"{name}.json")


def imported_models() -> list[Path]:
    folder = cache_dir()
    found = (_own_model(card) for card in sorted(folder.glob("*.json"))) if folder.is_dir() else ()
    return [p for p in found if p is not None]


def entry(name: str) -> dict:
    name = canonical(name) if imported(name) is None else name
    for e in entries():
        if e["name"] == name:
            check_name(e["file"], f"registry entry {name}: file")
            return e
    known = ", ".join(e["name"] for e in entries())
    raise ModelNotFound(f"unknown model '{name}'; known models: {known} (see 'csra models')")


def installed_path(e: dict) -> Path | None:
    """Where a registry entry's file is, if it is here: shipped in weights/ or downloaded."""
    for folder in (weights_dir(), cache_dir()):
        p = folder / e["file"]
        if p.is_file() and model_files(p).weights.is_file():  # a card: with the weights it names
            return p
    return None
