"""The shipped 1,000-class model (--model imagenet): training-free CSRA over EfficientNet-Lite2's
ImageNet classifier, its WordNet keyword table and class maps, keywords in records and XMP, and
several models in one run."""
import json
import shutil

import numpy as np
import pytest
import torch

from csra_cli.models import registry

from .conftest import make_image

HERE = registry.weights_dir()


def _card() -> dict:
    return json.loads((HERE / "csra-imagenet-effl2.json").read_text())


def test_the_card_describes_a_training_free_softmax_classifier():
    card = _card()
    entry = registry.entry(registry.canonical("imagenet"))
    assert entry["name"] == card["name"] == "csra-imagenet-effl2" and entry["kind"] == "shipped"
    assert card["head_style"] == "classifier" and card["activation"] == "softmax" and card["num_heads"] == 1
    assert len(card["classes"]) == len(set(card["classes"])) == 1000 == len(card["training"]["wnids"])
    assert card["training"]["wnids"] == sorted(card["training"]["wnids"])  # ImageNet-1k's class order
    assert card["classes"][207] == "golden retriever" and card["classes"][0] == "tench"
    assert card["metrics"]["mAP"] > card["metrics"]["mAP_lambda0"]  # the training-free gain, measured
    assert "WordNet" in card["license"] and (HERE / "WORDNET-LICENSE").read_text().count("Princeton") >= 2


def test_lambda_0_is_the_pretrained_classifier_itself():
    """With lambda 0 the score maps' mean is the classifier's logit: the ImageNet model unchanged."""
    from csra_cli.models.backbones import imagenet_efficientnet_lite
    from csra_cli.models.loading import load_model

    model = load_model("imagenet", lam=0.0).float().eval()
    fc = imagenet_efficientnet_lite(2, None)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours = model(x)
        plain = model.backbone(x).mean((2, 3)) @ fc["_fc.weight"].T + fc["_fc.bias"]
    # the shipped head is fp16: within its rounding of the fp32 classifier
    torch.testing.assert_close(ours, plain, atol=0.05, rtol=0.01)
    full = load_model("imagenet").float().eval()
    with torch.no_grad():
        lam = full.card.lam
        maps = full.classifier.multi_head[0].score_maps(full.backbone(x)).flatten(2)
        att = maps.amax(2) if full.card.temperatures[0] >= 99 else (maps * torch.softmax(
            maps * full.card.temperatures[0], 2)).sum(2)
        torch.testing.assert_close(full(x), maps.mean(2) + lam * att)


def test_the_keyword_table_gives_plain_names_and_broader_terms_broadest_first():
    card = _card()
    broader = card["broader"]
    assert broader["golden retriever"] == ["animal", "mammal", "dog"]
    assert broader["tabby"][-1] == "cat" and broader["sports car"][-1] == "car"
    assert broader["airliner"][0] == "vehicle" and "fish" in broader["tench"]
    assert {"crane (bird)", "crane (lifting device)"} <= set(card["classes"])  # same word, two classes
    dogs = [c for c, b in broader.items() if "dog" in b]
    assert len(dogs) == 118  # every ImageNet dog breed: searching "dog" finds them all
    import sys

    sys.path.insert(0, str(HERE))
    was, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in weights/
    try:
        import make_imagenet_model as maker  # the table's own source: its terms and nothing else
    finally:
        sys.dont_write_bytecode = was
        sys.path.remove(str(HERE))

    assert {t for b in broader.values() for t in b} <= set(maker.BROAD)


@pytest.mark.parametrize("name,dataset,size", [("imagenet-to-voc", "voc", 20), ("imagenet-to-coco", "coco", 80)])
def test_the_class_maps_cover_what_imagenet_can_and_say_what_it_cannot(name, dataset, size):
    from csra_cli.data.classes import COCO_CLASSES, VOC_CLASSES

    data = json.loads((HERE / f"{name}.json").read_text())
    classes = set(_card()["classes"])
    wanted = set(VOC_CLASSES if dataset == "voc" else COCO_CLASSES)
    assert set(data["map"]) | set(data["not_covered"]) == wanted and len(wanted) == size
    assert "person" in data["not_covered"]
    mapped = [c for sources in data["map"].values() for c in sources]
    assert set(mapped) <= classes and len(mapped) == len(set(mapped))  # each class onto one dataset class
    if dataset == "voc":
        assert len(data["map"]["dog"]) == 118 and data["map"]["cat"] == ["tabby", "tiger cat", "Persian cat",
                                                                         "Siamese cat", "Egyptian cat"]


def test_a_many_to_one_map_sums_the_scores():
    from csra_cli.evaluation.scoring import combine_classes

    scores = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.25, 0.25]])
    out, names = combine_classes(scores, ["beagle", "pug", "tabby", "car wheel"],
                                 {"map": {"dog": ["beagle", "pug"], "cat": ["tabby"], "bus": ["minibus"]}})
    assert names == ["dog", "cat"] and np.allclose(out, [[0.3, 0.3], [0.5, 0.25]])


def test_keyword_modes_and_their_hierarchy():
    from csra_cli.engine.tagging import TagPolicy, keyword_tags
    from csra_cli.results.sidecars import keyword_hierarchy

    broader = {"beagle": ["animal", "mammal", "dog"], "pug": ["animal", "mammal", "dog"], "tabby": ["animal", "cat"]}
    fine = ["beagle", "pug", "tabby", "car"]

    def policy(mode):
        return TagPolicy(np.zeros(4), broader=broader, keywords=mode)

    assert keyword_tags(fine, policy("fine")) == fine
    assert keyword_tags(fine, policy("broad")) == ["dog", "mammal", "animal", "cat"]  # each once
    assert keyword_tags(fine, policy("both")) == fine + ["dog", "mammal", "animal", "cat"]
    assert keyword_hierarchy(fine, broader) == ["animal|mammal|dog|beagle", "animal|mammal|dog|pug",
                                                "animal|cat|tabby", "CSRA|car"]
    assert keyword_hierarchy(fine, None) is None
    # broad: the keyword tree must not assign the fine name either
    assert keyword_hierarchy(fine, broader, "broad") == ["animal|mammal|dog", "animal|cat"]


def test_xmp_keyword_paths_are_replaced_on_a_new_run_and_the_users_are_kept():
    from csra_cli.results.sidecars import merge_xmp

    user = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:lr="http://ns.adobe.com/lightroom/1.0/"><dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag>'
            '</dc:subject><lr:hierarchicalSubject><rdf:Bag><rdf:li>Trips|Italy</rdf:li></rdf:Bag>'
            '</lr:hierarchicalSubject></rdf:Description></rdf:RDF></x:xmpmeta>').encode()  # the user's own keywords
    first = merge_xmp(user, ["beagle", "dog"], ["animal|dog|beagle"])
    text = first.decode()
    assert "animal|dog|beagle" in text and "Trips|Italy" in text and "holiday" in text
    second = merge_xmp(first, ["tabby", "cat"], ["animal|cat|tabby"]).decode()
    assert "animal|cat|tabby" in second and "animal|dog|beagle" not in second and ">beagle<" not in second
    assert "Trips|Italy" in second and "holiday" in second


def test_two_models_in_one_run_decode_each_image_once(tmp_path, tiny_model_path, monkeypatch):
    """--model A --model B: one record per image with both models' tags and scores; each image
    decoded once; the scores are each model's own (PNG: no draft decoding, so bit for bit)."""
    from typer.testing import CliRunner

    import csra_cli.data.preprocess as preprocess
    from csra_cli.cli import app
    from csra_cli.models.card import ModelCard

    other = tmp_path / "tiny2.safetensors"
    shutil.copy(tiny_model_path, other)
    card = ModelCard.load(tiny_model_path.with_suffix(".json"))
    card.name, card.input_size, card.classes = "tiny2", 48, [("dog" if c == "dog" else f"{c}2") for c in card.classes]
    other.with_suffix(".json").write_text(card.to_json())
    photos = [make_image(tmp_path / "p" / f"{i}.png", size=(70, 50), color=(20 * i, 100, 30)) for i in range(5)]
    opened = []
    real = preprocess.open_image
    monkeypatch.setattr(preprocess, "open_image", lambda p, *a, **k: opened.append(str(p)) or real(p, *a, **k))
    monkeypatch.setenv("CSRA_DECODE", "threads")
    runner = CliRunner()
    both = runner.invoke(app, ["tag", str(tmp_path / "p"), "-m", str(tiny_model_path), "-m", str(other),
                               "-o", str(tmp_path / "both.jsonl"), "-q", "-t", "0.4", "--scores"])
    assert both.exit_code == 0, both.output
    assert sorted(opened) == sorted(map(str, photos))  # once each
    single = {}
    for m, name in ((tiny_model_path, "a"), (other, "b")):
        res = runner.invoke(app, ["tag", str(tmp_path / "p"), "-m", str(m), "-o", str(tmp_path / f"{name}.jsonl"),
                                  "-q", "-t", "0.4", "--scores"])
        assert res.exit_code == 0
        single[name] = {r["path"]: r for r in map(json.loads, (tmp_path / f"{name}.jsonl").read_text().splitlines())}
    for rec in map(json.loads, (tmp_path / "both.jsonl").read_text().splitlines()):
        a, b = single["a"][rec["path"]], single["b"][rec["path"]]
        assert rec["settings"]["model"] == "tiny,tiny2"
        assert set(rec["tags"]) == set(a["tags"]) | {"tiny2:dog" if t == "dog" else t for t in b["tags"]}
        for c, s in a["scores"].items():  # --scores: every class's
            assert rec["scores"][c] == s
        for c, s in b["scores"].items():  # the second model's "dog" is tiny2:dog
            assert rec["scores"]["tiny2:dog" if c == "dog" else c] == s
