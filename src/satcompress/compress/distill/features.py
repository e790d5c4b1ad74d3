"""Feature distillation: match named intermediate layers of a student and a teacher.

Forward hooks capture the outputs of the named layers; a learned 1x1 convolution maps the
student's channels to the teacher's, and both maps are average-pooled to the smaller of their
resolutions before a mean-squared error. ViT token sequences ``(B, N, C)`` are reshaped to a
``(B, C, H, W)`` grid after dropping the class/prefix tokens, so a CNN student can learn from a
ViT teacher (and the other way round).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

_MAX_LISTED = 12
_MAX_PREFIX_TOKENS = 8


def find_layer(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """The submodule ``name`` of ``model`` (as in ``named_modules()``).

    Args:
        model: The network to look in.
        name: Dotted module name, e.g. ``layer3`` or ``blocks.5``.
        role: ``student`` or ``teacher``, for the error message.

    Raises:
        ValueError: If there is no such layer; the message lists close matches and the
            available names.
    """
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    shown = ", ".join(names[:_MAX_LISTED])
    more = f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    raise ValueError(
        f"unknown {role} layer {name!r} for feature distillation.{hint} "
        f"Available layers: {shown}{more}"
    )


def to_grid(
    features: Any, prefix_tokens: int | None = None, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """A layer's output as a ``(B, C, H, W)`` map.

    Args:
        features: A 4-D map, a ``(B, N, C)`` token sequence, or a tuple whose first item is
            one of these.
        prefix_tokens: Class/register tokens at the start of the sequence (inferred if None).
        grid: The token grid ``(H, W)`` (a square grid if None).

    Raises:
        ValueError: If the output cannot be read as a feature map.
    """
    if isinstance(features, (tuple, list)):
        features = features[0]
    if not isinstance(features, torch.Tensor) or features.dim() not in (3, 4):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"cannot use a layer output of shape {shape} as a feature map")
    if features.dim() == 4:
        return features
    batch, tokens, channels = features.shape
    prefix = _prefix_tokens(tokens, grid) if prefix_tokens is None else prefix_tokens
    height, width = grid if grid is not None else _square(tokens - prefix)
    if height * width != tokens - prefix:
        raise ValueError(
            f"cannot reshape {tokens} tokens ({prefix} prefix) to a {height}x{width} grid"
        )
    patches = features[:, prefix:]
    return patches.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def _prefix_tokens(tokens: int, grid: tuple[int, int] | None) -> int:
    if grid is not None:
        return tokens - grid[0] * grid[1]
    for prefix in range(_MAX_PREFIX_TOKENS + 1):
        side = math.isqrt(tokens - prefix)
        if side > 0 and side * side == tokens - prefix:
            return prefix
    raise ValueError(f"cannot tell the patch grid of a sequence of {tokens} tokens")


def _square(count: int) -> tuple[int, int]:
    side = math.isqrt(count)
    return side, side


def _token_layout(model: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """Prefix-token count and patch grid of a timm-style ViT (None, None otherwise)."""
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    dynamic = getattr(getattr(model, "patch_embed", None), "dynamic_img_size", False)
    grid = tuple(int(g) for g in grid) if grid is not None and not dynamic else None
    return prefix, grid


class _Captures:
    """Layer outputs captured by forward hooks (shared, never deep-copied).

    Lightning's EMA callback deep-copies the whole task; the copy must keep writing here,
    not into a stale copy, and must not duplicate captured tensors.
    """

    def __init__(self) -> None:
        self.outputs: dict[str, Any] = {}
        self.handles: list[RemovableHandle] = []
        self.probing = False

    def __deepcopy__(self, memo: dict) -> _Captures:
        return self

    def hook(self, name: str, only_training: bool) -> Callable[..., None]:
        """A forward hook storing the module's output under ``name``."""

        def store(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.probing or module.training or not only_training:
                self.outputs[name] = output

        return store

    def remove(self) -> None:
        """Detach every hook and drop captured outputs."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.outputs.clear()


class FeatureDistiller(nn.Module):
    """Hooks, learned projections and the loss of feature distillation.

    The student's hooks capture only in training mode (validation and export are left
    alone); the teacher's capture on every teacher forward. The projections are ordinary
    submodules, so a task that optimises its loss's parameters trains them.

    Args:
        pairs: ``{student_layer: teacher_layer}``.
        student: The student network (hooked, not stored as a submodule).
        teacher: The teacher network (hooked, not stored as a submodule).
        student_input: A float batch in the student's input format (to read channel counts).
        teacher_input: The same for the teacher.
        normalize: Standardise both maps per sample before the MSE.
    """

    def __init__(
        self,
        pairs: Mapping[str, str],
        student: nn.Module,
        teacher: nn.Module,
        student_input: torch.Tensor,
        teacher_input: torch.Tensor,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.pairs = dict(pairs)
        self.normalize = normalize
        self._student = _Captures()
        self._teacher = _Captures()
        self._student_layout = _token_layout(student)
        self._teacher_layout = _token_layout(teacher)
        for s_name, t_name in self.pairs.items():
            self._attach(self._student, student, s_name, "student", only_training=True)
            self._attach(self._teacher, teacher, t_name, "teacher", only_training=False)
        s_maps, t_maps = self._probe(student, student_input, teacher, teacher_input)
        pairs_of_maps = list(zip(s_maps, t_maps, strict=True))
        self.projections = nn.ModuleList(
            nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1) for s, t in pairs_of_maps
        )
        self.shapes = [
            {"student": list(s.shape[1:]), "teacher": list(t.shape[1:])} for s, t in pairs_of_maps
        ]

    @staticmethod
    def _attach(
        captures: _Captures, model: nn.Module, name: str, role: str, only_training: bool
    ) -> None:
        layer = find_layer(model, name, role)
        captures.handles.append(layer.register_forward_hook(captures.hook(name, only_training)))

    def _probe(
        self, student: nn.Module, s_input: torch.Tensor, teacher: nn.Module, t_input: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run both networks once in eval mode to read their feature shapes."""
        s_maps = _probe_maps(student, s_input, self._student, list(self.pairs))
        t_maps = _probe_maps(teacher, t_input, self._teacher, list(self.pairs.values()))
        s_maps = [to_grid(x, *self._student_layout) for x in s_maps]
        t_maps = [to_grid(x, *self._teacher_layout) for x in t_maps]
        return s_maps, t_maps

    def forward(self) -> torch.Tensor:
        """Mean feature loss over the pairs, from the outputs captured in this step."""
        losses = [
            self._pair_loss(index, s_name, t_name)
            for index, (s_name, t_name) in enumerate(self.pairs.items())
        ]
        self._student.outputs.clear()
        self._teacher.outputs.clear()
        return torch.stack(losses).mean()

    def _pair_loss(self, index: int, s_name: str, t_name: str) -> torch.Tensor:
        student = to_grid(_captured(self._student, s_name, "student"), *self._student_layout)
        teacher = to_grid(_captured(self._teacher, t_name, "teacher"), *self._teacher_layout)
        teacher = teacher.detach().clone()  # a normal tensor, even if made in inference mode
        student = self.projections[index](student)
        size = (
            min(student.shape[-2], teacher.shape[-2]),
            min(student.shape[-1], teacher.shape[-1]),
        )
        student, teacher = _pool_to(student.float(), size), _pool_to(teacher.float(), size)
        if self.normalize:
            student = F.layer_norm(student, student.shape[1:])
            teacher = F.layer_norm(teacher, teacher.shape[1:])
        return F.mse_loss(student, teacher)

    def remove_hooks(self) -> None:
        """Detach the hooks from both networks (done by ``distill()`` after training)."""
        self._student.remove()
        self._teacher.remove()


def _probe_maps(
    model: nn.Module, inputs: torch.Tensor, captures: _Captures, names: list[str]
) -> list[Any]:
    was_training = model.training
    captures.probing = True
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        captures.probing = False
        model.train(was_training)
    outputs = [_captured(captures, name, "probe") for name in names]
    captures.outputs.clear()
    return outputs


def _captured(captures: _Captures, name: str, role: str) -> Any:
    if name not in captures.outputs:
        raise RuntimeError(
            f"{role} layer {name!r} produced no output in this forward pass; is it used by "
            "the model's forward (and is the student in training mode)?"
        )
    return captures.outputs[name]


def _pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)
