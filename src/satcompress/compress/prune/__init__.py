"""Pruning that really shrinks: structured (channels, heads) and unstructured (magnitude).

Structured methods (``l1``, ``l2``, ``taylor``, ``bn``) remove channels, MLP neurons and
attention heads with Torch-Pruning's dependency graph: parameters, MACs, the ONNX file and its
latency shrink. ``magnitude`` zeroes the smallest weights (exact zeros, per-layer sparsity
reported). :func:`prune` runs the steps with fine-tuning (optionally distillation) in between
through :func:`satcompress.train.train` and evaluates the result in ONNX Runtime;
:func:`sensitivity` and :func:`vit_layer_importance` analyse where a model can be cut.

Example:
    >>> result = prune(
    ...     "runs/r18",
    ...     dataset,
    ...     PruneConfig(method="l1", ratio=0.5, steps=2, finetune_epochs=5),
    ...     "runs/r18_l1_50",
    ...     teacher="self",
    ... )
    >>> result.record["macs"], result.record["latency_ms"]
    >>> model = load_pruned("runs/r18_l1_50").model  # a fresh process will do
"""

from satcompress.compress.prune.api import PruneResult, finetune_config, prune, split_epochs
from satcompress.compress.prune.common import PruningError
from satcompress.compress.prune.config import (
    METHODS,
    STRUCTURED_METHODS,
    PruneConfig,
    SensitivityConfig,
    VitLayersConfig,
)
from satcompress.compress.prune.io import is_pruned, load_pruned, rebuild, save_pruned
from satcompress.compress.prune.sensitivity import sensitivity, sensitivity_table
from satcompress.compress.prune.structured import Calibration, StructuredPruner, layer_widths
from satcompress.compress.prune.transformers import (
    SplitMultiheadAttention,
    split_multihead_attention,
)
from satcompress.compress.prune.unstructured import (
    GradualPruning,
    apply_magnitude,
    cubic_schedule,
    make_permanent,
    prunable_layers,
    sparsity_report,
)
from satcompress.compress.prune.vit_layers import vit_layer_importance, vit_layers_table

__all__ = [
    "METHODS",
    "STRUCTURED_METHODS",
    "Calibration",
    "GradualPruning",
    "PruneConfig",
    "PruneResult",
    "PruningError",
    "SensitivityConfig",
    "SplitMultiheadAttention",
    "StructuredPruner",
    "VitLayersConfig",
    "apply_magnitude",
    "cubic_schedule",
    "finetune_config",
    "is_pruned",
    "layer_widths",
    "load_pruned",
    "make_permanent",
    "prunable_layers",
    "prune",
    "rebuild",
    "save_pruned",
    "sensitivity",
    "sensitivity_table",
    "sparsity_report",
    "split_epochs",
    "split_multihead_attention",
    "vit_layer_importance",
    "vit_layers_table",
]
