"""Head pruning of attention layers, and the transformer blocks that hold them.

The attention layouts themselves (timm's ``Attention``, :class:`SplitMultiheadAttention` for
``nn.MultiheadAttention``) live in :mod:`satcompress.models.attention`; this module keeps
what only pruning needs: syncing shapes after heads were removed, and finding blocks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from satcompress.compress.prune.common import PruningError
from satcompress.models.attention import (  # noqa: F401  (the pruning API names them too)
    SPLIT_MHA,
    SplitMultiheadAttention,
    apply_transforms,
    attention_layers,
    attention_layers_by_qkv,
    attention_shapes,
    is_attention,
    model_transforms,
    set_attention_shape,
    split_multihead_attention,
)


def head_counts(model: nn.Module) -> dict[str, int]:
    """The heads of every attention layer of ``model`` by name (``nn.MultiheadAttention`` too)."""
    return {
        name: int(module.num_heads)
        for name, module in model.named_modules()
        if is_attention(module) or isinstance(module, nn.MultiheadAttention)
    }


def whole_heads_problem(name: str, heads: int, ratio: float) -> str | None:
    """Why removing ``ratio`` of a layer's ``heads`` per layer cannot work, or None if it can.

    Heads are removed whole and rounded up, so a ratio of at least ``(heads - 1) / heads``
    would remove every head of the layer.
    """
    if ratio > 0 and math.ceil(ratio * heads) >= heads:
        return (
            f"head ratio {ratio} would remove all {heads} heads of {name} (heads are removed "
            f"whole, rounded up): use a head ratio below {(heads - 1) / heads:.3f}"
        )
    return None


def sync_attention(model: nn.Module, heads: dict[nn.Module, int]) -> None:
    """Set ``num_heads``, ``head_dim``, ``attn_dim`` of each attention to its pruned shapes.

    Args:
        model: The pruned model.
        heads: Heads left per ``qkv`` linear (Torch-Pruning's updated ``num_heads``).

    Raises:
        PruningError: If a layer lost all its heads.
    """
    for name, module in attention_layers_by_qkv(model).items():
        count = heads.get(module.qkv, module.num_heads)
        if count < 1 or module.qkv.out_features == 0:
            raise PruningError(
                f"pruning removed every head of {name}: lower head_ratio (or the ratio)"
            )
        set_attention_shape(module, count, module.qkv.out_features // 3 // count)


class SkipBlock(nn.Module):
    """Stands in for a removed transformer block: returns its input unchanged."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Return ``x``."""
        return x


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The residual blocks of a ViT (timm ``blocks``, open_clip ``resblocks``), in order.

    Returns:
        ``(block name, block, attention name)`` for each block holding one attention layer.

    Raises:
        PruningError: If the model has no sequence of attention blocks.
    """
    for name, container in model.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)) or len(container) == 0:
            continue
        found = []
        for index, block in enumerate(container):
            attn = [n for n, m in block.named_modules() if is_attention(m) or _is_mha(m)]
            if len(attn) != 1:
                break
            prefix = f"{name}.{index}" if name else str(index)
            found.append((prefix, block, f"{prefix}.{attn[0]}"))
        else:
            return found
    raise PruningError(
        f"{type(model).__name__} has no sequence of transformer blocks (timm ``blocks`` or "
        "open_clip ``resblocks``): the layer analysis is for Vision Transformers"
    )


def _is_mha(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention)
