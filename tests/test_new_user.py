"""Issue 33: what a new user tripped on: outputs every reader opens, Ctrl-C, checks before model
work, one rule for replacing files, a pipe that closes, eval without --root, tag editing, the
records' schema, and small things in --help and the pages."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pandas as pd
import pytest
import typer

from csra_cli.cli import app

from .conftest import journal_lines, make_image, one_line, wait_for
from .conftest import run_cli as csra

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "csra_cli" / "results" / "record.schema.json"


@pytest.fixture
def latin1_folder(tmp_path):
    d = tmp_path / "d"
    make_image(d / "plain.jpg")
    shutil.copy(make_image(tmp_path / "x.jpg"), os.fsdecode(bytes(d) + b"/caf\xe9.jpg"))
    return d


def test_a_name_that_is_not_utf8_leaves_every_output_readable_and_exact(tmp_path, latin1_folder, tiny_model_path):
    m = ["-m", tiny_model_path, "-q"]
    for ext in ("csv", "jsonl", "json"):
        assert csra("tag", latin1_folder, "-o", tmp_path / f"t.{ext}", *m).exit_code == 0
        (tmp_path / f"t.{ext}").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    df = pd.read_csv(tmp_path / "t.csv")
    lines = pd.read_json(tmp_path / "t.jsonl", lines=True)
    array = json.loads((tmp_path / "t.json").read_text())
    assert len(df) == len(lines) == len(array) == 2
    for raw in (df["path_bytes"].dropna().tolist(), lines["path_bytes"].dropna().tolist(),
                [r["path_bytes"] for r in array if "path_bytes" in r]):
        assert len(raw) == 1 and os.path.exists(os.fsdecode(unquote_to_bytes(raw[0])))  # the exact name
    assert df["path"].str.endswith("caf\ufffd.jpg").sum() == 1
    if shutil.which("jq"):
        out = subprocess.run(["jq", "-r", ".path_bytes // empty", str(tmp_path / "t.jsonl")], capture_output=True,
                             text=True, check=True).stdout.split()
        assert len(out) == 1 and out[0].endswith("caf%E9.jpg")
    for ext in ("csv", "jsonl", "json"):  # --resume still knows the image: nothing twice
        assert csra("tag", latin1_folder, "-o", tmp_path / f"t.{ext}", "--resume", *m).exit_code == 0
    assert len(pd.read_csv(tmp_path / "t.csv")) == 2 and len(pd.read_json(tmp_path / "t.jsonl", lines=True)) == 2
    streamed = csra("tag", latin1_folder, "--format", "csv", *m).stdout  # a stream always has the column
    assert streamed.splitlines()[0] == "path,tags,error,path_bytes"


@pytest.mark.parametrize("decode", ["threads", "processes"])
def test_ctrl_c_in_a_terminal_is_one_line(tmp_path, tiny_model_path, decode):
    folder = tmp_path / "many"
    for i in range(300):
        make_image(folder / f"img{i:03d}.png", size=(48, 48))
    out = tmp_path / "t.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CSRA_DECODE": decode}
    proc = subprocess.Popen([sys.executable, "-m", "csra_cli", "tag", str(folder), "-o", str(out), "-m",
                             str(tiny_model_path), "-j", "2", "-b", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for("a first record before Ctrl-C", lambda: journal_lines(out) >= 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: the whole foreground group
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == 130
    assert stderr.strip().splitlines() == [f"error: interrupted; run the same command with --resume to continue "
                                           f"into {out}"], stderr


def test_card_checks_come_before_any_export(tmp_path, monkeypatch, isolated_home, tiny_model_path):
    monkeypatch.delenv("CSRA_BACKEND")  # the default onnxruntime path, which exports on first use
    img = make_image(tmp_path / "a.jpg")
    for args, says in ((["--classes", ""], "--classes: give at least one"),
                       (["--classes", "dog,unicorn"], "unknown unicorn"),
                       (["--exclude", "unicorn"], "--exclude: unknown unicorn"),
                       (["--top-k", "21"], "--top-k 21: tiny has only 20 classes"),
                       (["--rename", "unicorn=horse"], "--rename: unknown class 'unicorn'")):
        res = csra("tag", img, "-m", tiny_model_path, *args)
        assert res.exit_code == 2 and says in one_line(res), res.output
    assert not (isolated_home / "onnx").exists(), "a usage error came after the one-time export"


def test_every_file_csra_writes_is_replaced_only_with_overwrite(tmp_path, tiny_model_path):
    img = make_image(tmp_path / "a.jpg")
    tags, page = tmp_path / "t.jsonl", tmp_path / "t.html"
    assert csra("tag", img, "-m", tiny_model_path, "-q", "-o", tags).exit_code == 0
    page.write_text("mine")
    res = csra("tag", img, "-m", tiny_model_path, "-q", "-o", tmp_path / "u.jsonl", "--report", page)
    assert res.exit_code == 2 and "--report" in one_line(res) and "--overwrite" in res.stderr
    assert page.read_text() == "mine" and not (tmp_path / "u.jsonl").exists()
    res = csra("report", tags, "--out", page)
    assert res.exit_code == 2 and "--overwrite" in one_line(res) and page.read_text() == "mine"
    assert csra("report", tags, "--out", page, "--overwrite", "-q").exit_code == 0 and page.read_text() != "mine"
    onnx = tmp_path / "m.onnx"
    onnx.write_text("mine")
    res = csra("export", "--onnx", "-m", tiny_model_path, "--out", onnx)
    assert res.exit_code == 2 and "--overwrite" in one_line(res) and onnx.read_text() == "mine"
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,tags\n{img},dog\n")
    report = tmp_path / "r.json"
    report.write_text("mine")
    res = csra("eval", "--dataset", "csv", "--labels", labels, "-m", tiny_model_path, "--json", report, "-q")
    assert res.exit_code == 2 and "--json" in one_line(res) and report.read_text() == "mine"
    res = csra("eval", "--dataset", "csv", "--labels", labels, "-m", tiny_model_path, "--json", report, "-q",
               "--overwrite")
    assert res.exit_code == 0 and json.loads(report.read_text())["num_images_labelled"] == 1


def test_a_reader_that_goes_ends_the_run_at_once(tmp_path, tiny_model_path):
    """`csra tag … | head -1`: after the reader goes, csra ends long before the run would have."""
    folder = tmp_path / "many"
    for i in range(400):
        make_image(folder / f"img{i:03d}.png", size=(64, 64))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "csra_cli", "tag", str(folder), "-m", str(tiny_model_path), "-b", "4"]
    t = time.time()
    subprocess.run(cmd + ["-q", "-o", str(tmp_path / "all.jsonl")], env=env, check=True, timeout=900)
    whole = time.time() - t
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    t = time.time()
    proc.stdout.close()  # head -1 has what it wants
    stderr = proc.communicate(timeout=900)[1]
    after = time.time() - t
    assert proc.returncode == 141 and stderr == b"", stderr
    assert after < whole / 2, f"{after:.1f} s to end after the reader went; the whole run takes {whole:.1f} s"


def test_eval_voc_says_where_it_looked_and_which_splits_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = csra("eval", "--dataset", "voc")
    assert res.exit_code == 2 and "looked in ./VOCdevkit" in one_line(res) and "--root" in res.stderr
    res = csra("eval", "--dataset", "voc", "--root", tmp_path / "nowhere")
    assert res.exit_code == 2 and "no such folder" in one_line(res)
    main = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (tmp_path / "VOCdevkit" / "VOC2007" / "Annotations").mkdir()
    for split in ("train", "val"):
        (main / f"{split}.txt").write_text("")
    res = csra("eval", "--dataset", "voc")  # found in ./VOCdevkit; the paper's test split is not there
    assert res.exit_code == 2 and "its splits are train, val; pass --split val" in one_line(res)


def test_rename_exclude_and_captions_as_dataset_builders_want_them(tmp_path, tiny_model_path):
    photos = tmp_path / "photos"
    make_image(photos / "a.jpg")
    make_image(photos / "sub" / "b.png")
    m = ["-m", tiny_model_path, "-q", "--threshold", "0", "--top-k", "3"]
    plain = [json.loads(ln) for ln in csra("tag", photos, *m).stdout.splitlines()]
    first = plain[0]["tags"][0]
    res = csra("tag", photos, *m, "--rename", f"{first}=renamed", "--exclude", plain[0]["tags"][1], "--scores")
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert recs[0]["tags"][0] == "renamed" and plain[0]["tags"][1] not in recs[0]["tags"]
    assert first in recs[0]["scores"] and "renamed" not in recs[0]["scores"]  # the full table keeps class names
    caps = tmp_path / "captions"
    res = csra("tag", photos, *m, "--sidecar", "txt", "--caption-dir", caps, "--caption-ext", ".caption",
               "--caption-sep", " ", "--prepend", "mystyle", "--append", "photo", "-o", tmp_path / "t.jsonl")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(caps).as_posix() for p in caps.rglob("*.caption")) == ["a.caption", "sub/b.caption"]
    words = (caps / "a.caption").read_text().split()
    assert words[0] == "mystyle" and words[-1] == "photo" and words[1:-1] == plain[0]["tags"]
    assert not list(photos.rglob("*.txt")) and not list(photos.rglob("*.caption"))  # nothing beside the images
    res = csra("tag", photos, *m, "--caption-sep", " ")
    assert res.exit_code == 2 and "add --sidecar txt" in one_line(res)


def test_a_card_can_give_display_names(tmp_path, tiny_model_path):
    from csra_cli.models.card import ModelCard

    card = ModelCard.load(tiny_model_path.with_suffix(".json"))
    card.display_names = {"tvmonitor": "tv", "pottedplant": "potted plant"}
    own = tmp_path / "shown.json"
    own.write_text(card.to_json().replace('"weights_file": ""', f'"weights_file": "{tiny_model_path.name}"'))
    shutil.copy(tiny_model_path, tmp_path / tiny_model_path.name)
    res = csra("tag", make_image(tmp_path / "a.jpg"), "-m", own, "-q", "--threshold", "0", "--classes", "tvmonitor")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tags"] == ["tv"]
    with pytest.raises(ValueError, match="unknown classes"):
        ModelCard("x", "resnet18", 1, 0.1, ["a"], display_names={"b": "c"})


def test_dry_run_lists_reads_and_writes_and_runs_nothing(tmp_path, monkeypatch, tiny_model_path):
    import csra_cli.cli.tag as tag_cmd

    photos = tmp_path / "photos"
    make_image(photos / "a.jpg")
    make_image(photos / "b.png")
    (photos / "b.txt").write_text("mine")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded in a dry run")

    monkeypatch.setattr(tag_cmd, "runner_for", no_model)
    out = tmp_path / "t.csv"
    res = csra("tag", photos, "-m", tiny_model_path, "--sidecar", "txt,xmp", "-o", out, "--dry-run")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert f"read\t{photos / 'a.jpg'}" in lines and f"write\t{photos / 'a.txt'}" in lines
    assert f"write\t{photos / 'b.txt'} (replace)" in lines and f"write\t{photos / 'a.jpg.xmp'}" in lines
    assert lines[-1] == f"write\t{out}" and not out.exists() and not (photos / "a.txt").exists()


def test_every_format_s_records_match_the_published_schema(tmp_path, latin1_folder, tiny_model_path):
    jsonschema = pytest.importorskip("jsonschema")
    from csra_cli.results.sinks import public_record, read_output

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    (latin1_folder / "broken.jpg").write_bytes(b"not a jpeg")
    for ext, extra in (("jsonl", []), ("json", ["--scores"]), ("csv", ["--scores"]), ("sqlite", [])):
        out = tmp_path / f"t.{ext}"
        assert csra("tag", latin1_folder, "-m", tiny_model_path, "-q", "-o", out, *extra).exit_code == 1
        if ext == "jsonl":
            written = [json.loads(ln) for ln in out.read_text().splitlines()]
        elif ext == "json":
            written = json.loads(out.read_text())
        else:  # the same records read back
            written = [public_record(r) for r in read_output(out, ext)]
        assert len(written) == 3
        for rec in written:
            validator.validate(rec)
    validator.validate({"path": "x", "tags": [], "scores": {}, "error": None})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"path": "x", "tags": "dog", "scores": {}, "error": None})
    assert "csra_cli/results/record.schema.json" in (REPO / "README.md").read_text()


def test_small_things_in_help_and_pages(tmp_path, tiny_model_path):
    commands = typer.main.get_command(app)
    listed = commands.list_commands(None)
    assert listed[:3] == ["tag", "report", "eval"] and "report" in commands.help
    tag_params = {p.name: p for p in commands.commands["tag"].params}
    assert "shipped beside the model" in tag_params["precision"].help
    missing = [p.name for p in commands.commands["train"].params if not p.help and p.name != "help"]
    assert not missing, f"train options without help: {missing}"
    from csra_cli.report.tag_report import build_tag_report
    from csra_cli.results.sinks import make_record

    page = tmp_path / "p.html"
    build_tag_report([make_record("a.jpg", [], {}, "broken"), make_record("b.jpg", ["dog"], {"dog": 0.9})], page)
    text = page.read_text()
    assert "1 error," in text and "1 errors" not in text and "1 image tagged" in text
    from csra_cli.cli.models import map_split

    assert map_split({"kind": "official"}) == "test" and map_split({"kind": "shipped"}) == "val"
    readme = (REPO / "README.md").read_text()
    assert "csra tag ./photos --sidecar txt,xmp --out " in readme


def test_captions_of_two_input_folders_never_share_a_file(tmp_path, tiny_model_path):
    for year in ("2023", "2024"):
        make_image(tmp_path / year / "IMG_1.jpg")
    caps = tmp_path / "caps"
    res = csra("tag", tmp_path / "2023", tmp_path / "2024", "-m", tiny_model_path, "-q", "--sidecar", "txt",
               "--caption-dir", caps, "-o", tmp_path / "t.jsonl")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(caps).as_posix() for p in caps.rglob("*.txt")) == ["2023/IMG_1.txt", "2024/IMG_1.txt"]


def test_resume_of_a_finished_run_rebuilds_its_own_report(tmp_path, image_folder, tiny_model_path):
    out, page = tmp_path / "t.csv", tmp_path / "t.html"
    args = ["tag", image_folder, "-m", tiny_model_path, "-q", "-o", out, "--report", page]
    assert csra(*args).exit_code == 0 and page.exists()
    assert csra(*args, "--resume").exit_code == 0
