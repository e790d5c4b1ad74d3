"""Post-training int8 quantization of the deployable ONNX file with ONNX Runtime's quantizer.

Static mode runs ``onnxruntime.quantization.quantize_static`` on the exported fp32 graph
(uint8 images in, preprocessing baked in): QDQ format, per-channel int8 weights, activations
calibrated on train-split images with MinMax, Entropy or Percentile ranges. The uint8 ->
float normalisation stays in float by default, so the first convolution's input is quantized
once rather than after every preprocessing step. Dynamic mode (``quantize_dynamic``) stores
int8 weights of MatMul/Gemm and quantizes activations at run time: the usual choice for the
linear layers of transformers.

Two optional repairs act on the ONNX graphs (written here, ORT has no such pass for CNNs):
cross-layer equalisation of ``Conv -> Relu -> Conv`` pairs before quantizing (Nagel et al.,
2019: per-channel ranges are balanced by a positive rescaling ReLU lets through), and
empirical bias correction after it (each quantized convolution's bias absorbs the mean
output shift it shows on calibration images, layer by layer in graph order).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from satcompress.compress.quantize.config import PTQConfig
from satcompress.data import SceneDataset
from satcompress.runtime.onnx import make_session
from satcompress.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_PREPROCESS_PREFIX = "/preprocess/"
_ATTENTION_OPS = {"Softmax", "LayerNormalization"}


class ImageReader(CalibrationDataReader):
    """Feeds uint8 image batches to ONNX Runtime's calibrator.

    Args:
        images: ``(N, 3, H, W)`` uint8 images.
        batch_size: Images per calibration batch.
        input_name: The graph input's name.
    """

    def __init__(self, images: np.ndarray, batch_size: int = 32, input_name: str = "image"):
        self.images = images
        self.batch_size = batch_size
        self.input_name = input_name
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield {self.input_name: self.images[start : start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when done."""
        return next(self._batches, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._batches = self._iterate()


def calibration_images(dataset: SceneDataset, count: int, seed: int = 0) -> np.ndarray:
    """``count`` train-split images picked at random (seeded), as a uint8 numpy array."""
    images = dataset.splits["train"].images
    rng = np.random.default_rng(seed)
    index = np.sort(rng.permutation(len(images))[: min(count, len(images))])
    return np.ascontiguousarray(images[index].numpy())


def is_attention_graph(model: onnx.ModelProto) -> bool:
    """Whether the graph looks like a transformer (has Softmax or LayerNormalization)."""
    return any(node.op_type in _ATTENTION_OPS for node in model.graph.node)


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    images: np.ndarray | None,
    config: PTQConfig | None = None,
) -> Path:
    """Quantize an fp32 ONNX file (uint8 input) to int8 with ONNX Runtime.

    Args:
        fp32_path: The exported fp32 model (see :func:`satcompress.artifact.export_onnx`).
        out_path: Where the int8 model goes (written atomically; metadata kept).
        images: ``(N, 3, H, W)`` uint8 calibration images (not needed in dynamic mode).
        config: The PTQ settings.

    Returns:
        ``out_path``.

    Raises:
        ValueError: If static mode gets no calibration images.
    """
    config = config or PTQConfig()
    source = onnx.load(str(fp32_path))
    mode = config.mode
    if mode == "auto":
        mode = "dynamic" if is_attention_graph(source) else "static"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if mode == "dynamic":
            quantized = _dynamic(fp32_path, work, config)
        else:
            if images is None or len(images) == 0:
                raise ValueError("static PTQ needs calibration images")
            quantized = _static(source, work, images, config)
        model = onnx.load(str(quantized))
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    _set_meta(model, "quantization", f"ptq-{mode}")
    return atomic_write_bytes(out_path, model.SerializeToString())


def _static(source: onnx.ModelProto, work: Path, images: np.ndarray, config: PTQConfig) -> Path:
    if config.equalize:
        source = equalize(source)
    fp32 = work / "fp32.onnx"
    onnx.save(source, str(fp32))
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    exclude = []
    if not config.quantize_preprocessing:
        exclude = [n.name for n in onnx.load(str(prepared)).graph.node if _is_preprocessing(n)]
    extra = {"CalibPercentile": config.percentile} if config.calibration == "percentile" else {}
    out = work / "int8.onnx"
    quantize_static(
        str(prepared),
        str(out),
        ImageReader(images),
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=_TYPES[config.activation_type],
        weight_type=_TYPES[config.weight_type],
        nodes_to_exclude=exclude,
        calibrate_method=_CALIBRATION[config.calibration],
        extra_options=extra,
    )
    if config.bias_correction:
        corrected = correct_bias(onnx.load(str(prepared)), onnx.load(str(out)), images)
        onnx.save(corrected, str(out))
    return out


def _dynamic(fp32_path: str | Path, work: Path, config: PTQConfig) -> Path:
    out = work / "int8.onnx"
    quantize_dynamic(
        str(fp32_path),
        str(out),
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=_TYPES[config.weight_type],
    )
    return out


def _is_preprocessing(node: onnx.NodeProto) -> bool:
    return node.name.startswith(_PREPROCESS_PREFIX) or any(
        o.startswith(_PREPROCESS_PREFIX) for o in node.output
    )


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    prop = model.metadata_props.add()
    prop.key, prop.value = key, json.dumps(value)


# --- cross-layer equalisation ---------------------------------------------------------


def equalize(model: onnx.ModelProto, iterations: int = 4) -> onnx.ModelProto:
    """Cross-layer equalisation of ``Conv -> Relu -> Conv`` chains in an fp32 ONNX graph.

    For each chain whose middle tensors have a single consumer, output channel ``i`` of the
    first convolution is divided by ``s_i = sqrt(r1_i / r2_i)`` and input channel ``i`` of the
    second multiplied by it (``r``: max |weight| of that channel), which ReLU lets through
    unchanged. The function is the same; per-channel ranges become balanced.

    Args:
        model: An fp32 model whose convolution weights are initializers.
        iterations: Passes over all pairs (equalisation converges in a few).

    Returns:
        A new model (the input is not modified).
    """
    model = _copy(model)
    inits = {t.name: t for t in model.graph.initializer}
    pairs = list(_conv_relu_conv_pairs(model, inits))
    for _ in range(iterations):
        for first, second in pairs:
            _equalize_pair(first, second, inits)
    return model


def _conv_relu_conv_pairs(
    model: onnx.ModelProto, inits: dict[str, onnx.TensorProto]
) -> Iterator[tuple[onnx.NodeProto, onnx.NodeProto]]:
    consumers = _consumers(model)
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        relu = _only_consumer(consumers, node.output[0])
        if relu is None or relu.op_type != "Relu":
            continue
        second = _only_consumer(consumers, relu.output[0])
        if second is None or second.op_type != "Conv" or second.input[1] not in inits:
            continue
        if _group(second) == 1 or _is_depthwise(second, inits):
            yield node, second


def _equalize_pair(
    first: onnx.NodeProto, second: onnx.NodeProto, inits: dict[str, onnx.TensorProto]
) -> None:
    w1 = numpy_helper.to_array(inits[first.input[1]]).astype(np.float64)
    w2 = numpy_helper.to_array(inits[second.input[1]]).astype(np.float64)
    depthwise = _group(second) > 1
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
    w2_in = w2[:, 0] if depthwise else np.swapaxes(w2, 0, 1)
    r2 = np.abs(w2_in).reshape(w2_in.shape[0], -1).max(1)
    if r1.shape != r2.shape:
        return
    scale = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    scale[ok] = np.sqrt(r1[ok] / r2[ok])
    w1 = w1 / scale.reshape(-1, *([1] * (w1.ndim - 1)))
    if depthwise:
        w2 = w2 * scale.reshape(-1, *([1] * (w2.ndim - 1)))
    else:
        w2 = w2 * scale.reshape(1, -1, *([1] * (w2.ndim - 2)))
    _replace(inits, first.input[1], w1)
    _replace(inits, second.input[1], w2)
    if len(first.input) > 2 and first.input[2] in inits:
        bias = numpy_helper.to_array(inits[first.input[2]]).astype(np.float64)
        _replace(inits, first.input[2], bias / scale)


# --- bias correction -------------------------------------------------------------------


def correct_bias(
    fp32: onnx.ModelProto, quantized: onnx.ModelProto, images: np.ndarray, max_images: int = 256
) -> onnx.ModelProto:
    """Empirical bias correction of a QDQ model, one convolution at a time in graph order.

    For each quantized Conv (int32 bias behind a DequantizeLinear, as ``quantize_static``
    writes it), the mean per-channel difference between the fp32 model's output and the
    quantized model's output on ``images`` is added to the bias, then the next layer is
    measured with this correction in place.

    Args:
        fp32: The fp32 model (same tensor names as the quantized one).
        quantized: The QDQ model from ``quantize_static``.
        images: uint8 calibration images.
        max_images: At most this many images are used.

    Returns:
        The corrected quantized model.
    """
    quantized = _copy(quantized)
    images = images[:max_images]
    inits = {t.name: t for t in quantized.graph.initializer}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    # the quantizer may drop a Relu after a Conv (the Q clamps instead) and rename the Conv's
    # output, so layers are matched through their weights, not their output names
    fp32_outputs = {n.input[1]: n.output[0] for n in fp32.graph.node if n.op_type == "Conv"}
    layers = []
    for conv in quantized.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 3:
            continue
        weight_dq, bias_dq = producers.get(conv.input[1]), producers.get(conv.input[2])
        if weight_dq is None or bias_dq is None or bias_dq.op_type != "DequantizeLinear":
            continue
        source = weight_dq.input[0].removesuffix("_quantized")
        if source in fp32_outputs and bias_dq.input[0] in inits and bias_dq.input[1] in inits:
            layers.append((conv.output[0], fp32_outputs[source], bias_dq))
    reference = _run_outputs(fp32, [ref for _, ref, _ in layers], images)
    for name, ref, dq in layers:
        current = _run_outputs(quantized, [name], images).get(name)
        if current is None or ref not in reference:
            continue
        shift = _channel_mean(reference[ref]) - _channel_mean(current)
        bias = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        corrected = bias + np.round(shift / scale).astype(np.int64)
        info = np.iinfo(np.int32)
        _replace(inits, dq.input[0], np.clip(corrected, info.min, info.max).astype(np.int32))
    return quantized


def _run_outputs(
    model: onnx.ModelProto, names: list[str], images: np.ndarray
) -> dict[str, np.ndarray]:
    probe = _copy(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = make_session(path)
        available = {o.name for o in session.get_outputs()}
        wanted = [n for n in names if n in available]
        outs: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
        for start in range(0, len(images), 64):
            batch = images[start : start + 64]
            for name, value in zip(wanted, session.run(wanted, {"image": batch}), strict=True):
                outs[name].append(value)
    return {n: np.concatenate(v) for n, v in outs.items()}


def _channel_mean(x: np.ndarray) -> np.ndarray:
    axes = (0, *range(2, x.ndim))
    return x.astype(np.float64).mean(axis=axes)


# --- ONNX helpers -----------------------------------------------------------------------


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    for output in model.graph.output:
        out.setdefault(output.name, []).append(onnx.NodeProto(op_type="GraphOutput"))
    return out


def _only_consumer(consumers: dict[str, list[onnx.NodeProto]], name: str) -> onnx.NodeProto | None:
    found = consumers.get(name, [])
    return found[0] if len(found) == 1 else None


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _is_depthwise(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    dims = inits[node.input[1]].dims
    return dims[1] == 1 and _group(node) == dims[0]


def _replace(inits: dict[str, onnx.TensorProto], name: str, array: np.ndarray) -> None:
    old = inits[name]
    new = numpy_helper.from_array(array.astype(numpy_helper.to_array(old).dtype), name)
    old.CopyFrom(new)
