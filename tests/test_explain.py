import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from csra_cli.models.card import ModelCard
from csra_cli.cli import app
from csra_cli.explain.heatmaps import class_maps, colormap, explain_image
from csra_cli.models.csra import CSRAModel

runner = CliRunner()


class ColourBackbone(nn.Module):
    """Feature map = the image's RGB averaged over 8x8 cells, centred (a hand-made 'backbone')."""

    num_features = 3

    def stages(self):
        return [self]

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 8) - 0.5


def colour_model(size=64) -> CSRAModel:
    card = ModelCard("colours", "hand", 1, 0.1, ["red", "blue"], input_size=size, threshold=0.0)
    model = CSRAModel(ColourBackbone(), 2, 1, 0.1, card=card).eval()
    with torch.no_grad():
        model.classifier.multi_head[0].head.weight.copy_(
            torch.tensor([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]]).view(2, 3, 1, 1))
    return model


def scene(w=128, h=96) -> Image.Image:
    img = Image.new("RGB", (w, h), (128, 128, 128))
    img.paste((255, 0, 0), (8, 8, 40, 40))  # red top-left
    img.paste((0, 0, 255), (w - 40, h - 40, w - 8, h - 8))  # blue bottom-right
    return img


def hottest(cmap) -> tuple[int, int]:
    y, x = np.unravel_index(np.argmax(cmap.upsampled), cmap.upsampled.shape)
    return int(x), int(y)


def test_hottest_pixel_is_where_the_class_feature_was_placed():
    maps = {m.name: m for m in class_maps(colour_model(), scene(), ["red", "blue"])}
    x, y = hottest(maps["red"])
    assert x < 128 * 0.4 and y < 96 * 0.5
    x, y = hottest(maps["blue"])
    assert x > 128 * 0.6 and y > 96 * 0.5
    assert maps["red"].upsampled.shape == (96, 128)  # image size, not model input size


def test_maps_follow_exif_orientation(tmp_path):
    img = scene()
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90 degrees clockwise
    img.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    written = explain_image(colour_model(), str(tmp_path / "rot.jpg"), tmp_path / "out", ["red"])
    from csra_cli.data.preprocess import open_image

    shown = open_image(tmp_path / "rot.jpg")
    assert shown.size == (128, 96)  # as the viewer sees it
    x, y = hottest(class_maps(colour_model(), shown, ["red"])[0])
    assert x < 128 * 0.4 and y < 96 * 0.5
    assert Image.open(written[0]).size == (128, 96)


def test_png_and_npy_outputs(tmp_path):
    scene().save(tmp_path / "s.png")
    written = explain_image(colour_model(), str(tmp_path / "s.png"), tmp_path / "o", None, 2)
    names = sorted(p.name for p in written)
    assert names == ["s_png_blue.png", "s_png_grid.png", "s_png_red.png"]
    for p in written:
        with Image.open(p) as im:
            im.verify()
    assert Image.open(tmp_path / "o" / "s_png_red.png").size == (128, 96)
    assert Image.open(tmp_path / "o" / "s_png_grid.png").size[1] == 256
    raw = explain_image(colour_model(), str(tmp_path / "s.png"), tmp_path / "n", ["blue"], fmt="npy")
    arr = np.load(raw[0])
    assert arr.shape == (8, 8) and arr.dtype == np.float32


def test_colormap_is_monotonic_in_lightness():
    rgb = colormap(np.linspace(0, 1, 50)[None]).astype(float)[0]
    lum = rgb @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(lum) > 0)


def test_cli_explain_and_bad_inputs(tmp_path, tiny_model_path):
    scene().save(tmp_path / "s.jpg")
    res = runner.invoke(app, ["explain", str(tmp_path / "s.jpg"), "-m", str(tiny_model_path), "-o",
                              str(tmp_path / "h"), "--top-k", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "h" / "s_jpg_grid.png").exists()
    res = runner.invoke(app, ["explain", str(tmp_path / "s.jpg"), "-m", str(tiny_model_path), "-o",
                              str(tmp_path / "h"), "--class", "unicorn"])
    assert res.exit_code == 2 and "unknown unicorn" in res.stderr
    # a named input that is not there is bad usage, found before the model loads (-m is never read)
    res = runner.invoke(app, ["explain", str(tmp_path / "nope.jpg"), "-m", "no-such-model", "-o",
                              str(tmp_path / "h2")])
    assert res.exit_code == 2 and "nope.jpg: no such file" in res.stderr and not (tmp_path / "h2").exists()
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_explain_takes_folders_and_globs_like_tag(tmp_path, tiny_model_path):
    (tmp_path / "in").mkdir()
    scene().save(tmp_path / "in" / "s.jpg")
    scene().save(tmp_path / "in" / "t.png")
    for inputs, written in (([tmp_path / "in"], {"s_jpg_grid.png", "t_png_grid.png"}),
                            ([tmp_path / "in" / "*.png"], {"t_png_grid.png"})):
        out = tmp_path / f"h{len(written)}"
        res = runner.invoke(app, ["explain", *map(str, inputs), "-m", str(tiny_model_path), "-o", str(out),
                                  "--top-k", "1"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert {p.name for p in out.glob("*_grid.png")} == written


def test_vit_maps_have_the_patch_grid():
    from csra_cli.models.csra import create_model

    card = ModelCard("v", "vit", 1, 0.3, ["a", "b"], input_size=64, mean=[0.5] * 3, std=[0.5] * 3,
                     arch_kwargs={"img_size": 64, "embed_dim": 48, "depth": 1, "attn_heads": 2})
    model = create_model("vit", 2, 1, 0.3, card=card, **card.arch_kwargs).eval()
    maps = class_maps(model, scene(), ["a"])
    assert maps[0].raw.shape == (4, 4) and maps[0].upsampled.shape == (96, 128)
