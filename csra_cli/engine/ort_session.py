"""onnxruntime CPU sessions that start from a graph optimised once and saved.

Creating a session optimises the graph (fusions, and at the highest level layouts chosen for this
CPU's vector width) on every start: ~15 ms of a one-image ``csra tag``'s ~0.5 s for the default
model. onnxruntime can save the optimised graph; since that graph may hold kernels chosen for this
CPU, a copy is keyed by the source file (path, size, mtime), the onnxruntime version and the CPU's
model and vector flags, and is checked against the source's outputs before it is used."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..cpu import cpu_info

# Largest output difference allowed between a saved optimised graph and its source (the same
# kernels run; only the order of a few float sums may change).
_TOLERANCE = 1e-4


def optimized_path(source: str) -> Path | None:
    """Where the optimised copy of ``source`` for this CPU and onnxruntime lives; None when the
    source cannot be read."""
    import onnxruntime as ort

    from ..models.registry import cache_dir

    try:
        st = os.stat(source)
    except OSError:
        return None
    identity = json.dumps([os.path.realpath(source), st.st_size, st.st_mtime_ns, ort.__version__, cpu_info()])
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return cache_dir() / "onnx" / "optimized" / f"{Path(source).stem}-{key}.onnx"


def cpu_session(source: str, opts, providers: list[str]):
    """An InferenceSession of ``source``: from its saved optimised copy when there is a good one,
    else from the source (saving the copy for the next start). Any trouble with the copy only
    costs the saving."""
    import onnxruntime as ort

    saved = optimized_path(source) if providers == ["CPUExecutionProvider"] else None
    if saved is None:
        return ort.InferenceSession(source, opts, providers=providers)
    if saved.is_file():
        try:
            return ort.InferenceSession(str(saved), _optimised_options(opts), providers=providers)
        except Exception:  # damaged or from another build: optimise from the source again
            saved.unlink(missing_ok=True)
    return _save_optimized(source, saved, opts, providers)


def _save_optimized(source: str, saved: Path, opts, providers: list[str]):
    import onnxruntime as ort

    from ..fileio import atomic_temp, remove_stale

    try:
        remove_stale(saved.parent.glob(".*.onnx"), 3600)
        fd, tmp = atomic_temp(saved, ".onnx")
        os.close(fd)
    except OSError:  # a read-only cache: run without saving
        return ort.InferenceSession(source, opts, providers=providers)
    try:
        saving = _copy_options(opts)
        saving.optimized_model_filepath = tmp
        session = ort.InferenceSession(source, saving, providers=providers)
        if _same_outputs(session, ort.InferenceSession(tmp, _optimised_options(opts), providers=providers)):
            os.replace(tmp, saved)
            for old in saved.parent.glob(f"{Path(source).stem}-*.onnx"):  # earlier copies of this file
                if old != saved and old.name.count("-") == saved.name.count("-"):
                    old.unlink(missing_ok=True)
        return session
    except Exception:  # the source itself fails: let it fail as it would without the cache
        return ort.InferenceSession(source, opts, providers=providers)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _same_outputs(a, b) -> bool:
    """Both sessions give the same outputs (within _TOLERANCE) on one fixed pseudo-random input."""
    feed = {}
    for inp in a.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        feed[inp.name] = np.random.default_rng(0).random(shape).astype(dtype)
    return all(np.allclose(x, y, atol=_TOLERANCE, rtol=0) for x, y in zip(a.run(None, feed), b.run(None, feed)))


def _optimised_options(opts):
    """The options for a graph optimised already: the same, with onnxruntime's optimisation off."""
    import onnxruntime as ort

    plain = _copy_options(opts)
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return plain


def _copy_options(opts):
    """A fresh SessionOptions with the settings csra sets (SessionOptions cannot be copied)."""
    import onnxruntime as ort

    copy = ort.SessionOptions()
    copy.log_severity_level = opts.log_severity_level
    copy.intra_op_num_threads = opts.intra_op_num_threads
    copy.graph_optimization_level = opts.graph_optimization_level
    return copy
