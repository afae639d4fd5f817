"""Streaming image loading shared by tag, eval and bench: one pool of decode workers (threads,
or processes) for the whole run decodes and resizes while the model runs; a file that fails
becomes an error record, never an exception. No torch here: the DataLoader adapter at the end
is for training only."""
from __future__ import annotations

import collections
import os
import queue
import signal
import stat
import threading
import time
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from .preprocess import Preprocess


def describe_error(exc: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image or an unsupported format"
    if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return f"refused as a possible decompression bomb ({exc})"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return "truncated image file"
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]


def load_one(preprocess: Preprocess, path: str, flip: bool = False) -> tuple[np.ndarray, str]:
    """(uint8 (3, S, S) array, "") or (a blank array, the reason the file could not be used);
    for several models' preprocessing (MultiPreprocess), one such array per input size."""
    blank = preprocess.blank()
    try:
        problem = file_problem(path)
        if problem:
            return blank, problem
        arr = preprocess.load(path)
    except Exception as exc:  # one bad image never ends a batch
        return blank, describe_error(exc)
    return (np.ascontiguousarray(arr[..., ::-1]) if flip else arr), ""


def file_problem(path: str) -> str:
    """What the file itself rules out before decoding ("" for nothing): a FIFO, socket or device
    (it would block the reader), or an empty file; a missing one raises FileNotFoundError."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        return "not a regular file (a FIFO, socket or device)"
    return "empty file (0 bytes)" if st.st_size == 0 else ""


def unreadable(path: str) -> str:
    """Why an image cannot be used ("" when it can): missing, not a regular file, empty, or not
    decodable. Cheap: a JPEG is decoded at 1/8 scale (its DCT draft), which still reads every byte."""
    from PIL import Image

    try:
        problem = file_problem(path)
        if problem:
            return problem
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
    except Exception as exc:  # any reason at all: the image is left out, not the run
        return describe_error(exc)
    return ""


def decode_batch(preprocess: Preprocess, paths: list[str], fingerprints: bool = False
                 ) -> tuple[np.ndarray, list[str], list[dict | None] | None]:
    """A list of files -> a uint8 (B, 3, S, S) batch, one error string per file and, with
    ``fingerprints``, each file's size, mtime and sha256 (read here, in the decode worker, off
    the model's path)."""
    from .fingerprint import fingerprint

    prints = [fingerprint(p) for p in paths] if fingerprints else None
    batch = preprocess.empty_batch(len(paths))  # an array, or a SizedBatch for several models
    errors = []
    for i, p in enumerate(paths):
        batch[i], error = load_one(preprocess, p)
        errors.append(error)
    return batch, errors, prints


class Decoded(NamedTuple):
    """One decoded batch of a stream: positions in the input, paths, uint8 images, an error per
    image ("" when it decoded) and the files' fingerprints (None unless the pool takes them)."""

    indices: list[int]
    paths: list[str]
    images: np.ndarray
    errors: list[str]
    files: list[dict | None] | None


# ----------------------------------------------------------------------------- the decode pool
_worker_pre: Preprocess | None = None
_worker_prints = False


def _init_worker(preprocess: Preprocess, parent_alive=None, fingerprints: bool = False) -> None:
    global _worker_pre, _worker_prints
    _worker_pre, _worker_prints = preprocess, fingerprints
    # Ctrl-C reaches the whole foreground process group: csra handles it (one line, the journal
    # kept for --resume) and ends its workers; a worker's own KeyboardInterrupt traceback is noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_alive is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_alive,), daemon=True, name="csra-parent").start()


def _exit_with_parent(parent_alive) -> None:
    """End this worker when csra is gone. csra holds the only write end of this pipe, so it
    reads EOF when csra exits or is killed (-9 included). Without this, a worker of a killed run
    waited for work forever, and it kept the forkserver and the resource tracker alive with it
    (its parent is the forkserver, so PR_SET_PDEATHSIG would not fire when csra dies)."""
    try:
        parent_alive.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)


def _decode_in_worker(paths: list[str]):
    return decode_batch(_worker_pre, paths, _worker_prints)


def _pool_context():
    import multiprocessing  # here: a run of one batch never needs it

    # Not fork: the run has threads by then (the path reader, onnxruntime's or torch's pools), and a
    # child forked while one of them held a lock hung in the test suite. forkserver forks workers
    # from a clean single-threaded process; each imports only numpy and Pillow.
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def decode_mode() -> str:
    """Where decode workers run ($CSRA_DECODE): "threads" (the default) of this process, or
    "processes". Pillow lets the GIL go while it decodes and resizes, and threads hand their
    images over without a copy: on 2 cores end to end was 88% of the model-only rate with a
    thread, 83.5% with a process, whose 12 MB batches are pickled through a pipe (default model,
    int8; benchmarks/RESULTS.md)."""
    from ..errors import CSRAError

    mode = os.environ.get("CSRA_DECODE") or "threads"
    if mode not in ("threads", "processes"):
        raise CSRAError(f"CSRA_DECODE={mode!r}: use threads or processes")
    return mode


class DecodePool:
    """Decode workers kept for a whole run (every batch of every stream goes through the same
    workers): threads, or processes (``decode_mode``); ``workers=0`` decodes in the caller's
    thread; ``fingerprints``: each file's size, mtime and sha256 come with its image. Use as a
    context manager.

    Processes start in the background at the second batch: until they are up, batches decode
    on a thread of this process, so a run's first images never wait for a worker to start, and a
    run of one batch (one photo, say) starts none (a worker's start, a fresh Python importing
    numpy and Pillow, was ~0.2 s of a one-image run's ~0.7 s)."""

    def __init__(self, preprocess: Preprocess, workers: int, fingerprints: bool = False):
        self.pre, self.workers, self.fingerprints = preprocess, max(0, int(workers)), fingerprints
        self._pool = self._alive = self._local = self._starter = None
        self._ready = threading.Event()
        self._submitted = 0
        self.processes = self.workers > 0 and decode_mode() == "processes"

    def submit(self, paths: list[str]):
        if not self.workers:
            return Done(decode_batch(self.pre, paths, self.fingerprints))
        self._submitted += 1
        if self._submitted == 2 and self.processes:
            self._starter = threading.Thread(target=self._start_workers, daemon=True, name="csra-pool-start")
            self._starter.start()
        if self._ready.is_set():
            return self._pool.submit(_decode_in_worker, paths)
        if self._local is None:
            from concurrent.futures import ThreadPoolExecutor

            self._local = ThreadPoolExecutor(1 if self.processes else self.workers, thread_name_prefix="csra-decode")
        return self._local.submit(decode_batch, self.pre, paths, self.fingerprints)

    def _start_workers(self) -> None:
        try:
            self._start_pool()
        except Exception:  # noqa: BLE001 - no worker could start: batches keep decoding on the thread
            pass

    def _start_pool(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        ctx = _pool_context()
        watched, self._alive = ctx.Pipe(duplex=False)  # workers watch for its EOF: csra gone
        self._pool = ProcessPoolExecutor(self.workers, ctx, _init_worker, (self.pre, watched, self.fingerprints))
        if hasattr(signal, "pthread_sigmask"):
            # This thread only (and after the resource tracker's start, which unblocks it): the
            # forkserver and the workers inherit the mask, so a Ctrl-C that reaches them while
            # Python starts up in them, before they ignore it, cannot kill one mid-import.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        self._pool.submit(int).result()  # processes spawn at the first task: wait until one has run
        self._ready.set()

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
            self._starter = None
        for executor in (self._local, self._pool):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        self._local = self._pool = None
        if self._alive is not None:
            self._alive.close()
            self._alive = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Done:
    """An already computed result with the Future interface (``result()``)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


_END = object()


def _batches_of_paths(paths: Iterable[str], batch_size: int, patience: float) -> Iterator[list[str]]:
    """Paths grouped by ``batch_size``; a reader thread pulls them so that when the source is slow
    (paths typed or piped in one by one) a partial batch goes out after ``patience`` seconds
    instead of waiting for the batch to fill."""
    q: queue.Queue = queue.Queue(maxsize=batch_size * 64)
    failure: list[BaseException] = []

    def read():
        try:
            for p in paths:
                q.put(p)
        except BaseException as exc:  # handed to the consumer, raised there
            failure.append(exc)
        finally:
            q.put(_END)

    threading.Thread(target=read, daemon=True, name="csra-paths").start()
    block: list[str] = []
    while True:
        try:
            item = q.get(timeout=patience) if block else q.get()
        except queue.Empty:  # the source is slow: send what there is
            yield block
            block = []
            continue
        if item is _END:
            if block:
                yield block
            if failure:
                raise failure[0]
            return
        block.append(item)
        if len(block) >= batch_size:
            yield block
            block = []


class LoaderStats:
    """How long the consumer waited for decoded batches (the model's idle time)."""

    def __init__(self):
        self.waited = 0.0
        self.started = time.perf_counter()

    @property
    def idle_share(self) -> float:
        return self.waited / max(time.perf_counter() - self.started, 1e-9)


def stream_batches(paths: Iterable[str], preprocess: Preprocess, batch_size: int, workers: int = 0,
                   pin_memory: bool = False, pool: DecodePool | None = None, patience: float = 0.05,
                   stats: LoaderStats | None = None) -> Iterator[Decoded]:
    """``Decoded`` batches (indices, paths, uint8 (B, 3, S, S) images, errors, files), in input order, for paths of any
    number and origin (stdin included). Decoding runs in ``pool`` (or one made for this stream)
    with at most a few batches per worker in flight, so memory stays flat however long the input.
    ``pin_memory`` is accepted for the callers' sake; PyTorch runners pin on their side."""
    own = pool is None
    pool = pool or DecodePool(preprocess, workers)
    ahead = max(2, 2 * pool.workers)  # batches in flight: enough to keep every worker busy
    pending: collections.deque = collections.deque()
    start = 0
    try:
        groups = _batches_of_paths(paths, batch_size, patience)
        exhausted = False
        while True:
            while not exhausted and len(pending) < ahead:
                block = next(groups, None)
                if block is None:
                    exhausted = True
                    break
                pending.append((start, block, pool.submit(block)))
                start += len(block)
                if len(block) < batch_size:
                    break  # a partial batch from a slow source: hand it on now, not after more input
            if not pending:
                return
            first, block, fut = pending.popleft()
            t = time.perf_counter()
            batch, errors, files = fut.result()
            if stats is not None:
                stats.waited += time.perf_counter() - t
            yield Decoded(list(range(first, first + len(block))), block, batch, errors, files)
    finally:
        if own:
            pool.close()


def _readable_images(decoded: Decoded) -> np.ndarray | None:
    """The batch's images that decoded (the batch itself when all did: indexing would copy it)."""
    good = [i for i, e in enumerate(decoded.errors) if not e]
    if not good:
        return None
    return decoded.images if len(good) == len(decoded.errors) else decoded.images[good]


def scored_batches(runner, batches: Iterable[Decoded], ahead: int = 2,
                   batch_size: int | None = None) -> Iterator[tuple[Decoded, np.ndarray]]:
    """(batch, probabilities of its readable images) in order, with the model ``ahead`` batches
    in front of the caller: while the caller writes batch k's records, sidecars and output, the
    model already runs batch k + 1, and a runner that takes work ahead (``runner.submit``: the
    CPU lanes) has it queued before batch k ends, so a lane that finishes first starts the next
    image instead of waiting for the other at the batch's end. onnxruntime and PyTorch let the GIL
    go while they compute. ``batch_size``: a shorter batch (a slow source) is handed on at once."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    empty = np.zeros((0, len(runner.card.classes)), dtype=np.float32)
    submit = getattr(runner, "submit", None)
    with ThreadPoolExecutor(1, thread_name_prefix="csra-model") as model:
        def start(decoded: Decoded):
            images = _readable_images(decoded)
            if images is None:
                return Done(empty)
            return submit(images) if submit is not None else model.submit(runner, images)

        queued: collections.deque = collections.deque()
        for decoded in batches:
            queued.append((decoded, start(decoded)))
            # a short batch: the source is slow (paths typed or piped in one by one) or ending;
            # hand everything on now rather than after the next path comes
            short = batch_size is not None and len(decoded.paths) < batch_size
            while len(queued) >= (1 if short else ahead):
                done, future = queued.popleft()
                yield done, future.result()
        while queued:
            done, future = queued.popleft()
            yield done, future.result()


# ----------------------------------------------------------------------------- training (PyTorch)
class ImageListDataset:
    """A known list of paths as a map-style dataset for torch's DataLoader (training)."""

    def __init__(self, paths: list[str], preprocess: Preprocess, flip: bool = False):
        self.paths, self.preprocess, self.flip = list(paths), preprocess, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        arr, error = load_one(self.preprocess, self.paths[i], self.flip)
        return i, self.paths[i], arr, error


def collate(items):
    import torch

    idx, paths, arrays, errors = zip(*items)
    return list(idx), list(paths), torch.from_numpy(np.stack(arrays)), list(errors)


def make_loader(dataset, batch_size: int, workers: int, pin_memory: bool = False):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      prefetch_factor=4 if workers > 0 else None)
