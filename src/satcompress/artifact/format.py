r"""The deployable artifact: one file holding a compressed model at its real precision.

The file layout (header, manifest, payload, SHA-256, optional Ed25519 signature block) and
the reading side live in the torch-free :mod:`satcompress.runtime.satc` (the device installs
only that); this module writes what it reads, and checks that it does: every file built
here is read back by :func:`~satcompress.runtime.satc.parse_artifact` (schema, graph)
before it is returned. Signing is :func:`satcompress.runtime.sign.sign_file`.

:func:`encode_artifact` builds the file in memory (an :class:`EncodedArtifact`);
:func:`write_artifact` writes it. :func:`file_size` gives a manifest's file size without the
payload, which :mod:`satcompress.artifact.encode` uses to predict sizes.

Loading (:func:`load_artifact`) checks magic, version, length, checksum (and a signature,
given a public key), then the manifest against its schema and the graph, before anything
is decoded; then it rebuilds the ONNX model bit-exactly: low-bit weights come back as
``int8`` initializers of an int8 QDQ graph that ONNX Runtime runs. The reading half lives
in :mod:`satcompress.runtime.satc` (torch-free, what a device installs); its names are
re-exported here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import lzma
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from satcompress.artifact import ARTIFACT_SUFFIX
from satcompress.runtime.pack import (
    Levels,
    UnsupportedBitsError,
    check_bits,
    encode_ints,
    encode_raw,
)
from satcompress.runtime.satc import (
    DIGEST_SIZE,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    Artifact,
    ArtifactError,
    ChecksumError,
    IncompatibleVersionError,
    ManifestError,
    NotAnArtifactError,
    Signature,
    SignatureError,
    TruncatedArtifactError,
    artifact_format,
    load_artifact,
    parse_artifact,
    read_manifest,
)
from satcompress.runtime.schema import DTYPES, manifest_stats
from satcompress.utils.io import atomic_write_bytes

_INT_TYPES = {onnx.TensorProto.INT8: True, onnx.TensorProto.UINT8: False}  # -> signed

__all__ = [
    "ARTIFACT_SUFFIX",
    "DIGEST_SIZE",
    "FORMAT_NAME",
    "HEADER",
    "FORMAT_VERSION",
    "MAGIC",
    "Artifact",
    "ArtifactError",
    "ChecksumError",
    "EncodedArtifact",
    "IncompatibleVersionError",
    "ManifestError",
    "NotAnArtifactError",
    "Signature",
    "SignatureError",
    "TruncatedArtifactError",
    "UnsupportedBitsError",
    "artifact_format",
    "build_manifest",
    "encode_artifact",
    "file_size",
    "load_artifact",
    "read_manifest",
    "write_artifact",
]


@dataclasses.dataclass
class EncodedArtifact:
    """An artifact built in memory (see :func:`encode_artifact`).

    Attributes:
        data: The file's bytes.
        manifest: Its manifest.
    """

    data: bytes
    manifest: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        """Bytes the file will take."""
        return len(self.data)

    def write(self, path: str | Path) -> Path:
        """Write the file (atomically) and return its path."""
        return atomic_write_bytes(path, self.data)


def encode_artifact(
    model: onnx.ModelProto | str | Path,
    *,
    bits: Mapping[str, int] | None = None,
    layers: Mapping[str, str] | None = None,
    info: Mapping[str, Any] | None = None,
    compress: bool = True,
) -> EncodedArtifact:
    """Build an artifact in memory from an ONNX model (arguments as :func:`write_artifact`).

    Raises:
        UnsupportedBitsError: If a bit-width is not 1..8 or a tensor's values do not fit it.
        ArtifactError: If an initializer has a type the artifact cannot store exactly, or
            the reader would refuse the file (a ``ManifestError`` naming what).
    """
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    bits = dict(bits or {})
    unknown = sorted(set(bits) - {t.name for t in proto.graph.initializer})
    if unknown:
        raise ArtifactError(f"bits given for tensors not in the model: {', '.join(unknown[:5])}")
    uses = _initializer_uses(proto)
    payload = bytearray()
    entries = []
    for tensor in proto.graph.initializer:
        entry, data = _encode_tensor(tensor, bits, uses, dict(layers or {}), compress)
        entry.update(offset=len(payload), length=len(data))
        payload += data
        entries.append(entry)
    skeleton = _skeleton_bytes(proto)
    payload += skeleton
    metadata = {p.key: _maybe_json(p.value) for p in proto.metadata_props}
    manifest = build_manifest(metadata, entries, len(skeleton), info)
    data = _assemble(manifest, bytes(payload))
    parse_artifact(data, "the artifact being written")  # never write what readers refuse
    return EncodedArtifact(data, manifest)


def build_manifest(
    metadata: Mapping[str, Any],
    entries: list[dict[str, Any]],
    skeleton_length: int,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a model with this ONNX ``metadata`` and these tensor ``entries``.

    Args:
        metadata: The ONNX model's metadata (JSON values decoded).
        entries: One entry per stored tensor, in payload order, offsets and lengths set.
        skeleton_length: Bytes of the LZMA'd graph skeleton (stored after the tensors).
        info: The description stored at the top level.
    """
    offset = sum(int(t["length"]) for t in entries)
    graph = {"offset": offset, "length": skeleton_length, "compression": "lzma"}
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(info or {}),
        "metadata": dict(metadata),
        "graph": graph,
        "stats": manifest_stats(entries),
        "tensors": entries,
    }


def file_size(manifest: Mapping[str, Any]) -> int:
    """Bytes of the file holding ``manifest``: header, manifest JSON, payload, checksum."""
    text = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    payload = int(manifest["graph"]["offset"]) + int(manifest["graph"]["length"])
    return HEADER.size + len(text) + payload + DIGEST_SIZE


def write_artifact(
    model: onnx.ModelProto | str | Path,
    path: str | Path,
    *,
    bits: Mapping[str, int] | None = None,
    layers: Mapping[str, str] | None = None,
    info: Mapping[str, Any] | None = None,
    compress: bool = True,
) -> dict[str, Any]:
    """Write an ONNX model as a deployable artifact (atomically).

    Args:
        model: The ONNX model (or its file): an fp32 graph, a QDQ graph from
            ``quantize_static``, or a QAT graph whose ``int8`` weights hold low-bit values.
        path: Destination file (conventionally ``*.satc``).
        bits: Bit-width of ``int8``/``uint8`` initializers by name (default 8); values must
            fit (e.g. 2-bit weights in ``[-2, 1]`` or ``[-1, 1]``, 1-bit in ``{-1, +1}``).
        layers: The model layer (e.g. PyTorch module name) of initializers, for ``inspect``.
        info: Description stored in the manifest (model, classes, input_spec, recipe, ...);
            the ONNX metadata is added under ``metadata``.
        compress: Allow LZMA over each stored stream when it is smaller.

    Returns:
        The manifest written (with ``size_bytes`` of the file added).

    Raises:
        UnsupportedBitsError: If a bit-width is not 1..8 or a tensor's values do not fit it.
        ArtifactError: If an initializer has a type the artifact cannot store exactly.
    """
    encoded = encode_artifact(model, bits=bits, layers=layers, info=info, compress=compress)
    encoded.write(path)
    return {**encoded.manifest, "size_bytes": encoded.size_bytes}


def _assemble(manifest: dict[str, Any], payload: bytes) -> bytes:
    text = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    body = HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(text), len(payload)) + text + payload
    return body + hashlib.sha256(body).digest()


def _skeleton_bytes(proto: onnx.ModelProto) -> bytes:
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)
    del skeleton.graph.initializer[:]
    return lzma.compress(skeleton.SerializeToString(), preset=9)


def _initializer_uses(proto: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in proto.graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, index))
    return uses


def _role(uses: list[tuple[onnx.NodeProto, int]], ndim: int) -> str:
    for node, index in uses:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return {0: "weight", 1: "scale", 2: "zero_point"}[index]
        if node.op_type in ("MatMulInteger", "ConvInteger") and index >= 2:
            return "zero_point"
        if node.op_type in ("Conv", "Gemm", "ConvInteger", "MatMulInteger", "MatMul"):
            return "bias" if index == 2 else "weight"
        if node.op_type == "Add" and ndim == 1:
            return "bias"
    return "weight" if ndim >= 2 else "other"


def _dq_params(
    uses: list[tuple[onnx.NodeProto, int]],
    all_uses: Mapping[str, list[tuple[onnx.NodeProto, int]]],
) -> dict[str, Any]:
    """Scale, zero point, axis and consuming layer of a tensor read by DequantizeLinear."""
    for node, index in uses:
        if node.op_type == "DequantizeLinear" and index == 0:
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            consumers = all_uses.get(node.output[0], [])
            return {
                "scale": node.input[1],
                "zero_point": node.input[2] if len(node.input) > 2 else None,
                "axis": axis,
                "layer": consumers[0][0].name if consumers else node.name,
            }
    return {}


def _encode_tensor(
    tensor: onnx.TensorProto,
    bits: Mapping[str, int],
    all_uses: Mapping[str, list[tuple[onnx.NodeProto, int]]],
    layers: Mapping[str, str],
    compress: bool,
) -> tuple[dict[str, Any], bytes]:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ArtifactError(f"initializer {tensor.name} uses external data; load it first")
    dtype = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
    if dtype not in DTYPES:
        raise ArtifactError(
            f"initializer {tensor.name} has ONNX type {dtype.upper()}, which the artifact "
            f"cannot store (it stores {', '.join(DTYPES)})"
        )
    array = numpy_helper.to_array(tensor)
    uses = all_uses.get(tensor.name, [])
    entry: dict[str, Any] = {
        "name": tensor.name,
        "dtype": dtype,
        "shape": list(array.shape),
        "role": _role(uses, array.ndim),
        **_dq_params(uses, all_uses),
    }
    entry.setdefault("layer", uses[0][0].name if uses else "")
    if tensor.name in layers:
        entry["layer"] = layers[tensor.name]
    if tensor.data_type in _INT_TYPES:
        width = check_bits(bits.get(tensor.name, 8))
        try:
            levels = Levels.for_values(array, width, signed=_INT_TYPES[tensor.data_type])
        except UnsupportedBitsError as err:
            raise UnsupportedBitsError(f"tensor {tensor.name}: {err}") from err
        encoded = encode_ints(array, levels, allow_lzma=compress)
        entry.update(kind="int", bits=width, levels=levels.to_dict())
    else:
        _check_round_trip(tensor, array)
        encoded = encode_raw(array, allow_lzma=compress)
        entry.update(kind="raw", bits=array.dtype.itemsize * 8, numpy_dtype=array.dtype.str)
    entry.update(encoded.describe())
    return entry, encoded.data


def _check_round_trip(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    rebuilt = numpy_helper.from_array(array, tensor.name)
    if rebuilt.data_type != tensor.data_type:
        raise ArtifactError(
            f"initializer {tensor.name} has ONNX type "
            f"{onnx.TensorProto.DataType.Name(tensor.data_type)}, which the artifact cannot "
            "store exactly"
        )


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
