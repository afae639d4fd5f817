"""Two models in one `csra tag` run against two runs, one model each, as whole processes, in
alternating rounds (the order reversed every round):

    python benchmarks/two_models.py /tmp/val200.txt [default imagenet] [rounds]

Prints the seconds of each round and the median ratio (one run / two runs)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed_tag(listing: Path, models: list[str], out: Path) -> float:
    cmd = [sys.executable, "-m", "csra_cli", "tag", "-", "-o", str(out), "-q", "--overwrite"]
    for m in models:
        cmd += ["-m", m]
    t = time.perf_counter()
    with open(listing) as fh:
        subprocess.run(cmd, stdin=fh, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main(listing: str, a: str = "default", b: str = "imagenet", rounds: int = 3) -> None:
    listing = Path(listing)
    with tempfile.TemporaryDirectory(prefix="csra-two-") as tmp:
        out = Path(tmp) / "tags.jsonl"
        for models in ([a], [b], [a, b]):  # warm-up: exports cached, files in the page cache
            timed_tag(listing, models, out)
        one, two = [], []
        for i in range(int(rounds)):
            for kind in ("one", "two") if i % 2 == 0 else ("two", "one"):
                if kind == "one":
                    one.append(timed_tag(listing, [a, b], out))
                else:
                    two.append(timed_tag(listing, [a], out) + timed_tag(listing, [b], out))
    n = len([ln for ln in listing.read_text().splitlines() if ln.strip()])
    ratio = float(np.median([x / y for x, y in zip(one, two)]))
    print(f"{n} images, --model {a} --model {b}: one run {[round(x, 2) for x in one]} s, "
          f"two runs {[round(y, 2) for y in two]} s; one run / two runs (median): {ratio:.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: two_models.py LIST.txt [MODEL_A MODEL_B] [ROUNDS]")
    main(*sys.argv[1:])
