"""Exact storage of integer tensors at their real bit-width, with cheap pruned zeros.

Quantized weights are integers in a range set by their bit-width (``b`` bits signed:
``[-2^(b-1), 2^(b-1) - 1]``, or the narrow ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` that symmetric
quantizers use; 1 bit: ``{-1, +1}``; unsigned: ``[0, 2^b - 1]``). They are stored as
``b``-bit codes packed into a little-endian bit stream, either

* ``dense``: one code per element, or
* ``sparse``: a 1-bit-per-element mask of the nonzeros, then one code per nonzero. A nonzero
  code skips the zero level, so e.g. narrow 2-bit weights ({-1, 0, 1}) need 1 bit per nonzero
  and 50% pruned weights cost 1.5 bits per element instead of 2,

and each stream may be LZMA-compressed on top (entropy coding: quantized weights are far from
uniform). :func:`encode_ints` picks the smallest of these; :func:`decode_ints` inverts it
exactly. Float tensors get the same dense/sparse/LZMA choice over their raw bytes.

Why hand-written: numpy only packs 1-bit values (``np.packbits``); ONNX's own INT4/UINT4
types cover 4 bits only; bit-stream libraries (bitarray, bitstring) would add a compiled
dependency for ~20 lines of numpy that are easy to test exhaustively.
"""

from __future__ import annotations

import dataclasses
import lzma
import math
from typing import Any

import numpy as np

SUPPORTED_BITS = tuple(range(1, 9))
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


class UnsupportedBitsError(ValueError):
    """A bit-width outside 1..8, or values that do not fit the declared bit-width."""


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a supported bit-width (1..8), else raise.

    Raises:
        UnsupportedBitsError: Naming the supported widths.
    """
    if (
        isinstance(bits, bool)
        or not isinstance(bits, (int, np.integer))
        or bits not in (SUPPORTED_BITS)
    ):
        raise UnsupportedBitsError(
            f"unsupported bit-width {bits!r}: integer tensors are stored at 1 to 8 bits"
        )
    return int(bits)


def value_bits(lo: int, hi: int, signed: bool) -> int:
    """The fewest bits whose integer range holds ``[lo, hi]`` (at most 8).

    Signed widths start at 2: min/max cannot tell whether {-1, +1} values include zeros,
    which the 1-bit range lacks.
    """
    for bits in range(2 if signed else 1, 9):
        half = 1 << (bits - 1)
        low, high = (-half, half - 1) if signed else (0, (1 << bits) - 1)
        if low <= lo and hi <= high:
            return bits
    return 8


def pack_bits(codes: np.ndarray, width: int) -> bytes:
    """Pack unsigned codes (each ``< 2**width``) into a little-endian bit stream.

    Element ``i`` occupies bits ``[i * width, (i + 1) * width)`` of the stream (bit 0 = least
    significant bit of byte 0). The last byte is zero-padded.

    Args:
        codes: 1-D array of non-negative integers below ``2**width``.
        width: Bits per code, 1..8.

    Returns:
        ``ceil(len(codes) * width / 8)`` bytes.

    Raises:
        UnsupportedBitsError: If ``width`` is not 1..8 or a code does not fit.
    """
    width = check_bits(width)
    codes = np.asarray(codes).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << width)):
        raise UnsupportedBitsError(f"codes out of range for {width}-bit packing")
    codes = codes.astype(np.uint8)
    if width == 8:
        return codes.tobytes()
    bits = (codes[:, None] >> np.arange(width, dtype=np.uint8)) & 1
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes | memoryview, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes of ``width`` bits as ``uint8``.

    Raises:
        UnsupportedBitsError: If ``width`` is not 1..8.
        ValueError: If ``data`` holds fewer than ``count * width`` bits.
    """
    width = check_bits(width)
    need = packed_size(count, width)
    if len(data) < need:
        raise ValueError(f"bit stream too short: {len(data)} bytes for {count} x {width} bits")
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if width == 8:
        return raw.copy()
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
    codes = np.zeros(count, dtype=np.uint8)
    for k in range(width):
        codes |= bits[:, k] << k
    return codes


def packed_size(count: int, width: int) -> int:
    """Bytes taken by ``count`` codes of ``width`` bits."""
    return (count * width + 7) // 8


@dataclasses.dataclass(frozen=True)
class Levels:
    """The integer values a quantized tensor may take.

    Attributes:
        bits: Bit-width (1..8).
        lo: Smallest allowed value.
        hi: Largest allowed value.
        has_zero: Whether 0 is a level (False only for 1-bit {-1, +1}).
    """

    bits: int
    lo: int
    hi: int
    has_zero: bool = True

    @classmethod
    def for_values(cls, values: np.ndarray, bits: int, signed: bool) -> Levels:
        """The narrowest standard range of ``bits`` bits holding ``values``.

        Raises:
            UnsupportedBitsError: If ``bits`` is unsupported or a value does not fit.
        """
        bits = check_bits(bits)
        vmin, vmax = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if signed and bits == 1:
            # binary weights are {-1, +1}; pruned zeros are allowed, but only sparse-coded
            levels = cls(1, -1, 1, has_zero=False)
        elif signed:
            half = 1 << (bits - 1)
            narrow = vmin > -half
            levels = cls(bits, -half + 1 if narrow else -half, half - 1)
        else:
            levels = cls(bits, 0, (1 << bits) - 1)
        if vmin < levels.lo or vmax > levels.hi:
            kind = "signed" if signed else "unsigned"
            raise UnsupportedBitsError(
                f"values in [{vmin}, {vmax}] do not fit {bits}-bit {kind} storage "
                f"[{levels.lo}, {levels.hi}]"
            )
        return levels

    @property
    def nonzero_width(self) -> int:
        """Bits per nonzero code (the zero level is skipped)."""
        return max(1, math.ceil(math.log2(self.hi - self.lo)))

    def dense_codes(self, values: np.ndarray) -> np.ndarray:
        """Codes ``0 .. 2**bits - 1`` of every element (needs no zeros if ``has_zero`` is False)."""
        if not self.has_zero:
            return self.nonzero_codes(values)
        return (values.astype(np.int16) - self.lo).astype(np.uint8)

    def dense_values(self, codes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`dense_codes`."""
        if not self.has_zero:
            return self.nonzero_values(codes)
        return codes.astype(np.int16) + self.lo

    def nonzero_codes(self, values: np.ndarray) -> np.ndarray:
        """Codes of nonzero values with the zero level removed."""
        v = values.astype(np.int16)
        return (v - self.lo - (v > 0)).astype(np.uint8)

    def nonzero_values(self, codes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`nonzero_codes`."""
        v = codes.astype(np.int16) + self.lo
        return v + (v >= 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the manifest."""
        return {"bits": self.bits, "lo": self.lo, "hi": self.hi, "has_zero": self.has_zero}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Levels:
        """Inverse of :meth:`to_dict` (the bit-width is checked)."""
        return cls(check_bits(values["bits"]), int(values["lo"]), int(values["hi"]),
                   bool(values["has_zero"]))  # fmt: skip


@dataclasses.dataclass
class Encoded:
    """One encoded tensor: its bytes and how to read them back.

    Attributes:
        data: The stored bytes.
        encoding: ``dense`` or ``sparse``.
        compression: ``none`` or ``lzma``.
        nnz: Number of nonzero elements.
        count: Number of elements.
    """

    data: bytes
    encoding: str
    compression: str
    nnz: int
    count: int

    def describe(self) -> dict[str, Any]:
        """Manifest fields (without the data)."""
        return {
            "encoding": self.encoding,
            "compression": self.compression,
            "nnz": self.nnz,
            "count": self.count,
        }


def encode_ints(values: np.ndarray, levels: Levels, allow_lzma: bool = True) -> Encoded:
    """Store integer ``values`` exactly in the fewest bytes (dense/sparse, LZMA or not).

    Raises:
        UnsupportedBitsError: If a value is outside ``levels``.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.size and (int(flat.min()) < levels.lo or int(flat.max()) > levels.hi):
        raise UnsupportedBitsError(
            f"values outside the {levels.bits}-bit range [{levels.lo}, {levels.hi}]"
        )
    mask = flat != 0
    nnz = int(mask.sum())
    candidates = []
    if levels.has_zero or nnz == flat.size:
        candidates.append(("dense", pack_bits(levels.dense_codes(flat), levels.bits)))
    nonzero = pack_bits(levels.nonzero_codes(flat[mask]), levels.nonzero_width)
    candidates.append(("sparse", _mask_bytes(mask) + nonzero))
    return _smallest(candidates, nnz, flat.size, allow_lzma)


def decode_ints(data: bytes, levels: Levels, info: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_ints`: the flat ``int16`` values.

    Raises:
        ValueError: If the bytes do not hold what ``info`` says.
    """
    count, nnz = int(info["count"]), int(info["nnz"])
    if info["encoding"] == "dense":
        raw = _decompress(data, info["compression"], packed_size(count, levels.bits))
        return levels.dense_values(unpack_bits(raw, levels.bits, count))
    if info["encoding"] != "sparse":
        raise ValueError(f"unknown encoding {info['encoding']!r}")
    mask_len = packed_size(count, 1)
    raw = _decompress(data, info["compression"], mask_len + packed_size(nnz, levels.nonzero_width))
    mask = unpack_bits(raw[:mask_len], 1, count).astype(bool)
    if int(mask.sum()) != nnz:
        raise ValueError("sparse mask does not match the stored nonzero count")
    out = np.zeros(count, dtype=np.int16)
    codes = unpack_bits(raw[mask_len:], levels.nonzero_width, nnz)
    out[mask] = levels.nonzero_values(codes)
    return out


def encode_raw(array: np.ndarray, allow_lzma: bool = True) -> Encoded:
    """Store any numeric array's bytes exactly (dense or zero-masked, LZMA or not)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    mask = flat != 0
    nnz = int(mask.sum())
    candidates = [("dense", flat.tobytes())]
    if flat.size and nnz < flat.size:
        candidates.append(("sparse", _mask_bytes(mask) + flat[mask].tobytes()))
    return _smallest(candidates, nnz, flat.size, allow_lzma)


def decode_raw(data: bytes, dtype: np.dtype, info: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_raw`: the flat array of ``dtype``.

    Raises:
        ValueError: If the bytes do not hold what ``info`` says.
    """
    dtype = np.dtype(dtype)
    count, nnz = int(info["count"]), int(info["nnz"])
    if info["encoding"] == "dense":
        raw = _decompress(data, info["compression"], count * dtype.itemsize)
        return np.frombuffer(raw, dtype=dtype, count=count).copy()
    if info["encoding"] != "sparse":
        raise ValueError(f"unknown encoding {info['encoding']!r}")
    mask_len = packed_size(count, 1)
    raw = _decompress(data, info["compression"], mask_len + nnz * dtype.itemsize)
    mask = unpack_bits(raw[:mask_len], 1, count).astype(bool)
    if int(mask.sum()) != nnz:
        raise ValueError("sparse mask does not match the stored nonzero count")
    out = np.zeros(count, dtype=dtype)
    out[mask] = np.frombuffer(raw, dtype=dtype, count=nnz, offset=mask_len)
    return out


def _mask_bytes(mask: np.ndarray) -> bytes:
    return np.packbits(mask.astype(np.uint8), bitorder="little").tobytes()


def _smallest(
    candidates: list[tuple[str, bytes]], nnz: int, count: int, allow_lzma: bool
) -> Encoded:
    options = [Encoded(data, name, "none", nnz, count) for name, data in candidates]
    if allow_lzma:
        for name, data in candidates:
            if len(data) > 64:  # LZMA's own header outweighs any gain on tiny tensors
                packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
                options.append(Encoded(packed, name, "lzma", nnz, count))
    return min(options, key=lambda e: len(e.data))


def _decompress(data: bytes, compression: str, expected: int) -> bytes:
    """The stream of ``expected`` bytes that ``data`` holds (never more is decompressed).

    Raises:
        ValueError: If ``data`` is not a stream of exactly ``expected`` bytes.
    """
    if compression == "none":
        raw = bytes(data)
    elif compression == "lzma":
        raw = decompress_lzma(data, expected, filters=_LZMA_FILTERS)
    else:
        raise ValueError(f"unknown compression {compression!r}")
    if len(raw) != expected:
        raise ValueError(f"stored tensor has {len(raw)} bytes, expected {expected}")
    return raw


def decompress_lzma(data: bytes, limit: int, filters: list[dict[str, Any]] | None = None) -> bytes:
    """Decompress one LZMA stream of at most ``limit`` bytes, never producing more.

    Args:
        data: The compressed stream: raw LZMA2 with ``filters``, else the ``.xz`` container.
        limit: Most bytes it may decompress to.
        filters: The raw stream's filter chain; None for the ``.xz`` container.

    Raises:
        ValueError: If the stream is corrupt, longer than ``limit`` or followed by data.
    """
    if filters is None:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    else:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
    try:
        raw = decompressor.decompress(data, max_length=limit)
        if not decompressor.eof and decompressor.decompress(b"", max_length=1):
            raise ValueError(f"LZMA stream holds more than the {limit} bytes expected")
    except lzma.LZMAError as err:
        raise ValueError(f"corrupt LZMA stream: {err}") from err
    if not decompressor.eof:
        raise ValueError("LZMA stream is truncated")
    if decompressor.unused_data:
        raise ValueError(f"{len(decompressor.unused_data)} bytes follow the LZMA stream")
    return raw
