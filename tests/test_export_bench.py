import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from csra_cli import load_model
from csra_cli.cli import app
from csra_cli.engine.export import export_onnx, verify_onnx

from .conftest import FIXTURES, make_image, needs_shared

runner = CliRunner()
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("heads", [1, 2, 4, 6, 8])
def test_every_head_setting_exports_and_matches(tmp_path, heads):
    from csra_cli.models.card import ModelCard
    from csra_cli.models.csra import create_model

    card = ModelCard("h", "resnet18", heads, 0.4, [f"c{i}" for i in range(5)], input_size=64)
    torch.manual_seed(heads)
    model = create_model("resnet18", 5, heads, 0.4, card=card).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    result = verify_onnx(model, path)
    assert result["ok"] and result["max_abs_diff"] <= 1e-4


def test_cli_export_metadata_and_onnx_backend_gives_the_same_tags(tmp_path, tiny_model_path, image_folder):
    out = tmp_path / "tiny.onnx"
    res = runner.invoke(app, ["export", "--onnx", "-m", str(tiny_model_path), "-o", str(out), "--dynamic-size",
                              "--verify-image", str(image_folder / "a.jpg")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "max |Δlogit|" in res.stderr and ": ok" in res.stderr
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    card = json.loads(meta["csra_card"])
    assert card["classes"][0] == "aeroplane" and card["input_size"] == 64 and json.loads(meta["classes"])[1] == "bicycle"
    a = runner.invoke(app, ["tag", str(image_folder), "-m", str(tiny_model_path), "-q", "--scores"])
    b = runner.invoke(app, ["tag", str(image_folder), "--backend", "onnx", "-m", str(out), "-q", "--scores"])
    assert a.exit_code == b.exit_code == 0
    ra, rb = [list(map(json.loads, r.stdout.splitlines())) for r in (a, b)]
    assert [r["tags"] for r in ra] == [r["tags"] for r in rb]
    for x, y in zip(ra, rb):
        assert max(abs(x["scores"][c] - y["scores"][c]) for c in x["scores"]) < 1e-4
    plain_onnxruntime_reproduces_csra(out, meta, tmp_path, tiny_model_path)


def plain_onnxruntime_reproduces_csra(path, meta, tmp_path, model_path):
    """Only the metadata and Pillow/numpy: the scores match csra's own (bicubic would not)."""
    import onnxruntime as ort
    from PIL import Image

    assert meta["color_order"] == "RGB" and meta["layout"] == "NCHW" and meta["scale"].startswith("1/255")
    assert meta["interpolation"].startswith("bilinear") and meta["resize"] == "squash"
    photo = make_image(tmp_path / "big.png", size=(210, 150))
    size = int(meta["input_size"])

    def scores(resample):
        x = np.asarray(Image.open(photo).convert("RGB").resize((size, size), resample), dtype=np.float32) / 255
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
        if mean is not None:
            x = (x - np.float32(mean)) / np.float32(std)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {sess.get_inputs()[0].name: x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        return 1 / (1 + np.exp(-logits))

    res = runner.invoke(app, ["tag", str(photo), "--backend", "onnx", "-m", str(path), "-q", "--scores"])
    csra = json.loads(res.stdout)["scores"]
    ours = np.array([csra[c] for c in json.loads(meta["classes"])])
    assert np.abs(scores(Image.BILINEAR) - ours).max() < 2e-6
    assert np.abs(scores(Image.BICUBIC) - ours).max() > 1e-5


def test_torchscript_export(tmp_path, tiny_model_path):
    res = runner.invoke(app, ["export", "--torchscript", "-m", str(tiny_model_path), "-o", str(tmp_path / "m.pt")],
                        catch_exceptions=False)
    assert res.exit_code == 0 and "torchscript" in res.stderr
    extra = {"csra_card.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["csra_card.json"])["name"] == "tiny"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), load_model(str(tiny_model_path))(x), atol=1e-5)


@needs_shared
def test_official_layout_resnet_exports(tmp_path):
    from csra_cli.models.loading import load_official

    model = load_official(FIXTURES / "resnet18_csra_heads4_lam0.5_20cls_fp16.pth", lam=0.5, classes="voc",
                          input_size=224)
    result = verify_onnx(model, export_onnx(model, tmp_path / "r18.onnx"))
    assert result["ok"], result


def test_export_needs_a_format():
    res = runner.invoke(app, ["export"])
    assert res.exit_code == 2 and "--onnx" in res.stderr


def test_bench_synthetic_prints_valid_json(tiny_model_path):
    res = runner.invoke(app, ["bench", "-m", str(tiny_model_path), "--synthetic", "8", "--json", "-b", "4"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    for key in ("model_only", "end_to_end", "demo_style", "val_style"):
        assert r[key]["images_per_s"] > 0
    assert r["ratios"]["end_to_end_vs_demo"] > 0 and r["peak_rss_mb"] > 0
    assert r["tags_same_as_exact_resize_pct"] >= 0 and r["images"] == 8


def test_auto_backend_uses_a_cached_verified_onnx_on_cpu(monkeypatch, isolated_home, tiny_model_path, image_folder):
    monkeypatch.delenv("CSRA_BACKEND")
    a = runner.invoke(app, ["tag", str(image_folder), "-m", str(tiny_model_path), "-q", "--scores"],
                      catch_exceptions=False)
    cached = list((isolated_home / "onnx").glob("tiny-*.onnx"))
    assert a.exit_code == 0 and len(cached) == 1
    assert "preparing the model for onnxruntime (one-time export" in a.stderr  # ~30 s of silence before
    stamp = cached[0].stat().st_mtime_ns
    b = runner.invoke(app, ["tag", str(image_folder), "-m", str(tiny_model_path), "-q", "--scores",
                            "--backend", "torch"], catch_exceptions=False)
    ra, rb = [list(map(json.loads, r.stdout.splitlines())) for r in (a, b)]
    assert [r["tags"] for r in ra] == [r["tags"] for r in rb]
    for x, y in zip(ra, rb):
        assert max(abs(x["scores"][c] - y["scores"][c]) for c in x["scores"]) < 1e-4
    c = runner.invoke(app, ["tag", str(image_folder), "-m", str(tiny_model_path), "-q"], catch_exceptions=False)
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not exported again
    assert "one-time export" not in c.stderr


def test_a_failed_export_is_one_line_and_leaves_nothing(tmp_path, tiny_model_path, monkeypatch):
    """An exporter or onnxruntime error (the fp16 + dynamic-size Cast mismatch) used to end in a
    traceback and leave the broken .onnx behind for 'tag --model' to trip on."""
    import csra_cli.engine.export as engine_export

    def broken(model, path, *args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Type Error: Type (tensor(float16)) of output arg "
                           "(x) of node (Cast_1) does not match expected type (tensor(float)).\nmore detail")

    monkeypatch.setattr(engine_export, "verify_onnx", broken)
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", "--onnx", "-m", str(tiny_model_path), "-o", str(out), "--fp16",
                              "--dynamic-size"])
    assert res.exit_code == 1 and "onnx export failed, nothing written" in res.stderr and "Cast_1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(engine_export, "verify_onnx", lambda *a, **k: {"ok": False, "max_abs_diff": 1.0,
                                                                       "tolerance": 1e-4, "inputs": 2})
    res = runner.invoke(app, ["export", "--onnx", "-m", str(tiny_model_path), "-o", str(out)])
    assert res.exit_code == 1 and "nothing written" in res.stderr and list(tmp_path.iterdir()) == []


def test_dynamic_size_fp16_export_of_an_efficientnet_runs(tmp_path):
    """EfficientNet-Lite's "same" paddings make shape arithmetic in a dynamic-size graph: the fp16
    export must keep it in fp32 (onnxruntime refused the model), and torch.export must not be
    used for it (its symbolic shape reasoning ran for over 15 minutes)."""
    import onnxruntime as ort

    from csra_cli.models.card import ModelCard
    from csra_cli.models.checkpoint import save_csra
    from csra_cli.models.csra import create_model

    torch.manual_seed(0)
    card = ModelCard("lite-tiny", "efficientnet_lite0", 2, 0.1, [f"c{i}" for i in range(5)], input_size=96,
                     mean=[0.5] * 3, std=[0.5] * 3)
    weights = save_csra(create_model("efficientnet_lite0", 5, 2, 0.1, card=card), card, tmp_path / "lite.safetensors")
    out = tmp_path / "lite-dyn16.onnx"
    res = runner.invoke(app, ["export", "--onnx", "--dynamic-size", "--fp16", "-m", str(weights), "-o", str(out)],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for size in (96, 128):  # another size than the exported one runs too
        x = np.random.rand(1, 3, size, size).astype(np.float16)
        assert session.run(None, {"images": x})[0].shape == (1, 5)


def test_int8_against_fp32_alternates_and_takes_the_median_ratio():
    """A machine that slows down half-way (as ours did) must not bias the ratio: each round times
    both precisions back to back."""
    import time as clock
    from types import SimpleNamespace

    from csra_cli.engine.bench import bench_int8_vs_fp32

    slow = {"factor": 1.0}

    class Fake:
        card = SimpleNamespace(input_size=8)

        def __init__(self, seconds):
            self.seconds = seconds

        def __call__(self, batch):
            clock.sleep(self.seconds * slow["factor"])
            slow["factor"] *= 1.3  # the machine keeps slowing down
            return np.zeros((len(batch), 20), np.float32)

    out = bench_int8_vs_fp32({"fp32": Fake(0.02), "int8": Fake(0.01)}, batch_size=2, rounds=4)
    assert len(out["model_only_fp32"]["rounds"]) == len(out["model_only_int8"]["rounds"]) == 4
    # truly 2x: rounds alternate 2/1.3 and 2*1.3 (ABBA); timing all fp32 first would give < 0.5
    assert 1.8 < out["int8_vs_fp32_model_only"] < 2.3
