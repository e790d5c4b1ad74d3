"""Step 1 of BAIC: what every option costs, per layer and per group, in loss, bytes and time.

Three tables, measured once per model and cached:

* **accuracy cost**: :func:`satcompress.pipeline.sensitivity.layer_sensitivity` (the loss
  increase of each option applied to one unit alone, on a seeded subset of training images;
  cached by weights, data and settings);
* **bytes**: :class:`satcompress.artifact.encode.BytePredictor` tables of the plans "every
  layer at ``b`` bits" (one per bit-width, and float; and one per bit-width and sparsity when
  sparsities are searched): a layer's row is what it stores at ``b`` bits, the rest of the
  file (header, manifest, graph, tensors of no layer) is the base;
* **latency** (only with a latency budget): the float and the all-8-bit artifacts timed at
  batch 1 in ONNX Runtime, spread over the layers by their multiply-accumulates. Weights
  below 8 bits run through the same int8 kernels, so every bit-width costs the 8-bit time;
  pruning scales a layer's time by the channels kept.

With sparsities, a layer also gets the options ``(b, s)``: ``b`` bits with a fraction ``s``
of its smallest weights zeroed. Their accuracy cost is the sum of the two measured costs
(the additive model again; the candidates' measured accuracy corrects it), their bytes come
from the predictor (the artifact stores a sparse tensor as a bit mask plus the nonzero codes),
and only the pairs that store fewer bytes than ``b`` bits dense are kept: the others cost
accuracy and save nothing. Sparse weights run through the same dense kernels (no speed-up).

A layer's bytes and time under a channel ratio are scaled by the fraction of its *output*
channels kept; the inputs its producer's group removes are not counted (a conservative
model: the real file is smaller). :func:`exact_bytes` gives the file's size for a whole plan
(within 1%); the search checks every plan with it before any fine-tune.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satcompress.artifact.encode import BytePredictor, encode
from satcompress.compress.plan import CompressionPlan, LayerPlan, PlanUnits, kept_channels
from satcompress.data import SceneDataset
from satcompress.evaluate import LatencyConfig
from satcompress.evaluate.profile import measure_latency
from satcompress.pipeline.sensitivity import LayerSensitivityConfig, layer_sensitivity
from satcompress.preprocess import InputSpec
from satcompress.search.allocate import (
    AllocationProblem,
    GroupOptions,
    LayerOptions,
    Option,
    option_parts,
)

log = logging.getLogger(__name__)

__all__ = ["METRICS", "MeasuredModel", "exact_bytes", "layer_macs", "measure", "plan_of"]

FLOAT_LABEL = "float"
#: Accuracy cost metrics of the sensitivity table the allocator can minimise.
METRICS = ("loss_increase", "kl")
LATENCY = LatencyConfig(batch_sizes=(1,), warmup=5, runs=30)


@dataclasses.dataclass
class MeasuredModel:
    """The tables of one model that the allocator plans with.

    Attributes:
        problems: The allocation problem (bytes, costs, latencies per option) per accuracy
            cost metric (``loss_increase``, ``kl``).
        predictor: The byte predictor of the model (exact sizes of whole plans).
        units: The model's plan units (layer and group names).
        fp32_bytes: Predicted bytes of the unchanged model's (float) artifact.
        int8_bytes: Predicted bytes of the all-8-bit artifact.
        latency_ms: Measured batch-1 latency of the float and 8-bit artifacts (if timed).
        seconds: Time spent measuring, per table.
        sensitivity: The sensitivity table's key, cache state and settings.
    """

    problems: dict[str, AllocationProblem]
    predictor: BytePredictor
    units: PlanUnits
    fp32_bytes: int
    int8_bytes: int
    latency_ms: dict[str, float]
    seconds: dict[str, float]
    sensitivity: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """JSON form of what was measured (the problem's size, not its tables)."""
        return {
            "layers": len(self.problems[METRICS[0]].layers),
            "groups": len(self.problems[METRICS[0]].groups),
            "fp32_bytes": self.fp32_bytes,
            "int8_bytes": self.int8_bytes,
            "latency_ms": self.latency_ms,
            "seconds": self.seconds,
            "sensitivity": self.sensitivity,
        }


def measure(
    model: nn.Module,
    spec: InputSpec,
    dataset: SceneDataset,
    *,
    bits: tuple[int, ...],
    channel_ratios: tuple[float, ...],
    sparsities: tuple[float, ...] = (),
    images: int = 256,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    latency: bool = False,
    info: dict[str, Any] | None = None,
    progress: bool = False,
) -> MeasuredModel:
    """Measure (or read from the cache) the tables BAIC allocates with.

    Args:
        model: The float model to compress (not modified).
        spec: Its input spec.
        dataset: Its dataset (training images for the accuracy costs).
        bits: Weight bit-widths a layer may get.
        channel_ratios: Ratios a group may be pruned by.
        sparsities: Unstructured sparsities a layer may get, with any of its bit-widths.
        images: Size of the sensitivity subset.
        seed: Its seed.
        cache_dir: Sensitivity cache folder (None: no cache).
        latency: Also build the latency table (times two artifacts).
        info: The manifest description the artifacts will carry (its bytes count).
        progress: Show a progress bar.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    config = LayerSensitivityConfig(
        bits=bits,
        channel_ratios=channel_ratios,
        sparsities=tuple(sparsities),
        num_images=images,
        calibration_images=min(32, images),
        seed=seed,
        predict_bytes=False,
    )
    table = layer_sensitivity(model, dataset, spec, config, cache_dir, progress=progress)
    # a cached table's time is the one of the run that computed it (the search's real cost)
    seconds["sensitivity"] = round(table.seconds, 3)
    seconds["sensitivity_wall"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    image_size = tuple(dataset.image_size)
    predictor = BytePredictor(model, spec, image_size, info=info)
    options: list[Option] = [None, *bits]
    options += [(b, float(s)) for b in options for s in sparsities]
    rows, totals, bases = {}, {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for option in options:
            b, s = option_parts(option)
            plan = CompressionPlan(default=LayerPlan(bits=b, sparsity=s))
            byte_table = predictor.table(plan)
            rows[option] = {row["layer"]: int(row["total"]) for row in byte_table.rows}
            totals[option] = int(byte_table.total)
            if not s:
                bases.append(byte_table.total - sum(rows[option].values()))
    seconds["bytes"] = round(time.perf_counter() - started, 3)
    units = predictor.units
    latency_ms: dict[str, float] = {}
    layer_latency = None
    if latency:
        started = time.perf_counter()
        latency_ms = _time_artifacts(model, spec, image_size)
        layer_latency = _latency_table(model, spec, image_size, units, latency_ms, options)
        seconds["latency"] = round(time.perf_counter() - started, 3)
    problems = {
        metric: _problem(
            table, rows, units, options, max(bases), channel_ratios, layer_latency, metric
        )
        for metric in METRICS
    }
    return MeasuredModel(
        problems,
        predictor,
        units,
        totals[None],
        totals.get(8, min(totals.values())),
        latency_ms,
        seconds,
        {
            "key": table.key,
            "cached": table.cached,
            "config": config.to_dict(),
            "baseline": table.baseline,
        },
    )


def _problem(
    table: Any,
    rows: dict[Option, dict[str, int]],
    units: PlanUnits,
    options: list[Option],
    base_bytes: int,
    channel_ratios: tuple[float, ...],
    layer_latency: dict[str, dict[int | None, float]] | None,
    metric: str,
) -> AllocationProblem:
    layers = {}
    for name, unit in units.layers.items():
        costs, sizes, times = {}, {}, {}
        for option in options:
            b, s = option_parts(option)
            cost = _option_cost(table, name, b, s, metric)
            dense = rows[b][name]
            if cost is None or (s and rows[option][name] >= dense):
                continue  # not measured, or sparse storage saves nothing at these bits
            costs[option] = cost
            sizes[option] = rows[option][name]
            if layer_latency is not None:
                times[option] = layer_latency[name][b]
        group = unit.out_group if unit.out_group in units.groups else None
        layers[name] = LayerOptions(bytes=sizes, cost=costs, latency_ms=times or None, group=group)
    groups = {}
    for name, group in units.groups.items():
        costs, kept = {0.0: 0.0}, {0.0: 1.0}
        for ratio in channel_ratios:
            cell = table.cell(name, f"c{ratio:g}")
            if cell is None or "error" in cell or cell.get(metric) is None:
                continue
            left = kept_channels(group, ratio)
            if left < 1 or left == group.size:
                continue
            costs[ratio] = float(cell[metric])
            kept[ratio] = left / group.size
        groups[name] = GroupOptions(cost=costs, kept=kept)
    used = {layer.group for layer in layers.values() if layer.group is not None}
    groups = {name: g for name, g in groups.items() if name in used}
    return AllocationProblem(layers=layers, groups=groups, base_bytes=float(base_bytes))


def _option_cost(table: Any, layer: str, bits: int | None, sparsity: float, metric: str):
    """The measured cost of ``bits`` plus that of ``sparsity`` on ``layer`` (None: missing)."""
    total = 0.0
    labels = [] if bits is None else [f"w{bits}"]
    labels += [f"s{sparsity:g}"] if sparsity else []
    for label in labels or [FLOAT_LABEL]:
        cell = table.cell(layer, label)
        if cell is None or "error" in cell or cell.get(metric) is None:
            return None
        total += 0.0 if label == FLOAT_LABEL else float(cell[metric])
    return total


def plan_of(bits: dict[str, Option], ratios: dict[str, float]) -> CompressionPlan:
    """The :class:`CompressionPlan` of an allocation: an option per layer, a ratio per group.

    Layers and groups share one namespace (a group is named after its root layer), so a name
    that is both gets one entry with its bits, its sparsity and its group's ratio.
    """
    entries: dict[str, dict[str, Any]] = {}
    for name, option in bits.items():
        b, sparsity = option_parts(option)
        entries.setdefault(name, {})["bits"] = b
        if sparsity:
            entries[name]["sparsity"] = float(sparsity)
    for name, ratio in ratios.items():
        if ratio > 0:
            entries.setdefault(name, {})["channel_ratio"] = float(ratio)
    layers = {name: LayerPlan(**values) for name, values in entries.items()}
    return CompressionPlan(layers)


def exact_bytes(predictor: BytePredictor, plan: CompressionPlan) -> int:
    """The predicted size of the artifact of ``plan`` (the whole file, within 1%)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return int(predictor.predict(plan))


# --- latency ----------------------------------------------------------------------------------


def _time_artifacts(model: nn.Module, spec: InputSpec, image_size: tuple) -> dict[str, float]:
    """Batch-1 latency (ms) of the float and of the all-8-bit artifact in ONNX Runtime."""
    from satcompress.artifact.format import load_artifact
    from satcompress.compress.plan import apply_plan

    size = spec.size or image_size
    example = torch.zeros(2, 3, *size)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for label, bits in (("float", None), ("int8", 8)):
            work = apply_plan(model, CompressionPlan(default=LayerPlan(bits=bits)), example)
            path = encode(work, spec, image_size).write(Path(tmp) / f"{label}.satc")
            onnx_path = load_artifact(path).save_onnx(Path(tmp) / f"{label}.onnx")
            timing = measure_latency(onnx_path, image_size, LATENCY)
            out[label] = float(timing["bs1"]["median_ms"])
    return out


def layer_macs(model: nn.Module, example: torch.Tensor, names: list[str]) -> dict[str, int]:
    """Multiply-accumulates of each named Conv2d/Linear layer for one image."""
    macs: dict[str, int] = {}
    hooks = []
    for name in names:
        layer = model.get_submodule(name)

        def hook(module: nn.Module, _: Any, output: torch.Tensor, name: str = name) -> None:
            per_output = module.weight[0].numel()  # in/groups x kernel
            macs[name] = int(output[0].numel() * per_output)

        hooks.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for handle in hooks:
            handle.remove()
    return macs


def _latency_table(
    model: nn.Module,
    spec: InputSpec,
    image_size: tuple,
    units: PlanUnits,
    measured: dict[str, float],
    options: list[Option],
) -> dict[str, dict[int | None, float]]:
    """Per layer and bit-width: its share (by MACs) of the measured whole-model latency."""
    size = spec.size or image_size
    bits = {option_parts(option)[0] for option in options}
    macs = layer_macs(model, torch.zeros(1, 3, *size), list(units.layers))
    total = max(1, sum(macs.values()))
    per_mac = {None: measured["float"] / total, "int": measured["int8"] / total}
    return {
        name: {b: macs.get(name, 0) * per_mac[None if b is None else "int"] for b in bits}
        for name in units.layers
    }
