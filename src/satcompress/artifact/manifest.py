"""What an artifact's manifest says about its model: enough for ``eval --artifact`` alone."""

from __future__ import annotations

from typing import Any

from satcompress.data import SceneDataset
from satcompress.preprocess import InputSpec

__all__ = ["artifact_info", "dataset_info"]


def dataset_info(dataset: SceneDataset) -> dict[str, Any]:
    """Where the data came from, so ``eval --artifact`` can find it again."""
    return {
        "dataset": dataset.name,
        "data_dir": str(dataset.root),
        "split_dir": str(dataset.split_dir) if dataset.split_dir else None,
        "split_fingerprint": dataset.split_fingerprint,
    }


def artifact_info(
    name: str,
    classes: list[str],
    spec: InputSpec,
    image_size: tuple[int, int] | list[int],
    *,
    params: int,
    macs: int,
    recipe: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The description an artifact's manifest carries (what ``eval --artifact`` needs)."""
    return {
        "model": name,
        "classes": list(classes),
        "input_spec": spec.to_dict(),
        "image_size": list(image_size),
        "params": int(params),
        "macs": int(macs),
        "recipe": recipe,
        **extra,
    }
