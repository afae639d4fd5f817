"""Val mAP/CF1/OF1 of one trained model run at several input sizes, with and without
test-time flip averaging (the "run size" and `--tta` rows of RESULTS.md).

    csra export --onnx --dynamic-size --model csra-voc-effl2-512 --out /tmp/dyn.onnx
    python benchmarks/test_size_sweep.py /tmp/dyn.onnx ../shared/data/voc2007/VOCdevkit 320,384,448,512

Images are decoded and resized as `csra tag` does (numpy preprocessing, JPEG draft decoding),
the model runs through onnxruntime on the CPU; metrics at threshold 0.5."""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from csra_cli.data.datasets import read_voc
from csra_cli.data.preprocess import Preprocess
from csra_cli.evaluation.metrics import evaluate


def main() -> None:
    onnx, root, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
    data = read_voc(root, "val")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    print("| run size | flip TTA | val mAP | CF1 | OF1 | seconds (decode + model) |\n|---|---|---|---|---|---|")
    for size in sizes:
        pre = Preprocess(size, [0.5] * 3, [0.5] * 3)
        plain, mirrored, model_s = [], [], [0.0, 0.0]
        with ThreadPoolExecutor(1) as pool:
            for i in range(0, len(data.paths), 16):
                x = pre.normalize_numpy(np.stack(list(pool.map(pre.load, data.paths[i:i + 16]))))
                t = time.perf_counter()
                plain.append(session.run(None, {name: x})[0])
                model_s[0] += time.perf_counter() - t
                t = time.perf_counter()
                mirrored.append(session.run(None, {name: np.ascontiguousarray(x[..., ::-1])})[0])
                model_s[1] += time.perf_counter() - t
        p, m = sigmoid(np.concatenate(plain)), sigmoid(np.concatenate(mirrored))
        for tta, scores, secs in (("no", p, model_s[0]), ("yes", (p + m) / 2, sum(model_s))):
            r = evaluate(scores, data.labels, data.classes)
            print(f"| {size} | {tta} | {r['mAP']:.2f} | {r['CF1']:.2f} | {r['OF1']:.2f} | model {secs:.0f} s |",
                  flush=True)


if __name__ == "__main__":
    main()
