"""What a model costs, counted in PyTorch: parameters and multiply-accumulates."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from satcompress.models.attention import no_attention_fast_path

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (unique tensors)."""
    return sum(p.numel() for p in model.parameters())


def _cpu_attention_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *_: Any, **__: Any
) -> int:
    """FLOPs of ``scaled_dot_product_attention``'s CPU kernel (q @ k^T and attention @ v).

    Written here because torch's flop registry covers the CUDA kernels of SDPA only: on the
    CPU, ``_scaled_dot_product_flash_attention_for_cpu`` would count as zero.
    """
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch size 1.

    Uses PyTorch's own ``FlopCounterMode`` (convolutions, matmuls and attention counted at
    the aten level, so ViTs are counted too, their attention's CPU kernel included); MACs =
    FLOPs / 2. ``nn.MultiheadAttention`` (the CLIP tower) runs its slow path, which the
    counter sees.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    with counter, torch.no_grad(), no_attention_fast_path():
        model(torch.zeros(1, 3, *input_size))
    model.train(was_training)
    return int(counter.get_total_flops() // 2)
