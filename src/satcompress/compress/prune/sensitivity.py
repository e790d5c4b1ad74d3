"""Per-layer sensitivity: accuracy on a validation subset as each layer alone is pruned.

For ``magnitude`` every convolution and linear layer is a unit (its weights are zeroed); for
the structured methods every group Torch-Pruning prunes together is one (a convolution with
everything coupled to it, e.g. a whole residual stream; an MLP hidden layer; the heads of an
attention layer). Each unit is pruned alone at each ratio on a copy of the model, and the
accuracy, parameters and MACs are recorded: what a budget search needs to know where to cut.

The result is cached through the one result cache (:class:`satcompress.utils.cache.JsonCache`:
``<run_dir>/cache/<key>.json``), keyed by the model's weights, the data (split fingerprint,
split, subset), the input spec and the settings; a rerun with the same key returns the stored
result without evaluating anything. The latest result is also written to
``<run_dir>/sensitivity.json``.

Superseded by :func:`satcompress.pipeline.sensitivity.layer_sensitivity` (loss increase, KL,
accuracy and predicted bytes for weight bits, channel ratios and sparsities, each applied
through ``apply_plan``; same cache); this accuracy-only analysis stays for
``satcompress analyze sensitivity`` until that command calls
:func:`satcompress.pipeline.sensitivity.run_sensitivity`. :func:`prune_units` and
:func:`prune_unit` list the units and prune one of them (any importance, Taylor included).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from satcompress.compress.prune.common import (
    PruningError,
    accumulate_gradients,
    accuracy,
    clone,
    copy_gradients,
    example_input,
    model_digest,
    subset,
    unknown_layer_message,
)
from satcompress.compress.prune.config import PruneConfig, SensitivityConfig
from satcompress.compress.prune.structured import StructuredPruner
from satcompress.compress.prune.transformers import split_multihead_attention
from satcompress.compress.prune.unstructured import apply_magnitude, prunable_layers
from satcompress.data import SceneDataset
from satcompress.models.stats import count_macs, count_params
from satcompress.preprocess import InputSpec
from satcompress.utils.cache import JsonCache
from satcompress.utils.cache import cache_key as hash_payload
from satcompress.utils.io import atomic_write_json

log = logging.getLogger(__name__)

SENSITIVITY_FILE = "sensitivity.json"
CACHE_DIR = "cache"
CACHE_FORMAT = "satcompress.sensitivity/1"


def sensitivity(
    model: nn.Module,
    dataset: SceneDataset,
    config: SensitivityConfig,
    run_dir: str | Path | None = None,
    *,
    input_spec: InputSpec,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of ``model`` with each prunable unit pruned alone at each ratio (cached).

    Args:
        model: The trained model (not modified).
        dataset: Its dataset (``config.split`` is scored; ``train`` feeds Taylor gradients).
        config: Method, ratios, split, subset size, units.
        run_dir: Folder of ``sensitivity.json`` (the latest result) and of the cache
            (``cache/<key>.json``); None = no cache.
        input_spec: The model's input spec.
        progress: Show a progress bar.

    Returns:
        ``{"key", "baseline_accuracy", "units": [{"name", "kind", "size", "members",
        "results": [{"ratio", "accuracy", "drop", "params", "macs"}]}], "evaluations",
        "cached", ...}``; ``cached`` says whether it came from the cache file.

    Raises:
        PruningError: If a unit named in ``config.layers`` does not exist, or the model
            cannot be pruned.
    """
    key = cache_key(model, dataset, config, input_spec)
    cache = JsonCache(Path(run_dir) / CACHE_DIR) if run_dir is not None else None
    cached = cache.get(key) if cache is not None else None
    if cached is not None and cached.get("format") == CACHE_FORMAT:
        log.info("sensitivity: reusing %s", cache.path(key))
        result = {**cached, "cached": True}
    else:
        started = time.perf_counter()
        result = _analyse(model, dataset, config, input_spec, progress)
        result = {"format": CACHE_FORMAT, "key": key, **result}
        result["seconds"] = round(time.perf_counter() - started, 2)
        if cache is not None:
            cache.put(key, result, {"analysis": "prune.sensitivity"})
        result = {**result, "cached": False}
    if run_dir is not None:
        atomic_write_json(Path(run_dir) / SENSITIVITY_FILE, result)
    return result


def cache_key(
    model: nn.Module, dataset: SceneDataset, config: SensitivityConfig, spec: InputSpec
) -> str:
    """SHA-256 over the model's weights, the data, the input spec and the settings."""
    payload = {
        "model": model_digest(model),
        "architecture": type(model).__name__,
        "data": data_fingerprint(dataset, config.split),
        "input": spec.to_dict(),
        "config": config.to_dict(),
    }
    return hash_payload(payload)


def data_fingerprint(dataset: SceneDataset, split: str) -> dict[str, Any]:
    """What identifies the evaluated data: dataset, split files, split, image size."""
    return {
        "dataset": dataset.name,
        "split_fingerprint": dataset.split_fingerprint,
        "split": split,
        "image_size": list(dataset.image_size),
        "classes": list(dataset.classes),
    }


def _analyse(
    model: nn.Module,
    dataset: SceneDataset,
    config: SensitivityConfig,
    spec: InputSpec,
    progress: bool,
) -> dict[str, Any]:
    images, labels = subset(dataset, config.split, config.max_samples, config.seed)
    work = clone(model).eval()
    split_multihead_attention(work)  # numerically the same; every copy then prunes heads
    example = example_input(spec, dataset.image_size)
    if config.method == "taylor":
        count = config.taylor_batches * config.batch_size
        accumulate_gradients(work, *subset(dataset, "train", count, config.seed), spec)
    baseline = accuracy(work, images, labels, spec, config.batch_size)
    units = _select(prune_units(work, config.method, example), config.layers)
    jobs = [(unit, ratio) for unit in units for ratio in config.ratios]
    for unit, ratio in tqdm(jobs, desc="sensitivity", disable=not progress, leave=False):
        pruned = prune_unit(work, config.method, example, unit["name"], ratio)
        if isinstance(pruned, str):
            unit["results"].append({"ratio": ratio, "error": pruned})
            continue
        acc = accuracy(pruned, images, labels, spec, config.batch_size)
        unit["results"].append(_row(pruned, example, ratio, acc, baseline))
    return {
        "model_sha256": model_digest(model),
        "data": {**data_fingerprint(dataset, config.split), "num_samples": len(labels)},
        "input": spec.to_dict(),
        "config": config.to_dict(),
        "baseline_accuracy": round(baseline, 6),
        "baseline": {"params": count_params(work), "macs": _macs(work, example)},
        "units": units,
        "evaluations": 1 + len(jobs),
    }


def prune_units(model: nn.Module, method: str, example: torch.Tensor) -> list[dict[str, Any]]:
    """The units a pruning ``method`` cuts, each alone: layers or coupled channel groups.

    Args:
        model: The model (not modified; for transformers, split its
            ``nn.MultiheadAttention`` layers first, as :func:`sensitivity` does).
        method: ``magnitude`` (units = every convolution and linear layer) or a structured
            method (units = Torch-Pruning's groups: channels with everything coupled to them,
            and the attention layers' heads).
        example: A float input batch for tracing the graph.

    Returns:
        ``[{"name", "kind", "size", "members", "results": []}]`` in model order; ``kind`` is
        ``weights``, ``channels`` or ``heads``.

    Raises:
        PruningError: If the model cannot be traced or holds no prunable group.
    """
    if method == "magnitude":
        return [
            _unit(name, "weights", int(m.weight.numel()), [name])
            for name, m in prunable_layers(model).items()
        ]
    probe = StructuredPruner(clone(model), PruneConfig(method=method, ratio=0.0), example)
    return [_unit(g.name, g.kind, g.size, g.members) for g in probe.groups()]


def _unit(name: str, kind: str, size: int, members: list[str]) -> dict[str, Any]:
    return {"name": name, "kind": kind, "size": size, "members": members, "results": []}


def _select(units: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    if not names:
        return units
    known = [u["name"] for u in units]
    for name in names:
        if name not in known:
            raise PruningError(unknown_layer_message(name, known, "prunable layer/group"))
    return [u for u in units if u["name"] in names]


def prune_unit(
    model: nn.Module, method: str, example: torch.Tensor, name: str, ratio: float
) -> nn.Module | str:
    """A copy of ``model`` with only unit ``name`` pruned at ``ratio`` (or an error text).

    Args:
        model: The model (not modified); its ``.grad`` tensors feed ``taylor``.
        method: ``magnitude`` (zero that layer's smallest weights) or a structured method
            (remove that fraction of the group's channels or heads).
        example: A float input batch for tracing the graph.
        name: A unit name from :func:`prune_units`.
        ratio: Fraction of weights (magnitude) or channels/heads removed.

    Returns:
        The pruned copy, or the message of the :class:`PruningError` that prevented it.
    """
    copy = clone(model)
    if method == "magnitude":
        apply_magnitude({name: prunable_layers(copy)[name]}, ratio)
        return copy
    copy_gradients(model, copy)
    try:
        pruner = StructuredPruner(
            copy, PruneConfig(method=method, ratio=0.0), example, {name: ratio}
        )
        pruner.step()
    except PruningError as err:
        return str(err)
    return copy


def _row(
    model: nn.Module, example: torch.Tensor, ratio: float, acc: float, baseline: float
) -> dict[str, Any]:
    return {
        "ratio": ratio,
        "accuracy": round(acc, 6),
        "drop": round(baseline - acc, 6),
        "params": count_params(model),
        "macs": _macs(model, example),
    }


def _macs(model: nn.Module, example: torch.Tensor) -> int:
    return count_macs(model, tuple(example.shape[-2:]))


def sensitivity_table(result: dict[str, Any]) -> str:
    """A text table: one row per unit, accuracy (and drop) at each ratio."""
    ratios = result["config"]["ratios"]
    width = max([len(u["name"]) for u in result["units"]] + [5]) + 2
    head = "unit".ljust(width) + "kind".ljust(10) + "size".rjust(8)
    head += "".join(f"{f'@{r:g}':>16s}" for r in ratios)
    lines = [f"baseline accuracy {result['baseline_accuracy'] * 100:.2f}%", head]
    for unit in result["units"]:
        cells = []
        for row in unit["results"]:
            if "error" in row:
                cells.append(f"{'error':>16s}")
            else:
                cells.append(f"{row['accuracy'] * 100:7.2f} ({-row['drop'] * 100:+5.1f})")
        lines.append(
            unit["name"].ljust(width) + unit["kind"].ljust(10) + f"{unit['size']:8d}"
            + "".join(f"{c:>16s}" for c in cells)
        )  # fmt: skip
    return "\n".join(lines)
