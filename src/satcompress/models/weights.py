"""Safe loading and saving of model weights.

Only formats that cannot run code are read: safetensors files, and PyTorch pickles opened with
``torch.load(weights_only=True)``. Plain state_dicts, Lightning checkpoints (``{"state_dict":
...}`` with a ``model.`` key prefix) and float16 files are accepted; every failure is reported as
a :class:`WeightsError` that says what was wrong and with which file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from satcompress.utils.io import atomic_write_bytes

__all__ = [
    "ClassCountError",
    "WeightsError",
    "classifier_name",
    "load_backbone",
    "load_weights",
    "pretrained_download",
    "save_weights",
]

_SAFETENSORS_SUFFIXES = {".safetensors"}
_TORCH_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}
# Wrappers that prefix state_dict keys: Lightning modules (``self.model``), DDP, torch.compile.
_KEY_PREFIXES = ("model.", "module.", "_orig_mod.")
# Containers under which training scripts commonly nest the state_dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_MAX_LISTED = 8


class WeightsError(RuntimeError):
    """Weights could not be downloaded, read, or matched to the model."""


class ClassCountError(WeightsError):
    """The file's classifier was trained for another number of classes than the model's.

    Attributes:
        file_classes: Outputs of the file's classifier.
        model_classes: Outputs of the model's classifier.
        classifier: Module name of the classifier (e.g. ``fc``, ``classifier.1``, ``head``).
    """

    def __init__(self, message: str, file_classes: int, model_classes: int, classifier: str):
        super().__init__(message)
        self.file_classes = file_classes
        self.model_classes = model_classes
        self.classifier = classifier


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load a weights file into ``model`` in place, safely.

    Args:
        model: The model to fill.
        path: A ``.safetensors`` file, or a ``.pt``/``.pth``/``.ckpt``/``.bin`` file that
            ``torch.load(weights_only=True)`` accepts (plain state_dict or a checkpoint dict with
            a ``state_dict`` entry). Key prefixes ``model.``, ``module.`` and ``_orig_mod.`` are
            stripped when the model's own keys lack them.
        strict: If True, every model key must be in the file with the same shape and the file
            must hold no extra keys. If False, missing and unexpected keys are ignored and
            tensors whose shape differs (e.g. a classifier for another class count) are
            skipped with a warning, so the model keeps its own initialisation for them.

    Returns:
        ``model``, with the weights loaded (floating tensors cast to the model's dtypes).

    Raises:
        WeightsError: The file is missing, unsafe or unreadable, or does not match the model.
    """
    path = Path(path)
    state = _extract_state_dict(_read_file(path), path)
    target = model.state_dict()
    state = _strip_prefixes(state, target)
    state = _check_and_cast(model, state, target, path, strict)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise WeightsError(f"Could not load {path} into the model: {err}") from err
    return model


def load_backbone(model: nn.Module, path: str | os.PathLike) -> int:
    """Load everything but the classifier strictly; the classifier keeps its initialisation.

    For fine-tuning on other classes: build the model for the new class count, then load
    the backbone of weights trained on another dataset. Every tensor outside the classifier
    (:func:`classifier_name`) must be in the file with the model's shape, and the file may
    hold no other tensors than those and its own classifier's.

    Args:
        model: The model to fill (its classifier is left as it is).
        path: A weights file, as for :func:`load_weights`.

    Returns:
        The number of classes of the file's classifier (rows of its weight).

    Raises:
        WeightsError: The file is unreadable, has no such classifier, or its backbone does
            not match the model's.
    """
    path = Path(path)
    head = classifier_name(model)
    if head is None:
        raise WeightsError(
            f"{type(model).__name__} has no nn.Linear classifier: cannot tell which layer a "
            "new head replaces"
        )
    target = model.state_dict()
    state = _strip_prefixes(_extract_state_dict(_read_file(path), path), target)
    if f"{head}.weight" not in state:
        raise WeightsError(
            f"{path} holds no classifier {head!r} ({head}.weight): is it the right file for "
            "this architecture?"
        )
    source_classes = int(state[f"{head}.weight"].shape[0])
    body = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    target_body = {k: v for k, v in target.items() if not k.startswith(f"{head}.")}
    body = _check_and_cast(model, body, target_body, path, strict=True)
    try:
        model.load_state_dict(body, strict=False)
    except RuntimeError as err:
        raise WeightsError(f"Could not load {path} into the model: {err}") from err
    return source_classes


def classifier_name(model: nn.Module) -> str | None:
    """Module name of the classifier: the last ``nn.Linear`` (None if the model has none).

    That is the classifier of every family of the registry: ``fc`` (ResNets, ResNet-9, the
    test models), ``classifier.1`` (MobileNetV2, EfficientNetV2), ``head`` (timm ViTs and
    CLIP), ``11`` (``test_cnn``); torchvision's pretrained builders replace the same layer.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def save_weights(
    model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write the model's state_dict to a safetensors file atomically.

    Tensors that share memory (tied weights) are written as separate copies, so the file loads
    with plain ``safetensors.torch.load_file`` + ``load_state_dict``.

    Args:
        model: The model whose ``state_dict()`` is saved.
        path: Destination file (conventionally ``*.safetensors``); parent folders are created.
        metadata: Optional string key/value pairs stored in the file header.

    Returns:
        The destination path.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        ptr = tensor.untyped_storage().data_ptr()
        if (ptr and ptr in seen) or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    meta = {"format": "pt", **dict(metadata or {})}
    return atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=meta))


@contextlib.contextmanager
def pretrained_download(model_name: str) -> Iterator[None]:
    """Turn any failure while fetching pretrained weights into a clear :class:`WeightsError`.

    ``TypeError`` and ``WeightsError`` pass through unchanged: they mean bad arguments or a
    problem already explained, not a failed download.

    Args:
        model_name: Registry name of the model, used in the message.
    """
    try:
        yield
    except (WeightsError, TypeError):
        raise
    except Exception as err:
        raise WeightsError(
            f"Downloading pretrained weights for '{model_name}' failed (likely no network "
            f"access): {type(err).__name__}: {err}. Use a local weights file instead: "
            f"`--weights FILE` on the command line, or create_model(..., weights=FILE)."
        ) from err


def _no_pretrained(model_name: str) -> WeightsError:
    """Error for ``pretrained=True`` on a model that has no published weights."""
    return WeightsError(
        f"'{model_name}' has no pretrained weights. Use pretrained=False, or a local weights "
        f"file: `--weights FILE` / create_model(..., weights=FILE)."
    )


def _read_file(path: Path) -> object:
    """Read ``path`` with a loader that cannot execute code."""
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in _TORCH_SUFFIXES:
        return _read_torch(path)
    if _looks_like_safetensors(path):
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError, OSError, header errors...
        raise WeightsError(f"Could not read safetensors file {path}: {err}") from err


def _read_torch(path: Path) -> object:
    """Read a PyTorch file with ``weights_only=True`` (no arbitrary objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"Refusing to load {path}: it is not a plain weights file (torch.load with "
            f"weights_only=True rejected it, so it may contain arbitrary Python objects or "
            f"code). Re-save it as a state_dict, or as safetensors with save_weights(). "
            f"Details: {_unpickler_reason(err)}"
        ) from err
    except Exception as err:
        raise WeightsError(f"Could not read weights file {path}: {err}") from err


def _unpickler_reason(err: Exception) -> str:
    """The informative line of torch's weights-only refusal (e.g. the unsupported global)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    for line in lines:
        if "Unsupported" in line:
            return line[line.index("Unsupported") :]
    return next((line for line in lines if line), type(err).__name__)


def _looks_like_safetensors(path: Path) -> bool:
    """Guess the safetensors format from the header: 8-byte length then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a loaded file (plain or nested checkpoint)."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    raise WeightsError(
        f"{path} holds no state_dict: expected a mapping of names to tensors, or a checkpoint "
        f"with one under {', '.join(repr(k) for k in _NESTED_KEYS)}; got {type(obj).__name__}."
    )


def _strip_prefixes(
    state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``model.`` etc.) while the keys do not match the model's."""
    changed = True
    while changed and not set(state) & set(target):
        changed = False
        for prefix in _KEY_PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                changed = True
                break
    return state


def _check_and_cast(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    path: Path,
    strict: bool,
) -> dict[str, torch.Tensor]:
    """Check keys and shapes against the model; cast floating tensors to the model's dtypes."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    _raise_if_class_mismatch(model, state, target, mismatched, path, strict)
    if strict and (missing or unexpected or mismatched):
        raise WeightsError(
            f"{path} does not match the model: {_describe_keys(missing, unexpected, mismatched)}"
        )
    if mismatched:
        warnings.warn(
            f"Skipping {len(mismatched)} tensor(s) of {path} whose shape differs from the "
            f"model: {_short_list(mismatched)}",
            stacklevel=3,
        )
    out = {}
    for key, value in state.items():
        if key not in target or key in mismatched:
            continue
        want = target[key]
        if value.is_floating_point() and want.is_floating_point() and value.dtype != want.dtype:
            value = value.to(want.dtype)
        out[key] = value
    return out


def _raise_if_class_mismatch(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    mismatched: list[str],
    path: Path,
    strict: bool,
) -> None:
    """Raise a WeightsError naming both class counts when only the classifier differs."""
    if not strict:
        return
    head = _classifier_weight_key(model)
    if head is None or head not in mismatched:
        return
    file_classes, model_classes = state[head].shape[0], target[head].shape[0]
    if file_classes == model_classes:
        return
    raise ClassCountError(
        f"{path} was saved for {file_classes} classes but the model has {model_classes} "
        f"classes (classifier '{head}': file {tuple(state[head].shape)}, model "
        f"{tuple(target[head].shape)}). Create the model with num_classes={file_classes}, "
        f"or load its backbone only with load_backbone() (a new classifier).",
        file_classes,
        model_classes,
        head.removesuffix(".weight"),
    )


def _classifier_weight_key(model: nn.Module) -> str | None:
    """State-dict key of the final linear layer's weight (the classifier), if any."""
    name = classifier_name(model)
    return None if name is None else f"{name}.weight"


def _describe_keys(
    missing: list[str], unexpected: list[str], mismatched: list[str] | None = None
) -> str:
    """One-line summary of key problems."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) {_short_list(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {_short_list(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es) {_short_list(mismatched)}")
    return "; ".join(parts) + ". Is it the right file for this architecture?"


def _short_list(keys: list[str]) -> str:
    """Format at most a few keys."""
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(keys) > _MAX_LISTED else ''}]"
