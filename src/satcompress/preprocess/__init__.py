"""Batch-wise preprocessing and augmentation on uint8 image tensors.

Images stay uint8 in memory (decoded once); each batch is augmented and normalised as a
whole tensor, which is several times cheaper on a 2-core CPU than per-image PIL
transforms in DataLoader workers. The model's own input specification (resolution and
normalisation) lives in :class:`InputSpec`, so a teacher and a student can each prepare the
same augmented batch their own way, and the exported ONNX graph carries the same steps.

The settings (:mod:`.config`) import without torch; the modules (:mod:`.transforms`) on
first use.
"""

from satcompress.preprocess.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    InputSpec,
    mixing_enabled,
)
from satcompress.utils.lazy import lazy_package

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "InputSpec",
    "mixing_enabled",
    *lazy_package(
        __name__,
        {"BatchAugment": "transforms", "BatchMix": "transforms", "Preprocess": "transforms"},
    ),
]
