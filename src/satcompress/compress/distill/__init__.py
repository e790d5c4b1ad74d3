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
"""

from satcompress.compress.distill.api import distill, distill_recipe
from satcompress.compress.distill.config import TEACHER_CACHE_MODES, DistillConfig
from satcompress.compress.distill.features import FeatureDistiller, find_layer
from satcompress.compress.distill.loss import DistillationLoss, FrozenTeacher, kd_loss
from satcompress.compress.distill.teacher import Teacher, check_teacher_classes, load_teacher

__all__ = [
    "TEACHER_CACHE_MODES",
    "DistillConfig",
    "DistillationLoss",
    "FeatureDistiller",
    "FrozenTeacher",
    "Teacher",
    "check_teacher_classes",
    "distill",
    "distill_recipe",
    "find_layer",
    "kd_loss",
    "load_teacher",
]
