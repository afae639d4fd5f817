"""HTML reports (csra report, tag --report) and the SQLite output."""
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from csra_cli.cli import app
from csra_cli.results.sinks import FileSink, make_record

from .browser import cards, dump_dom, needs_browser, screenshot
from .conftest import make_image

runner = CliRunner()


def csra(*args):
    return runner.invoke(app, list(map(str, args)), catch_exceptions=False)


def page_records(page: Path) -> tuple[list, list]:
    html = page.read_text(encoding="utf-8")
    block = lambda name: json.loads(re.search(rf'<script type="application/json" id="{name}">(.*?)</script>',  # noqa: E731
                                              html, re.S).group(1))
    return block("records"), block("thumbs")


@pytest.fixture
def records(tmp_path) -> list[dict]:
    """Ten images (one with a name that would break naive HTML), a missing one, one error record."""
    recs = []
    tags = [["dog", "person"], ["dog"], ["person"], [], ["cat"], ["dog", "cat"], ["car"], ["person", "car"],
            ["dog"], ["bird"]]
    for i, t in enumerate(tags):
        name = f"img{i}.jpg" if i != 3 else "odd </script><b>&.jpg"
        p = make_image(tmp_path / "pics" / name, size=(120, 90), color=(40 * i % 255, 90, 200))
        recs.append(make_record(str(p), t, {x: round(0.9 - 0.1 * k, 3) for k, x in enumerate(t)}))
    recs.append(make_record(str(tmp_path / "pics" / "moved-away.jpg"), ["cat"], {"cat": 0.7}))
    recs.append(make_record(str(tmp_path / "pics" / "broken.jpg"), [], {}, "cannot identify image file"))
    return recs


def write_output(records, path: Path, fmt: str) -> Path:
    sink = FileSink(path, fmt, None, resume=False, overwrite=False)
    for r in records:
        sink.write(r)
    sink.close()
    return path


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "sqlite"])
def test_report_reads_every_output_format(tmp_path, records, fmt):
    out = write_output(records, tmp_path / f"tags.{fmt}", fmt)
    page = tmp_path / "tags.html"
    result = csra("report", out, "--out", page)
    assert result.exit_code == 0, result.output
    shown, thumbs = page_records(page)
    ok = [r for r in records if not r["error"]]
    assert [s[0] for s in shown] == [r["path"] for r in ok]
    assert [[t for t, _ in s[2]] for s in shown] == [r["tags"] for r in ok]
    assert [bool(t) for t in thumbs] == [Path(r["path"]).exists() for r in ok]  # the moved-away one has none
    html = page.read_text(encoding="utf-8")
    assert "cannot identify image file" in html and "broken.jpg" in html  # the error listed apart
    assert "</script><b>" not in html  # the odd name is escaped, never markup
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not fetch anything"
    assert "http://" not in html and "https://" not in html


def test_report_refuses_what_it_cannot_do(tmp_path, records):
    out = write_output(records, tmp_path / "tags.jsonl", "jsonl")
    assert csra("report", tmp_path / "none.jsonl").exit_code == 2
    assert csra("report", out, "--out", tmp_path / "page.txt").exit_code == 2
    assert csra("report", out, "--out", tmp_path / "no" / "page.html").exit_code == 2
    (tmp_path / "bad.json").write_text("[{")
    result = csra("report", tmp_path / "bad.json", "--out", tmp_path / "p.html")
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_tag_writes_sqlite_and_report(tmp_path, image_folder, tiny_model_path):
    (image_folder / "broken.jpg").write_bytes(b"not a jpeg")
    db, page = tmp_path / "tags.sqlite", tmp_path / "tags.html"
    m = ["-m", tiny_model_path, "-q", "--threshold", "0.0"]
    result = csra("tag", image_folder, "-o", db, "--scores", "--report", page, *m)
    assert result.exit_code == 1  # one image could not be read; the rest are in the database
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob(".tags.sqlite.*"))

    # the sqlite3 command-line shell reads it; "photos with a dog and a person" is one query
    query = ("SELECT i.path FROM images i JOIN tags a ON a.image_id = i.id AND a.tag = 'dog' "
             "JOIN tags b ON b.image_id = i.id AND b.tag = 'person' ORDER BY i.path;")
    shell = subprocess.run(["sqlite3", str(db), query], capture_output=True, text=True, check=True).stdout.split()
    assert len(shell) == 4  # threshold 0: every readable image has every tag
    indexes = subprocess.run(["sqlite3", str(db), "SELECT name FROM sqlite_master WHERE type = 'index';"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert {"tags_tag", "tags_image", "images_path"} <= set(indexes)

    with sqlite3.connect(db) as con:
        images = pd.read_sql("SELECT * FROM images ORDER BY id", con)
        tags = pd.read_sql("SELECT * FROM tags", con)
        every = pd.read_sql("SELECT * FROM scores", con)
    assert list(images.columns) == ["id", "path", "error", "model", "tagged_at", "file_size", "file_mtime_ns",
                                    "file_sha256", "settings_id"]
    assert len(images) == 5 and images["error"].notna().sum() == 1
    assert (images["model"].dropna() == "tiny").all() and images["tagged_at"].notna().all()
    assert len(tags) == 4 * 20 and len(every) == 4 * 20 and tags["score"].between(0, 1).all()

    shown, thumbs = page_records(page)
    assert len(shown) == 4 and all(thumbs)

    # a finished database is refused without --overwrite, and --resume after it adds nothing twice
    assert csra("tag", image_folder, "-o", db, *m).exit_code == 2
    again = csra("tag", image_folder, "-o", db, "--resume", "--scores", *m)
    assert again.exit_code == 1 and "trying again 1 image(s)" in again.stderr  # only the unreadable one, again
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*), count(DISTINCT path) FROM images").fetchone() == (5, 5)
        assert con.execute("SELECT count(*) FROM scores").fetchone() == (80,)
    assert csra("tag", image_folder, "-o", db, "--overwrite", *m).exit_code == 1


def test_tag_report_from_stdout_run(tmp_path, image_folder, tiny_model_path):
    page = tmp_path / "p.html"
    result = csra("tag", image_folder, "-m", tiny_model_path, "--report", page, "-q")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 4
    shown, thumbs = page_records(page)
    assert sorted(s[0] for s in shown) == sorted(json.loads(ln)["path"] for ln in result.stdout.splitlines())
    assert csra("tag", image_folder, "-m", tiny_model_path, "--report", tmp_path / "p.txt").exit_code == 2


def test_links_to_images_are_relative_and_escaped(tmp_path):
    from csra_cli.report.html import link_to

    assert link_to(str(tmp_path / "a b" / "x#1.jpg"), tmp_path / "r.html") == "a%20b/x%231.jpg"


def test_sqlite_needs_a_file(image_folder, tiny_model_path):
    result = csra("tag", image_folder, "--format", "sqlite", "-m", tiny_model_path)
    assert result.exit_code == 2 and "--out FILE.sqlite" in result.stderr


@needs_browser
def test_tag_page_in_a_browser(tmp_path, records):
    page = tmp_path / "tags.html"
    assert csra("report", write_output(records, tmp_path / "t.jsonl", "jsonl"), "--out", page).exit_code == 0
    ok = [r for r in records if not r["error"]]

    png = screenshot(page, tmp_path / "tags.png")
    colours = Image.open(png).convert("RGB").getcolors(1 << 20)
    assert colours and len(colours) > 100, "the screenshot looks blank (thumbnails should be drawn)"

    everything = cards(dump_dom(page))
    assert len(everything) == len(ok) and all(visible for _, visible in everything)

    dogs = cards(dump_dom(page, "#tag=dog"))
    assert len(dogs) == len(ok)
    assert [visible for _, visible in dogs] == ["dog" in r["tags"] for r in ok]
    both = cards(dump_dom(page, "#tag=dog,person"))
    assert sum(v for _, v in both) == 1 and all("person" in t for t, v in both if v)


def eval_page(tmp_path: Path) -> tuple[Path, list[str]]:
    """csra eval --report from a scores file: 12 images, three classes (one with no positive)."""
    rows, scores = [], []
    for i in range(12):
        make_image(tmp_path / f"e{i}.jpg", size=(80, 60), color=(20 * i, 120, 60))
        tags = ";".join(t for t, on in (("cat", i % 2 == 0), ("dog", i % 3 == 0)) if on)
        rows.append((f"e{i}.jpg", tags))
        scores.append((f"e{i}.jpg", (i % 2 == 0) * 0.5 + i / 30, 0.9 - i / 15, 0.2))
    pd.DataFrame(rows, columns=["path", "tags"]).to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame(scores, columns=["path", "cat", "dog", "bird"]).to_csv(tmp_path / "scores.csv", index=False)
    (tmp_path / "labels.csv").write_text((tmp_path / "labels.csv").read_text().replace("e11.jpg,", "e11.jpg,bird"))
    page = tmp_path / "eval.html"
    result = csra("eval", "--dataset", "csv", "--labels", tmp_path / "labels.csv", "--scores", tmp_path / "scores.csv",
                  "--report", page, "-q")
    assert result.exit_code == 0, result.output
    return page, ["cat", "dog", "bird"]


def test_eval_report_shows_curves_thresholds_and_mistakes(tmp_path):
    page, classes = eval_page(tmp_path)
    html = page.read_text(encoding="utf-8")
    assert html.count('class="cls"') == 3 and html.count('class="curve"') == 3
    assert html.count('class="mark"') == 3  # the threshold on each curve
    # dog: positives e0,e3,e6,e9 scored .9,.7,.5,.3 -> at 0.5 e9 is missed; top negatives e1 (.833), e2 (.767)
    dog = html[html.index('data-class="dog"'):].split("</section>")[0]
    missed = dog.split("missed positives")[1]
    assert "e9.jpg" in missed and "e6.jpg" not in missed
    fps = dog.split("top false positives")[1].split("missed positives")[0]
    assert fps.index("e1.jpg") < fps.index("e2.jpg") and "e0.jpg" not in fps
    assert html.count("data:image/jpeg;base64,") >= 6
    assert "https://" not in html and "http://" not in html


def test_pr_curve_matches_average_precision():
    import numpy as np

    from csra_cli.evaluation.metrics import average_precision, pr_curve

    rng = np.random.default_rng(1)
    s, y = rng.random(200).round(2), (rng.random(200) < 0.3).astype(int)
    y[:5] = -1
    c = pr_curve(s, y)
    assert np.sum(np.diff(np.r_[0.0, c["recall"]]) * c["precision"]) == pytest.approx(average_precision(s, y))
    assert c["recall"][-1] == 1.0 and c["threshold"] == sorted(c["threshold"], reverse=True)


@needs_browser
def test_eval_page_in_a_browser(tmp_path):
    page, classes = eval_page(tmp_path)
    png = screenshot(page, tmp_path / "eval.png")
    colours = Image.open(png).convert("RGB").getcolors(1 << 20)
    assert colours and len(colours) > 50, "the screenshot looks blank"
    dom = dump_dom(page)
    assert dom.count("<polyline") == 3 and dom.count('class="mark"') == 3


def test_report_on_names_that_are_not_utf8_and_a_sqlite_name_with_hash(tmp_path, tiny_model_path):
    """A file name that is not UTF-8 (csra carries it as surrogate escapes) makes a valid page, and
    an output named with '#' is read back from its SQLite file, not from a stray 'run' beside it."""
    folder = tmp_path / "imgs"
    make_image(folder / "plain.jpg")
    make_image(folder / "cafe.jpg").rename(os.fsdecode(bytes(folder / "caf") + b"\xe9.jpg"))
    Path(os.fsdecode(bytes(folder / "broken") + b"\xff.jpg")).write_bytes(b"x")
    db = tmp_path / "run#2.sqlite"
    res = csra("tag", folder, "-o", db, "-m", tiny_model_path, "-q", "--report", tmp_path / "r.html")
    assert res.exit_code == 1, res.output  # the broken file is an error record; the rest are tagged
    html = (tmp_path / "r.html").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    shown, thumbs = page_records(tmp_path / "r.html")
    assert len(shown) == 2 and all(thumbs) and "caf\\udce9.jpg" in html and "broken\\udcff.jpg</td>" in html
    assert csra("report", db, "--out", tmp_path / "again.html").exit_code == 0
    assert not (tmp_path / "run").exists()
    assert len(page_records(tmp_path / "again.html")[0]) == 2


def test_uri_keys_do_not_depend_on_the_working_folder(tmp_path, monkeypatch):
    from csra_cli.results.sinks import path_key

    keys = {path_key("s3://bucket/a//x.jpg")}
    monkeypatch.chdir(tmp_path)
    keys.add(path_key("s3://bucket/a//x.jpg"))
    assert keys == {"s3://bucket/a//x.jpg"} and path_key("s3://bucket/a/x.jpg") != "s3://bucket/a//x.jpg"
