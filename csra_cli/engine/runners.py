"""Backends that turn a uint8 image batch into class probabilities: PyTorch or onnxruntime.

The onnxruntime path needs neither torch nor the weights: a model in our format is found by
its card, and its export is cached under a key made of the weights file's sha256 and the card
fields that shape the graph, so a CPU run that finds the export never imports torch."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..cpu import cpu_cores
from ..models.card import ModelCard, ModelFiles, model_files, probabilities
from ..models.spec import ModelSpec
from ..data.loader import Done
from ..data.preprocess import Preprocess
from .device import autocast_dtype, pick_device, runs_on_cpu
from .ort_session import cpu_session
from .run_spec import RunSpec

# --precision auto on the CPU runs a model's int8 export when a check on labelled data found it
# at most this many mAP points below fp32 (the card's int8_check for a shipped int8 file, the
# record `csra export --int8 --dataset ...` keeps beside a cached one); fp32 otherwise.
INT8_MAX_DROP = 0.3


class TorchRunner:
    def __init__(self, model, device: str = "auto", precision: str = "auto"):
        import torch

        from .device import set_threads

        set_threads()
        self.device = pick_device(device)
        self.card: ModelCard = model.card
        self.pre = Preprocess.from_card(self.card)
        self.dtype = autocast_dtype(self.device, precision)
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.pin = self.device.type == "cuda"

    def __call__(self, batch) -> np.ndarray:
        """uint8 (B, 3, S, S) batch, a numpy array or a tensor -> probabilities (B, C)."""
        import torch

        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
            if self.pin:
                batch = batch.pin_memory()
        with torch.inference_mode():
            x = self.pre.normalize(batch.to(self.device, non_blocking=True))
            x = x.contiguous(memory_format=torch.channels_last)
            ctx = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                logits = self.model(x)
            from ..models.csra import torch_probabilities

            return torch_probabilities(logits, self.card)


class OnnxRunner:
    """An exported ``.onnx`` file through onnxruntime (CUDA provider when present)."""

    def __init__(self, path: str, device: str = "auto", threads: int = 0, card: ModelCard | None = None,
                 lanes: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        # lanes > 1: that many images run at once, each on its own thread (see cpu_runner)
        self.lanes, self._pool = max(1, lanes), None
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        self.path = str(path)
        self.session = cpu_session(self.path, opts, providers)
        self.on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        if "torch" in sys.modules:  # an idle-spinning torch thread pool would only compete with onnxruntime
            sys.modules["torch"].set_num_threads(1)
        self.meta = meta = self.session.get_modelmeta().custom_metadata_map
        if card is None and "csra_card" not in meta:
            raise ValueError(f"{path}: no csra_card metadata; export it with 'csra export --onnx'")
        try:
            self.card = card or ModelCard.from_dict(json.loads(meta["csra_card"]))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: its csra_card metadata is not a valid model card ({exc})") from exc
        self.precision = meta.get("csra_precision", "fp32")
        self.pre = Preprocess.from_card(self.card)
        self.input = self.session.get_inputs()[0]
        self.fp16 = self.input.type == "tensor(float16)"
        self.pin = False

    # On the CPU small batches ran fastest (73.8 img/s at 1 vs 63.0 at 16 for the default model).
    cpu_chunk = 1

    def __call__(self, batch) -> np.ndarray:
        batch = np.asarray(batch)
        if self.lanes > 1 and len(batch) > self.cpu_chunk and not self.on_gpu:
            return self.submit(batch).result()
        step = len(batch) if self.on_gpu else self.cpu_chunk
        return probabilities(np.concatenate([self._run(batch[i:i + step]) for i in range(0, len(batch), step)]),
                             self.card.activation)

    def submit(self, batch):
        """Queue a batch on the lanes (one image each) and return at once; ``.result()`` gives its
        probabilities. Work queued before the previous batch ends keeps every lane busy."""
        batch = np.asarray(batch)
        if self.on_gpu or self.lanes <= 1:
            return Done(self(batch))
        if self._pool is None:  # onnxruntime lets the GIL go while it runs
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="csra-lane")
        step = self.cpu_chunk
        return _LaneResult([self._pool.submit(self._run, batch[i:i + step]) for i in range(0, len(batch), step)],
                           self.card.activation)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        # made float here, in its lane: in parallel, and while the image is still in the cache
        # (normalising a whole batch first kept both lanes idle for ~1 ms an image)
        x = self.pre.normalize_numpy(chunk)
        return self.session.run(None, {self.input.name: x.astype(np.float16) if self.fp16 else x})[0]


class _LaneResult:
    """A batch queued on the lanes: its chunks' futures, joined into probabilities."""

    def __init__(self, futures: list, activation: str = "sigmoid"):
        self.futures, self.activation = futures, activation

    def result(self) -> np.ndarray:
        return probabilities(np.concatenate([f.result() for f in self.futures]), self.activation)


def precision_of(runner) -> str:
    """What a runner computes in: an export's precision (fp32, fp16, int8), or PyTorch's autocast
    dtype (fp32 without one)."""
    if isinstance(getattr(runner, "precision", None), str):
        return runner.precision
    dtype = getattr(runner, "dtype", None)
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), "fp32")


class FlipAveraged:
    """Test-time augmentation: each batch runs as it is and mirrored left-right, and the two
    probabilities are averaged (twice the model's work). Everything else is the wrapped runner's."""

    tta = True  # recorded with each record's model name

    def __init__(self, runner):
        self.runner = runner

    def __getattr__(self, name):
        if name == "runner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.runner, name)

    def __call__(self, batch) -> np.ndarray:
        return (self.runner(batch) + self.runner(_mirrored(batch))) / 2

    def submit(self, batch) -> "_Averaged":
        """Queue the batch and its mirror image on the wrapped runner's lanes (where it has them;
        else score both now): without this, the wrapped runner's own submit would skip the mirror."""
        inner = getattr(self.runner, "submit", None)
        if inner is None:
            return Done(self(batch))
        return _Averaged(inner(batch), inner(_mirrored(batch)))


def _mirrored(batch):
    return batch.flip(-1) if hasattr(batch, "flip") else np.ascontiguousarray(np.asarray(batch)[..., ::-1])


class _Averaged:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def result(self) -> np.ndarray:
        return (self.a.result() + self.b.result()) / 2


# ----------------------------------------------------------------------------- the export cache
def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime) in the cache so that a start-up
    costs a stat, not a read of the whole file; a changed file is hashed again."""
    from ..fileio import remember, remembered, sha256_file
    from ..models.registry import cache_dir

    path = Path(path).resolve()
    st = path.stat()
    memo_file, key = cache_dir() / "onnx" / "weights-sha256.json", f"{path}|{st.st_size}|{st.st_mtime_ns}"
    digest = remembered(memo_file, key)
    if digest is None:
        digest = sha256_file(path)
        remember(memo_file, key, digest)
    return digest


def export_key(weights: Path, card: ModelCard, precision: str = "fp32") -> str:
    """Identity of an export: the weights' bytes, the card fields that shape the graph
    (preprocessing and thresholds stay outside the graph, so they are not part of it) and, for
    int8, the quantisation recipe."""
    from .quantize import RECIPE

    recipe = f"|{RECIPE}" if precision == "int8" else ""
    return hashlib.sha256(f"{weights_sha256(weights)}|{_graph_fields(card)}{recipe}".encode()).hexdigest()[:24]


def _graph_fields(card: ModelCard) -> str:
    """The card fields that shape the exported graph, and the opset (the head's style and
    temperatures only where they are not the paper's defaults, so earlier keys stay valid)."""
    fields = (card.arch, card.num_heads, card.lam, card.input_size, sorted(card.arch_kwargs.items()), ONNX_OPSET)
    if card.head_style != "csra" or card.temperatures is not None:
        fields += (card.head_style, card.temperatures)
    return repr(fields)


def cache_path(weights: Path, card: ModelCard, precision: str = "fp32", key: str | None = None) -> Path:
    """Where the export of these weights in ``precision`` is cached (``key``: their export_key, if known)."""
    from ..models.registry import cache_dir

    suffix = "" if precision == "fp32" else f"-{precision}"
    return cache_dir() / "onnx" / f"{card.name}-{key or export_key(weights, card, precision)}{suffix}.onnx"


def _graph_digest(model) -> str:
    """Identity of what the exported graph computes: the weights and the card fields that shape it."""
    from ..models.checkpoint import state_digest

    return state_digest(model, _graph_fields(model.card).encode())[:24]


ONNX_OPSET = 18  # the torch.export-based exporter: its graph ran ~1.4x faster than opset 17's here


def cached_onnx(model, weights: Path | None = None) -> str:
    """The model as a verified ONNX file in $CSRA_HOME/onnx, exported on first use; keyed by its
    weights file when known (so it is found later without torch), else by its tensors."""
    from ..fileio import atomic_temp, remove_stale
    from ..errors import CSRAError
    from .export import export_onnx, verify_onnx
    from ..models.registry import cache_dir

    path = (cache_path(weights, model.card) if weights is not None
            else cache_dir() / "onnx" / f"{model.card.name}-{_graph_digest(model)}.onnx")
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


def auto_runner(model, device: str = "auto", precision: str = "auto", weights: Path | None = None):
    """onnxruntime on the CPU (about 3x PyTorch's speed for these models on this project's
    machines, see benchmarks/RESULTS.md), PyTorch elsewhere or if the export fails."""
    dev = pick_device(device)
    if dev.type != "cpu" or precision in ("fp16", "bf16") or os.environ.get("CSRA_BACKEND") == "torch":
        return TorchRunner(model, device, precision)
    try:
        import onnxruntime  # noqa: F401

        return cpu_runner(cached_onnx(model, weights), model.card)
    except Exception as exc:  # any failure here only costs speed
        from ..console import warn

        warn(f"onnxruntime unavailable for this model ({str(exc).splitlines()[0][:200]}); using PyTorch")
        return TorchRunner(model, device, precision)


def cpu_parallelism() -> str:
    """How a CPU run uses its cores ($CSRA_CPU_PARALLELISM): "lanes" (the default), one image per
    core at a time, each on one thread (a batch's images are independent), or "threads", one image
    at a time spread over every core. Lanes gave more images/s on 2 cores (benchmarks/RESULTS.md):
    at batch 1 the late layers of a CNN are too small to split well between threads."""
    from ..errors import CSRAError

    mode = os.environ.get("CSRA_CPU_PARALLELISM") or "lanes"
    if mode not in ("lanes", "threads"):
        raise CSRAError(f"CSRA_CPU_PARALLELISM={mode!r}: use lanes or threads")
    return mode


# Lanes beyond this share the cores as threads: a batch of 16 then still fills every lane in whole
# rounds, and each lane's activation memory is paid at most this many times. Only 2 cores measured.
MAX_CPU_LANES = 4


def cpu_runner(path, card: ModelCard | None) -> OnnxRunner:
    """An export of a model on the CPU, with every core (card None: the one in its metadata)."""
    cores = cpu_cores()
    if cpu_parallelism() == "threads":
        return OnnxRunner(str(path), "cpu", threads=cores, card=card)
    lanes = min(cores, MAX_CPU_LANES)
    return OnnxRunner(str(path), "cpu", threads=cores // lanes, card=card, lanes=lanes)


def precision_runner(files: ModelFiles, card: ModelCard, precision: str, quiet: bool = False) -> OnnxRunner | None:
    """The export of a model in ``precision`` (fp32 or int8) as a CPU runner: the cached one
    (an int8 one is the user's own calibration), else for int8 the one shipped beside its card
    if it was made from these weights, with these graph settings, by the current recipe; None
    where there is none."""
    weights = files.weights
    key = export_key(weights, card, precision)  # once: it reads the weights' sha256 memo
    cached = cache_path(weights, card, precision, key)
    if cached.is_file():
        return cpu_runner(cached, card)
    shipped = files.int8
    if precision != "int8" or not shipped.is_file():
        return None
    stat = shipped.stat()
    seen = (str(shipped), key, stat.st_size, stat.st_mtime_ns)  # this file, checked for this model
    if seen in _refused:
        return None
    try:
        runner = cpu_runner(shipped, card)
        if runner.meta.get("csra_export_key") == key:
            return runner
        problem = (f"does not match {card.name} ({Path(weights).name}) as run here (other weights, graph "
                   "settings or int8 recipe)")
    except Exception as exc:  # a damaged file only costs the shipped int8
        problem = f"cannot be loaded ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"
    if not quiet and not any(r[0] == seen[0] for r in _refused):  # quiet: auto's try, fp32 follows
        from ..console import warn

        warn(f"{shipped.name} {problem}; not used")
    _refused.add(seen)
    return None


# Shipped int8 files found not to fit a model as run in this process (the file as it was, the
# model's export key): not opened again for it (a run that falls back from the fast path would
# load it twice) and warned about once per file.
_refused: set[tuple] = set()


def fast_runner(model: ModelSpec, precision: str = "auto") -> OnnxRunner | None:
    """onnxruntime on the CPU straight from an export of the asked precision (shipped or cached),
    without torch: for a model in our format; None where there is no such export."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from ..models.loading import find_card

    found = find_card(model)
    if found is None:
        return None
    files, card = found
    wanted = auto_precision(files, card) if precision == "auto" else precision
    for p in dict.fromkeys([wanted] + (["fp32"] if precision == "auto" else [])):
        runner = precision_runner(files, card, p, quiet=precision == "auto")
        if runner is not None:
            return runner
    return None


def int8_check_of(files: ModelFiles, card: ModelCard) -> dict | None:
    """The accuracy check of the int8 export that --precision int8 would run: the record beside
    a cached export (the user's own calibration; none if it was not checked), else the card's
    check of the int8 file shipped beside it."""
    cached = cache_path(files.weights, card, "int8")
    if cached.is_file():
        return read_int8_check(cached)
    return (card.int8_check or None) if files.int8.is_file() else None


def read_int8_check(export: Path) -> dict | None:
    try:
        return json.loads(int8_check_path(export).read_text())
    except (OSError, ValueError):
        return None


def int8_check_path(export: Path) -> Path:
    return export.with_name(export.name + ".check.json")


def int8_passes(check: dict | None) -> bool:
    try:
        return check is not None and float(check["fp32_mAP"]) - float(check["int8_mAP"]) <= INT8_MAX_DROP
    except (KeyError, TypeError, ValueError):
        return False


def auto_precision(files: ModelFiles, card: ModelCard) -> str:
    """What --precision auto runs on the CPU: int8 where its check passes, else fp32."""
    return "int8" if int8_passes(int8_check_of(files, card)) else "fp32"


def int8_missing(name: str) -> str:
    return (f"no int8 export of {name} is cached; make one with 'csra export --onnx --int8 --model {name} "
            "--calibrate-on IMAGES' (100-200 images like the ones to tag)")


def build_runner(model: ModelSpec, run: RunSpec):
    """The runner of ``model`` as ``run`` says (backend, device, precision, TTA). auto:
    onnxruntime on the CPU (a cached, verified export of the model, found without importing
    torch when it is there), PyTorch elsewhere; onnx: an exported ``.onnx`` file. int8: the
    cached or shipped quantised export (CPU only). TTA averages each image's scores with its
    mirror image's."""
    runner = _build_runner(model, run.backend, run.device, run.precision)
    return FlipAveraged(runner) if run.tta else runner


def make_runner(model: str | None = None, backend: str = "auto", device: str = "auto", precision: str = "auto",
                **model_options):
    """``build_runner`` from loose values, for scripts: ``model_options`` are ModelSpec's
    (arch, heads, lam, class_names)."""
    return build_runner(ModelSpec(model, **model_options), RunSpec(backend=backend, device=device, precision=precision))


def _onnx_file_runner(path: str, device: str) -> OnnxRunner:
    """A user's ``.onnx`` file: on the CPU with every core as our own exports, else as onnxruntime picks."""
    return cpu_runner(path, None) if runs_on_cpu(device) else OnnxRunner(path, device)


def _build_runner(model: ModelSpec, backend: str, device: str, precision: str):
    from ..errors import CSRAError
    from ..models.loading import load_spec, resolve_spec
    from .device import parse_device

    device = parse_device(device)
    backend = os.environ.get("CSRA_BACKEND", "auto") if backend == "auto" else backend
    if backend == "onnx":
        if not model.is_onnx:
            raise CSRAError("--backend onnx needs --model FILE.onnx (make one with 'csra export --onnx')")
        if not Path(model.source).is_file():
            raise CSRAError(f"{model.source}: no such file")
        return _onnx_file_runner(model.source, device)
    if backend not in ("auto", "torch"):
        raise CSRAError(f"--backend {backend!r}: use auto, torch or onnx")
    if model.is_onnx:
        return _onnx_file_runner(model.source, device)
    on_cpu = runs_on_cpu(device)
    if precision == "int8" and (backend == "torch" or not on_cpu):
        raise CSRAError("--precision int8 runs through onnxruntime on the CPU: use --device cpu and --backend auto")
    model = resolve_spec(model)  # once: the fast path, the weights and the model read it
    if backend == "auto" and on_cpu and precision in ("auto", "fp32", "int8"):
        runner = fast_runner(model, precision)
        if runner is not None:
            return runner
    m = load_spec(model)
    files = model_files(model.path)
    weights = files.weights
    if precision == "int8":
        runner = precision_runner(files, m.card, "int8")
        if runner is None:
            raise CSRAError(int8_missing(model.source or m.card.name))
        return runner
    if backend == "torch":
        return TorchRunner(m, device, precision)
    return auto_runner(m, device, "fp32" if precision == "auto" and on_cpu else precision, weights)
