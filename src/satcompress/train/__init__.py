"""Training: config, Lightning task and the ``train()`` entry point.

The config imports at once; the rest (Lightning) on first use.
"""

from satcompress.train.config import TrainConfig
from satcompress.utils.lazy import lazy_package

__all__ = [
    "TrainConfig",
    *lazy_package(
        __name__,
        {
            "ClassificationTask": "task",
            "SupervisedLoss": "task",
            "TrainingLoss": "task",
            "TrainResult": "trainer",
            "load_config_dataset": "trainer",
            "make_card": "trainer",
            "resolve_input_spec": "trainer",
            "train": "trainer",
        },
    ),
]
