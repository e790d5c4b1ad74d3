"""Load a trained model back from its weights file and card, safely (no unpickling)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import safetensors
from torch import nn

from satcompress.card import CARD_FORMAT, is_pruned
from satcompress.models import create_model
from satcompress.models.pruned import build_pruned, pruning_file
from satcompress.preprocess import InputSpec
from satcompress.utils.io import read_json

__all__ = ["CARD_FORMAT", "TrainedModel", "load_trained", "read_card", "weights_file"]


@dataclasses.dataclass
class TrainedModel:
    """A model with what is needed to prepare its inputs and check its classes.

    Attributes:
        model: The model (eval mode); for ``kind == "artifact"`` the loaded artifact.
        input_spec: Its input resolution and normalisation.
        card: Its model card.
        weights_path: The file it was loaded from.
        kind: ``weights`` (plain), ``pruned`` (structurally), ``qat`` (fake-quantized) or
            ``artifact`` (a ``.satc`` file: already deployable, not a PyTorch model).
    """

    model: nn.Module
    input_spec: InputSpec
    card: dict[str, Any]
    weights_path: Path
    kind: str = "weights"


def find_card(weights: Path) -> Path | None:
    """The card beside a weights file: ``model.json`` for ``model.safetensors``."""
    card = weights.with_suffix(".json")
    return card if card.is_file() else None


def weights_file(path: str | Path) -> Path:
    """The weights file of a run directory (``model.safetensors``) or the file itself."""
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"no weights file at {weights}")
    return weights


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of a run directory or weights file; empty if there is none.

    A card that satcompress did not write (such as the shared model's) may describe its
    recipe in prose; that recipe is kept as ``source_recipe`` so that nothing mistakes it
    for a :class:`~satcompress.train.TrainConfig`.
    """
    path = find_card(weights_file(path))
    card = read_json(path) if path else {}
    if card.get("format") != CARD_FORMAT and "recipe" in card:
        card["source_recipe"] = card.pop("recipe")
    return card


def load_trained(
    path: str | Path,
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
    input_spec: InputSpec | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> TrainedModel:
    """Rebuild a trained model from a run directory or a weights file.

    The card (``model.json`` beside ``model.safetensors``, or any ``<weights>.json`` with
    ``mean``/``std``/``classes`` such as the shared model's) supplies the architecture,
    classes and normalisation; explicit arguments override it. Without a card, a safetensors
    file's own metadata (``arch``, ``num_classes``) can name the architecture and class count.

    Args:
        path: A run directory (holding ``model.safetensors``) or a weights file.
        model_name: Registry name, if the card does not give it.
        num_classes: Class count, if the card does not give it.
        input_spec: Input resolution/normalisation, overriding the card's.
        model_kwargs: Builder arguments, overriding the card's.

    Returns:
        A :class:`TrainedModel` in eval mode.

    Raises:
        FileNotFoundError: If no weights file is found.
        ValueError: If the architecture or class count cannot be determined.
    """
    weights = weights_file(path)
    card = read_card(weights)
    if is_pruned(card):  # structurally pruned: rebuild the pruned architecture
        return load_pruned(weights, card)
    name = model_name or card.get("model") or _name_from_arch(card)
    classes = card.get("classes")
    count = num_classes or card.get("num_classes") or (len(classes) if classes else None)
    if not name or not count:  # no card that says: the file's own header may
        meta = _file_metadata(weights)
        name = name or _name_from_arch(meta)
        count = count or _count(meta.get("num_classes"))
    if not name or not count:
        raise ValueError(
            f"cannot tell the architecture of {weights}: pass --model NAME (or keep its "
            "model.json card beside it)"
        )
    spec = input_spec or _spec_from_card(card)
    kwargs = {**card.get("model_kwargs", {}), **(model_kwargs or {})}
    model = create_model(name, int(count), weights=str(weights), **kwargs).eval()
    card = {**card, "model": name, "num_classes": int(count)}
    return TrainedModel(model, spec, card, weights)


def load_pruned(weights: Path, card: dict[str, Any]) -> TrainedModel:
    """A structurally pruned model: its registry model, the pruned shapes, its weights.

    Raises:
        FileNotFoundError: If the card names a ``pruning.json`` that is not there.
    """
    arch_path = pruning_file(weights, card)
    if arch_path is None:
        raise FileNotFoundError(
            f"{weights}: its card says it was pruned, but {card['pruning']} is missing beside it"
        )
    model = build_pruned(card, read_json(arch_path), weights)
    return TrainedModel(model, _spec_from_card(card), card, weights, kind="pruned")


def pruning_architecture(trained: TrainedModel) -> dict[str, Any] | None:
    """The ``pruning.json`` content of a loaded pruned model (None if it was not pruned)."""
    if not is_pruned(trained.card):
        return None
    path = pruning_file(trained.weights_path, trained.card)
    return read_json(path) if path else None


def _spec_from_card(card: dict[str, Any]) -> InputSpec:
    if isinstance(card.get("input"), dict):  # our cards; others may describe it in prose
        return InputSpec.from_dict(card["input"])
    if "mean" in card and "std" in card:
        return InputSpec(mean=tuple(card["mean"]), std=tuple(card["std"]))
    return InputSpec()


def _file_metadata(weights: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``arch``, ``num_classes``...; else empty).

    An unreadable file gives none: loading its weights reports what is wrong with it.
    """
    if weights.suffix != ".safetensors":
        return {}
    try:
        with safetensors.safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except (safetensors.SafetensorError, OSError):
        return {}


def _count(value: Any) -> int | None:
    """A positive class count from a metadata string, else None."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        return None
    return count if count > 0 else None


def _name_from_arch(card: dict[str, Any]) -> str | None:
    """Recognise cards that describe a torchvision architecture in words."""
    arch = str(card.get("arch", ""))
    for name in ("resnet18", "mobilenet_v2", "efficientnet_v2_s"):
        if name in arch:
            return name
    return None
