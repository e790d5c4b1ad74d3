"""``clip_vit_b32``: the image tower of OpenAI CLIP ViT-B/32 (via open_clip) + a linear head."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from satcompress.models.registry import CLIP_MEAN_STD, register_model
from satcompress.models.weights import pretrained_download

__all__ = ["CLIPClassifier", "clip_vit_b32"]

_OPENCLIP_NAME = "ViT-B-32"
_PRETRAINED_TAG = "openai"


class CLIPClassifier(nn.Module):
    """A CLIP image encoder followed by a linear classifier.

    Args:
        visual: open_clip image tower mapping images to ``(B, visual.output_dim)`` embeddings.
        num_classes: Number of output logits.
    """

    def __init__(self, visual: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(int(visual.output_dim), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.head(self.visual(x))


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" log line, expected when pretrained=False."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@register_model(
    "clip_vit_b32",
    family="clip",
    image_size=224,
    pretrained_mean_std=CLIP_MEAN_STD,
    size_kwarg="image_size",
)
def clip_vit_b32(num_classes: int, pretrained: bool = False, image_size: int = 224) -> nn.Module:
    """CLIP ViT-B/32 image tower (88M params) + linear head; pretrained = OpenAI weights.

    The tower always uses QuickGELU, the activation the OpenAI weights were trained with, so a
    model built offline has the same numerics as a pretrained one once its weights are loaded.
    """
    import open_clip  # slow import, only when needed

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size % 32:
        raise ValueError(f"clip_vit_b32: image_size must be a multiple of 32, got {image_size!r}")
    kwargs = {"force_quick_gelu": True, "force_image_size": image_size}
    if pretrained:
        with pretrained_download("clip_vit_b32"):
            clip = open_clip.create_model(_OPENCLIP_NAME, pretrained=_PRETRAINED_TAG, **kwargs)
    else:
        with _quiet_random_init_warning():  # on the default device (meta: no memory)
            clip = open_clip.create_model(
                _OPENCLIP_NAME, pretrained=None, device=torch.get_default_device(), **kwargs
            )
    return CLIPClassifier(clip.visual, num_classes)
