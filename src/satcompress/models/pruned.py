"""Save and load structurally pruned models without pickling.

A pruned run directory holds, beside the usual ``model.safetensors`` and ``model.json`` card,
``pruning.json``: the registry architecture it came from, the architecture transforms applied
before pruning, Torch-Pruning's pruning history (which channels of which layer were removed,
step by step), the attention shapes and every tensor's shape. Loading builds the registry
model, redoes the transforms, replays the history on Torch-Pruning's dependency graph, sets the
attention shapes, checks every shape and loads the weights strictly: no code is unpickled.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from satcompress.card import CARD_FILE
from satcompress.models.attention import (
    ArchitectureError,
    apply_transforms,
    attention_layers_by_qkv,
    attention_shapes,
    model_transforms,
    set_attention_shape,
)
from satcompress.models.registry import create_model
from satcompress.models.weights import load_weights, save_weights
from satcompress.utils.io import atomic_write_json, file_digest

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
    atomic_write_json(folder / CARD_FILE, card)
    return weights


def pruning_file(weights: Path, card: dict[str, Any]) -> Path | None:
    """The ``pruning.json`` of a weights file (named by its card), or None."""
    candidate = Path(weights).parent / card.get("pruning", PRUNING_FILE)
    return candidate if candidate.is_file() else None


def build_pruned(card: dict[str, Any], arch: dict[str, Any], weights: Path) -> nn.Module:
    """The registry model of ``card`` given the pruned shapes of ``arch`` and its weights.

    Raises:
        ArchitectureError: If the architecture file does not reproduce the saved shapes.
    """
    model = create_model(card["model"], int(card["num_classes"]), **card.get("model_kwargs", {}))
    rebuild(model, arch)
    load_weights(model, weights, strict=True)
    return model.eval()


def rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """Give an unpruned model the pruned shapes of ``arch`` (in place; weights not loaded).

    Raises:
        ArchitectureError: If the format is unknown or the shapes do not come out as saved.
    """
    if arch.get("format") != PRUNED_FORMAT:
        raise ArchitectureError(f"unknown pruned-model format {arch.get('format')!r}")
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
        raise ArchitectureError(
            f"replaying the pruning history did not reproduce the saved shapes ({details}); "
            "was the model built with other arguments than its card says?"
        )


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Hide Torch-Pruning's notice about parameters outside layers.

    In ViTs these are the class token and position embedding: they belong to the embedding
    width, which is never pruned here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        yield
