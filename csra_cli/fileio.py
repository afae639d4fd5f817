"""Writing files so that nothing is lost: a temporary file beside the target, fsync, rename."""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remembered(memo_file: Path, key: str) -> str | None:
    """A digest noted by ``remember`` under ``key`` (a file's stat, say), None if there is none."""
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return None
    value = memo.get(key) if isinstance(memo, dict) else None
    return value if isinstance(value, str) else None


def remember(memo_file: Path, key: str, value: str, keep: int = 200) -> None:
    """Note ``value`` under ``key`` in a small JSON file, keeping the newest ``keep`` notes; a memo
    that cannot be written (read-only cache) only costs computing the value again next time."""
    try:
        memo = json.loads(memo_file.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    memo.pop(key, None)
    memo[key] = value
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(memo_file, json.dumps(dict(list(memo.items())[-keep:]), indent=1).encode())
    except OSError:
        pass


def umask_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's temporaries are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def target_mode(path: Path) -> int:
    """The mode a replacement of ``path`` gets: the existing file's (a private 0600 stays
    private), else what a plain open() would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return umask_mode()


def atomic_temp(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A temporary file beside ``path`` with the mode it will have, to be renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, target_mode(path))
    return fd, tmp


def temp_leftovers(path: Path, suffix: str = ".tmp") -> list[Path]:
    """Temporaries of ``atomic_temp(path)`` that a killed run left behind."""
    return [p for p in path.parent.glob(f".{glob.escape(path.name)}.*{suffix}") if p.is_file()]


class NotOwnFile(OSError):
    """A path csra keeps its own state in (journal, lock, manifest) is a symlink, not a regular
    file, or another user's: refused rather than written through (a link planted in /tmp)."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_own(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """os.open for csra's own state files: never through a symlink (O_NOFOLLOW), never blocking on
    a FIFO, and only a regular file; one that was there already must be this user's (a file this
    call creates is, whatever a network filesystem reports as its owner). Else ``NotOwnFile``."""
    why = "not csra's own file (a symlink, not a regular file, or another user's); remove it"
    extra = _O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    created = False
    try:
        if flags & os.O_CREAT:
            try:
                fd, created = os.open(path, flags | os.O_EXCL | extra, mode), True
            except FileExistsError:
                fd = os.open(path, (flags & ~os.O_CREAT) | extra)
        else:
            fd = os.open(path, flags | extra)
    except OSError as exc:
        # ELOOP: a symlink; ENXIO: a FIFO with no reader, or a socket
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
            raise NotOwnFile(exc.errno, why, str(path)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (not created and hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
        os.close(fd)
        raise NotOwnFile(errno.EPERM, why, str(path))
    if getattr(os, "O_NONBLOCK", 0):  # only so that opening a planted FIFO cannot block; files don't care
        os.set_blocking(fd, True)
    return fd


def fsync_file(path: str | Path) -> None:
    """Flush a file that another library wrote (e.g. SQLite) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = atomic_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale(paths, older_than_s: float) -> int:
    """Delete files not modified for ``older_than_s`` seconds (temporaries of killed runs;
    younger ones may belong to a run still going)."""
    import time

    removed = 0
    for p in paths:
        try:
            if time.time() - p.stat().st_mtime > older_than_s:
                p.unlink()
                removed += 1
        except OSError:
            pass
    return removed
