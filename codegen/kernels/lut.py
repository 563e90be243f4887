"""Table-lookup (T-MAC style) quantized MatMul kernels in TVM TIR.

Computes, for activation codes ``x`` (M, K) (uint8, or int8) and integer weights ``w`` (K, N),
the integer simulator's layer bit-exactly::

    acc[m, n] = sum_k (x[m, k] - z_x) * w[k, n] + bias[n]                      (int32)
    y[m, n]   = clamp(z_y + ((acc * mult[n] + 2^(shift[n]-1)) >> shift[n]), lo, hi)

(int64 intermediate, arithmetic shift, no rounding term for ``shift = 0``: the rule of
:func:`lowbit.ir.dyadic.requantize`), or ``acc`` itself in accumulator-out mode.

Weights as 0/1 planes. Every weight format is written ``w = sum_j c_j P_j + C`` with planes
``P_j`` in {0, 1} (:class:`Decomposition`):

* ``uint b``    ``c_j = 2^j``, ``C = 0``;
* ``int b``     two's complement: ``c_j = 2^j``, top plane ``c_{b-1} = -2^(b-1)``, ``C = 0``;
* ``ternary``   ``w = W+ - W-``: two planes (w > 0, w < 0), ``c = (1, -1)``, ``C = 0``;
* ``bipolar``   ``w = 2 P - 1``: ``c = (2,)``, ``C = -1`` (the only format needing ``U[m]``);
* ``codebook``  integer levels ``w = level[idx]`` (levels already on an integer grid): the
                *values* are decomposed as ``uint``/``int`` planes of the narrowest width
                holding every level (a codebook spanning [-128, 127] costs 8 planes).

Activations as tables. Signed activations are shifted to ``u = x + 128`` (``z_u = z_x + 128``),
so ``x - z_x = u - z_u`` with ``u`` in [0, 255]. Split ``u = 16 u_hi + u_lo`` into nibbles. For
each group of g = 4 activations (k = 4t .. 4t+3) and each nibble half h the layer builds, at
run time, the 16-entry table::

    T_h[t][v] = sum_{i<4} bit_i(v) * nibble_h(u[4t+i])          (0 <= T_h <= 4 * 15 = 60)

and since ``sum_i b_i u_i = T_lo[v] + 16 T_hi[v]`` exactly, plane j's dot product is
``S_j[n] = sum_t T_lo[t][v_jtn] + 16 sum_t T_hi[t][v_jtn]`` with ``v_jtn`` the 4-bit nibble of
plane j's bits for group t and channel n. A table is 16 bytes: one ``vpshufb`` (AVX-512 / AVX2)
or ``tbl`` (NEON) looks up one byte per channel for a whole vector of channels. Then::

    acc = sum_j c_j S_j + C * U[m] + offset[n],      U[m] = sum_k u[m, k]   (only if C != 0)
    offset[n] = bias[n] - z_u * sum_k w[k, n]                               (compile time)

Accumulation, exact by construction (no saturating arithmetic anywhere):

* four lookups (one quad of groups = 16 activations) add in uint8: ``4 * 60 = 240 <= 255``;
* the uint8 sum, viewed as uint16 lanes (two channels each), is added whole into ``all`` and
  shifted right by 8 into ``odd``; at most :data:`CHUNK_QUADS` = 256 quads add there, so each
  channel's true sum is ``<= 256 * 240 = 61440 <= 65535`` (4096 activations, 1024 lookups
  per byte lane between widenings). ``all = even + 256 odd (mod 2^16)``, so the even channels
  are recovered exactly as ``all - (odd << 8)`` in wrapping uint16 arithmetic;
* after each chunk ``c_j (lo + 16 hi)`` is added into the tile's int32 result, whose range is
  checked in :func:`pack_weights`: ``(sum_j |c_j| + |C|) * 255 * K + max|offset| < 2^31``.

Layout and schedule (``L`` = vector bytes: 64 AVX-512, 32 AVX2, 16 NEON): weights are packed at
compile time as ``wq[nt, j, p, l]`` uint8, N-tiles of ``L`` channels, one byte holding the
nibbles of groups ``2p`` (low) and ``2p+1`` (high). Byte lane ``l`` holds channel
``nt*L + l/2`` (even l) or ``nt*L + L/2 + (l-1)/2`` (odd l), so the uint16 view's even / odd
accumulators are channel-contiguous halves of the tile. Tables are built once per row into a
(groups, 2, 16) buffer (8 K bytes: 32 KiB for K = 4096) and broadcast to ``L`` lanes per load
(``vbroadcasti32x4``; measured 1.5x faster than storing 64-byte replicated tables). The tile
loop is parallel over N tiles (TVM thread pool; see
:func:`lowbit.codegen.kernels.common.set_num_threads`) and runs plane blocks, chunks,
quads: ``JG`` planes (3, 2 or 1, dividing the plane count; their uint16 accumulators must fit
the 1 KiB stack-allocation limit) share each table load (15 % faster than one plane at a
time). The requant epilogue is vectorized per full tile. x86 (AVX2 / AVX-512) and arm64
(NEON ``tbl``) paths exist.

CUDA (``sm_80`` / ``sm_90``, :func:`gpu_func`): the same 64-lane packed weights and the same
tables, as a TE compute: one kernel builds every row's tables (one thread per entry, with
``T_lo + 16 T_hi`` stored as one int32 entry), then one thread per output sums ``c_j`` times
the looked-up entries in int32 (no uint16 chunks: a GPU thread has no byte lanes to keep
narrow) and runs the requant epilogue. The tables are shared by every thread of a row and
read through the cache.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ...ir.dtypes import DType
from ...ir.errors import LoweringError
from ...ir.qtype import QKind, QType
from ..target import Target
from . import KernelFamily, register_family
from .common import BoundLayer, OutputRange, bind_layer, dyadic_params

W_FORMATS = ("uint", "int", "ternary", "bipolar", "codebook")
MAX_W_BITS = 4
#: quads (16 activations) accumulated in uint16 between widenings: 256 * 240 <= 65535
CHUNK_QUADS = 256
_QUAD_MAX = 4 * 4 * 15  # four lookups of a table entry <= 60
#: the weight tile of CUDA targets: the AVX-512 layout (:func:`pack_planes`), so x86 hosts and
#: GPUs share packed weights; on a GPU it only fixes where a channel's nibbles sit
GPU_LANES = 64
_INT32_MAX = (1 << 31) - 1

assert CHUNK_QUADS * _QUAD_MAX <= 0xFFFF and _QUAD_MAX <= 0xFF


@dataclass(frozen=True, slots=True)
class Decomposition:
    """``w = sum_j coeffs[j] * P_j + const`` with 0/1 planes ``P_j`` (module docstring).

    ``rule`` says how the planes are read off ``w``: ``bits`` (the two's complement bits of
    ``w`` masked to ``len(coeffs)`` bits), ``signed_digits`` (ternary: ``P_0 = w > 0``,
    ``P_1 = w < 0``) or ``sign`` (bipolar: ``P_0 = w > 0``)."""

    coeffs: tuple[int, ...]
    const: int = 0
    rule: str = "bits"

    def planes(self, w: np.ndarray) -> np.ndarray:
        """(K, N) integer weight values -> (B, K, N) uint8 0/1 planes."""
        w = np.asarray(w, np.int64)
        if self.rule == "signed_digits":
            return np.stack([w > 0, w < 0]).astype(np.uint8)
        if self.rule == "sign":
            return (w > 0).astype(np.uint8)[None]
        bits = w & ((1 << len(self.coeffs)) - 1)
        return np.stack([(bits >> j) & 1 for j in range(len(self.coeffs))]).astype(np.uint8)

    def values(self, planes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`planes` (used to check that a decomposition is exact)."""
        c = np.asarray(self.coeffs, np.int64).reshape((-1,) + (1,) * (planes.ndim - 1))
        return (planes.astype(np.int64) * c).sum(0) + self.const


def _width(lo: int, hi: int) -> tuple[str, int]:
    """Narrowest ``uint b`` (lo >= 0) or two's complement ``int b`` holding [lo, hi]."""
    if lo >= 0:
        return "uint", max(1, int(hi).bit_length())
    bits = 2
    while not -(1 << (bits - 1)) <= lo <= hi <= (1 << (bits - 1)) - 1:
        bits += 1
    return "int", bits


def decomposition(fmt: str, bits: int, levels: tuple[int, ...] = ()) -> Decomposition:
    """The plane decomposition of a weight format (module docstring)."""
    if fmt == "codebook":
        fmt, bits = _width(min(levels), max(levels))
    if fmt == "uint":
        return Decomposition(tuple(1 << j for j in range(bits)))
    if fmt == "int":
        return Decomposition(tuple(1 << j for j in range(bits - 1)) + (-(1 << (bits - 1)),))
    if fmt == "ternary":
        return Decomposition((1, -1), 0, "signed_digits")
    if fmt == "bipolar":
        return Decomposition((2,), -1, "sign")
    raise AssertionError(fmt)


@dataclass(frozen=True, slots=True)
class LutSpec:
    """One layer shape ``(M, K) x (K, N)``, the weight format and the output stage.

    ``w_format`` in :data:`W_FORMATS`; ``w_bits`` 1..4 (int: 2..4; ternary 2; bipolar 1;
    codebook: index bits, with ``levels`` the integer level of each index). ``a_signed``: int8
    activation codes (else uint8). ``requant`` None means accumulator-out mode (int32)."""

    M: int
    K: int
    N: int
    w_format: str
    w_bits: int
    a_signed: bool = False
    requant: OutputRange | None = None
    levels: tuple[int, ...] = ()

    def __post_init__(self):
        if min(self.M, self.K, self.N) < 1:
            raise LoweringError(f"lut: shape M={self.M} K={self.K} N={self.N} must be >= 1")
        if self.w_format not in W_FORMATS:
            raise LoweringError(
                f"lut: weight format {self.w_format!r} unsupported; use one of {W_FORMATS}")
        fixed = {"ternary": 2, "bipolar": 1}.get(self.w_format)
        if fixed is not None and self.w_bits != fixed:
            raise LoweringError(f"lut: {self.w_format} weights have {fixed} bits, "
                                f"got {self.w_bits}")
        if not 1 <= self.w_bits <= MAX_W_BITS or (self.w_format == "int" and self.w_bits < 2):
            raise LoweringError(
                f"lut: weight {self.w_format}{self.w_bits} unsupported; bits must be "
                f"1..{MAX_W_BITS} (int: 2..{MAX_W_BITS}); use the int8 family for wider weights")
        if self.w_format == "codebook":
            if not 1 <= len(self.levels) <= (1 << self.w_bits):
                raise LoweringError(
                    f"lut: a {self.w_bits}-bit codebook needs 1..{1 << self.w_bits} integer "
                    f"levels, got {len(self.levels)}")
            if any(not isinstance(v, (int, np.integer)) or abs(int(v)) > 128
                   for v in self.levels):
                raise LoweringError(
                    f"lut: codebook levels must be integers in [-128, 128] (levels rounded to "
                    f"an integer grid), got {self.levels}")
        elif self.levels:
            raise LoweringError(f"lut: levels are only for codebook weights, not "
                                f"{self.w_format}")

    @property
    def decomposition(self) -> Decomposition:
        return decomposition(self.w_format, self.w_bits, tuple(int(v) for v in self.levels))

    @property
    def a_dtype(self) -> str:
        return "int8" if self.a_signed else "uint8"

    @property
    def out_dtype(self) -> str:
        return "int32" if self.requant is None else self.requant.dtype

    def value_range(self) -> tuple[int, int]:
        """Legal weight values ``[lo, hi]`` of the format."""
        if self.w_format == "codebook":
            return min(self.levels), max(self.levels)
        if self.w_format in ("ternary", "bipolar"):
            return -1, 1
        if self.w_format == "int":
            return -(1 << (self.w_bits - 1)), (1 << (self.w_bits - 1)) - 1
        return 0, (1 << self.w_bits) - 1


@dataclass(frozen=True, slots=True)
class KernelKey:
    """What the compiled code depends on (formats with equal decompositions share a kernel)."""

    M: int
    K: int
    N: int
    decomposition: Decomposition
    a_signed: bool
    requant: OutputRange | None


@dataclass(frozen=True, slots=True)
class Isa:
    """The table-lookup instruction of a target: ``lanes`` bytes per lookup via ``intrin``."""

    lanes: int
    intrin: str


def isa_for(target: Target) -> Isa:
    """AVX-512 (BW) ``vpshufb`` x 64, AVX2 ``vpshufb`` x 32, NEON ``tbl`` x 16; CUDA: the
    64-lane layout and no instruction (:func:`gpu_func` loads table entries); else an error."""
    if target.is_gpu:
        return Isa(GPU_LANES, "")
    if "avx512f" in target.features:
        return Isa(64, "llvm.x86.avx512.pshuf.b.512")
    if "avx2" in target.features:
        return Isa(32, "llvm.x86.avx2.pshuf.b")
    if "neon" in target.features:
        return Isa(16, "llvm.aarch64.neon.tbl1")
    raise LoweringError(f"lut: target {target.name} has neither AVX2, AVX-512 nor NEON; "
                        f"use the bitserial or int8 family there")


@dataclass(frozen=True, slots=True, eq=False)
class PackedWeights:
    """Compile-time layer parameters in kernel layout.

    ``wq`` (NT, B, P, L) uint8 nibble pairs (module docstring; padded channels and activations
    are 0 bits); ``offset`` (N,) int32 (bias and zero point folded in); ``mult``, ``shift``
    (N,) int64 requant multipliers (empty in accumulator-out mode)."""

    wq: np.ndarray
    offset: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    lanes: int

    def __post_init__(self):
        for arr in (self.wq, self.offset, self.mult, self.shift):
            arr.setflags(write=False)


def lane_channels(lanes: int) -> np.ndarray:
    """Channel (within a tile) held by each byte lane: even l -> l/2, odd l -> L/2 + l/2."""
    lane = np.arange(lanes)
    return np.where(lane % 2 == 0, lane // 2, lanes // 2 + lane // 2)


def pack_planes(planes: np.ndarray, lanes: int) -> np.ndarray:
    """(B, K, N) 0/1 planes -> ``wq`` (NT, B, P, L) uint8 (module docstring layout)."""
    B, K, N = planes.shape
    quads, tiles = -(-K // 16), -(-N // lanes)
    padded = np.zeros((B, quads * 16, tiles * lanes), np.uint8)
    padded[:, :K, :N] = planes
    groups = padded.reshape(B, quads * 4, 4, tiles, lanes)
    nibbles = (groups * np.array([1, 2, 4, 8], np.uint8)[None, None, :, None, None]).sum(
        2, dtype=np.uint8)  # (B, G, NT, L)
    pairs = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)  # (B, P, NT, L)
    pairs = pairs[..., lane_channels(lanes)]
    return np.ascontiguousarray(pairs.transpose(2, 0, 1, 3))


def pack_weights(spec: LutSpec, target: Target, w: np.ndarray, *, bias=None,
                 a_zero_point: int = 0, mult=None, shift=None) -> PackedWeights:
    """Compile-time packing: nibble planes and ``offset[n] = bias[n] - z_u sum_k w[k, n]``.

    ``w`` (K, N) holds weight *values* (codebook: ``levels[idx]``, see :func:`codebook_values`);
    ``a_zero_point`` is ``z_x`` in the activation codes' own (uint8 / int8) range; ``mult`` /
    ``shift`` (N,) or scalars for requant mode. Raises :class:`LoweringError` for values out of
    format, bad dyadic parameters, or when the int32 accumulator could overflow."""
    isa = isa_for(target)
    w = np.asarray(w)
    if w.shape != (spec.K, spec.N) or w.dtype.kind not in "iu":
        raise LoweringError(
            f"lut: weights must be integer ({spec.K}, {spec.N}), got {w.dtype} {w.shape}")
    w = w.astype(np.int64)
    lo, hi = spec.value_range()
    bad = w.size and (w.min() < lo or w.max() > hi)
    if spec.w_format == "bipolar":
        bad = bad or np.any(w == 0)
    if spec.w_format == "codebook":
        bad = bad or not np.all(np.isin(w, np.asarray(spec.levels, np.int64)))
    if bad:
        raise LoweringError(
            f"lut: weights in [{w.min()}, {w.max()}] are not {spec.w_format}{spec.w_bits} "
            f"values{' of the codebook ' + str(spec.levels) if spec.levels else ''}; "
            f"quantize them first")
    a_lo, a_hi = (-128, 127) if spec.a_signed else (0, 255)
    if not a_lo <= a_zero_point <= a_hi:
        raise LoweringError(f"lut: activation zero point {a_zero_point} outside "
                            f"{spec.a_dtype} [{a_lo}, {a_hi}]")
    z_u = a_zero_point + (128 if spec.a_signed else 0)
    bias = np.zeros(spec.N, np.int64) if bias is None else np.broadcast_to(
        np.asarray(bias, np.int64), (spec.N,))
    dec = spec.decomposition
    planes = dec.planes(w)
    assert np.array_equal(dec.values(planes), w), "plane decomposition must be exact"
    offset = bias - z_u * w.sum(0)
    # int32 range of every partial result: each S_j <= 255 K, U <= 255 K, true acc bounded too
    c_sum = sum(abs(c) for c in dec.coeffs) + abs(dec.const)
    bound = max(c_sum * 255 * spec.K + int(np.abs(offset).max()),
                spec.K * 255 * max(abs(lo), abs(hi)) + int(np.abs(bias).max()))
    if bound > _INT32_MAX:
        raise LoweringError(
            f"lut: K={spec.K} with {spec.w_format}{spec.w_bits} weights and this bias may "
            f"overflow the int32 accumulator (bound {bound}); split K")
    mult_a, shift_a = dyadic_params("lut", spec.requant, spec.N, mult, shift)
    return PackedWeights(pack_planes(planes, isa.lanes), offset.astype(np.int32), mult_a,
                         shift_a, isa.lanes)


def codebook_values(indices: np.ndarray, levels) -> np.ndarray:
    """Codebook indices (K, N) -> integer weight values ``levels[idx]`` (int64)."""
    indices = np.asarray(indices)
    levels = np.asarray(levels, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(levels)):
        raise LoweringError(f"lut: codebook index out of range [0, {len(levels)})")
    return levels[indices]


# -- TIR ------------------------------------------------------------------------------------
def _vector_type(scalar: str, lanes: int):
    """The TVMScript type object of a ``scalar x lanes`` vector (for ``T.let`` annotations)."""
    from tvm.script import tirx as T

    return getattr(T, f"{scalar}x{lanes}")


def _prim_func(key: KernelKey, isa: Isa):
    """The whole layer as one TVMScript PrimFunc: table build, lookups, epilogue."""
    from tvm.script import tirx as T

    M, K, N = key.M, key.K, key.N
    L, H, PSHUF = isa.lanes, isa.lanes // 2, isa.intrin
    R = L // 16  # table copies per vector
    coeffs, const = key.decomposition.coeffs, key.decomposition.const
    B = len(coeffs)
    JG = max(d for d in (3, 2, 1) if B % d == 0)  # planes sharing one table load
    QD = -(-K // 16)  # quads of 16 activations
    G, P = QD * 4, QD * 2  # groups of 4, nibble-pair bytes
    NT, NFULL = -(-N // L), N // L
    NC = -(-QD // CHUNK_QUADS)
    ADT, ODT = key.a_signed and "int8" or "uint8", key.requant and key.requant.dtype or "int32"
    REQ, USUM = key.requant is not None, const != 0
    ZY, LO, HI = (key.requant.zero_point, key.requant.lo, key.requant.hi) if REQ else (0, 0, 0)
    u8x, u16x, i32x = f"uint8x{L}", f"uint16x{H}", f"int32x{H}"
    BCAST = list(range(L))

    def coeff(j):
        """c_j for an (unrolled) plane index j: a select chain the simplifier folds."""
        expr = T.int32(coeffs[-1])
        for idx in range(B - 2, -1, -1):
            expr = T.Select(j == idx, T.int32(coeffs[idx]), expr)
        return expr

    def code(x, m, k):
        """Activation k of row m as uint8 u in [0, 255] (int8: x + 128); k clamped into the
        row (padded positions only meet weight bits 0)."""
        if key.a_signed:
            return T.reinterpret("uint8", x[m, T.min(k, K - 1)]) ^ T.uint8(128)
        return x[m, T.min(k, K - 1)]

    def table_entries(x, m, g, h):
        """``T_h[g][v]`` for v = 0..15 as 16 uint8 lanes: sum_i bit_i(v) nibble_h(u[4g+i])."""
        v = T.Ramp(T.uint8(0), T.uint8(1), 16)
        terms = [T.Broadcast((code(x, m, 4 * g + i) >> T.uint8(4 * h)) & T.uint8(15), 16)
                 * ((v >> T.Broadcast(T.uint8(i), 16)) & T.Broadcast(T.uint8(1), 16))
                 for i in range(4)]
        return terms[0] + terms[1] + terms[2] + terms[3]

    def table(tbl, g, h):
        tv = tbl[g, h, T.Ramp(0, 1, 16)]
        return tv if R == 1 else T.Shuffle([tv] * R, BCAST)

    def lookup(tbl, g, h, idx):
        return T.call_llvm_pure_intrin(u8x, PSHUF, table(tbl, g, h), idx)

    def quad_sum(tbl, wq, nt, j, quad, h):
        """Sum of the 4 lookups of one quad (2 nibble-pair rows) of plane j, as uint16 lanes
        (uint8 sums <= 240 per byte)."""
        rows = [wq[nt, j, 2 * quad + r, T.Ramp(0, 1, L)] for r in range(2)]
        low = [v & T.Broadcast(T.uint8(15), L) for v in rows]
        high = [v >> T.Broadcast(T.uint8(4), L) for v in rows]
        return T.reinterpret(u16x, lookup(tbl, 4 * quad, h, low[0])
                             + lookup(tbl, 4 * quad + 1, h, high[0])
                             + lookup(tbl, 4 * quad + 2, h, low[1])
                             + lookup(tbl, 4 * quad + 3, h, high[1]))

    def requant(acc, mult_n, shift_n, dt):
        one = T.int64(1)
        v = (T.Cast("int64", acc) * mult_n + ((one << shift_n) >> one)) >> shift_n
        return T.Cast(dt, T.max(T.min(v + T.int64(ZY), T.int64(HI)), T.int64(LO)))

    @T.prim_func
    def main(x: T.Buffer((M, K), ADT), wq: T.Buffer((NT, B, P, L), "uint8"),
             offset: T.Buffer((N,), "int32"), mult: T.Buffer((N,), "int64"),
             shift: T.Buffer((N,), "int64"), y: T.Buffer((M, N), ODT)):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        tbl = T.alloc_buffer((G, 2, 16), "uint8")
        usum = T.alloc_buffer((1,), "int32")
        for m in range(M):
            usum[0] = 0
            for g in range(G):
                for h in T.unroll(2):
                    tbl[g, h, T.Ramp(0, 1, 16)] = table_entries(x, m, g, h)
            if USUM:
                for k in range(K):
                    usum[0] = usum[0] + T.Cast("int32", code(x, m, k))
            for nt in T.parallel(NT):
                res = T.alloc_buffer((L,), "int32")
                acc16 = T.alloc_buffer((JG, 2, 2, H), "uint16")
                res[T.Ramp(0, 1, L)] = T.Broadcast(T.int32(0), L)
                for jg in range(B // JG):
                    for c in range(NC):
                        for jj in T.unroll(JG):
                            for h in T.unroll(2):
                                for p in T.unroll(2):
                                    acc16[jj, h, p, T.Ramp(0, 1, H)] = T.Broadcast(T.uint16(0), H)
                        for q in range(T.min(CHUNK_QUADS, QD - c * CHUNK_QUADS)):
                            for h in T.unroll(2):
                                for jj in T.unroll(JG):
                                    quad: T.let[_vector_type("uint16", H)] = quad_sum(
                                        tbl, wq, nt, jg * JG + jj, c * CHUNK_QUADS + q, h)
                                    acc16[jj, h, 0, T.Ramp(0, 1, H)] = (
                                        acc16[jj, h, 0, T.Ramp(0, 1, H)] + quad)
                                    acc16[jj, h, 1, T.Ramp(0, 1, H)] = (
                                        acc16[jj, h, 1, T.Ramp(0, 1, H)]
                                        + (quad >> T.Broadcast(T.uint16(8), H)))
                        for jj in T.unroll(JG):
                            for h in T.unroll(2):  # even = all - 256 odd (mod 2^16, exact)
                                acc16[jj, h, 0, T.Ramp(0, 1, H)] = (
                                    acc16[jj, h, 0, T.Ramp(0, 1, H)]
                                    - (acc16[jj, h, 1, T.Ramp(0, 1, H)]
                                       << T.Broadcast(T.uint16(8), H)))
                            for p in T.unroll(2):
                                res[T.Ramp(p * H, 1, H)] = res[T.Ramp(p * H, 1, H)] + T.Broadcast(
                                    coeff(jg * JG + jj), H) * (
                                        T.Cast(i32x, acc16[jj, 0, p, T.Ramp(0, 1, H)])
                                        + T.Cast(i32x, acc16[jj, 1, p, T.Ramp(0, 1, H)])
                                        * T.Broadcast(T.int32(16), H))
                if nt < NFULL:
                    for lane in T.vectorized(L):
                        if REQ:
                            y[m, nt * L + lane] = requant(
                                res[lane] + offset[nt * L + lane] + T.int32(const) * usum[0],
                                mult[nt * L + lane], shift[nt * L + lane], ODT)
                        else:
                            y[m, nt * L + lane] = (res[lane] + offset[nt * L + lane]
                                                   + T.int32(const) * usum[0])
                else:
                    for lane in range(N - NFULL * L):
                        if REQ:
                            y[m, nt * L + lane] = requant(
                                res[lane] + offset[nt * L + lane] + T.int32(const) * usum[0],
                                mult[nt * L + lane], shift[nt * L + lane], ODT)
                        else:
                            y[m, nt * L + lane] = (res[lane] + offset[nt * L + lane]
                                                   + T.int32(const) * usum[0])

    return main


@dataclass(frozen=True, slots=True, eq=False)
class LutKernel:
    """A compiled layer: ``lib`` (TVM module; entry ``main``) for ``spec`` on ``target``.

    Entry arguments: ``x`` (M, K), ``wq``, ``offset``, ``mult``, ``shift`` (both (N,) int64,
    ignored in accumulator-out mode), ``y``."""

    spec: LutSpec
    target: Target
    lib: object

    def bind(self, packed: PackedWeights) -> BoundLayer:
        """Upload the packed parameters once; returns a callable layer (host targets)."""
        if self.target.is_gpu:
            raise LoweringError(f"lut: kernel built for {self.target.name} cannot run on this "
                                f"host's CPU; load the compiled module on a GPU")
        isa = isa_for(self.target)
        spec = self.spec
        expect = (-(-spec.N // isa.lanes), len(spec.decomposition.coeffs), -(-spec.K // 16) * 2,
                  isa.lanes)
        if packed.wq.shape != expect:
            raise LoweringError(f"lut: packed weights {packed.wq.shape} do not match {spec} on "
                                f"{self.target.name} (expected {expect}); repack")
        mult, shift = packed.mult, packed.shift
        if spec.requant is None:
            mult = shift = np.zeros(spec.N, np.int64)
        return bind_layer(self, (packed.wq, packed.offset, mult, shift), family="lut",
                          in_shape=(spec.M, spec.K), out_shape=(spec.M, spec.N))

    def __call__(self, x: np.ndarray, packed: PackedWeights) -> np.ndarray:
        """Run once on numpy codes (convenience; binds every call)."""
        return self.bind(packed)(x)


def kernel_key(spec: LutSpec) -> KernelKey:
    return KernelKey(spec.M, spec.K, spec.N, spec.decomposition, spec.a_signed, spec.requant)


def lower(spec: LutSpec, target: Target):
    """The IRModule for ``spec`` on ``target`` (before ``tvm.compile``)."""
    return _lower_key(kernel_key(spec), target)


def _lower_key(key: KernelKey, target: Target):
    import tvm

    if target.is_gpu:
        return tvm.IRModule({"main": _gpu_func(key, True)})
    return tvm.IRModule({"main": _prim_func(key, isa_for(target))})


def build(spec: LutSpec, target: Target) -> LutKernel:
    """Compile one layer for ``target``; compiled code is cached per (kernel key, target)."""
    return LutKernel(spec, target, _build_cached(kernel_key(spec), target))


@functools.lru_cache(maxsize=256)
def _build_cached(key: KernelKey, target: Target):
    import tvm

    return tvm.compile(_lower_key(key, target), target=target.tvm_dict())


# -- CUDA -----------------------------------------------------------------------------------
#: threads per CUDA block (consecutive threads: consecutive output channels of one row)
GPU_THREADS = 64


def gpu_func(spec: LutSpec, bind_threads: bool = True):
    """The CUDA layer as a TE compute -> PrimFunc ``main(x, wq, offset, mult, shift, y)`` over
    the CPU layout (``wq`` (NT, B, P, :data:`GPU_LANES`), :func:`pack_planes`). Blocks:

    * ``code``   ``u[m, k]`` int32 (int8 codes ``x ^ 0x80``), zero past K;
    * ``table``  per row and group of 4 activations the 16-entry table
                 ``T[m, g, v] = sum_{i<4} bit_i(v) u[m, 4g + i]`` (``T_lo + 16 T_hi`` of the
                 module docstring in one entry: a GPU has no byte-lane limit to respect);
    * ``usum``   ``U[m] = sum_k u[m, k]`` (bipolar weights only);
    * ``lookup`` ``S[m, n] = sum_{j, p, h} c_j T[m, 2p + h, nibble_h(wq[n // L, j, p,
                 lane(n % L)])]`` (int32; exact, every partial sum within the bound
                 :func:`pack_weights` checks);
    * ``out``    ``acc = S + C U[m] + offset[n]``, then the int64 requant.

    GPU schedule: ``table`` one thread per entry; ``lookup`` one thread per output (threads of
    a block share a row, so the row's tables are read through the cache), with ``out`` in the
    same thread and ``S`` in a register (bipolar weights: ``usum`` and ``out`` are kernels of
    their own, as ``out`` reads ``U``). ``bind_threads=False`` returns the unscheduled
    PrimFunc, which ``tvm.compile`` builds for llvm: the formula the GPU runs, checked on a
    CPU."""
    return _gpu_func(kernel_key(spec), bind_threads)


def _gpu_func(key: KernelKey, bind_threads: bool):
    import tvm
    from tvm import te, tirx

    M, K, N, L = key.M, key.K, key.N, GPU_LANES
    a_dtype = "int8" if key.a_signed else "uint8"
    coeffs, const = key.decomposition.coeffs, key.decomposition.const
    B, QD = len(coeffs), -(-K // 16)
    G, P, NT = QD * 4, QD * 2, -(-N // L)
    x = te.placeholder((M, K), a_dtype, name="x")
    wq = te.placeholder((NT, B, P, L), "uint8", name="wq")
    offset = te.placeholder((N,), "int32", name="offset")
    mult = te.placeholder((N,), "int64", name="mult")
    shift = te.placeholder((N,), "int64", name="shift")

    def code(m, k):
        v = x[m, tirx.min(k, K - 1)]
        if key.a_signed:
            v = tirx.reinterpret("uint8", v) ^ tirx.const(128, "uint8")
        return tirx.if_then_else(k < K, v.astype("int32"), tirx.const(0, "int32"))
    u = te.compute((M, G * 4), code, name="code")
    table = te.compute((M, G, 16), lambda m, g, v: sum(
        ((v >> i) & 1) * u[m, 4 * g + i] for i in range(4)), name="table")

    def coeff(j):
        expr = tirx.const(coeffs[-1], "int32")
        for idx in range(B - 2, -1, -1):
            expr = tirx.Select(j == idx, tirx.const(coeffs[idx], "int32"), expr)
        return expr

    blocks = ["code", "table"]
    if const:  # U[m] for the bipolar constant term
        kk = te.reduce_axis((0, G * 4), name="kk")
        usum = te.compute((M,), lambda m: te.sum(u[m, kk], axis=kk), name="usum")
        blocks.append("usum")
    j = te.reduce_axis((0, B), name="j")
    p = te.reduce_axis((0, P), name="p")
    h = te.reduce_axis((0, 2), name="h")

    def lookup(m, n):
        c = n % L
        lane = c % (L // 2) * 2 + c // (L // 2)  # inverse of lane_channels
        nibble = (wq[n // L, j, p, lane].astype("int32") >> (4 * h)) & 15
        return te.sum(coeff(j) * table[m, 2 * p + h, nibble], axis=[j, p, h])
    dot = te.compute((M, N), lookup, name="lookup")

    def output(m, n):
        acc = dot[m, n] + offset[n]
        if const:
            acc = acc + tirx.const(const, "int32") * usum[m]
        if key.requant is None:
            return acc
        r, one = key.requant, tirx.const(1, "int64")
        v = (acc.astype("int64") * mult[n] + ((one << shift[n]) >> one)) >> shift[n]
        v = v + tirx.const(r.zero_point, "int64")
        v = tirx.max(tirx.min(v, tirx.const(r.hi, "int64")), tirx.const(r.lo, "int64"))
        return v.astype(r.dtype)
    y = te.compute((M, N), output, name="out")
    func = te.create_prim_func([x, wq, offset, mult, shift, y])
    if not bind_threads:
        return func
    sch = tvm.s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("code"))
    for name in blocks[1:] + ["lookup"]:
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        spatial = {"table": 3, "usum": 1, "lookup": 2}[name]
        bx, tx = sch.split(sch.fuse(*loops[:spatial]), [None, GPU_THREADS])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    lookup_block = sch.get_sblock("lookup")
    sch.decompose_reduction(lookup_block, sch.get_loops(lookup_block)[2])  # S = 0 once
    if const:  # the epilogue also reads U, made by another kernel: a kernel of its own
        bx, tx = sch.split(sch.fuse(*sch.get_loops(sch.get_sblock("out"))), [None, GPU_THREADS])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    else:  # the epilogue in the lookup's thread, S in a register
        sch.reverse_compute_at(sch.get_sblock("out"), tx)
        sch.set_scope(lookup_block, 0, "local")
    return sch.mod["main"]


# -- registry entry -------------------------------------------------------------------------
def weight_format(qtype: QType) -> tuple[str, int] | None:
    """``(format, bits)`` for a weight QType this family computes with, or None.

    Binary -> bipolar; ternary; uniform <= 4 bits with zero points 0 -> uint / int;
    codebook <= 4 bits (levels must be integers when packing)."""
    if qtype.kind == QKind.BINARY:
        return "bipolar", 1
    if qtype.kind == QKind.TERNARY:
        return "ternary", 2
    if qtype.kind == QKind.CODEBOOK and qtype.bits <= MAX_W_BITS:
        return "codebook", qtype.bits
    if qtype.kind != QKind.UNIFORM or qtype.bits > MAX_W_BITS or any(qtype.zero_point):
        return None
    if qtype.signed:
        return ("int", qtype.bits) if qtype.bits >= 2 else None
    return "uint", qtype.bits


def activation_format(qtype: QType) -> bool | None:
    """``a_signed`` for an 8-bit-or-narrower uniform, per-tensor activation QType, else None."""
    if qtype.kind != QKind.UNIFORM or qtype.bits > 8 or len(qtype.zero_point) > 1:
        return None
    return qtype.signed


def accepts(w_qtype: QType, a_qtype: QType) -> bool:
    """True for w in {binary, ternary, uint1..4, int2..4 symmetric, codebook1..4} x
    a in {uint / int, <= 8 bits, per-tensor zero point}."""
    return weight_format(w_qtype) is not None and activation_format(a_qtype) is not None


def accumulator_dtype(K: int, w_qtype: QType, a_qtype: QType) -> DType:
    """Accumulator rule: int32. Raises :class:`LoweringError` when ``K * 255 * max|w|`` (the
    activation as a shifted uint8 code) cannot fit int32; bias is checked at packing."""
    fmt = weight_format(w_qtype)
    if fmt is None or activation_format(a_qtype) is None:
        raise LoweringError(f"lut: {w_qtype} x {a_qtype} is not a LUT-family pair")
    w_mag = 128 if fmt[0] == "codebook" else max(abs(w_qtype.min), abs(w_qtype.max))
    if K * 255 * w_mag > _INT32_MAX:
        raise LoweringError(f"lut: K={K} with {w_qtype} x {a_qtype} overflows int32; split K")
    return DType.int(32)


FAMILY = register_family(KernelFamily(
    name="lut",
    accepts=accepts,
    accumulator_dtype=accumulator_dtype,
    build=build,
    pack_weights=pack_weights,
    formula=__doc__[:__doc__.index("Weights as 0/1 planes")].strip(),
))
