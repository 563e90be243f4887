"""Stored weights: the palette / raw codec of lowbit.runtime.weights (numpy only)."""

import numpy as np
import pytest
from lowbit.ir.errors import ArtifactError
from lowbit.runtime import weights as W
from lowbit.runtime.weights import StoredTensor, decode, encode, encode_all


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 9, 1000])
def test_index_packing_round_trips_at_every_width(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    idx = rng.integers(0, 1 << bits, count)
    data = W.pack_indices(idx, bits)
    assert len(data) == -(-count * bits // 8)
    np.testing.assert_array_equal(W.unpack_indices(data, count, bits), idx)


def test_index_packing_is_lsb_first():
    # element j holds bits j*b .. j*b + b - 1 of the little-endian bit stream
    assert W.pack_indices(np.array([1, 2, 3, 0]), 2) == bytes([0b00_11_10_01])
    assert W.pack_indices(np.array([5, 2, 7]), 3) == bytes([0b11_010_101, 0b1])


def test_generic_packer_crosses_chunks(monkeypatch):
    monkeypatch.setattr(W, "CHUNK", 64)
    idx = np.random.default_rng(0).integers(0, 8, 1000)
    data = W.pack_indices(idx, 3)
    assert len(data) == 375
    np.testing.assert_array_equal(W.unpack_indices(data, 1000, 3), idx)


@pytest.mark.parametrize("values, dtype, bits", [
    (np.arange(-8, 8), np.int8, 4),  # int4 weights in an int8 layout
    ([-1, 0, 1], np.int8, 2),  # ternary
    ([-1, 1], np.int8, 1),  # binary
    ([-64, -4, 0, 2, 16, 32], np.int8, 3),  # pow2 / codebook levels
    (np.arange(0, 256, 2), np.uint8, 7),
    (np.arange(-300, 300, 7), np.int16, 7),
])
def test_palette_stores_the_information_content(values, dtype, bits):
    rng = np.random.default_rng(0)
    array = rng.choice(np.asarray(values), (37, 51)).astype(dtype)
    entry, data = encode("w", array, offset=0)
    assert (entry.encoding, entry.bits) == ("palette", bits)
    assert len(data) == entry.length == -(-array.size * bits // 8)
    assert set(entry.values) == set(np.unique(array).tolist())
    out = decode(entry, data)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("array", [
    np.random.default_rng(1).integers(0, 2**63, (4, 9), dtype=np.uint64),  # bit-plane words
    np.arange(-200, 200, dtype=np.int32),  # offsets: wider than a palette takes
    np.arange(-128, 128, dtype=np.int8),  # every int8 value: 8 bits, no gain
    np.zeros(0, np.int8),
])
def test_raw_when_a_palette_does_not_pay(array):
    entry, data = encode("w", array, offset=5)
    assert entry.encoding == "raw" and entry.offset == 5
    assert len(data) == array.nbytes
    np.testing.assert_array_equal(decode(entry, b"\0" * 5 + data), array)


@pytest.mark.parametrize("shape, axis", [((64, 32, 3, 3), 0), ((300, 20), 1)])
def test_per_channel_codebooks_store_a_palette_per_slice(shape, axis):
    """One codebook of 16 levels per output channel: hundreds of distinct levels in the tensor,
    16 per channel -- 4-bit indices plus a (channels, 16) table."""
    rng = np.random.default_rng(3)
    channels = shape[axis]
    books = np.stack([rng.choice(np.arange(-2000, 2000), 16, replace=False)
                      for _ in range(channels)])
    codes = np.moveaxis(rng.integers(0, 16, shape), axis, 0).reshape(channels, -1)
    levels = books[np.arange(channels)[:, None], codes]  # (channels, rest): each its own book
    rest = [d for i, d in enumerate(shape) if i != axis]
    array = np.moveaxis(levels.reshape(channels, *rest), 0, axis).astype(np.int16)
    assert len(np.unique(array)) > 256
    entry, data = encode("w", array, 0)
    assert (entry.encoding, entry.axes, entry.bits) == ("sliced", (axis,), 4)
    assert len(data) == entry.length == channels * 16 * 2 + array.size // 2
    out = decode(entry, data)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, array)
    assert StoredTensor.from_json(entry.to_json(), len(data)) == entry


def test_per_channel_codebooks_in_the_int8_layout_slice_over_the_channel_axes():
    """The int8 kernel's layout (NO, KB, NB, 16, 4) puts channel (o*NB + t)*16 + l at axes
    (0, 2, 3): 16 levels per channel on the 7-bit grid store 4-bit indices and a (96, 16)
    table, where one palette over the whole tensor would need 7 bits."""
    rng = np.random.default_rng(4)
    NO, KB, NB, K = 2, 18, 3, 72
    channels = NO * NB * 16
    books = np.stack([np.sort(rng.choice(np.arange(-63, 64), 16, replace=False))
                      for _ in range(channels)])
    w = books[np.arange(channels)[:, None], rng.integers(0, 16, (channels, K))]  # (N, K)
    packed = w.reshape(NO, NB, 16, KB, 4).transpose(0, 3, 1, 2, 4).astype(np.int8)
    assert len(np.unique(packed)) > 64
    entry, data = encode("w", np.ascontiguousarray(packed), 0)
    assert (entry.encoding, entry.axes, entry.bits) == ("sliced", (0, 2, 3), 4)
    assert len(data) == entry.length == channels * 16 + packed.size // 2
    np.testing.assert_array_equal(decode(entry, data), packed)
    parsed = StoredTensor.from_json(entry.to_json(), len(data))
    assert parsed == entry and entry.to_json()["axes"] == [0, 2, 3]


def test_format_2_entries_name_one_axis():
    """Files written by format 2 say ``"axis": a``; they still parse (as ``axes = (a,)``)."""
    array = np.repeat(np.arange(0, 64, 4)[None] * np.arange(1, 41)[:, None], 10,
                      axis=1).astype(np.int16)  # 40 channels x 16 levels each, 277 distinct
    entry, data = encode("w", array, 0)
    assert (entry.encoding, entry.axes) == ("sliced", (0,))
    old = {k: v for k, v in entry.to_json().items() if k != "axes"} | {"axis": 0}
    assert StoredTensor.from_json(old, len(data)) == entry


def test_sections_lay_weights_end_to_end_and_entries_round_trip_through_json():
    arrays = [("a", np.full((3, 3), 2, np.int8)), ("b", np.arange(10, dtype=np.int32)),
              ("c", np.array([[1, -1], [-1, 1]], np.int8))]
    entries, section = encode_all(arrays)
    assert [e.offset for e in entries] == [0, 2, 42]
    assert len(section) == 2 + 40 + 1
    for entry, (name, array) in zip(entries, arrays):
        parsed = StoredTensor.from_json(entry.to_json(), len(section))
        assert parsed == entry and parsed.name == name
        np.testing.assert_array_equal(decode(parsed, memoryview(section)), array)


@pytest.mark.parametrize("change, message", [
    ({"length": 3}, "do not match"),
    ({"offset": 40}, "do not match"),
    ({"offset": -1}, "do not match"),
    ({"bits": 1}, "does not fit 1 bits"),
    ({"bits": 8}, "8-bit indices for int8 elements"),
    ({"bits": 0}, "0-bit indices"),
    ({"encoding": "sliced", "axis": 2}, r"axes \[2\] of a 2-d array"),
    ({"encoding": "sliced", "axes": [1, 0]}, r"axes \[1, 0\] of a 2-d array"),
    ({"encoding": "sliced", "axes": []}, r"axes \[\] of a 2-d array"),
    ({"encoding": "zstd"}, "bad dtype / encoding"),
    ({"dtype": "float32"}, "bad dtype / encoding"),
    ({"values": [1.5, 2]}, "non-integer"),
    ({"shape": [2, True]}, "non-integer"),
])
def test_malformed_entries_are_refused(change, message):
    entry, section = encode("w", np.array([[0, 1, 2], [3, 2, 1]], np.int8), 0)
    obj = {**entry.to_json(), **change}
    with pytest.raises((TypeError, ValueError), match=message):
        StoredTensor.from_json(obj, len(section) + 8)


def test_an_index_past_the_palette_is_an_artifact_error():
    entry, data = encode("w", np.array([0, 1, 2, 0], np.int8), 0)  # 3 values in 2 bits
    forged = bytes([0b11_11_11_11])  # index 3 everywhere
    with pytest.raises(ArtifactError, match="index 3 past its 3-value palette"):
        decode(entry, forged)
    np.testing.assert_array_equal(decode(entry, data), [0, 1, 2, 0])


def test_only_integer_arrays_are_stored():
    with pytest.raises(ArtifactError, match="only integer arrays"):
        encode("w", np.zeros(4, np.float32), 0)
