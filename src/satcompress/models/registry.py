"""Name-based model registry (timm-style): ``create_model``, ``list_models``, ``register_model``.

Builders are plain functions ``fn(num_classes, pretrained=False, **kwargs) -> nn.Module``
registered with :func:`register_model`. Besides registered names, any timm architecture can be
created with the ``timm/`` prefix (``create_model("timm/resnet10t", 10)``); such names are
resolved on demand and are not listed by :func:`list_models`.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from torch import nn

from satcompress.models.weights import load_weights

__all__ = [
    "CLIP_MEAN_STD",
    "IMAGENET_MEAN_STD",
    "ModelInfo",
    "UnknownModelError",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]

MeanStd = tuple[tuple[float, float, float], tuple[float, float, float]]
Family = Literal["cnn", "vit", "clip", "test"]
Builder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=Builder)

IMAGENET_MEAN_STD: MeanStd = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_MEAN_STD: MeanStd = (
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
)
_FAMILIES = ("cnn", "vit", "clip", "test")
_RESERVED = ("num_classes", "pretrained")


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a registered model without building it.

    Attributes:
        name: Registry name.
        family: ``"cnn"``, ``"vit"``, ``"clip"`` or ``"test"``.
        default_image_size: Input side the model is built for by default; ``None`` if any size
            works (convolutional nets with adaptive pooling).
        pretrained_mean: Per-channel mean of the pretrained weights' input normalisation.
        pretrained_std: Per-channel std of the pretrained weights' input normalisation.
        description: One line about the model.
        size_kwarg: The builder's keyword for the input side (``img_size`` for timm ViTs,
            ``image_size`` for CLIP).
    """

    name: str
    family: str
    default_image_size: int | None
    pretrained_mean: tuple[float, float, float]
    pretrained_std: tuple[float, float, float]
    description: str
    size_kwarg: str = "img_size"

    def input_side(self, model_kwargs: Mapping[str, Any] | None = None) -> int | None:
        """The input side a model built with ``model_kwargs`` expects (None: any size).

        Args:
            model_kwargs: The builder's keyword arguments; its size keyword, if given, wins
                over the default (``{"image_size": 64}`` builds a 64 px CLIP).
        """
        if self.default_image_size is None:
            return None
        return (model_kwargs or {}).get(self.size_kwarg, self.default_image_size)


class UnknownModelError(ValueError, KeyError):
    """No model of that name; both a ``ValueError`` and a ``KeyError``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    info: ModelInfo


_REGISTRY: dict[str, _Entry] = {}
# Prefix -> resolver(name) for names built on demand (``timm/...``).
_PREFIX_RESOLVERS: dict[str, Callable[[str], _Entry]] = {}


def register_model(
    name: str | Callable | None = None,
    *,
    image_size: int | None = None,
    pretrained_mean_std: MeanStd = IMAGENET_MEAN_STD,
    family: Family = "cnn",
    description: str | None = None,
    size_kwarg: str = "img_size",
) -> Callable[[_B], _B]:
    """Decorator registering a builder ``fn(num_classes, pretrained=False, **kw) -> nn.Module``.

    Usable bare (``@register_model``) or with arguments (``@register_model("x", family="vit")``).

    Args:
        name: Registry name; defaults to the function's name.
        image_size: Default input side, or ``None`` if any size works.
        pretrained_mean_std: ``(mean, std)`` that the pretrained weights expect.
        family: ``"cnn"``, ``"vit"``, ``"clip"`` or ``"test"``.
        description: One line; defaults to the first line of the builder's docstring.
        size_kwarg: The builder's keyword for the input side, if it has one.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ValueError: Unknown family, or the name is already registered.
    """
    if callable(name):
        return register_model()(name)
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {_FAMILIES}, got {family!r}")

    def decorator(fn: _B) -> _B:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"Model name {key!r} is already registered")
        mean, std = pretrained_mean_std
        doc = description or (inspect.getdoc(fn) or key).splitlines()[0]
        info = ModelInfo(key, family, image_size, tuple(mean), tuple(std), doc, size_kwarg)
        _REGISTRY[key] = _Entry(fn, info)
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching a shell-style ``pattern`` (``fnmatch``).

    Names built on demand with the ``timm/`` prefix (any timm architecture) are not listed.
    """
    return sorted(fnmatch.filter(_REGISTRY, pattern))


def model_info(name: str) -> ModelInfo:
    """Return the :class:`ModelInfo` of ``name`` (registered or ``timm/...``).

    Raises:
        UnknownModelError: No such model; the message lists close matches.
    """
    return _lookup(name).info


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier by name; it maps float ``(B, 3, H, W)`` to ``(B, num_classes)``.

    Args:
        name: A name from :func:`list_models`, or ``timm/<timm model name>`` for any timm model.
        num_classes: Number of output logits.
        pretrained: Start from the library's pretrained weights (torchvision, timm, or
            open_clip "openai"), with the classifier replaced for ``num_classes``. Needs network
            access unless the weights are cached.
        weights: Local weights file (``.safetensors``, or ``.pt``/``.pth``/``.ckpt`` read with
            ``weights_only=True``) loaded strictly after construction. Excludes ``pretrained``.
        **kwargs: Model-specific options (e.g. ``width_mult`` for ``mobilenet_v2``,
            ``img_size``/``patch_size`` for ViTs).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        UnknownModelError: Unknown name (a ``ValueError``); the message suggests close matches.
        ValueError: Invalid ``num_classes`` or keyword arguments.
        WeightsError: Pretrained download failed, or the weights file cannot be loaded.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if pretrained and weights is not None:
        raise ValueError("Pass either pretrained=True or weights=FILE, not both")
    entry = _lookup(name)
    passthrough = _check_kwargs(name, entry.builder, kwargs)
    try:
        model = entry.builder(num_classes, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if not passthrough:
            raise
        raise ValueError(f"Invalid keyword arguments {sorted(kwargs)} for '{name}': {err}") from err
    if weights is not None:
        load_weights(model, weights, strict=True)
    return model


def _register_prefix(prefix: str, resolver: Callable[[str], _Entry]) -> None:
    """Resolve names starting with ``prefix`` on demand via ``resolver(name) -> _Entry``."""
    _PREFIX_RESOLVERS[prefix] = resolver


def _lookup(name: str) -> _Entry:
    """Find the registry entry of ``name`` or raise an :class:`UnknownModelError`."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, resolver in _PREFIX_RESOLVERS.items():
        if isinstance(name, str) and name.startswith(prefix):
            return resolver(name)
    raise UnknownModelError(_unknown_name_message(name, list(_REGISTRY)))


def _unknown_name_message(name: object, candidates: list[str], what: str = "model") -> str:
    """Message for an unknown name, suggesting close matches from ``candidates``."""
    close = difflib.get_close_matches(str(name), candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"Unknown {what} {name!r}.{hint} See satcompress.models.list_models() for the "
        f"registered names; any timm model is available as 'timm/<name>'."
    )


def _check_kwargs(name: str, builder: Builder, kwargs: dict[str, Any]) -> bool:
    """Reject keyword arguments the builder does not take.

    Returns:
        True if the builder forwards arbitrary ``**kwargs`` (they cannot be checked here).
    """
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    accepted = [p for p in params if p not in _RESERVED]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"Model '{name}' got unexpected keyword argument(s) {unknown}; it accepts "
            f"{accepted if accepted else 'no extra keyword arguments'}."
        )
    return False
