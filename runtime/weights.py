"""Stored weights: kernel weight tensors kept in the artifact at their information content.

A compiled layer's weights are laid out for its kernel: the int8 family keeps one byte per weight
(so that ``vpdpbusd`` / ``vpmaddubsw`` read them directly), whatever the plan's format. A 4-bit,
2-bit or ternary weight in that layout takes a byte in memory, but it need not take one on disk
-- the field's "my 4-bit export is as big as the 8-bit one". So the compiled library does not
embed the kernels' integer weight arrays (:meth:`lowbit.codegen.lowering.LoweringContext.weight`
makes them trailing parameters of ``main``); the artifact stores each one as

* ``palette``, for integer arrays of 1- or 2-byte elements with at most ``2^b`` distinct values
  and ``b`` below the element width: the ascending distinct values ``v`` (in the manifest) and
  per element the index ``i`` of its value, ``b`` bits each, packed LSB first (element ``j``
  holds bits ``j*b .. j*b + b - 1`` of the little-endian bit stream). Decoded: ``x = v[i]``.
  An int4 weight in an int8 layout stores 4 bits, a ternary one 2 (``{-1, 0, +1}``), a codebook
  one its index width, the padding of the layout (zeros) included in the palette;
* ``sliced``, a palette per slice over a set of ``axes`` (per output channel): codebook weights
  have one codebook per channel, so the tensor holds up to ``16 * channels`` distinct levels
  but each channel only 16. In the int8 kernel's layout ``(NO, KB, NB, 16, 4)`` a channel is
  the slice over axes ``(0, 2, 3)``. The bytes are the table ``(R, 2^b)`` (``R`` = the product
  of those axes' extents, slices in row-major order of them; each row its ascending values
  padded by repeating the last, little-endian elements of the array's dtype) then the indices
  of the array with ``axes`` moved first (row-major), packed as above. Decoded:
  ``x[.., r, ..] = table[r, i]``. (Format 2 files name one ``axis``; format 3 ``axes``.)
* ``raw``: the array's little-endian bytes (anything else: bit planes, int32 offsets, or where
  no palette would be smaller).

The encoder takes the smallest of these. For 1-byte elements it tries the sliced palette over
every set of axes (at most 63 sets), so it finds the channels of any layout; for 2-byte
elements along the first and the last axis, where layouts keep output channels. A set is
skipped when its first slice's distinct values already bound its size above the best so far;
the others are costed with one ``bincount`` of ``(slice, value)`` pairs, and only the smallest
is built.

:func:`decode` runs at load time (numpy only: no TVM, nothing native), before the first call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..ir.errors import ArtifactError

ENCODINGS = ("raw", "palette", "sliced")
#: element dtypes a palette may stand for (a wider one is left raw: its distinct values are
#: rarely few, and counting them would need a sort)
PALETTE_DTYPES = ("int8", "uint8", "int16", "uint16")
#: elements packed per numpy pass of the generic (3-, 5-, 6-, 7-bit ...) packer: bounds its
#: temporary bit matrix to ``CHUNK * b`` bytes
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredTensor:
    """One stored weight: its ``name`` (the ``main`` parameter), ``shape`` and numpy ``dtype``
    name; ``encoding`` (:data:`ENCODINGS`) with ``bits`` per index, the palette ``values``
    (``palette``) or the slicing ``axes`` (``sliced``, ascending); ``offset`` and ``length``
    of its bytes in the artifact's weight section."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    offset: int
    length: int
    bits: int = 0
    values: tuple[int, ...] = ()
    axes: tuple[int, ...] = (0,)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> int:
        """``R``: slices of a ``sliced`` entry (the product of its axes' extents)."""
        return math.prod(self.shape[a] for a in self.axes)

    @property
    def table_bytes(self) -> int:
        """Bytes of a ``sliced`` entry's per-slice value table (0 otherwise)."""
        if self.encoding != "sliced":
            return 0
        return self.slices * (1 << self.bits) * np.dtype(self.dtype).itemsize

    def expected_length(self) -> int:
        """Bytes the encoding takes for ``shape`` (what a well-formed file holds)."""
        if self.encoding == "raw":
            return self.numel * np.dtype(self.dtype).itemsize
        return self.table_bytes + -(-self.numel * self.bits // 8)

    def to_json(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
               "encoding": self.encoding, "offset": self.offset, "length": self.length}
        if self.encoding == "palette":
            out.update(bits=self.bits, values=list(self.values))
        elif self.encoding == "sliced":
            out.update(bits=self.bits, axes=list(self.axes))
        return out

    @staticmethod
    def from_json(obj, section_length: int) -> StoredTensor:
        """Parse and check a manifest entry against a weight section of ``section_length``
        bytes; TypeError / ValueError on anything malformed (the caller words the error)."""
        axes = obj["axes"] if "axes" in obj else [obj.get("axis", 0)]  # format 3 / format 2
        ints = (obj["offset"], obj["length"], *obj["shape"], obj.get("bits", 0), *axes,
                *obj.get("values", ()))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise TypeError(f"stored weight {obj['name']!r}: non-integer field")
        entry = StoredTensor(str(obj["name"]), tuple(obj["shape"]), str(obj["dtype"]),
                             str(obj["encoding"]), obj["offset"], obj["length"],
                             obj.get("bits", 0), tuple(obj.get("values", ())), tuple(axes))
        dtype = np.dtype(entry.dtype)
        if dtype.kind not in "iu" or entry.encoding not in ENCODINGS or min(entry.shape,
                                                                             default=0) < 0:
            raise ValueError(f"stored weight {entry.name!r}: bad dtype / encoding / shape")
        if entry.encoding != "raw" and not 1 <= entry.bits < 8 * dtype.itemsize:
            raise ValueError(f"stored weight {entry.name!r}: {entry.bits}-bit indices for "
                             f"{entry.dtype} elements")
        if entry.encoding == "palette" and not 1 <= len(entry.values) <= 1 << entry.bits:
            raise ValueError(f"stored weight {entry.name!r}: palette of {len(entry.values)} "
                             f"values does not fit {entry.bits} bits")
        if entry.encoding == "sliced" and not (
                entry.axes and list(entry.axes) == sorted(set(entry.axes))
                and 0 <= entry.axes[0] and entry.axes[-1] < len(entry.shape)):
            raise ValueError(f"stored weight {entry.name!r}: axes {list(entry.axes)} of a "
                             f"{len(entry.shape)}-d array")
        if (entry.length != entry.expected_length() or entry.offset < 0
                or entry.offset + entry.length > section_length):
            raise ValueError(f"stored weight {entry.name!r}: {entry.length} bytes at "
                             f"{entry.offset} do not match its shape or the section")
        return entry


def pack_indices(indices: np.ndarray, bits: int) -> bytes:
    """``indices`` (non-negative ints < ``2^bits``) as a ``bits``-wide LSB-first bit stream."""
    idx = np.ascontiguousarray(indices).reshape(-1)
    if 8 % bits == 0:  # whole elements per byte: shift-or, no bit matrix
        per = 8 // bits
        padded = np.zeros(-(-idx.size // per) * per, np.uint8)
        padded[:idx.size] = idx
        lanes = padded.reshape(-1, per)
        out = np.zeros(lanes.shape[0], np.uint8)
        for s in range(per):
            out |= lanes[:, s] << np.uint8(s * bits)
        return out.tobytes()
    shifts = np.arange(bits, dtype=np.uint16)
    parts = []
    for start in range(0, idx.size, CHUNK):  # CHUNK is a multiple of 8: byte-aligned parts
        chunk = idx[start:start + CHUNK].astype(np.uint16)
        matrix = ((chunk[:, None] >> shifts) & 1).astype(np.uint8)
        parts.append(np.packbits(matrix.reshape(-1), bitorder="little"))
    return b"".join(p.tobytes() for p in parts)


def unpack_indices(data, count: int, bits: int) -> np.ndarray:
    """The inverse of :func:`pack_indices`: ``count`` indices (uint16) from ``data``."""
    raw = np.frombuffer(data, np.uint8)
    if 8 % bits == 0:
        per, mask = 8 // bits, np.uint8((1 << bits) - 1)
        lanes = np.stack([(raw >> np.uint8(s * bits)) & mask for s in range(per)], axis=1)
        return lanes.reshape(-1)[:count].astype(np.uint16)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    out = np.empty(count, np.uint16)
    step = CHUNK * bits // 8
    for i, start in enumerate(range(0, count, CHUNK)):
        n = min(CHUNK, count - start)
        matrix = np.unpackbits(raw[i * step:i * step + step], count=n * bits,
                               bitorder="little").reshape(n, bits).astype(np.uint16)
        out[start:start + n] = matrix @ weights
    return out


def _bits_for(count: int) -> int:
    """Index bits for ``count`` distinct values (at least 1)."""
    return max(1, (count - 1).bit_length())


def _palette(array: np.ndarray) -> tuple[np.ndarray, int]:
    """``(ascending distinct values, index bits)`` of ``array`` (a :data:`PALETTE_DTYPES`
    array: counted with a bincount over its whole range, no sort)."""
    lo = int(np.iinfo(array.dtype).min)
    counts = np.bincount((array.reshape(-1).astype(np.int64) - lo),
                         minlength=1 << (8 * array.dtype.itemsize))
    values = np.flatnonzero(counts) + lo
    return values, _bits_for(len(values))


def _rows(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``array`` with ``axes`` moved first, as ``(R, n / R)`` (R = their extents' product)."""
    moved = np.moveaxis(array, axes, range(len(axes)))
    return moved.reshape(math.prod(array.shape[a] for a in axes), -1)


def _slice_bits(array: np.ndarray, axes: tuple[int, ...]) -> int:
    """Index bits of the palette per slice over ``axes`` of a 1-byte ``array``: the most
    distinct values of any slice, counted with one bincount of ``slice * 256 + byte``."""
    rows = _rows(array, axes)
    keys = rows.view(np.uint8).astype(np.int64) + (np.arange(len(rows)) << 8)[:, None]
    present = np.bincount(keys.reshape(-1), minlength=len(rows) << 8).reshape(len(rows), 256)
    return _bits_for(int(np.count_nonzero(present, axis=1).max()))


def _axis_sets(array: np.ndarray) -> list[tuple[int, ...]]:
    """The slicings :func:`encode` tries (module docstring): every nonempty proper set of axes
    for 1-byte elements, else the first and the last axis."""
    import itertools

    nd = array.ndim
    if nd < 2:
        return []
    if array.dtype.itemsize == 1:
        return [c for r in range(1, nd) for c in itertools.combinations(range(nd), r)]
    return sorted({(0,), (nd - 1,)})


def _sliced(array: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(table (R, 2^b), indices (R, n / R), b)``: a palette per slice over ``axes``."""
    rows = _rows(array, axes)
    uniques = [np.unique(row) for row in rows]
    bits = _bits_for(max(len(u) for u in uniques))
    table = np.empty((len(rows), 1 << bits), array.dtype)
    index = np.empty(rows.shape, np.uint16)
    for r, (row, u) in enumerate(zip(rows, uniques)):
        table[r, :len(u)] = u
        table[r, len(u):] = u[-1]
        index[r] = np.searchsorted(u, row)
    return table, index, bits


def encode(name: str, array: np.ndarray, offset: int) -> tuple[StoredTensor, bytes]:
    """``array`` as stored at ``offset`` of the weight section: its entry and its bytes, in
    the smallest encoding of the module docstring."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.kind not in "iu":
        raise ArtifactError(f"stored weight {name!r}: only integer arrays are stored, got "
                            f"{arr.dtype}")
    little = arr.dtype.newbyteorder("<")
    raw = StoredTensor(name, arr.shape, arr.dtype.name, "raw", offset, arr.nbytes)
    best = (raw, lambda: arr.astype(little, copy=False).tobytes())
    if arr.dtype.name not in PALETTE_DTYPES or arr.size == 0:
        return raw, best[1]()
    width = 8 * arr.dtype.itemsize
    values, bits = _palette(arr)
    if bits < width:
        entry = StoredTensor(name, arr.shape, arr.dtype.name, "palette", offset,
                             -(-arr.size * bits // 8), bits, tuple(int(v) for v in values))
        if entry.length < best[0].length:
            best = (entry, lambda b=bits: pack_indices(np.searchsorted(values, arr.reshape(-1)),
                                                       b))
    sliced = None
    for axes in _axis_sets(arr):
        # the first slice's distinct values bound the index bits from below: skip a slicing
        # whose table and indices at that bound are no smaller than the best so far
        first = np.moveaxis(arr, axes, range(len(axes)))[(0,) * len(axes)]
        low = _bits_for(len(np.unique(first)))
        rows = math.prod(arr.shape[a] for a in axes)
        bound = rows * (1 << low) * arr.dtype.itemsize + -(-arr.size * low // 8)
        if low >= width or bound >= min(best[0].length, sliced.length if sliced else math.inf):
            continue
        bits = _slice_bits(arr, axes) if arr.dtype.itemsize == 1 else _sliced(arr, axes)[2]
        if bits >= width:
            continue
        entry = StoredTensor(name, arr.shape, arr.dtype.name, "sliced", offset, 0, bits,
                             axes=axes)
        entry = replace(entry, length=entry.expected_length())
        if entry.length < best[0].length and (sliced is None or entry.length < sliced.length):
            sliced = entry
    if sliced is not None and sliced.length < best[0].length:
        table, index, _ = _sliced(arr, sliced.axes)
        best = (sliced, lambda: table.astype(little, copy=False).tobytes()
                + pack_indices(index, sliced.bits))
    entry, data = best[0], best[1]()
    assert len(data) == entry.length, (entry, len(data))
    return entry, data


def decode(entry: StoredTensor, section) -> np.ndarray:
    """The array of ``entry`` from the weight ``section`` (bytes or memoryview); an
    :class:`ArtifactError` when an index points past the palette."""
    data = section[entry.offset:entry.offset + entry.length]
    dtype = np.dtype(entry.dtype)
    if entry.encoding == "raw":
        return np.frombuffer(data, dtype.newbyteorder("<")).astype(dtype).reshape(entry.shape)
    if entry.encoding == "palette":
        index = unpack_indices(data, entry.numel, entry.bits)
        if index.size and int(index.max()) >= len(entry.values):
            raise ArtifactError(f"stored weight {entry.name!r}: index {int(index.max())} past "
                                f"its {len(entry.values)}-value palette; recompile the model")
        return np.asarray(entry.values, dtype)[index].reshape(entry.shape)
    rows, axes = entry.slices, entry.axes
    table = np.frombuffer(data[:entry.table_bytes], dtype.newbyteorder("<")).astype(dtype)
    table = table.reshape(rows, 1 << entry.bits)
    index = unpack_indices(data[entry.table_bytes:], entry.numel, entry.bits)
    values = table[np.arange(rows)[:, None], index.reshape(rows, -1)]  # b bits: never past
    rest = [d for a, d in enumerate(entry.shape) if a not in axes]
    moved = values.reshape([entry.shape[a] for a in axes] + rest)
    return np.moveaxis(moved, range(len(axes)), axes)


def encode_all(arrays) -> tuple[tuple[StoredTensor, ...], bytes]:
    """``(entries, section)`` for ``[(name, array)]`` laid end to end."""
    entries, parts, offset = [], [], 0
    for name, array in arrays:
        entry, data = encode(name, array, offset)
        entries.append(entry)
        parts.append(data)
        offset += len(data)
    return tuple(entries), b"".join(parts)


__all__ = ["CHUNK", "ENCODINGS", "PALETTE_DTYPES", "StoredTensor", "decode", "encode",
           "encode_all", "pack_indices", "unpack_indices"]
