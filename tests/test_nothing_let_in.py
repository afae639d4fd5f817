"""Issue 35: nothing lost, nothing let in (round 3): resume across folders, planted symlinks, the
user's XMP keywords, a forged sidecar manifest, orphaned workers, malformed outputs, a read-only
cache, unreadable training images, and messages that name their file."""
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import journal_lines, make_image, one_line, wait_for
from .conftest import run_cli as csra

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ext", ["csv", "jsonl", "sqlite"])
def test_resume_of_a_finished_output_from_another_folder_tags_no_image_twice(tmp_path, monkeypatch,
                                                                             tiny_model_path, ext):
    imgs = tmp_path / "lib" / "imgs"
    for i in range(5):
        make_image(imgs / f"p{i}.jpg")
    monkeypatch.chdir(tmp_path / "lib")
    assert csra("tag", "imgs", "--out", f"../r3.{ext}", "-q", "-m", tiny_model_path).exit_code == 0
    monkeypatch.chdir(tmp_path)
    before = (tmp_path / f"r3.{ext}").read_bytes()
    res = csra("tag", "lib/imgs", "--out", f"r3.{ext}", "--resume", "-q", "-m", tiny_model_path)
    assert res.exit_code == 0, res.output
    assert (tmp_path / f"r3.{ext}").read_bytes() == before  # nothing to add: every image is done

    from csra_cli.results.sinks import read_output

    assert len(list(read_output(tmp_path / f"r3.{ext}", ext))) == 5


def test_resume_refuses_a_finished_output_it_cannot_place(tmp_path, monkeypatch, tiny_model_path):
    """Without its index (an output from elsewhere), relative paths none of which is here are
    refused in one line rather than tagged again beside themselves."""
    imgs = tmp_path / "lib" / "imgs"
    for i in range(3):
        make_image(imgs / f"p{i}.jpg")
    monkeypatch.chdir(tmp_path / "lib")
    assert csra("tag", "imgs", "--out", "../r.csv", "-q", "-m", tiny_model_path).exit_code == 0
    (tmp_path / ".r.csv.csra-index.json").unlink()
    monkeypatch.chdir(tmp_path)
    before = (tmp_path / "r.csv").read_bytes()
    res = csra("tag", "lib/imgs", "--out", "r.csv", "--resume", "-q", "-m", tiny_model_path)
    assert res.exit_code == 2 and "relative to the folder it was made in" in one_line(res)
    assert (tmp_path / "r.csv").read_bytes() == before
    monkeypatch.chdir(tmp_path / "lib")  # from its own folder, the paths as given still match
    res = csra("tag", "imgs", "--out", "../r.csv", "--resume", "-q", "-m", tiny_model_path)
    assert res.exit_code == 0 and (tmp_path / "r.csv").read_bytes() == before


def test_a_planted_journal_symlink_is_refused_and_its_target_untouched(tmp_path, tiny_model_path):
    a, b = make_image(tmp_path / "a.jpg"), make_image(tmp_path / "b.jpg")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".t.csv.partial.jsonl").symlink_to(victim)
    res = csra("tag", a, b, "--out", tmp_path / "t.csv", "--resume", "-q", "-m", tiny_model_path)
    assert res.exit_code == 2 and "partial.jsonl: not csra's own file" in one_line(res)
    assert victim.read_text() == "precious\n" and not (tmp_path / "t.csv").exists()
    # without --resume too: a symlinked journal is never followed
    res = csra("tag", a, b, "--out", tmp_path / "t.csv", "--overwrite", "-q", "-m", tiny_model_path)
    assert victim.read_text() == "precious\n"


def test_a_dangling_lock_symlink_creates_nothing(tmp_path, tiny_model_path):
    a = make_image(tmp_path / "a.jpg")
    target = tmp_path / "elsewhere" / "created-by-csra"
    target.parent.mkdir()
    (tmp_path / ".u.csv.lock").symlink_to(target)
    res = csra("tag", a, "--out", tmp_path / "u.csv", "-q", "-m", tiny_model_path)
    assert res.exit_code == 2 and ".u.csv.lock: not csra's own file" in one_line(res)
    assert not target.exists() and not (tmp_path / "u.csv").exists()


def test_the_manifest_and_a_fifo_journal_are_refused_too(tmp_path, tiny_model_path):
    from csra_cli.fileio import NotOwnFile, open_own

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotOwnFile):  # a FIFO would block the open: refused at once
        open_own(tmp_path / "fifo", os.O_RDONLY)
    d = tmp_path / "d"
    make_image(d / "a.jpg")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (d / ".csra-sidecars.jsonl").symlink_to(victim)
    res = csra("tag", d, "--sidecar", "txt", "-q", "-m", tiny_model_path, "--out", tmp_path / "t.csv")
    assert "not csra's own file" in res.stderr and victim.read_text() == "precious\n"


def _subjects(xmp: bytes) -> tuple[list[str], list[str]]:
    import xml.etree.ElementTree as ET

    from csra_cli.results.sidecars import NS

    root = ET.fromstring(xmp.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    li = f"{{{NS['rdf']}}}li"
    subj = [e.text for e in root.iter(f"{{{NS['dc']}}}subject") for e in e.iter(li)]
    hier = [e.text for e in root.iter(f"{{{NS['lr']}}}hierarchicalSubject") for e in e.iter(li)]
    return subj, hier


def test_an_xmp_merge_keeps_the_users_keyword_equal_to_a_tag_csra_gave():
    from csra_cli.results.sidecars import merge_xmp

    # a user's XMP with the keywords "person" and "holiday" (csra's record of them renamed away)
    users = merge_xmp(None, ["person", "holiday"]).replace(b"csra:subjects", b"csra:ignored")
    users = users.replace(b"CSRA|", b"Places|")
    first = merge_xmp(users, ["person", "dog"])  # csra now gives person (the user's already) and dog
    subj, hier = _subjects(first)
    assert subj.count("person") == 1 and "dog" in subj and "holiday" in subj
    assert hier == ["Places|person", "Places|holiday", "CSRA|person", "CSRA|dog"]
    later = merge_xmp(first, ["cat"])  # person and dog no longer given
    subj, hier = _subjects(later)
    assert "person" in subj and "holiday" in subj, "the user's own keyword was removed"
    assert "dog" not in subj and "cat" in subj and hier == ["Places|person", "Places|holiday", "CSRA|cat"]


def test_an_older_xmp_without_csras_record_keeps_every_plain_keyword():
    from csra_cli.results.sidecars import merge_xmp

    old = ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
           '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
           'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/">'
           '<dc:subject><rdf:Bag><rdf:li>person</rdf:li></rdf:Bag></dc:subject><lr:hierarchicalSubject>'
           '<rdf:Bag><rdf:li>CSRA|person</rdf:li></rdf:Bag></lr:hierarchicalSubject></rdf:Description>'
           '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()
    subj, hier = _subjects(merge_xmp(old, ["dog"]))
    assert "person" in subj and "dog" in subj and hier == ["CSRA|dog"]


def test_a_file_name_cannot_forge_the_sidecar_manifest(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    make_image(d / "a.jpg")
    caption = b"my own caption\n"
    (d / "a.txt").write_bytes(caption)
    evil = d / f"P\n{hashlib.sha256(caption).hexdigest()}  a.jpg"  # its sidecar name ends "  a.txt"
    make_image(evil)
    res = csra("tag", d, "--sidecar", "txt", "-q", "-m", tiny_model_path, "--out", tmp_path / "t.csv")
    assert (d / "a.txt").read_bytes() == caption, "the user's caption was overwritten"
    assert "a.txt exists and csra did not write it" in res.stderr
    lines = (d / ".csra-sidecars.jsonl").read_text().splitlines()
    assert [json.loads(ln)["name"] for ln in lines] == [f"P\n{hashlib.sha256(caption).hexdigest()}  a.txt"]


def _run_tag_and_kill(tmp_path, tiny_model_path, extra):
    import psutil

    folder = tmp_path / "many"
    for i in range(400):
        make_image(folder / f"img{i:03d}.png", size=(96, 96))
    out = tmp_path / "t.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CSRA_DECODE": "processes"}
    proc = subprocess.Popen([sys.executable, "-m", "csra_cli", "tag", str(folder), "-m", str(tiny_model_path), "-q",
                             "-o", str(out), "-b", "1", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def mid_run() -> bool:  # records written, the decode workers up (they start in the background)
        try:
            kids = [k for k in psutil.Process(proc.pid).children(recursive=True) if k.is_running()]
        except psutil.NoSuchProcess:  # it ended: wait_for says so
            return False
        forkserver = [k for k in kids if "forkserver" in " ".join(k.cmdline())]
        return journal_lines(out) >= 1 and bool(forkserver) and bool(forkserver[0].children())

    wait_for("the run to be mid-way (records and decode workers)", mid_run, proc)
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    return kids


def test_kill_9_of_tag_leaves_no_decode_process_behind(tmp_path, tiny_model_path):
    import psutil

    kids = _run_tag_and_kill(tmp_path, tiny_model_path, ["-j", "2"])
    assert len(kids) >= 3  # the forkserver, the resource tracker and the workers
    deadline = time.time() + 600
    alive = kids
    while alive and time.time() < deadline:  # an event (every child gone), with a generous deadline
        alive = [k for k in alive if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"left behind: {[' '.join(k.cmdline())[:80] for k in alive]}"


@pytest.mark.parametrize("name,text", [
    ("long.csv", "path,tags,error\n" + "x" * 200_000 + ",dog,\n"),
    ("bomb.json", "[" * 100_000 + "]" * 100_000),
    ("types.jsonl", '{"path": 5, "scores": [], "tags": []}\n'),
    ("types2.json", '[{"path": "a.jpg", "tags": "dog", "scores": {}}]'),
    ("header.csv", "a,b\n1,2\n"),
], ids=["csv-cell-over-limit", "json-nesting-bomb", "jsonl-wrong-types", "json-tags-not-a-list", "csv-not-ours"])
def test_a_malformed_output_is_one_line_and_exit_2_for_report_and_resume(tmp_path, tiny_model_path, name, text):
    bad = tmp_path / name
    bad.write_text(text)
    res = csra("report", bad, "--out", tmp_path / "p.html")
    assert res.exit_code == 2 and f"{bad}: cannot read it as a csra" in one_line(res)
    before = bad.read_bytes()
    res = csra("tag", make_image(tmp_path / "a.jpg"), "--out", bad, "--resume", "-q", "-m", tiny_model_path)
    assert res.exit_code == 2 and f"{bad}: cannot read it as a csra" in one_line(res)
    assert bad.read_bytes() == before and not list(tmp_path.glob(f".{name}*"))


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_models_import_into_a_cache_that_cannot_take_it_is_one_line(tmp_path, monkeypatch, err):
    import tempfile

    from .test_models_cli import _official_like_checkpoint

    pth = tmp_path / "r18.pth"
    _official_like_checkpoint(pth)

    def refuse(*a, **k):
        raise OSError(err, os.strerror(err), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only, foreign or full $CSRA_HOME answers
    res = csra("models", "import", pth, "--lam", "0.1", "--classes", "voc")
    assert res.exit_code == 2 and "cannot write into" in one_line(res) and "CSRA_HOME" in res.stderr


def test_train_leaves_out_unreadable_images_and_refuses_a_large_share(tmp_path):
    from csra_cli.models.card import ModelCard

    rows = ["path,tags"]
    for i in range(120):
        make_image(tmp_path / "img" / f"{i}.png", size=(40, 40), color=(200, 30, 30) if i % 2 else (30, 30, 200))
        rows.append(f"img/{i}.png,{'red' if i % 2 else 'blue'}")
    (tmp_path / "img" / "7.png").write_bytes(b"broken")
    rows.append("img/missing.png,red")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["train", "--dataset", "csv", "--labels", tmp_path / "labels.csv", "--arch", "resnet18", "--input-size",
            "32", "--epochs", "1", "--freeze-backbone", "--workers", "0", "--name", "toy", "--out", tmp_path / "run"]
    res = csra(*args)  # 2 of 121 unreadable: 1.7 %, more than the 1 % allowed
    assert res.exit_code == 2 and "2 of 121 training images" in res.stderr and "--allow-missing" in res.stderr
    assert "7.png (not an image" in res.stderr and "missing.png (no such file)" in res.stderr
    res = csra(*args, "--allow-missing")
    assert res.exit_code == 0, res.output
    assert "(2 unreadable left out)" in res.stderr
    card = ModelCard.load(tmp_path / "run" / "toy.json")
    assert card.training["images"] == 119 and card.training["unreadable_images"]["count"] == 2
    assert sorted(card.training["unreadable_images"]["names"]) == ["7.png", "missing.png"]


def test_messages_name_their_file(tmp_path, monkeypatch, tiny_model_path):
    from csra_cli.results import sinks

    bad = tmp_path / "labels.csv"
    bad.write_bytes(b"path,tags\na.jpg,caf\xe9\n")
    res = csra("eval", "--dataset", "csv", "--labels", bad)
    assert res.exit_code == 2 and f"{bad}: not UTF-8" in one_line(res)

    def full(self, rec):
        raise OSError(errno.ENOSPC, "No space left on device")  # a write() names no file

    monkeypatch.setattr(sinks.FileSink, "write", full)
    out = tmp_path / "t.csv"
    res = csra("tag", make_image(tmp_path / "a.jpg"), "-m", tiny_model_path, "-q", "-o", out)
    assert res.exit_code == 2 and one_line(res) == f"error: cannot write {out}: No space left on device"
