"""How many CPU cores this process may use: the one count every pool and thread setting starts from."""
from __future__ import annotations

import os


def cpu_cores() -> int:
    """The cores this process may use (taskset and container CPU sets included), which
    os.cpu_count() ignores: a pool sized from it would oversubscribe a restricted process."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decoding processes when none is asked for: cores - 1 (the model uses the rest), at most 4."""
    return max(1, min(4, cpu_cores() - 1))


def cpu_info() -> dict:
    """The CPU model and the vector-instruction flags that decide int8/fp32 speed (Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        import platform

        return {"cpu_model": platform.processor() or platform.machine()}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    wanted = [f for f in flags if f.startswith(("avx", "fma", "f16c", "amx")) or f in ("sse4_2", "vnni")]
    return {"cpu_model": fields.get("model name", ""), "cpu_flags": wanted}
