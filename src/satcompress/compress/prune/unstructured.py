"""Unstructured magnitude pruning with ``torch.nn.utils.prune``: weights become exact zeros.

The smallest-magnitude weights of every convolution and linear layer are masked, per layer
(the same sparsity everywhere) or globally (one threshold). One-shot pruning masks once before
fine-tuning; the gradual schedule (Zhu & Gupta, 2017: ``s_k = s (1 - (1 - k/n)^3)``) raises the
sparsity at the start of each of the first ``n`` fine-tuning epochs (:class:`GradualPruning`).
:func:`make_permanent` then folds the masks into the weights, so the model is a plain module
whose pruned weights are exact zeros. The dense fp32 ONNX file keeps its size; a sparse or
compressed artifact is what turns the zeros into bytes saved.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.utils import prune as torch_prune

from satcompress.compress.prune.common import find_modules

log = logging.getLogger(__name__)

PRUNABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def prunable_layers(model: nn.Module, ignored: list[str] | None = None) -> dict[str, nn.Module]:
    """The convolution and linear layers of ``model`` whose weights are pruned, by name.

    Raises:
        PruningError: If an ignored layer name does not exist (close matches suggested).
    """
    skip = {id(m) for m in find_modules(model, ignored or [], "ignored layer")}
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and id(module) not in skip
    }


def apply_magnitude(
    layers: dict[str, nn.Module], sparsity: float, global_pruning: bool = False
) -> None:
    """Mask the smallest weights so that a fraction ``sparsity`` of them are zero.

    Earlier masks are folded in first; the weights they zeroed have the smallest magnitude,
    so they stay pruned and the sparsity only grows.

    Args:
        layers: The layers to prune (see :func:`prunable_layers`).
        sparsity: Fraction of weights to zero, per layer or over all of them.
        global_pruning: One magnitude threshold over all layers.
    """
    for module in layers.values():
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")
    # torch.nn.utils.prune flattens weights and masks with .view(-1), which fails on
    # channels-last weights (the training loop's layout): rank contiguous copies instead, and
    # for the global ranking build the masks here and hand them over with custom_from_mask
    scores = {m: m.weight.detach().abs().contiguous() for m in layers.values()}
    if not global_pruning:
        for module, score in scores.items():
            torch_prune.l1_unstructured(
                module, "weight", amount=float(sparsity), importance_scores=score
            )
        return
    flat = torch.cat([score.flatten() for score in scores.values()])
    keep = torch.ones_like(flat)
    count = round(float(sparsity) * flat.numel())
    if count:
        keep[torch.topk(flat, count, largest=False).indices] = 0
    for (module, score), mask in zip(
        scores.items(), keep.split([s.numel() for s in scores.values()]), strict=True
    ):
        torch_prune.custom_from_mask(module, "weight", mask.view_as(score))


def make_permanent(model: nn.Module) -> None:
    """Fold every pruning mask into its weight (``prune.remove``): a plain module remains."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)


def keep_zeros(module: nn.Module) -> int:
    """Keep the zeros of ``module``'s weight at zero through fine-tuning; their count.

    A pruned model whose masks were folded in (:func:`make_permanent`, or quantization layers
    that replaced the masked ones) trains its zeros back to life. Masking the gradient keeps
    them: a weight at zero with a zero gradient stays exactly zero under SGD with momentum and
    weight decay, and under Adam/AdamW (zero moments, decoupled decay of zero). The hook is on
    the parameter, so it survives a change of memory format (``.to(channels_last)``).
    """
    weight = module.weight
    keep = (weight.detach() != 0).to(weight.dtype)
    zeros = int(keep.numel() - keep.sum().item())
    if zeros:
        weight.register_hook(lambda grad: grad * keep.to(grad.device))
    return zeros


def cubic_schedule(sparsity: float, steps: int) -> list[float]:
    """Sparsity after each of ``steps`` gradual steps: ``s (1 - (1 - k/steps)^3)``."""
    return [round(sparsity * (1 - (1 - k / steps) ** 3), 6) for k in range(1, steps + 1)]


def sparsity_report(layers: dict[str, nn.Module]) -> dict[str, object]:
    """Zeros per layer and in total (of the effective, masked weights).

    Returns:
        ``{"layers": {name: {"params", "zeros", "sparsity"}}, "params", "zeros", "sparsity"}``.
    """
    per_layer = {}
    total = zeros = 0
    for name, module in layers.items():
        weight = module.weight.detach()
        count, nz = weight.numel(), int((weight == 0).sum())
        per_layer[name] = {"params": count, "zeros": nz, "sparsity": round(nz / max(1, count), 6)}
        total, zeros = total + count, zeros + nz
    return {
        "layers": per_layer,
        "params": total,
        "zeros": zeros,
        "sparsity": round(zeros / max(1, total), 6),
    }


class GradualPruning(Callback):
    """Raise the sparsity at the start of each of the first ``len(schedule)`` epochs.

    When the masks change, the checkpoint callbacks forget their best score, so the weights
    kept at the end (the best validation epoch) come from an epoch at the final sparsity.

    Args:
        layers: The layers to prune.
        schedule: Sparsity at the start of epoch 0, 1, ... (e.g. :func:`cubic_schedule`).
        global_pruning: One magnitude threshold over all layers.
    """

    def __init__(
        self, layers: dict[str, nn.Module], schedule: list[float], global_pruning: bool = False
    ) -> None:
        self.layers = layers
        self.schedule = list(schedule)
        self.global_pruning = global_pruning
        self.applied: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Apply this epoch's sparsity (if the schedule has a step for it)."""
        epoch = trainer.current_epoch
        if epoch >= len(self.schedule):
            return
        apply_magnitude(self.layers, self.schedule[epoch], self.global_pruning)
        self.applied.append(self.schedule[epoch])
        _forget_best(trainer)
        log.info("epoch %d: sparsity %.3f", epoch, self.schedule[epoch])


def _forget_best(trainer: L.Trainer) -> None:
    """Reset the best-model bookkeeping of every checkpoint callback."""
    for callback in trainer.checkpoint_callbacks:
        if not hasattr(callback, "best_k_models"):
            continue
        callback.best_k_models = {}
        callback.best_model_score = None
        callback.best_model_path = ""
        callback.kth_best_model_path = ""
        callback.kth_value = torch.tensor(float("-inf") if callback.mode == "max" else float("inf"))
