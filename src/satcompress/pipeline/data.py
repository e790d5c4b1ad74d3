"""The one answer to "which data does this model use?": the card's source, or what is given."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from satcompress.card import check_classes, data_source
from satcompress.config import ConfigError
from satcompress.data import SceneDataset, load_dataset

log = logging.getLogger(__name__)

__all__ = ["DataOverrides", "dataset_for"]


@dataclasses.dataclass(frozen=True)
class DataOverrides:
    """Data settings given by the user (``--dataset``, ``--data-dir``, ...); None = the card's.

    Attributes:
        dataset: Dataset name.
        data_dir: Folder of the data.
        split_dir: Folder of split files.
        image_size: Decode resolution (side).
        download: Download what is missing.
        skip_bad_files: Leave out unreadable images.
    """

    dataset: str | None = None
    data_dir: str | None = None
    split_dir: str | None = None
    image_size: int | None = None
    download: bool = False
    skip_bad_files: bool = False

    @classmethod
    def from_namespace(cls, args: Any) -> DataOverrides:
        """From parsed command-line flags (missing attributes are None)."""
        values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if v is not None}
        for key in ("data_dir", "split_dir"):  # absolute, as cards record them
            if key in values:
                values[key] = str(Path(values[key]).expanduser().resolve())
        return cls(**values)


def dataset_for(
    card: Mapping[str, Any],
    dataset: SceneDataset | None = None,
    overrides: DataOverrides | None = None,
    *,
    where: Any = "the model",
    progress: bool = True,
) -> SceneDataset:
    """The dataset a model is trained, compressed or scored on, its classes checked.

    ``dataset`` wins; else the card's data source with ``overrides`` on top (the split seed
    and split folder come from the card unless overridden, so a model is scored on the split
    it was trained with).

    Raises:
        ConfigError: If neither the card nor the overrides name the dataset and its folder.
        ClassMismatchError: If the dataset's classes differ from the card's.
    """
    if dataset is None:
        dataset = _load(card, overrides or DataOverrides(), where, progress)
    check_classes(card, dataset.classes, where)
    return dataset


def _load(
    card: Mapping[str, Any], given: DataOverrides, where: Any, progress: bool
) -> SceneDataset:
    source = data_source(card)
    name = given.dataset or (source.dataset if source else None)
    data_dir = given.data_dir or (source.data_dir if source else None)
    if not name or not data_dir:
        raise ConfigError(
            f"{where}: its card does not name its data; give --dataset and --data-dir "
            "(or dataset= in Python)"
        )
    same = source is not None and name == source.dataset and data_dir == source.data_dir
    image_size = given.image_size or (source.image_size if source and same else None)
    dataset = load_dataset(
        name,
        data_dir,
        split_dir=given.split_dir or (source.split_dir if same else None),
        download=given.download,
        image_size=image_size,
        skip_bad_files=given.skip_bad_files,
        seed=source.seed if same else 0,
        progress=progress,
    )
    if same and source.split_fingerprint and source.split_fingerprint != dataset.split_fingerprint:
        log.warning(
            "%s: the split of %s differs from the one it was trained with (fingerprint %s..., "
            "now %s...)",
            where,
            data_dir,
            source.split_fingerprint[:12],
            dataset.split_fingerprint[:12],
        )
    return dataset
