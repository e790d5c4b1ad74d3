r"""Read a ``.satc`` artifact: verify it and rebuild its ONNX model (numpy and onnx only).

This is the reading half of the artifact format, here at the bottom of the package so
that the torch-free runtime (:mod:`satcompress.runtime`) can load a file on a device;
:mod:`satcompress.artifact.format` writes files and re-exports these names.

File layout (integers little-endian)::

    offset     size  field
    0          8     magic  b"SATCART\0"
    8          2     format version (uint16, currently 1)
    10         2     flags (uint16): bit 0 = signed (a signature block follows), others 0
    12         4     manifest length M (uint32)
    16         8     payload length P (uint64)
    24         M     manifest: UTF-8 JSON
    24+M       P     payload: the ONNX graph skeleton and every tensor, each at an offset
    24+M+P     32    SHA-256 of all the bytes before it
    56+M+P     112   only if flags bit 0: the signature block (below)

Signature block (optional, :mod:`satcompress.runtime.sign` writes and checks it)::

    offset  size  field
    0       8     magic  b"SATCSIG\0"
    8       2     signature block version (uint16, 1)
    10      2     algorithm (uint16): 1 = Ed25519
    12      4     reserved (uint32, 0)
    16      32    key id: SHA-256 of the signer's raw 32-byte Ed25519 public key
    48      64    Ed25519 signature of every byte of the file before this block (header
                  with its signed flag, manifest, payload and SHA-256)

The private key never enters the file; the key id only says which public key verifies it.
An unsigned file (flags 0, no block) is byte for byte what earlier versions wrote, and they
read it; they refuse a signed one (bytes after the checksum). Signing sets the flag, so
the SHA-256 of a signed file covers it: a stripped signature block reads as truncated.

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

Loading (:func:`load_artifact`) validates before it trusts: magic, version, flags, length
and SHA-256; the signature with a public key given; the manifest against its versioned
schema (:mod:`satcompress.runtime.schema`); the graph skeleton against the manifest's
tensors (:mod:`satcompress.runtime.graphcheck`). Only then is anything decoded: the ONNX
model is rebuilt bit-exactly (low-bit weights come back as ``int8`` initializers of an
int8 QDQ graph that ONNX Runtime runs). Every refusal is an :class:`ArtifactError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from satcompress.card import CARD_FORMAT
from satcompress.runtime.errors import (
    ArtifactError,
    ChecksumError,
    IncompatibleVersionError,
    ManifestError,
    NotAnArtifactError,
    SignatureError,
    TruncatedArtifactError,
)
from satcompress.runtime.graphcheck import check_graph
from satcompress.runtime.pack import (
    Levels,
    UnsupportedBitsError,
    decode_ints,
    decode_raw,
    decompress_lzma,
)
from satcompress.runtime.saturation import make_saturation_safe
from satcompress.runtime.schema import DTYPES, check_manifest
from satcompress.utils.io import atomic_write_bytes

if TYPE_CHECKING:
    import onnx

MAGIC = b"SATCART\x00"
FORMAT_VERSION = 1
FORMAT_NAME = "satcompress.artifact"
HEADER = struct.Struct("<8sHHIQ")
DIGEST_SIZE = 32
#: Header flag: the file ends with a signature block.
FLAG_SIGNED = 0x0001
SIGNATURE_MAGIC = b"SATCSIG\x00"
SIGNATURE_VERSION = 1
SIGNATURE_BLOCK = struct.Struct("<8sHHI32s64s")
SIGNATURE_SIZE = SIGNATURE_BLOCK.size  # 112
#: Signature algorithms by their number in the block.
SIGNATURE_ALGORITHMS = {1: "ed25519"}
#: Largest graph skeleton (decompressed) read: the ONNX model minus its tensors.
MAX_SKELETON_BYTES = 256 * 2**20

__all__ = [
    "DIGEST_SIZE",
    "FLAG_SIGNED",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER",
    "MAGIC",
    "SIGNATURE_SIZE",
    "Artifact",
    "ArtifactError",
    "ChecksumError",
    "IncompatibleVersionError",
    "ManifestError",
    "NotAnArtifactError",
    "Signature",
    "SignatureError",
    "TruncatedArtifactError",
    "UnsupportedBitsError",
    "artifact_format",
    "load_artifact",
    "manifest_card",
    "parse_artifact",
    "read_manifest",
]


@dataclasses.dataclass(frozen=True)
class Signature:
    """The signature block of a signed artifact.

    Attributes:
        algorithm: ``ed25519``.
        key_id: Hex SHA-256 of the signer's raw public key.
        verified: Whether it was checked against a public key (and held).
        value: The signature bytes.
    """

    algorithm: str
    key_id: str
    verified: bool = False
    value: bytes = dataclasses.field(default=b"", repr=False)

    def describe(self) -> str:
        """One line: algorithm, short key id and whether it was verified."""
        state = "verified" if self.verified else "not verified (no public key given)"
        return f"signed ({self.algorithm}, key id {self.key_id[:16]}), {state}"


@dataclasses.dataclass
class Artifact:
    """A verified artifact file.

    Attributes:
        path: The file.
        manifest: Its manifest (see the module docstring), checked against its schema.
        size_bytes: Bytes on disk.
        signature: Its signature block (None: unsigned); ``verified`` if a key checked it.
    """

    path: Path
    manifest: dict[str, Any]
    size_bytes: int
    _payload: bytes = dataclasses.field(repr=False, default=b"")
    _skeleton_bytes: bytes = dataclasses.field(repr=False, default=b"")
    signature: Signature | None = None
    _ranges: dict[str, tuple[int, int]] | None = dataclasses.field(repr=False, default=None)

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
        return self._skeleton_bytes or _read_skeleton(self.manifest, self._payload)

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

    def value_ranges(self) -> dict[str, tuple[int, int]]:
        """Smallest and largest value of each integer tensor (``kind`` int), decoded.

        What the values need can be less than their storage's ``bits``: PTQ's
        ``reduce_range`` weights lie in [-64, 63] (7 bits) in 8-bit codes.

        Raises:
            ArtifactError: If a stored tensor does not decode to its declared shape.
        """
        if self._ranges is None:
            self._ranges = {}
            for entry in self.manifest["tensors"]:
                if entry["kind"] == "int" and entry["count"]:
                    values = _decode_array(entry, self._payload)
                    self._ranges[entry["name"]] = (int(values.min()), int(values.max()))
        return dict(self._ranges)

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


def load_artifact(
    path: str | Path, *, public_key: Any = None, require_signature: bool = False
) -> Artifact:
    """Open, verify and validate an artifact file; nothing in it is trusted before that.

    Order: magic, version, flags, length, SHA-256, the signature (with ``public_key``),
    the manifest's schema and the graph skeleton against the manifest (see the module
    docstring). Without ``public_key`` a signed file is read like an unsigned one.

    Args:
        path: The ``.satc`` file.
        public_key: An Ed25519 public key (PEM or OpenSSH file, its bytes, or the key): a
            signed file must verify with it (:mod:`satcompress.runtime.sign`, needs the
            ``cryptography`` package). An unsigned file is accepted unless
            ``require_signature``; its :attr:`Artifact.signature` is None.
        require_signature: Refuse unsigned files (needs ``public_key``).

    Raises:
        FileNotFoundError: If the file does not exist.
        NotAnArtifactError: If it is not an artifact.
        IncompatibleVersionError: If its format version (or a header flag) is unknown here.
        TruncatedArtifactError: If it is shorter than its header says.
        ChecksumError: If its bytes were altered.
        SignatureError: If its signature is malformed, missing while required, made by
            another key or does not verify.
        ManifestError: If its manifest breaks the schema or disagrees with its payload or
            graph (the message names the key).
        ArtifactError: If its manifest is unreadable or it has trailing bytes.
        ValueError: If ``require_signature`` is given without ``public_key``, or the key
            file is not an Ed25519 public key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no artifact file at {path}")
    return parse_artifact(
        path.read_bytes(), path, public_key=public_key, require_signature=require_signature
    )


def parse_artifact(
    blob: bytes, path: str | Path, *, public_key: Any = None, require_signature: bool = False
) -> Artifact:
    """:func:`load_artifact` of a file's bytes (``path`` names it in messages)."""
    if require_signature and public_key is None:
        raise ValueError("requiring a signature needs the public key to verify it with")
    path = Path(path)
    manifest_len, payload_len, flags = _check_header(blob, path)
    end = HEADER.size + manifest_len + payload_len + DIGEST_SIZE
    _check_size(blob, end, flags, path)
    if hashlib.sha256(blob[: end - DIGEST_SIZE]).digest() != blob[end - DIGEST_SIZE : end]:
        raise ChecksumError(
            f"{path} failed its SHA-256 check: the file was altered or corrupted; "
            "re-export or re-copy it"
        )
    signature = _read_signature(blob, end, path) if flags & FLAG_SIGNED else None
    if public_key is not None:
        from satcompress.runtime.sign import check_signature

        signature = check_signature(
            blob[:end], signature, public_key, require=require_signature, where=path
        )
    manifest = _parse_manifest(blob[HEADER.size : HEADER.size + manifest_len], path)
    payload = blob[HEADER.size + manifest_len : end - DIGEST_SIZE]
    try:
        check_manifest(manifest, len(payload))
        skeleton = _read_skeleton(manifest, payload)
        check_graph(skeleton, manifest["tensors"])
    except ManifestError as err:
        raise type(err)(f"{path}: {err}") from None
    return Artifact(path, manifest, len(blob), payload, skeleton, signature)


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


def _check_header(blob: bytes, path: Path) -> tuple[int, int, int]:
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        if len(blob) < len(MAGIC) and MAGIC.startswith(blob):
            raise TruncatedArtifactError(f"{path} is truncated ({len(blob)} bytes)")
        raise NotAnArtifactError(
            f"{path} is not a satcompress artifact (it does not start with {MAGIC!r})"
        )
    if len(blob) < HEADER.size:
        raise TruncatedArtifactError(f"{path} is truncated inside its header ({len(blob)} bytes)")
    _, version, flags, manifest_len, payload_len = HEADER.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise IncompatibleVersionError(
            f"{path} is artifact format version {version}; this satcompress reads version "
            f"{FORMAT_VERSION} only (re-export it with this version)"
        )
    if flags & ~FLAG_SIGNED:
        raise IncompatibleVersionError(
            f"{path} has header flags {flags:#06x}; this satcompress knows only "
            f"{FLAG_SIGNED:#06x} (signed)"
        )
    return manifest_len, payload_len, flags


def _check_size(blob: bytes, end: int, flags: int, path: Path) -> None:
    """The file's length against its header's (``end``: the end of the checksum)."""
    if len(blob) < end:
        raise TruncatedArtifactError(
            f"{path} is truncated: {len(blob)} bytes, its header announces {end} "
            "(an interrupted copy or download?)"
        )
    block = SIGNATURE_SIZE if flags & FLAG_SIGNED else 0
    if len(blob) < end + block:
        raise TruncatedArtifactError(
            f"{path} is truncated: its header says it is signed, but {len(blob) - end} of "
            f"the signature block's {SIGNATURE_SIZE} bytes follow the checksum"
        )
    if len(blob) > end + block:
        after = "signature block" if block else "checksum"
        raise ArtifactError(
            f"{path} has {len(blob) - end - block} unexpected bytes after its {after}"
        )


def _read_signature(blob: bytes, end: int, path: Path) -> Signature:
    magic, version, algorithm, reserved, key_id, value = SIGNATURE_BLOCK.unpack_from(blob, end)
    if magic != SIGNATURE_MAGIC or reserved != 0:
        raise SignatureError(f"{path}: its signature block is malformed")
    if version != SIGNATURE_VERSION or algorithm not in SIGNATURE_ALGORITHMS:
        raise SignatureError(
            f"{path}: its signature block is version {version}, algorithm {algorithm}; this "
            f"satcompress reads version {SIGNATURE_VERSION}, algorithm 1 (Ed25519)"
        )
    return Signature(SIGNATURE_ALGORITHMS[algorithm], key_id.hex(), value=value)


def _read_skeleton(manifest: Mapping[str, Any], payload: bytes) -> bytes:
    """The decompressed ONNX graph skeleton (at most :data:`MAX_SKELETON_BYTES`)."""
    graph = manifest["graph"]
    data = _slice(payload, graph["offset"], graph["length"])
    try:
        return decompress_lzma(data, MAX_SKELETON_BYTES)
    except ValueError as err:
        raise ManifestError(f"manifest.graph: the graph skeleton cannot be read: {err}") from None


def _parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ArtifactError(f"{path} has an unreadable manifest: {err}") from err
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: manifest: expected object, got {type(manifest).__name__}")
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
    except (ValueError, KeyError, MemoryError) as err:
        raise ArtifactError(f"tensor {entry.get('name')} cannot be decoded: {err}") from err
    return array


# protobuf wire format of the ONNX messages onnx_bytes writes (onnx/onnx.proto field numbers)
_GRAPH = 7  # ModelProto.graph
_INITIALIZER = 5  # GraphProto.initializer
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA = 1, 2, 8, 9  # TensorProto
#: the artifact's dtype names (lowercase ONNX names) -> (TensorProto.DataType, item bytes)
_ONNX_DTYPES = {name: (code, int(np_code[1:])) for name, (code, np_code) in DTYPES.items()}


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
