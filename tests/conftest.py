import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CSRA_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official"
VOC = SHARED / "data" / "voc2007" / "VOCdevkit"
COCO_TINY = SHARED / "data" / "coco-tiny"

needs_shared = pytest.mark.skipif(not (SHARED / "fixtures").is_dir(),
                                  reason=f"../shared is not here ({SHARED}); it holds the official fixtures and data")
needs_voc = pytest.mark.skipif(not VOC.is_dir(), reason=f"shared VOC2007 data not found at {VOC}")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Each test gets its own model cache, never the user's."""
    home = tmp_path_factory.mktemp("csra_home")
    monkeypatch.setenv("CSRA_HOME", str(home))
    # PyTorch by default in tests (no per-test ONNX export); test_auto_backend covers the default.
    monkeypatch.setenv("CSRA_BACKEND", "torch")
    return home


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A small random ResNet-18 CSRA model in our format (64 px, 20 VOC classes, 2 heads)."""
    from csra_cli.models.card import ModelCard
    from csra_cli.models.checkpoint import save_csra
    from csra_cli.data.classes import VOC_CLASSES
    from csra_cli.models.csra import create_model

    torch.manual_seed(0)
    card = ModelCard("tiny", "resnet18", 2, 0.3, list(VOC_CLASSES), input_size=64, threshold=0.5)
    model = create_model("resnet18", 20, 2, 0.3, card=card)
    return save_csra(model, card, tmp_path_factory.mktemp("models") / "tiny.safetensors", half=False)


def make_image(path: Path, mode: str = "RGB", size=(64, 48), color=(200, 30, 30), **save_kw) -> Path:
    rng = np.random.default_rng(zlib.crc32(f"{path.name}{mode}".encode()))
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2] = color
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **save_kw)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    make_image(folder / "a.jpg")
    make_image(folder / "b.png", "RGBA")
    make_image(folder / "nested" / "c.webp")
    make_image(folder / "nested" / "deeper" / "d.BMP")
    return folder


def run_cli(*args, **kw):
    """``csra ARGS`` through Typer's test runner (stdout and stderr apart), tracebacks raised."""
    from typer.testing import CliRunner

    from csra_cli.cli import app

    return CliRunner().invoke(app, [*map(str, args)], catch_exceptions=False, **kw)


def one_line(res) -> str:
    """The one line of stderr a refused command prints (and that it printed no traceback)."""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def journal_lines(out: Path) -> int:
    """Records a run has put in its journal so far (0 before it has one)."""
    try:
        return out.with_name(f".{out.name}.partial.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(what: str, check, proc, timeout: float = 900):
    """Poll for an event, with a generous deadline; the run must still be going."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"no {what} within {timeout} s")
