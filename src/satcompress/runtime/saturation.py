"""Make an int8 ONNX graph compute what it says on x86 CPUs without VNNI.

ONNX Runtime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2-only, or AVX-512
without VNNI) multiply with ``vpmaddubsw``, which adds each pair of products in 16 bits
and saturates: with 8-bit weights (|w| up to 127) and uint8 activations (up to 255) a pair
reaches 64,770 > 32,767 and the result is silently wrong. ONNX Runtime documents this
("U8S8 can have saturation issues" on such CPUs) and suggests 7-bit weights or uint8
weights. Measured on an AVX2-only AMD EPYC: the shared ResNet-18's PTQ artifact scored
95.30% there against 95.56% on VNNI CPUs, with 1% of the test predictions changed.

:func:`make_saturation_safe` re-encodes every int8 weight tensor that can saturate (values
beyond +-64) as uint8 with zero point 128: ``w + 128`` dequantizes to the same values, and
ONNX Runtime runs it with its uint8 x uint8 kernels, which widen to 16 bits before
multiplying: exact, but slower on these CPUs. Weights within +-64 (QAT at 7 bits or fewer,
PTQ with ``reduce_range``) cannot saturate, since 255 x (64 + 64) < 32,768, and keep the
fast kernels. No library does this rewrite (ONNX Runtime only warns in its documentation),
hence this module.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from satcompress.utils.cpu import CPUINFO, cpu_info, is_x86

if TYPE_CHECKING:  # imported where used: the device runtime decides the policy without it
    import onnx

SAFE_LIMIT = 64  # |w| <= 64: no uint8 x int8 pair sum leaves the int16 range
INT8_KERNEL_POLICIES = ("auto", "exact", "native")

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
# op type -> (weight input, its scale input or None, its zero point input), for every
# consumer that reads an int8 weight through ONNX Runtime's uint8 x int8 kernels: the QDQ
# form (DequantizeLinear, fused by ONNX Runtime into the ops below) and the operator form
# that ONNX Runtime's quantizer writes with QuantFormat.QOperator. Each accepts uint8
# weights too. (ConvInteger is absent: ONNX Runtime's CPU kernel takes uint8 weights only.)
_WEIGHT_SLOTS = {
    "DequantizeLinear": (0, 1, 2),
    "MatMulInteger": (1, None, 3),
    "QLinearConv": (3, 4, 5),
    "QLinearMatMul": (3, 4, 5),
    "QGemm": (3, 4, 5),
    "DynamicQuantizeMatMul": (1, 2, 3),
}


def int8_saturates_here(cpuinfo: str | Path = CPUINFO) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels can saturate on this CPU.

    True on x86 CPUs without VNNI; False on VNNI CPUs and on other architectures (Arm's
    dot-product kernels accumulate in 32 bits). An x86 CPU whose flags cannot be read
    counts as one without VNNI, so that results stay exact.
    """
    if not is_x86():
        return False
    flags = cpu_info(cpuinfo)[1]
    return flags is None or not flags & set(_VNNI_FLAGS)


def resolve_policy(policy: str) -> bool:
    """Whether :func:`make_saturation_safe` applies under ``policy``.

    ``auto``: if this CPU saturates; ``exact``: always; ``native``: never (ONNX Runtime's
    fastest kernels, possibly saturating).

    Raises:
        ValueError: If ``policy`` is not one of :data:`INT8_KERNEL_POLICIES`.
    """
    if policy not in INT8_KERNEL_POLICIES:
        raise ValueError(f"int8_kernels must be one of {INT8_KERNEL_POLICIES}, got {policy!r}")
    return policy == "exact" or (policy == "auto" and int8_saturates_here())


def make_saturation_safe(model: onnx.ModelProto) -> int:
    """Re-encode, in place, the int8 weights that can saturate as uint8 (zero point 128).

    A weight qualifies when it is an int8 initializer with a value beyond +-64, every
    consumer reads it as its weight, and each consumer's weight zero point is absent or an
    all-zero int8 initializer. Consumers are the QDQ form (``DequantizeLinear``) and the
    operator forms of ONNX Runtime's quantizer (``QLinearConv``, ``QLinearMatMul``,
    ``QGemm``, ``MatMulInteger``, ``DynamicQuantizeMatMul``). Each rewritten consumer gets
    a new uint8 zero point of 128 of the old one's shape; old zero points nothing reads any
    more are removed.

    Returns:
        How many weight tensors were rewritten.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name in inits:
                uses[name].append(node)
    rewritten, replaced = 0, set()
    for name, nodes in uses.items():
        tensor = inits[name]
        if tensor.data_type != onnx.TensorProto.INT8 or not all(
            _zero_point_ok(node, name, inits) for node in nodes
        ):
            continue
        values = numpy_helper.to_array(tensor).astype(np.int16)
        if values.size == 0 or np.abs(values).max() <= SAFE_LIMIT:
            continue
        tensor.CopyFrom(numpy_helper.from_array((values + 128).astype(np.uint8), name))
        for node in nodes:
            replaced.add(_set_uint8_zero_point(graph, node, inits))
        rewritten += 1
    _drop_unused(graph, replaced - {""})
    return rewritten


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers in ``names`` that no node or graph output reads any more."""
    used = {name for node in graph.node for name in node.input}
    used |= {output.name for output in graph.output}
    keep = [t for t in graph.initializer if t.name not in names or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _zero_point_ok(node: onnx.NodeProto, name: str, inits: dict) -> bool:
    """``node`` reads ``name`` as its weight with a zero (or absent) int8 zero point."""
    slots = _WEIGHT_SLOTS.get(node.op_type)
    if slots is None or len(node.input) <= slots[0] or node.input[slots[0]] != name:
        return False
    if list(node.input).count(name) != 1:
        return False
    zero_point = node.input[slots[2]] if len(node.input) > slots[2] else ""
    if not zero_point:
        return True
    import onnx
    from onnx import numpy_helper

    tensor = inits.get(zero_point)
    return (
        tensor is not None
        and tensor.data_type == onnx.TensorProto.INT8
        and not numpy_helper.to_array(tensor).any()
    )


def _set_uint8_zero_point(graph: onnx.GraphProto, node: onnx.NodeProto, inits: dict) -> str:
    """Point ``node``'s weight zero point at a new uint8 128 initializer; the old name."""
    from onnx import numpy_helper

    weight_slot, _, zp_slot = _WEIGHT_SLOTS[node.op_type]
    old = node.input[zp_slot] if len(node.input) > zp_slot else ""
    shape = list(inits[old].dims) if old else _zero_point_shape(node, inits)
    new_name = f"{node.input[weight_slot]}_uint8_zero_point_{node.name or node.output[0]}"
    graph.initializer.append(numpy_helper.from_array(np.full(shape, 128, dtype=np.uint8), new_name))
    while len(node.input) <= zp_slot:
        node.input.append("")
    node.input[zp_slot] = new_name
    return old


def _zero_point_shape(node: onnx.NodeProto, inits: dict) -> list[int]:
    """Shape of an absent zero point: that of the weight's scale, or a scalar."""
    scale_slot = _WEIGHT_SLOTS[node.op_type][1]
    if scale_slot is not None and node.input[scale_slot] in inits:
        return list(inits[node.input[scale_slot]].dims)
    return []
