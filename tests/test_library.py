"""A photo library kept tagged: --update (new, changed, removed, unchanged images; other settings;
kill -9) and --embed (keywords inside JPEG/TIFF/PNG/WebP files, pixels and other bytes kept)."""
import io
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import warnings

import pytest
from PIL import Image

from csra_cli.results.sinks import read_output
from tests.conftest import REPO, journal_lines, make_image, one_line, run_cli, wait_for

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


def tag(model, *args):
    return run_cli("tag", *args, "-m", model)


def library(tmp_path, n=5):
    folder = tmp_path / "pics"
    for i in range(n):
        make_image(folder / f"p{i}.jpg", size=(80, 60), color=(40 * i, 90, 200 - 30 * i))
    return folder


def update_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("updated ")]
    assert len(lines) == 1, res.stderr
    return lines[0].split(": ", 1)[1]


def by_name(out, fmt):
    return {os.path.basename(r["path"]): r for r in read_output(out, fmt)}


@pytest.mark.parametrize("fmt", ["sqlite", "csv", "json", "jsonl"])
def test_update_tags_new_and_changed_drops_removed_and_keeps_the_rest(tmp_path, tiny_model_path, fmt):
    pics = library(tmp_path)
    out = tmp_path / f"lib.{fmt}"
    assert tag(tiny_model_path, pics, "-o", out, "-q").exit_code == 0
    before = by_name(out, fmt)
    assert all(r["file"]["sha256"] and r["settings"]["model"] == "tiny" for r in before.values())

    make_image(pics / "new.jpg", size=(80, 60))                      # added
    Image.open(pics / "p1.jpg").save(pics / "p1.jpg", quality=40)    # edited: re-encoded
    (pics / "p2.jpg").unlink()                                       # deleted
    st = os.stat(pics / "p3.jpg")
    os.utime(pics / "p3.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    # p4: same size and mtime, other bytes: the fast check keeps it, so it is never decoded
    st4 = os.stat(pics / "p4.jpg")
    (pics / "p4.jpg").write_bytes(b"\0" * st4.st_size)
    os.utime(pics / "p4.jpg", ns=(st4.st_atime_ns, st4.st_mtime_ns))

    res = tag(tiny_model_path, pics, "-o", out, "--update")
    assert res.exit_code == 0, res.output
    assert update_line(res) == "1 new, 1 changed, 1 removed, 3 unchanged"
    assert "removed (the file is gone): " in res.stderr and "p2.jpg" in res.stderr
    after = by_name(out, fmt)
    assert sorted(after) == ["new.jpg", "p0.jpg", "p1.jpg", "p3.jpg", "p4.jpg"]
    assert after["p0.jpg"] == before["p0.jpg"] and after["p4.jpg"]["error"] is None  # untouched, not decoded
    assert after["p1.jpg"]["file"]["sha256"] != before["p1.jpg"]["file"]["sha256"]
    assert after["p3.jpg"]["file"]["mtime_ns"] == st.st_mtime_ns + 10**9  # refreshed: next time a stat suffices
    assert after["p3.jpg"]["file"]["sha256"] == before["p3.jpg"]["file"]["sha256"]

    res = tag(tiny_model_path, pics, "-o", out, "--update")
    assert update_line(res) == "0 new, 0 changed, 0 removed, 5 unchanged"


def test_update_rows_seen_through_sqlite3(tmp_path, tiny_model_path):
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command-line client is not installed")
    pics = library(tmp_path, 3)
    out = tmp_path / "lib.sqlite"
    tag(tiny_model_path, pics, "-o", out, "-q")
    query = lambda sql: subprocess.run(["sqlite3", out, sql], capture_output=True, text=True, check=True).stdout  # noqa: E731
    assert query("SELECT count(*) FROM images") == "3\n"
    (pics / "p0.jpg").unlink()
    make_image(pics / "q.jpg")
    tag(tiny_model_path, pics, "-o", out, "--update", "-q")
    rows = query("SELECT path, length(file_sha256), settings_id FROM images ORDER BY path").split()
    assert [r.split("|")[0].rsplit("/", 1)[1] for r in rows] == ["p1.jpg", "p2.jpg", "q.jpg"]
    assert all(r.endswith("|64|1") for r in rows)
    assert json.loads(query("SELECT json FROM settings"))["model"] == "tiny"


def test_other_settings_tag_every_image_again_or_are_refused_by_resume(tmp_path, tiny_model_path):
    pics = library(tmp_path, 3)
    out = tmp_path / "lib.jsonl"
    tag(tiny_model_path, pics, "-o", out, "-q", "--threshold", "0.5")
    res = tag(tiny_model_path, pics, "-o", out, "--resume", "--threshold", "0.3")
    assert res.exit_code == 2
    assert "tagged with other settings (threshold 0.5 -> 0.3)" in one_line(res)
    assert tag(tiny_model_path, pics, "-o", out, "--resume", "--threshold", "0.5", "-q").exit_code == 0

    res = tag(tiny_model_path, pics, "-o", out, "--update", "--threshold", "0.3")
    assert res.exit_code == 0
    assert update_line(res) == ("0 new, 0 changed, 0 removed, 0 unchanged, "
                                "3 tagged again with the new settings (threshold 0.5 -> 0.3)")
    assert {r["settings"]["threshold"] for r in read_output(out, "jsonl")} == {0.3}


def test_an_older_output_without_fingerprints_is_tagged_again(tmp_path, tiny_model_path):
    pics = library(tmp_path, 2)
    out = tmp_path / "old.csv"
    out.write_text("path,tags,error\n" + "".join(f"{pics / f'p{i}.jpg'},dog,\n" for i in range(2)))
    res = tag(tiny_model_path, pics, "-o", out, "--update")
    assert "2 tagged again with the new settings" in update_line(res)
    assert all(r["file"] for r in read_output(out, "csv"))


def test_update_refuses_what_it_cannot_do(tmp_path, tiny_model_path):
    pics = library(tmp_path, 1)
    assert "give --out FILE" in one_line(tag(tiny_model_path, pics, "--update"))
    assert "do not go together" in one_line(tag(tiny_model_path, pics, "-o", tmp_path / "a.csv", "--update", "--resume"))
    assert "add --embed" in one_line(tag(tiny_model_path, pics, "-o", tmp_path / "a.csv", "--keep-mtime"))


def test_kill_9_during_update_loses_nothing(tmp_path, tiny_model_path):
    pics = tmp_path / "many"
    for i in range(60):
        make_image(pics / f"a{i:03d}.png", size=(96, 96))
    out = tmp_path / "lib.sqlite"
    assert tag(tiny_model_path, pics, "-o", out, "-q").exit_code == 0
    finished = out.read_bytes()
    for i in range(300):
        make_image(pics / f"b{i:03d}.png", size=(96, 96))
    (pics / "a000.png").unlink()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "csra_cli", "tag", str(pics), "-m", str(tiny_model_path), "-q", "-o", str(out),
           "-b", "1", "--update"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("new records in the journal", lambda: journal_lines(out) >= 59 + 3, proc)
    proc.kill()
    proc.wait()
    assert out.read_bytes() == finished, "the finished output changed before the update ended"
    res = tag(tiny_model_path, pics, "-o", out, "--update")
    assert res.exit_code == 0
    records = list(read_output(out, "sqlite"))
    names = [os.path.basename(r["path"]) for r in records]
    assert len(names) == len(set(names)) == 359 and "a000.png" not in names
    assert all(r["file"] and not r["error"] for r in records)


# ----------------------------------------------------------------------------- --embed
def _scan(data: bytes) -> bytes:
    """A JPEG's entropy-coded image data: everything from its start-of-scan marker on."""
    return data[data.index(b"\xff\xda"):]


def _png_chunks(data: bytes, skip=(b"iTXt", b"tEXt", b"zTXt")) -> list[bytes]:
    chunks, i = [], 8
    while i < len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        if data[i + 4:i + 8] not in skip:
            chunks.append(data[i:i + 12 + n])
        i += 12 + n
    return chunks


def _pixels(path) -> bytes:
    with warnings.catch_warnings(), Image.open(path) as img:
        return img.convert("RGB").tobytes()


def _exif_read(path, *tags):
    res = subprocess.run(["exiftool", "-j", "-struct", *[f"-{t}" for t in tags], str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)[0]


def _as_list(v):
    return v if isinstance(v, list) else [] if v is None else [v]


@needs_exiftool
def test_embed_writes_keywords_into_each_format_and_keeps_image_data_and_users_keywords(tmp_path, tiny_model_path):
    pics = tmp_path / "pics"
    files = [make_image(pics / "a.jpg", size=(96, 64)), make_image(pics / "b.png", size=(96, 64)),
             make_image(pics / "c.webp", size=(96, 64)), make_image(pics / "d.tif", size=(96, 64))]
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject=my trip", "-IPTC:Keywords=my trip",
                    str(files[0])], check=True)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject=my trip", str(files[1])], check=True)
    original = {f: f.read_bytes() for f in files}
    modes = {f: os.stat(f).st_mode for f in files}
    res = tag(tiny_model_path, pics, "-o", tmp_path / "t.jsonl", "--top-k", "3", "--threshold", "0", "--embed")
    assert res.exit_code == 0, res.output
    assert "writing keywords INTO the image files" in res.stderr
    tags = {os.path.basename(r["path"]): r["tags"] for r in read_output(tmp_path / "t.jsonl", "jsonl")}
    for f in files:
        assert f.read_bytes() != original[f] and os.stat(f).st_mode == modes[f]
        assert _pixels(f) == _pixels(io.BytesIO(original[f])), f"{f.name}: the decoded image changed"
        meta = _exif_read(f, "XMP:Subject", "XMP:HierarchicalSubject", "IPTC:Keywords")
        mine = ["my trip"] if f.suffix in (".jpg", ".png") else []
        assert _as_list(meta.get("Subject")) == mine + tags[f.name], f.name
        assert _as_list(meta.get("HierarchicalSubject")) == [f"CSRA|{t}" for t in tags[f.name]]
        if f.suffix in (".jpg", ".tif"):
            assert _as_list(meta.get("Keywords")) == mine + tags[f.name]
    assert _scan(files[0].read_bytes()) == _scan(original[files[0]])
    assert _png_chunks(files[1].read_bytes()) == _png_chunks(original[files[1]])

    # a second run with fewer tags replaces csra's keywords and keeps the user's; exiv2 reads them (digiKam's way)
    tag(tiny_model_path, pics, "-o", tmp_path / "t2.jsonl", "--top-k", "1", "--threshold", "0", "--embed", "-q")
    first = {os.path.basename(r["path"]): r["tags"] for r in read_output(tmp_path / "t2.jsonl", "jsonl")}
    import exiv2

    image = exiv2.ImageFactory.open(str(files[0]))
    image.readMetadata()
    subjects = [str(d.value()) for d in image.xmpData() if d.key() == "Xmp.dc.subject"]
    keywords = [str(d.value()) for d in image.iptcData() if d.key() == "Iptc.Application2.Keywords"]
    assert subjects == [", ".join(["my trip"] + first["a.jpg"])] or subjects == ["my trip"] + first["a.jpg"]
    assert keywords == ["my trip"] + first["a.jpg"]


def test_embed_leaves_files_it_cannot_write_safely_as_they_were(tmp_path, tiny_model_path):
    pics = tmp_path / "pics"
    locked = make_image(pics / "locked.jpg")
    bmp = make_image(pics / "old.bmp")
    os.chmod(locked, 0o444)
    before = {p: p.read_bytes() for p in (locked, bmp)}
    res = tag(tiny_model_path, pics, "-o", tmp_path / "t.csv", "--threshold", "0", "--embed")
    assert res.exit_code == 0
    assert "locked.jpg: keywords not embedded (read-only; left as it was)" in res.stderr
    assert "old.bmp: keywords not embedded (image/x-ms-bmp" in res.stderr or "old.bmp: keywords not embedded" in res.stderr
    assert all(p.read_bytes() == data for p, data in before.items())


def test_update_after_embed_sees_no_change(tmp_path, tiny_model_path):
    pics = library(tmp_path, 3)
    out = tmp_path / "lib.sqlite"
    tag(tiny_model_path, pics, "-o", out, "--threshold", "0", "--embed", "-q")
    res = tag(tiny_model_path, pics, "-o", out, "--threshold", "0", "--update", "--embed")
    assert update_line(res) == "0 new, 0 changed, 0 removed, 3 unchanged"


def test_keep_mtime(tmp_path, tiny_model_path):
    pics = library(tmp_path, 1)
    st = os.stat(pics / "p0.jpg")
    tag(tiny_model_path, pics, "-o", tmp_path / "t.csv", "--threshold", "0", "--embed", "--keep-mtime", "-q")
    assert os.stat(pics / "p0.jpg").st_mtime_ns == st.st_mtime_ns and os.stat(pics / "p0.jpg").st_size != st.st_size


def test_kill_9_during_embed_leaves_every_file_old_or_new(tmp_path, tiny_model_path):
    pics = tmp_path / "many"
    for i in range(150):
        make_image(pics / f"a{i:03d}.jpg", size=(640, 480), quality=95)
    original = {p: p.read_bytes() for p in pics.iterdir()}
    pixels = {p: _pixels(p) for p in original}
    out = tmp_path / "t.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "csra_cli", "tag", str(pics), "-m", str(tiny_model_path), "-q", "-o", str(out),
           "-b", "1", "--threshold", "0", "--embed"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("embedded files", lambda: journal_lines(out) >= 5, proc)
    proc.kill()
    proc.wait()
    import exiv2

    changed = 0
    for p, data in original.items():
        now = p.read_bytes()
        if now == data:
            continue
        changed += 1
        assert _pixels(p) == pixels[p] and _scan(now) == _scan(data), f"{p.name} is neither old nor new"
        image = exiv2.ImageFactory.open(now)
        image.readMetadata()
        assert any(d.key() == "Xmp.dc.subject" for d in image.xmpData()), f"{p.name}: new bytes without keywords"
    assert changed >= 5
    assert sorted(p.name for p in pics.iterdir() if not p.name.startswith(".")) == sorted(p.name for p in original)
