"""Image decoding and preprocessing as the model card says (size, resize mode, mean/std).

Numpy first: decoding returns uint8 CHW arrays (a quarter of the bytes of floats to ship from
the decode workers), and nothing here imports torch, so a CPU run through onnxruntime never
loads it. ``normalize`` (torch, for PyTorch callers) and ``normalize_numpy`` turn a uint8
batch into the float input that the model takes.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps


RESIZE_MODES = ("squash",)


def _register_optional_formats() -> None:
    """HEIC/HEIF and AVIF through their Pillow plugins, when installed (pip install '.[heif]')."""
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
    except ImportError:
        pass
    try:
        import pillow_avif  # noqa: F401  (registers itself; Pillow >= 11.3 reads AVIF natively)
    except ImportError:
        pass


_register_optional_formats()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency composited on white, CMYK/16-bit/grayscale converted."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path, draft_size: int | None = None) -> Image.Image:
    """Open an image as the viewer sees it: first frame, EXIF orientation applied, RGB.

    With ``draft_size``, JPEGs are decoded by libjpeg at the smallest 1/2, 1/4 or 1/8 scale
    still at least that size on both sides, which is much faster for large photos."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(path)
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    if img.getexif().get(0x0112, 1) != 1:  # EXIF orientation; exif_transpose copies even when it is 1
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


class Preprocess:
    """Resize and normalisation of one model, from its card."""

    def __init__(self, input_size: int, mean=None, std=None, resize: str = "squash", fast: bool = True):
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}")
        self.size = int(input_size)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = None if std is None else np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
        self.fast = fast

    @classmethod
    def from_card(cls, card, fast: bool = True) -> "Preprocess":
        """From a model card (anything with input_size, mean, std and resize)."""
        return cls(card.input_size, card.mean, card.std, card.resize, fast)

    def blank(self) -> np.ndarray:
        """The image an unreadable file gets in its batch."""
        return np.zeros((3, self.size, self.size), dtype=np.uint8)

    def empty_batch(self, n: int) -> np.ndarray:
        return np.empty((n, 3, self.size, self.size), dtype=np.uint8)

    def load(self, path) -> np.ndarray:
        """Decode and resize a file to a uint8 (3, S, S) array."""
        return self.resize(open_image(path, self.size if self.fast else None))

    def resize(self, img: Image.Image) -> np.ndarray:
        """uint8 (3, S, S): a channels-first view of the resized image (a batch copies it once, into place)."""
        img = to_rgb(img).resize((self.size, self.size), Image.BILINEAR)
        return np.asarray(img).transpose(2, 0, 1)

    def normalize(self, batch):
        """uint8 (B, 3, S, S) tensor or array -> the model's float input as a torch tensor,
        on the batch's device."""
        import torch

        if isinstance(batch, np.ndarray):  # a resized image is a read-only view of Pillow's buffer
            batch = torch.from_numpy(batch if batch.flags.writeable else np.array(batch))
        x = batch.float().div_(255.0)
        if self.mean is not None:
            x = x.sub_(torch.from_numpy(self.mean).to(x.device)).div_(torch.from_numpy(self.std).to(x.device))
        return x

    def normalize_numpy(self, batch: np.ndarray) -> np.ndarray:
        """The same as ``normalize`` in numpy (for onnxruntime: no torch involved)."""
        x = np.multiply(batch, np.float32(1 / 255.0), dtype=np.float32)  # one pass, no uint8->float copy
        if self.mean is not None:
            x -= self.mean
            x /= self.std
        return x

    def __call__(self, img: Image.Image):
        """A PIL image -> the float (3, S, S) torch tensor the model takes."""
        return self.normalize(self.resize(img)[None])[0]


class SizedBatch:
    """uint8 batches of the same images at several sizes (several models in one run): indexing
    selects images in every size, ``for_size`` gives one model's."""

    def __init__(self, by_size: dict[int, np.ndarray]):
        self.by_size = by_size

    def __len__(self) -> int:
        return len(next(iter(self.by_size.values())))

    def __getitem__(self, index) -> "SizedBatch":
        return SizedBatch({s: b[index] for s, b in self.by_size.items()})

    def __setitem__(self, i: int, images: dict[int, np.ndarray]) -> None:
        for s, b in self.by_size.items():
            b[i] = images[s]

    def for_size(self, size: int) -> np.ndarray:
        return self.by_size[size]


class MultiPreprocess:
    """Several models' preprocessing from one decode of each image: the file is decoded once
    (at the largest size's draft) and resized once for each input size."""

    def __init__(self, preprocesses: list[Preprocess]):
        self.parts = {p.size: p for p in preprocesses}
        self.size = max(self.parts)
        self.fast = all(p.fast for p in preprocesses)

    def blank(self) -> dict[int, np.ndarray]:
        return {s: np.zeros((3, s, s), dtype=np.uint8) for s in self.parts}

    def load(self, path) -> dict[int, np.ndarray]:
        img = open_image(path, self.size if self.fast else None)
        return {s: p.resize(img) for s, p in self.parts.items()}

    def empty_batch(self, n: int) -> SizedBatch:
        return SizedBatch({s: np.empty((n, 3, s, s), dtype=np.uint8) for s in self.parts})
