"""Encode a compressed PyTorch model as an artifact in memory, and predict its size exactly.

:func:`encode` takes a model as :func:`~satcompress.compress.plan.apply_plan` returns it: with
Brevitas quantizers it is exported through
:func:`~satcompress.compress.quantize.export.export_qat_onnx` (int8 QDQ, low-bit weights
packed at their bits), otherwise as a plain fp32 graph (:func:`export_onnx`; pruned zeros are
still stored as a mask). Tensors are stored dense or sparse, whichever is smaller, **without
LZMA by default** (``compress=False``), so that the size is a function of shapes, bits and
zero counts that :func:`predict_bytes` computes exactly; LZMA would save more (measured on the
test models: ~8% of fp32 weights, more on 4- and 8-bit codes), but which stream it shrinks and
by how much depends on the values, which no cheap model predicts within 1%.
``compress=True`` gives those smaller files; the prediction is then an upper bound. Every
deployable file is built here: the pipeline's ``build_artifact`` passes ONNX graphs (fp32,
PTQ, QAT) to :func:`encode` with ``compress=True``, as the stages have always written them.

The predictor's rule (:class:`BytePredictor`): the file is ``header (24) + manifest JSON +
tensors + LZMA'd graph skeleton + SHA-256 (32)``.

* The tensor list, names, roles, graph skeleton and metadata come from one *reference*
  export per set of quantized layers (the plan with its bits replaced by 8 or float, no
  pruning), cached: a search over bits, ratios and sparsities re-exports nothing.
* Each tensor attributed to a layer (its weight; bias, folded bias; weight scales and zero
  points) gets the plan's shape: output channels kept by its group
  (:func:`~satcompress.compress.plan.kept_channels`: Torch-Pruning's rounding), inputs by its
  producer's group.
* A weight's stored bytes: ``min(dense, sparse)`` as :func:`satcompress.runtime.pack.encode_ints`
  /``encode_raw`` choose, with ``dense = ceil(count * bits / 8)`` and ``sparse = ceil(count /
  8) + ceil(nnz * w / 8)`` (``w`` = bits per nonzero code: ``bits`` or 1 for narrow 2-bit/1-bit;
  32 for floats). ``nnz`` counts the zeros the plan's magnitude pruning makes *and* the
  weights that quantize to zero: the layer's weights are masked and quantized with the same
  Brevitas quantizer (cached per layer, bits and sparsity). With structured pruning the zero
  fraction of the unpruned layer is applied to the kept weights (the one estimate).
* The manifest is rebuilt with the predicted entries and measured with ``json.dumps``, so its
  size (digits of shapes, offsets, lengths, counts) is exact.

Errors: exact without structured pruning; with it, the zero fraction of the kept channels
and the skeleton's shape constants (ViT reshapes) are estimates (see tests/test_plan.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from satcompress.artifact.format import (
    DIGEST_SIZE,
    HEADER,
    EncodedArtifact,
    build_manifest,
    encode_artifact,
    file_size,
)
from satcompress.compress.plan import (
    CompressionPlan,
    LayerPlan,
    LayerUnit,
    PlanUnits,
    apply_plan,
    layer_unit,
    plan_units,
)
from satcompress.models.deployable import export_onnx
from satcompress.preprocess import InputSpec
from satcompress.runtime.pack import Levels, packed_size

__all__ = [
    "BytePredictor",
    "ByteTable",
    "EncodedArtifact",
    "encode",
    "export_for_artifact",
    "layer_byte_table",
    "predict_bytes",
]


def export_for_artifact(
    model: nn.Module,
    spec: InputSpec,
    image_size: tuple[int, int],
    layer_bits: Mapping[str, int | None] | None = None,
) -> tuple[onnx.ModelProto, dict[str, int], dict[str, str]]:
    """The ONNX graph an artifact of ``model`` stores, with its initializer bits and layers.

    Args:
        model: A float model, or a QAT model (Brevitas layers) as ``apply_plan`` returns it.
        spec: Its input spec (baked into the graph).
        image_size: (height, width) of the uint8 images the graph receives.
        layer_bits: Weight bits per layer (QAT); default: the model's ``layer_bits``
            attribute, else read from its Brevitas layers.
    """
    from satcompress.compress.quantize.export import export_qat_onnx
    from satcompress.compress.quantize.qat import quant_layers

    quantized = quant_layers(model)
    with tempfile.TemporaryDirectory() as tmp:
        if not quantized:
            path = export_onnx(model, spec, tuple(image_size), Path(tmp) / "model.onnx")
            return onnx.load(str(path)), {}, {}
        if layer_bits is None:
            layer_bits = getattr(model, "layer_bits", None) or {
                name: int(layer.quant_weight().bit_width) for name, layer in quantized.items()
            }
        path, bits, layers = export_qat_onnx(
            model.eval(), spec, tuple(image_size), Path(tmp) / "model.onnx", dict(layer_bits)
        )
        return onnx.load(str(path)), bits, layers


def encode(
    model: nn.Module | onnx.ModelProto | str | Path,
    spec: InputSpec | None = None,
    image_size: tuple[int, int] | None = None,
    *,
    info: Mapping[str, Any] | None = None,
    layer_bits: Mapping[str, int | None] | None = None,
    bits: Mapping[str, int] | None = None,
    layers: Mapping[str, str] | None = None,
    compress: bool = False,
) -> EncodedArtifact:
    """Build the deployable artifact of a (compressed) model in memory: the one encoder.

    Every deployable ``.satc`` file is built here (the pipeline's
    :func:`~satcompress.pipeline.stages.build_artifact` calls it, then ``.write(path)``),
    so its bytes are the ones :func:`predict_bytes` predicts (exactly with
    ``compress=False``; an upper bound with ``compress=True``).

    Args:
        model: A PyTorch model as :func:`~satcompress.compress.plan.apply_plan` returns it
            (or any float model): QAT layers are exported as int8 QDQ with their real bits,
            float models as fp32 (pruned zeros stored as a mask). Or an ONNX graph already
            exported (a ``ModelProto`` or its file: an fp32 graph, a QDQ graph from
            ``quantize_static``, a QAT graph), stored as it is with ``bits`` and ``layers``.
        spec: The PyTorch model's input spec (not used for an ONNX graph).
        image_size: (height, width) of the uint8 images the graph receives (PyTorch model).
        info: Description stored in the manifest.
        layer_bits: Weight bits per layer of a PyTorch model (default: the model's own, see
            :func:`export_for_artifact`).
        bits: Bit-width of an ONNX graph's ``int8``/``uint8`` initializers by name (default
            8); see :func:`~satcompress.artifact.format.write_artifact`.
        layers: The model layer of an ONNX graph's initializers (for ``inspect``).
        compress: Also try LZMA per stream (smaller, but not exactly predictable).

    Returns:
        The :class:`EncodedArtifact` (``.data``, ``.size_bytes``, ``.manifest``, ``.write``).

    Raises:
        TypeError: For a PyTorch model without ``spec`` and ``image_size``, or an ONNX graph
            with ``spec``, ``image_size`` or ``layer_bits`` (which only a PyTorch model uses).
    """
    if isinstance(model, nn.Module):
        if spec is None or image_size is None:
            raise TypeError("encode() of a PyTorch model needs its spec and image_size")
        if bits is not None or layers is not None:
            raise TypeError("bits= and layers= describe an ONNX graph; give layer_bits=")
        model, bits, layers = export_for_artifact(model, spec, image_size, layer_bits)
    elif spec is not None or image_size is not None or layer_bits is not None:
        raise TypeError("an ONNX graph is stored as exported: give bits= and layers= only")
    return encode_artifact(model, bits=bits, layers=layers, info=info, compress=compress)


# --- size prediction --------------------------------------------------------------------------


@dataclasses.dataclass
class ByteTable:
    """Predicted bytes of an artifact, per layer and fixed overhead.

    Attributes:
        rows: Per quantizable layer: ``layer``, ``bits`` (None = float), ``sparsity``,
            ``shape`` (stored weight), ``count``, ``nnz``, ``encoding``, and bytes:
            ``weight`` (codes, mask included), ``mask`` (the sparse mask part of it),
            ``scale``, ``zero_point``, ``bias`` (biases, folded batch norms), ``other``
            (the layer's activation quantizer scalars), ``total``.
        overhead: ``header`` (24 + 32 checksum), ``manifest`` (JSON), ``skeleton`` (the
            LZMA'd graph), ``tensors`` (tensors of no layer: preprocessing constants,
            position embeddings, norms), ``total``.
        total: Predicted file size in bytes.
    """

    rows: list[dict[str, Any]]
    overhead: dict[str, int]
    total: int


@dataclasses.dataclass
class _Reference:
    entries: list[dict[str, Any]]
    metadata: dict[str, Any]
    skeleton: int
    owner: dict[str, str]  # tensor name -> layer


class BytePredictor:
    """Predicts artifact sizes of plans for one model; caches what plans share.

    Build it once and call :meth:`predict`/:meth:`table` for many plans (a budget search):
    each call costs a manifest rebuild (milliseconds); a new set of quantized layers costs one
    reference export, a new ``(layer, bits, sparsity)`` one weight quantization.

    Args:
        model: The float model plans apply to; or a model ``apply_plan`` returned (its
            ``compression_plan`` attribute set), which is then predicted as it is.
        spec: Its input spec.
        image_size: (height, width) of the images the artifact receives.
        info: The manifest description :func:`encode` will be given (its size counts).
        example_inputs: A float batch for tracing (default: a seeded random batch).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: InputSpec,
        image_size: tuple[int, int],
        *,
        info: Mapping[str, Any] | None = None,
        example_inputs: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.image_size = tuple(image_size)
        self.info = dict(info or {})
        size = spec.size or self.image_size
        if example_inputs is None:
            generator = torch.Generator().manual_seed(0)
            example_inputs = torch.randn(2, 3, *size, generator=generator)
        self.example = example_inputs
        self.applied: CompressionPlan | None = getattr(model, "compression_plan", None)
        self.units = _applied_units(model) if self.applied else plan_units(model, self.example)
        self._references: dict[frozenset[str], _Reference] = {}
        self._weights: dict[tuple[str, int | None, float], tuple[int, int, Levels | None]] = {}

    def predict(self, plan: CompressionPlan | None = None) -> int:
        """Predicted artifact bytes of ``plan`` (None: the applied model's own plan)."""
        return self.table(plan).total

    def table(self, plan: CompressionPlan | None = None) -> ByteTable:
        """Predicted bytes per layer and overhead (see :class:`ByteTable`).

        Raises:
            ConfigError: If the plan names units the model does not have.
            ValueError: If the model was already compressed with a different plan.
        """
        plan = self._plan(plan)
        reference = self._reference(plan)
        kept = self.units.kept(plan) if not self.applied else {}
        rows = {name: _empty_row(name, plan.for_unit(name)) for name in self.units.layers}
        entries, offset = [], 0
        unowned = 0
        for ref in reference.entries:
            entry = dict(ref)
            layer = reference.owner.get(ref["name"])
            if layer is not None:
                self._predict_entry(entry, self.units.layers[layer], plan, kept.get(layer))
            entry["offset"] = offset
            offset += int(entry["length"])
            entries.append(entry)
            if layer is None:
                unowned += int(entry["length"])
            else:
                _add_to_row(rows[layer], entry)
        manifest = build_manifest(reference.metadata, entries, reference.skeleton, self.info)
        total = file_size(manifest)
        text = total - HEADER.size - DIGEST_SIZE - offset - reference.skeleton
        overhead = {
            "header": HEADER.size + DIGEST_SIZE,
            "manifest": text,
            "skeleton": reference.skeleton,
            "tensors": unowned,
        }
        overhead["total"] = sum(overhead.values())
        return ByteTable(list(rows.values()), overhead, total)

    # internals ---------------------------------------------------------------------------

    def _plan(self, plan: CompressionPlan | None) -> CompressionPlan:
        if self.applied is not None:
            if plan is not None and plan != self.applied:
                raise ValueError(
                    "the model was already compressed with another plan: predict the applied "
                    "model with plan=None (or its own plan), or the float model with this one"
                )
            return self.applied
        if plan is None:
            raise ValueError("a plan is needed to predict a model that is not compressed yet")
        self.units.check(plan)
        return plan

    def _reference(self, plan: CompressionPlan) -> _Reference:
        quantized = frozenset(n for n in self.units.layers if plan.for_unit(n).bits is not None)
        if quantized in self._references:
            return self._references[quantized]
        if self.applied is not None:
            model = self.model
        else:
            layers = {n: LayerPlan(bits=8 if n in quantized else None) for n in self.units.layers}
            model = apply_plan(self.model, CompressionPlan(layers), self.example)
        proto, bits, layer_names = export_for_artifact(model, self.spec, self.image_size)
        encoded = encode_artifact(proto, bits=bits, layers=layer_names, compress=False)
        manifest = encoded.manifest
        owner = _owners(proto, manifest["tensors"], layer_names, self.units, self.model)
        reference = _Reference(
            manifest["tensors"], manifest["metadata"], manifest["graph"]["length"], owner
        )
        self._references[quantized] = reference
        return reference

    def _predict_entry(
        self,
        entry: dict[str, Any],
        unit: LayerUnit,
        plan: CompressionPlan,
        kept: tuple[int, int] | None,
    ) -> None:
        """Rewrite a reference entry of ``unit``'s layer for ``plan`` (shape, nnz, bytes)."""
        layer_plan = plan.for_unit(unit.name)
        is_weight = entry["role"] == "weight" and len(entry["shape"]) >= 2
        shape = list(entry["shape"]) if kept is None else _kept_shape(entry, unit, kept, is_weight)
        count = math.prod(shape)
        pruned = count != int(entry["count"])
        if is_weight:
            full, zeros, levels = self._weight(unit.name, layer_plan)
            nnz = full - zeros if not pruned else count - round(zeros / max(1, full) * count)
            if levels is not None:
                entry.update(kind="int", bits=levels.bits, levels=levels.to_dict())
                entry["dtype"] = "int8"
        else:
            ref_nnz, ref_count = int(entry["nnz"]), max(1, int(entry["count"]))
            nnz = ref_nnz if not pruned else round(ref_nnz / ref_count * count)
        entry.update(shape=shape, count=count, nnz=nnz)
        if entry["kind"] == "int":
            levels = Levels.from_dict(entry["levels"])
            encoding, length = _int_size(count, nnz, levels)
        else:
            encoding, length = _raw_size(count, nnz, np.dtype(entry["numpy_dtype"]).itemsize)
        entry.update(encoding=encoding, compression="none", length=length)

    def _weight(self, name: str, plan: LayerPlan) -> tuple[int, int, Levels | None]:
        """Elements, zeros and levels of a layer's stored weight (unpruned layer, cached)."""
        key = (name, plan.bits, plan.sparsity)
        if key not in self._weights:
            self._weights[key] = _weight_stats(self.model.get_submodule(name), plan, self.applied)
        return self._weights[key]


def _weight_stats(
    module: nn.Module, plan: LayerPlan, applied: CompressionPlan | None
) -> tuple[int, int, Levels | None]:
    from satcompress.compress.quantize.qat import QuantWeightBiasInputOutputLayer, _quant_layer

    if applied is not None:
        if isinstance(module, QuantWeightBiasInputOutputLayer):
            values = module.quant_weight().int().detach()
            bits = int(module.quant_weight().bit_width)
            return _int_stats(values.numpy(), bits)
        weight = module.weight.detach()
        return weight.numel(), int((weight == 0).sum()), None
    from satcompress.compress.prune.unstructured import apply_magnitude, make_permanent
    from satcompress.compress.quantize.config import QATConfig

    layer = copy.deepcopy(module).eval()
    if plan.sparsity > 0:
        apply_magnitude({"layer": layer}, plan.sparsity)
        make_permanent(layer)
    if plan.bits is None:
        weight = layer.weight.detach()
        return weight.numel(), int((weight == 0).sum()), None
    quant = _quant_layer(layer, plan.bits, QATConfig(bits=8, epochs=0)).eval()
    with torch.no_grad():
        values = quant.quant_weight().int().detach().numpy()
    return _int_stats(values, plan.bits)


def _int_stats(values: np.ndarray, bits: int) -> tuple[int, int, Levels]:
    levels = Levels.for_values(values.astype(np.int16), bits, signed=True)
    return values.size, int((values == 0).sum()), levels


def _int_size(count: int, nnz: int, levels: Levels) -> tuple[str, int]:
    """What :func:`satcompress.runtime.pack.encode_ints` stores without LZMA."""
    options = []
    if levels.has_zero or nnz == count:
        options.append(("dense", packed_size(count, levels.bits)))
    options.append(("sparse", packed_size(count, 1) + packed_size(nnz, levels.nonzero_width)))
    return min(options, key=lambda o: o[1])


def _raw_size(count: int, nnz: int, itemsize: int) -> tuple[str, int]:
    """What :func:`satcompress.runtime.pack.encode_raw` stores without LZMA."""
    options = [("dense", count * itemsize)]
    if count and nnz < count:
        options.append(("sparse", packed_size(count, 1) + nnz * itemsize))
    return min(options, key=lambda o: o[1])


def _kept_shape(
    entry: dict[str, Any], unit: LayerUnit, kept: tuple[int, int], is_weight: bool
) -> list[int]:
    """The shape of a layer's tensor once its channels are pruned to ``kept``."""
    shape = [int(d) for d in entry["shape"]]
    out, per_group = unit.out_channels, unit.in_channels // unit.groups
    kept_out, kept_in = kept
    kept_per_group = 1 if unit.depthwise else kept_in // unit.groups
    if is_weight and shape[0] == out and shape[1] == per_group:
        return [kept_out, kept_per_group, *shape[2:]]
    if is_weight and len(shape) == 2 and shape[0] == per_group and shape[1] == out:
        return [kept_per_group, kept_out]  # a MatMul's transposed weight
    return [kept_out if d == out else d for d in shape]


def _owners(
    proto: onnx.ModelProto,
    entries: list[dict[str, Any]],
    layer_names: Mapping[str, str],
    units: PlanUnits,
    model: nn.Module,
) -> dict[str, str]:
    """The layer each stored tensor belongs to (tensors of no layer are left out).

    Quantized weights are named by the export; their scales and zero points by their
    ``DequantizeLinear``; other tensors by the module path in their consumer's ONNX node
    name (``/model/features/features.0/features.0.0/Conv`` -> ``features.0.0``), a batch
    norm counting as its convolution's.
    """
    from satcompress.compress.quantize.qat import conv_batch_norms

    norms = {norm: conv for conv, norm in conv_batch_norms(model).items()}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    owner: dict[str, str] = {}
    for entry in entries:
        layer = layer_names.get(entry["name"])
        if layer in units.layers:
            owner[entry["name"]] = layer
            for key in ("scale", "zero_point"):
                if entry.get(key):
                    owner[entry[key]] = layer
    for entry in entries:
        if entry["name"] in owner:
            continue
        for node in consumers.get(entry["name"], []):
            module = _module_of(node.name)
            module = norms.get(module, module)
            if module in units.layers:
                owner[entry["name"]] = module
                break
    return owner


def _module_of(node_name: str) -> str | None:
    """The PyTorch module of an exported node: ``/model/<scope>/.../<op>`` -> dotted name.

    Each scope is ``parent_attr.child_attr`` (or ``child_attr``): the last component is the
    child's attribute name.
    """
    parts = node_name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "model":
        return None
    return ".".join(part.rsplit(".", 1)[-1] for part in parts[1:-1])


def _applied_units(model: nn.Module) -> PlanUnits:
    """The layers of an already compressed model (no groups: its pruning is done)."""
    units = {}
    for name, layer in model.named_modules():
        if not name or not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        units[name] = layer_unit(name, layer)
    return PlanUnits(units, {})


def _empty_row(name: str, plan: LayerPlan) -> dict[str, Any]:
    return {
        "layer": name,
        "bits": plan.bits,
        "sparsity": plan.sparsity,
        "shape": None,
        "count": 0,
        "nnz": 0,
        "encoding": None,
        "weight": 0,
        "mask": 0,
        "scale": 0,
        "zero_point": 0,
        "bias": 0,
        "other": 0,
        "total": 0,
    }


def _add_to_row(row: dict[str, Any], entry: dict[str, Any]) -> None:
    length = int(entry["length"])
    role = entry["role"]
    if role == "weight" and len(entry["shape"]) >= 2:
        row.update(shape=entry["shape"], count=entry["count"], nnz=entry["nnz"])
        row["encoding"] = entry["encoding"]
        row["weight"] += length
        if entry["encoding"] == "sparse":
            row["mask"] += packed_size(int(entry["count"]), 1)
    elif role in ("scale", "zero_point") and int(entry["count"]) > 1:
        row[role] += length
    elif role == "bias" or int(entry["count"]) > 1:
        row["bias"] += length
    else:
        row["other"] += length
    row["total"] += length


def predict_bytes(
    model: nn.Module,
    plan: CompressionPlan | None,
    spec: InputSpec,
    image_size: tuple[int, int],
    *,
    info: Mapping[str, Any] | None = None,
) -> int:
    """Bytes of ``encode(apply_plan(model, plan), ...)`` without building it.

    Args:
        model: The float model (or a model ``apply_plan`` returned, with ``plan`` None or
            its own plan).
        plan: The plan.
        spec: The model's input spec.
        image_size: (height, width) of the images the artifact receives.
        info: The manifest description :func:`encode` will get.

    For many plans of one model build a :class:`BytePredictor` once instead.
    """
    return BytePredictor(model, spec, image_size, info=info).predict(plan)


def layer_byte_table(
    model: nn.Module,
    plan: CompressionPlan | None,
    spec: InputSpec,
    image_size: tuple[int, int],
    *,
    info: Mapping[str, Any] | None = None,
) -> ByteTable:
    """Predicted bytes per layer (weight codes, mask, scales, zero points, bias) and overhead.

    Arguments as :func:`predict_bytes`; see :class:`ByteTable` for the columns. For many plans
    of one model use ``BytePredictor(model, spec, image_size).table(plan)``.
    """
    return BytePredictor(model, spec, image_size, info=info).table(plan)
