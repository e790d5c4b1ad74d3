"""Torch modules that augment and normalise uint8 batches (see :mod:`satcompress.preprocess`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from satcompress.config import ConfigError
from satcompress.preprocess.config import AugmentConfig, InputSpec


class Preprocess(nn.Module):
    """uint8 (B, 3, H, W) -> normalised float at the model's resolution.

    The same module is exported in front of the model into ONNX, so the deployable file
    takes raw uint8 pixels.
    """

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.size = spec.size
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0))

    def forward(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Normalise and, if needed, resize a batch of images.

        Args:
            images: uint8 (B, 3, H, W) batch.
            size: Resolution to resize to instead of the model's (progressive resizing in
                training); ``None`` = the model's.
        """
        x = (images.float() - self.mean) * self.inv_std
        size = size or self.size
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        return x


class BatchAugment(nn.Module):
    """Random flips, 90-degree rotations, shifts and light colour jitter on a uint8 batch.

    Written by hand because torchvision's v2 transforms draw one random choice per call
    (per batch), while overhead imagery needs an independent choice per image, and
    Kornia would be an extra dependency for four lines of tensor indexing.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        super().__init__()
        self.config = config or AugmentConfig()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a (B, C, H, W) batch; returns a new tensor of the same dtype."""
        cfg = self.config
        x = images.clone()
        n = x.shape[0]
        if cfg.hflip:
            x = _where_each(torch.rand(n) < 0.5, x.flip(3), x)
        if cfg.vflip:
            x = _where_each(torch.rand(n) < 0.5, x.flip(2), x)
        if cfg.rot90 and x.shape[-1] == x.shape[-2]:
            turns = torch.randint(0, 4, (n,))
            for k in (1, 2, 3):
                chosen = turns == k
                if chosen.any():
                    x[chosen] = x[chosen].rot90(k, (2, 3))
        if cfg.shift:
            x = _random_shift(x, cfg.shift)
        if cfg.brightness or cfg.contrast:
            x = _jitter(x, cfg.brightness, cfg.contrast)
        return x


class BatchMix(nn.Module):
    """MixUp / CutMix of a uint8 batch: returns the mixed images and soft (B, K) targets.

    torchvision's v2 ``MixUp`` and ``CutMix`` do the mixing; this wrapper runs them on a float
    copy and rounds back to uint8, because every loss (a distillation teacher too) must see
    the same mixed uint8 batch, and ``MixUp`` cannot blend uint8 tensors in place.

    Args:
        config: The ``mixup``, ``cutmix`` and ``mix_prob`` settings.
        num_classes: Number of classes (the width of the soft targets).
    """

    def __init__(self, config: AugmentConfig, num_classes: int) -> None:
        super().__init__()
        from torchvision.transforms import v2

        self.prob = config.mix_prob
        choices = []
        if config.mixup > 0:
            choices.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
        if config.cutmix > 0:
            choices.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
        if not choices:
            raise ConfigError("BatchMix needs augment.mixup > 0 or augment.cutmix > 0")
        self.mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a (B, C, H, W) uint8 batch with probability ``mix_prob``.

        Returns:
            The images (uint8) and their targets: soft ``(B, K)`` probabilities when the
            batch was mixed, else the unchanged ``(B,)`` class indices.
        """
        if images.shape[0] < 2 or torch.rand(()) >= self.prob:
            return images, labels
        mixed, targets = self.mix(images.float(), labels.long())
        return mixed.round_().clamp_(0, 255).to(images.dtype), targets


def _where_each(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels with reflection at the borders."""
    n, _, h, w = x.shape
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(x.dtype)
    dy = torch.randint(0, 2 * pad + 1, (n,))
    dx = torch.randint(0, 2 * pad + 1, (n,))
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    gathered = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return gathered.gather(3, cols)


def _jitter(x: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    n = x.shape[0]
    y = x.float()
    if brightness:
        y = y * torch.empty(n, 1, 1, 1).uniform_(1 - brightness, 1 + brightness)
    if contrast:
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * torch.empty(n, 1, 1, 1).uniform_(1 - contrast, 1 + contrast) + mean
    return y.clamp_(0, 255).round_().to(x.dtype)
