"""--precision auto on the CPU (int8 where its check passes), and what makes a run start fast:
the saved optimised onnxruntime graph, decode workers started in the background, the imports."""
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from .conftest import REPO, make_image


def _model_with_int8(tmp_path, tiny_model_path, check: dict | None):
    """The tiny model copied into tmp_path with an int8 file beside it (its fp32 graph stamped as
    int8 for this model: a real quantisation is tested elsewhere) and ``check`` in its card."""
    import onnx

    from csra_cli.engine.runners import cached_onnx, export_key
    from csra_cli.models.card import ModelCard, model_files
    from csra_cli.models.loading import load_model

    weights = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_model_path, weights)
    card = json.loads(tiny_model_path.with_suffix(".json").read_text())
    card["int8_check"] = check or {}
    weights.with_suffix(".json").write_text(json.dumps(card))
    proto = onnx.load(cached_onnx(load_model(str(weights)), weights))
    key = export_key(weights, ModelCard.load(weights.with_suffix(".json")), "int8")
    for k, v in {"csra_precision": "int8", "csra_export_key": key}.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(model_files(weights).int8))
    return weights


@pytest.mark.parametrize("check,expected", [
    ({"fp32_mAP": 91.83, "int8_mAP": 91.63}, "int8"),   # the shipped default's: -0.20
    ({"fp32_mAP": 91.83, "int8_mAP": 91.50}, "fp32"),   # -0.33: over the 0.3 allowed
    (None, "fp32"),                                      # never checked
    ({"fp32_mAP": 91.0}, "fp32"),                        # half a check
], ids=["within-0.3", "over-0.3", "no-check", "broken-check"])
def test_auto_runs_int8_only_where_its_check_passes(tmp_path, tiny_model_path, monkeypatch, check, expected):
    from csra_cli.engine.runners import make_runner
    from csra_cli.engine.tagging import record_stamp
    from csra_cli.models.card import model_files

    monkeypatch.delenv("CSRA_BACKEND")
    weights = _model_with_int8(tmp_path, tiny_model_path, check)
    runner = make_runner(str(weights), "auto", "cpu", "auto")
    assert runner.precision == expected
    assert (runner.path == str(model_files(weights).int8)) == (expected == "int8")
    assert record_stamp(runner)["model"] == "tiny" + ("+int8" if expected == "int8" else "")
    assert make_runner(str(weights), "auto", "cpu", "fp32").precision == "fp32"  # fp32 as asked, always


def test_a_cached_int8_counts_only_with_its_own_check(tmp_path, tiny_model_path, monkeypatch):
    """The card's check is of the int8 file shipped beside it; the user's own calibration (in the
    cache, preferred by --precision int8) needs the check 'export --int8 --dataset' keeps with it."""
    from csra_cli.engine.runners import cache_path, int8_check_path, make_runner
    from csra_cli.models.card import ModelCard, model_files

    monkeypatch.delenv("CSRA_BACKEND")
    weights = _model_with_int8(tmp_path, tiny_model_path, {"fp32_mAP": 91.83, "int8_mAP": 91.63})
    cached = cache_path(weights, ModelCard.load(weights.with_suffix(".json")), "int8")
    shutil.copy(model_files(weights).int8, cached)
    assert make_runner(str(weights), "auto", "cpu", "auto").precision == "fp32"
    int8_check_path(cached).write_text(json.dumps({"fp32_mAP": 50.0, "int8_mAP": 49.9}))
    runner = make_runner(str(weights), "auto", "cpu", "auto")
    assert runner.precision == "int8" and runner.path == str(cached)


def test_export_int8_with_a_dataset_keeps_its_check_and_auto_follows_it(tmp_path, tiny_model_path, monkeypatch):
    from typer.testing import CliRunner

    from csra_cli.cli import app
    from csra_cli.engine.runners import INT8_MAX_DROP, cache_path, int8_check_path, make_runner
    from csra_cli.models.card import ModelCard

    monkeypatch.delenv("CSRA_BACKEND")
    folder = tmp_path / "photos"
    rows = ["path,tags"]
    for i in range(12):
        p = make_image(folder / f"p{i}.jpg", size=(80, 60), color=(30 * i % 255, 90, 200))
        rows.append(f"{p},{['dog', 'cat;person', 'car'][i % 3]}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    res = CliRunner().invoke(app, ["export", "--onnx", "--int8", "-m", str(tiny_model_path), "--calibrate-on",
                                   str(folder), "--dataset", "csv", "--labels", str(labels),
                                   "--out", str(tmp_path / "t8.onnx")])
    assert res.exit_code == 0, res.output
    cached = cache_path(tiny_model_path, ModelCard.load(tiny_model_path.with_suffix(".json")), "int8")
    check = json.loads(int8_check_path(cached).read_text())
    assert check["images"] == 12 and {"fp32_mAP", "int8_mAP", "dataset"} <= set(check)
    passes = check["fp32_mAP"] - check["int8_mAP"] <= INT8_MAX_DROP
    assert make_runner(str(tiny_model_path), "auto", "cpu", "auto").precision == ("int8" if passes else "fp32")
    assert "int8 check on" in res.output
    # a new calibration without --dataset drops the old check: it described another graph
    res = CliRunner().invoke(app, ["export", "--onnx", "--int8", "-m", str(tiny_model_path), "--calibrate-on",
                                   str(folder), "--out", str(tmp_path / "t8b.onnx")])
    assert res.exit_code == 0 and not int8_check_path(cached).exists()
    assert make_runner(str(tiny_model_path), "auto", "cpu", "auto").precision == "fp32"


def test_export_dataset_without_int8_is_refused(tiny_model_path):
    from typer.testing import CliRunner

    from csra_cli.cli import app

    res = CliRunner().invoke(app, ["export", "--onnx", "-m", str(tiny_model_path), "--dataset", "voc"])
    assert res.exit_code == 2 and "--dataset checks an int8 export" in res.output


def test_the_optimised_graph_is_saved_once_and_gives_the_same_outputs(tmp_path, tiny_model_path):
    import onnxruntime as ort

    from csra_cli.engine.ort_session import cpu_session, optimized_path
    from csra_cli.engine.runners import cached_onnx
    from csra_cli.models.loading import load_model

    source = cached_onnx(load_model(str(tiny_model_path)), tiny_model_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    x = {"input": np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)}
    saved = optimized_path(source)
    assert not saved.exists()
    first = cpu_session(source, opts, ["CPUExecutionProvider"])
    name = first.get_inputs()[0].name
    assert saved.is_file()
    stamp = saved.stat().st_mtime_ns
    second = cpu_session(source, opts, ["CPUExecutionProvider"])
    assert saved.stat().st_mtime_ns == stamp  # read, not written again
    ref = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"]).run(None, {name: x["input"]})[0]
    np.testing.assert_allclose(second.run(None, {name: x["input"]})[0], ref, atol=1e-5)
    saved.write_bytes(b"not an onnx file")  # damaged: made again from the source, not a crash
    third = cpu_session(source, opts, ["CPUExecutionProvider"])
    np.testing.assert_allclose(third.run(None, {name: x["input"]})[0], ref, atol=1e-5)
    assert saved.stat().st_size > 100
    shutil.copy(source, tmp_path / "other.onnx")  # another file: another copy
    assert optimized_path(str(tmp_path / "other.onnx")) != saved


def test_decode_processes_start_only_for_a_second_batch(tmp_path, monkeypatch):
    import psutil

    from csra_cli.data.loader import DecodePool, decode_batch
    from csra_cli.data.preprocess import Preprocess

    monkeypatch.setenv("CSRA_DECODE", "processes")
    pre = Preprocess(32)
    paths = [str(make_image(tmp_path / f"i{i}.png")) for i in range(6)]
    with DecodePool(pre, 1) as pool:
        one = pool.submit(paths[:2]).result()
        assert not psutil.Process().children(recursive=True)  # one batch: no process started
        np.testing.assert_array_equal(one[0], decode_batch(pre, paths[:2])[0])
        futures = [pool.submit(paths[i:i + 2]) for i in (2, 4, 0)]
        assert [f.result()[0].tolist() for f in futures] == [decode_batch(pre, paths[i:i + 2])[0].tolist()
                                                             for i in (2, 4, 0)]
        deadline = time.time() + 600
        while not pool._ready.is_set() and time.time() < deadline:  # an event: the workers are up
            time.sleep(0.02)
        assert pool._ready.is_set() and psutil.Process().children(recursive=True)
        np.testing.assert_array_equal(pool.submit(paths[:2]).result()[0], one[0])  # now through a worker


def test_scored_batches_keep_the_order_and_queue_work_ahead(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from csra_cli.data.loader import Decoded, scored_batches

    class Card:
        classes = ["a", "b"]

    class Runner:
        card = Card()

        def __init__(self):
            self.pool, self.queued = ThreadPoolExecutor(2), []

        def submit(self, images):
            self.queued.append(int(images[0, 0, 0, 0]))
            return self.pool.submit(lambda: np.repeat(images[:, :1, 0, 0].astype(np.float32), 2, axis=1))

    def batch(k, errors):
        images = np.full((len(errors), 3, 2, 2), k, dtype=np.uint8)
        return Decoded(list(range(len(errors))), [f"{k}-{i}" for i in range(len(errors))], images, errors, None)

    runner = Runner()
    batches = [batch(1, ["", ""]), batch(2, ["bad", "bad"]), batch(3, ["", "bad"]), batch(4, [""])]
    seen = []
    for decoded, probs in scored_batches(runner, batches):
        seen.append((decoded.paths[0], probs[:, 0].tolist()))
        if decoded.paths[0] == "3-0":
            assert runner.queued == [1, 3, 4]  # batch 4 was queued before batch 3 was handed out
    assert seen == [("1-0", [1.0, 1.0]), ("2-0", []), ("3-0", [3.0]), ("4-0", [4.0])]


def test_a_one_image_tag_imports_only_what_it_uses(tmp_path, tiny_model_path):
    """Start-up is the imports: `csra tag` loads its own command only, and no rich, urllib or
    torch when the export is cached and nothing is drawn."""
    image = make_image(tmp_path / "a.jpg")
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr))\n"
             f"sys.argv = ['csra', 'tag', {str(image)!r}, '--out', '-', '-q', '-m', {str(tiny_model_path)!r}]\n"
             "from csra_cli.cli import main\nmain()\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "CSRA_HOME": str(tmp_path / "home")}
    for _ in range(2):  # the first run exports the model (torch); the second finds it
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=900)
        assert res.returncode == 0, res.stderr
    loaded = set(res.stderr.split("MODULES", 1)[1].split())
    assert '"path"' in res.stdout or "path" in res.stdout
    unwanted = {"torch", "rich", "rich.console", "urllib.request", "csra_cli.cli.train", "csra_cli.cli.eval",
                "csra_cli.cli.bench", "csra_cli.cli.models", "multiprocessing.pool"}
    assert not loaded & unwanted, sorted(loaded & unwanted)


def test_flip_tta_keeps_its_mirror_when_the_lanes_take_work_ahead(tiny_model_path):
    """scored_batches queues work with runner.submit: TTA's own submit must average in the mirror."""
    from csra_cli.engine.runners import FlipAveraged, cached_onnx, cpu_runner
    from csra_cli.models.loading import load_model

    path = cached_onnx(load_model(str(tiny_model_path)), tiny_model_path)
    runner = FlipAveraged(cpu_runner(path, None))
    batch = np.random.default_rng(3).integers(0, 255, (4, 3, 64, 64), dtype=np.uint8)
    plain = runner.runner(batch)
    np.testing.assert_allclose(runner.submit(batch).result(), runner(batch), atol=1e-6)
    assert not np.allclose(runner.submit(batch).result(), plain)  # the mirror counted


def test_a_short_batch_is_handed_on_without_waiting_for_the_next(tmp_path):
    """A slow source (paths piped in one by one) sends short batches: each is scored and handed
    on before the next is asked for, so its records are written at once."""
    import threading

    from csra_cli.data.loader import Decoded, scored_batches

    class Card:
        classes = ["a"]

    class Runner:
        card = Card()

        def __call__(self, images):
            return np.ones((len(images), 1), dtype=np.float32)

    gate = threading.Event()
    handed = []

    def source():
        yield Decoded([0], ["p0"], np.zeros((1, 3, 2, 2), np.uint8), [""], None)
        assert gate.wait(600), "the first batch was not handed on before the second was asked for"
        yield Decoded([1], ["p1"], np.zeros((1, 3, 2, 2), np.uint8), [""], None)

    for decoded, _ in scored_batches(Runner(), source(), batch_size=16):
        handed.append(decoded.paths[0])
        gate.set()
    assert handed == ["p0", "p1"]
