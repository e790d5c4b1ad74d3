r"""Read a ``.satc`` artifact: verify it and rebuild its ONNX model (numpy and onnx only).

This is the reading half of the artifact format, here at the bottom of the package so
that the torch-free runtime (:mod:`satcompress.runtime`) can load a file on a device;
:mod:`satcompress.artifact.format` writes files and re-exports these names.

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
``bits``-bit codes (see :mod:`satcompress.runtime.pack`): 4-bit weights take half a byte
each, 2-bit a quarter, and pruned zeros only a mask bit. Other tensors are stored as their raw
bytes (zero-masked when sparse). ``stats`` gives ``bound_bytes`` = sum(params x bits) / 8
(float parameters at their own width; scales and zero points excluded) to compare with the
file size.

Loading (:func:`load_artifact`) checks magic, version, length and checksum before reading
anything, then rebuilds the ONNX model bit-exactly: low-bit weights come back as ``int8``
initializers of an int8 QDQ graph that ONNX Runtime runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from satcompress.card import CARD_FORMAT
from satcompress.runtime.pack import Levels, UnsupportedBitsError, decode_ints, decode_raw
from satcompress.runtime.saturation import make_saturation_safe
from satcompress.utils.io import atomic_write_bytes

if TYPE_CHECKING:
    import onnx

MAGIC = b"SATCART\x00"
FORMAT_VERSION = 1
FORMAT_NAME = "satcompress.artifact"
HEADER = struct.Struct("<8sHHIQ")
DIGEST_SIZE = 32

__all__ = [
    "DIGEST_SIZE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER",
    "MAGIC",
    "Artifact",
    "ArtifactError",
    "ChecksumError",
    "IncompatibleVersionError",
    "NotAnArtifactError",
    "TruncatedArtifactError",
    "UnsupportedBitsError",
    "artifact_format",
    "load_artifact",
    "manifest_card",
    "read_manifest",
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
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_from_string(self._skeleton())
        for entry in self.manifest["tensors"]:
            array = _decode_array(entry, self._payload)
            proto.graph.initializer.append(numpy_helper.from_array(array, entry["name"]))
        return proto

    def onnx_bytes(self) -> bytes:
        """The rebuilt ONNX model serialised, as ONNX Runtime loads it, without ``onnx``.

        The same model as :meth:`onnx_model` (``onnx.load_from_string`` of these bytes equals
        it), written straight in protobuf's wire format: the graph skeleton, then a second
        ``graph`` field holding only the initializers, which protobuf merges into the first
        (repeated fields concatenate). Importing ``onnx`` takes about a second on a small
        CPU (most of it in its ``ml_dtypes`` dependency), more than everything else a cold
        start does, hence this path for the device (:class:`satcompress.runtime.Runtime`).
        Tensors of a type this writer does not know (none that satcompress writes) or a
        big-endian machine fall back to :meth:`onnx_model`.

        Raises:
            ArtifactError: If a stored tensor does not decode to its declared shape.
        """
        entries = self.manifest["tensors"]
        if sys.byteorder != "little" or any(e["dtype"] not in _ONNX_DTYPES for e in entries):
            return self.onnx_model().SerializeToString()
        heads = [_tensor_head(e) for e in entries]
        messages = [len(h) + _raw_size(e) for h, e in zip(heads, entries, strict=True)]
        graph_len = sum(len(_key(_INITIALIZER) + _varint(n)) + n for n in messages)
        out = bytearray(self._skeleton())
        out += _key(_GRAPH) + _varint(graph_len)
        for entry, head, size in zip(entries, heads, messages, strict=True):
            raw = _decode_array(entry, self._payload).tobytes()
            if len(raw) != _raw_size(entry):
                raise ArtifactError(f"tensor {entry['name']} decodes to {len(raw)} bytes")
            out += _key(_INITIALIZER) + _varint(size) + head + raw
        return bytes(out)

    def _skeleton(self) -> bytes:
        graph = self.manifest["graph"]
        return lzma.decompress(_slice(self._payload, graph["offset"], graph["length"]))

    def save_onnx(self, path: str | Path, *, saturation_safe: bool = False) -> Path:
        """Write the rebuilt ONNX model (the int8 QDQ graph) to ``path`` (atomically).

        Args:
            path: Destination ``.onnx`` file.
            saturation_safe: Re-encode the 8-bit weights that ONNX Runtime's uint8 x int8
                kernels can saturate on x86 CPUs without VNNI as uint8 (same values, see
                :mod:`satcompress.runtime.saturation`), what
                :func:`satcompress.runtime.onnx.make_session` does there.
        """
        model = self.onnx_model()
        if saturation_safe:
            make_saturation_safe(model)
        return atomic_write_bytes(path, model.SerializeToString())

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


def manifest_card(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The model card of an artifact's manifest (rebuilt for artifacts of older versions)."""
    if isinstance(manifest.get("card"), Mapping):
        return dict(manifest["card"])
    meta = manifest.get("metadata") or {}
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "model": manifest.get("model", meta.get("model", "model")),
        "classes": manifest.get("classes", meta.get("classes")),
        "input": manifest.get("input_spec") or meta.get("input_spec") or {},
        "image_size": manifest.get("image_size"),
        "recipe": manifest.get("recipe", {}),
    }
    if manifest.get("dataset") and manifest.get("data_dir"):
        card["data"] = {
            "dataset": manifest["dataset"],
            "data_dir": manifest["data_dir"],
            "split_dir": manifest.get("split_dir"),
            "image_size": manifest.get("image_size"),
            "split_fingerprint": manifest.get("split_fingerprint"),
        }
    return card


def _decode_array(entry: Mapping[str, Any], payload: bytes) -> np.ndarray:
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
    return array


# protobuf wire format of the ONNX messages onnx_bytes writes (onnx/onnx.proto field numbers)
_GRAPH = 7  # ModelProto.graph
_INITIALIZER = 5  # GraphProto.initializer
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA = 1, 2, 8, 9  # TensorProto
#: the artifact's dtype names (lowercase ONNX names) -> (TensorProto.DataType, item bytes)
_ONNX_DTYPES = {
    "float": (1, 4), "uint8": (2, 1), "int8": (3, 1), "uint16": (4, 2), "int16": (5, 2),
    "int32": (6, 4), "int64": (7, 8), "bool": (9, 1), "float16": (10, 2), "double": (11, 8),
    "uint32": (12, 4), "uint64": (13, 8),
}  # fmt: skip


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint (negative int64 as two's complement, 10 bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire_type: int = 2) -> bytes:
    return _varint(field << 3 | wire_type)


def _raw_size(entry: Mapping[str, Any]) -> int:
    count = 1
    for dim in entry["shape"]:
        count *= int(dim)
    return count * _ONNX_DTYPES[entry["dtype"]][1]


def _tensor_head(entry: Mapping[str, Any]) -> bytes:
    """A TensorProto's fields before its raw data: dims, type, name, raw_data's key and size."""
    dims = b"".join(_key(_DIMS, 0) + _varint(int(d)) for d in entry["shape"])
    name = str(entry["name"]).encode("utf-8")
    return (
        dims
        + _key(_DATA_TYPE, 0) + _varint(_ONNX_DTYPES[entry["dtype"]][0])
        + _key(_NAME) + _varint(len(name)) + name
        + _key(_RAW_DATA) + _varint(_raw_size(entry))
    )  # fmt: skip


def _slice(payload: bytes, offset: int, length: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > len(payload):
        raise ArtifactError(f"manifest points outside the payload ({offset}+{length})")
    return payload[offset : offset + length]
