"""A model card for the same weights run at another input size, with its metrics and per-class
thresholds measured on VOC val at that size (how `csra-voc-effl2-320`, the fast companion, was made).

    python benchmarks/run_size_variant.py SRC.json SIZE NAME VOCdevkit OUT_FOLDER

The weights are unchanged (`--test-size` does not change training, only where the model is
validated): in SRC's folder the new card names SRC's weights file (`weights_file`), so the two
models ship one file; in another folder the weights are copied. The card's training command gets
`--test-size SIZE --name NAME` and its config `test_size`; its history keeps the val mAP of the
original run, at the size recorded in `run_size_note`, and its metrics and thresholds are measured
here at SIZE."""
import json
import re
import shutil
import sys
from pathlib import Path

from csra_cli.data.datasets import read_voc
from csra_cli.engine.runners import make_runner
from csra_cli.evaluation.metrics import best_f1_thresholds, evaluate
from csra_cli.evaluation.scoring import score_images
from csra_cli.models.card import ModelCard, model_files


def main() -> None:
    src, size, name, root, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5])
    card = ModelCard.load(src)
    source_weights, card_file = model_files(src).weights, out / f"{name}.json"
    if card_file.parent.resolve() == source_weights.parent.resolve():
        card.weights_file = source_weights.name
    else:
        shutil.copyfile(source_weights, card_file.with_suffix(".safetensors"))
        card.weights_file = ""
    card.name, card.input_size = name, size
    command = re.sub(r"--name \S+", f"--name {name}", re.sub(r" --test-size \d+", "", card.training["command"]))
    trained = card.training["config"]["input_size"]
    card.training = {**card.training, "command": command.replace(" --heads", f" --test-size {size} --heads", 1),
                     "config": {**card.training["config"], "test_size": size},
                     # runs before --test-size validated at the trained size and did not record it
                     "history": [{"val_size": trained, **h} for h in card.training["history"]],
                     "run_size_note": f"trained at {trained} px (the history's val mAP is at its val_size), "
                                      f"run at {size} px (--test-size): metrics and thresholds at {size} px"}
    card_file.write_text(card.to_json())  # sha256 unchanged: the same weights

    val = read_voc(root, "val")
    scores, failed = score_images(make_runner(str(card_file), device="cpu"), val.paths, 16, 1)
    assert not failed, failed
    thresholds = best_f1_thresholds(scores, val.labels)
    at_half = evaluate(scores, val.labels, card.classes, 0.5)
    at_t = evaluate(scores, val.labels, card.classes, thresholds)
    card.thresholds = {c: round(float(t), 4) for c, t in zip(card.classes, thresholds)}
    card.metrics = {
        "dataset": "voc2007/val (990 images, difficult flags absent)", "num_images": len(val),
        "measured_with": "csra eval --dataset voc --root VOCdevkit --split val",
        **{k: round(at_half[k], 2) for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")},
        "per_class_thresholds": {k: round(at_t[k], 2) for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")},
        "note": "per-class thresholds were chosen on this same val split, so their CF1/OF1 are optimistic",
    }
    card_file.write_text(card.to_json())
    print(json.dumps(card.metrics, indent=1))


if __name__ == "__main__":  # decode workers start by importing this file
    main()
