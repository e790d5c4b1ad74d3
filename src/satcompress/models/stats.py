"""What a model costs, counted in PyTorch: parameters and multiply-accumulates."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (unique tensors)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch size 1.

    Uses PyTorch's own ``FlopCounterMode`` (convolutions, matmuls and attention counted at
    the aten level, so ViTs are counted too); MACs = FLOPs / 2.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, *input_size))
    model.train(was_training)
    return int(counter.get_total_flops() // 2)
