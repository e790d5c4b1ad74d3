"""ViT layer importance: the accuracy drop when each block is removed or loses heads.

For every transformer block of a timm ViT or the CLIP image tower, two copies of the model are
scored on a validation subset: one with the block replaced by the identity (the residual
stream passes through), one with a fraction of that block's attention heads removed by
Torch-Pruning. Blocks whose removal costs little are candidates for depth pruning; the table
and plot show where a ViT keeps what it has learned.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from satcompress.compress.prune.common import accuracy, clone, example_input, subset
from satcompress.compress.prune.config import PruneConfig, VitLayersConfig
from satcompress.compress.prune.structured import Calibration, StructuredPruner
from satcompress.compress.prune.transformers import (
    SkipBlock,
    split_multihead_attention,
    transformer_blocks,
)
from satcompress.data import SceneDataset
from satcompress.preprocess import InputSpec
from satcompress.utils.io import atomic_write_bytes, atomic_write_json
from satcompress.utils.lock import holds_run_lock

log = logging.getLogger(__name__)

RESULT_FILE = "vit_layers.json"
TABLE_FILE = "vit_layers.txt"
PLOT_FILE = "vit_layers.png"


@holds_run_lock
def vit_layer_importance(
    model: nn.Module,
    dataset: SceneDataset,
    config: VitLayersConfig | None = None,
    run_dir: str | Path | None = None,
    *,
    input_spec: InputSpec,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the model with each block removed, and with each block's heads pruned.

    Args:
        model: A ViT (timm ``blocks`` or open_clip ``resblocks``); not modified.
        dataset: Its dataset (``config.split`` is scored).
        config: Head ratio, importance, subset.
        run_dir: Where ``vit_layers.json``, ``.txt`` (table) and ``.png`` (plot) go; None =
            nowhere.
        input_spec: The model's input spec.
        progress: Show a progress bar.

    Returns:
        ``{"baseline_accuracy", "blocks": [{"block", "name", "removed_accuracy",
        "removed_drop", "heads", "heads_left", "heads_accuracy", "heads_drop"}], ...}``.

    Raises:
        PruningError: If the model has no transformer blocks.
    """
    config = config or VitLayersConfig()
    work = clone(model).eval()
    split_multihead_attention(work)
    blocks = transformer_blocks(work)
    images, labels = subset(dataset, config.split, config.max_samples, config.seed)
    example = example_input(input_spec, dataset.image_size)
    calibration = _calibration(dataset, config, input_spec)
    baseline = accuracy(work, images, labels, input_spec, config.batch_size)
    rows = []
    for index, (name, _, attention) in enumerate(
        tqdm(blocks, desc="vit layers", disable=not progress, leave=False)
    ):
        removed = accuracy(_without(work, name), images, labels, input_spec, config.batch_size)
        pruned, heads, left = _heads_pruned(work, config, example, attention, calibration)
        acc = accuracy(pruned, images, labels, input_spec, config.batch_size)
        rows.append(_row(index, name, baseline, removed, heads, left, acc))
    result = {
        "baseline_accuracy": round(baseline, 6),
        "num_samples": len(labels),
        "config": config.to_dict(),
        "blocks": rows,
    }
    if run_dir is not None:
        save_outputs(result, Path(run_dir))
    return result


def _calibration(
    dataset: SceneDataset, config: VitLayersConfig, spec: InputSpec
) -> Calibration | None:
    if config.method != "taylor":
        return None
    images, labels = subset(dataset, "train", 2 * config.batch_size, config.seed)
    return Calibration(images, labels, spec, config.batch_size)


def _without(model: nn.Module, block: str) -> nn.Module:
    """A copy of ``model`` whose block ``block`` passes its input through."""
    copy = clone(model)
    parent, _, child = block.rpartition(".")
    setattr(copy.get_submodule(parent), child, SkipBlock())
    return copy


def _heads_pruned(
    model: nn.Module,
    config: VitLayersConfig,
    example: torch.Tensor,
    attention: str,
    calibration: Calibration | None,
) -> tuple[nn.Module, int, int]:
    """A copy with ``head_ratio`` of the heads of ``attention`` removed; heads before/after."""
    copy = clone(model)
    layer = copy.get_submodule(attention)
    heads = int(layer.num_heads)
    pruner = StructuredPruner(
        copy, PruneConfig(method=config.method, ratio=0.0), example, {attention: config.head_ratio}
    )
    pruner.step(calibration)
    return copy, heads, int(copy.get_submodule(attention).num_heads)


def _row(
    index: int, name: str, baseline: float, removed: float, heads: int, left: int, acc: float
) -> dict[str, Any]:
    return {
        "block": index,
        "name": name,
        "removed_accuracy": round(removed, 6),
        "removed_drop": round(baseline - removed, 6),
        "heads": heads,
        "heads_left": left,
        "heads_accuracy": round(acc, 6),
        "heads_drop": round(baseline - acc, 6),
    }


def vit_layers_table(result: dict[str, Any]) -> str:
    """A text table: per block, accuracy (and drop) when removed and when heads are pruned."""
    lines = [
        f"baseline accuracy {result['baseline_accuracy'] * 100:.2f}% "
        f"({result['num_samples']} images)",
        f"{'block':<8s}{'removed':>18s}{'heads':>10s}{'heads pruned':>18s}",
    ]
    for row in result["blocks"]:
        lines.append(
            f"{row['block']:<8d}"
            f"{row['removed_accuracy'] * 100:9.2f} ({-row['removed_drop'] * 100:+5.1f})"
            f"{row['heads']:>6d}->{row['heads_left']:<2d}"
            f"{row['heads_accuracy'] * 100:9.2f} ({-row['heads_drop'] * 100:+5.1f})"
        )
    return "\n".join(lines)


def save_outputs(result: dict[str, Any], run_dir: Path) -> None:
    """Write the JSON result, the text table and the plot into ``run_dir``."""
    atomic_write_json(run_dir / RESULT_FILE, result)
    atomic_write_bytes(run_dir / TABLE_FILE, (vit_layers_table(result) + "\n").encode())
    atomic_write_bytes(run_dir / PLOT_FILE, plot_png(result))


def plot_png(result: dict[str, Any]) -> bytes:
    """A bar chart (PNG bytes) of the accuracy drop per block, removed vs heads pruned."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global backend state

    rows = result["blocks"]
    index = [r["block"] for r in rows]
    ratio = result["config"]["head_ratio"]
    fig = Figure(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.2), dpi=120)
    ax = fig.subplots()
    ax.bar([i - 0.2 for i in index], [100 * r["removed_drop"] for r in rows], 0.4,
           label="block removed")  # fmt: skip
    counts = {(r["heads"], r["heads_left"]) for r in rows}
    # the pruner rounds the ratio per block (e.g. 0.5 of 3 heads keeps 1): say what was done
    label = (
        "heads pruned: {} -> {} per block".format(*counts.pop())
        if len(counts) == 1
        else f"{ratio:.0%} of its heads pruned (rounded per block)"
    )
    ax.bar([i + 0.2 for i in index], [100 * r["heads_drop"] for r in rows], 0.4,
           label=label)  # fmt: skip
    ax.set_xlabel("transformer block")
    ax.set_ylabel("accuracy drop (points)")
    ax.set_xticks(index)
    ax.set_title(f"ViT layer importance (baseline {100 * result['baseline_accuracy']:.1f}%)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
