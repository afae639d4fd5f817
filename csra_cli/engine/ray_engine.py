"""``--engine ray``: tag and eval on a Ray cluster, through Ray Data.

The driver (the machine running ``csra``) expands the inputs exactly as the local engine does,
leaves out what ``--resume`` already has, and writes every record through the same sinks and
sidecars. The cluster does the rest: decoding and resizing in CPU tasks, the model in a pool of
actors (one model load each, one GPU each where the cluster has GPUs). Records come back in input
order. Ray retries a task whose worker or actor died, and a task's output counts only once it
finished, so no image is lost or written twice. Ray is imported only here.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..data.remote import is_uri, read_uri
from ..errors import CSRAError
from ..models.spec import ModelSpec
from .run_spec import RunSpec
from .tagging import TagHooks, TagPolicy, TagStats, deliver, image_record, pending, record_stamp

INSTALL_HINT = "pip install 'csra[ray]'"
WORKER_NICENESS = "RAY_worker_niceness"  # read by a raylet this process starts


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CSRAError(f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def for_actors(model: ModelSpec, run: RunSpec) -> tuple[ModelSpec, RunSpec]:
    """What each actor builds its runner from. Local files become absolute paths (workers start
    elsewhere), and ``auto`` takes this machine's CSRA_BACKEND, so the driver's choice holds;
    the actor runs one model on its batches, undecoded work and Ray's address stay here."""
    backend = os.environ.get("CSRA_BACKEND", "auto") if run.backend == "auto" else run.backend
    device = "cuda" if run.device.startswith("cuda") else run.device  # Ray gives each actor its own GPU: cuda:0
    model = model.portable()
    return model, RunSpec(models=(model,), backend=backend, device=device, precision=run.precision, tta=run.tta)


@contextlib.contextmanager
def ray_session(address: str | None):
    """Connect to the cluster (RAY_ADDRESS, a running ``ray start`` cluster, or ``--ray-address``;
    else a local instance sized to this machine); one already open in this process is reused."""
    ray = require_ray()
    started = not ray.is_initialized()
    # Ray starts its workers at nice 15; a local instance started here runs csra's own job, whose
    # workers would otherwise starve behind any other busy process (a cluster keeps its setting).
    os.environ.setdefault(WORKER_NICENESS, "0")
    with ray_lines_to_log() if started else contextlib.nullcontext():
        if started:
            try:
                # Worker output stays on the workers: stdout carries only records.
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                         configure_logging=True)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise CSRAError(f"--ray-address {address or 'auto'}: cannot connect to Ray "
                                f"({str(exc).strip().splitlines()[0]})") from None
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()


def ray_log_path() -> Path:
    from ..models.registry import cache_dir

    return cache_dir() / "logs" / "ray-driver.log"


@contextlib.contextmanager
def ray_lines_to_log():
    """Ray's own lines in this process (its core worker writes errors straight to file
    descriptor 2, its threads print warnings) go to $CSRA_HOME/logs/ray-driver.log, so stderr
    holds csra's messages alone (nothing at all under -q); csra's own stderr keeps the terminal.
    Where the log cannot be opened, nothing changes."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):
        yield
        return
    try:
        log = ray_log_path()
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError:
        os.close(saved)
        yield
        return
    ours = sys.stderr
    try:
        on_fd2 = ours.fileno() == 2
    except (OSError, AttributeError, ValueError):  # a test runner's capture: not the descriptor
        on_fd2 = False
    if on_fd2:  # csra's messages: the same terminal through a copy of the descriptor
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding=ours.encoding,
                                      errors=ours.errors, write_through=True)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        if on_fd2:
            replaced, sys.stderr = sys.stderr, ours
            replaced.close()


def decode_one(pre, path: str) -> tuple[np.ndarray | None, str]:
    """(uint8 CHW array, "") or (None, why the file could not be used), on a worker; URIs are
    read through pyarrow, local paths from the worker's disk."""
    from ..data.loader import describe_error

    try:
        data = read_uri(path) if is_uri(path) else None
        if (len(data) if data is not None else os.path.getsize(path)) == 0:
            return None, "empty file (0 bytes)"
        return np.asarray(pre.load(io.BytesIO(data) if data is not None else path)), ""
    except Exception as exc:  # one bad image never ends a batch
        return None, describe_error(exc)


def decode_batch(batch: dict, pre) -> dict:
    """A CPU task: paths -> uint8 images (blank where unreadable), their errors and the local
    files' fingerprints (None for a URI)."""
    from ..data.fingerprint import fingerprint
    from ..data.remote import is_uri

    images = np.zeros((len(batch["path"]), 3, pre.size, pre.size), dtype=np.uint8)
    errors, files = [], []
    for i, path in enumerate(batch["path"]):
        file = None if is_uri(str(path)) else fingerprint(str(path))
        files.append(json.dumps(file) if file else "")  # text: Ray's blocks hold it as it is
        img, error = decode_one(pre, str(path))
        if img is not None:
            images[i] = img
        errors.append(error)
    return {"path": batch["path"], "image": images, "error": np.array(errors, dtype=object),
            "file": np.array(files, dtype=object)}


class ScoreBatch:
    """An actor of the model pool: loads the model once, then scores batch after batch.
    ``scorer_for`` makes a subclass that holds the model and run values (frozen, pickled with
    the class), so a restarted actor needs nothing from the object store."""

    spec: tuple[ModelSpec, RunSpec] = (ModelSpec(), RunSpec())

    def __init__(self):
        from .runners import build_runner

        self.runner = build_runner(*self.spec)

    def __call__(self, batch: dict) -> dict:
        errors = batch["error"]
        good = np.array([not e for e in errors], dtype=bool)
        probs = np.full((len(errors), len(self.runner.card.classes)), np.nan, dtype=np.float32)
        if good.any():
            probs[good] = self.runner(np.ascontiguousarray(batch["image"][good]))  # runners take numpy
        return {"path": batch["path"], "error": errors, "probs": probs, "file": batch["file"]}


def scorer_for(spec: tuple[ModelSpec, RunSpec]) -> type:
    return type("ScoreBatch", (ScoreBatch,), {"spec": spec})


def pool_options(ray, spec: tuple[ModelSpec, RunSpec]) -> dict:
    """One actor per GPU where the cluster has GPUs (and the device allows them), else one
    CPU actor per machine: a CPU model already uses every core of its machine."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and spec[1].device in ("auto", "cuda"):
        return {"compute": ray.data.ActorPoolStrategy(size=gpus), "num_gpus": 1}
    machines = sum(1 for n in ray.nodes() if n.get("Alive"))
    return {"compute": ray.data.ActorPoolStrategy(size=max(machines, 1)), "num_cpus": 1}


def score_on_ray(ray, run: RunSpec, pre, paths: list[str]
                 ) -> Iterator[tuple[list[str], np.ndarray, list[str], list[dict | None]]]:
    """(paths, probabilities with NaN rows where unreadable, errors, fingerprints) per batch, in
    input order."""
    batch_size, spec = run.batch_size, for_actors(run.model, run)
    if not paths:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # records in input order, as the local engine
    ctx.enable_progress_bars = False  # the driver shows its own
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Blocks of a few batches: enough tasks to spread over the cluster, few enough to stay cheap.
    blocks = max(1, -(-len(paths) // (batch_size * 4)))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    # Half a core per decoding task: a photo fetched from S3 waits on the network, and a resource
    # shape unlike the actors' keeps Ray from fusing decoding into them (it would then run
    # between model calls instead of beside them).
    ds = ds.map_batches(decode_batch, fn_kwargs={"pre": pre}, batch_size=batch_size, batch_format="numpy",
                        num_cpus=0.5)
    ds = ds.map_batches(scorer_for(spec), batch_size=batch_size, batch_format="numpy", **pool_options(ray, spec))
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        yield ([str(p) for p in batch["path"]], np.asarray(batch["probs"]), [str(e or "") for e in batch["error"]],
               [json.loads(f) if f else None for f in batch["file"]])


def run_tagging_ray(runner, paths: Iterable[str], sinks: list, policy: TagPolicy, run: RunSpec,
                    hooks: TagHooks = TagHooks(), settings: dict | None = None) -> TagStats:
    """``run_tagging`` on the Ray cluster at ``run.ray_address``: the same records, sinks, hooks
    and statistics."""
    classes = runner.card.classes
    stats = TagStats()
    todo = list(pending(paths, hooks.skip, stats))  # only what the journal does not have yet goes to the cluster
    with ray_session(run.ray_address) as ray:
        for batch_paths, probs, errors, files in score_on_ray(ray, run, runner.pre, todo):
            stamp = record_stamp(runner, settings)
            for path, p, error, file in zip(batch_paths, probs, errors, files):
                rec = image_record(path, None if error else p, error, classes, policy, stamp,
                                   file if settings is not None else None)
                deliver(rec, sinks, stats, hooks.on_record)
            for sink in sinks:
                sink.flush()
            if hooks.progress:
                hooks.progress(len(batch_paths))
    return stats


def score_images_ray(runner, paths: list[str], run: RunSpec, progress: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """``score_images`` on a Ray cluster: (N, C) probabilities in the order of ``paths`` (NaN rows
    for unreadable images) and the (path, reason) of each of those."""
    scores = np.full((len(paths), len(runner.card.classes)), np.nan, dtype=np.float32)
    failures: list[tuple[str, str]] = []
    row = 0
    with ray_session(run.ray_address) as ray:
        for batch_paths, probs, errors, _ in score_on_ray(ray, run, runner.pre, list(paths)):
            scores[row:row + len(batch_paths)] = probs
            failures += [(p, e) for p, e in zip(batch_paths, errors) if e]
            row += len(batch_paths)
            if progress:
                progress(len(batch_paths))
    return scores, failures
