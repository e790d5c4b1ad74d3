"""Helpers shared by the pruning modules: errors, layer lookup, accuracy on a data subset."""

from __future__ import annotations

import copy
import difflib
import hashlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from satcompress.data import SceneDataset
from satcompress.models.attention import ArchitectureError
from satcompress.preprocess import InputSpec, Preprocess

_MAX_LISTED = 12


class PruningError(ArchitectureError):
    """Pruning cannot proceed; the message names the cause and, where possible, the fix."""


def find_modules(model: nn.Module, names: Iterable[str], what: str = "layer") -> list[nn.Module]:
    """The submodules ``names`` of ``model`` (as in ``named_modules()``).

    Args:
        model: The network to look in.
        names: Dotted module names, e.g. ``layer4.1.conv2`` or ``blocks.3``.
        what: What the names are for, used in the error message.

    Raises:
        PruningError: If a name does not exist; the message suggests close matches.
    """
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if not name or name not in modules:
            raise PruningError(unknown_layer_message(name, [n for n in modules if n], what))
        found.append(modules[name])
    return found


def unknown_layer_message(name: str, candidates: list[str], what: str = "layer") -> str:
    """An error message for an unknown layer name, with close matches and some valid names."""
    close = difflib.get_close_matches(str(name), candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    shown = ", ".join(candidates[:_MAX_LISTED])
    more = f", ... ({len(candidates) - _MAX_LISTED} more)" if len(candidates) > _MAX_LISTED else ""
    return f"unknown {what} {name!r}: the model has no such module.{hint} Layers: {shown}{more}"


def classifier_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The output layer (the last ``nn.Linear``, else the last convolution): never pruned.

    Raises:
        PruningError: If the model has neither.
    """
    modules = list(model.named_modules())
    linears = [(n, m) for n, m in modules if isinstance(m, nn.Linear)]
    convs = [(n, m) for n, m in modules if isinstance(m, nn.modules.conv._ConvNd)]
    if not linears and not convs:
        raise PruningError(
            f"{type(model).__name__} has no Linear or convolution layer: nothing to prune"
        )
    return (linears or convs)[-1]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU if it has none)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def example_input(spec: InputSpec, image_size: tuple[int, int]) -> torch.Tensor:
    """A zero float batch of one at the model's input resolution (for graph tracing)."""
    size = spec.size or tuple(image_size)
    if isinstance(size, int):
        size = (size, size)
    return torch.zeros(1, 3, *size)


def model_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state_dict: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def subset_indices(
    dataset: SceneDataset, split: str, count: int | None, seed: int = 0
) -> list[int] | None:
    """The sorted indices of a seeded random choice of ``count`` images of ``split``.

    None (all of them) when ``count`` is None or the split holds ``count`` images or fewer.
    The one rule every analysis subset follows (pruning's calibration, the sensitivity table).

    Raises:
        PruningError: If the split does not exist or is empty.
    """
    if split not in dataset.splits or len(dataset.splits[split].labels) == 0:
        raise PruningError(
            f"the dataset {dataset.name} has no (or an empty) {split!r} split; "
            f"splits: {', '.join(dataset.splits)}"
        )
    total = len(dataset.splits[split].labels)
    if count is None or count >= total:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:count].sort().values.tolist()


def subset(
    dataset: SceneDataset, split: str, max_samples: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``max_samples`` images and labels of a split (see :func:`subset_indices`).

    Raises:
        PruningError: If the split does not exist or is empty.
    """
    indices = subset_indices(dataset, split, max_samples, seed)
    images, labels = dataset.splits[split].images, dataset.splits[split].labels
    if indices is None:
        return images, labels
    index = torch.tensor(indices, dtype=torch.long)
    return images[index], labels[index]


def batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(images, labels)`` batches."""
    for start in range(0, len(labels), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


@torch.no_grad()
def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: InputSpec,
    batch_size: int = 128,
) -> float:
    """Top-1 accuracy of a PyTorch model on uint8 images (fast, for analyses; not a record)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    preprocess = Preprocess(spec).to(device)
    correct = 0
    for x, y in batches(images, labels, batch_size):
        logits = model(preprocess(x.to(device)))
        correct += int((logits.argmax(1).cpu() == y).sum())
    model.train(was_training)
    return correct / max(1, len(labels))


def accumulate_gradients(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: InputSpec,
    batch_size: int = 64,
) -> None:
    """Sum the cross-entropy gradients of some batches into ``.grad`` (for Taylor importance)."""
    was_training = model.training
    model.eval()  # BN statistics stay as trained; the gradients are what matter
    device = model_device(model)
    preprocess = Preprocess(spec).to(device)
    model.zero_grad()
    for x, y in batches(images, labels, batch_size):
        loss = nn.functional.cross_entropy(model(preprocess(x.to(device))), y.to(device))
        loss.backward()
    model.train(was_training)


def clone(model: nn.Module) -> nn.Module:
    """A deep copy of a model (its gradients are not copied)."""
    return copy.deepcopy(model)
