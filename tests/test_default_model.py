import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from csra_cli import load_model
from csra_cli.models import registry
from csra_cli.models.card import model_files
from csra_cli.fileio import sha256_file
from csra_cli.data.classes import VOC_CLASSES
from csra_cli.cli import app

from .conftest import VOC, needs_voc

runner = CliRunner()


def shipped():
    entry = registry.entry(registry.default_name())
    path, card = model_files(registry.weights_dir() / entry["file"])
    return entry, path, json.loads(card.read_text())


def test_shipped_default_is_self_describing_and_intact():
    entry, path, card = shipped()
    assert entry["kind"] == "shipped" and path.is_file()
    assert card["sha256"] == sha256_file(path) == entry["sha256"]
    assert card["classes"] == VOC_CLASSES
    assert card["arch"].startswith("efficientnet_lite") and card["num_heads"] in (1, 2, 4, 6, 8)
    assert set(card["thresholds"]) == set(VOC_CLASSES) and all(0 < t < 1 for t in card["thresholds"].values())
    assert card["metrics"]["mAP"] >= 89.5 and card["mean"] == [0.5, 0.5, 0.5]
    assert "CC BY 4.0" in card["attribution"] and "Apache-2.0" in card["license"]
    assert path.stat().st_size < 25e6


def shipped_models() -> list[tuple[dict, Path, dict]]:
    out = []
    for e in registry.entries():
        if e["kind"] == "shipped":
            path, card = model_files(registry.weights_dir() / e["file"])
            out.append((e, path, json.loads(card.read_text())))
    return out


def test_the_shipped_models_fit_in_the_wheel_with_complete_cards():
    models = shipped_models()
    assert {e["name"] for e, _, _ in models} >= {registry.default_name(), registry.canonical("fast")}
    here = registry.weights_dir()
    # the ImageNet model's WordNet tables, their licence and the script that makes them
    ships = {here / n for n in ("registry.json", "imagenet-to-voc.json", "imagenet-to-coco.json",
                                "WORDNET-LICENSE", "make_imagenet_model.py")}
    for e, _, _ in models:
        files = model_files(here / e["file"])
        ships |= {files.weights, files.card} | ({files.int8} if files.int8.is_file() else set())
    assert sum(f.stat().st_size for f in ships) <= 40e6  # weights, cards and int8 exports
    default_size = registry.entry(registry.default_name())["input_size"]
    assert {f for f in here.iterdir() if f.name != "__pycache__"} == ships  # nothing else ships
    for e, path, card in models:
        assert card["sha256"] == sha256_file(path) == e["sha256"] and e["size"] == path.stat().st_size
        if e["classes"] != "voc":  # the training-free ImageNet model: tested in test_imagenet_model
            continue
        assert card["sha256"] == sha256_file(path) == e["sha256"] and e["size"] == path.stat().st_size
        assert card["input_size"] == e["input_size"] and card["metrics"]["mAP"] == e["metrics"]["mAP"]
        t = card["training"]
        assert t["data"].startswith("PASCAL VOC2007") and t["command"].startswith("csra train --dataset voc")
        assert f"--name {card['name']}" in t["command"] and f"--test-size {card['input_size']}" in t["command"]
        assert t["config"]["test_size"] == card["input_size"] and f"run at {card['input_size']} px" in t["run_size_note"]
        # each epoch's val mAP says its size: the training size, or the size the run was made for
        assert {h["val_size"] for h in t["history"]} <= {t["config"]["input_size"], default_size}
        assert set(card["thresholds"]) == set(VOC_CLASSES) and card["license"] and card["attribution"]
        assert {"mAP", "CF1", "OF1", "per_class_thresholds", "dataset"} <= set(card["metrics"])
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:  # fp16 weights (the mAP is the fp32 one's)
            assert {str(f.get_tensor(k).dtype) for k in f.keys() if "running" not in k} <= {"float16", "int64"}
    fast, default = (next(c for e, _, c in models if e["name"] == registry.canonical(n)) for n in ("fast", "default"))
    assert default["metrics"]["mAP"] >= 91.0 and fast["metrics"]["mAP"] >= 88.0
    assert fast["input_size"] < default["input_size"]


def test_fast_is_a_short_name_that_tag_and_models_know(tmp_path):
    model = load_model("fast")
    assert model.card.name == registry.canonical("fast") != registry.default_name()
    assert load_model("default").card.name == registry.default_name()
    listing = runner.invoke(app, ["models"], env={"COLUMNS": "200"}, catch_exceptions=False).stdout
    assert f"{model.card.name} (fast)" in listing
    info = runner.invoke(app, ["models", "info", "fast"], catch_exceptions=False)
    assert info.exit_code == 0 and json.loads(info.stdout)["card"]["name"] == model.card.name
    from .conftest import make_image

    photo = make_image(tmp_path / "a.jpg", size=(96, 80))
    res = runner.invoke(app, ["tag", str(photo), "--model", "fast", "-q", "--tta"], catch_exceptions=False)
    assert res.exit_code == 0 and json.loads(res.stdout)["error"] is None


def test_default_loads_without_arguments_and_offline():
    model = load_model()
    assert model.card.name == registry.default_name() and not model.training


@needs_voc
def test_tagging_shared_voc_images_returns_their_true_classes(tmp_path):
    from csra_cli.data.datasets import read_voc

    val = read_voc(VOC, "val")
    # a deterministic spread of images with a single clear class each
    picks = [i for i in range(0, len(val), 37) if val.labels[i].sum() == 1][:8]
    listing = "\n".join(val.paths[i] for i in picks) + "\n"
    res = runner.invoke(app, ["tag", "-", "-q"], input=listing, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    hits = sum(VOC_CLASSES[int(np.argmax(val.labels[i]))] in r["tags"] for i, r in zip(picks, recs))
    assert hits >= len(picks) - 1, recs


@needs_voc
def test_threshold_flag_overrides_the_cards_per_class_thresholds():
    """The design card's command: --threshold sets every class's threshold on the shipped model
    (it used to be ignored wherever the card has per-class thresholds)."""
    photo = str(VOC / "VOC2007" / "JPEGImages" / "000009.jpg")  # a person on a horse

    def tagged(*flags):
        res = runner.invoke(app, ["tag", photo, "-q", "--scores", *flags], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        rec = json.loads(res.stdout)
        return rec["tags"], rec["scores"]

    default, scores = tagged()
    assert len(default) >= 2, default
    top = sorted(scores.values(), reverse=True)
    cut = round((top[0] + top[1]) / 2, 4)  # between the two best scores, whatever the model
    low, _ = tagged("--threshold", "0.001")
    high, _ = tagged("--threshold", str(cut))
    assert low == sorted((c for c, s in scores.items() if s >= 0.001), key=lambda c: -scores[c])
    assert high == [c for c in default if scores[c] >= cut]
    assert len(low) > len(default) > len(high) == 1
    assert len(tagged("--threshold", "0")[0]) == 20


def test_a_users_own_model_named_fast_wins_over_the_short_name(tiny_model_path, isolated_home):
    import shutil

    for ext in (".safetensors", ".json"):
        shutil.copyfile(tiny_model_path.with_suffix(ext), isolated_home / f"fast{ext}")
    assert load_model("fast").card.name == "tiny"
    assert registry.entry("default")["name"] == registry.default_name()


def test_a_folder_called_fast_in_the_working_folder_does_not_hide_the_model(tmp_path, monkeypatch):
    (tmp_path / "fast").mkdir()
    (tmp_path / "csra-voc-effl2-320").write_text("not a model")
    monkeypatch.chdir(tmp_path)
    assert load_model("fast").card.name == registry.canonical("fast")
    assert load_model("csra-voc-effl2-320").card.name == "csra-voc-effl2-320"
    from csra_cli.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="is a directory"):  # an explicit path is still a path
        load_model("./fast")
