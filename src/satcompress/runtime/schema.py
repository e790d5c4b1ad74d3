"""The manifest's schema, version 1: what a ``.satc`` manifest must hold before it is used.

:func:`check_manifest` runs in two steps, both before any tensor is decoded or anything
reaches ONNX Runtime (:func:`satcompress.runtime.satc.load_artifact` calls it):

1. **Structure**: :data:`MANIFEST_SCHEMA`, a JSON Schema (draft 2020-12) document: required
   keys, types, enumerations (dtypes, roles, encodings), integer ranges (bits 1..64, shapes,
   offsets, lengths, counts bounded so no number sized by the manifest can request an
   absurd allocation). Keys it does not name are allowed (a newer writer may add some);
   every key the reading code uses is named.
2. **Meaning**: what JSON Schema cannot say: ``count`` is the product of ``shape``, ``nnz``
   at most ``count``, ``dtype``, ``kind``, ``numpy_dtype``, ``bits`` and ``levels`` agree,
   every tensor lies inside the payload with the stored length its encoding implies, the
   decoded model fits ONNX's 2 GiB, names are unique, ``stats`` is what the tensors give.

The graph skeleton is checked against the tensors next (:mod:`satcompress.runtime.graphcheck`).
Every violation raises :class:`~satcompress.runtime.errors.ManifestError` (an
``ArtifactError``) whose message starts with the key, e.g.
``manifest.tensors[3].dtype: expected one of 'float', 'uint8', ..., got 'float128'``.

Why not the ``jsonschema`` package (installed with the full toolkit): the device installs
only numpy, onnx, ONNX Runtime and Pillow (``runtime/pyproject.toml``), and ``jsonschema``
would add four packages, one of them compiled (``rpds-py``), for the few keywords used
here; half of the rules (step 2) are beyond JSON Schema anyway. The interpreter below
(:func:`validate`) covers exactly the keywords :data:`MANIFEST_SCHEMA` uses, and the tests
check that ``jsonschema`` accepts the document as a schema and agrees with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from satcompress.runtime.errors import ManifestError
from satcompress.runtime.pack import packed_size

__all__ = [
    "DTYPES",
    "MANIFEST_SCHEMA",
    "MAX_MODEL_BYTES",
    "SCHEMA_VERSION",
    "check_manifest",
    "manifest_stats",
    "validate",
]

SCHEMA_VERSION = 1
#: The decoded tensors of one model at most: ONNX Runtime loads the rebuilt graph as one
#: protobuf message, which cannot exceed 2 GiB (the writer refuses external data).
MAX_MODEL_BYTES = 2**31
#: Decoded tensors may exceed this many bytes only if the payload holds at least
#: 1/:data:`MAX_EXPANSION` of them: the numbers of a crafted file (an LZMA bomb) cannot make
#: the reader allocate much more than a real model of its size would. Real files expand
#: far less (8x for dense 1-bit weights; LZMA'd masks of heavily pruned layers some 100x).
DECODE_FLOOR_BYTES = 64 * 2**20
MAX_EXPANSION = 1024
#: Longest image side a card may ask images to be resized to.
MAX_IMAGE_SIDE = 16384
#: artifact dtype (lowercase ONNX name) -> (ONNX TensorProto.DataType, numpy type code)
DTYPES = {
    "float": (1, "f4"), "uint8": (2, "u1"), "int8": (3, "i1"), "uint16": (4, "u2"),
    "int16": (5, "i2"), "int32": (6, "i4"), "int64": (7, "i8"), "bool": (9, "b1"),
    "float16": (10, "f2"), "double": (11, "f8"), "uint32": (12, "u4"), "uint64": (13, "u8"),
}  # fmt: skip
INT_DTYPES = ("int8", "uint8")  # stored as bit-packed codes (kind "int")
_NOT_PARAMS = ("scale", "zero_point")

_UINT = {"type": "integer", "minimum": 0, "maximum": 2**62}
_TEXT = {"type": "string", "maxLength": 65536}
_OPTIONAL_TEXT = {"type": ["string", "null"], "maxLength": 65536}
_SIDE = {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_SIDE}
_IMAGE_SIZE = {
    "type": ["integer", "array", "null"], "minimum": 1, "maximum": MAX_IMAGE_SIDE,
    "items": _SIDE, "minItems": 2, "maxItems": 2,
}  # fmt: skip
_CLASSES = {
    "type": ["array", "null"], "maxItems": 1_000_000,
    "items": {"type": "string", "maxLength": 4096},
}  # fmt: skip
_CHANNEL_VALUES = {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 16}
_INPUT = {
    "type": ["object", "string", "null"],
    "properties": {"size": _IMAGE_SIZE, "mean": _CHANNEL_VALUES, "std": _CHANNEL_VALUES},
}
_CARD = {
    "type": "object",
    "properties": {
        "model": _TEXT,
        "classes": _CLASSES,
        "input": _INPUT,
        "image_size": _IMAGE_SIZE,
        "data": {"type": ["object", "null"], "properties": {"image_size": _IMAGE_SIZE}},
        "lineage": {
            "type": "array",
            "items": {"type": "object", "required": ["stage"], "properties": {"stage": _TEXT}},
        },
        "recipe": {"type": ["object", "null"]},
    },
}
_LEVELS = {
    "type": "object",
    "required": ["bits", "lo", "hi", "has_zero"],
    "properties": {
        "bits": {"type": "integer", "minimum": 1, "maximum": 8},
        "lo": {"type": "integer", "minimum": -128, "maximum": 255},
        "hi": {"type": "integer", "minimum": -128, "maximum": 255},
        "has_zero": {"type": "boolean"},
    },
}
_TENSOR = {
    "type": "object",
    "required": [
        "name", "dtype", "shape", "role", "kind", "bits", "encoding", "compression", "nnz",
        "count", "offset", "length",
    ],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 4096},
        "dtype": {"enum": list(DTYPES)},
        "shape": {
            "type": "array", "maxItems": 32,
            "items": {"type": "integer", "minimum": 0, "maximum": MAX_MODEL_BYTES * 8},
        },
        "role": {"enum": ["weight", "bias", "scale", "zero_point", "other"]},
        "layer": {"type": "string", "maxLength": 4096},
        "kind": {"enum": ["int", "raw"]},
        "bits": {"type": "integer", "minimum": 1, "maximum": 64},
        "levels": _LEVELS,
        "numpy_dtype": {"type": "string", "maxLength": 8},
        "scale": {"type": ["string", "null"], "maxLength": 4096},
        "zero_point": {"type": ["string", "null"], "maxLength": 4096},
        "axis": {"type": ["integer", "null"], "minimum": -32, "maximum": 31},
        "encoding": {"enum": ["dense", "sparse"]},
        "compression": {"enum": ["none", "lzma"]},
        "nnz": {**_UINT, "maximum": MAX_MODEL_BYTES * 8},
        "count": {**_UINT, "maximum": MAX_MODEL_BYTES * 8},
        "offset": _UINT,
        "length": _UINT,
    },
}  # fmt: skip
_STATS = {
    "type": "object",
    "required": [
        "params", "quantized_params", "nonzero_params", "bound_bytes", "tensor_bytes",
        "weight_bits",
    ],
    "properties": {
        "params": _UINT, "quantized_params": _UINT, "nonzero_params": _UINT,
        "bound_bytes": {"type": "number", "minimum": 0}, "tensor_bytes": _UINT,
        "weight_bits": {"type": "array", "maxItems": 64,
                        "items": {"type": "integer", "minimum": 1, "maximum": 64}},
    },
}  # fmt: skip

#: The manifest's JSON Schema (the subset of draft 2020-12 that :func:`validate` reads).
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"urn:satcompress:artifact-manifest:{SCHEMA_VERSION}",
    "title": f"satcompress .satc manifest, schema version {SCHEMA_VERSION}",
    "type": "object",
    "required": ["format", "version", "graph", "stats", "tensors"],
    "properties": {
        "format": {"const": "satcompress.artifact"},
        "version": {"const": 1},
        "created": _TEXT,
        "model": _TEXT,
        "classes": _CLASSES,
        "input_spec": _INPUT,
        "image_size": _IMAGE_SIZE,
        "recipe": {"type": ["object", "null"]},
        "dataset": _OPTIONAL_TEXT,
        "data_dir": _OPTIONAL_TEXT,
        "split_dir": _OPTIONAL_TEXT,
        "split_fingerprint": _OPTIONAL_TEXT,
        "params": _UINT,
        "macs": _UINT,
        "card": _CARD,
        "metadata": {
            "type": "object",
            "properties": {"classes": _CLASSES, "input_spec": _INPUT},
        },
        "graph": {
            "type": "object",
            "required": ["offset", "length", "compression"],
            "properties": {"offset": _UINT, "length": _UINT, "compression": {"const": "lzma"}},
        },
        "stats": _STATS,
        "tensors": {"type": "array", "maxItems": 1_000_000, "items": _TENSOR},
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    # JSON has no NaN or infinity (Python's json module reads them anyway)
    "number": lambda v: (
        isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and math.isfinite(v)
    ),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: Mapping[str, Any], where: str = "manifest") -> None:
    """Check ``value`` against a JSON Schema using the keywords of :data:`MANIFEST_SCHEMA`.

    Keywords: ``type``, ``const``, ``enum``, ``required``, ``properties``, ``items``,
    ``minItems``/``maxItems``, ``minLength``/``maxLength``, ``minimum``/``maximum``; each
    applies only to values of its kind, as in JSON Schema. ``integer`` excludes floats and
    ``number`` excludes NaN and infinities (stricter than JSON Schema, which the tests'
    ``jsonschema`` cross-check configures alike).

    Raises:
        ManifestError: At the first violation, naming its key (``manifest.a.b[2].c: ...``).
    """
    _check_kind(value, schema, where)
    if isinstance(value, dict):
        _check_object(value, schema, where)
    elif isinstance(value, list):
        _check_array(value, schema, where)
    elif isinstance(value, str):
        _check_length(len(value), schema, "minLength", "maxLength", where, "characters")
    elif _TYPES["number"](value):
        _check_range(value, schema, where)


def _check_kind(value: Any, schema: Mapping[str, Any], where: str) -> None:
    if "const" in schema and not _same(value, schema["const"]):
        raise ManifestError(f"{where}: expected {schema['const']!r}, got {_show(value)}")
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        options = ", ".join(repr(o) for o in schema["enum"])
        raise ManifestError(f"{where}: expected one of {options}, got {_show(value)}")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[kind](value) for kind in kinds):
            raise ManifestError(f"{where}: expected {' or '.join(kinds)}, got {_show(value)}")


def _check_object(value: dict[str, Any], schema: Mapping[str, Any], where: str) -> None:
    for key in schema.get("required", ()):
        if key not in value:
            raise ManifestError(f"{where}.{key}: required key is missing")
    for key, sub in schema.get("properties", {}).items():
        if key in value:
            validate(value[key], sub, f"{where}.{key}")


def _check_array(value: list[Any], schema: Mapping[str, Any], where: str) -> None:
    _check_length(len(value), schema, "minItems", "maxItems", where, "items")
    if "items" in schema:
        for index, item in enumerate(value):
            validate(item, schema["items"], f"{where}[{index}]")


def _check_length(n: int, schema: Mapping[str, Any], low: str, high: str, where: str,
                  unit: str) -> None:  # fmt: skip
    if n < schema.get(low, 0):
        raise ManifestError(f"{where}: expected at least {schema[low]} {unit}, got {n}")
    if high in schema and n > schema[high]:
        raise ManifestError(f"{where}: expected at most {schema[high]} {unit}, got {n}")


def _check_range(value: float, schema: Mapping[str, Any], where: str) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        raise ManifestError(f"{where}: expected at least {schema['minimum']}, got {value!r}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ManifestError(f"{where}: expected at most {schema['maximum']}, got {value!r}")


def _same(value: Any, expected: Any) -> bool:
    """JSON Schema equality: numbers by value (``1.0`` is ``1``), but ``True`` is not ``1``."""
    numbers = (int, float)
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    if isinstance(value, numbers) and isinstance(expected, numbers):
        return value == expected
    return type(value) is type(expected) and value == expected


def _show(value: Any) -> str:
    kind = {dict: "object", list: "array", type(None): "null"}.get(type(value))
    if kind in ("object", "array"):
        return f"an {kind}" if kind == "object" else f"an {kind} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_manifest(manifest: Any, payload_length: int) -> None:
    """Check a parsed manifest against :data:`MANIFEST_SCHEMA` and its payload.

    Args:
        manifest: The decoded JSON.
        payload_length: Bytes of the payload it describes.

    Raises:
        ManifestError: Naming the first key that is wrong.
    """
    validate(manifest, MANIFEST_SCHEMA)
    _check_region(manifest["graph"], payload_length, "manifest.graph")
    names: dict[str, int] = {}
    total = 0
    for index, entry in enumerate(manifest["tensors"]):
        where = f"manifest.tensors[{index}]"
        if entry["name"] in names:
            raise ManifestError(
                f"{where}.name: {entry['name']!r} is also tensors[{names[entry['name']]}]"
            )
        names[entry["name"]] = index
        total += _check_tensor(entry, payload_length, where)
        if total > MAX_MODEL_BYTES:
            raise ManifestError(
                f"{where}: the tensors decode to more than {MAX_MODEL_BYTES:,} bytes, "
                "ONNX's limit for one model"
            )
    _check_expansion(total, payload_length)
    _check_stats(manifest["stats"], manifest["tensors"])


def _check_expansion(decoded: int, payload_length: int) -> None:
    if decoded > max(DECODE_FLOOR_BYTES, MAX_EXPANSION * payload_length):
        raise ManifestError(
            f"manifest.tensors: they decode to {decoded:,} bytes, more than {MAX_EXPANSION} "
            f"times the {payload_length:,}-byte payload (a decompression bomb?)"
        )


def _check_region(entry: Mapping[str, Any], payload_length: int, where: str) -> None:
    if entry["offset"] + entry["length"] > payload_length:
        raise ManifestError(
            f"{where}: bytes {entry['offset']}..{entry['offset'] + entry['length']} lie "
            f"outside the {payload_length}-byte payload"
        )


def _check_tensor(entry: Mapping[str, Any], payload_length: int, where: str) -> int:
    """Check one tensor entry; the bytes it decodes to."""
    count = _element_count(entry["shape"], where)
    if entry["count"] != count:
        raise ManifestError(
            f"{where}.count: {entry['count']} is not the product of shape {entry['shape']} "
            f"({count})"
        )
    if entry["nnz"] > count:
        raise ManifestError(f"{where}.nnz: {entry['nnz']} nonzeros of {count} elements")
    _check_region(entry, payload_length, where)
    if entry["kind"] == "int":
        stored = _check_int_tensor(entry, where)
    else:
        stored = _check_raw_tensor(entry, where)
    if entry["compression"] == "none" and entry["length"] != stored:
        raise ManifestError(
            f"{where}.length: {entry['length']} bytes, but {count} elements stored "
            f"{entry['encoding']} take {stored}"
        )
    return count * int(DTYPES[entry["dtype"]][1][1:])


def _element_count(shape: Sequence[int], where: str) -> int:
    count = 1
    for dim in shape:
        count *= dim
        if count > MAX_MODEL_BYTES * 8:
            raise ManifestError(f"{where}.shape: {list(shape)} is larger than any model")
    return count


def _check_int_tensor(entry: Mapping[str, Any], where: str) -> int:
    """Check a bit-packed integer tensor; the bytes its decompressed stream takes."""
    if entry["dtype"] not in INT_DTYPES:
        raise ManifestError(
            f"{where}.dtype: kind 'int' stores int8 or uint8 tensors, got {entry['dtype']!r}"
        )
    if "levels" not in entry:
        raise ManifestError(f"{where}.levels: required key is missing (kind 'int')")
    levels = entry["levels"]
    if entry["bits"] != levels["bits"]:
        raise ManifestError(
            f"{where}.bits: {entry['bits']} does not match levels.bits {levels['bits']}"
        )
    allowed = _standard_levels(levels["bits"], signed=entry["dtype"] == "int8")
    found = (levels["lo"], levels["hi"], levels["has_zero"])
    if found not in allowed:
        raise ManifestError(
            f"{where}.levels: {entry['dtype']} at {levels['bits']} bits stores [lo, hi, "
            f"has_zero] in {[list(a) for a in allowed]}, got {list(found)}"
        )
    count, nnz = entry["count"], entry["nnz"]
    if entry["encoding"] == "dense":
        if not levels["has_zero"] and nnz != count:
            raise ManifestError(f"{where}.encoding: levels without zero cannot store zeros dense")
        return packed_size(count, levels["bits"])
    width = max(1, math.ceil(math.log2(levels["hi"] - levels["lo"])))
    return packed_size(count, 1) + packed_size(nnz, width)


def _standard_levels(bits: int, signed: bool) -> list[tuple[int, int, bool]]:
    """The value ranges :meth:`satcompress.runtime.pack.Levels.for_values` can choose."""
    if not signed:
        return [(0, (1 << bits) - 1, True)]
    if bits == 1:
        return [(-1, 1, False)]
    half = 1 << (bits - 1)
    return [(-half, half - 1, True), (-half + 1, half - 1, True)]


def _check_raw_tensor(entry: Mapping[str, Any], where: str) -> int:
    """Check a tensor stored as its raw bytes; the bytes its decompressed stream takes."""
    if "numpy_dtype" not in entry:
        raise ManifestError(f"{where}.numpy_dtype: required key is missing (kind 'raw')")
    code = DTYPES[entry["dtype"]][1]
    itemsize = int(code[1:])
    orders = "|" if itemsize == 1 else "<>"
    allowed = [order + code for order in orders]
    if entry["numpy_dtype"] not in allowed:
        raise ManifestError(
            f"{where}.numpy_dtype: dtype {entry['dtype']!r} is stored as {' or '.join(allowed)}, "
            f"got {entry['numpy_dtype']!r}"
        )
    if entry["bits"] != itemsize * 8:
        raise ManifestError(
            f"{where}.bits: {entry['dtype']} takes {itemsize * 8} bits, got {entry['bits']}"
        )
    count, nnz = entry["count"], entry["nnz"]
    if entry["encoding"] == "dense":
        return count * itemsize
    return packed_size(count, 1) + nnz * itemsize


def _check_stats(stats: Mapping[str, Any], entries: list[Mapping[str, Any]]) -> None:
    for key, expected in manifest_stats(entries).items():
        if stats[key] != expected:  # types already checked: no True == 1 here
            raise ManifestError(
                f"manifest.stats.{key}: {_show(stats[key])} disagrees with the tensors "
                f"({expected!r})"
            )


def manifest_stats(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The manifest's ``stats`` of these tensor entries (what the writer stores).

    ``bound_bytes`` = sum(params x bits) / 8 over the parameters: scales, zero points and
    ``int64`` tensors (shapes) are not parameters.
    """
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
