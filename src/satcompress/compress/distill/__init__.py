"""Knowledge distillation: any frozen teacher to any student, as a pluggable training loss.

:class:`DistillationLoss` plugs into :class:`satcompress.train.ClassificationTask` (so pruning
fine-tuning, QAT and the search can train with a teacher too); :func:`distill` is the
one-call stage on top of :func:`satcompress.train.train`.

Example:
    >>> result = distill(
    ...     TrainConfig(model="mobilenet_v2", epochs=10),
    ...     DistillConfig(temperature=4.0, alpha=0.7),
    ...     teacher="runs/r18",
    ...     run_dir="runs/mnv2_kd",
    ... )

The config imports at once; the rest (Lightning) on first use.
"""

from satcompress.compress.distill.config import (
    TEACHER_CACHE_MODES,
    DistillConfig,
)
from satcompress.utils.lazy import lazy_package

__all__ = [
    "TEACHER_CACHE_MODES",
    "DistillConfig",
    *lazy_package(
        __name__,
        {
            "distill": "api",
            "distill_recipe": "api",
            "FeatureDistiller": "features",
            "find_layer": "features",
            "DistillationLoss": "loss",
            "FrozenTeacher": "loss",
            "kd_loss": "loss",
            "Teacher": "teacher",
            "check_teacher_classes": "teacher",
            "load_teacher": "teacher",
        },
    ),
]
