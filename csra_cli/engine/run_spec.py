"""``RunSpec``: one value for how a run goes (the models, backend, device, precision, TTA, batch
size, decoding workers and engine), built once per command from the shared options and read by
the local runner, the Ray engine, eval and bench alike. No torch here."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..cpu import default_workers
from ..errors import CSRAError
from ..models.spec import ModelSpec

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class RunSpec:
    """How to run. ``models`` holds every model of the run (one today; the tuple leaves room for
    ``--model A --model B``); ``workers`` -1 means cores - 1, at most 4 (``resolved_workers``)."""

    models: tuple[ModelSpec, ...] = (ModelSpec(),)
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    tta: bool = False
    batch_size: int = 16
    workers: int = -1
    engine: str = "local"
    ray_address: str | None = None

    @classmethod
    def from_options(cls, **options) -> "RunSpec":
        """From a command's options: the model ones (``ModelSpec``'s fields) make its one model,
        the rest are this value's own; options a command does not take keep their defaults."""
        model_fields = {f.name for f in fields(ModelSpec)}
        given = {k: options.pop(k) for k in list(options) if k in model_fields}
        sources = given.pop("source", None)
        if not isinstance(sources, list):  # one --model (or none)
            return cls(models=(ModelSpec(source=sources, **given),), **options)
        return cls(models=tuple(ModelSpec(source=s, **given) for s in sources or [None]), **options)

    @property
    def model(self) -> ModelSpec:
        """The run's one model."""
        if len(self.models) != 1:
            raise CSRAError(f"this command runs one model at a time, not {len(self.models)}")
        return self.models[0]

    def with_model(self, model: ModelSpec) -> "RunSpec":
        return replace(self, models=(model,))

    def checked_precision(self) -> str:
        if self.precision not in PRECISIONS:
            raise CSRAError(f"--precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        return self.precision

    def checked_engine(self) -> str:
        if self.engine not in ENGINES:
            raise CSRAError(f"--engine {self.engine!r}: use local or ray")
        return self.engine

    @property
    def resolved_workers(self) -> int:
        return default_workers() if self.workers < 0 else self.workers
