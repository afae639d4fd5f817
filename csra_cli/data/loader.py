"""Streaming image loading shared by tag, eval, train and bench: workers decode and resize
while the model runs; a file that fails becomes an error record, never an exception."""
from __future__ import annotations

import itertools
import os
import stat
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

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


def load_one(preprocess: Preprocess, path: str, flip: bool = False) -> tuple[torch.Tensor, str]:
    """(uint8 tensor, "") or (a blank tensor, the reason the file could not be used)."""
    blank = torch.zeros(3, preprocess.size, preprocess.size, dtype=torch.uint8)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):  # a FIFO would block the worker
            return blank, "not a regular file (a FIFO, socket or device)"
        if st.st_size == 0:
            return blank, "empty file (0 bytes)"
        tensor = preprocess.load(path)
    except Exception as exc:  # one bad image never ends a batch
        return blank, describe_error(exc)
    return (tensor.flip(-1) if flip else tensor), ""


class ImageListDataset(Dataset):
    """A known list of paths (eval, train, bench)."""

    def __init__(self, paths: list[str], preprocess: Preprocess, flip: bool = False):
        self.paths, self.preprocess, self.flip = list(paths), preprocess, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        tensor, error = load_one(self.preprocess, self.paths[i], self.flip)
        return i, self.paths[i], tensor, error


def collate(items):
    idx, paths, tensors, errors = zip(*items)
    return list(idx), list(paths), torch.stack(tensors), list(errors)


def make_loader(dataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      prefetch_factor=4 if workers > 0 else None)


def stream_batches(paths: Iterable[str], preprocess: Preprocess, batch_size: int, workers: int,
                   pin_memory: bool = False, chunk: int = 1024) -> Iterator:
    """Batches (indices, paths, uint8 tensor, errors) for paths of any number and origin
    (stdin included): paths are taken ``chunk`` at a time, so memory stays flat, and each
    chunk is decoded by the worker processes while the model runs."""
    it = iter(paths)
    while True:
        block = list(itertools.islice(it, chunk))
        if not block:
            return
        n = min(workers, max(1, len(block) // batch_size))
        yield from make_loader(ImageListDataset(block, preprocess), batch_size, n if workers else 0, pin_memory)
