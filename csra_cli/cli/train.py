"""``csra train``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, check_output, handle_errors, in_range
from ..console import info
from ..errors import CSRAError
from ..models.card import heads_text


@app.command()
@handle_errors
def train(
    dataset: Annotated[str, typer.Option(help="voc, coco or csv.")],
    root: Annotated[Optional[str], typer.Option(help="VOC: VOCdevkit or VOC2007 folder.")] = None,
    split: Annotated[str, typer.Option(help="VOC training split.")] = "train",
    val_split: Annotated[Optional[str], typer.Option(help="VOC validation split ('' for none).")] = "val",
    annotations: Annotated[Optional[str], typer.Option(help="COCO: training instances JSON.")] = None,
    images: Annotated[Optional[str], typer.Option(help="COCO: training images folder.")] = None,
    val_annotations: Annotated[Optional[str], typer.Option(help="COCO: validation instances JSON.")] = None,
    val_images: Annotated[Optional[str], typer.Option(help="COCO: validation images folder.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="CSV: training labels (path,tags).")] = None,
    val_labels: Annotated[Optional[str], typer.Option(help="CSV: validation labels (path,tags).")] = None,
    tag_sep: Annotated[str, typer.Option(help="CSV: tag separator.")] = ";",
    arch: Annotated[str, typer.Option(help="Backbone (ImageNet weights for EfficientNet-Lite).")] = "efficientnet_lite0",
    heads: Annotated[int, typer.Option(help="CSRA heads: 1, 2, 4, 6 or 8.")] = 1,
    lam: Annotated[float, typer.Option(help="Lambda.")] = 0.1,
    input_size: Annotated[int, typer.Option(callback=in_range("--input-size", 32), help="Training image size.")] = 448,
    test_size: Annotated[Optional[int], typer.Option(callback=in_range("--test-size", 32), help="Size the model runs at (validation, thresholds, the card); default --input-size. CNNs trained on random crops do better a little larger (FixRes).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean 'r,g,b' (default: 0.5 for EfficientNet-Lite/ViT, none for ResNet).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std 'r,g,b'.")] = None,
    epochs: Annotated[int, typer.Option(callback=in_range("--epochs", 1))] = 30,
    batch_size: Annotated[int, typer.Option(callback=in_range("--batch-size", 1))] = 16,
    optimizer: Annotated[str, typer.Option(help="sgd (official recipe) or adamw.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Backbone learning rate; heads get --head-lr-mult times it.")] = 0.01,
    head_lr_mult: Annotated[float, typer.Option()] = 10.0,
    momentum: Annotated[float, typer.Option()] = 0.9,
    weight_decay: Annotated[float, typer.Option()] = 1e-4,
    warmup_epochs: Annotated[int, typer.Option(callback=in_range("--warmup-epochs", 0))] = 2,
    lr_step: Annotated[int, typer.Option(help="Decay the lr by --lr-gamma every N epochs (0: once, at 2/3).")] = 0,
    lr_gamma: Annotated[float, typer.Option()] = 0.1,
    crop_scale_min: Annotated[float, typer.Option(callback=in_range("--crop-scale-min", 0.05, 1), help="Random resized crop: smallest area fraction.")] = 0.7,
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train the heads only, on cached features.")] = False,
    trainable_stages: Annotated[Optional[str], typer.Option(help="Fine-tune the last N backbone stages on cached features of the others; 'all' (the default) trains the whole network on augmented images.")] = None,
    workers: Annotated[int, typer.Option(callback=in_range("--workers", 0), help="Decoding processes.")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    license: Annotated[str, typer.Option("--license", help="Licence of the resulting weights, for the card.")] = "",
    attribution: Annotated[str, typer.Option("--attribution", help="Credits for the card (data, weights); default: the backbone weights and data.")] = "",
    loss: Annotated[str, typer.Option(help="bce (binary cross-entropy, the paper's) or asl (asymmetric loss: easy negatives weigh less).")] = "bce",
    ema: Annotated[float, typer.Option(callback=in_range("--ema", 0, 0.9999), help="Keep an exponential moving average of the weights with this decay (e.g. 0.998) and ship it; cached-feature training only.")] = 0.0,
    fp32: Annotated[bool, typer.Option("--fp32", help="Store the weights in fp32 (default fp16).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for checkpoints and the model (default: runs/NAME).")] = None,
    name: Annotated[str, typer.Option(help="Model name: NAME.safetensors + NAME.json, also registered in $CSRA_HOME so --model NAME finds it.")] = "csra-model",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
):
    """Fine-tune CSRA; writes our model format with val metrics and per-class thresholds.

    Backbone stages before the trainable ones are run once per image (plain and mirrored) and
    their feature maps cached under $CSRA_HOME/features, so CPU training takes minutes. The
    result is registered in $CSRA_HOME under its name: use it with --model NAME."""
    from ..data.selection import open_dataset
    from ..engine.device import set_threads
    from ..models.loading import MODEL_FILE_SUFFIXES
    from ..train.trainer import TrainConfig, train as run_train

    if trainable_stages not in (None, "all") and not trainable_stages.isdigit():
        raise CSRAError("--trainable-stages: a number of stages, or all")
    stages = None if trainable_stages in (None, "all") else int(trainable_stages)
    if freeze_backbone:
        if trainable_stages is not None and trainable_stages != "0":
            raise CSRAError("--freeze-backbone and --trainable-stages contradict each other")
        stages = 0
    if not name or name != Path(name).name or name.startswith("."):
        raise CSRAError(f"--name {name!r}: a plain file name (no folders), e.g. my-model")
    if Path(name).suffix.lower() in MODEL_FILE_SUFFIXES:  # --model NAME would be taken for a file
        raise CSRAError(f"--name {name!r}: a model name cannot end in {Path(name).suffix}, e.g. my-model")
    check_output(out)
    out = out if out is not None else Path("runs") / name  # a default folder is csra's to create
    if heads not in (1, 2, 4, 6, 8):
        raise CSRAError("--heads must be 1, 2, 4, 6 or 8")
    if loss not in ("bce", "asl"):
        raise CSRAError("--loss: use bce or asl")
    if optimizer not in ("sgd", "adamw"):
        raise CSRAError("--optimizer: use sgd or adamw")
    run_size = test_size if test_size != input_size else None  # None: it runs at its training size
    if run_size and arch.startswith("vit"):
        raise CSRAError("--test-size works with CNN backbones; a ViT's position embeddings fix its input size")
    parse = lambda s: [float(v) for v in s.split(",")] if s else None  # noqa: E731
    m, s = parse(mean), parse(std)
    if m is None and s is None and not arch.startswith("resnet"):
        m = s = [0.5, 0.5, 0.5]
    if (m is None) != (s is None) or (m and (len(m) != 3 or len(s) != 3)):
        raise CSRAError("--mean and --std go together, three values each")
    train_set = open_dataset(dataset, root, split, annotations, images, labels, tag_sep)
    val_set = None
    if dataset == "voc" and val_split:
        val_set = open_dataset("voc", root, val_split)
    elif dataset == "coco" and val_annotations:
        val_set = open_dataset("coco", annotations=val_annotations, images=val_images)
    elif dataset == "csv" and val_labels:
        val_set = open_dataset("csv", labels=val_labels, tag_sep=tag_sep, classes=train_set.classes)
    cfg = TrainConfig(arch=arch, num_heads=heads, lam=lam, input_size=input_size,
                      test_size=run_size, mean=m, std=s, epochs=epochs,
                      batch_size=batch_size, optimizer=optimizer, lr=lr, head_lr_mult=head_lr_mult,
                      momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                      lr_step=lr_step, lr_gamma=lr_gamma, crop_scale=(crop_scale_min, 1.0),
                      trainable_stages=stages, workers=workers, seed=seed, loss=loss, half=not fp32, ema=ema,
                      license=license, attribution=attribution)
    set_threads()
    info(f"training {arch} ({heads_text(heads)}, lambda {lam}) at {input_size}px{f' (run at {run_size}px)' if run_size else ''} on {len(train_set)} images"
         + (f", validating on {len(val_set)}" if val_set else ""))
    path, report = run_train(cfg, train_set, val_set, out, name, resume=resume, log=info)
    if report:
        info(f"val mAP {report['mAP']:.2f}  CF1 {report['CF1']:.2f}  OF1 {report['OF1']:.2f}")
    registered = register(path)
    info(f"model written to {path} and registered as {registered.parent}/{name}; use it with --model {name}")


def register(path: Path) -> Path:
    """Copy a trained NAME.safetensors and its card NAME.json into $CSRA_HOME, where a model
    name resolves (as 'csra models import' does for official checkpoints)."""
    from ..fileio import atomic_write_bytes
    from ..models.registry import cache_dir

    dest = cache_dir() / path.name
    for src in (path, path.with_suffix(".json")):
        atomic_write_bytes(dest.with_suffix(src.suffix), src.read_bytes())
    return dest
