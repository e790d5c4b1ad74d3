"""Compression stages built on the one training loop: distillation (and later pruning, QAT)."""

from satcompress.compress.distill import (
    DistillationLoss,
    DistillConfig,
    Teacher,
    distill,
    load_teacher,
)

__all__ = ["DistillConfig", "DistillationLoss", "Teacher", "distill", "load_teacher"]
