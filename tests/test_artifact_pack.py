import numpy as np
import pytest

from satcompress.runtime.pack import (
    Levels,
    UnsupportedBitsError,
    decode_ints,
    decode_raw,
    encode_ints,
    encode_raw,
    pack_bits,
    packed_size,
    unpack_bits,
)

LENGTHS = [0, 1, 2, 3, 5, 7, 8, 9, 13, 31, 63, 64, 65, 127, 1001]


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("length", LENGTHS)
def test_pack_unpack_is_exact_for_every_width_and_odd_lengths(width, length):
    rng = np.random.default_rng(width * 1000 + length)
    codes = rng.integers(0, 1 << width, length, dtype=np.uint8)
    if length:
        codes[0], codes[-1] = (1 << width) - 1, 0  # extreme codes at both ends
    data = pack_bits(codes, width)
    assert len(data) == packed_size(length, width) == (length * width + 7) // 8
    assert np.array_equal(unpack_bits(data, width, length), codes)


def test_pack_bits_layout_is_little_endian():
    assert pack_bits(np.array([1, 0, 1]), 1) == bytes([0b101])
    assert pack_bits(np.array([0b01, 0b10, 0b11]), 2) == bytes([0b111001])
    assert pack_bits(np.array([5, 6, 7]), 3) == bytes([0b11110101, 0b1])


@pytest.mark.parametrize("width", [0, 9, 16, -1, 2.5, True])
def test_unsupported_widths_are_refused(width):
    with pytest.raises(UnsupportedBitsError, match="unsupported bit-width"):
        pack_bits(np.zeros(3, dtype=np.uint8), width)


def test_codes_that_do_not_fit_are_refused():
    with pytest.raises(UnsupportedBitsError, match="out of range"):
        pack_bits(np.array([4]), 2)


def test_short_stream_is_refused():
    with pytest.raises(ValueError, match="too short"):
        unpack_bits(b"\x00", 3, 5)


def _random_ints(bits, length, signed, sparsity, seed, narrow=True):
    rng = np.random.default_rng(seed)
    if signed and bits == 1:
        values = rng.choice([-1, 1], length)
    elif signed:
        half = 1 << (bits - 1)
        values = rng.integers(-half + (1 if narrow else 0), half, length)
    else:
        values = rng.integers(0, 1 << bits, length)
    values[rng.random(length) < sparsity] = 0
    return values.astype(np.int16)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
@pytest.mark.parametrize("length", [1, 7, 333])
def test_int_encoding_round_trips_exactly(bits, signed, sparsity, length):
    values = _random_ints(bits, length, signed, sparsity, seed=bits + length)
    levels = Levels.for_values(values, bits, signed)
    encoded = encode_ints(values, levels)
    decoded = decode_ints(encoded.data, levels, encoded.describe())
    assert np.array_equal(decoded, values)
    assert encoded.nnz == int((values != 0).sum())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_sparse_storage_is_smaller_than_dense(bits):
    dense_values = _random_ints(bits, 20000, True, 0.0, seed=1)
    dense_values[dense_values == 0] = 1
    sparse_values = dense_values.copy()
    sparse_values[np.random.default_rng(2).random(20000) < 0.5] = 0
    levels = Levels(bits, -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1)
    dense = encode_ints(dense_values, levels, allow_lzma=False)
    sparse = encode_ints(sparse_values, levels, allow_lzma=False)
    assert len(dense.data) == packed_size(20000, bits)
    assert sparse.encoding == "sparse" and len(sparse.data) < len(dense.data)


def test_binary_weights_take_one_bit_and_zeros_need_the_sparse_form():
    values = np.array([-1, 1, 1, -1, 1], dtype=np.int16)
    levels = Levels.for_values(values, 1, signed=True)
    encoded = encode_ints(values, levels, allow_lzma=False)
    assert encoded.encoding == "dense" and len(encoded.data) == 1
    pruned = np.array([-1, 0, 1, 0, 0], dtype=np.int16)
    encoded = encode_ints(pruned, levels, allow_lzma=False)
    assert encoded.encoding == "sparse"
    assert np.array_equal(decode_ints(encoded.data, levels, encoded.describe()), pruned)


@pytest.mark.parametrize(
    ("values", "bits", "signed"),
    [([2], 2, True), ([-3], 2, True), ([8], 4, True), ([4], 2, False), ([2], 1, True)],
)
def test_values_outside_the_bit_range_are_refused(values, bits, signed):
    with pytest.raises(UnsupportedBitsError, match="do not fit"):
        Levels.for_values(np.array(values), bits, signed)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64, np.float16])
def test_raw_encoding_round_trips_dense_and_sparse(dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(1001) * 100).astype(dtype)
    array[rng.random(1001) < 0.7] = 0
    for source in (array, np.abs(array) + 1):
        encoded = encode_raw(source)
        decoded = decode_raw(encoded.data, source.dtype, encoded.describe())
        assert decoded.dtype == source.dtype and np.array_equal(decoded, source)


def test_lzma_is_used_when_it_helps():
    values = np.zeros(5000, dtype=np.int16)
    values[::7] = 3
    levels = Levels.for_values(values, 4, signed=True)
    encoded = encode_ints(values, levels)
    assert encoded.compression == "lzma"
    assert np.array_equal(decode_ints(encoded.data, levels, encoded.describe()), values)
