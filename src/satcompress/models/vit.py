"""Vision Transformers from timm: ``vit_tiny_patch16``, ``vit_small_patch16``, ``vit_base_patch16``.

Each maps to timm's ``vit_<size>_patch16_224`` with a configurable input size (``img_size``,
default 224, any multiple of the patch size, e.g. 64), patch size (``patch_size``, e.g. 8 for
small images) and ``dynamic_img_size``. With ``pretrained=True`` timm downloads the weights and
resamples the position embeddings (and the patch embedding, for another patch size) itself.
"""

from __future__ import annotations

import timm
from torch import nn

from satcompress.models.registry import register_model
from satcompress.models.weights import pretrained_download

__all__ = ["vit_base_patch16", "vit_small_patch16", "vit_tiny_patch16"]

# Normalisation of timm's default (augreg) weights for these ViTs, per their pretrained_cfg.
_VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_DEFAULT_SIZE = 224


@register_model("vit_tiny_patch16", family="vit", image_size=224, pretrained_mean_std=_VIT_MEAN_STD)
def vit_tiny_patch16(
    num_classes: int,
    pretrained: bool = False,
    img_size: int = _DEFAULT_SIZE,
    patch_size: int = 16,
    dynamic_img_size: bool = False,
) -> nn.Module:
    """ViT-Ti/16 (5.7M params), timm ``vit_tiny_patch16_224``."""
    return _vit("vit_tiny_patch16", num_classes, pretrained, img_size, patch_size, dynamic_img_size)


@register_model(
    "vit_small_patch16", family="vit", image_size=224, pretrained_mean_std=_VIT_MEAN_STD
)
def vit_small_patch16(
    num_classes: int,
    pretrained: bool = False,
    img_size: int = _DEFAULT_SIZE,
    patch_size: int = 16,
    dynamic_img_size: bool = False,
) -> nn.Module:
    """ViT-S/16 (22M params), timm ``vit_small_patch16_224``."""
    return _vit(
        "vit_small_patch16", num_classes, pretrained, img_size, patch_size, dynamic_img_size
    )


@register_model("vit_base_patch16", family="vit", image_size=224, pretrained_mean_std=_VIT_MEAN_STD)
def vit_base_patch16(
    num_classes: int,
    pretrained: bool = False,
    img_size: int = _DEFAULT_SIZE,
    patch_size: int = 16,
    dynamic_img_size: bool = False,
) -> nn.Module:
    """ViT-B/16 (86M params), timm ``vit_base_patch16_224``."""
    return _vit("vit_base_patch16", num_classes, pretrained, img_size, patch_size, dynamic_img_size)


def _vit(
    name: str,
    num_classes: int,
    pretrained: bool,
    img_size: int,
    patch_size: int,
    dynamic_img_size: bool,
) -> nn.Module:
    """Create timm's ``<name>_224`` with the given geometry."""
    _check_geometry(name, img_size, patch_size)
    kwargs = {
        "num_classes": num_classes,
        "img_size": img_size,
        "patch_size": patch_size,
        "dynamic_img_size": bool(dynamic_img_size),
    }
    timm_name = f"{name}_224"
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    with pretrained_download(name):
        return timm.create_model(timm_name, pretrained=True, **kwargs)


def _check_geometry(name: str, img_size: int, patch_size: int) -> None:
    """Require positive ints with the image side a multiple of the patch size."""
    for label, value in (("img_size", img_size), ("patch_size", patch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {label} must be a positive int, got {value!r}")
    if img_size % patch_size:
        raise ValueError(
            f"{name}: img_size={img_size} is not a multiple of patch_size={patch_size}"
        )
