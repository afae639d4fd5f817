import functools
import hashlib
import http.server
import json
import threading

import pytest
import torch
from typer.testing import CliRunner

from csra_cli import load_model
from csra_cli.cli import app
from csra_cli.models.download import download
from csra_cli.errors import DownloadError
from csra_cli.models.csra import create_model

from .conftest import FIXTURES, needs_shared

runner = CliRunner()


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served (never the live web)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _official_like_checkpoint(path):
    torch.manual_seed(0)
    torch.save(create_model("resnet18", 20, 1, 0.1).state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry(tmp_path, monkeypatch, url, sha):
    reg = {"default": "dl-test", "models": [{
        "name": "dl-test", "kind": "official", "file": "dl_test.pth", "url": url, "sha256": sha,
        "arch": "resnet18", "num_heads": 1, "lam": 0.1, "classes": "voc", "input_size": 448, "mean": None,
        "std": None, "metrics": {"mAP": 12.3}}]}
    (tmp_path / "registry.json").write_text(json.dumps(reg))
    monkeypatch.setenv("CSRA_REGISTRY", str(tmp_path / "registry.json"))


def test_download_verifies_sha256_and_loads_by_name(tmp_path, monkeypatch, file_server, isolated_home):
    root, base = file_server
    sha = _official_like_checkpoint(root / "dl_test.pth")
    _registry(tmp_path, monkeypatch, f"{base}/dl_test.pth", sha)
    res = runner.invoke(app, ["models"], catch_exceptions=False)
    assert res.exit_code == 0 and "dl-test" in res.stdout
    listed = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert listed[0]["installed"] is None
    res = runner.invoke(app, ["tag", str(tmp_path), "-m", "dl-test"])
    assert res.exit_code == 2 and "csra models download dl-test" in res.stderr
    res = runner.invoke(app, ["models", "download", "dl-test"], catch_exceptions=False)
    assert res.exit_code == 0 and "verified sha256" in res.stderr
    assert (isolated_home / "dl_test.pth").read_bytes() == (root / "dl_test.pth").read_bytes()
    model = load_model("dl-test")
    assert model.card.arch == "resnet18" and model.card.classes[0] == "aeroplane"
    info = json.loads(runner.invoke(app, ["models", "info", "dl-test"]).stdout)
    assert info["installed"].endswith("dl_test.pth")


def test_corrupt_download_keeps_nothing(tmp_path, monkeypatch, file_server, isolated_home):
    root, base = file_server
    _official_like_checkpoint(root / "dl_test.pth")
    _registry(tmp_path, monkeypatch, f"{base}/dl_test.pth", "0" * 64)
    res = runner.invoke(app, ["models", "download", "dl-test"])
    assert res.exit_code == 2 and "corrupt" in res.stderr
    assert not list(isolated_home.glob("*dl_test*"))
    res = runner.invoke(app, ["models", "download", "dl-test", "--url", f"{base}/missing.pth"])
    assert res.exit_code == 2 and "failed" in res.stderr


def test_download_without_a_known_digest_says_so(tmp_path, file_server):
    root, base = file_server
    (root / "f.bin").write_bytes(b"abc")
    got = download(f"{base}/f.bin", tmp_path / "out" / "f.bin", None)
    assert got == hashlib.sha256(b"abc").hexdigest() and (tmp_path / "out" / "f.bin").read_bytes() == b"abc"
    with pytest.raises(DownloadError):
        download(f"{base}/f.bin", tmp_path / "out" / "g.bin", "1" * 64)
    assert not (tmp_path / "out" / "g.bin").exists()


def test_file_url_download(tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights")
    assert download(src.as_uri(), tmp_path / "c" / "w.bin") == hashlib.sha256(b"weights").hexdigest()


@needs_shared
def test_import_official_checkpoint_then_use_it_by_name(tmp_path):
    src = FIXTURES / "resnet18_csra_heads4_lam0.5_20cls_fp16.pth"
    res = runner.invoke(app, ["models", "import", str(src), "--lam", "0.5", "--classes", "voc", "--name", "r18"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    io = torch.load(FIXTURES / "resnet18_csra_heads4_lam0.5_20cls_io.pt", weights_only=True)
    model = load_model("r18")
    assert model.card.num_heads == 4 and model.card.lam == 0.5
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() < 1e-4
    assert "r18" in runner.invoke(app, ["models"]).stdout


def test_shipped_registry_lists_official_releases():
    res = runner.invoke(app, ["models", "--json"], catch_exceptions=False)
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["resnet101-voc07"]["heads"] == 1 and rows["resnet101-voc07"]["mAP"] == 94.7
    assert rows["resnet101-coco"]["heads"] == 4 and rows["resnet-cut-coco"]["heads"] == 6
    assert rows["vit-b16-wider"]["arch"] == "vit_b16"


def test_models_table_never_cuts_names_and_json_has_the_whole_registry():
    from csra_cli.models import registry

    res = runner.invoke(app, ["models"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert res.exit_code == 0 and "…" not in res.stdout
    assert max(map(len, res.stdout.splitlines())) <= 80
    for e in registry.entries():
        assert f" {e['name']} " in res.stdout, e["name"]
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "--json"]).stdout)}
    for e in registry.entries():
        assert {k: rows[e["name"]][k] for k in e} == e  # every registry field, for scripts


def test_listed_sizes_use_the_decimal_units_of_export_and_the_readme():
    from csra_cli.cli.models import _size

    assert _size(9_824_320) == "9.8 MB" and _size(5_713_339) == "5.7 MB"
    assert _size(999) == "999 B" and _size(1_500) == "1.5 KB" and _size(None) == "?"
