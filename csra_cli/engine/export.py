"""Exporting a model to ONNX or TorchScript, self-describing and verified on the spot."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import CSRAError
from ..models.card import heads_text
from ..models.csra import CSRAModel

FP32_TOLERANCE = 1e-4
FP16_RELATIVE = 5e-3  # fp16 keeps ~3 significant digits: the bound scales with the logits' size


def verification_batch(size: int, images: list[str] | None = None, n_random: int = 2) -> torch.Tensor:
    """Random inputs plus real photos (if given), preprocessed, as float (B, 3, S, S) in [0, 1]
    before normalisation; the caller normalises."""
    from ..data.preprocess import Preprocess

    gen = torch.Generator().manual_seed(0)
    batch = [torch.randint(0, 256, (n_random, 3, size, size), generator=gen, dtype=torch.uint8)]
    if images:
        pre = Preprocess(size)
        batch.append(torch.from_numpy(np.stack([pre.load(p) for p in images])))
    return torch.cat(batch)


def export_onnx(model: CSRAModel, out: Path, opset: int = 18, dynamic_size: bool = False, fp16: bool = False) -> Path:
    """The graph takes the preprocessed float NCHW batch and returns logits; the model card
    (classes, preprocessing, thresholds) goes into the metadata as ``csra_card``."""
    import onnx

    size = model.card.input_size
    model = model.eval().float().cpu()
    example = torch.rand(2, 3, size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch.export reasons symbolically about every "same" padding of a dynamic height and
        # width, and on EfficientNet-Lite that ran for over 15 minutes without finishing; the
        # TorchScript-based exporter writes the same graph in seconds, so dynamic sizes take it.
        if opset >= 18 and not dynamic_size:
            dims = {0: torch.export.Dim("batch", min=1, max=4096)}
            program = torch.onnx.export(model, (example,), None, input_names=["images"], output_names=["logits"],
                                        opset_version=opset, dynamic_shapes=(dims,), dynamo=True, verbose=False)
            program.save(str(out))
        else:  # older opsets and dynamic sizes through the TorchScript-based exporter
            axes = {"images": {0: "batch"}, "logits": {0: "batch"}}
            if dynamic_size:
                axes["images"].update({2: "height", 3: "width"})
            torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                              opset_version=opset, dynamic_axes=axes, dynamo=False)
    proto = onnx.load(str(out))
    if fp16:
        proto = to_fp16(proto)
    del proto.metadata_props[:]
    for k, v in onnx_metadata(model.card, fp16).items():
        proto.metadata_props.add(key=k, value=v)
    card = json.loads(model.card.to_json())
    proto.doc_string = f"CSRA model {card['name']} ({card['arch']}, {heads_text(card['num_heads'])}, lambda {card['lam']})"
    onnx.save(proto, str(out))
    return out


def onnx_metadata(card, fp16: bool = False) -> dict[str, str]:
    """Everything a plain onnxruntime user needs to reproduce csra's scores: the card, and each
    preprocessing step spelled out (channel order, scaling, interpolation, resize mode, mean/std)."""
    size = card.input_size
    norm = "(x - mean) / std per channel" if card.mean is not None else "none (the model takes x as is)"
    steps = (f"decode to RGB (EXIF orientation applied, first frame, transparency on white); resize to "
             f"{size}x{size} ignoring the aspect ratio (squash) with Pillow's bilinear filter "
             f"(Image.resize(..., Image.BILINEAR)); uint8 HWC -> float32 CHW; x = pixel / 255; "
             f"normalisation {norm}; batch as NCHW")
    return {
        "csra_card": card.embedded_json(), "classes": json.dumps(card.classes), "input_size": str(size),
        "color_order": "RGB", "layout": "NCHW", "scale": "1/255 (uint8 pixel values to [0, 1])",
        "resize": card.resize, "interpolation": "bilinear (Pillow Image.BILINEAR, antialiased when shrinking)",
        "jpeg_draft": (f"csra decodes JPEGs with Pillow's draft mode (Image.draft('RGB', ({size}, {size}))): "
                       f"libjpeg's 1/2, 1/4 or 1/8 scale still at least {size} px on both sides"),
        "mean": json.dumps(card.mean), "std": json.dumps(card.std), "normalization": norm,
        "preprocessing": steps, "input_dtype": "float16" if fp16 else "float32",
        "threshold": str(card.threshold), "thresholds": json.dumps(card.thresholds),
        "input": "preprocessed float NCHW batch (see preprocessing)",
        "output": "logits (apply sigmoid for probabilities)",
    }


def shape_arithmetic(graph) -> list[str]:
    """Nodes that compute shapes (a dynamic-size graph's "same" paddings: Shape, Cast, Ceil, Div …)
    rather than activations. They stay in fp32: converted, their Casts kept producing float32
    while the graph declared float16, and onnxruntime refused the model."""
    activations = {i.name for i in graph.input}
    shapes, nodes = set(), []
    for node in graph.node:  # ONNX graphs are stored in topological order
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape":
            shapes.update(node.output)
            nodes.append(node.name)
        elif any(i in activations for i in inputs):
            activations.update(node.output)
        elif any(i in shapes for i in inputs):
            shapes.update(node.output)
            nodes.append(node.name)
    return nodes


def to_fp16(proto):
    """Weights and activations in fp16, keeping float32 graph inputs/outputs casts inside."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        float16 = None
    if float16 is not None:
        with warnings.catch_warnings():  # it warns for every tiny weight it rounds
            warnings.simplefilter("ignore")
            return float16.convert_float_to_float16(proto, keep_io_types=False,
                                                    node_block_list=shape_arithmetic(proto.graph))
    raise CSRAError("--fp16 needs the package onnxconverter-common (pip install onnxconverter-common)")


def verify_onnx(model: CSRAModel, path: Path, images: list[str] | None = None, dynamic_size: bool = False) -> dict:
    """Max |logit difference| between onnxruntime and PyTorch on random and real inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no constant-folding chatter
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fp16 = inp.type == "tensor(float16)"
    size = model.card.input_size
    sizes = [size] + ([size + 32] if dynamic_size else [])
    worst, count, scale = 0.0, 0, 1.0
    for s in sizes:
        raw = verification_batch(s, images if s == size else None)
        x = model.transform.normalize(raw)
        with torch.no_grad():
            ref = model.float()(x).numpy()
        feed = x.numpy().astype(np.float16 if fp16 else np.float32)
        got = sess.run(None, {inp.name: feed})[0].astype(np.float32)
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        count += len(x)
    tol = FP16_RELATIVE * scale if fp16 else FP32_TOLERANCE
    return {"max_abs_diff": worst, "inputs": count, "tolerance": tol, "ok": worst <= tol, "fp16": fp16}


def export_torchscript(model: CSRAModel, out: Path) -> Path:
    size = model.card.input_size
    model = model.eval().float().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.rand(2, 3, size, size), check_trace=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(out), _extra_files={"csra_card.json": model.card.embedded_json()})
    return out


def verify_torchscript(model: CSRAModel, path: Path, images: list[str] | None = None) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    x = model.transform.normalize(verification_batch(model.card.input_size, images))
    with torch.no_grad():
        worst = float((loaded(x) - model(x)).abs().max())
    return {"max_abs_diff": worst, "inputs": len(x), "tolerance": FP32_TOLERANCE, "ok": worst <= FP32_TOLERANCE}
