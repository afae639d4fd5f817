"""Size and build time of a `csra report` page for many records, and its load in headless chromium.

    python benchmarks/report_10k.py ../shared/data/voc2007/VOCdevkit 10000 /tmp/report10k

Records point at real VOC JPEGs (the first 300, reused), with random VOC tags and scores.
"""
import glob
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from csra_cli.data.classes import VOC_CLASSES
from csra_cli.report.tag_report import build_tag_report
from csra_cli.results.sinks import make_record

root, n, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
images = sorted(glob.glob(str(root / "VOC2007" / "JPEGImages" / "*.jpg")))[:300]
rng = random.Random(0)
records = []
for i in range(n):
    tags = rng.sample(VOC_CLASSES, rng.choice([0, 1, 1, 2, 2, 3]))
    records.append(make_record(images[i % len(images)], tags, {t: round(rng.uniform(0.5, 1), 4) for t in tags}))
page = out / "tags.html"
stats = build_tag_report(records, page, title=f"{n} records")
print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in stats.items()}))

chromium = shutil.which("chromium")
if chromium:
    with tempfile.TemporaryDirectory() as profile:
        started = time.time()
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True).stdout
        print(json.dumps({"chromium_dump_dom_s": round(time.time() - started, 2),
                          "cards": dom.count('<div class="card"'), "images_drawn": dom.count("<img "),
                          "page_ready_ms": int(dom.split('data-ready-ms="')[1].split('"')[0])}))
