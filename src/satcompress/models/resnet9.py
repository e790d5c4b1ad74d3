"""ResNet-9, the small residual network used as a distillation student.

This is the classic DAWNBench / Myrtle.ai ResNet-9 (David Page, "How to train your ResNet",
2018). No maintained library ships it, so it is written here. Differences from the original:
adaptive max pooling (any input size, e.g. 64x64 EuroSAT and 256x256 crops) instead of a fixed
4x4 max pool, and a plain biased ``nn.Linear`` head without the 0.125 logit scaling.
"""

from __future__ import annotations

import torch
from torch import nn

from satcompress.models.registry import register_model
from satcompress.models.weights import _no_pretrained

__all__ = ["ResNet9", "resnet9"]


def _conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias) + batch norm + ReLU, optionally followed by a 2x2 max pool."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """``x + block(x)`` with two conv-bn-relu layers of the same width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the block's output to its input."""
        return x + self.block(x)


class ResNet9(nn.Module):
    """Myrtle ResNet-9: prep 64, layer1 128 + residual, layer2 256, layer3 512 + residual.

    Args:
        num_classes: Number of output logits.
        width: Channels of the prep layer; later stages use 2x, 4x and 8x this.
    """

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.prep = _conv_bn(3, w)
        self.layer1 = nn.Sequential(_conv_bn(w, 2 * w, pool=True), _Residual(2 * w))
        self.layer2 = _conv_bn(2 * w, 4 * w, pool=True)
        self.layer3 = nn.Sequential(_conv_bn(4 * w, 8 * w, pool=True), _Residual(8 * w))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images (H, W >= 8) to ``(B, num_classes)`` logits."""
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet9", family="cnn")
def resnet9(num_classes: int, pretrained: bool = False, width: int = 64) -> nn.Module:
    """Myrtle/DAWNBench ResNet-9 (6.6M params at width 64), a fast distillation student."""
    if pretrained:
        raise _no_pretrained("resnet9")
    if width < 1:
        raise ValueError(f"resnet9: width must be >= 1, got {width}")
    return ResNet9(num_classes, width=width)
