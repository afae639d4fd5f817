"""Issue 15: nothing lost, nothing let in (sidecars, concurrent runs, resume, odd names, pipes)."""
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from csra_cli.cli import app

from .conftest import make_image

runner = CliRunner()


def tag(*args, **kw):
    return runner.invoke(app, ["tag", *map(str, args)], catch_exceptions=False, **kw)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def test_txt_sidecar_never_replaces_an_input_or_a_users_caption(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    jpeg = make_image(d / "real.jpg").read_bytes()
    (d / "real.jpg").rename(d / "scan.txt")  # a JPEG found by its first bytes
    make_image(d / "cap.jpg")
    (d / "cap.txt").write_text("my own caption\n")
    args = [d, "-m", tiny_model_path, "-q", "--sidecar", "txt", "--threshold", "0", "--top-k", "1"]
    res = tag(*args, "-o", tmp_path / "t.jsonl")
    assert res.exit_code == 0, res.output
    assert (d / "scan.txt").read_bytes() == jpeg
    assert (d / "scan.txt.txt").read_text().strip() == jsonl(tmp_path / "t.jsonl")[1]["tags"][0]
    assert (d / "cap.txt").read_text() == "my own caption\n"
    assert "--overwrite-sidecars" in res.stderr
    # csra's own sidecars are csra's to replace; the user's only with --overwrite-sidecars
    res = tag(*args, "-o", tmp_path / "t.jsonl", "--overwrite")
    assert "scan.txt.txt" not in res.stderr and (d / "cap.txt").read_text() == "my own caption\n"
    res = tag(*args, "-o", tmp_path / "t.jsonl", "--overwrite", "--overwrite-sidecars")
    assert res.exit_code == 0 and (d / "cap.txt").read_text() != "my own caption\n"
    assert (d / "scan.txt").read_bytes() == jpeg


def test_a_second_run_on_the_same_output_is_refused(tmp_path, image_folder, tiny_model_path):
    from csra_cli.results.sinks import OutputLock

    out = tmp_path / "t.jsonl"
    held = OutputLock(out)  # another run holds it
    for extra in ([], ["--overwrite"], ["--resume"]):
        res = tag(image_folder, "-m", tiny_model_path, "-q", "-o", out, *extra)
        assert res.exit_code == 2 and "another csra run" in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    held.release()
    assert tag(image_folder, "-m", tiny_model_path, "-q", "-o", out).exit_code == 0
    assert len(jsonl(out)) == 4 and not list(tmp_path.glob(".t.jsonl.lock"))


def test_resume_knows_the_input_however_it_is_spelled(tmp_path, image_folder, tiny_model_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t.jsonl"
    assert tag("photos", "-m", tiny_model_path, "-q", "-o", out).exit_code == 0
    for spelling in ("./photos", str(image_folder), "photos/../photos"):
        res = tag(spelling, "-m", tiny_model_path, "-q", "-o", out, "--resume")
        assert res.exit_code == 0, res.output
        recs = jsonl(out)
        assert len(recs) == 4 and all(r["path"].startswith("photos/") for r in recs), spelling


def test_resume_retries_the_images_that_failed(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    make_image(d / "good.jpg")
    (d / "later.jpg").write_bytes(b"not yet an image")
    out = tmp_path / "t.csv"
    assert tag(d, "-m", tiny_model_path, "-q", "-o", out).exit_code == 1
    res = tag(d, "-m", tiny_model_path, "-q", "-o", out, "--resume")
    assert res.exit_code == 1 and "trying again 1" in res.stderr  # still broken: still exit 1
    make_image(d / "later.jpg")
    res = tag(d, "-m", tiny_model_path, "-q", "-o", out, "--resume")
    assert res.exit_code == 0 and "trying again 1" in res.stderr
    import pandas as pd

    df = pd.read_csv(out, keep_default_na=False)
    assert sorted(Path(p).name for p in df["path"]) == ["good.jpg", "later.jpg"] and (df["error"] == "").all()


def test_csv_formula_cells_are_neutralised_and_read_back_exactly(tmp_path, tiny_model_path, monkeypatch):
    names = ["=HYPERLINK(1).jpg", "+sum.jpg"]
    for n in names:
        make_image(tmp_path / n)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t.csv"
    assert tag(*names, "-m", tiny_model_path, "-q", "-o", out).exit_code == 0
    cells = [ln.split(",")[0] for ln in out.read_text().splitlines()[1:]]
    assert cells == ["'" + n for n in names]
    res = tag(*names, "-m", tiny_model_path, "-q", "-o", out, "--resume")  # read back: nothing twice
    assert res.exit_code == 0 and [ln.split(",")[0] for ln in out.read_text().splitlines()[1:]] == cells
    assert tag(*names, "-m", tiny_model_path, "-q", "-o", tmp_path / "t.json").exit_code == 0
    assert [r["path"] for r in json.loads((tmp_path / "t.json").read_text())] == names  # JSON: exact


def test_names_that_are_not_utf8_are_tagged_and_kept(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    d.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(make_image(tmp_path / "x.jpg"), os.path.join(str(d), name))
    out = tmp_path / "t.jsonl"
    res = tag(d, "-m", tiny_model_path, "-q", "-o", out)
    assert res.exit_code == 0, res.output
    out.read_bytes().decode("utf-8")  # valid UTF-8 JSON Lines (issue 33: U+FFFD shown, bytes in path_bytes)
    from urllib.parse import unquote_to_bytes

    rec = jsonl(out)[0]
    assert Path(rec["path"]).name == "caf\ufffd.jpg" and os.path.exists(os.fsdecode(unquote_to_bytes(rec["path_bytes"])))
    assert tag(d, "-m", tiny_model_path, "-q", "-o", out, "--resume").exit_code == 0
    assert len(jsonl(out)) == 1
    res = tag(d, "-m", tiny_model_path, "-q", "-o", tmp_path / "t.csv")
    assert res.exit_code == 0 and b"caf%E9.jpg" in (tmp_path / "t.csv").read_bytes()
    res = tag(d, "-m", tiny_model_path, "-q")
    assert res.exit_code == 0 and Path(json.loads(res.stdout)["path_bytes"]).name == "caf%E9.jpg"


def test_modes_are_kept_and_output_synced_before_the_journal_goes(tmp_path, image_folder, tiny_model_path,
                                                                   monkeypatch):
    import csra_cli.results.sinks as sinks

    out = tmp_path / "t.csv"
    out.write_text("old\n")
    out.chmod(0o600)
    (tmp_path / ".t.csv.abc123.tmp").write_text("left by a kill")
    synced = []
    real = sinks.fsync_dir
    monkeypatch.setattr(sinks, "fsync_dir", lambda f: synced.append((f, sinks.journal_path(out).exists())) or real(f))
    assert tag(image_folder, "-m", tiny_model_path, "-q", "-o", out, "--overwrite").exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert synced == [(out.parent, True)], "the folder is synced while the journal still exists"
    assert not list(tmp_path.glob(".t.csv.*.tmp")), "a killed run's temporary is cleaned"


def test_disk_full_and_ctrl_c_at_start_up_are_one_line(tmp_path, image_folder, tiny_model_path, monkeypatch):
    import csra_cli.cli.tag as tag_cmd
    import csra_cli.results.sinks as sinks

    out = tmp_path / "t.csv"
    out.write_text("earlier\n")

    def full(self, rec):
        raise OSError(errno.ENOSPC, "No space left on device", str(sinks.journal_path(out)))

    monkeypatch.setattr(sinks.FileSink, "write", full)
    res = tag(image_folder, "-m", tiny_model_path, "-q", "-o", out, "--overwrite")
    assert res.exit_code == 2 and "No space left" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert out.read_text() == "earlier\n"
    monkeypatch.undo()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tag_cmd, "runner_for", interrupted)
    res = tag(image_folder, "-m", tiny_model_path, "-q")
    assert res.exit_code == 130 and "interrupted" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_closed_pipe_and_dev_full_on_stdout(tmp_path, image_folder, tiny_model_path):
    cmd = [sys.executable, "-m", "csra_cli", "tag", str(image_folder), "-m", str(tiny_model_path), "-q",
           "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first record (csra tag ... | head -0)
    proc = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, text=True, timeout=900, env=env)
    os.close(w)
    assert proc.returncode in (0, 141) and proc.stderr == "", proc.stderr
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=900, env=env)
        assert proc.returncode == 2 and "No space left" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_null_separated_stdin_keeps_names_exact(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    names = ["two\nlines.jpg", "cr\r.jpg", " lead.jpg"]
    for n in names:
        make_image(d / n)
    data = b"".join(os.fsencode(d / n) + b"\0" for n in names)
    res = tag("-", "--null", "-m", tiny_model_path, "-q", input=data)
    assert res.exit_code == 0, res.output
    assert [Path(json.loads(ln)["path"]).name for ln in res.stdout.splitlines()] == names
    res = tag("-", "-m", tiny_model_path, "-q", input=os.fsencode(d / "cr\r.jpg") + b"\n")
    assert res.exit_code == 0 and json.loads(res.stdout)["path"].endswith("cr\r.jpg")


def test_unusable_folder_entries_are_reported(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    make_image(d / "ok.jpg")
    os.symlink(d / "gone.jpg", d / "dangling.jpg")
    os.symlink(d / "loop.png", d / "loop.png")
    os.mkfifo(d / "pipe.jpg")
    os.symlink(d, d / "again")
    res = tag(d, "-m", tiny_model_path, "-q")
    assert res.exit_code == 1, res.output
    recs = {Path(r["path"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert set(recs) == {"ok.jpg", "dangling.jpg", "loop.png", "pipe.jpg"}
    assert recs["ok.jpg"]["error"] is None and all(recs[n]["error"] for n in ("dangling.jpg", "loop.png", "pipe.jpg"))
    for needle in ("dangling symlink", "symlink loop", "FIFO", "already visited"):
        assert needle in res.stderr, needle


# A user's XMP into which an earlier csra run put {stale} (recorded in csra:subjects, as csra does).
XMP_USER = """<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="3"/>
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
  xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:csra="http://csra.invalid/ns/xmp/1.0/">
<!-- keep me -->
<dc:subject><rdf:Seq><rdf:li>holiday</rdf:li><rdf:li>{stale}</rdf:li></rdf:Seq></dc:subject>
<lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Rome</rdf:li><rdf:li>CSRA|{stale}</rdf:li></rdf:Bag></lr:hierarchicalSubject>
<csra:subjects><rdf:Bag><rdf:li>{stale}</rdf:li></rdf:Bag></csra:subjects>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>
"""


@pytest.mark.skipif(shutil.which("exiftool") is None,
                    reason="exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)")
def test_xmp_merges_into_the_users_keywords_as_exiftool_reads_them(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    make_image(d / "a.jpg")
    first = json.loads(tag(d / "a.jpg", "-m", tiny_model_path, "-q", "--threshold", "0", "--top-k", "2").stdout)
    best, stale = first["tags"]
    xmp = d / "a.jpg.xmp"
    xmp.write_text(XMP_USER.format(stale=stale))
    xmp.chmod(0o600)
    res = tag(d, "-m", tiny_model_path, "-q", "--threshold", "0", "--top-k", "1", "--sidecar", "xmp")
    assert res.exit_code == 0 and res.stderr == "", res.output
    got = json.loads(subprocess.run(["exiftool", "-j", "-XMP:Subject", "-XMP:HierarchicalSubject", "-XMP:Rating",
                                     str(xmp)], capture_output=True, text=True).stdout)[0]
    as_list = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
    assert as_list(got["Subject"]) == ["holiday", best]  # the stale csra tag is gone
    assert as_list(got["HierarchicalSubject"]) == ["Places|Rome", f"CSRA|{best}"]
    assert got["Rating"] == 3
    text = xmp.read_text()
    assert "keep me" in text and text.count("<dc:subject>") == 1 and "rdf:Bag><rdf:li>holiday" not in text
    assert stat.S_IMODE(xmp.stat().st_mode) == 0o600


def test_xmp_with_a_dtd_is_refused_and_left_untouched(tmp_path, tiny_model_path):
    d = tmp_path / "d"
    make_image(d / "a.jpg")
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="">&b;</rdf:Description></rdf:RDF></x:xmpmeta>')
    (d / "a.jpg.xmp").write_text(bomb)
    res = tag(d, "-m", tiny_model_path, "-q", "--sidecar", "xmp")
    assert res.exit_code == 0 and "DTD" in res.stderr
    assert (d / "a.jpg.xmp").read_text() == bomb


def test_stale_temporaries_of_an_onnx_export_are_cleaned(tmp_path, tiny_model_path, isolated_home, monkeypatch):
    import csra_cli.engine.export as export
    from csra_cli.engine.runners import cached_onnx
    from csra_cli.errors import CSRAError
    from csra_cli.models.loading import load_model

    folder = isolated_home / "onnx"
    folder.mkdir()
    old, young = folder / ".tiny-abc.onnx.x1.onnx", folder / ".tiny-abc.onnx.x2.onnx"
    old.write_text("killed")
    young.write_text("another run exporting now")
    os.utime(old, (0, 0))

    def fail(*a, **k):
        raise CSRAError("stop here")

    monkeypatch.setattr(export, "export_onnx", fail)
    with pytest.raises(CSRAError):
        cached_onnx(load_model(str(tiny_model_path)))
    assert not old.exists() and young.exists()
    assert [p.name for p in folder.iterdir()] == [young.name]


def test_model_names_cannot_leave_the_cache(tmp_path, isolated_home, monkeypatch):
    from .test_models_cli import _official_like_checkpoint

    src = tmp_path / "r18.pth"
    _official_like_checkpoint(src)
    for name in ("../../evil", str(tmp_path / "abs"), "..", "a/b"):
        res = runner.invoke(app, ["models", "import", str(src), "--lam", "0.5", "--classes", "voc", "--name", name])
        assert res.exit_code == 2 and "plain name" in res.stderr, (name, res.output)
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.glob("abs*"))
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"default": "x", "models": [{"name": "x", "file": "../../x.pth", "url": "file:///nowhere"}]}))
    monkeypatch.setenv("CSRA_REGISTRY", str(reg))
    res = runner.invoke(app, ["models", "download", "x"])
    assert res.exit_code == 2 and "plain name" in res.stderr, res.output


@pytest.mark.parametrize("change, needle", [
    ({"mean": [0.5, 0.5]}, "mean"), ({"input_size": 0}, "input_size"), ({"input_size": 100000}, "input_size"),
    ({"num_heads": "2"}, "num_heads"), ({"threshold": 7}, "threshold"), ({"classes": []}, "classes"),
    ({"name": "../up"}, "plain name"), ("nan", "NaN"),
])
def test_broken_model_cards_and_weights_are_one_line(tmp_path, tiny_model_path, image_folder, change, needle):
    from safetensors.torch import load_file, save_file

    m = tmp_path / "m.safetensors"
    card = json.loads(tiny_model_path.with_suffix(".json").read_text())
    if change == "nan":
        state = load_file(str(tiny_model_path))
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key][0] = float("nan")
        save_file(state, str(m))
    else:
        shutil.copy(tiny_model_path, m)
        card.update(change)
    m.with_suffix(".json").write_text(json.dumps(card))
    res = tag(image_folder / "a.jpg", "-m", m, "-q")
    assert res.exit_code == 2 and needle in res.stderr and "Traceback" not in res.output, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""


def test_a_card_may_name_the_weights_of_another_model_in_its_folder(tmp_path, tiny_model_path, image_folder):
    """A run-size variant (as `fast` is the default at 320 px): small.json names base.safetensors and
    runs at its own size; a weights_file that leaves the folder, is missing or is no .safetensors is
    one line."""
    from csra_cli.models.loading import load_model

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_model_path, folder / "base.safetensors")
    card = json.loads(tiny_model_path.with_suffix(".json").read_text())
    (folder / "base.json").write_text(json.dumps(card))
    variant = folder / "small.json"
    variant.write_text(json.dumps({**card, "name": "small", "input_size": 48, "weights_file": "base.safetensors"}))
    model = load_model(str(variant))
    assert (model.card.name, model.card.input_size) == ("small", 48)
    res = tag(image_folder / "a.jpg", "-m", variant, "-q")
    assert res.exit_code == 0 and json.loads(res.stdout)["error"] is None, res.output
    assert sorted(p.name for p in folder.iterdir()) == ["base.json", "base.safetensors", "small.json"]
    home = Path(os.environ["CSRA_HOME"])  # the folder copied into the cache: both by name, both listed
    shutil.copytree(folder, home, dirs_exist_ok=True)
    res = tag(image_folder / "a.jpg", "-m", "small", "-q")
    assert res.exit_code == 0 and json.loads(res.stdout)["error"] is None, res.output
    res = runner.invoke(app, ["models", "--json"])
    listed = {r["name"]: r for r in json.loads(res.stdout) if r["kind"] == "imported"}
    assert set(listed) == {"base", "small"} and listed["small"]["installed"] == str(home / "small.json"), res.output
    assert listed["small"]["size"] == listed["base"]["size"] == (folder / "base.safetensors").stat().st_size
    shutil.copy(folder / "base.safetensors", folder / "small.safetensors")  # weights beside a card that runs others
    res = tag(image_folder / "a.jpg", "-m", folder / "small.safetensors", "-q")
    assert res.exit_code == 2 and "runs base.safetensors (weights_file), not this file; use --model" in res.stderr
    (folder / "small.safetensors").unlink()
    res = tag(image_folder / "a.jpg", "-m", folder / "small.safetensors", "-q")
    assert res.exit_code == 2 and f"(its card is there: --model {variant})" in res.stderr, res.output
    from csra_cli.models.checkpoint import save_csra

    saved = save_csra(model, model.card, tmp_path / "mine.safetensors")  # weights written beside: no weights_file
    assert json.loads(saved.with_suffix(".json").read_text())["weights_file"] == ""
    missing = "its weights gone.safetensors (named by its weights_file) are missing"
    for bad, needle in (("../base.safetensors", "plain name"), ("gone.safetensors", missing),
                        ("base.json", "expected a .safetensors file")):
        variant.write_text(json.dumps({**card, "name": "small", "weights_file": bad}))
        res = tag(image_folder / "a.jpg", "-m", variant, "-q")
        one_line = len(res.stderr.strip().splitlines()) == 1
        assert res.exit_code == 2 and needle in res.stderr and one_line, (bad, res.output)


def test_downloads_must_be_weights_and_keep_their_first_digest(tmp_path, monkeypatch, isolated_home):
    from .test_models_cli import _official_like_checkpoint, _registry

    served = tmp_path / "served"
    served.mkdir()
    _registry(tmp_path, monkeypatch, (served / "dl_test.pth").as_uri(), None)
    (served / "dl_test.pth").write_text("<!DOCTYPE html><html><body>Please log in</body></html>\n")
    res = runner.invoke(app, ["models", "download", "dl-test"])
    assert res.exit_code == 2 and "HTML" in res.stderr, res.output
    assert not list(isolated_home.rglob("dl_test*"))
    (served / "dl_test.pth").write_bytes(b"PK\x03\x04" + os.urandom(300))  # a zip that is no checkpoint
    res = runner.invoke(app, ["models", "download", "dl-test"])
    assert res.exit_code == 2 and "not a loadable checkpoint" in res.stderr and not list(isolated_home.rglob("dl_test*"))
    _official_like_checkpoint(served / "dl_test.pth")
    assert runner.invoke(app, ["models", "download", "dl-test"]).exit_code == 0
    assert (isolated_home / "dl_test.pth.sha256").is_file()
    with open(isolated_home / "dl_test.pth", "ab") as fh:
        fh.write(b"tampered")
    res = runner.invoke(app, ["models", "download", "dl-test"])
    assert res.exit_code == 2 and "changed since it was downloaded" in res.stderr, res.output


@pytest.mark.parametrize("args, needle", [
    (["eval", "--json"], "Option '--json' requires an argument. (see 'csra eval --help')"),
    (["tag", "--no-such-flag", "x.jpg"], "No such option: --no-such-flag (see 'csra tag --help')"),
    (["tag"], "Missing argument 'INPUTS'. (see 'csra tag --help')"),
    (["tagg"], "No such command 'tagg'. Did you mean 'tag'? (see 'csra --help')"),
])
def test_command_line_mistakes_are_one_line(args, needle):
    """Through the installed entry point, not Typer's test runner: Typer would draw a box."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "csra_cli", *args], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {needle}"]


def test_help_without_a_command_and_debug_tracebacks_pass_through_the_entry_point():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "csra_cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=900, env=env)
    bare = run()
    assert bare.returncode == 2 and "tag" in bare.stdout and bare.stderr == ""
    debug = run("--debug", "tag", "/no/such/photo.jpg")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CSRAError" in debug.stderr
    assert "During handling" not in debug.stderr
