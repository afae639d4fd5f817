"""int8 for the CPU: onnxruntime static quantisation of an fp32 export (QDQ format, per-channel
int8 weights, uint8 activations), calibrated on real images; the calibration set and method
are written into the ONNX metadata (``csra_quantization``) beside the model card.

The recipe, each part measured on VOC val with the shipped model (benchmarks/RESULTS.md):
- weights use 7 of their 8 bits (``reduce_range``): CPUs without VNNI multiply u8 x s8 pairs
  into 16-bit sums that overflow with full-range weights (mAP drop 1.41 -> 0.57 points);
- the first layers and the CSRA head stay fp32: the first see the image in full detail, the
  head's score maps feed a max and a softmax (drop 0.57 -> 0.15); an int8 convolution over the
  3 channels of an image gains nothing anyway. The fp32 part ends at the smallest feature map at a
  quarter of the input's resolution or more (EfficientNet: the second block's output, 24 x 128 x
  128 at 512 px; ResNet: the first 1x1 convolution after the max-pool), where converting to int8
  costs least: ending it at the larger maps of half resolution spent a fifth of the int8 run on
  reordering, transposing and quantising them."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..data.loader import load_one
from ..data.preprocess import Preprocess
from ..errors import CSRAError
from ..fileio import atomic_temp

CALIBRATION_METHOD = "MinMax"  # the percentile/entropy calibrators hold histograms of every activation
# Part of the int8 export's cache key: an export made by an older recipe is not reused.
RECIPE = "qdq-pc-rr-fp32prefix-3"


def calibration_record(paths: list[str], method: str = CALIBRATION_METHOD, source: str = "") -> dict:
    """What the int8 graph was calibrated on, to be stored with it."""
    names = [os.path.basename(p) for p in paths]
    return {"format": "QDQ", "weights": "int8, per channel, 7-bit range (reduce_range)",
            "activations": "uint8, per tensor", "recipe": RECIPE,
            "kept_fp32": "the convolutions up to the smallest feature map at a quarter of the input "
                         "resolution or more, and the CSRA head",
            "method": method, "images": len(paths), "source": source,
            "files_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "first_files": names[:5]}


class _Images:
    """onnxruntime's CalibrationDataReader protocol: one preprocessed image per call."""

    def __init__(self, paths: list[str], pre: Preprocess, input_name: str):
        self.paths, self.pre, self.input_name = iter(paths), pre, input_name
        self.used: list[str] = []

    def get_next(self):
        for p in self.paths:
            arr, error = load_one(self.pre, p)
            if not error:
                self.used.append(p)
                return {self.input_name: self.pre.normalize_numpy(arr[None])}
        return None

    def rewind(self):  # not needed by MinMax; the protocol names it
        pass


def fp32_nodes(model) -> list[str]:
    """Names of the nodes that stay fp32: the CSRA head (everything fed by the classifier's
    weights) and every convolution up to the one whose output is the smallest feature map (fewest
    values) at a quarter of the input's resolution or more, the first of them on a tie. Measured on
    EfficientNet, a chain there; in ResNet the max-pool's output also feeds layer1's int8 shortcut,
    so two maps cross into int8 (unmeasured). A ViT has no 4-D maps after its patch embedding:
    only its head stays fp32."""
    import onnx

    head_inits = {i.name for i in model.graph.initializer if i.name.startswith("classifier.")}
    tainted, keep = set(head_inits), []
    for node in model.graph.node:  # topological order: a node's inputs come before it
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
            keep.append(node.name)
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731 (0: unknown)
    shapes = {vi.name: dims(vi) for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    size = dims(model.graph.input[0])[2:]
    if len(size) == 2 and size[0]:
        cut, smallest = -1, None
        for i, node in enumerate(model.graph.node):
            out = shapes.get(node.output[0], [])
            if node.op_type == "Conv" and len(out) == 4 and all(out[1:]) and out[2] * 4 >= size[0]:
                values = out[1] * out[2] * out[3]
                if smallest is None or values < smallest:
                    cut, smallest = i, values
        keep += [node.name for node in model.graph.node[:cut + 1] if node.op_type == "Conv"]
    return keep


def quantize_int8(fp32: Path, out: Path, card, images: list[str], source: str = "", key: str = "") -> dict:
    """Quantise ``fp32`` (an export with csra metadata) into ``out`` (written atomically);
    returns the calibration record. ``key``: the export key of the weights it was made from
    (``runners.export_key``), stored so that a copy shipped beside the weights can be checked."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not images:
        raise CSRAError("int8 calibration needs images (--calibrate-on)")
    pre = Preprocess.from_card(card)
    input_name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    reader = _Images(images, pre, input_name)
    fd, tmp = atomic_temp(out, ".onnx")
    os.close(fd)
    try:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process: the export has BatchNorm folded already
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(fp32), tmp, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                reduce_range=True, nodes_to_exclude=fp32_nodes(onnx.load(str(fp32))),
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD))
        finally:
            root.setLevel(level)
        if not reader.used:
            raise CSRAError("int8 calibration: none of the calibration images could be read")
        record = calibration_record(reader.used, CALIBRATION_METHOD, source)
        proto = onnx.load(tmp)
        meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
        meta.update(csra_precision="int8", csra_quantization=json.dumps(record))
        if key:
            meta["csra_export_key"] = key
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return record


def agreement(a: np.ndarray, b: np.ndarray, thresholds: np.ndarray) -> float:
    """Share of image-class decisions (score >= threshold) that two score tables agree on (%)."""
    return round(100.0 * float(np.mean((a >= thresholds) == (b >= thresholds))), 2)
