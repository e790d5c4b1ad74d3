"""Training: config, Lightning task and the ``train()`` entry point."""

from satcompress.train.config import TrainConfig
from satcompress.train.task import ClassificationTask, SupervisedLoss, TrainingLoss
from satcompress.train.trainer import (
    TrainResult,
    load_config_dataset,
    make_card,
    resolve_input_spec,
    train,
)

__all__ = [
    "ClassificationTask",
    "SupervisedLoss",
    "TrainConfig",
    "TrainResult",
    "TrainingLoss",
    "load_config_dataset",
    "make_card",
    "resolve_input_spec",
    "train",
]
