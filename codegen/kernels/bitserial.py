"""Bit-serial (XNOR / AND-popcount) quantized MatMul kernels in TVM TIR.

Computes, for activation codes ``x`` (M, K) and integer weights ``w`` (K, N), the integer
simulator's layer bit-exactly::

    acc[m, n] = sum_k (x[m, k] - z_x) * w[k, n] + bias[n]                      (int32)
    y[m, n]   = clamp(z_y + ((acc * mult[n] + 2^(shift[n]-1)) >> shift[n]), lo, hi)

(int64 intermediate, arithmetic shift, no rounding term for ``shift = 0``: the rule of
:func:`lowbit.ir.dyadic.requantize`), or ``acc`` itself in accumulator-out mode.

Operand formats (``bits`` <= 4 each):

* ``uint``    b-bit unsigned codes ``u = sum_i 2^i u_i`` (plane ``u_i`` = bit i);
* ``int``     b-bit signed weights in two's complement planes:
              ``v = sum_{j<b-1} 2^j v_j - 2^(b-1) v_{b-1}`` (top plane weighs negatively, so
              no offset and no extra runtime term is needed);
* ``bipolar`` values ``+-1`` stored as one plane, bit 1 for +1: ``x = 2u - 1``.

Writing each operand as ``x = sx*u + ox`` (uint/int: ``sx = 1, ox = 0``; bipolar: ``sx = 2,
ox = -1``) and ``w = sw*v + ow`` likewise,

    sum_k x w = sx sw P[m, n] + sx ow U[m] + ox sw V[n] + K ox ow,
    P = sum_{i,j} c_i d_j popcount(X_i[m] AND W_j[n])     (c, d the plane weights above)
    U[m] = sum_k u[m, k]   (only needed for bipolar weights with uint activations)
    V[n] = sum_k v[k, n]   (compile time)

and for bipolar x bipolar the XNOR form ``sum_k x w = K - 2 popcount(X XOR W)``. Everything
that depends on weights only, ``offset[n] = ox sw V[n] + K ox ow - z_x sum_k w[k, n] +
bias[n]`` (XNOR: ``offset[n] = K - z_x sum_k w[k, n] + bias[n]``), is folded at compile time
(:func:`pack_weights`), so the kernel computes ``acc = sx sw P + sx ow U + offset`` (XNOR:
``acc = offset - 2 popcount(X XOR W)``).

Planes are packed along K into words of ``target.popcount_bits`` bits (uint64; uint32 on
CUDA and on x86 without POPCNT); bit ``b`` of word ``t`` holds element ``k = t*W + b``. K need
not be a multiple of the word: padding bits are 0 in both operands, so they add nothing to
AND and XOR popcounts, and the XNOR form uses the true K. Weights are packed in numpy at
compile time; activations are packed *inside* the compiled function (a separate TIR block of
the same PrimFunc), so the measured layer time includes packing (measured: ~0.25 us of the
~22 us 1x4096x4096 w1a1 layer on Zen 5, so a separate packing function would buy nothing).

CPU schedule: weights are stored N-tiled (``n_tile``: one 512-bit vector of words per K-word),
the GEMM runs parallel over N tiles (TVM thread pool, see :func:`set_num_threads`), and per tile
loops m, plane pairs, K-words, with the tile's channels innermost and vectorized: one vector
load, XOR/AND with the broadcast activation word, ``vpopcntq`` (AVX-512 VPOPCNTDQ; NEON ``cnt``
on arm64) and add; no horizontal reduction. The epilogue (offset, requant) runs per tile right
after it (after the whole GEMM for bipolar weights x uint activations, which also read ``U``).
A 1x4096x4096 w1a1 layer streams 2 MiB of weights (> the 1 MiB L2), so cache-hot on one core
it runs at the L3 read bandwidth: measured equal (+-10%) to a bare vectorized sum over the same
2 MiB; tiles read as 2..16 side-by-side streams measured slower.
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
from .common import BoundLayer, OutputRange, bind_layer, dyadic_params, set_num_threads  # noqa: F401 (re-export)

FORMATS_W = ("bipolar", "uint", "int")
FORMATS_A = ("bipolar", "uint")
MAX_BITS = 4
_INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class BitserialSpec:
    """One layer shape: ``(M, K) x (K, N)``, operand formats, and the output stage.

    ``requant`` None means accumulator-out mode (int32 ``acc``)."""

    M: int
    K: int
    N: int
    w_format: str
    w_bits: int
    a_format: str
    a_bits: int
    requant: OutputRange | None = None

    def __post_init__(self):
        if min(self.M, self.K, self.N) < 1:
            raise LoweringError(f"bitserial: shape M={self.M} K={self.K} N={self.N} must be >= 1")
        for role, fmt, bits, allowed in (("weight", self.w_format, self.w_bits, FORMATS_W),
                                         ("activation", self.a_format, self.a_bits, FORMATS_A)):
            if fmt not in allowed:
                raise LoweringError(
                    f"bitserial: {role} format {fmt!r} unsupported; use one of {allowed}")
            if fmt == "bipolar" and bits != 1:
                raise LoweringError(f"bitserial: bipolar {role} has 1 bit, got {bits}")
            if not 1 <= bits <= MAX_BITS or (fmt == "int" and bits < 2):
                raise LoweringError(
                    f"bitserial: {role} {fmt}{bits} unsupported; bits must be 1..{MAX_BITS} "
                    f"(int: 2..{MAX_BITS}); use the int8 kernel family for wider formats")

    @property
    def xnor(self) -> bool:
        """Both operands bipolar: the XNOR-popcount form applies."""
        return self.w_format == "bipolar" and self.a_format == "bipolar"

    @property
    def a_dtype(self) -> str:
        """numpy dtype of the activation codes the kernel takes (bipolar: int8 +-1)."""
        return "int8" if self.a_format == "bipolar" else "uint8"

    @property
    def out_dtype(self) -> str:
        return "int32" if self.requant is None else self.requant.dtype


def _needs_usum(spec: BitserialSpec) -> bool:
    """Bipolar weights with uint activations need the runtime row sum ``U[m]``."""
    return spec.w_format == "bipolar" and not spec.xnor


def _operand_affine(fmt: str) -> tuple[int, int]:
    """``(s, o)`` with value = s * plane-code + o (see the module docstring)."""
    return (2, -1) if fmt == "bipolar" else (1, 0)


def _value_range(fmt: str, bits: int) -> tuple[int, int]:
    if fmt == "bipolar":
        return -1, 1
    if fmt == "int":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@dataclass(frozen=True, slots=True, eq=False)
class PackedWeights:
    """Compile-time layer parameters in kernel layout.

    ``planes`` (w_bits, NT, KW, T) uint{word_bits}: bit planes along K, N in tiles of
    ``T = n_tile(word_bits)`` (channel ``n`` is ``[:, n // T, :, n % T]``, padded channels 0)
    so a tile's words for one K-word are one vector register; ``offset`` (N,) int32: the
    weight-only terms of the module docstring (bias and ``z_x`` folded in); ``mult``, ``shift``
    (N,) int64: the dyadic requant multipliers (empty in accumulator-out mode)."""

    planes: np.ndarray
    offset: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    word_bits: int

    def __post_init__(self):
        for arr in (self.planes, self.offset, self.mult, self.shift):
            arr.setflags(write=False)


def pack_bits(codes: np.ndarray, word_bits: int) -> np.ndarray:
    """Pack a 0/1 array (..., K) along K into (..., ceil(K / W)) uint{W} words, LSB first:
    bit ``b`` of word ``t`` is element ``t*W + b``; padding bits are 0."""
    codes = np.asarray(codes)
    K = codes.shape[-1]
    n_words = -(-K // word_bits)
    padded = np.zeros(codes.shape[:-1] + (n_words * word_bits,), dtype=np.uint8)
    padded[..., :K] = codes
    as_bytes = np.packbits(padded.reshape(-1, n_words * word_bits), axis=-1, bitorder="little")
    # little-endian bytes of each word -> the word (bytes in memory order, LSB byte first)
    words = as_bytes.reshape(-1, n_words, word_bits // 8).copy()
    out = words.view(np.dtype(f"<u{word_bits // 8}")).reshape(codes.shape[:-1] + (n_words,))
    return out.astype(f"uint{word_bits}")


def weight_planes(w: np.ndarray, fmt: str, bits: int) -> np.ndarray:
    """(K, N) weight values -> (bits, N, K) 0/1 planes (bipolar: +1 -> 1; int: two's
    complement of ``bits`` bits)."""
    w = np.asarray(w).astype(np.int64)
    if fmt == "bipolar":
        return (w > 0).astype(np.uint8).T[None]
    unsigned = w & ((1 << bits) - 1)  # two's complement for int, identity for uint
    return np.stack([((unsigned >> j) & 1).astype(np.uint8).T for j in range(bits)])


def pack_weights(spec: BitserialSpec, target: Target, w: np.ndarray, *, bias=None,
                 a_zero_point: int = 0, mult=None, shift=None) -> PackedWeights:
    """Compile-time packing: planes along K, and ``offset[n]`` (module docstring) in int32.

    ``w`` (K, N) holds weight *values* in the spec's format; ``bias`` (N,) int; ``mult`` /
    ``shift`` (N,) or scalars for requant mode. Raises :class:`LoweringError` when a value is
    out of format or when ``|acc|`` could leave int32."""
    w = np.asarray(w)
    if w.shape != (spec.K, spec.N) or w.dtype.kind not in "iu":
        raise LoweringError(
            f"bitserial: weights must be integer ({spec.K}, {spec.N}), got {w.dtype} {w.shape}")
    w = w.astype(np.int64)
    lo, hi = _value_range(spec.w_format, spec.w_bits)
    if w.size and (w.min() < lo or w.max() > hi or (spec.w_format == "bipolar" and
                                                      np.any(w == 0))):
        raise LoweringError(
            f"bitserial: weights in [{w.min()}, {w.max()}] do not fit "
            f"{spec.w_format}{spec.w_bits}; quantize them first")
    bias = np.zeros(spec.N, np.int64) if bias is None else np.broadcast_to(
        np.asarray(bias, np.int64), (spec.N,))
    a_lo, a_hi = _value_range(spec.a_format, spec.a_bits)
    if spec.a_format == "bipolar" and a_zero_point != 0:
        raise LoweringError("bitserial: bipolar activations have no zero point; pass 0")
    sx, ox = _operand_affine(spec.a_format)
    sw, ow = _operand_affine(spec.w_format)
    planes = weight_planes(w, spec.w_format, spec.w_bits)
    v = (w - ow) // sw  # plane code per element: the value a plane decomposition encodes
    if spec.xnor:  # acc = offset - 2 popcount(X XOR W)
        offset = spec.K - a_zero_point * w.sum(0) + bias
    else:  # acc = sx sw P + sx ow U + offset
        offset = ox * sw * v.sum(0) + spec.K * ox * ow - a_zero_point * w.sum(0) + bias
    # |acc| bound: every product, offset and partial sum stays within int32
    x_mag = max(abs(a_lo - a_zero_point), abs(a_hi - a_zero_point))
    w_mag = max(abs(lo), abs(hi))
    p_mag = abs(sx * sw) * spec.K * ((1 << spec.a_bits) - 1) * ((1 << spec.w_bits) - 1)
    u_mag = abs(sx * ow) * spec.K * ((1 << spec.a_bits) - 1)
    bound = max(spec.K * x_mag * w_mag + int(np.abs(bias).max()),
                p_mag + u_mag + int(np.abs(offset).max()))
    if bound > _INT32_MAX:
        raise LoweringError(
            f"bitserial: K={spec.K} with {spec.w_format}{spec.w_bits} x "
            f"{spec.a_format}{spec.a_bits} and this bias may overflow the int32 accumulator "
            f"(bound {bound}); split K or use a wider-accumulator kernel")
    mult_a, shift_a = dyadic_params("bitserial", spec.requant, spec.N, mult, shift)
    words = pack_bits(planes, target.popcount_bits)  # (bits, N, KW)
    tile = n_tile(target.popcount_bits)
    n_tiles = -(-spec.N // tile)
    tiled = np.zeros((spec.w_bits, n_tiles * tile, words.shape[2]), words.dtype)
    tiled[:, :spec.N] = words
    tiled = tiled.reshape(spec.w_bits, n_tiles, tile, -1).transpose(0, 1, 3, 2).copy()
    return PackedWeights(tiled, offset.astype(np.int32),
                         mult_a, shift_a, target.popcount_bits)


def pop_dtype(word_bits: int) -> str:
    """Lane type the popcounts accumulate in: the word's own width, so each ``vpopcntq``
    result adds without narrowing. int32 lanes over 64-bit words cost a ``vpmovqd`` per word;
    that shuffle shares Intel's port 5 with ``vpopcntq``: the 1x4096x4096 w1a1 layer took
    41 us with int32 lanes and 36 us with int64 on an AVX-512 Xeon (Zen 5 measured both
    alike)."""
    return f"int{word_bits}"


# -- TIR ------------------------------------------------------------------------------------
def _tir_func(spec: BitserialSpec, word_bits: int):
    """The layer as a TE compute -> PrimFunc (unscheduled). Blocks: ``pack`` (activation
    planes), ``usum`` (row sums, bipolar-weight x uint only), ``pop`` (GEMM), ``out``."""
    import tvm
    from tvm import te, tirx

    M, K, N, W = spec.M, spec.K, spec.N, word_bits
    KW = -(-K // W)
    wdt = f"uint{W}"
    A = spec.a_bits
    x = te.placeholder((M, K), spec.a_dtype, name="x")
    T = n_tile(W)
    NT = -(-N // T)
    planes = te.placeholder((spec.w_bits, NT, KW, T), wdt, name="planes")
    pdt = pop_dtype(W)
    offset = te.placeholder((N,), "int32", name="offset")

    def bit(i, m, k):
        if spec.a_format == "bipolar":
            return (x[m, k] > tvm.tirx.const(0, "int8")).astype(wdt)
        return ((x[m, k] >> i.astype("uint8")) & tvm.tirx.const(1, "uint8")).astype(wdt)

    b = te.reduce_axis((0, W), name="b")
    if K % W == 0:
        def pack_body(i, m, t):
            return te.sum(bit(i, m, t * W + b) << b.astype(wdt), axis=b)
    else:
        def pack_body(i, m, t):
            k = t * W + b
            return te.sum(tirx.if_then_else(k < K, bit(i, m, tirx.min(k, K - 1)) <<
                                            b.astype(wdt), tirx.const(0, wdt)), axis=b)
    xp = te.compute((A, M, KW), pack_body, name="pack")

    kw = te.reduce_axis((0, KW), name="kw")
    sx, _ = _operand_affine(spec.a_format)
    sw, ow = _operand_affine(spec.w_format)
    if spec.xnor:
        pop = te.compute((M, NT * T), lambda m, n: te.sum(tirx.popcount(
            xp[0, m, kw] ^ planes[0, n // T, kw, n % T]).astype(pdt), axis=kw), name="pop")

        def acc_of(m, n):
            return offset[n] - 2 * pop[m, n].astype("int32")
        extra = []
    else:
        i = te.reduce_axis((0, A), name="i")
        j = te.reduce_axis((0, spec.w_bits), name="j")
        top = spec.w_bits - 1

        def pop_body(m, n):
            count = tirx.popcount(xp[i, m, kw] & planes[j, n // T, kw, n % T]).astype(pdt)
            weighted = count << (i + j)
            if spec.w_format == "int":
                weighted = tirx.Select(j == top, -weighted, weighted)
            return te.sum(weighted, axis=[i, j, kw])
        pop = te.compute((M, NT * T), pop_body, name="pop")
        extra = []
        if _needs_usum(spec):
            kk = te.reduce_axis((0, K), name="kk")
            usum = te.compute((M,), lambda m: te.sum(x[m, kk].astype("int32"), axis=kk),
                              name="usum")
            extra = [usum]

        def acc_of(m, n):
            acc = sx * sw * pop[m, n].astype("int32") + offset[n]
            if extra:
                acc = acc + sx * ow * extra[0][m]
            return acc

    args = [x, planes, offset]
    if spec.requant is None:
        y = te.compute((M, N), acc_of, name="out")
    else:
        mult = te.placeholder((N,), "int64", name="mult")
        shift = te.placeholder((N,), "int64", name="shift")
        r = spec.requant
        one = tirx.const(1, "int64")

        def requant(m, n):
            s = shift[n]
            half = (one << s) >> one
            v = (acc_of(m, n).astype("int64") * mult[n] + half) >> s
            v = v + tirx.const(r.zero_point, "int64")
            v = tirx.max(tirx.min(v, tirx.const(r.hi, "int64")), tirx.const(r.lo, "int64"))
            return v.astype(spec.out_dtype)
        y = te.compute((M, N), requant, name="out")
        args += [mult, shift]
    return te.create_prim_func(args + [y])


def n_tile(word_bits: int) -> int:
    """Channels per weight tile: one 512-bit vector of words (8 uint64 / 16 uint32)."""
    return 512 // word_bits


def _schedule_cpu(func, spec: BitserialSpec, word_bits: int):
    """Parallel over N tiles; per tile: m, plane pairs, K words, then the tile's channels as
    the vectorized innermost loop (no horizontal reduction; x's word is broadcast)."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    pop = sch.get_sblock("pop")
    out = sch.get_sblock("out")
    m, n, *reduce = sch.get_loops(pop)
    no, ni = sch.split(n, [None, n_tile(word_bits)])
    sch.reorder(no, m, *reduce, ni)
    sch.vectorize(ni)
    sch.parallel(no)
    if not _needs_usum(spec):  # else "out" also reads usum, which is not in the tile
        sch.reverse_compute_at(out, no)
    return sch.mod


def _schedule_cuda(func, spec: BitserialSpec):
    import tvm

    sch = tvm.s_tir.Schedule(func)
    names = ("pack", "usum", "pop", "out") if _needs_usum(spec) else ("pack", "pop", "out")
    for name in names:
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        n_spatial = {"pack": 3, "usum": 1, "pop": 2, "out": 2}[name]
        fused = sch.fuse(*loops[:n_spatial])
        bx, tx = sch.split(fused, [None, 64])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    return sch.mod


@dataclass(frozen=True, slots=True, eq=False)
class BitserialKernel:
    """A compiled layer: ``lib`` (TVM module; entry ``main``) for ``spec`` on ``target``.

    Entry arguments: ``x`` (M, K), ``planes``, ``offset``, [``mult``, ``shift``], ``y``."""

    spec: BitserialSpec
    target: Target
    lib: object

    def bind(self, packed: PackedWeights) -> BoundLayer:
        """Upload the packed parameters once; returns a callable layer (host targets)."""
        if not self.target.runs_on_host():
            raise LoweringError(
                f"bitserial: kernel built for target {self.target.name} cannot run on this "
                f"host; export it and run it there (or build for 'x86')")
        if packed.word_bits != self.target.popcount_bits:
            raise LoweringError(
                f"bitserial: weights packed in {packed.word_bits}-bit words, target "
                f"{self.target.name} uses {self.target.popcount_bits}; repack for this target")
        tile = n_tile(packed.word_bits)
        if packed.planes.shape[:2] != (self.spec.w_bits, -(-self.spec.N // tile)):
            raise LoweringError(
                f"bitserial: packed planes {packed.planes.shape} do not match {self.spec}")
        params = [packed.planes, packed.offset]
        if self.spec.requant is not None:
            params += [packed.mult, packed.shift]
        spec = self.spec
        return bind_layer(self, params, family="bitserial", in_shape=(spec.M, spec.K),
                          out_shape=(spec.M, spec.N), check_codes=self._check_codes)

    def _check_codes(self, x: np.ndarray) -> None:
        """Activation codes must lie in the format's range (bipolar: +-1, no 0)."""
        spec = self.spec
        lo, hi = _value_range(spec.a_format, spec.a_bits)
        if x.dtype.kind not in "iu" or x.min() < lo or x.max() > hi or (
                spec.a_format == "bipolar" and np.any(x == 0)):
            raise LoweringError(
                f"bitserial: activation codes ({x.dtype}, [{x.min()}, {x.max()}]) are not "
                f"{spec.a_format}{spec.a_bits} codes; quantize the input first")

    def __call__(self, x: np.ndarray, packed: PackedWeights) -> np.ndarray:
        """Run once on numpy codes (convenience; binds every call)."""
        return self.bind(packed)(x)


def lower(spec: BitserialSpec, target: Target):
    """The scheduled IRModule for ``spec`` on ``target`` (before ``tvm.compile``)."""
    func = _tir_func(spec, target.popcount_bits)
    if target.is_gpu:
        return _schedule_cuda(func, spec)
    return _schedule_cpu(func, spec, target.popcount_bits)


def build(spec: BitserialSpec, target: Target) -> BitserialKernel:
    """Compile one layer shape for ``target`` (cached per (spec, target) in this process)."""
    return _build_cached(spec, target)


@functools.lru_cache(maxsize=256)
def _build_cached(spec: BitserialSpec, target: Target) -> BitserialKernel:
    import tvm

    return BitserialKernel(spec, target, tvm.compile(lower(spec, target),
                                                      target=target.tvm_dict()))


# -- registry entry -------------------------------------------------------------------------
def operand_format(qtype: QType, role: str) -> tuple[str, int] | None:
    """``(format, bits)`` for a QType this family computes with, or None.

    Binary -> bipolar; uniform with <= 4 bits -> uint (activations: unsigned, per-tensor
    zero point) or uint/int (weights: zero points 0, the formula has no weight zero point)."""
    if qtype.kind == QKind.BINARY:
        return "bipolar", 1
    if qtype.kind != QKind.UNIFORM or qtype.bits > MAX_BITS:
        return None
    if role == "weight":
        if any(qtype.zero_point):
            return None
        if qtype.signed:
            return ("int", qtype.bits) if qtype.bits >= 2 else None
        return "uint", qtype.bits
    if qtype.signed or len(qtype.zero_point) > 1:
        return None
    return "uint", qtype.bits


def accepts(w_qtype: QType, a_qtype: QType) -> bool:
    """True for w in {binary, uint1..4, int2..4 symmetric} x a in {binary, uint1..4}."""
    return (operand_format(w_qtype, "weight") is not None
            and operand_format(a_qtype, "activation") is not None)


def accumulator_dtype(K: int, w_qtype: QType, a_qtype: QType) -> DType:
    """Accumulator rule: int32 (raises :class:`LoweringError` if K * |w| * |x - z_x| cannot fit
    int32; bias is checked at :func:`pack_weights`)."""
    from ...ir.dyadic import fits_accumulator

    if not fits_accumulator(K, w_qtype, a_qtype, 32):
        raise LoweringError(
            f"bitserial: K={K} with {w_qtype} x {a_qtype} overflows int32; split K")
    return DType.int(32)


FAMILY = register_family(KernelFamily(
    name="bitserial",
    accepts=accepts,
    accumulator_dtype=accumulator_dtype,
    build=build,
    pack_weights=pack_weights,
    formula=__doc__[:__doc__.index("Operand formats")].strip(),
))
