"""Structured pruning with Torch-Pruning: channels, MLP neurons and attention heads removed.

:class:`StructuredPruner` sets up Torch-Pruning's ``BasePruner`` (its dependency graph finds
every layer that must shrink together: a convolution, its batch norm, the next layer's inputs,
all members of a residual sum) for this project's models:

* the classifier (last linear layer) and any ``ignored_layers`` keep their outputs;
* in transformers (timm ViTs, the CLIP tower after :func:`split_multihead_attention`) whole
  heads are removed from every attention layer (``num_heads`` passed to Torch-Pruning, head
  dimension kept), MLP hidden layers lose neurons, and the embedding width (the residual
  stream) is kept; afterwards the layers' ``num_heads``/``head_dim``/``attn_dim`` are updated;
* after each step the model must still run, or a :class:`PruningError` names the cause.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from satcompress.compress.prune.common import (
    PruningError,
    accumulate_gradients,
    classifier_layer,
    find_modules,
    unknown_layer_message,
)
from satcompress.compress.prune.config import PruneConfig
from satcompress.compress.prune.transformers import (
    attention_layers,
    split_multihead_attention,
    sync_attention,
    whole_heads_problem,
)
from satcompress.models.pruned import quiet_tracing
from satcompress.preprocess import InputSpec

#: Width given to attention groups so Torch-Pruning visits them; their dims are never pruned
#: (``prune_head_dims=False``): only whole heads go, at the head ratio.
_VISIT_ATTENTION = 0.5


def make_importance(method: str) -> tp.importance.Importance:
    """Torch-Pruning's importance criterion for a structured method name.

    Raises:
        PruningError: For ``magnitude`` or an unknown name.
    """
    factories: dict[str, Callable[[], tp.importance.Importance]] = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": tp.importance.GroupTaylorImportance,
        "bn": tp.importance.BNScaleImportance,
    }
    if method not in factories:
        raise PruningError(
            f"{method!r} is not a structured pruning method (use {', '.join(factories)})"
        )
    return factories[method]()


@dataclasses.dataclass
class Calibration:
    """Training images whose gradients feed Taylor importance.

    Attributes:
        images: uint8 ``(N, 3, H, W)`` images.
        labels: ``(N,)`` class indices.
        spec: The model's input spec.
        batch_size: Batch size of the backward passes.
    """

    images: torch.Tensor
    labels: torch.Tensor
    spec: InputSpec
    batch_size: int = 64

    def gradients(self, model: nn.Module) -> None:
        """Accumulate the cross-entropy gradients of these images into ``model``."""
        accumulate_gradients(model, self.images, self.labels, self.spec, self.batch_size)


@dataclasses.dataclass
class Group:
    """One unit Torch-Pruning prunes together.

    Attributes:
        name: The root module's name (the attention layer's name for heads).
        kind: ``channels`` (conv/linear outputs with everything coupled to them) or ``heads``.
        size: Its width: channels, or heads.
        members: Names of the modules whose outputs shrink with it.
    """

    name: str
    kind: str
    size: int
    members: list[str]


class StructuredPruner:
    """Torch-Pruning's ``BasePruner`` configured for one model (pruned in place).

    Args:
        model: The model; ``nn.MultiheadAttention`` layers are split first (see
            :attr:`transforms`).
        config: Method, ratio(s), steps, ignored layers, rounding.
        example_inputs: A float batch for tracing the graph.
        unit_ratios: Prune only these groups (names as in :meth:`groups`) at these ratios,
            as a compression plan does; ``None`` = the config's ratios everywhere.

    Raises:
        PruningError: If the graph cannot be traced, holds nothing prunable, a layer name
            does not exist, or ``bn`` is asked of a model without batch norm.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PruneConfig,
        example_inputs: torch.Tensor,
        unit_ratios: dict[str, float] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.example_inputs = example_inputs
        self.transforms = split_multihead_attention(model)
        self.attention = attention_layers(model)
        self.num_heads = {m.qkv: m.num_heads for m in self.attention.values()}
        self.initial_heads = dict(self.num_heads)
        self.unit_ratios = unit_ratios
        self.steps_done = 0
        _check_bn(model, config.method)
        self.pruner = self._build(unit_ratios)
        self.names = {m: n for n, m in model.named_modules()}
        if not self.groups():
            raise PruningError(
                f"Torch-Pruning's dependency graph found no prunable channel group in "
                f"{type(model).__name__} (everything is ignored or coupled to the classifier)"
            )

    def _build(self, unit_ratios: dict[str, float] | None) -> tp.pruner.BasePruner:
        cfg = self.config
        ratio_dict, head_dict = self._ratio_dicts(unit_ratios)
        default = 0.0 if unit_ratios is not None else cfg.ratio
        heads = 0.0 if unit_ratios is not None else cfg.heads
        self._check_heads(heads, head_dict)
        try:
            with quiet_tracing():
                return tp.pruner.BasePruner(
                    self.model,
                    self.example_inputs,
                    importance=make_importance(cfg.method),
                    global_pruning=cfg.global_pruning and unit_ratios is None,
                    pruning_ratio=default,
                    pruning_ratio_dict=ratio_dict,
                    iterative_steps=cfg.steps if unit_ratios is None else 1,
                    ignored_layers=self._ignored(),
                    round_to=cfg.round_to,
                    in_channel_groups={},  # fresh dicts: Torch-Pruning mutates its defaults
                    out_channel_groups={},
                    num_heads=self.num_heads,
                    prune_num_heads=bool(self.num_heads),
                    prune_head_dims=False,
                    head_pruning_ratio=heads,
                    head_pruning_ratio_dict=head_dict,
                )
        except PruningError:
            raise
        except Exception as err:
            raise PruningError(
                f"Torch-Pruning's dependency graph cannot handle {type(self.model).__name__}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _ignored(self) -> list[nn.Module]:
        """The classifier, the user's ignored layers, and in transformers the residual width."""
        ignored = [classifier_layer(self.model)[1]]
        ignored += find_modules(self.model, self.config.ignored_layers, "ignored layer")
        # an attention's output projection writes the residual stream: keeping its outputs
        # keeps the embedding width (the whole stream is one group) while heads still go
        ignored += [m.proj for m in self.attention.values()]
        return ignored

    def _ratio_dicts(
        self, unit_ratios: dict[str, float] | None
    ) -> tuple[dict[nn.Module, float], dict[nn.Module, float]]:
        """Per-module width and head ratios for Torch-Pruning."""
        visit = _VISIT_ATTENTION if unit_ratios is not None or self.config.heads > 0 else 0.0
        widths: dict[nn.Module, float] = {m.qkv: visit for m in self.attention.values()}
        heads: dict[nn.Module, float] = {}
        modules = dict(self.model.named_modules())
        for name, ratio in (unit_ratios or {}).items():
            if name in self.attention:
                heads[self.attention[name].qkv] = ratio
                continue
            if name not in modules or not name:
                raise PruningError(unknown_layer_message(name, list(modules)[1:], "group"))
            widths[modules[name]] = ratio
        return widths, heads

    def _check_heads(self, default: float, per_layer: dict[nn.Module, float]) -> None:
        """Refuse ratios that would remove every head of a layer (local ranking rounds up)."""
        for name, module in self.attention.items():
            problem = whole_heads_problem(
                name, module.num_heads, per_layer.get(module.qkv, default)
            )
            if problem is not None:
                raise PruningError(problem)

    def groups(self) -> list[Group]:
        """The prunable groups, as Torch-Pruning ranks them."""
        graph = self.pruner.DG
        found = []
        for group in graph.get_all_groups(
            ignored_layers=self.pruner.ignored_layers,
            root_module_types=self.pruner.root_module_types,
        ):
            root = group[0].dep.target.module
            members = [
                self.names.get(dep.target.module, "?")
                for dep, _ in group
                if graph.is_out_channel_pruning_fn(dep.handler)
                and isinstance(dep.target.module, nn.Module)
            ]
            found.append(self._describe(root, members, graph.get_out_channels(root)))
        return found

    def _describe(self, root: nn.Module, members: list[str], channels: int) -> Group:
        for name, attention in self.attention.items():
            if attention.qkv is root:
                return Group(name, "heads", int(self.num_heads[attention.qkv]), members)
        return Group(self.names.get(root, "?"), "channels", int(channels), members)

    def step(self, calibration: Calibration | None = None) -> None:
        """One pruning step (of ``config.steps``), then shape updates and a test run.

        Args:
            calibration: Images for Taylor importance (``taylor`` without them uses the
                gradients already in ``.grad``).

        Raises:
            PruningError: If the pruned model no longer runs.
        """
        if self.config.method == "taylor":
            if calibration is not None:
                calibration.gradients(self.model)
            elif all(p.grad is None for p in self.model.parameters()):
                raise PruningError("taylor importance needs gradients: pass calibration images")
        self.steps_done += 1
        if not self.pruner.global_pruning:
            self._set_head_ratios()
        try:
            self.pruner.step()
        except PruningError:
            raise
        except Exception as err:
            raise PruningError(
                f"Torch-Pruning failed in pruning step {self.steps_done} of "
                f"{type(self.model).__name__}: {type(err).__name__}: {err}"
            ) from err
        self.model.zero_grad(set_to_none=True)
        sync_attention(self.model, self.num_heads)
        check_runs(self.model, self.example_inputs)

    def _set_head_ratios(self) -> None:
        """Per-layer head ratios for this step, relative to the heads left.

        Torch-Pruning removes ``ceil(ratio * heads left)`` heads per layer and step, which
        compounds over steps; this keeps the total at ``ceil(final ratio * initial heads)``.
        """
        steps = self.pruner.iterative_steps
        for qkv, initial in self.initial_heads.items():
            final = self._head_ratio(qkv)
            target = math.ceil(final * self.steps_done / steps * initial - 1e-9)
            target = min(target, math.ceil(final * initial - 1e-9))
            left = self.num_heads[qkv]
            remove = target - (initial - left)
            ratio = (remove - 0.5) / left if remove > 0 else 0.0
            self.pruner.head_pruning_ratio_dict[qkv] = [ratio] * (steps + 1)

    def _head_ratio(self, qkv: nn.Module) -> float:
        if self.unit_ratios is None:
            return self.config.heads
        for name, attention in self.attention.items():
            if attention.qkv is qkv:
                return self.unit_ratios.get(name, 0.0)
        return 0.0

    def history(self) -> list[list]:
        """Torch-Pruning's pruning history as JSON-ready ``[module, is_out, indices]`` rows."""
        return [
            [str(name), bool(out), [int(i) for i in idxs]]
            for name, out, idxs in self.pruner.pruning_history()
        ]


def _check_bn(model: nn.Module, method: str) -> None:
    if method == "bn" and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise PruningError(
            f"method 'bn' ranks channels by batch-norm scale, but {type(model).__name__} has "
            "no batch-norm layer: use l1, l2 or taylor"
        )


def check_runs(model: nn.Module, example_inputs: torch.Tensor) -> None:
    """Run the pruned model once; raise a :class:`PruningError` naming the cause if it fails."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    except Exception as err:
        raise PruningError(
            f"the pruned {type(model).__name__} no longer runs ({type(err).__name__}: {err}). "
            "Torch-Pruning's dependency graph did not see every use of the pruned channels, "
            "typically a channel count written into forward() or a tensor created there; keep "
            "the layers involved with ignored_layers (--ignore NAME)"
        ) from err
    finally:
        model.train(was_training)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every convolution and linear layer, and heads of attention layers."""
    widths: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = int(module.out_channels)
        elif isinstance(module, nn.Linear):
            widths[name] = int(module.out_features)
    for name, module in attention_layers(model).items():
        widths[f"{name}.heads"] = int(module.num_heads)
    return widths
