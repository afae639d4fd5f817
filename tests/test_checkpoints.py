import pickle

import pytest
import torch

from csra_cli import load_model
from csra_cli.models.loading import load_official
from csra_cli.fileio import sha256_file
from csra_cli.models.checkpoint import read_csra, read_state_dict, save_csra
from csra_cli.errors import CheckpointError, ModelNotFound

from .conftest import FIXTURES, needs_shared

RESNET = "resnet18_csra_heads4_lam0.5_20cls"
VIT = "vit_tiny_csra_heads2_lam0.3_14cls"


@needs_shared
def test_official_resnet_fp16_checkpoint_reproduces_logits():
    io = torch.load(FIXTURES / f"{RESNET}_io.pt", weights_only=True)
    model = load_model(str(FIXTURES / f"{RESNET}_fp16.pth"), lam=0.5, classes="voc")
    assert model.card.arch == "resnet18" and model.card.num_heads == 4
    assert model.card.input_size == 448 and model.card.mean is None  # official ResNet preprocessing
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() < 1e-4


@needs_shared
def test_official_vit_dataparallel_checkpoint_reproduces_logits():
    io = torch.load(FIXTURES / f"{VIT}_io.pt", weights_only=True)
    model = load_official(FIXTURES / f"{VIT}_dataparallel.pth", lam=0.3, arch_kwargs={"attn_heads": 4})
    assert model.card.num_heads == 2 and model.card.num_classes == 14
    assert model.card.input_size == 64 and model.card.mean == [0.5] * 3
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() < 1e-4


@needs_shared
def test_module_prefix_is_stripped():
    state = read_state_dict(FIXTURES / f"{VIT}_dataparallel.pth")
    assert not any(k.startswith("module.") for k in state)


@needs_shared
def test_wrong_architecture_is_refused_with_a_readable_message():
    with pytest.raises(CheckpointError, match="keys are those of resnet18, not resnet50"):
        load_official(FIXTURES / f"{RESNET}_fp16.pth", arch="resnet50", lam=0.5)
    with pytest.raises(CheckpointError, match="4 CSRA heads, not 2"):
        load_official(FIXTURES / f"{RESNET}_fp16.pth", num_heads=2, lam=0.5)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    from csra_cli.models.csra import create_model

    state = create_model("resnet18", 20, 1, 0.1).state_dict()
    state.pop("layer4.1.bn2.weight")
    state["extra.weight"] = torch.zeros(1)
    state["classifier.multi_head.0.head.weight"] = torch.zeros(20, 256, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_official(tmp_path / "bad.pth", arch="resnet18")
    msg = str(info.value)
    assert "1 missing: layer4.1.bn2.weight" in msg and "1 unexpected: extra.weight" in msg
    assert "wrong shape: classifier.multi_head.0.head.weight (20, 256, 1, 1) (model (20, 512, 1, 1))" in msg


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        read_state_dict(path)


def test_missing_file_and_directory_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_state_dict(tmp_path)
    with pytest.raises(ModelNotFound, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_our_format_round_trip_is_exact_and_self_describing(tmp_path, tiny_model_path):
    model = load_model(str(tiny_model_path))
    card, state = read_csra(tiny_model_path)
    assert card.sha256 == sha256_file(tiny_model_path)
    assert card.classes[0] == "aeroplane" and card.input_size == 64
    again = save_csra(model, model.card, tmp_path / "again.safetensors")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), load_model(str(again))(x))


def test_predict_and_preprocess(tiny_model_path):
    from PIL import Image

    model = load_model(str(tiny_model_path))
    img = Image.new("RGB", (100, 50), (10, 200, 30))
    t = model.preprocess(img)
    assert t.shape == (3, 64, 64) and 0 <= t.min() and t.max() <= 1
    probs = model.predict([img, img])
    assert probs.shape == (2, 20) and ((probs >= 0) & (probs <= 1)).all()
    assert not model.training


def test_predict_takes_paths_and_images_and_gives_the_clis_numpy_scores(tmp_path, tiny_model_path):
    """The README's API: model.predict(["a.jpg"]) (it raised "'str' object has no attribute 'mode'")."""
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from csra_cli.cli import app

    from .conftest import make_image

    photo = make_image(tmp_path / "a.jpg", size=(300, 200))
    model = load_model(str(tiny_model_path))
    probs = model.predict([str(photo), photo, Image.open(photo)])
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float32 and probs.shape == (3, 20)
    assert np.allclose(probs[0], probs[1]) and np.allclose(probs[0], probs[2], atol=1e-2)  # PIL: no JPEG draft
    res = CliRunner().invoke(app, ["tag", str(photo), "-m", str(tiny_model_path), "-q", "--scores"])
    cli = json.loads(res.stdout)["scores"]
    assert np.allclose(probs[0], [cli[c] for c in model.classes], atol=2e-6)
