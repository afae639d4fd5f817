"""int8 for the CPU: onnxruntime static quantisation of an fp32 export (QDQ format, per-channel
int8 weights, uint8 activations), calibrated on real images; the calibration set and method
are written into the ONNX metadata (``csra_quantization``) beside the model card."""
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


def calibration_record(paths: list[str], method: str = CALIBRATION_METHOD, source: str = "") -> dict:
    """What the int8 graph was calibrated on, to be stored with it."""
    names = [os.path.basename(p) for p in paths]
    return {"format": "QDQ", "weights": "int8, per channel", "activations": "uint8, per tensor",
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


def quantize_int8(fp32: Path, out: Path, card, images: list[str], source: str = "") -> dict:
    """Quantise ``fp32`` (an export with csra metadata) into ``out`` (written atomically);
    returns the calibration record."""
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
