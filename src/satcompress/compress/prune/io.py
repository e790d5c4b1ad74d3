"""Save and load structurally pruned models without pickling.

A pruned run directory holds, beside the usual ``model.safetensors`` and ``model.json`` card,
``pruning.json``: the registry architecture it came from, the architecture transforms applied
before pruning, Torch-Pruning's pruning history (which channels of which layer were removed,
step by step), the attention shapes and every tensor's shape. Loading builds the registry
model, redoes the transforms, replays the history on Torch-Pruning's dependency graph, sets the
attention shapes, checks every shape and loads the weights strictly: no code is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from satcompress.checkpoint import TrainedModel, find_card, read_card, weights_file
from satcompress.compress.prune.common import PruningError
from satcompress.compress.prune.structured import quiet_tracing
from satcompress.compress.prune.transformers import (
    apply_transforms,
    attention_layers_by_qkv,
    attention_shapes,
    model_transforms,
    set_attention_shape,
)
from satcompress.models import create_model, load_weights, save_weights
from satcompress.preprocess import InputSpec
from satcompress.utils.io import atomic_write_json, file_digest, read_json

PRUNED_FORMAT = "satcompress.pruned/1"
PRUNING_FILE = "pruning.json"


def architecture(
    model: nn.Module, history: list[list], example_inputs: torch.Tensor
) -> dict[str, Any]:
    """What :func:`rebuild` needs to give a fresh registry model the pruned shapes.

    Args:
        model: The pruned model.
        history: Torch-Pruning's pruning history (``StructuredPruner.history()``).
        example_inputs: The batch the dependency graph was traced with.
    """
    return {
        "format": PRUNED_FORMAT,
        "example_input": list(example_inputs.shape),
        "transforms": model_transforms(model),
        "history": history,
        "attention": attention_shapes(model),
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    }


def save_pruned(
    model: nn.Module, folder: str | Path, card: dict[str, Any], arch: dict[str, Any]
) -> Path:
    """Write ``model.safetensors``, ``pruning.json`` and the card ``model.json`` to ``folder``.

    Args:
        model: The pruned model.
        folder: Output folder.
        card: Its model card (registry ``model``, ``model_kwargs``, ``num_classes``, ...).
        arch: Its :func:`architecture`.

    Returns:
        The weights file.
    """
    folder = Path(folder)
    weights = save_weights(model, folder / "model.safetensors")
    atomic_write_json(folder / PRUNING_FILE, arch)
    card = {**card, "pruning": PRUNING_FILE, "weights_sha256": file_digest(weights, "sha256")}
    atomic_write_json(folder / "model.json", card)
    return weights


def is_pruned(path: str | Path) -> bool:
    """True if a run directory or weights file has a ``pruning.json`` architecture."""
    try:
        return _pruning_file(weights_file(path)) is not None
    except FileNotFoundError:
        return False


def _pruning_file(weights: Path) -> Path | None:
    card_path = find_card(weights)
    card = read_json(card_path) if card_path else {}
    candidate = weights.parent / card.get("pruning", PRUNING_FILE)
    return candidate if candidate.is_file() else None


def load_pruned(path: str | Path, model: nn.Module | None = None) -> TrainedModel:
    """Load a structurally pruned model saved by :func:`save_pruned` (a fresh process will do).

    Args:
        path: The run directory or its ``model.safetensors``.
        model: The unpruned architecture to rebuild on; default: built from the card's
            registry name and builder arguments.

    Returns:
        A :class:`satcompress.checkpoint.TrainedModel` in eval mode.

    Raises:
        FileNotFoundError: If there is no weights file or no ``pruning.json``.
        PruningError: If the architecture file does not reproduce the saved shapes.
    """
    weights = weights_file(path)
    arch_path = _pruning_file(weights)
    if arch_path is None:
        raise FileNotFoundError(f"no {PRUNING_FILE} beside {weights}: not a pruned model")
    card, arch = read_card(weights), read_json(arch_path)
    if model is None:
        model = create_model(card["model"], int(card["num_classes"]), **card["model_kwargs"])
    rebuild(model, arch)
    load_weights(model, weights, strict=True)
    spec = InputSpec.from_dict(card["input"]) if "input" in card else InputSpec()
    return TrainedModel(model.eval(), spec, card, weights)


def rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """Give an unpruned model the pruned shapes of ``arch`` (in place; weights not loaded).

    Raises:
        PruningError: If the format is unknown or the shapes do not come out as saved.
    """
    if arch.get("format") != PRUNED_FORMAT:
        raise PruningError(f"unknown pruned-model format {arch.get('format')!r}")
    apply_transforms(model, arch.get("transforms", []))
    model.eval()
    with quiet_tracing():
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.zeros(*arch["example_input"]), verbose=False
        )
    graph.load_pruning_history(arch["history"])
    attention = attention_layers_by_qkv(model)
    for name, shape in arch.get("attention", {}).items():
        set_attention_shape(attention[name], shape["num_heads"], shape["head_dim"])
    _check_shapes(model, arch["shapes"])
    return model


def _check_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    actual = {k: list(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(k for k in set(actual) | set(shapes) if actual.get(k) != shapes.get(k))
    if wrong:
        details = ", ".join(f"{k}: {actual.get(k)} != {shapes.get(k)}" for k in wrong[:5])
        raise PruningError(
            f"replaying the pruning history did not reproduce the saved shapes ({details}); "
            "was the model built with other arguments than its card says?"
        )
