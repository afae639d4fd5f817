import json

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from csra_cli import load_model
from csra_cli.cli import app
from csra_cli.train.trainer import random_resized_crop

from .conftest import make_image

runner = CliRunner()


def _dataset(folder, n=24):
    """Red images are 'red', images with a blue bottom half are 'blue' (some both)."""
    rows = []
    for i in range(n):
        red, blue = i % 2 == 0, i % 3 == 0
        color = (220, 20, 20) if red else (20, 220, 20)
        p = make_image(folder / f"im{i}.png", color=color, size=(48, 48))
        if blue:
            from PIL import Image

            im = Image.open(p).convert("RGB")
            im.paste((20, 20, 230), (0, 24, 48, 48))
            im.save(p)
        rows.append((p.name, ";".join(t for t, on in (("red", red), ("blue", blue)) if on)))
    lab = folder / "labels.csv"
    pd.DataFrame(rows, columns=["path", "tags"]).to_csv(lab, index=False)
    return lab


def test_train_a_few_steps_writes_a_usable_model(tmp_path):
    """A dotted name (toy.v1) keeps its dot: the files are toy.v1.safetensors and toy.v1.json."""
    lab = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--dataset", "csv", "--labels", lab, "--val-labels", lab, "--arch", "efficientnet_lite0",
            "--input-size", "64", "--heads", "2", "--lam", "0.3", "--epochs", "3", "--batch-size", "8",
            "--optimizer", "adamw", "--lr", "0.001", "--warmup-epochs", "1", "--trainable-stages", "1",
            "--workers", "0", "--out", out, "--name", "toy.v1", "--seed", "1", "--ema", "0.9"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    model = load_model(str(out / "toy.v1.safetensors"))
    card = model.card
    assert card.classes == ["blue", "red"] and card.num_heads == 2 and card.input_size == 64
    assert set(card.thresholds) == {"blue", "red"} and card.metrics["num_images"] == 24
    assert len(card.training["history"]) == 3 and "val_mAP" in card.training["history"][-1]
    assert (out / "checkpoint.pt").exists()
    # the README's train -> tag flow: the model is found by its name
    assert load_model("toy.v1").card.classes == ["blue", "red"] and "--model toy.v1" in res.stderr
    # the features were cached: a second run with --resume reuses them and trains nothing more
    res2 = runner.invoke(app, [str(a) for a in args] + ["--resume"], catch_exceptions=False)
    assert res2.exit_code == 0 and "reusing cache" in res2.output
    again = load_model(str(out / "toy.v1.safetensors"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), again(x))
    # images changed since the checkpoint: resuming would mix two datasets
    from PIL import Image

    Image.new("RGB", (48, 48), (20, 20, 230)).save(tmp_path / "data" / "im1.png")
    res3 = runner.invoke(app, [str(a) for a in args] + ["--resume"])
    assert res3.exit_code != 0 and "images changed" in res3.stderr


def test_random_resized_crop_keeps_shape_and_content():
    x = torch.randn(3, 4, 8, 8)
    assert random_resized_crop(x, (0.5, 0.9)).shape == x.shape
    flat = torch.arange(12.0).view(3, 4, 1, 1).expand(3, 4, 8, 8).contiguous()
    assert torch.allclose(random_resized_crop(flat, (0.5, 0.9)), flat)  # a crop of a constant map
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    out = random_resized_crop(ramp, (0.3, 0.5))
    assert out.min() >= 0 and out.max() <= 7 and out[0, 0, :, -1].mean() > out[0, 0, :, 0].mean()


def test_whole_network_training_on_augmented_images(tmp_path):
    lab = _dataset(tmp_path / "data", 8)
    out = tmp_path / "full"
    res = runner.invoke(app, [str(a) for a in ["train", "--dataset", "csv", "--labels", lab, "--val-labels", lab,
                                                 "--arch", "efficientnet_lite0", "--input-size", "64", "--epochs", "1",
                                                 "--batch-size", "4", "--workers", "0", "--out", out, "--name", "full",
                                                 "--fp32"]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    before = load_model(str(out / "full.safetensors"))
    fresh = __import__("csra_cli.models.csra", fromlist=["create_model"]).create_model(
        "efficientnet_lite0", 2, 1, 0.1, pretrained=True)
    # the backbone itself was trained (not only the head)
    assert not torch.equal(before.backbone.conv_stem.weight, fresh.backbone.conv_stem.weight)


def test_train_refuses_bad_settings(tmp_path):
    lab = _dataset(tmp_path / "d", 4)
    res = runner.invoke(app, ["train", "--dataset", "csv", "--labels", str(lab), "--heads", "3",
                              "--freeze-backbone"])
    assert res.exit_code == 2 and "--heads must be" in res.stderr
    res = runner.invoke(app, ["train", "--dataset", "voc", "--freeze-backbone"])
    assert res.exit_code == 2 and "--root" in res.stderr
    res = runner.invoke(app, ["train", "--dataset", "csv", "--labels", str(lab), "--freeze-backbone",
                              "--trainable-stages", "2"])
    assert res.exit_code == 2 and "contradict" in res.stderr
    for flag, value in (("--epochs", "0"), ("--batch-size", "0"), ("--workers", "-1")):
        res = runner.invoke(app, ["train", "--dataset", "csv", "--labels", str(lab), flag, value,
                                  "--out", str(tmp_path / "run")])
        assert res.exit_code == 2 and f"{flag} {value}: must be" in res.stderr and not (tmp_path / "run").exists()
    res = runner.invoke(app, ["train", "--dataset", "csv", "--labels", str(lab), "--name", "../x"])
    assert res.exit_code == 2 and "--name" in res.stderr


def test_feature_cache_key_ignores_memory_format():
    from csra_cli.models.csra import create_model
    from csra_cli.train.trainer import _frozen_digest, split_model

    frozen, _ = split_model(create_model("efficientnet_lite0", 2, 1, 0.1, pretrained=True), 2)
    before = _frozen_digest(frozen)
    assert _frozen_digest(frozen.to(memory_format=torch.channels_last)) == before
    with torch.no_grad():
        next(frozen.parameters()).add_(1e-3)
    assert _frozen_digest(frozen) != before


def test_more_trainable_stages_than_the_backbone_has_means_the_whole_network(tmp_path, isolated_home):
    lab = _dataset(tmp_path / "data", 4)
    res = runner.invoke(app, [str(a) for a in ["train", "--dataset", "csv", "--labels", lab, "--arch",
                                                 "efficientnet_lite0", "--input-size", "64", "--epochs", "1",
                                                 "--batch-size", "4", "--workers", "0", "--trainable-stages", "50",
                                                 "--out", tmp_path / "run", "--name", "all"]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert not (isolated_home / "features").exists()  # trained on images, nothing cached


def test_asymmetric_loss():
    from csra_cli.train.losses import asl_loss, bce_loss

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 5), (torch.rand(6, 5) > 0.5).float()
    weight = torch.ones(6, 5)
    weight[0, 0] = 0  # an ignored label
    # without focusing and margin, ASL is binary cross-entropy over the labelled pairs
    plain = asl_loss(logits, targets, weight, gamma_neg=0, gamma_pos=0, clip=0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(plain, (expected * weight).sum() / weight.sum(), atol=1e-6)
    assert not torch.allclose(bce_loss(logits, targets, weight), plain)  # BCE's mean counts the ignored pair
    one = torch.ones(1, 1)
    neg = torch.zeros(1, 1)
    # a negative scored under the margin costs nothing; a confident wrong negative costs almost as BCE
    assert asl_loss(torch.tensor([[-4.0]]), neg, one) == 0
    hard = asl_loss(torch.tensor([[4.0]]), neg, one)
    assert hard > 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([[4.0]]), neg)
    # easy negatives are down-weighted far more than hard ones
    easy = asl_loss(torch.tensor([[-1.0]]), neg, one)
    assert easy / hard < 0.01


def test_train_with_asl(tmp_path):
    lab = _dataset(tmp_path / "data", n=12)
    args = ["train", "--dataset", "csv", "--labels", lab, "--arch", "efficientnet_lite0", "--input-size", "64",
            "--epochs", "1", "--batch-size", "6", "--freeze-backbone", "--workers", "0", "--loss", "asl",
            "--out", tmp_path / "run", "--name", "asl-toy"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert load_model(str(tmp_path / "run" / "asl-toy.safetensors")).card.training["config"]["loss"] == "asl"
    bad = runner.invoke(app, [str(a) for a in args[:-4] + ["--loss", "focal"]])
    assert bad.exit_code == 2 and "--loss" in bad.output


def test_a_model_trained_at_one_size_runs_at_its_test_size(tmp_path, isolated_home):
    lab = _dataset(tmp_path / "data", n=16)
    out = tmp_path / "run"
    args = ["train", "--dataset", "csv", "--labels", lab, "--val-labels", lab, "--arch", "efficientnet_lite0",
            "--input-size", "64", "--test-size", "96", "--heads", "1", "--epochs", "1", "--batch-size", "8",
            "--optimizer", "adamw", "--lr", "0.001", "--warmup-epochs", "0", "--trainable-stages", "1",
            "--workers", "0", "--out", out, "--name", "toy96"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    card = load_model(str(out / "toy96.safetensors")).card
    assert card.input_size == 96  # tag/eval/export run it at the test size …
    assert card.training["config"]["input_size"] == 64 and card.training["config"]["test_size"] == 96
    # … and its val metrics and thresholds were measured there: val features cached at 96 px
    metas = [json.loads(p.read_text()) for p in (isolated_home / "features").glob("*.json")]
    assert sorted({(m["size"], m["images"], m["flip"]) for m in metas}) == [(64, 16, False), (64, 16, True),
                                                                            (96, 16, False)]
    assert card.training["history"][0]["val_size"] == 96
    # resuming at another size would mix val mAPs measured at different sizes: refused
    other = [str(a) for a in args] + ["--resume"]
    other[other.index("--test-size") + 1] = "128"
    res = runner.invoke(app, other)
    assert res.exit_code == 2 and "validated at 96 px" in res.output
    bad = runner.invoke(app, ["train", "--dataset", "csv", "--labels", str(lab), "--arch", "vit_b16",
                              "--test-size", "288", "--input-size", "224"])
    assert bad.exit_code == 2 and "position embeddings" in bad.output


def test_feature_cache_key_follows_the_images_bytes_not_their_mtimes_or_folder(tmp_path, isolated_home, monkeypatch):
    """A copied dataset (new folder, new mtimes) keeps its cached features; a changed image does
    not; an unchanged dataset is recognised by a stat per file, without reading the images."""
    import os
    import shutil

    from csra_cli.train import trainer

    a = tmp_path / "a"
    paths = [str(make_image(a / f"{i}.jpg", color=(30 * i, 60, 90))) for i in range(4)]
    first = trainer._images_digest(paths)
    copy = tmp_path / "b"
    shutil.copytree(a, copy)  # copytree keeps mtimes: give the copy new ones, as a plain cp does
    copied = [str(copy / f"{i}.jpg") for i in range(4)]
    for p in copied:
        os.utime(p, (1e9, 1e9))
    assert trainer._images_digest(copied) == first
    assert trainer._images_digest(copied[::-1]) != first  # the features' rows follow the order
    monkeypatch.setattr(trainer, "sha256_file", lambda p: (_ for _ in ()).throw(AssertionError("read")))
    assert trainer._images_digest(copied) == first  # remembered
    monkeypatch.undo()
    data = bytearray(open(copied[2], "rb").read())
    data[-3] ^= 0xFF
    open(copied[2], "wb").write(bytes(data))
    os.utime(copied[2], (1e9, 1e9))  # an edit that kept the mtime (exiftool -P): the ctime moved
    assert trainer._images_digest(copied) != first
    os.chmod(copied[1], 0)
    if not os.access(copied[1], os.R_OK):  # (root reads anyway)
        blind = trainer._images_digest(copied)
        os.chmod(copied[1], 0o644)  # readable again, mtime unchanged: not served from the memo
        assert trainer._images_digest(copied) != blind
    os.chmod(copied[1], 0o644)


def test_a_model_name_cannot_look_like_a_model_file(tmp_path):
    lab = _dataset(tmp_path / "data", n=4)
    res = runner.invoke(app, ["train", "--dataset", "csv", "--labels", str(lab), "--name", "mine.pt"])
    assert res.exit_code != 0 and "cannot end in .pt" in res.stderr
