"""Pruning that really shrinks: structured (channels, heads) and unstructured (magnitude).

Structured methods (``l1``, ``l2``, ``taylor``, ``bn``) remove channels, MLP neurons and
attention heads with Torch-Pruning's dependency graph: parameters, MACs, the ONNX file and its
latency shrink. ``magnitude`` zeroes the smallest weights (exact zeros, per-layer sparsity
reported). :func:`prune` runs the steps with fine-tuning (optionally distillation) in between
through :func:`satcompress.train.train` and evaluates the result in ONNX Runtime;
:func:`vit_layer_importance` analyses where a ViT can be cut (the per-layer sensitivity
table of every option is :func:`satcompress.pipeline.sensitivity.layer_sensitivity`).

Example:
    >>> result = prune(
    ...     "runs/r18",
    ...     dataset,
    ...     PruneConfig(method="l1", ratio=0.5, steps=2, finetune_epochs=5),
    ...     "runs/r18_l1_50",
    ...     teacher="self",
    ... )
    >>> result.record["macs"], result.record["latency_ms"]
    >>> model = satcompress.load("runs/r18_l1_50").model  # a fresh process will do

The configs import at once; the rest (Torch-Pruning, Lightning) on first use.
"""

from satcompress.compress.prune.config import (
    METHODS,
    STRUCTURED_METHODS,
    PruneConfig,
    VitLayersConfig,
)
from satcompress.utils.lazy import lazy_package

__all__ = [
    "METHODS",
    "STRUCTURED_METHODS",
    "PruneConfig",
    "VitLayersConfig",
    *lazy_package(
        __name__,
        {
            "PruneResult": "api",
            "finetune_config": "api",
            "prune": "api",
            "split_epochs": "api",
            "PruningError": "common",
            "Calibration": "structured",
            "StructuredPruner": "structured",
            "layer_widths": "structured",
            "SplitMultiheadAttention": "transformers",
            "split_multihead_attention": "transformers",
            "head_counts": "transformers",
            "whole_heads_problem": "transformers",
            "GradualPruning": "unstructured",
            "apply_magnitude": "unstructured",
            "cubic_schedule": "unstructured",
            "make_permanent": "unstructured",
            "prunable_layers": "unstructured",
            "sparsity_report": "unstructured",
            "vit_layer_importance": "vit_layers",
            "vit_layers_table": "vit_layers",
        },
    ),
]
