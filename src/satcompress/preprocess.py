"""Batch-wise preprocessing and augmentation on uint8 image tensors.

Images stay uint8 in memory (decoded once); each batch is augmented and normalised as a
whole tensor, which is several times cheaper on a 2-core CPU than per-image PIL
transforms in DataLoader workers. The model's own input specification (resolution and
normalisation) lives in :class:`InputSpec`, so a teacher and a student can each prepare the
same augmented batch their own way, and the exported ONNX graph carries the same steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from satcompress.config import Config, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class InputSpec(Config):
    """What a model expects: input resolution and per-channel normalisation.

    Attributes:
        size: Model input (height, width); ``None`` keeps the dataset's resolution.
        mean: Per-channel mean of ``uint8 / 255`` images.
        std: Per-channel standard deviation of ``uint8 / 255`` images.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.size is not None:
            self.size = _pair(self.size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        super().__post_init__()

    def validate(self) -> None:
        """Check shapes and ranges."""
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be > 0, got {self.std}")
        if self.size is not None and min(self.size) < 8:
            raise ConfigError(f"input size must be at least 8 pixels, got {self.size}")


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


@dataclasses.dataclass
class AugmentConfig(Config):
    """Augmentation suited to overhead imagery (no canonical "up").

    Attributes:
        hflip: Random horizontal flips.
        vflip: Random vertical flips.
        rot90: Random rotations by multiples of 90 degrees.
        shift: Random translation of up to this many pixels (reflection padding); 0 = off.
        brightness: Light colour jitter: brightness factor in [1 - b, 1 + b]; 0 = off.
        contrast: Contrast factor in [1 - c, 1 + c]; 0 = off.
        mixup: MixUp's Beta(alpha, alpha) parameter: blend pairs of images and their labels;
            0 = off.
        cutmix: CutMix's Beta(alpha, alpha) parameter: paste a box of one image into another,
            labels mixed by area; 0 = off. With both on, each batch uses one of the two.
        mix_prob: Probability that a batch is mixed at all (when ``mixup`` or ``cutmix`` is on).
    """

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    shift: int = 0
    brightness: float = 0.0
    contrast: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0

    def validate(self) -> None:
        """Check ranges."""
        if self.shift < 0:
            raise ConfigError(f"augment.shift must be >= 0, got {self.shift}")
        for name in ("mixup", "cutmix"):
            alpha = getattr(self, name)
            if alpha < 0:
                raise ConfigError(f"augment.{name} is a Beta parameter >= 0, got {alpha}")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ConfigError(f"augment.mix_prob must be in [0, 1], got {self.mix_prob}")
        for name in ("brightness", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"augment.{name} must be in [0, 1), got {value}")


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


def mixing_enabled(config: AugmentConfig) -> bool:
    """Whether ``config`` mixes batches (MixUp or CutMix on, with a non-zero probability)."""
    return (config.mixup > 0 or config.cutmix > 0) and config.mix_prob > 0


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


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    values = tuple(int(v) for v in size)
    if len(values) != 2:
        raise ConfigError(f"size must be an int or (height, width), got {size}")
    return values  # type: ignore[return-value]
