"""The torch-free CPU path: export cache keys, the persistent decode pool, int8."""
import json
import os
import shutil
import subprocess
import sys
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
        got_first.wait(timeout=600)  # the consumer must get the first image before this returns
        yield str(make_image(tmp_path / "b.jpg"))

    seen = []
    with DecodePool(pre, 1) as pool:
        for _, paths, batch, errors, _ in stream_batches(slow_paths(), pre, 16, pool=pool):
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
            assert [p for _, ps, _, _, _ in out for p in ps] == paths
            assert [i for idx, *_ in out for i in idx] == list(range(8))
            errors = [e for _, _, _, es, _ in out for e in es]
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


def test_int8_recipe_keeps_the_image_layers_and_the_head_in_fp32(tmp_path, tiny_model_path):
    """7-bit weights everywhere they are quantised; the convolutions up to the smallest feature
    map at a quarter of the input size or more (ResNet's stem and layer1's first) and the whole
    CSRA head stay fp32 (benchmarks/RESULTS.md: each step
    measured on VOC val)."""
    pytest.importorskip("onnxruntime.quantization")
    import onnx
    from onnx import numpy_helper

    from csra_cli.engine.quantize import fp32_nodes, quantize_int8
    from csra_cli.engine.runners import cached_onnx
    from csra_cli.models.loading import load_model

    model = load_model(str(tiny_model_path))
    fp32 = cached_onnx(model, tiny_model_path)
    graph = onnx.load(fp32).graph
    kept = set(fp32_nodes(onnx.load(fp32)))
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs[0].name in kept and convs[0].input[1] == "backbone.conv1.weight"  # 64 px in, 32 px out
    head = [n.name for n in graph.node if any(i.startswith("classifier.") for i in n.input)]
    assert head and set(head) <= kept and graph.node[-1].name in kept
    # after the max-pool, layer1's convolutions give 64 x 16 x 16 maps: the first of them ends the fp32 part
    backbone_kept = [n.input[1] for n in convs if n.name in kept and n.input[1].startswith("backbone.")]
    assert backbone_kept == ["backbone.conv1.weight", "backbone.layer1.0.conv1.weight"]

    images = [str(make_image(tmp_path / f"{i}.jpg", color=(40 * i, 90, 200 - 20 * i))) for i in range(4)]
    out = tmp_path / "tiny-int8.onnx"
    quantize_int8(fp32, out, model.card, images, key="k")
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    int8_weights = [a for a in inits.values() if a.dtype == np.int8 and a.ndim == 4]
    assert int8_weights and max(int(np.abs(a).max()) for a in int8_weights) <= 64  # reduce_range: 7 bits
    qconvs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert qconvs[0].input[1] == "backbone.conv1.weight" and inits[qconvs[0].input[1]].dtype == np.float32
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["csra_export_key"] == "k" and "reduce_range" in json.loads(meta["csra_quantization"])["weights"]


def test_shipped_int8_exports_belong_to_the_shipped_weights():
    """Each shipped model has its int8 export beside it, made from these weights by this
    version's recipe (re-make them with 'csra export --onnx --int8' when either changes)."""
    import onnx

    from csra_cli.engine.quantize import RECIPE
    from csra_cli.engine.runners import export_key
    from csra_cli.models import registry
    from csra_cli.models.card import ModelCard, model_files

    shipped = [e for e in registry.entries() if e["kind"] == "shipped"]
    assert shipped
    for e in shipped:
        weights, card_file = files = model_files(registry.weights_dir() / e["file"])
        card = ModelCard.load(card_file)
        path = files.int8
        if e["classes"] != "voc" and not path.is_file():  # the ImageNet model ships without one (yet)
            continue
        assert path.is_file(), f"{path.name} missing"
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert meta["csra_export_key"] == export_key(weights, card, "int8")
        record = json.loads(meta["csra_quantization"])
        assert record["recipe"] == RECIPE and record["images"] >= 100 and meta["csra_precision"] == "int8"
        assert json.loads(meta["csra_card"])["input_size"] == card.input_size


def test_int8_of_the_shipped_model_runs_without_calibration_or_torch(tmp_path, isolated_home):
    """A fresh machine (empty cache): --precision int8 uses the export shipped beside the weights,
    imports no torch, and tags a photo as fp32 does."""
    photo = (sorted((VOC / "VOC2007" / "JPEGImages").glob("*.jpg"))[:1] if VOC.is_dir() else None)
    photo = str(photo[0] if photo else make_image(tmp_path / "a.jpg", size=(320, 240)))
    probe = ("import sys, runpy\n"
             f"sys.argv = ['csra', 'tag', {photo!r}, '-q', '--scores', '--precision', sys.argv[1]]\n"
             "try:\n    runpy.run_module('csra_cli', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('LOADED:' + ','.join(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules), code,"
             " file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "CSRA_BACKEND"}
    res = subprocess.run([sys.executable, "-c", probe, "int8"], capture_output=True, text=True, env=env, timeout=900)
    assert res.stderr.strip().splitlines()[-1] == "LOADED: 0", res.stderr
    assert not list((isolated_home / "onnx").glob("*.onnx"))  # nothing exported or quantised here
    int8 = json.loads(res.stdout)
    ref = json.loads(subprocess.run([sys.executable, "-m", "csra_cli", "tag", photo, "-q", "--scores", "--backend",
                                     "torch"], capture_output=True, text=True, env=env, timeout=900).stdout)
    assert int8["tags"] == ref["tags"]
    assert max(abs(int8["scores"][c] - ref["scores"][c]) for c in ref["scores"]) < 0.1


def test_an_int8_export_beside_other_weights_is_not_used(tmp_path, tiny_model_path, monkeypatch, capfd):
    """NAME.int8.onnx that was not made from NAME.safetensors (here: no export key at all) is
    passed over with a warning; without a cached one, int8 asks for calibration."""
    from csra_cli.engine import runners
    from csra_cli.engine.runners import cached_onnx, make_runner
    from csra_cli.models.card import model_files
    from csra_cli.errors import CSRAError
    from csra_cli.models.loading import load_model

    weights = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_model_path, weights)
    shutil.copy(tiny_model_path.with_suffix(".json"), weights.with_suffix(".json"))
    shutil.copy(cached_onnx(load_model(str(weights)), weights), model_files(weights).int8)
    monkeypatch.delenv("CSRA_BACKEND")
    opened = []
    real_cpu_runner = runners.cpu_runner
    monkeypatch.setattr(runners, "cpu_runner", lambda path, card: opened.append(path) or real_cpu_runner(path, card))
    for _ in range(2):
        with pytest.raises(CSRAError, match="--calibrate-on"):
            make_runner(str(weights), "auto", "cpu", "int8")
    assert capfd.readouterr().err.count("tiny.int8.onnx does not match tiny (tiny.safetensors)") == 1  # said once
    assert opened == [model_files(weights).int8]  # and opened once, not again by the fallback or the next run


def test_a_matching_int8_beside_the_weights_is_used_and_the_users_own_calibration_wins(tmp_path, tiny_model_path,
                                                                                        monkeypatch):
    import onnx

    from csra_cli.engine.runners import cache_path, cached_onnx, export_key, make_runner
    from csra_cli.models.card import ModelCard, model_files
    from csra_cli.models.loading import load_model

    monkeypatch.delenv("CSRA_BACKEND")
    weights = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_model_path, weights)
    shutil.copy(tiny_model_path.with_suffix(".json"), weights.with_suffix(".json"))
    card = ModelCard.load(weights.with_suffix(".json"))
    proto = onnx.load(cached_onnx(load_model(str(weights)), weights))  # stands in for an int8 graph
    for k, v in {"csra_precision": "int8", "csra_export_key": export_key(weights, card, "int8")}.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(model_files(weights).int8))
    from csra_cli.errors import CSRAError

    with pytest.raises(CSRAError, match="--calibrate-on"):  # another lambda: another graph, refused ...
        make_runner(str(weights), "auto", "cpu", "int8", lam=card.lam + 0.37)
    runner = make_runner(str(weights), "auto", "cpu", "int8")  # ... which does not refuse it for the card's
    assert runner.path == str(model_files(weights).int8)
    from csra_cli.engine.tagging import record_stamp

    assert record_stamp(runner)["model"] == "tiny+int8"  # records say which precision tagged them
    cached = cache_path(weights, card, "int8")  # what 'csra export --onnx --int8 --calibrate-on' leaves
    shutil.copy(model_files(weights).int8, cached)
    assert make_runner(str(weights), "auto", "cpu", "int8").path == str(cached)


def test_a_damaged_int8_beside_the_weights_is_one_warning_not_a_crash(tmp_path, tiny_model_path, monkeypatch, capfd):
    from csra_cli.engine.runners import make_runner
    from csra_cli.models.card import model_files
    from csra_cli.errors import CSRAError

    monkeypatch.delenv("CSRA_BACKEND")
    weights = tmp_path / "broken.safetensors"
    shutil.copy(tiny_model_path, weights)
    shutil.copy(tiny_model_path.with_suffix(".json"), weights.with_suffix(".json"))
    model_files(weights).int8.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(CSRAError, match="--calibrate-on"):
        make_runner(str(weights), "auto", "cpu", "int8")
    assert "broken.int8.onnx cannot be loaded" in capfd.readouterr().err


def test_cpu_lanes_score_every_image_as_one_thread_does(tiny_model_path, monkeypatch):
    """Lanes (one image per core at a time) give each image exactly the scores of a one-thread run,
    in the batch's order; a one-image batch runs inline. CSRA_CPU_PARALLELISM picks the mode."""
    from csra_cli.engine import runners
    from csra_cli.errors import CSRAError
    from csra_cli.models.loading import load_model

    model = load_model(str(tiny_model_path))
    path = runners.cached_onnx(model, tiny_model_path)
    one = runners.OnnxRunner(path, "cpu", threads=1, card=model.card)
    lanes = runners.OnnxRunner(path, "cpu", threads=1, card=model.card, lanes=3)
    batch = np.random.default_rng(0).integers(0, 256, (7, 3, 64, 64), dtype=np.uint8)
    assert lanes(batch[:1]).shape == (1, 20) and lanes._pool is None
    np.testing.assert_array_equal(lanes(batch), one(batch))
    assert lanes._pool is not None
    assert len({tuple(row) for row in one(batch).round(6)}) == 7  # distinct images, so order is checked
    monkeypatch.setenv("CSRA_CPU_PARALLELISM", "threads")
    assert runners.cpu_runner(path, model.card).lanes == 1
    monkeypatch.delenv("CSRA_CPU_PARALLELISM")
    assert runners.cpu_runner(path, model.card).lanes == min(runners.cpu_cores(), runners.MAX_CPU_LANES)
    monkeypatch.setattr(runners, "cpu_cores", lambda: 12)  # lanes beyond 4 share the cores as threads
    assert (runners.cpu_runner(path, None).lanes, runners.cpu_runner(path, None).session.get_session_options()
            .intra_op_num_threads) == (4, 3)
    monkeypatch.setenv("CSRA_CPU_PARALLELISM", "many")
    with pytest.raises(CSRAError, match="use lanes or threads"):
        runners.cpu_runner(path, model.card)


def test_pools_are_sized_from_the_cores_this_process_may_use(monkeypatch):
    """taskset or a container's CPU set: the decode workers follow the affinity (as the lanes do),
    not the machine's core count (os.cpu_count), which would oversubscribe the allowed cores."""
    import os

    from csra_cli.cli.common import default_workers
    from csra_cli.cpu import cpu_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert (cpu_cores(), default_workers()) == (1, 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)
    assert (cpu_cores(), default_workers()) == (3, 2)
