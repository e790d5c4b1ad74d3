"""The model a training run starts from: built by name, then its starting weights loaded.

``weights=FILE`` loads a weights file strictly. ``new_head=True`` (``--new-head``) fine-tunes
weights trained on another dataset: the model is built for this dataset's classes, every
tensor but the classifier's is loaded strictly, and the classifier keeps its fresh
initialisation. The card records what was loaded (:func:`initial_model`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from satcompress.models import create_model
from satcompress.models.weights import (
    ClassCountError,
    WeightsError,
    classifier_name,
    load_backbone,
    load_weights,
)
from satcompress.train.config import TrainConfig
from satcompress.utils.io import file_digest


def initial_model(config: TrainConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model ``config`` starts from, and what the card records of its starting weights.

    Args:
        config: The run's configuration (``model``, ``pretrained``, ``weights``, ``new_head``).
        num_classes: Classes of the dataset it trains on.

    Returns:
        ``(model, initial_weights)``: the card's ``initial_weights`` entry is ``{"weights":
        FILE, "sha256", "new_head", "source_classes", "classifier"}``, None without a file.

    Raises:
        WeightsError: The file cannot be loaded; for another class count without
            ``new_head``, the message suggests ``--new-head``.
    """
    model = create_model(
        config.model, num_classes, pretrained=config.pretrained, **config.model_kwargs
    )
    if not config.weights:
        return model, None
    if config.new_head:
        source_classes = load_backbone(model, config.weights)
    else:
        _load_all(model, config.weights)
        source_classes = num_classes
    return model, {
        "weights": config.weights,
        "sha256": file_digest(config.weights, "sha256"),
        "new_head": config.new_head,
        "source_classes": source_classes,
        "classifier": classifier_name(model),
    }


def _load_all(model: nn.Module, path: str) -> None:
    """Load every tensor strictly; another class count is refused with the ``--new-head`` fix."""
    try:
        load_weights(model, path, strict=True)
    except ClassCountError as err:
        raise WeightsError(
            f"{path} holds a classifier for {err.file_classes} classes ({err.classifier!r}), "
            f"but this dataset has {err.model_classes}: to fine-tune its backbone on these "
            "classes, pass --new-head (new_head: true), which trains a new classifier"
        ) from None
