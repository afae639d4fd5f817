"""``csra train``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import DATASET_OPTIONS, DatasetOptions, app, check_output, handle_errors, in_range, open_selected, writing_into_cache
from ..console import info
from ..errors import CSRAError
from ..models.card import heads_text
from .options import Opt, OptionGroup


# More than this share of a set's images missing or unreadable ends the run (--allow-missing goes on).
MAX_UNREADABLE = 0.01

# The training command's options, in the values its body reads.
VALIDATION = OptionGroup(
    "ValidationOptions", "Validation",
    val_split=Opt(Annotated[Optional[str], typer.Option(help="VOC validation split ('' for none).")], "val"),
    val_annotations=Opt(Annotated[Optional[str], typer.Option(help="COCO: validation instances JSON.")]),
    val_images=Opt(Annotated[Optional[str], typer.Option(help="COCO: validation images folder.")]),
    val_labels=Opt(Annotated[Optional[str], typer.Option(help="CSV: validation labels (path,tags).")]))
NETWORK = OptionGroup(
    "NetworkOptions", "Network",
    arch=Opt(Annotated[str, typer.Option(help="Backbone (ImageNet weights for EfficientNet-Lite).")], "efficientnet_lite0"),
    heads=Opt(Annotated[int, typer.Option(help="CSRA heads: 1, 2, 4, 6 or 8.")], 1),
    lam=Opt(Annotated[float, typer.Option(help="Lambda.")], 0.1),
    input_size=Opt(Annotated[int, typer.Option(callback=in_range("--input-size", 32), help="Training image size.")], 448),
    test_size=Opt(Annotated[Optional[int], typer.Option(callback=in_range("--test-size", 32), help="Size the model runs at (validation, thresholds, the card); default --input-size. CNNs trained on random crops do better a little larger (FixRes).")]),
    mean=Opt(Annotated[Optional[str], typer.Option(help="Normalisation mean 'r,g,b' (default: 0.5 for EfficientNet-Lite/ViT, none for ResNet).")]),
    std=Opt(Annotated[Optional[str], typer.Option(help="Normalisation std 'r,g,b'.")]),
    freeze_backbone=Opt(Annotated[bool, typer.Option("--freeze-backbone", help="Train the heads only, on cached features.")], False),
    trainable_stages=Opt(Annotated[Optional[str], typer.Option(help="Fine-tune the last N backbone stages on cached features of the others; 'all' (the default) trains the whole network on augmented images.")]))
SCHEDULE = OptionGroup(
    "ScheduleOptions", "Schedule",
    epochs=Opt(Annotated[int, typer.Option(callback=in_range("--epochs", 1), help="Passes over the training images.")], 30),
    batch_size=Opt(Annotated[int, typer.Option(callback=in_range("--batch-size", 1), help="Images per training step.")], 16),
    optimizer=Opt(Annotated[str, typer.Option(help="sgd (official recipe) or adamw.")], "sgd"),
    lr=Opt(Annotated[float, typer.Option(help="Backbone learning rate; heads get --head-lr-mult times it.")], 0.01),
    head_lr_mult=Opt(Annotated[float, typer.Option(help="The CSRA heads' learning rate as a multiple of --lr.")], 10.0),
    momentum=Opt(Annotated[float, typer.Option(help="SGD momentum (--optimizer sgd).")], 0.9),
    weight_decay=Opt(Annotated[float, typer.Option(help="Weight decay (L2 for sgd, decoupled for adamw).")], 1e-4),
    warmup_epochs=Opt(Annotated[int, typer.Option(callback=in_range("--warmup-epochs", 0), help="Epochs of linear learning-rate warm-up.")], 2),
    lr_step=Opt(Annotated[int, typer.Option(help="Decay the lr by --lr-gamma every N epochs (0: once, at 2/3).")], 0),
    lr_gamma=Opt(Annotated[float, typer.Option(help="Factor of each learning-rate step (see --lr-step).")], 0.1),
    crop_scale_min=Opt(Annotated[float, typer.Option(callback=in_range("--crop-scale-min", 0.05, 1), help="Random resized crop: smallest area fraction.")], 0.7),
    workers=Opt(Annotated[int, typer.Option(callback=in_range("--workers", 0), help="Decoding processes.")], 2),
    seed=Opt(Annotated[int, typer.Option(help="Random seed: the same seed, data and options give the same weights.")], 0),
    loss=Opt(Annotated[str, typer.Option(help="bce (binary cross-entropy, the paper's) or asl (asymmetric loss: easy negatives weigh less).")], "bce"),
    ema=Opt(Annotated[float, typer.Option(callback=in_range("--ema", 0, 0.9999), help="Keep an exponential moving average of the weights with this decay (e.g. 0.998) and ship it; cached-feature training only.")], 0.0))
RESULT = OptionGroup(
    "ResultOptions", "Result",
    license=Opt(Annotated[str, typer.Option("--license", help="Licence of the resulting weights, for the card.")], ""),
    attribution=Opt(Annotated[str, typer.Option("--attribution", help="Credits for the card (data, weights); default: the backbone weights and data.")], ""),
    fp32=Opt(Annotated[bool, typer.Option("--fp32", help="Store the weights in fp32 (default fp16).")], False),
    out=Opt(Annotated[Optional[Path], typer.Option(help="Folder for checkpoints and the model (default: runs/NAME).")]),
    name=Opt(Annotated[str, typer.Option(help="Model name: NAME.safetensors + NAME.json, also registered in $CSRA_HOME so --model NAME finds it.")], "csra-model"),
    resume=Opt(Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")], False))
ValidationOptions = VALIDATION.build
NetworkOptions = NETWORK.build
ScheduleOptions = SCHEDULE.build
ResultOptions = RESULT.build


@app.command()
@handle_errors
@DATASET_OPTIONS.into("data", defaults={"split": "train"},
                      help={"split": "VOC training split.", "annotations": "COCO: training instances JSON.",
                            "images": "COCO: training images folder.", "labels": "CSV: training labels (path,tags)."})
@VALIDATION.into("validation")
@NETWORK.into("network")
@SCHEDULE.into("schedule")
@RESULT.into("result")
def train(data: "DatasetOptions", validation: "ValidationOptions", network: "NetworkOptions",
          schedule: "ScheduleOptions", result: "ResultOptions",
          allow_missing: Annotated[bool, typer.Option(
              "--allow-missing", help=f"Train even when more than {MAX_UNREADABLE:.0%} of the images are missing or "
                                      "unreadable (they are always left out, and listed).")] = False):
    """Fine-tune CSRA; writes our model format with val metrics and per-class thresholds.

    Backbone stages before the trainable ones are run once per image (plain and mirrored) and
    their feature maps cached under $CSRA_HOME/features, so CPU training takes minutes. The
    result is registered in $CSRA_HOME under its name: use it with --model NAME."""
    from ..engine.device import set_threads
    from ..train.trainer import TrainConfig, train as run_train

    stages = trainable_stages(network)
    name = check_name(result.name)
    check_output(result.out)
    out = result.out if result.out is not None else Path("runs") / name  # a default folder is csra's to create
    if network.heads not in (1, 2, 4, 6, 8):
        raise CSRAError("--heads must be 1, 2, 4, 6 or 8")
    if schedule.loss not in ("bce", "asl"):
        raise CSRAError("--loss: use bce or asl")
    if schedule.optimizer not in ("sgd", "adamw"):
        raise CSRAError("--optimizer: use sgd or adamw")
    run_size = network.test_size if network.test_size != network.input_size else None  # None: runs at its training size
    if run_size and network.arch.startswith("vit"):
        raise CSRAError("--test-size works with CNN backbones; a ViT's position embeddings fix its input size")
    m, s = normalisation(network)
    train_set, left_out = readable_only(open_selected(data), "training", allow_missing)
    val_set = validation_set(data, validation, train_set)
    if val_set is not None:
        val_set, val_left_out = readable_only(val_set, "validation", allow_missing)
        left_out += val_left_out
    cfg = TrainConfig(arch=network.arch, num_heads=network.heads, lam=network.lam, input_size=network.input_size,
                      test_size=run_size, mean=m, std=s, epochs=schedule.epochs,
                      batch_size=schedule.batch_size, optimizer=schedule.optimizer, lr=schedule.lr,
                      head_lr_mult=schedule.head_lr_mult, momentum=schedule.momentum,
                      weight_decay=schedule.weight_decay, warmup_epochs=schedule.warmup_epochs,
                      lr_step=schedule.lr_step, lr_gamma=schedule.lr_gamma, crop_scale=(schedule.crop_scale_min, 1.0),
                      trainable_stages=stages, workers=schedule.workers, seed=schedule.seed, loss=schedule.loss,
                      half=not result.fp32, ema=schedule.ema, license=result.license, attribution=result.attribution)
    set_threads()
    info(f"training {network.arch} ({heads_text(network.heads)}, lambda {network.lam}) at {network.input_size}px"
         f"{f' (run at {run_size}px)' if run_size else ''} on {len(train_set)} images"
         + (f", validating on {len(val_set)}" if val_set else "")
         + (f" ({len(left_out)} unreadable left out)" if left_out else ""))
    # file names only: a card may be published, and absolute paths would show the user's folders
    extra = ({"unreadable_images": {"count": len(left_out), "names": [Path(p).name for p, _ in left_out][:1000]}}
             if left_out else None)
    path, report = run_train(cfg, train_set, val_set, out, name, resume=result.resume, log=info, card_extra=extra)
    if report:
        info(f"val mAP {report['mAP']:.2f}  CF1 {report['CF1']:.2f}  OF1 {report['OF1']:.2f}")
    with writing_into_cache():
        registered = register(path)
    info(f"model written to {path} and registered as {registered.parent}/{name}; use it with --model {name}")


def readable_only(dataset, role: str, allow_missing: bool):
    """The set less its missing or unreadable images (a blank image with real labels would teach
    the model wrong), each named; (set, [(path, why)]). More than a small share is refused."""
    from ..console import warn
    from ..data.loader import unreadable

    bad = [(p, why) for p in dataset.paths if (why := unreadable(p))]
    if not bad:
        return dataset, []
    for p, why in bad[:10]:
        warn(f"{role} image left out: {p} ({why})")
    if len(bad) > 10:
        warn(f"… and {len(bad) - 10} more {role} images left out")
    share = len(bad) / max(len(dataset), 1)
    if share > MAX_UNREADABLE and not allow_missing:
        raise CSRAError(f"{len(bad)} of {len(dataset)} {role} images ({share:.1%}) are missing or unreadable, more than "
                        f"{MAX_UNREADABLE:.0%}; fix the data or pass --allow-missing to train without them")
    remaining = dataset.without({p for p, _ in bad})
    if len(remaining) == 0:
        raise CSRAError(f"none of the {len(dataset)} {role} images can be read")
    return remaining, bad


def trainable_stages(network) -> int | None:
    """--trainable-stages N / all and --freeze-backbone as the trainer's number (None: all)."""
    given = network.trainable_stages
    if given not in (None, "all") and not given.isdigit():
        raise CSRAError("--trainable-stages: a number of stages, or all")
    stages = None if given in (None, "all") else int(given)
    if network.freeze_backbone:
        if given is not None and given != "0":
            raise CSRAError("--freeze-backbone and --trainable-stages contradict each other")
        stages = 0
    return stages


def check_name(name: str) -> str:
    """A model name that --model NAME finds again: a plain file name without a model suffix."""
    from ..models.loading import MODEL_FILE_SUFFIXES

    if not name or name != Path(name).name or name.startswith("."):
        raise CSRAError(f"--name {name!r}: a plain file name (no folders), e.g. my-model")
    if Path(name).suffix.lower() in MODEL_FILE_SUFFIXES:  # --model NAME would be taken for a file
        raise CSRAError(f"--name {name!r}: a model name cannot end in {Path(name).suffix}, e.g. my-model")
    return name


def normalisation(network) -> tuple[list[float] | None, list[float] | None]:
    """--mean and --std as three numbers each (0.5 for backbones other than ResNet when not given)."""
    parse = lambda s: [float(v) for v in s.split(",")] if s else None  # noqa: E731
    m, s = parse(network.mean), parse(network.std)
    if m is None and s is None and not network.arch.startswith("resnet"):
        m = s = [0.5, 0.5, 0.5]
    if (m is None) != (s is None) or (m and (len(m) != 3 or len(s) != 3)):
        raise CSRAError("--mean and --std go together, three values each")
    return m, s


def validation_set(data, validation, train_set):
    """The labelled set to validate on, from the same kind of dataset; None without one."""
    from ..data.selection import open_dataset

    if data.dataset == "voc" and validation.val_split:
        return open_dataset("voc", data.root, validation.val_split)
    if data.dataset == "coco" and validation.val_annotations:
        return open_dataset("coco", annotations=validation.val_annotations, images=validation.val_images)
    if data.dataset == "csv" and validation.val_labels:
        return open_dataset("csv", labels=validation.val_labels, tag_sep=data.tag_sep, classes=train_set.classes)
    return None


def register(path: Path) -> Path:
    """Copy a trained NAME.safetensors and its card NAME.json into $CSRA_HOME, where a model
    name resolves (as 'csra models import' does for official checkpoints)."""
    from ..fileio import atomic_write_bytes
    from ..models.registry import cache_dir

    dest = cache_dir() / path.name
    for src in (path, path.with_suffix(".json")):
        atomic_write_bytes(dest.with_suffix(src.suffix), src.read_bytes())
    return dest
