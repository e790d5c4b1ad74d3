"""Teachers: load one from a run directory, a weights file, a registry name or a module."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satcompress.checkpoint import load_trained, read_card
from satcompress.config import ConfigError
from satcompress.models import UnknownModelError, model_info
from satcompress.preprocess import InputSpec, Preprocess


class TeacherMismatchError(ValueError):
    """The teacher predicts other classes than the dataset has."""


@dataclasses.dataclass
class Teacher:
    """A trained teacher with what is needed to prepare its inputs and check its classes.

    Attributes:
        model: The network (float ``(B, 3, H, W)`` -> ``(B, K)`` logits).
        input_spec: Its input resolution and normalisation.
        classes: Its class names in output order, if known (from its card).
        source: Where it came from: a path, a registry name, or ``module``.
        name: Its architecture (registry name or class name).
        weights: Its weights file, if any.
        card: Its model card (empty for a module).
    """

    model: nn.Module
    input_spec: InputSpec
    classes: list[str] | None = None
    source: str = "module"
    name: str = ""
    weights: str | None = None
    card: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What goes into a distilled model's recipe about its teacher."""
        out: dict[str, Any] = {
            "source": self.source,
            "model": self.name or type(self.model).__name__,
            "weights": self.weights,
            "input": self.input_spec.to_dict(),
        }
        for key in ("weights_sha256", "val_accuracy", "model_kwargs", "dataset"):
            if key in self.card:
                out[key] = self.card[key]
        return out


def load_teacher(
    teacher: str | Path | nn.Module | Teacher | Any,
    *,
    weights: str | Path | None = None,
    input_spec: InputSpec | None = None,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Teacher:
    """Resolve a teacher given in any of the accepted forms.

    Args:
        teacher: A run directory or weights file (its ``model.json`` card gives architecture,
            classes and input spec), a registry name (with ``weights``), an ``nn.Module``
            (with ``input_spec``), a :class:`Teacher`, or anything with ``model`` and
            ``input_spec`` attributes (a ``TrainResult`` or ``TrainedModel``).
        weights: The weights file of a registry-name teacher.
        input_spec: The teacher's input spec, overriding its card's.
        classes: The teacher's class names, if not in its card.
        num_classes: Class count for a weights file without a card (e.g. the dataset's).
        model_kwargs: Builder arguments of a registry-name teacher, overriding its card's.

    Returns:
        The :class:`Teacher`; its network is frozen in place (eval mode, no gradients).

    Raises:
        ConfigError: If the teacher cannot be built from what was given.
        FileNotFoundError: If it is neither an existing path nor a registry name.
    """
    if isinstance(teacher, Teacher):
        found = dataclasses.replace(teacher, input_spec=input_spec or teacher.input_spec)
    elif isinstance(teacher, nn.Module):
        found = _from_module(teacher, input_spec, classes)
    elif hasattr(teacher, "model") and hasattr(teacher, "input_spec"):
        found = _from_trained(teacher, input_spec, classes)
    else:
        found = _from_name_or_path(
            str(teacher), weights, input_spec, classes, num_classes, model_kwargs
        )
    found.model.eval().requires_grad_(False)
    return found


def _from_module(
    model: nn.Module, spec: InputSpec | None, classes: Sequence[str] | None
) -> Teacher:
    if spec is None:
        raise ConfigError(
            "a teacher given as an nn.Module needs its input spec: pass teacher_spec="
            "InputSpec(size=..., mean=..., std=...) (its resolution and normalisation)"
        )
    return Teacher(model, spec, list(classes) if classes else None)


def _from_trained(trained: Any, spec: InputSpec | None, classes: Sequence[str] | None) -> Teacher:
    card = dict(getattr(trained, "card", {}) or {})
    weights = getattr(trained, "weights_path", None)
    return Teacher(
        trained.model,
        spec or trained.input_spec,
        list(classes or card.get("classes") or []) or None,
        str(weights) if weights else "module",
        card.get("model", ""),
        str(weights) if weights else None,
        card,
    )


def _from_name_or_path(
    teacher: str,
    weights: str | Path | None,
    spec: InputSpec | None,
    classes: Sequence[str] | None,
    num_classes: int | None,
    model_kwargs: dict[str, Any] | None,
) -> Teacher:
    path = Path(teacher)
    if path.exists():
        if weights is not None:
            raise ConfigError(
                f"teacher {teacher} is already a run directory or weights file; "
                "give teacher weights only with a registry name"
            )
        return _load(path, None, spec, classes, num_classes, model_kwargs, source=teacher)
    if not _is_model_name(teacher):
        raise FileNotFoundError(
            f"teacher {teacher!r} is neither a run directory or weights file nor a registry "
            "model name (see satcompress.models.list_models())"
        )
    if weights is None:
        raise ConfigError(
            f"teacher {teacher!r} is a registry name: give its trained weights "
            "(--teacher-weights FILE, or teacher_weights=...); an untrained teacher teaches nothing"
        )
    return _load(Path(weights), teacher, spec, classes, num_classes, model_kwargs, source=teacher)


def _load(
    path: Path,
    name: str | None,
    spec: InputSpec | None,
    classes: Sequence[str] | None,
    num_classes: int | None,
    model_kwargs: dict[str, Any] | None,
    source: str,
) -> Teacher:
    card = read_card(path)
    has_count = bool(card.get("num_classes") or card.get("classes"))
    loaded = load_trained(
        path,
        model_name=name,
        num_classes=None if has_count else num_classes,
        input_spec=spec or _default_spec(card, name, model_kwargs),
        model_kwargs=model_kwargs,
    )
    return Teacher(
        loaded.model,
        loaded.input_spec,
        list(classes or card.get("classes") or []) or None,
        source,
        loaded.card["model"],
        str(loaded.weights_path),
        loaded.card,
    )


def _default_spec(
    card: dict[str, Any], name: str | None, model_kwargs: dict[str, Any] | None
) -> InputSpec | None:
    """The architecture's own input size when the card does not give an input spec."""
    name = name or card.get("model")
    if "input" in card or not name or name.startswith("timm/") or not _is_model_name(name):
        return None
    size = model_info(name).input_side({**card.get("model_kwargs", {}), **(model_kwargs or {})})
    if size is None:
        return None
    mean_std = {k: tuple(card[k]) for k in ("mean", "std") if k in card}
    return InputSpec(size=size, **mean_std)


def _is_model_name(name: str) -> bool:
    if name.startswith("timm/"):
        return True
    try:
        model_info(name)
    except (UnknownModelError, KeyError, ValueError):
        return False
    return True


def check_teacher_classes(
    teacher: Teacher, classes: Sequence[str], dataset_name: str, image_size: tuple[int, int]
) -> None:
    """Refuse a teacher that predicts other classes than the dataset has.

    Compares the class names of its card (when known) and the width of its output, run
    once on a blank batch at its own input resolution.

    Raises:
        TeacherMismatchError: Naming the teacher's and the dataset's classes.
    """
    classes = list(classes)
    outputs = _output_width(teacher, image_size)
    if teacher.classes is not None and list(teacher.classes) != classes:
        same_count = len(teacher.classes) == len(classes)
        same = "same count, different names or order; " if same_count else ""
        raise TeacherMismatchError(
            f"teacher {teacher.source} was trained on {len(teacher.classes)} classes "
            f"{list(teacher.classes)}, but the dataset {dataset_name} has {len(classes)} classes "
            f"{classes} ({same}a teacher must predict the student's classes in the same order)"
        )
    if outputs != len(classes):
        raise TeacherMismatchError(
            f"teacher {teacher.source} predicts {outputs} classes, but the dataset "
            f"{dataset_name} has {len(classes)} classes {classes}"
        )


def _output_width(teacher: Teacher, image_size: tuple[int, int]) -> int:
    preprocess = Preprocess(teacher.input_spec)
    first = next(teacher.model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    blank = torch.zeros(1, 3, *image_size, dtype=torch.uint8, device=device)
    with torch.inference_mode():
        logits = teacher.model.eval()(preprocess.to(device)(blank))
    return int(logits.shape[-1])
