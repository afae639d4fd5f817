"""``ModelSpec``: one value for which model to load (the --model, --arch, --heads, --lam and
--class-names options), built once per command and passed down, as torchvision's ``Weights``
and timm's ``pretrained_cfg`` are. No torch here; resolving it against the registry is
``loading.resolve_spec``."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..data.remote import is_uri


@dataclass(frozen=True)
class ModelSpec:
    """What to load. ``source``: a registry name, our .safetensors or card .json, an official
    .pth or an exported .onnx; None for the shipped default. ``arch``, ``heads``, ``lam`` and
    ``class_names`` complete what an official .pth cannot tell by its keys (``lam`` also
    overrides a card's λ). ``path`` and ``entry`` are filled by ``loading.resolve_spec``: the
    file the source names and its registry entry, found once."""

    source: str | None = None
    arch: str | None = None
    heads: int | None = None
    lam: float | None = None
    class_names: str | None = None
    path: Path | None = field(default=None, compare=False)
    entry: dict | None = field(default=None, compare=False, repr=False)

    @property
    def is_onnx(self) -> bool:
        """An exported .onnx file: onnxruntime runs it as it is."""
        return bool(self.source) and self.source.endswith(".onnx")

    def options(self) -> dict:
        """The user's options, without what resolving found (for a process that resolves anew)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("path", "entry")}

    def portable(self) -> "ModelSpec":
        """The same model for a process started elsewhere (a Ray worker): local files as absolute
        paths, names as they are, and nothing resolved here (a name's file differs per machine)."""
        def absolute(p):
            return str(Path(p).resolve()) if p and not is_uri(p) and Path(p).exists() else p

        return replace(ModelSpec(**self.options()), source=absolute(self.source),
                       class_names=absolute(self.class_names))
