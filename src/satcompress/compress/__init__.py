"""Compression stages built on the one training loop: distillation (and later pruning, QAT).

Imported on first use (see satcompress.utils.lazy).
"""

from satcompress.utils.lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        "DistillationLoss": "distill",
        "DistillConfig": "distill",
        "Teacher": "distill",
        "distill": "distill",
        "load_teacher": "distill",
    },
)
