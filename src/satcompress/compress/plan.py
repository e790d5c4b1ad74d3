"""A compression plan (bits, channel ratio, sparsity per layer or group) and ``apply_plan``.

A :class:`CompressionPlan` says, for each quantizable layer and each prunable group of a
model, what to do with it (a :class:`LayerPlan`); names it does not mention get its
``default``. :func:`apply_plan` does all of it in one call, on a copy:

1. structured pruning: each group loses ``channel_ratio`` of its output channels (attention
   groups lose that fraction of their heads) with Torch-Pruning, through
   :class:`~satcompress.compress.prune.structured.StructuredPruner` (L1 group importance);
2. unstructured magnitude pruning: each layer's smallest weights, a fraction ``sparsity``
   of them, become exact zeros (``torch.nn.utils.prune``, made permanent);
3. quantization: if any layer has ``bits``, Brevitas QAT quantizers with those per-layer
   weight bits (:func:`~satcompress.compress.quantize.qat.prepare_qat` with a bits map, 8-bit
   activations), calibrated on the given batches.

Naming rule (one namespace for layers and groups): a *layer* is a ``nn.Conv2d``/``nn.Linear``
by its module name (``features.3.conv.1.0``); a *group* (the layers Torch-Pruning's
dependency graph couples through their output channels: a convolution, its batch norm, the
next layers' inputs, every member of a residual sum) is named by the module name of its root
layer, the convolution or linear whose output channels it prunes; so in a CNN a layer's entry
carries its bits, sparsity and, when it roots a group, the group's channel ratio. An attention
head group is named by its attention module (``blocks.0.attn``: ``channel_ratio`` = fraction
of heads removed, rounded up), as :class:`StructuredPruner` names it. :func:`plan_units`
lists every name a plan may use; ``bits``/``sparsity`` are refused on names that are only
groups, ``channel_ratio`` on names that are only layers (the classifier, layers inside another
layer's group).

The returned model carries what later stages need: ``compression_plan`` (the plan),
``layer_bits`` (weight bits per layer, None = float, as ``prepare_qat`` returns them) and
``pruning_history`` (Torch-Pruning's history rows; with
``satcompress.models.pruned.architecture`` the pruned-model save/load rebuilds it).

This module sits in ``compress``: it imports nothing from ``satcompress.artifact`` or above.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from satcompress.config import ConfigError

PLAN_TYPE = "CompressionPlan"
PLAN_VERSION = 1
FLOAT_BITS = 32  # in a bits map: keep the layer in floating point (as QATConfig.bits_map)

__all__ = [
    "PLAN_TYPE",
    "PLAN_VERSION",
    "CompressionPlan",
    "GroupUnit",
    "LayerPlan",
    "LayerUnit",
    "PlanUnits",
    "apply_plan",
    "kept_channels",
    "layer_unit",
    "plan_units",
]


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What happens to one layer (and to the group it roots, if any).

    Attributes:
        bits: Weight bits 1..8, or None to keep the layer in floating point.
        channel_ratio: Fraction in [0, 1) of the group's output channels removed (heads, for
            an attention group); only meaningful for group names.
        sparsity: Fraction in [0, 1) of the layer's weights zeroed by magnitude.
    """

    bits: int | None = None
    channel_ratio: float = 0.0
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        bits = self.bits
        if bits is not None and (isinstance(bits, bool) or bits not in range(1, 9)):
            raise ConfigError(f"bits must be 1..8 or None (float), got {bits!r}")
        for name in ("channel_ratio", "sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
            object.__setattr__(self, name, float(value))
        if bits is not None:
            object.__setattr__(self, "bits", int(bits))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LayerPlan:
        """Inverse of :meth:`to_dict`; unknown keys are refused by name.

        Raises:
            ConfigError: For unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown LayerPlan field(s) {', '.join(unknown)}; fields: {', '.join(names)}"
            )
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class CompressionPlan:
    """Per-layer/per-group :class:`LayerPlan` entries plus a default for the rest.

    Attributes:
        layers: ``{layer or group name: LayerPlan}`` (see the module docstring's naming rule).
        default: The plan of every layer and group not named in ``layers``.
    """

    layers: Mapping[str, LayerPlan] = dataclasses.field(default_factory=dict)
    default: LayerPlan = dataclasses.field(default_factory=LayerPlan)

    def __post_init__(self) -> None:
        layers = {}
        for name, value in dict(self.layers).items():
            layers[str(name)] = value if isinstance(value, LayerPlan) else _layer_plan(value)
        object.__setattr__(self, "layers", layers)
        if not isinstance(self.default, LayerPlan):
            object.__setattr__(self, "default", _layer_plan(self.default))

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.layers.items())), self.default))

    def for_unit(self, name: str) -> LayerPlan:
        """The plan of layer or group ``name`` (its entry, else the default)."""
        return self.layers.get(name, self.default)

    def replace(self, **layers: LayerPlan) -> CompressionPlan:
        """A copy with some entries added or replaced (keyword = unit name)."""
        return CompressionPlan({**self.layers, **layers}, self.default)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML form with ``type`` and ``version`` (what records store)."""
        return {
            "type": PLAN_TYPE,
            "version": PLAN_VERSION,
            "default": self.default.to_dict(),
            "layers": {name: plan.to_dict() for name, plan in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CompressionPlan:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: If ``type``/``version`` are not this class's, or a field is invalid.
        """
        if values.get("type") != PLAN_TYPE or values.get("version") != PLAN_VERSION:
            raise ConfigError(
                f"not a {PLAN_TYPE} version {PLAN_VERSION}: type={values.get('type')!r}, "
                f"version={values.get('version')!r}"
            )
        unknown = sorted(set(values) - {"type", "version", "default", "layers"})
        if unknown:
            raise ConfigError(f"unknown {PLAN_TYPE} key(s): {', '.join(unknown)}")
        layers = {str(k): _layer_plan(v) for k, v in dict(values.get("layers") or {}).items()}
        return cls(layers, _layer_plan(values.get("default") or {}))

    def to_json(self) -> str:
        """The :meth:`to_dict` form as JSON text."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        """The :meth:`to_dict` form as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> CompressionPlan:
        """A plan from YAML text or a YAML/JSON file.

        Raises:
            ConfigError: If the content is not a plan.
        """
        path = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        if path is not None and "\n" not in str(text_or_path) and path.is_file():
            text = path.read_text()
        else:
            text = str(text_or_path)
        values = yaml.safe_load(text)
        if not isinstance(values, dict):
            raise ConfigError("a compression plan must be a mapping")
        return cls.from_dict(values)

    @classmethod
    def from_bits_map(
        cls, bits_map: Mapping[str, int | None], default: LayerPlan | None = None
    ) -> CompressionPlan:
        """A plan from a QAT ``bits_map`` (``{layer: bits}``, 32 or None = float).

        Args:
            bits_map: As ``QATConfig.bits_map`` or :func:`~satcompress.compress.quantize.
                config.load_bits_map` give it.
            default: Plan of the layers the map does not name (default: float, untouched).
        """
        layers = {
            str(name): LayerPlan(bits=None if bits in (None, FLOAT_BITS) else int(bits))
            for name, bits in bits_map.items()
        }
        return cls(layers, default or LayerPlan())

    def bits_map(self, layers: Iterable[str]) -> dict[str, int]:
        """The QAT bits map of ``layers`` (every one named; 32 = float)."""
        return {name: self.for_unit(name).bits or FLOAT_BITS for name in layers}


def _layer_plan(value: Any) -> LayerPlan:
    if isinstance(value, LayerPlan):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"a layer plan must be a mapping of bits/channel_ratio/sparsity: {value!r}"
        )
    return LayerPlan.from_dict(value)


# --- what a plan may name ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerUnit:
    """A quantizable (and magnitude-prunable) layer.

    Attributes:
        name: Module name.
        out_channels: Output channels (features).
        in_channels: Input channels (features).
        groups: Convolution groups (1 for linear layers).
        count: Number of weights.
        out_group: The group that prunes its outputs (None: never pruned).
        in_group: The group that prunes its inputs (None: never pruned).
    """

    name: str
    out_channels: int
    in_channels: int
    groups: int
    count: int
    out_group: str | None
    in_group: str | None

    @property
    def depthwise(self) -> bool:
        """A depthwise convolution (one input channel per group)."""
        return self.groups > 1 and self.groups == self.in_channels


@dataclasses.dataclass(frozen=True)
class GroupUnit:
    """A prunable group of Torch-Pruning's dependency graph.

    Attributes:
        name: Root layer's module name (the attention module's for heads).
        kind: ``channels`` or ``heads``.
        size: Channels (or heads) it holds.
        out_members: Layers whose outputs shrink with it.
        in_members: Layers whose inputs shrink with it.
    """

    name: str
    kind: str
    size: int
    out_members: tuple[str, ...]
    in_members: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PlanUnits:
    """Every name a plan may use for one model.

    Attributes:
        layers: Quantizable layers (``nn.Conv2d``/``nn.Linear``) by name, in model order.
        groups: Prunable groups by name.
    """

    layers: dict[str, LayerUnit]
    groups: dict[str, GroupUnit]

    def names(self) -> list[str]:
        """All valid names: layers, then groups that are not layers."""
        return list(self.layers) + [g for g in self.groups if g not in self.layers]

    def check(self, plan: CompressionPlan) -> None:
        """Refuse a plan naming missing units or setting a field its unit cannot take.

        Raises:
            ConfigError: Naming the problem and listing the valid names.
        """
        problems = []
        for name, entry in plan.layers.items():
            is_layer, is_group = name in self.layers, name in self.groups
            if not is_layer and not is_group:
                problems.append(f"{name!r} is neither a quantizable layer nor a prunable group")
            elif not is_layer and (entry.bits is not None or entry.sparsity):
                problems.append(f"{name!r} is a group, not a layer: it takes only channel_ratio")
            elif not is_group and entry.channel_ratio:
                problems.append(
                    f"{name!r} roots no prunable group (e.g. the classifier, or a layer "
                    "inside another layer's group): channel_ratio must be 0"
                )
        if problems:
            raise ConfigError(
                "invalid compression plan: " + "; ".join(problems) + ". Layers: "
                + ", ".join(self.layers) + ". Groups: " + ", ".join(self.groups)
            )  # fmt: skip

    def kept(self, plan: CompressionPlan) -> dict[str, tuple[int, int]]:
        """``{layer: (output channels, input channels)}`` after the plan's structured pruning."""
        fraction = {
            name: kept_channels(g, plan.for_unit(name).channel_ratio) / g.size
            for name, g in self.groups.items()
        }
        out = {}
        for name, layer in self.layers.items():
            f_out = fraction.get(layer.out_group, 1.0) if layer.out_group else 1.0
            f_in = fraction.get(layer.in_group, 1.0) if layer.in_group else 1.0
            kept_out = round(layer.out_channels * f_out)
            # a depthwise convolution's inputs are its outputs (one group per channel)
            kept_in = kept_out if layer.depthwise else round(layer.in_channels * f_in)
            out[name] = (kept_out, kept_in)
        return out


def kept_channels(group: GroupUnit, ratio: float) -> int:
    """Channels (heads) a group keeps at ``ratio``, as Torch-Pruning rounds them.

    Channels: ``int(size * (1 - ratio))`` (Torch-Pruning's local pruning); heads:
    ``size - ceil(ratio * size)`` (:class:`StructuredPruner`'s head rule).
    """
    if ratio <= 0:
        return group.size
    if group.kind == "heads":
        return group.size - math.ceil(ratio * group.size - 1e-9)
    return int(group.size * (1 - ratio))


def layer_unit(
    name: str, layer: nn.Module, out_group: str | None = None, in_group: str | None = None
) -> LayerUnit:
    """The :class:`LayerUnit` of a ``nn.Conv2d`` or ``nn.Linear`` layer."""
    conv = isinstance(layer, nn.Conv2d)
    return LayerUnit(
        name,
        int(layer.out_channels if conv else layer.out_features),
        int(layer.in_channels if conv else layer.in_features),
        int(layer.groups if conv else 1),
        int(layer.weight.numel()),
        out_group,
        in_group,
    )


def plan_units(model: nn.Module, example_inputs: torch.Tensor) -> PlanUnits:
    """The layers and groups a plan may name for ``model`` (see the naming rule above).

    Args:
        model: The model (not modified: a copy is traced).
        example_inputs: A float batch at the model's resolution.

    Raises:
        PruningError: If Torch-Pruning cannot trace the model.
    """
    from satcompress.compress.prune.config import PruneConfig
    from satcompress.compress.prune.structured import StructuredPruner
    from satcompress.compress.quantize.qat import quantizable_layers

    work = copy.deepcopy(model).eval()
    pruner = StructuredPruner(work, PruneConfig(method="l1", ratio=0.0), example_inputs, {})
    names = {m: n for n, m in work.named_modules()}
    graph = pruner.pruner.DG
    layers = quantizable_layers(work)
    out_group: dict[str, str] = {}
    in_group: dict[str, str] = {}
    groups: dict[str, GroupUnit] = {}
    described = {g.name: g for g in pruner.groups()}
    for group in graph.get_all_groups(
        ignored_layers=pruner.pruner.ignored_layers,
        root_module_types=pruner.pruner.root_module_types,
    ):
        root = group[0].dep.target.module
        name = _group_name(pruner, names, root)
        outs, ins = [], []
        for dep, _ in group:
            member = names.get(dep.target.module)
            if member not in layers:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                outs.append(member)
            elif graph.is_in_channel_pruning_fn(dep.handler):
                ins.append(member)
        kind = described[name].kind if name in described else "channels"
        size = described[name].size if name in described else graph.get_out_channels(root)
        groups[name] = GroupUnit(name, kind, int(size), tuple(outs), tuple(ins))
        for member in outs:
            out_group.setdefault(member, name)
        for member in ins:
            in_group.setdefault(member, name)
    units = {
        name: layer_unit(name, layer, out_group.get(name), in_group.get(name))
        for name, layer in layers.items()
    }
    return PlanUnits(units, groups)


def _group_name(pruner: Any, names: dict[nn.Module, str], root: nn.Module) -> str:
    for name, attention in pruner.attention.items():
        if attention.qkv is root:
            return name
    return names.get(root, "?")


# --- applying a plan --------------------------------------------------------------------------


def apply_plan(
    model: nn.Module,
    plan: CompressionPlan,
    example_inputs: torch.Tensor,
    calibration_batches: Iterable[torch.Tensor] | None = None,
) -> nn.Module:
    """Prune (structured, then magnitude) and quantize a copy of ``model`` as ``plan`` says.

    Args:
        model: The float model (not modified).
        plan: What to do per layer and group.
        example_inputs: A float batch at the model's resolution (graph tracing, layer order).
        calibration_batches: Preprocessed float batches for the activation ranges of the
            quantizers (default: ``example_inputs``).

    Returns:
        The compressed copy (eval mode) with ``compression_plan``, ``layer_bits`` and
        ``pruning_history`` attributes. Layers with a sparsity keep their zeros through any
        fine-tune (their gradient is masked there: ``keep_zeros``). With any ``bits`` set it
        holds Brevitas layers (8-bit activation quantizers, calibrated, not fine-tuned).

    Raises:
        ConfigError: If the plan names units the model does not have (valid names listed).
        PruningError: If Torch-Pruning cannot prune the model as asked.
    """
    from satcompress.compress.prune.config import PruneConfig
    from satcompress.compress.prune.structured import StructuredPruner
    from satcompress.compress.prune.unstructured import (
        apply_magnitude,
        keep_zeros,
        make_permanent,
    )

    units = plan_units(model, example_inputs)
    units.check(plan)
    work = copy.deepcopy(model).eval()
    ratios = {
        name: plan.for_unit(name).channel_ratio
        for name in units.groups
        if plan.for_unit(name).channel_ratio > 0
    }
    history: list[list] = []
    if ratios:
        config = PruneConfig(method="l1", ratio=0.0)
        pruner = StructuredPruner(work, config, example_inputs, ratios)
        pruner.step()
        history = pruner.history()
    modules = dict(work.named_modules())
    for name in units.layers:
        sparsity = plan.for_unit(name).sparsity
        if sparsity > 0:
            apply_magnitude({name: modules[name]}, sparsity)
    make_permanent(work)
    layer_bits: dict[str, int | None] = {name: plan.for_unit(name).bits for name in units.layers}
    if any(bits is not None for bits in layer_bits.values()):
        from satcompress.compress.quantize.config import QATConfig
        from satcompress.compress.quantize.qat import calibrate, prepare_qat

        config = QATConfig(bits=8, bits_map=plan.bits_map(units.layers), epochs=0)
        work, layer_bits = prepare_qat(work, config, example_inputs)
        batches = list(calibration_batches) if calibration_batches is not None else []
        calibrate(work, batches or [example_inputs])
    for name in units.layers:  # a fine-tune must not train the pruned weights back
        if plan.for_unit(name).sparsity > 0:
            keep_zeros(work.get_submodule(name))
    work.eval()
    work.compression_plan = plan
    work.layer_bits = dict(layer_bits)
    work.pruning_history = history
    return work
