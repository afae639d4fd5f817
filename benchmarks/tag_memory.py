"""Peak RSS and speed of `csra tag` for 1,000 and 5,000 images: memory must stay flat.

    python benchmarks/tag_memory.py ../shared/data/voc2007/VOCdevkit/VOC2007/JPEGImages [extra csra tag args]

Each set is a folder of symlinks with distinct names (images repeat when the source has fewer).
The peak RSS is that of the `csra tag` process and its decoding workers (os.wait4's rusage).
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

src = Path(sys.argv[1])
extra = sys.argv[2:]
images = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
with tempfile.TemporaryDirectory() as tmp:
    for n in (1000, 5000):
        folder = Path(tmp) / f"set{n}"
        folder.mkdir()
        for i in range(n):
            os.symlink(images[i % len(images)], folder / f"{i:05d}.jpg")
        start = time.time()
        proc = subprocess.Popen(["csra", "tag", str(folder), "-o", str(Path(tmp) / f"out{n}.csv"), "-q", *extra])
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.time() - start
        print(f"{n} images: exit {os.waitstatus_to_exitcode(status)}, peak RSS {usage.ru_maxrss / 1024:.0f} MB, "
              f"{took:.0f} s, {n / took:.1f} img/s", flush=True)
