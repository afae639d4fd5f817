"""Class attention heatmaps: CSRA's class score maps, upsampled and blended over the image.

The map drawn is the classifier's class score map (1x1 conv, each class row L2-normalised),
summed over the heads for multi-head models: its spatial mean is the base part of the logit,
so it shows where the whole model finds the class. Maps are computed on the image as the
viewer sees it (EXIF orientation applied), so they align with what is displayed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..data.preprocess import open_image
from ..models.csra import torch_probabilities

# Anchors of matplotlib's perceptually uniform "viridis" colormap at 0, 1/8, ..., 1.
_VIRIDIS = np.array([(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 145, 140),
                     (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=np.float32)
MAP_NOTE = "score map of the CSRA classifier (summed over heads): its mean over positions is the base logit"


def colormap(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] (H, W) -> uint8 RGB (H, W, 3) with viridis."""
    x = np.clip(values, 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_VIRIDIS) - 2)
    t = (x - lo)[..., None]
    return (_VIRIDIS[lo] * (1 - t) + _VIRIDIS[lo + 1] * t).astype(np.uint8)


@dataclass
class ClassMap:
    name: str
    score: float  # probability
    raw: np.ndarray  # (h, w) on the backbone grid
    upsampled: np.ndarray  # (H, W) at image size, normalised to [0, 1]


@torch.inference_mode()
def class_maps(model, image: Image.Image, classes: list[str] | None = None, top_k: int | None = None,
               device: str | torch.device = "cpu") -> list[ClassMap]:
    """Maps for the classes asked, or for the predicted ones (best first; the single best class
    when none passes its threshold)."""
    names = model.classes
    x = model.preprocess(image)[None].to(device)
    maps = model.score_maps(x)[0].float()
    probs = torch_probabilities(model(x), model.card)[0]
    if classes:
        chosen = [names.index(c) for c in classes]
    else:
        th = np.array(model.card.class_thresholds())
        chosen = [int(i) for i in np.argsort(-probs) if probs[i] >= th[i]] or [int(np.argmax(probs))]
    if top_k:
        chosen = chosen[:top_k]
    w, h = image.size
    out = []
    for c in chosen:
        up = F.interpolate(maps[c][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        up = up.cpu().numpy()
        lo, hi = float(up.min()), float(up.max())
        out.append(ClassMap(names[c], float(probs[c]), maps[c].cpu().numpy(), (up - lo) / max(hi - lo, 1e-12)))
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _label(img: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(img)
    size = max(12, img.height // 18)
    font = _font(size)
    box = draw.textbbox((0, 0), text, font=font)
    pad = size // 4
    draw.rectangle((0, 0, box[2] + 2 * pad, box[3] + 2 * pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    return img


def overlay(image: Image.Image, cmap: ClassMap, alpha: float = 0.5) -> Image.Image:
    heat = colormap(cmap.upsampled)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (base * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
    return _label(Image.fromarray(blended), f"{cmap.name} {cmap.score:.2f}")


def grid(image: Image.Image, overlays: list[Image.Image], tile_height: int = 256) -> Image.Image:
    tiles = [_label(image.convert("RGB").copy(), "original")] + overlays
    scaled = [t.resize((max(1, round(t.width * tile_height / t.height)), tile_height), Image.BILINEAR) for t in tiles]
    canvas = Image.new("RGB", (sum(t.width for t in scaled) + 4 * (len(scaled) - 1), tile_height), (255, 255, 255))
    x = 0
    for t in scaled:
        canvas.paste(t, (x, 0))
        x += t.width + 4
    return canvas


def output_stem(path: str) -> str:
    p = Path(path)
    return f"{p.stem}_{p.suffix.lstrip('.').lower()}" if p.suffix else p.name


def explain_image(model, path: str, out_dir: Path, classes: list[str] | None = None, top_k: int | None = None,
                  fmt: str = "png", device="cpu") -> list[Path]:
    image = open_image(path)
    maps = class_maps(model, image, classes, top_k, device)
    stem = output_stem(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    safe = lambda n: "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in n)  # noqa: E731
    if fmt == "npy":
        for m in maps:
            dest = out_dir / f"{stem}_{safe(m.name)}.npy"
            np.save(dest, m.raw.astype(np.float32))
            written.append(dest)
        return written
    overlays = []
    for m in maps:
        ov = overlay(image, m)
        dest = out_dir / f"{stem}_{safe(m.name)}.png"
        ov.save(dest)
        overlays.append(ov)
        written.append(dest)
    dest = out_dir / f"{stem}_grid.png"
    grid(image, overlays).save(dest)
    written.append(dest)
    return written
