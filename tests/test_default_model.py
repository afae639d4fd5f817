import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from csra_cli import load_model
from csra_cli.models import registry
from csra_cli.fileio import sha256_file
from csra_cli.data.classes import VOC_CLASSES
from csra_cli.cli import app

from .conftest import VOC, needs_voc

runner = CliRunner()


def shipped():
    entry = registry.entry(registry.default_name())
    path = registry.weights_dir() / entry["file"]
    return entry, path, json.loads(path.with_suffix(".json").read_text())


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
    low, _ = tagged("--threshold", "0.001")
    high, _ = tagged("--threshold", "0.99")
    assert low == sorted((c for c, s in scores.items() if s >= 0.001), key=lambda c: -scores[c])
    assert high == [c for c in default if scores[c] >= 0.99]
    assert len(low) > len(default) > len(high) >= 1
    assert len(tagged("--threshold", "0")[0]) == 20
