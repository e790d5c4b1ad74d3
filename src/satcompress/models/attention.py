"""Attention layers with separate ``qkv``/``proj`` linears, and their shapes.

timm's ``Attention`` (ViTs) computes q, k and v with one ``qkv`` linear and mixes heads with
``proj``; once heads are removed (structured pruning), ``num_heads``, ``head_dim`` and
``attn_dim`` must be set to the new shapes. The CLIP image tower uses
``nn.MultiheadAttention``, whose packed projection cannot lose single heads;
:func:`split_multihead_attention` swaps it for the numerically identical
:class:`SplitMultiheadAttention` with the same ``qkv``/``proj`` layout. These are
architecture transforms, recorded with a pruned model and redone when it is rebuilt
(:mod:`satcompress.models.pruned`), so they live with the models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ArchitectureError(ValueError):
    """A model's architecture cannot be transformed or rebuilt as asked."""


@contextlib.contextmanager
def no_attention_fast_path() -> Iterator[None]:
    """Turn off ``nn.MultiheadAttention``'s inference fast path inside the block.

    In eval mode under ``no_grad`` the fast path computes attention with one fused
    ``aten::_native_multi_head_attention`` call, which the ONNX exporter cannot translate and
    ``FlopCounterMode`` counts as zero: the CLIP tower would neither export nor be counted.
    The slow path is the same computation with ordinary ops.
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


#: Name of the transform recorded in a pruned model's architecture file.
SPLIT_MHA = "split_multihead_attention"


class SplitMultiheadAttention(nn.Module):
    """Self-attention as ``nn.MultiheadAttention`` computes it, with separate linears.

    Call-compatible with ``nn.MultiheadAttention`` for self-attention (``query`` is ``key``
    is ``value``), returning ``(output, None)``; heads can be removed from ``qkv``/``proj``.

    Args:
        embed_dim: Token width.
        num_heads: Number of heads.
        bias: Whether the projections have biases.
        batch_first: Inputs are ``(B, N, D)`` (else ``(N, B, D)``).
        dropout: Attention dropout probability (training only).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attn_dim = self.head_dim * num_heads
        self.batch_first = batch_first
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * self.attn_dim, bias=bias)
        self.proj = nn.Linear(self.attn_dim, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """The same attention as ``mha`` (its weights copied).

        Raises:
            ArchitectureError: If ``mha`` has separate q/k/v widths, extra k/v biases or zero
                attention, which have no ``qkv`` equivalent.
        """
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ArchitectureError(
                "this nn.MultiheadAttention (separate key/value widths, bias_k/bias_v or "
                "add_zero_attn) cannot be split for head pruning; ignore it (ignored_layers)"
            )
        split = cls(
            mha.embed_dim,
            mha.num_heads,
            bias=mha.in_proj_bias is not None,
            batch_first=mha.batch_first,
            dropout=mha.dropout,
        )
        with torch.no_grad():
            split.qkv.weight.copy_(mha.in_proj_weight)
            split.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                split.qkv.bias.copy_(mha.in_proj_bias)
                split.proj.bias.copy_(mha.out_proj.bias)
        return split.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """Self-attention over ``query``; returns ``(output, None)`` like the original."""
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise NotImplementedError("SplitMultiheadAttention computes self-attention only")
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = _sdpa_mask(attn_mask)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.proj(out.transpose(1, 2).reshape(batch, tokens, self.attn_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _sdpa_mask(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s 2-D mask (True/float = blocked/added) in SDPA's convention."""
    if attn_mask is None:
        return None
    if attn_mask.dim() != 2:
        raise NotImplementedError("SplitMultiheadAttention supports only 2-D attention masks")
    return ~attn_mask if attn_mask.dtype == torch.bool else attn_mask


def split_multihead_attention(model: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by a :class:`SplitMultiheadAttention`.

    Returns:
        The transforms applied: ``[SPLIT_MHA]`` if anything was replaced, else ``[]``.
    """
    replaced = False
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, SplitMultiheadAttention.from_mha(child))
                replaced = True
    return [SPLIT_MHA] if replaced else []


def model_transforms(model: nn.Module) -> list[str]:
    """The architecture transforms ``model`` shows (its attentions were split, or not)."""
    split = any(isinstance(m, SplitMultiheadAttention) for m in model.modules())
    return [SPLIT_MHA] if split else []


def apply_transforms(model: nn.Module, transforms: list[str]) -> None:
    """Redo the recorded architecture transforms on a freshly built model.

    Raises:
        ArchitectureError: For an unknown transform name.
    """
    for name in transforms:
        if name != SPLIT_MHA:
            raise ArchitectureError(f"unknown architecture transform {name!r} (known: {SPLIT_MHA})")
        split_multihead_attention(model)


def is_attention(module: nn.Module) -> bool:
    """True for a head-prunable attention: ``qkv`` and ``proj`` linears, ``num_heads``."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    return (
        isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
        and isinstance(heads, int)
        and isinstance(head_dim, int)
        and qkv.out_features == 3 * heads * head_dim
        and not isinstance(module, nn.MultiheadAttention)
    )


def attention_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The head-prunable attention layers of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if is_attention(m)}


def attention_layers_by_qkv(model: nn.Module) -> dict[str, nn.Module]:
    """Attention layers by name, found by their ``qkv``/``proj`` layout (shapes may be stale)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
        and not isinstance(m, nn.MultiheadAttention)
    }


def set_attention_shape(module: nn.Module, num_heads: int, head_dim: int) -> None:
    """Write the shape attributes of one attention layer (timm's and ours)."""
    module.num_heads = num_heads
    module.head_dim = head_dim
    if hasattr(module, "attn_dim") or isinstance(module, SplitMultiheadAttention):
        module.attn_dim = num_heads * head_dim


def attention_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{name: {num_heads, head_dim}}`` of every attention layer (saved with a pruned model)."""
    return {
        name: {"num_heads": int(m.num_heads), "head_dim": int(m.head_dim)}
        for name, m in attention_layers(model).items()
    }
