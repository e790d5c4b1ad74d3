"""The model card: what a model is, what data it knows, and every stage that made it.

One card travels with a model through every stage (``model.json`` beside the weights, and
embedded in the ``.satc`` artifact's manifest)::

    {
      "format": "satcompress.card/1",
      "model": "resnet18", "model_kwargs": {}, "num_classes": 10, "classes": [...],
      "input": {"size": null, "mean": [...], "std": [...]},
      "image_size": [64, 64],
      "data": {"dataset": "eurosat", "data_dir": "/abs/EuroSAT/2750", "split_dir": ...,
               "image_size": [64, 64], "seed": 0, "split_fingerprint": "..."},
      "lineage": [{"stage": "train", "config": {"type": "TrainConfig", ...},
                   "input_card_hash": null}, {"stage": "prune", ...}],
      ...
    }

This module is the only place that reads a card's meaning: which data (:func:`data_source`),
which training recipe (:func:`training_recipe`), whether it is pruned (:func:`is_pruned`),
whether a dataset's classes fit (:func:`check_classes`), and how a stage extends it
(:func:`derive_card`). It imports neither torch nor the data layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CARD_FORMAT = "satcompress.card/1"
CARD_FILE = "model.json"

# Keys that describe one file, not the model: never inherited by a derived card.
_PER_FILE = ("weights_sha256", "pruning", "qat_status", "qat_message", "val_accuracy")


class ClassMismatchError(ValueError):
    """A model was trained on other classes than the dataset offers."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a model's data lives and how it was split: enough to load it again.

    Attributes:
        dataset: Dataset name (``eurosat``, ``ucmerced``, ``imagefolder``).
        data_dir: Absolute folder of the data (the class-folder root that was used).
        split_dir: Folder of the split files, or None for a generated split.
        image_size: Decode resolution ``[height, width]``, or None for the default.
        seed: Seed of a generated split.
        split_fingerprint: SHA-256 of the split's file lists, checked when loaded again.
    """

    dataset: str
    data_dir: str
    split_dir: str | None = None
    image_size: list[int] | None = None
    seed: int = 0
    split_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataSource:
        """Build from a card's ``data`` block (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def of(cls, dataset: Any, seed: int = 0) -> DataSource:
        """The source of a loaded :class:`satcompress.data.SceneDataset`."""
        return cls(
            dataset=dataset.name,
            data_dir=str(Path(dataset.root).resolve()),
            split_dir=str(Path(dataset.split_dir).resolve()) if dataset.split_dir else None,
            image_size=list(dataset.image_size),
            seed=int(seed),
            split_fingerprint=dataset.split_fingerprint,
        )


def card_hash(card: Mapping[str, Any] | None) -> str | None:
    """SHA-256 of a card's canonical JSON (None for no card)."""
    if not card:
        return None
    text = json.dumps(card, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def serialize_config(config: Any) -> Any:
    """A stage config as stored in a lineage entry (``type`` and ``version`` included)."""
    if hasattr(config, "serialize"):
        return config.serialize()
    return dict(config) if isinstance(config, Mapping) else config


def derive_card(
    parent: Mapping[str, Any] | None,
    stage: str,
    config: Any,
    *,
    data: DataSource | None = None,
    extra_configs: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The card of a stage's output: the input's card, changed fields, one lineage entry more.

    Args:
        parent: The input model's card ({} or None for a model trained from scratch).
        stage: The stage's name (``train``, ``distill``, ``prune``, ``quantize``, ...).
        config: The stage's config (a :class:`satcompress.config.Config` or a dict).
        data: The data the stage used (kept from the parent when None).
        extra_configs: Further configs of the stage by role (e.g. ``{"train": TrainConfig}``
            for the fine-tuning of a prune stage), stored in the same lineage entry.
        **fields: Card fields the stage sets (``model``, ``classes``, ``input``, ...).

    Returns:
        A new card; the parent is not modified.
    """
    parent = dict(parent or {})
    card = {k: v for k, v in parent.items() if k not in _PER_FILE}
    if parent.get("format") != CARD_FORMAT and "recipe" in card:
        card["source_recipe"] = card.pop("recipe")  # prose from a card we did not write
    card.update(fields)
    card["format"] = CARD_FORMAT
    source = data or data_source(parent)
    if source is not None:
        card["data"] = source.to_dict()
        card["dataset"] = source.dataset
    entry: dict[str, Any] = {
        "stage": stage,
        "config": serialize_config(config),
        "input_card_hash": card_hash(parent),
    }
    for role, extra in (extra_configs or {}).items():
        if extra is not None:
            entry[role] = serialize_config(extra)
    card["lineage"] = [*parent.get("lineage", []), entry]
    return card


def lineage_stages(card: Mapping[str, Any]) -> list[str]:
    """The stages a model went through, oldest first."""
    return [str(entry["stage"]) for entry in card.get("lineage", [])]


def data_source(card: Mapping[str, Any]) -> DataSource | None:
    """The data a card names, or None: its ``data`` block, else an older card's recipe."""
    if isinstance(card.get("data"), Mapping):
        return DataSource.from_dict(card["data"])
    recipe = training_recipe(card)
    name = card.get("dataset") or recipe.get("dataset")
    data_dir = recipe.get("data_dir") or card.get("data_dir")
    if not name or not data_dir:
        return None
    image_size = recipe.get("image_size") or card.get("image_size")
    if isinstance(image_size, int):
        image_size = [image_size, image_size]
    return DataSource(
        dataset=str(name),
        data_dir=str(data_dir),
        split_dir=recipe.get("split_dir") or card.get("split_dir"),
        image_size=list(image_size) if image_size else None,
        seed=int(recipe.get("seed", 0)),
        split_fingerprint=card.get("split_fingerprint"),
    )


def training_recipe(card: Mapping[str, Any]) -> dict[str, Any]:
    """The training options (``TrainConfig`` fields) a model was last trained with; {} if none.

    The newest lineage entry that trained (``train``, ``distill``, a fine-tuning prune, QAT)
    decides; older cards without lineage give their ``recipe`` (a pruned model's recipe its
    fine-tuning, else its base model's). Cards satcompress did not write give {}.

    How that training was initialised (``weights``, ``pretrained``, ``new_head``) is left
    out: the model the card describes already holds its weights, and a stage that trains it
    further starts from them.
    """
    return {k: v for k, v in _recipe(card).items() if k not in INITIALISATION}


#: Recipe fields that say how a training run was initialised, not how it trained.
INITIALISATION = ("weights", "pretrained", "new_head")


def _recipe(card: Mapping[str, Any]) -> dict[str, Any]:
    for entry in reversed(card.get("lineage", [])):
        for key in ("train", "config"):
            found = entry.get(key)
            if isinstance(found, Mapping) and found.get("type") == "TrainConfig":
                return _fields(found)
    if card.get("format") != CARD_FORMAT:
        return {}
    return _legacy_recipe(card.get("recipe"))


def _legacy_recipe(recipe: Mapping[str, Any] | None) -> dict[str, Any]:
    recipe = dict(recipe or {})
    if recipe.get("stage") != "prune":
        return {k: v for k, v in recipe.items() if k not in ("qat", "stage")}
    return dict(recipe.get("finetune") or _legacy_recipe(recipe.get("base", {}).get("recipe")))


def _fields(serialized: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in serialized.items() if k not in ("type", "version")}


def is_pruned(card: Mapping[str, Any]) -> bool:
    """True if the card's model was structurally pruned (its weights need ``pruning.json``)."""
    return bool(card.get("pruning"))


def card_classes(card: Mapping[str, Any]) -> list[str] | None:
    """The class names a card gives, or None."""
    classes = card.get("classes")
    return list(classes) if classes is not None else None


def check_classes(
    card: Mapping[str, Any], classes: Sequence[str], where: Any = "the model"
) -> None:
    """Refuse a dataset whose classes differ from the card's, naming both.

    Raises:
        ClassMismatchError: If the card names classes and they differ from ``classes``.
    """
    expected = card_classes(card)
    if expected is not None and expected != list(classes):
        raise ClassMismatchError(
            f"{where} was trained on classes {expected}, but the dataset has {list(classes)}"
        )
