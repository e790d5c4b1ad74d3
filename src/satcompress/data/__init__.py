"""Data layer: find, check, split, decode and batch scene-classification datasets.

Example:
    >>> from satcompress.data import load_dataset, SceneDataModule
    >>> ds = load_dataset("eurosat", "data/")            # doctest: +SKIP
    >>> dm = SceneDataModule(ds, batch_size=128)         # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

from .datasets import (
    SceneDataset,
    Split,
    dataset_classes,
    default_image_size,
    list_datasets,
    load_dataset,
)
from .download import download_url
from .errors import DatasetError

__all__ = [
    "DatasetError",
    "SceneDataModule",
    "SceneDataset",
    "Split",
    "dataset_classes",
    "default_image_size",
    "download_url",
    "list_datasets",
    "load_dataset",
]

if TYPE_CHECKING:
    from .datamodule import SceneDataModule


def __getattr__(name: str) -> Any:
    """Import :class:`SceneDataModule` lazily: ``lightning`` takes seconds to import."""
    if name == "SceneDataModule":
        from .datamodule import SceneDataModule

        return SceneDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
