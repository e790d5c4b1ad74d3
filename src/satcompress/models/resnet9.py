"""ResNet-9, the small residual network used as a distillation student.

This is the classic DAWNBench / Myrtle.ai ResNet-9 (David Page, "How to train your ResNet",
2018). No maintained library ships it, so it is written here. Differences from the original:

- adaptive max pooling (any input size, e.g. 64x64 EuroSAT and 256x256 crops) instead of a
  fixed 4x4 max pool;
- ``stem_pool`` (default on): a 2x2 max pool after the prep layer, so a 64x64 image meets the
  residual stages at the 32x32 the design was made for. Without it the network costs 10x the
  MACs of ResNet-18 at 64 px (4x with it), and in 8 epochs it reached only 91% on EuroSAT;
- ``logit_scale`` (default 0.125, the original's ``Mul(0.125)``): without it the max-pooled
  features give large initial logits and the network learned slowly under the default recipe.
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
        stem_pool: Halve the resolution after the prep layer (inputs >= 16 px).
        logit_scale: Constant multiplying the logits.
    """

    def __init__(
        self, num_classes: int, width: int = 64, stem_pool: bool = True, logit_scale: float = 0.125
    ) -> None:
        super().__init__()
        w = width
        self.logit_scale = logit_scale
        self.prep = _conv_bn(3, w, pool=stem_pool)
        self.layer1 = nn.Sequential(_conv_bn(w, 2 * w, pool=True), _Residual(2 * w))
        self.layer2 = _conv_bn(2 * w, 4 * w, pool=True)
        self.layer3 = nn.Sequential(_conv_bn(4 * w, 8 * w, pool=True), _Residual(8 * w))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images (H, W >= 16, or 8 without ``stem_pool``) to logits."""
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        logits = self.fc(self.flatten(self.pool(x)))
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale


@register_model("resnet9", family="cnn")
def resnet9(
    num_classes: int,
    pretrained: bool = False,
    width: int = 64,
    stem_pool: bool = True,
    logit_scale: float = 0.125,
) -> nn.Module:
    """Myrtle/DAWNBench ResNet-9 (6.6M params at width 64), a fast distillation student."""
    if pretrained:
        raise _no_pretrained("resnet9")
    if width < 1:
        raise ValueError(f"resnet9: width must be >= 1, got {width}")
    if not logit_scale > 0:
        raise ValueError(f"resnet9: logit_scale must be > 0, got {logit_scale}")
    return ResNet9(num_classes, width=width, stem_pool=stem_pool, logit_scale=logit_scale)
