"""Any timm model by name, with the ``timm/`` prefix: ``create_model("timm/resnet10t", 10)``.

The part after ``timm/`` is passed to ``timm.create_model`` (an architecture, optionally with a
pretrained tag such as ``resnet10t.c3_in1k``), together with ``num_classes``, ``pretrained``
and any extra keyword arguments. These names are resolved on demand: ``list_models()`` shows
only registered names; use ``timm.list_models()`` to browse timm's.
"""

from __future__ import annotations

import functools

import timm
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from satcompress.models.registry import (
    IMAGENET_MEAN_STD,
    ModelInfo,
    UnknownModelError,
    _Entry,
    _register_prefix,
    _unknown_name_message,
)
from satcompress.models.weights import pretrained_download

__all__ = ["TIMM_PREFIX"]

TIMM_PREFIX = "timm/"
# Architecture name fragments of transformer families, for ModelInfo.family.
_VIT_HINTS = ("vit", "deit", "beit", "swin", "eva", "cait", "xcit", "pit_", "levit", "mvit")


def _build_timm(
    timm_name: str, num_classes: int, pretrained: bool = False, **kwargs: object
) -> nn.Module:
    """Create ``timm_name`` with timm (keyword arguments are passed through)."""
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    with pretrained_download(TIMM_PREFIX + timm_name):
        return timm.create_model(timm_name, pretrained=True, num_classes=num_classes, **kwargs)


def _resolve(name: str) -> _Entry:
    """Registry entry for ``timm/<timm_name>``."""
    timm_name = name[len(TIMM_PREFIX) :]
    arch, _tag = split_model_name_tag(timm_name)
    if not timm_name or not timm.is_model(arch):
        message = _unknown_name_message(arch, timm.list_models(), what="timm model")
        raise UnknownModelError(message)
    cfg = get_pretrained_cfg(timm_name)
    mean, std = (cfg.mean, cfg.std) if cfg is not None else IMAGENET_MEAN_STD
    fixed = cfg is not None and cfg.fixed_input_size
    info = ModelInfo(
        name=name,
        family="vit" if any(h in arch for h in _VIT_HINTS) else "cnn",
        default_image_size=int(cfg.input_size[-1]) if fixed else None,
        pretrained_mean=tuple(mean),
        pretrained_std=tuple(std),
        description=f"timm model '{timm_name}' (built by timm.create_model)",
    )
    return _Entry(functools.partial(_build_timm, timm_name), info)


_register_prefix(TIMM_PREFIX, _resolve)
