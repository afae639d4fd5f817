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
