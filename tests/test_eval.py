import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from csra_cli.cli import app
from csra_cli.data.datasets import read_coco, read_voc

from .conftest import COCO_TINY, VOC, make_image, needs_voc

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [*map(str, args)], catch_exceptions=False)


def write_labels(tmp_path: Path) -> Path:
    rows = [("a.jpg", "cat;dog"), ("b.jpg", "dog"), ("c.jpg", ""), ("d.jpg", "cat")]
    for name, _ in rows:
        make_image(tmp_path / name)
    lab = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "tags"]).to_csv(lab, index=False)
    return lab


def test_eval_from_a_scores_file_is_exact(tmp_path):
    lab = write_labels(tmp_path)
    scores = pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "cat": [0.9, 0.2, 0.6, 0.7],
                           "dog": [0.8, 0.9, 0.1, 0.3], "bird": [0.1, 0.1, 0.1, 0.1]})
    scores.to_csv(tmp_path / "scores.csv", index=False)
    res = invoke("eval", "--dataset", "csv", "--labels", lab, "--scores", tmp_path / "scores.csv", "--json", "-", "-q",
                 "--calibrate", tmp_path / "th.json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    # cat: ranks a(P) .9, d(P) .7, c(N) .6, b(N) .2 -> AP 1 ; dog: b(P) .9, a(P) .8 -> AP 1
    assert r["mAP"] == pytest.approx(100.0)
    # at 0.5: cat predicted a,c,d (tp 2) ; dog predicted a,b (tp 2)
    assert r["CP"] == pytest.approx(100 * (2 / 3 + 1) / 2) and r["CR"] == pytest.approx(100)
    assert r["OP"] == pytest.approx(80) and r["OR"] == pytest.approx(100)
    assert set(r) >= {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "num_images", "per_class"}
    assert r["num_images"] == 4 and r["per_class"]["cat"]["positives"] == 2
    assert "bird" in r["model_classes_unmatched"] and r["precision"] is None  # no model ran
    th = json.loads((tmp_path / "th.json").read_text())
    assert 0.6 < th["cat"] < 0.7


def test_eval_runs_a_model_saves_scores_and_counts_failures(tmp_path, tiny_model_path):
    lab = tmp_path / "labels.csv"
    make_image(tmp_path / "a.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    lab.write_text("path,tags\na.jpg,cat\nbroken.jpg,dog\n")
    res = invoke("eval", "--dataset", "csv", "--labels", lab, "-m", tiny_model_path, "--save-scores",
                 tmp_path / "s.csv", "--json", tmp_path / "r.json", "-q")
    assert res.exit_code == 1  # an unreadable image is reported, not silently dropped
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["num_images_failed"] == 1 and r["failed"][0]["path"].endswith("broken.jpg")
    assert r["num_images"] == 1 and r["precision"] == "fp32"  # so int8 and fp32 reports tell apart
    s = pd.read_csv(tmp_path / "s.csv")
    assert list(s.columns[:2]) == ["path", "aeroplane"] and len(s) == 2


def test_no_matching_class_is_a_clear_error(tmp_path):
    lab = write_labels(tmp_path)
    pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "zebra": [0.5] * 4}).to_csv(tmp_path / "s.csv", index=False)
    res = invoke("eval", "--dataset", "csv", "--labels", lab, "--scores", tmp_path / "s.csv", "-q")
    assert res.exit_code == 2 and "no dataset class matches" in res.stderr


def test_voc_difficult_only_classes_are_ignored_on_test(tmp_path):
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>dog</name><difficult>0</difficult></object>"
        "<object><name>cat</name><difficult>1</difficult></object></annotation>")
    for split in ("test", "trainval"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("000001\n")
    test, trainval = read_voc(tmp_path, "test"), read_voc(tmp_path, "trainval")
    cat, dog = test.classes.index("cat"), test.classes.index("dog")
    assert test.labels[0, dog] == 1 and test.labels[0, cat] == -1
    assert trainval.labels[0, cat] == 0


@needs_voc
def test_shared_voc_reader():
    val = read_voc(VOC, "val")
    assert len(val) == 990 and val.labels.shape == (990, 20)
    assert (val.labels.sum(1) >= 1).all() and Path(val.paths[0]).is_file()
    assert len(read_voc(VOC / "VOC2007", "train")) == 3475


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="shared coco-tiny data not found")
def test_shared_coco_reader():
    data = read_coco(COCO_TINY / "annotations" / "instances_val2017.json", COCO_TINY / "val2017")
    assert len(data.classes) == 80 and data.classes[0] == "person"
    assert 0 < len(data) <= 80 and all(Path(p).is_file() for p in data.paths)
    assert (data.labels.sum(1) >= 1).all()


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="shared coco-tiny data not found")
def test_coco_classes_map_onto_voc():
    from csra_cli.data.classes import VOC_CLASSES
    from csra_cli.evaluation.scoring import match_classes, read_class_map

    data = read_coco(COCO_TINY / "annotations" / "instances_val2017.json", COCO_TINY / "val2017")
    data_cols, model_cols, left_data, left_model = match_classes(data, VOC_CLASSES, read_class_map("coco-to-voc"))
    assert len(model_cols) == 20 and not left_model and len(left_data) == 60
    assert data.classes[data_cols[model_cols.index(VOC_CLASSES.index("aeroplane"))]] == "airplane"


def test_the_report_is_the_commands_data_on_stdout(tmp_path):
    """`csra eval … > report.txt` used to give an empty file: the report went to stderr."""
    lab = write_labels(tmp_path)
    pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "cat": [0.9, 0.2, 0.6, 0.7],
                  "dog": [0.8, 0.9, 0.1, 0.3], "bird": [0.1] * 4}).to_csv(tmp_path / "s.csv", index=False)
    base = ["eval", "--dataset", "csv", "--labels", lab, "--scores", tmp_path / "s.csv"]
    res = invoke(*base)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert any(ln.split()[:2] == ["cat", "100.0"] for ln in lines)  # plain text rows, no table frame
    assert any(ln.startswith("mAP 100.0") for ln in lines) and "┃" not in res.stdout and "│" not in res.stdout
    assert "mAP" not in res.stderr
    res = invoke(*base, "--json", "-")
    assert res.exit_code == 0 and json.loads(res.stdout)["mAP"] == pytest.approx(100.0)  # the JSON alone
    assert "mAP 100.0" in res.stderr


def test_saved_scores_are_float32_exact(tmp_path):
    """6 decimals made up ties and moved mAP when a scores file was evaluated again."""
    from csra_cli.evaluation.scoring import read_scores, write_scores

    rng = np.random.default_rng(0)
    scores = rng.random((50, 3), dtype=np.float32) ** 8  # many tiny scores, where rounding bites
    scores[3, 1] = np.nan
    paths = [f"im{i}.jpg" for i in range(50)]
    write_scores(str(tmp_path / "s.csv"), paths, ["a", "b", "c"], scores)
    got_paths, classes, got = read_scores(str(tmp_path / "s.csv"))
    assert got_paths == paths and classes == ["a", "b", "c"]
    assert np.array_equal(got, scores, equal_nan=True)


def test_flip_averaging_gives_an_image_and_its_mirror_the_same_scores(tmp_path, tiny_model_path):
    from PIL import Image, ImageOps

    make_image(tmp_path / "a.png", size=(64, 64))  # PNG: the mirror is exact, no JPEG re-encoding
    ImageOps.mirror(Image.open(tmp_path / "a.png")).save(tmp_path / "b.png")
    lab = tmp_path / "labels.csv"
    lab.write_text("path,tags\na.png,cat\nb.png,dog\n")

    def scores(*flags):
        out = tmp_path / f"s{len(flags)}.csv"
        res = invoke("eval", "--dataset", "csv", "--labels", lab, "-m", tiny_model_path, "--save-scores", out,
                     "--json", tmp_path / "r.json", "-q", "--overwrite", *flags)  # r.json again: --overwrite
        assert res.exit_code == 0, res.output
        return pd.read_csv(out).iloc[:, 1:].to_numpy(), json.loads((tmp_path / "r.json").read_text())

    plain, report = scores()
    tta, tta_report = scores("--tta")
    assert not report["tta"] and tta_report["tta"]
    assert np.abs(plain[0] - plain[1]).max() > 1e-4  # the random model is not mirror-symmetric …
    np.testing.assert_allclose(tta[0], tta[1], atol=1e-6)  # … but its flip-averaged scores are
    np.testing.assert_allclose(tta[0], (plain[0] + plain[1]) / 2, atol=1e-6)


def test_flip_averaged_runner_mirrors_numpy_and_torch_batches():
    import torch

    from csra_cli.engine.runners import FlipAveraged

    class LeftHalf:  # "probability" = mean of the left half of the image
        card = "the card"

        def __call__(self, batch):
            b = np.asarray(batch, dtype=np.float64)
            return b[..., : b.shape[-1] // 2].mean(axis=(1, 2, 3))[:, None]

    batch = np.zeros((1, 3, 4, 4), dtype=np.uint8)
    batch[..., :2] = 200  # bright left half, dark right half
    tta = FlipAveraged(LeftHalf())
    assert tta.card == "the card"
    assert tta(batch)[0, 0] == pytest.approx(100.0)
    assert tta(torch.from_numpy(batch))[0, 0] == pytest.approx(100.0)


def test_tta_is_refused_with_a_scores_file_and_recorded_in_tag_records(tmp_path, tiny_model_path):
    lab = write_labels(tmp_path)
    (tmp_path / "s.csv").write_text("path,cat\na.jpg,0.5\n")
    res = invoke("eval", "--dataset", "csv", "--labels", lab, "--scores", tmp_path / "s.csv", "--tta")
    assert res.exit_code == 2 and "no model runs" in res.output
    out = tmp_path / "t.sqlite"
    assert invoke("tag", tmp_path / "a.jpg", "-m", tiny_model_path, "--tta", "-o", out, "-q").exit_code == 0
    import sqlite3

    models = {m for (m,) in sqlite3.connect(out).execute("select model from images")}
    assert models == {"tiny+tta"}


@needs_voc
def test_paired_bootstrap_compares_two_score_files(tmp_path):
    """benchmarks/compare_scores.py: a clearly better model is ahead in every draw; a model against
    itself differs by exactly zero in every draw (the same images are drawn for both)."""
    import subprocess
    import sys

    val = read_voc(VOC, "val")
    rng = np.random.default_rng(0)
    labels = val.labels.astype(np.float32)
    files = {}
    for name, noise in (("weak", 0.8), ("strong", 0.1)):
        scores = np.clip(0.5 * labels + 0.25 + noise * rng.standard_normal(labels.shape), 0, 1)
        frame = pd.DataFrame(scores, columns=val.classes)
        frame.insert(0, "path", [Path(p).name for p in val.paths])  # matched by file name
        files[name] = tmp_path / f"{name}.csv"
        frame.sample(frac=1, random_state=0).to_csv(files[name], index=False)  # any row order
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_scores.py"
    out = subprocess.run([sys.executable, script, VOC, "val", files["weak"], files["weak"], files["strong"],
                          "--draws", "40"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "990 images" in out[0] and "40 paired draws" in out[0]
    assert "difference +0.00 (95% interval +0.00 to +0.00; ahead in 0.0% of draws)" in out[1]
    assert "ahead in 100.0% of draws" in out[2]
    gain = float(out[2].split("difference ")[1].split()[0])
    assert gain > 10
