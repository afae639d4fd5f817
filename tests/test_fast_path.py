"""The torch-free CPU path: export cache keys, the persistent decode pool, int8."""
import shutil
import threading
import time

import numpy as np
import pytest

from csra_cli.data.loader import DecodePool, stream_batches
from csra_cli.data.preprocess import Preprocess

from .conftest import VOC, make_image, needs_voc


def test_a_changed_weight_file_gets_a_new_export_key(tmp_path, tiny_model_path):
    from csra_cli.engine.runners import cache_path
    from csra_cli.models.card import ModelCard

    weights = tmp_path / "m.safetensors"
    shutil.copy(tiny_model_path, weights)
    card = ModelCard.load(tiny_model_path.with_suffix(".json"))
    before = cache_path(weights, card)
    assert cache_path(weights, card) == before  # stable (and remembered by size and mtime)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other weights
    weights.write_bytes(bytes(data))
    after = cache_path(weights, card)
    assert after != before and after.name.startswith("tiny-")
    card.lam = 0.9  # a card field that shapes the graph
    assert cache_path(weights, card) != after
    assert cache_path(weights, card, "int8") != cache_path(weights, card)


def test_records_flow_while_a_slow_stdin_is_still_open(tmp_path):
    """A partial batch goes out when the source pauses: one path in, its batch out, before more come."""
    pre = Preprocess(32)
    first = str(make_image(tmp_path / "a.jpg"))
    got_first = threading.Event()

    def slow_paths():
        yield first
        got_first.wait(timeout=20)  # the consumer must get the first image before this returns
        yield str(make_image(tmp_path / "b.jpg"))

    seen = []
    with DecodePool(pre, 1) as pool:
        for _, paths, batch, errors in stream_batches(slow_paths(), pre, 16, pool=pool):
            seen.append((paths, time.monotonic()))
            got_first.set()
            assert batch.dtype == np.uint8 and batch.shape == (len(paths), 3, 32, 32) and errors == [""] * len(paths)
    assert [p for p, _ in seen] == [[first], [str(tmp_path / "b.jpg")]]


def test_one_pool_serves_many_streams_in_order_with_errors(tmp_path):
    pre = Preprocess(16)
    paths = [str(make_image(tmp_path / f"{i}.png", size=(20, 20))) for i in range(7)]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(3, str(tmp_path / "bad.jpg"))
    with DecodePool(pre, 2) as pool:
        for _ in range(2):
            out = list(stream_batches(iter(paths), pre, 3, pool=pool))
            assert [p for _, ps, _, _ in out for p in ps] == paths
            assert [i for idx, _, _, _ in out for i in idx] == list(range(8))
            errors = [e for _, _, _, es in out for e in es]
            assert errors[3] and not any(errors[:3] + errors[4:])


@needs_voc
def test_int8_agrees_with_fp32_on_real_images(tmp_path, tiny_model_path):
    """Calibrated on VOC train photos, the int8 graph takes the same tag decisions as fp32 on
    >= 98% of image-class pairs of VOC val photos."""
    pytest.importorskip("onnxruntime.quantization")
    import json

    import onnx

    from csra_cli.engine.quantize import agreement, quantize_int8
    from csra_cli.engine.runners import OnnxRunner, cached_onnx
    from csra_cli.models.loading import load_model

    root = VOC / "VOC2007"
    ids = (root / "ImageSets/Main/train.txt").read_text().split()[::100][:16]
    val = (root / "ImageSets/Main/val.txt").read_text().split()[::40][:24]
    model = load_model(str(tiny_model_path))
    fp32 = cached_onnx(model, tiny_model_path)
    out = tmp_path / "tiny-int8.onnx"
    record = quantize_int8(fp32, out, model.card, [str(root / "JPEGImages" / f"{i}.jpg") for i in ids], "VOC train")
    assert record["images"] == 16 and record["method"] and record["format"] == "QDQ"
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["csra_quantization"])["images"] == 16 and meta["csra_precision"] == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    a, b = OnnxRunner(fp32, "cpu", card=model.card), OnnxRunner(str(out), "cpu", card=model.card)
    assert b.precision == "int8"
    batch = np.stack([a.pre.load(root / "JPEGImages" / f"{i}.jpg") for i in val])
    pa, pb = a(batch), b(batch)
    assert agreement(pa, pb, np.array(model.card.class_thresholds())) >= 98.0
