"""Camera-size test photos from the shared VOC images: each upscaled to 12 MP (4000 x 3000),
with a little sensor-like noise so that the JPEG holds about as many bytes as a camera's (an
upscaled photo alone is smooth and compresses to a third of that), saved at quality 92 with
4:2:0 chroma subsampling, as cameras write them.

    python benchmarks/camera_photos.py /tmp/val200.txt /tmp/camera12mp 200 > /tmp/camera200.txt

Prints the paths written, one a line (a list for ``csra bench --images``)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (4000, 3000)
NOISE_SIGMA = 4.0  # grey levels


def make(src: str, dest: Path, seed: int) -> None:
    with Image.open(src) as img:
        big = img.convert("RGB").resize(SIZE if img.width >= img.height else SIZE[::-1], Image.BICUBIC)
    arr = np.asarray(big, dtype=np.float32)
    arr += np.random.default_rng(seed).normal(0, NOISE_SIGMA, arr.shape).astype(np.float32)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(dest, quality=92, subsampling=2)


def main(listing: str, out: str, count: int) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    sources = [ln.strip() for ln in Path(listing).read_text().splitlines() if ln.strip()][:count]
    for i, src in enumerate(sources):
        dest = folder / f"{Path(src).stem}_12mp.jpg"
        if not dest.is_file():
            make(src, dest, i)
        print(dest)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: camera_photos.py LIST.txt OUT_FOLDER COUNT")
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
