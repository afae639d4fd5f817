"""``csra train``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import app, handle_errors
from .console import info
from .errors import CSRAError


@app.command()
@handle_errors
def train(
    dataset: str = typer.Option(..., help="voc, coco or csv."),
    root: Optional[str] = typer.Option(None, help="VOC: VOCdevkit or VOC2007 folder."),
    split: str = typer.Option("train", help="VOC training split."),
    val_split: Optional[str] = typer.Option("val", help="VOC validation split ('' for none)."),
    annotations: Optional[str] = typer.Option(None, help="COCO: training instances JSON."),
    images: Optional[str] = typer.Option(None, help="COCO: training images folder."),
    val_annotations: Optional[str] = typer.Option(None, help="COCO: validation instances JSON."),
    val_images: Optional[str] = typer.Option(None, help="COCO: validation images folder."),
    labels: Optional[str] = typer.Option(None, help="CSV: training labels (path,tags)."),
    val_labels: Optional[str] = typer.Option(None, help="CSV: validation labels (path,tags)."),
    tag_sep: str = typer.Option(";", help="CSV: tag separator."),
    arch: str = typer.Option("efficientnet_lite0", help="Backbone (ImageNet weights for EfficientNet-Lite)."),
    heads: int = typer.Option(1, help="CSRA heads: 1, 2, 4, 6 or 8."),
    lam: float = typer.Option(0.1, help="Lambda."),
    input_size: int = typer.Option(448),
    mean: Optional[str] = typer.Option(None, help="Normalisation mean 'r,g,b' (default: 0.5 for EfficientNet-Lite/ViT, none for ResNet)."),
    std: Optional[str] = typer.Option(None, help="Normalisation std 'r,g,b'."),
    epochs: int = typer.Option(30),
    batch_size: int = typer.Option(16),
    optimizer: str = typer.Option("sgd", help="sgd (official recipe) or adamw."),
    lr: float = typer.Option(0.01, help="Backbone learning rate; heads get --head-lr-mult times it."),
    head_lr_mult: float = typer.Option(10.0),
    momentum: float = typer.Option(0.9),
    weight_decay: float = typer.Option(1e-4),
    warmup_epochs: int = typer.Option(2),
    lr_step: int = typer.Option(0, help="Decay the lr by --lr-gamma every N epochs (0: once, at 2/3)."),
    lr_gamma: float = typer.Option(0.1),
    crop_scale_min: float = typer.Option(0.7, help="Random resized crop: smallest area fraction."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Train the heads only, on cached features."),
    trainable_stages: Optional[str] = typer.Option(None, help="Fine-tune the last N backbone stages on cached features of the others; 'all' (the default) trains the whole network on augmented images."),
    workers: int = typer.Option(2),
    seed: int = typer.Option(0),
    license: str = typer.Option("", "--license", help="Licence of the resulting weights, for the card."),
    attribution: str = typer.Option("", "--attribution", help="Credits for the card (data, weights); default: the backbone weights and data."),
    ema: float = typer.Option(0.0, help="Keep an exponential moving average of the weights with this decay (e.g. 0.998) and ship it; cached-feature training only."),
    fp32: bool = typer.Option(False, "--fp32", help="Store the weights in fp32 (default fp16)."),
    out: Path = typer.Option(Path("runs/csra"), help="Folder for checkpoints and the model."),
    name: str = typer.Option("csra-model", help="Model name (file NAME.safetensors + NAME.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
):
    """Fine-tune CSRA; writes our model format with val metrics and per-class thresholds.

    Backbone stages before the trainable ones are run once per image (plain and mirrored) and
    their feature maps cached under $CSRA_HOME/features, so CPU training takes minutes."""
    from .data_args import open_dataset
    from .loader import set_threads
    from .train import TrainConfig, train as run_train

    if trainable_stages not in (None, "all") and not trainable_stages.isdigit():
        raise CSRAError("--trainable-stages: a number of stages, or all")
    stages = None if trainable_stages in (None, "all") else int(trainable_stages)
    if freeze_backbone:
        if trainable_stages is not None and trainable_stages != "0":
            raise CSRAError("--freeze-backbone and --trainable-stages contradict each other")
        stages = 0
    if heads not in (1, 2, 4, 6, 8):
        raise CSRAError("--heads must be 1, 2, 4, 6 or 8")
    if optimizer not in ("sgd", "adamw"):
        raise CSRAError("--optimizer: use sgd or adamw")
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
    cfg = TrainConfig(arch=arch, num_heads=heads, lam=lam, input_size=input_size, mean=m, std=s, epochs=epochs,
                      batch_size=batch_size, optimizer=optimizer, lr=lr, head_lr_mult=head_lr_mult,
                      momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                      lr_step=lr_step, lr_gamma=lr_gamma, crop_scale=(crop_scale_min, 1.0),
                      trainable_stages=stages, workers=workers, seed=seed, half=not fp32, ema=ema,
                      license=license, attribution=attribution)
    set_threads()
    info(f"training {arch} ({heads} heads, lambda {lam}) at {input_size}px on {len(train_set)} images"
         + (f", validating on {len(val_set)}" if val_set else ""))
    path, report = run_train(cfg, train_set, val_set, out, name, resume=resume, log=info)
    if report:
        info(f"val mAP {report['mAP']:.2f}  CF1 {report['CF1']:.2f}  OF1 {report['OF1']:.2f}")
    info(f"model written to {path} (use it with --model {path})")
