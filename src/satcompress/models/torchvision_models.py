"""torchvision classifiers: ``resnet18``, ``mobilenet_v2`` and ``efficientnet_v2_s``.

Architectures are torchvision's, unmodified. ``pretrained=True`` uses torchvision's ``Weights``
enums (ImageNet-1k) and then replaces the classifier with a fresh ``nn.Linear`` for
``num_classes`` (kept as is when ``num_classes == 1000``).
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models as tvm
from torch import nn

from satcompress.models.registry import register_model
from satcompress.models.weights import WeightsError, pretrained_download

__all__ = ["efficientnet_v2_s", "mobilenet_v2", "resnet18"]

_IMAGENET_CLASSES = 1000


@register_model("resnet18", family="cnn")
def resnet18(
    num_classes: int, pretrained: bool = False, zero_init_residual: bool = False
) -> nn.Module:
    """ResNet-18 from torchvision (11.7M params at 1000 classes), standard ImageNet stem.

    ``zero_init_residual`` is torchvision's option: each block's last batch norm starts at
    zero, so every residual block starts as the identity (the architecture is unchanged).
    """
    return _build(
        "resnet18",
        tvm.resnet18,
        tvm.ResNet18_Weights.DEFAULT,
        num_classes,
        pretrained,
        zero_init_residual=bool(zero_init_residual),
    )


@register_model("mobilenet_v2", family="cnn")
def mobilenet_v2(num_classes: int, pretrained: bool = False, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 from torchvision with a width multiplier (pretrained only at 1.0)."""
    width_mult = float(width_mult)
    if width_mult <= 0:
        raise ValueError(f"mobilenet_v2: width_mult must be > 0, got {width_mult}")
    if pretrained and width_mult != 1.0:
        raise WeightsError(
            f"mobilenet_v2: torchvision has pretrained weights only for width_mult=1.0, not "
            f"{width_mult}. Use pretrained=False (or --weights FILE with a matching file)."
        )
    return _build(
        "mobilenet_v2",
        tvm.mobilenet_v2,
        tvm.MobileNet_V2_Weights.DEFAULT,
        num_classes,
        pretrained,
        width_mult=width_mult,
    )


@register_model("efficientnet_v2_s", family="cnn")
def efficientnet_v2_s(num_classes: int, pretrained: bool = False) -> nn.Module:
    """EfficientNetV2-S from torchvision (21M params), a strong distillation teacher."""
    return _build(
        "efficientnet_v2_s",
        tvm.efficientnet_v2_s,
        tvm.EfficientNet_V2_S_Weights.DEFAULT,
        num_classes,
        pretrained,
    )


def _build(
    name: str,
    fn: Callable[..., nn.Module],
    weights: tvm.WeightsEnum,
    num_classes: int,
    pretrained: bool,
    **kwargs: object,
) -> nn.Module:
    """Build a torchvision model, optionally pretrained, with ``num_classes`` outputs."""
    if not pretrained:
        return fn(weights=None, num_classes=num_classes, **kwargs)
    with pretrained_download(name):
        model = fn(weights=weights, progress=True, **kwargs)
    if num_classes != _IMAGENET_CLASSES:
        _replace_classifier(model, num_classes)
    return model


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap the model's last ``nn.Linear`` for a new one with ``num_classes`` outputs."""
    name, layer = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    model.set_submodule(name, nn.Linear(layer.in_features, num_classes))
