"""Export a Brevitas QAT model to an int8 QDQ ONNX graph that reproduces it exactly.

Written here rather than with Brevitas' own exporter because the deployable graph must (1)
carry the project's uint8-input preprocessing, (2) fold batch norms without requantizing:
with per-channel weight scales, ``BN(conv(x, q * s))`` equals ``conv(x, q * s')`` plus a new
bias, with ``s' = s * gamma / sigma`` (and ``q -> -q`` where that factor is negative), so the
integer weights ``q`` the model trained with stay exactly what is stored, and (3) hold
low-bit weights as plain ``int8`` initializers behind ``DequantizeLinear``, which ONNX Runtime
runs, and which the artifact stores at their real bit-width.

Steps: every Brevitas layer becomes a small module applying ``fake_quantize`` ops (exported
as ``QuantizeLinear``/``DequantizeLinear``) with the trained scales and zero points; the graph
is exported with :func:`satcompress.artifact.export_onnx`; then each constant weight's
``QuantizeLinear`` is replaced by its int8 result, a ``Transpose`` behind a weight's
``DequantizeLinear`` is folded into the stored integers, each ``Conv -> BatchNormalization``
is folded as above, and each max pool of quantized values is requantized on the same grid.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from satcompress.compress.quantize.qat import (
    _CLAMPING_ACTIVATIONS,
    _set_module,
    output_quantizers,
    quant_layers,
    run_with_hooks,
)
from satcompress.models.deployable import export_onnx
from satcompress.preprocess import InputSpec
from satcompress.utils.io import atomic_write_bytes

_WEIGHT_PREFIX = "model."
_WEIGHT_SUFFIX = ".weight"


class FakeQuantLayer(nn.Module):
    """A trained Brevitas layer's exact arithmetic with exportable fake-quantize ops.

    Args:
        layer: A Brevitas ``QuantConv2d`` or ``QuantLinear`` (eval mode).
        act: Its input quantizer's ``scale``, ``zero_point``, ``bits`` (None = float input).
    """

    def __init__(self, layer: nn.Module, act: dict[str, Any] | None) -> None:
        super().__init__()
        quant = layer.quant_weight()
        ints = quant.int().detach().float()
        out_channels = ints.shape[0]
        scale = quant.scale.detach().float().reshape(-1)
        scale = scale.expand(out_channels).clone() if scale.numel() == 1 else scale.clone()
        shape = (-1,) + (1,) * (ints.ndim - 1)
        self.register_buffer("weight", ints * scale.view(shape))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(out_channels, dtype=torch.int32))
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias", bias)
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize the input, dequantize the int weights, run the convolution or matmul."""
        if self.act is not None:
            x = _fake_quant_activation(x, self.act)
        weight = torch.fake_quantize_per_channel_affine(
            self.weight, self.weight_scale, self.weight_zero_point, 0, -128, 127
        )
        if self.conv:
            return F.conv2d(
                x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        return F.linear(x, weight, self.bias)


def _fake_quant_activation(x: torch.Tensor, act: dict[str, Any]) -> torch.Tensor:
    scale, zero, bits = act["scale"], act["zero_point"], act["bits"]
    qmin, qmax = (-128, 127) if act["signed"] else (0, 255)
    low, high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if act["signed"] else (0, (1 << bits) - 1)
    )
    if (low, high) != (qmin, qmax):  # fewer than 8 bits: clip to the grid's ends first
        x = torch.clamp(x, (low - zero) * scale, (high - zero) * scale)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)


class FakeQuantActivation(nn.Module):
    """A trained Brevitas ``QuantIdentity`` (a layer's output quantizer) as a fake-quant op.

    Args:
        act: Its ``scale``, ``zero_point``, ``bits`` and ``signed``.
    """

    def __init__(self, act: dict[str, Any]) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize and dequantize ``x``."""
        return _fake_quant_activation(x, self.act)


def _quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """Every enabled activation quantizer: layer inputs and output quantizers, by module name."""
    found = {}
    for name, layer in quant_layers(model).items():
        if layer.input_quant.is_quant_enabled:
            found[name] = layer.input_quant
    for name, module in output_quantizers(model).items():
        found[name] = module.act_quant
    return found


def activation_params(model: nn.Module, probe: torch.Tensor) -> dict[str, dict[str, Any] | None]:
    """Scale, zero point, bits and signedness of each activation quantizer, by module name.

    Quantized layers without an input quantizer map to None.
    """
    found: dict[str, dict[str, Any] | None] = dict.fromkeys(quant_layers(model))
    hooks = [
        proxy.register_forward_hook(_act_hook(found, name))
        for name, proxy in _quantizers(model).items()
    ]
    run_with_hooks(model, probe, hooks)
    missing = [n for n in _quantizers(model) if found.get(n) is None]
    if missing:
        raise RuntimeError(f"activation quantizers never called on a forward pass: {missing}")
    return found


def _act_hook(found: dict[str, Any], name: str) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        zero = float(output.zero_point.detach().reshape(-1)[0])
        if zero != round(zero):
            raise ValueError(f"layer {name}: non-integer activation zero point {zero}")
        found[name] = {
            "scale": float(output.scale.detach().reshape(-1)[0]),
            "zero_point": int(round(zero)),
            "bits": int(output.bit_width),
            "signed": bool(output.signed),
        }

    return hook


def to_fake_quant_module(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A copy of a QAT model with Brevitas modules replaced by plain fake-quant modules."""
    acts = activation_params(model, probe)
    deploy = copy.deepcopy(model).eval()
    for name, layer in quant_layers(model).items():
        _set_module(deploy, name, FakeQuantLayer(layer.eval(), acts[name]))
    for name in output_quantizers(model):
        _set_module(deploy, name, FakeQuantActivation(acts[name]))
    return deploy


def export_qat_onnx(
    model: nn.Module,
    spec: InputSpec,
    image_size: tuple[int, int],
    path: str | Path,
    layer_bits: dict[str, int | None],
    metadata: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, int], dict[str, str]]:
    """Write a QAT model as an int8 QDQ ONNX file (uint8 images in, BN folded).

    Args:
        model: The QAT model (Brevitas layers).
        spec: Its input spec (the preprocessing baked into the graph).
        image_size: (height, width) of the images the file receives.
        path: Destination ``.onnx`` file.
        layer_bits: Weight bits per layer, as :func:`prepare_qat` returned.
        metadata: Extra metadata stored in the file.

    Returns:
        The path, the bits of each int8 weight initializer, and its PyTorch layer name.

    Raises:
        RuntimeError: If a quantized layer's weight cannot be found in the exported graph.
    """
    probe = torch.zeros(2, 3, *(spec.size or image_size))
    deploy = to_fake_quant_module(model, probe)
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(deploy, spec, image_size, Path(tmp) / "raw.onnx", metadata=metadata)
        proto = onnx.load(str(raw))
    editor = _QDQEditor(proto)
    layers = editor.quantize_constant_weights()
    editor.fold_transposes()
    editor.fold_batch_norms()
    editor.split_conv_biases(through_activations=_quantizes_after_activations(model))
    editor.requantize_max_pools()
    editor.finish()
    wanted = {n for n, b in layer_bits.items() if b is not None and n in quant_layers(model)}
    missing = wanted - set(layers.values())
    if missing:
        raise RuntimeError(f"quantized layers not found in the exported graph: {sorted(missing)}")
    bits = {init: int(layer_bits[layer]) for init, layer in layers.items() if layer in wanted}
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString()), bits, layers


def _quantizes_after_activations(model: nn.Module) -> bool:
    """Whether some output quantizer follows an activation (``quant_after_activation``)."""
    for name in output_quantizers(model):
        parent = model.get_submodule(name.rpartition(".")[0])
        if isinstance(parent, nn.Sequential) and isinstance(parent[0], _CLAMPING_ACTIVATIONS):
            return True
    return False


class _QDQEditor:
    """In-place rewrites of an exported fake-quant graph (see the module docstring)."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.graph = proto.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.removed: set[str] = set()  # first output names (unique in SSA form)

    # graph queries ------------------------------------------------------------------------

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self._nodes() if name in n.input]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self._nodes() if name in n.output), None)

    def array(self, name: str) -> np.ndarray:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        if node is not None and node.op_type == "Identity":  # the exporter's deduplication
            return self.array(node.input[0])
        raise KeyError(f"{name} is not a constant of the graph")

    def _nodes(self) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if n.output[0] not in self.removed]

    def set_init(self, name: str, array: np.ndarray) -> None:
        tensor = numpy_helper.from_array(array, name)
        if name in self.inits:
            self.inits[name].CopyFrom(tensor)
        else:
            self.graph.initializer.append(tensor)
            self.inits[name] = self.graph.initializer[-1]

    def private_init(self, node: onnx.NodeProto, index: int) -> str:
        """Give ``node`` its own copy of input ``index`` if other nodes share it."""
        name = node.input[index]
        if len(self.consumers(name)) > 1:
            new = self.unique(f"{name}_{node.name or 'copy'}")
            self.set_init(new, self.array(name).copy())
            node.input[index] = new
            return new
        return name

    def unique(self, name: str) -> str:
        out, k = name, 0
        while out in self.inits:
            k += 1
            out = f"{name}_{k}"
        return out

    # rewrites -----------------------------------------------------------------------------

    def quantize_constant_weights(self) -> dict[str, str]:
        """QuantizeLinear(float weight) -> DequantizeLinear becomes int8 weight -> DQ."""
        layers = {}
        for q in [n for n in self._nodes() if n.op_type == "QuantizeLinear"]:
            source = q.input[0]
            if source not in self.inits or not _is_float(self.inits[source]):
                continue
            dqs = self.consumers(q.output[0])
            if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
                continue
            weight = self.array(source).astype(np.float64)
            scale = self.array(q.input[1]).astype(np.float64)
            zero = self.array(q.input[2]).astype(np.int64) if len(q.input) > 2 else 0
            axis = _attr(q, "axis", 1)
            ints = _quantize(weight, scale, zero, axis)
            name = self.unique(f"{source}_quantized")
            self.set_init(name, ints.astype(np.int8))
            for dq in dqs:
                dq.input[0] = name
            self.removed.add(q.output[0])
            layer = _layer_name(source)
            if layer is not None:
                layers[name] = layer
        return layers

    def fold_transposes(self) -> None:
        """int8 weight -> DQ(axis) -> Transpose(1, 0) becomes transposed int8 -> DQ(1 - axis)."""
        for dq in [n for n in self._nodes() if n.op_type == "DequantizeLinear"]:
            users = self.consumers(dq.output[0])
            if len(users) != 1 or users[0].op_type != "Transpose" or dq.input[0] not in self.inits:
                continue
            transpose = users[0]
            ints = self.array(dq.input[0])
            if ints.ndim != 2 or list(_attr(transpose, "perm", [1, 0])) != [1, 0]:
                continue
            if len(self.consumers(dq.input[0])) != 1:
                continue
            self.set_init(dq.input[0], np.ascontiguousarray(ints.T))
            _set_attr(dq, "axis", 1 - _attr(dq, "axis", 1))
            self._bypass(transpose, dq.output[0])

    def fold_batch_norms(self) -> None:
        """Conv(x, DQ(q, s)) -> BatchNormalization becomes Conv(x, DQ(+-q, s')) + bias."""
        for conv in [n for n in self._nodes() if n.op_type == "Conv"]:
            users = self.consumers(conv.output[0])
            dq = self.producer(conv.input[1])
            if len(users) != 1 or users[0].op_type != "BatchNormalization":
                continue
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.inits:
                continue
            self._fold(conv, dq, users[0])

    def _fold(self, conv: onnx.NodeProto, dq: onnx.NodeProto, bn: onnx.NodeProto) -> None:
        gamma, beta, mean, var = (self.array(bn.input[i]).astype(np.float64) for i in range(1, 5))
        factor = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        ints = self.array(dq.input[0]).astype(np.int64)
        if ints.min() < -127 and (factor < 0).any():
            raise ValueError(f"cannot fold {bn.name}: weights use -128 and gamma < 0")
        scale = self.array(dq.input[1]).astype(np.float64)
        scale = np.broadcast_to(scale, factor.shape) if scale.size == 1 else scale
        sign = np.where(factor < 0, -1, 1)
        ints = ints * sign.reshape(-1, *([1] * (ints.ndim - 1)))
        new_scale = scale * np.abs(factor)
        ints[new_scale == 0] = 0
        new_scale[new_scale == 0] = 1.0
        weight_name = self.private_init(dq, 0)
        self.set_init(weight_name, ints.astype(np.int8))
        scale_name = self.private_init(dq, 1)
        self.set_init(scale_name, new_scale.astype(np.float32))
        _set_attr(dq, "axis", 0)
        bias = self.array(conv.input[2]).astype(np.float64) if _has_bias(conv) else 0.0
        folded = (bias - mean) * factor + beta
        if _has_bias(conv):
            name = self.private_init(conv, 2)
        else:
            name = self.unique(f"{weight_name}_bias")
            if len(conv.input) < 3:
                conv.input.append(name)
            conv.input[2] = name
        self.set_init(name, folded.astype(np.float32))
        self._bypass(bn, conv.output[0])

    def requantize_max_pools(self) -> None:
        """``DQ(s, z) -> MaxPool`` gets ``Q(s, z) -> DQ(s, z)`` behind the pool.

        A max pool keeps its input's quantization grid, so the pair changes no value. Without
        it, a pool read by a residual sum as well as by a quantized convolution (the stem of
        torchvision's ResNets) leaves ONNX Runtime a float island: the pool, the sum and the
        layout conversions around them. With it, ORT pools the uint8 values and the sum
        becomes a ``QLinearAdd``.
        """
        for pool in [n for n in self._nodes() if n.op_type == "MaxPool"]:
            dq = self.producer(pool.input[0])
            if dq is None or dq.op_type != "DequantizeLinear" or len(pool.output) != 1:
                continue
            if not self._is_scalar_constant(dq.input[1]):  # per-tensor activations only
                continue
            output = pool.output[0]
            pool.output[0] = f"{output}_pooled"
            params = list(dq.input[1:])
            q = onnx.helper.make_node(
                "QuantizeLinear", [pool.output[0], *params], [f"{output}_q"], name=f"{pool.name}_q"
            )
            dq_after = onnx.helper.make_node(
                "DequantizeLinear", [q.output[0], *params], [output], name=f"{pool.name}_dq"
            )
            index = list(self.graph.node).index(pool)
            self.graph.node.insert(index + 1, dq_after)
            self.graph.node.insert(index + 1, q)

    def _is_scalar_constant(self, name: str) -> bool:
        try:
            return self.array(name).size == 1
        except KeyError:
            return False

    def split_conv_biases(self, through_activations: bool = False) -> None:
        """Conv(x, DQ(w), b) becomes Add(Conv(x, DQ(w)), b) unless a QuantizeLinear follows.

        With ``through_activations`` (``quant_after_activation``), also a QuantizeLinear after
        one Relu/Clip: ONNX Runtime drops that clamp into the QLinearConv.

        ONNX Runtime rounds the float bias of a Conv with dequantized inputs to int32 steps of
        ``input_scale * weight_scale`` (its bias-quantization pass); a separate Add keeps the
        bias exact, so the graph computes what the fake-quant model computed. A Conv followed
        by its output quantizer keeps its bias: ONNX Runtime then runs ``QLinearConv`` (int8
        kernels, int32 bias), which matches the fake-quant model up to rare one-step
        rounding differences of the output.
        """
        for conv in [n for n in self._nodes() if n.op_type == "Conv" and _has_bias(n)]:
            dq = self.producer(conv.input[1])
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if self._quantized_after(conv, through_activations):
                continue  # an output quantizer follows: ORT fuses Conv + Q into QLinearConv
            bias = self.array(conv.input[2]).astype(np.float32)
            name = self.unique(f"{conv.input[2]}_channels")
            self.set_init(name, bias.reshape(1, -1, 1, 1))
            output = conv.output[0]
            conv.output[0] = f"{output}_nobias"
            del conv.input[2]
            add = onnx.helper.make_node(
                "Add", [conv.output[0], name], [output], name=f"{conv.name}_bias"
            )
            index = list(self.graph.node).index(conv)
            self.graph.node.insert(index + 1, add)

    def _quantized_after(self, conv: onnx.NodeProto, through_activations: bool) -> bool:
        """Whether ``conv`` feeds only a QuantizeLinear (directly, or through a Relu/Clip)."""
        users = self.consumers(conv.output[0])
        if through_activations and len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            users = self.consumers(users[0].output[0])
        return len(users) == 1 and users[0].op_type == "QuantizeLinear"

    def _bypass(self, node: onnx.NodeProto, replacement: str) -> None:
        for user in self.consumers(node.output[0]):
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = replacement
        for output in self.graph.output:
            if output.name == node.output[0]:
                raise ValueError(f"cannot remove {node.name}: its output is a graph output")
        self.removed.add(node.output[0])

    def finish(self) -> None:
        """Drop removed nodes and initializers nothing reads any more."""
        # copies: protobuf messages taken from a repeated field do not survive clearing it
        kept = [_clone(n, onnx.NodeProto) for n in self._nodes()]
        del self.graph.node[:]
        self.graph.node.extend(kept)
        used = {name for node in kept for name in node.input}
        used |= {o.name for o in self.graph.output}
        keep = [_clone(t, onnx.TensorProto) for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def _clone(message: Any, kind: type) -> Any:
    out = kind()
    out.CopyFrom(message)
    return out


def _quantize(weight: np.ndarray, scale: np.ndarray, zero: Any, axis: int) -> np.ndarray:
    if np.ndim(scale) == 1 and weight.ndim > 1:
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return np.clip(np.rint(weight / scale) + zero, -128, 127)


def _layer_name(initializer: str) -> str | None:
    if initializer.startswith(_WEIGHT_PREFIX) and initializer.endswith(_WEIGHT_SUFFIX):
        return initializer[len(_WEIGHT_PREFIX) : -len(_WEIGHT_SUFFIX)]
    return None


def _is_float(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _has_bias(node: onnx.NodeProto) -> bool:
    return len(node.input) > 2 and bool(node.input[2])


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)
    node.attribute.append(onnx.helper.make_attribute(name, value))
