"""Distillation settings: one validated, serialisable dataclass stored in every recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from satcompress.config import Config, ConfigError

TEACHER_CACHE_MODES = ("auto", "memory", "none")


@dataclasses.dataclass
class DistillConfig(Config):
    """How a student learns from its teacher (the training itself is a ``TrainConfig``).

    The loss is ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_t || p_s)`` with
    ``p = softmax(logits / T)`` (Hinton et al.), plus ``feature_weight`` times the feature
    loss when ``feature_layers`` are given.

    Attributes:
        temperature: Softmax temperature T of the KD term (> 0; higher = softer targets).
        alpha: Weight of the KD term in [0, 1]; 1 - alpha weighs the hard-label cross-entropy.
            The cross-entropy uses the training config's label smoothing; 0 = plain training.
        feature_layers: Feature distillation pairs STUDENT_LAYER:TEACHER_LAYER; empty = off.
            Module names as in ``named_modules()``; a mapping ``{student: teacher}`` or a list
            of ``"student:teacher"`` strings.
        feature_weight: Weight of the feature loss (the mean MSE over the layer pairs).
        feature_normalize: Standardise both feature maps per sample before the MSE.
            Teachers with large activations (e.g. ViT tokens) then do not dominate the loss.
        teacher_cache: Cache teacher logits: auto, memory (exact, per augmented image) or none.
            ``memory`` keys the logits by the exact bytes of each augmented image, so a hit
            returns what the teacher would compute; ``none`` runs the teacher every step;
            ``auto`` caches when augmentations repeat exactly (flips and 90-degree rotations
            only, no shift or colour jitter) and no feature layers are used.
    """

    temperature: float = 4.0
    alpha: float = 0.7
    feature_layers: dict[str, str] = dataclasses.field(default_factory=dict)
    feature_weight: float = 1.0
    feature_normalize: bool = True
    teacher_cache: str = "auto"

    def __post_init__(self) -> None:
        self.feature_layers = parse_feature_layers(self.feature_layers)
        super().__post_init__()

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha (weight of the KD term) must be in [0, 1], got {self.alpha}")
        if self.feature_weight < 0:
            raise ConfigError(f"feature_weight must be >= 0, got {self.feature_weight}")
        if self.teacher_cache not in TEACHER_CACHE_MODES:
            raise ConfigError(
                f"teacher_cache must be one of {', '.join(TEACHER_CACHE_MODES)}; "
                f"got {self.teacher_cache!r}"
            )
        if self.teacher_cache == "memory" and self.feature_layers:
            raise ConfigError(
                "teacher_cache='memory' caches only the teacher's logits, but feature "
                "distillation needs its features every step: use teacher_cache='none' or 'auto'"
            )


def parse_feature_layers(value: dict[str, str] | Iterable[str] | None) -> dict[str, str]:
    """``{student: teacher}`` from a mapping or from ``"student:teacher"`` strings.

    Raises:
        ConfigError: If an entry is not of the form ``student:teacher``.
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        value = [value]
    pairs: dict[str, str] = {}
    for item in value:
        student, sep, teacher = str(item).partition(":")
        if not sep or not student or not teacher:
            raise ConfigError(
                f"feature layer pairs are STUDENT_LAYER:TEACHER_LAYER (e.g. layer3:layer3), "
                f"got {item!r}"
            )
        pairs[student] = teacher
    return pairs
