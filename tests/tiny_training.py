"""The tiny training recipe of the fast tests: the fixture CNN, a few seeded epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from satcompress.train import TrainConfig


def tiny_train_config(data_dir: str | Path, epochs: int = 3, **overrides: Any) -> TrainConfig:
    """A seeded ``test_cnn`` recipe on the fixture EuroSAT in ``data_dir``."""
    values: dict[str, Any] = dict(
        model="test_cnn",
        dataset="eurosat",
        data_dir=str(data_dir),
        epochs=epochs,
        batch_size=16,
        lr=0.05,
        ema_decay=None,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)
