"""Tiny models for fast tests: ``test_cnn``, ``test_resnet``, ``test_mobilenet``, ``test_vit``.

They build in milliseconds and run on any small input, so unit tests of training, pruning,
quantization and export need not touch real architectures.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.resnet import BasicBlock

from satcompress.models.registry import register_model
from satcompress.models.weights import _no_pretrained

__all__ = ["test_cnn", "test_mobilenet", "test_resnet", "test_vit"]


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """3x3 conv + batch norm + ReLU layers."""
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


@register_model("test_cnn", family="test")
def test_cnn(num_classes: int, pretrained: bool = False, width: int = 16) -> nn.Module:
    """Three conv-bn-relu layers + global pool + linear (24k params at width 16)."""
    if pretrained:
        raise _no_pretrained("test_cnn")
    w = width
    return nn.Sequential(
        *_conv_bn_relu(3, w),
        *_conv_bn_relu(w, 2 * w, stride=2),
        *_conv_bn_relu(2 * w, 4 * w, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


class _TinyResNet(nn.Module):
    """Stem + two torchvision BasicBlocks (one with a strided 1x1 projection) + linear."""

    def __init__(self, num_classes: int, width: int = 8, stem_pool: bool = False) -> None:
        super().__init__()
        w = width
        pool = [nn.MaxPool2d(3, stride=2, padding=1)] if stem_pool else []
        self.stem = nn.Sequential(*_conv_bn_relu(3, w), *pool)
        down = nn.Sequential(nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.layer1 = BasicBlock(w, w)
        self.layer2 = BasicBlock(w, 2 * w, stride=2, downsample=down)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images to ``(B, num_classes)`` logits."""
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("test_resnet", family="test")
def test_resnet(
    num_classes: int, pretrained: bool = False, width: int = 8, stem_pool: bool = False
) -> nn.Module:
    """Tiny residual net with identity and projection skips (for pruning tests).

    ``stem_pool`` adds a 3x3 stride-2 max pool after the stem, as in torchvision's ResNets.
    """
    if pretrained:
        raise _no_pretrained("test_resnet")
    return _TinyResNet(num_classes, width=width, stem_pool=stem_pool)


@register_model("test_mobilenet", family="test")
def test_mobilenet(num_classes: int, pretrained: bool = False) -> nn.Module:
    """Tiny torchvision MobileNetV2: three inverted residual blocks, one with a skip.

    It has what the small CNNs lack: depthwise convolutions, linear bottlenecks (a
    convolution + batch norm feeding the next block's convolution directly) and ReLU6.
    """
    if pretrained:
        raise _no_pretrained("test_mobilenet")
    setting = [[1, 8, 1, 1], [4, 16, 2, 2]]
    return MobileNetV2(num_classes, width_mult=0.5, inverted_residual_setting=setting)


@register_model("test_vit", family="test", image_size=32)
def test_vit(
    num_classes: int,
    pretrained: bool = False,
    img_size: int = 32,
    patch_size: int = 8,
    dynamic_img_size: bool = False,
) -> nn.Module:
    """Tiny timm VisionTransformer: embed_dim 32, depth 2, 2 heads, patch 8."""
    if pretrained:
        raise _no_pretrained("test_vit")
    if img_size % patch_size:
        raise ValueError(f"test_vit: img_size={img_size} is not a multiple of {patch_size}")
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=num_classes,
        dynamic_img_size=dynamic_img_size,
    )
