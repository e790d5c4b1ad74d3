r"""The deployable artifact: one file holding a compressed model at its real precision.

File layout (integers little-endian)::

    offset  size  field
    0       8     magic  b"SATCART\0"
    8       2     format version (uint16, currently 1)
    10      2     flags (uint16, reserved, 0)
    12      4     manifest length M (uint32)
    16      8     payload length P (uint64)
    24      M     manifest: UTF-8 JSON
    24+M    P     payload: the ONNX graph skeleton and every tensor, each at an offset
    24+M+P  32    SHA-256 of all the bytes before it

The manifest (``format: satcompress.artifact``) holds the model's description (name,
classes, input spec, recipe, the ONNX metadata), where the ONNX graph skeleton lies in the
payload (the ONNX model with its initializers removed, LZMA-compressed), and one entry per
initializer, in graph order: name, ONNX dtype, shape, role (``weight``, ``bias``, ``scale``,
``zero_point``, ``other``), the consuming layer, its quantization (``bits``, integer range,
scale/zero-point tensor names and axis) and storage (``encoding`` dense/sparse,
``compression`` none/lzma, ``nnz``, offset, length). ``int8``/``uint8`` tensors are stored as
``bits``-bit codes (see :mod:`satcompress.artifact.pack`): 4-bit weights take half a byte
each, 2-bit a quarter, and pruned zeros only a mask bit. Other tensors are stored as their raw
bytes (zero-masked when sparse). ``stats`` gives ``bound_bytes`` = sum(params x bits) / 8
(float parameters at their own width; scales and zero points excluded) to compare with the
file size.

:func:`encode_artifact` builds the file in memory (an :class:`EncodedArtifact`);
:func:`write_artifact` writes it. :func:`file_size` gives a manifest's file size without the
payload, which :mod:`satcompress.artifact.encode` uses to predict sizes.

Loading (:func:`load_artifact`) checks magic, version, length and checksum before reading
anything, then rebuilds the ONNX model bit-exactly: low-bit weights come back as ``int8``
initializers of an int8 QDQ graph that ONNX Runtime runs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import lzma
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from satcompress.artifact import ARTIFACT_SUFFIX
from satcompress.artifact.pack import (
    Levels,
    UnsupportedBitsError,
    check_bits,
    decode_ints,
    decode_raw,
    encode_ints,
    encode_raw,
)
from satcompress.utils.io import atomic_write_bytes

MAGIC = b"SATCART\x00"
FORMAT_VERSION = 1
FORMAT_NAME = "satcompress.artifact"
HEADER = struct.Struct("<8sHHIQ")
DIGEST_SIZE = 32
_INT_TYPES = {onnx.TensorProto.INT8: True, onnx.TensorProto.UINT8: False}  # -> signed
_NOT_PARAMS = ("scale", "zero_point")

__all__ = [
    "ARTIFACT_SUFFIX",
    "FORMAT_VERSION",
    "MAGIC",
    "Artifact",
    "ArtifactError",
    "ChecksumError",
    "EncodedArtifact",
    "IncompatibleVersionError",
    "NotAnArtifactError",
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


class ArtifactError(ValueError):
    """An artifact file cannot be read; the message says why."""


class NotAnArtifactError(ArtifactError):
    """The file does not start with the artifact magic bytes."""


class TruncatedArtifactError(ArtifactError):
    """The file is shorter than its header says (an interrupted copy or download)."""


class ChecksumError(ArtifactError):
    """The SHA-256 checksum does not match: the file was altered or corrupted."""


class IncompatibleVersionError(ArtifactError):
    """The file was written in a format version this satcompress cannot read."""


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
        ArtifactError: If an initializer has a type the artifact cannot store exactly.
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
    return EncodedArtifact(_assemble(manifest, bytes(payload)), manifest)


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
        "stats": _stats(entries),
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


@dataclasses.dataclass
class Artifact:
    """A verified artifact file.

    Attributes:
        path: The file.
        manifest: Its manifest (see the module docstring).
        size_bytes: Bytes on disk.
    """

    path: Path
    manifest: dict[str, Any]
    size_bytes: int
    _payload: bytes = dataclasses.field(repr=False, default=b"")

    def onnx_model(self) -> onnx.ModelProto:
        """Rebuild the ONNX model, bit-exact to the one written.

        Raises:
            ArtifactError: If a stored tensor does not decode to its declared shape.
        """
        graph = self.manifest["graph"]
        skeleton = _slice(self._payload, graph["offset"], graph["length"])
        proto = onnx.load_from_string(lzma.decompress(skeleton))
        for entry in self.manifest["tensors"]:
            proto.graph.initializer.append(_decode_tensor(entry, self._payload))
        return proto

    def save_onnx(self, path: str | Path) -> Path:
        """Write the rebuilt ONNX model to ``path`` (atomically)."""
        return atomic_write_bytes(path, self.onnx_model().SerializeToString())

    @property
    def bound_bytes(self) -> float:
        """sum(params x bits) / 8 of the stored model."""
        return float(self.manifest["stats"]["bound_bytes"])

    def layers(self) -> list[dict[str, Any]]:
        """Per stored tensor: name, layer, role, shape, bits, sparsity, stored bytes."""
        rows = []
        for t in self.manifest["tensors"]:
            count = max(1, int(t["count"]))
            rows.append(
                {
                    "name": t["name"],
                    "layer": t.get("layer", ""),
                    "role": t["role"],
                    "dtype": t["dtype"],
                    "shape": t["shape"],
                    "bits": t["bits"],
                    "sparsity": round(1 - int(t["nnz"]) / count, 6),
                    "encoding": t["encoding"] + ("+lzma" if t["compression"] == "lzma" else ""),
                    "bytes": t["length"],
                }
            )
        return rows


def load_artifact(path: str | Path) -> Artifact:
    """Open and verify an artifact file (magic, version, length, SHA-256).

    Raises:
        FileNotFoundError: If the file does not exist.
        NotAnArtifactError: If it is not an artifact.
        IncompatibleVersionError: If its format version is not this one's.
        TruncatedArtifactError: If it is shorter than its header says.
        ChecksumError: If its bytes were altered.
        ArtifactError: If its manifest is unreadable or it has trailing bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no artifact file at {path}")
    blob = path.read_bytes()
    manifest_len, payload_len = _check_header(blob, path)
    end = HEADER.size + manifest_len + payload_len
    if len(blob) < end + DIGEST_SIZE:
        raise TruncatedArtifactError(
            f"{path} is truncated: {len(blob)} bytes, its header announces {end + DIGEST_SIZE} "
            "(an interrupted copy or download?)"
        )
    if len(blob) > end + DIGEST_SIZE:
        raise ArtifactError(
            f"{path} has {len(blob) - end - DIGEST_SIZE} unexpected bytes after its checksum"
        )
    if hashlib.sha256(blob[:end]).digest() != blob[end:]:
        raise ChecksumError(
            f"{path} failed its SHA-256 check: the file was altered or corrupted; "
            "re-export or re-copy it"
        )
    manifest = _parse_manifest(blob[HEADER.size : HEADER.size + manifest_len], path)
    return Artifact(path, manifest, len(blob), blob[HEADER.size + manifest_len : end])


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The verified manifest of an artifact file (see :func:`load_artifact` for errors)."""
    return load_artifact(path).manifest


def artifact_format(manifest: Mapping[str, Any]) -> str:
    """The record's ``format`` of an artifact: ``artifact-int8``, ``artifact-int2``, ...

    With several weight bit-widths (e.g. 8-bit first and last layers) the width holding most
    weights names it, with ``-mixed`` appended; ``artifact-fp32`` when nothing is quantized.
    """
    counts: dict[int, int] = {}
    for t in manifest["tensors"]:
        if t["role"] == "weight" and t["kind"] == "int":
            counts[int(t["bits"])] = counts.get(int(t["bits"]), 0) + int(t["count"])
    if not counts:
        return "artifact-fp32"
    main = max(counts, key=counts.__getitem__)
    return f"artifact-int{main}" + ("-mixed" if len(counts) > 1 else "")


def _check_header(blob: bytes, path: Path) -> tuple[int, int]:
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        if len(blob) < len(MAGIC) and MAGIC.startswith(blob):
            raise TruncatedArtifactError(f"{path} is truncated ({len(blob)} bytes)")
        raise NotAnArtifactError(
            f"{path} is not a satcompress artifact (it does not start with {MAGIC!r})"
        )
    if len(blob) < HEADER.size:
        raise TruncatedArtifactError(f"{path} is truncated inside its header ({len(blob)} bytes)")
    _, version, _flags, manifest_len, payload_len = HEADER.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise IncompatibleVersionError(
            f"{path} is artifact format version {version}; this satcompress reads version "
            f"{FORMAT_VERSION} only (re-export it with this version)"
        )
    return manifest_len, payload_len


def _parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} has an unreadable manifest: {err}") from err
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise IncompatibleVersionError(
            f"{path} manifest is {manifest.get('format')} version {manifest.get('version')}, "
            f"expected {FORMAT_NAME} version {FORMAT_VERSION}"
        )
    return manifest


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
    array = numpy_helper.to_array(tensor)
    uses = all_uses.get(tensor.name, [])
    entry: dict[str, Any] = {
        "name": tensor.name,
        "dtype": onnx.TensorProto.DataType.Name(tensor.data_type).lower(),
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


def _decode_tensor(entry: Mapping[str, Any], payload: bytes) -> onnx.TensorProto:
    data = _slice(payload, entry["offset"], entry["length"])
    shape = tuple(int(d) for d in entry["shape"])
    try:
        if entry["kind"] == "int":
            values = decode_ints(data, Levels.from_dict(entry["levels"]), entry)
            dtype = np.int8 if entry["dtype"] == "int8" else np.uint8
            array = values.astype(dtype)
        else:
            array = decode_raw(data, np.dtype(entry["numpy_dtype"]), entry)
        array = array.reshape(shape)
    except (ValueError, KeyError) as err:
        raise ArtifactError(f"tensor {entry.get('name')} cannot be decoded: {err}") from err
    return numpy_helper.from_array(array, entry["name"])


def _slice(payload: bytes, offset: int, length: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > len(payload):
        raise ArtifactError(f"manifest points outside the payload ({offset}+{length})")
    return payload[offset : offset + length]


def _stats(entries: list[dict[str, Any]]) -> dict[str, Any]:
    params = [t for t in entries if t["role"] not in _NOT_PARAMS and t["dtype"] != "int64"]
    bound_bits = sum(int(t["count"]) * int(t["bits"]) for t in params)
    quantized = [t for t in params if t["kind"] == "int"]
    return {
        "params": sum(int(t["count"]) for t in params),
        "quantized_params": sum(int(t["count"]) for t in quantized),
        "nonzero_params": sum(int(t["nnz"]) for t in params),
        "bound_bytes": bound_bits / 8,
        "tensor_bytes": sum(int(t["length"]) for t in entries),
        "weight_bits": sorted({int(t["bits"]) for t in quantized if t["role"] == "weight"}),
    }


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
