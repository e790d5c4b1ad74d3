"""Input and augmentation settings: torch-free, so configurations load without torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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
        super().__post_init__()  # types checked: mean and std are numbers, stored as floats
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    def validate(self) -> None:
        """Check shapes and ranges."""
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be > 0, got {self.std}")
        if self.size is not None and min(self.size) < 8:
            raise ConfigError(f"input size must be at least 8 pixels, got {self.size}")


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


def mixing_enabled(config: AugmentConfig) -> bool:
    """Whether ``config`` mixes batches (MixUp or CutMix on, with a non-zero probability)."""
    return (config.mixup > 0 or config.cutmix > 0) and config.mix_prob > 0


def _pair(size: int | Sequence[int]) -> tuple[int, int] | Sequence[int]:
    """``(size, size)`` for one int; anything else unchanged, for the type check."""
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    return size
