"""int8 kernels: uint8 / int8 activations x 2..8-bit integer weights, int32 accumulation.

Computes, for activation codes ``x`` (M, K) (zero point ``z_x``) and integer weights ``w``
(K, N), the integer simulator's layer bit-exactly::

    acc[m, n] = sum_k (x[m, k] - z_x) * w[k, n] + bias[n]                      (int32)
    y[m, n]   = clamp(z_y + ((acc * mult[n] + 2^(shift[n]-1)) >> shift[n]), lo, hi)

(int64 intermediate, arithmetic shift, no rounding term for ``shift = 0``: the rule of
:func:`lowbit.ir.dyadic.requantize`), or ``acc`` itself in accumulator-out mode.

The zero point is folded at compile time: ``sum_k (x - z_x) w = sum_k x w - z_x colsum(w)``,
so the kernel computes ``acc = sum_k u w + offset[n]`` with unsigned bytes ``u`` and
``offset[n] = bias[n] - z_u * sum_k w[k, n]`` (int8 activations are mapped to bytes by
``u = x + 128`` -- an XOR with 0x80 inside the kernel -- and ``z_u = z_x + 128``). The GEMM and
the offset add run in wrapping (mod 2^32) int32 arithmetic; since the true ``acc`` fits int32
(checked at :func:`pack_weights`), the wrapped result *is* the true ``acc`` whatever the
intermediate sums do. Conv layers are the same GEMM over im2col rows (padding reads ``z_x``).

Weights are packed at compile time as (NO, KB, NB, 16, 4) int8: K in groups of 4 (zero
padded to ``KB = ceil(K/4)`` groups), N in 16-channel tiles, ``NB`` tiles per parallel block;
channel ``n = (o*NB + t)*16 + l`` and ``k = 4*kb + i`` sit at ``[o, kb, t, l, i]``. One
``[o, kb, t]`` row (64 bytes) is exactly one AVX-512 ``vpdpbusd`` weight operand, so the
weights stream contiguously. Kernel paths (:func:`kernel_path`):

* ``vnni``     x86 with AVX-512 VNNI: ``vpdpbusd`` (u8 x s8, 4 products summed per int32
               lane, no saturation), 16 lanes, any int2..int8 weights;
* ``avx2``     x86 with AVX2, weights of <= 7 bits only: ``vpmaddubsw`` (u8 x s8 pairs to
               int16, *saturating*) then ``vpmaddwd`` by 1 (pairs to int32), 8 lanes. Exact
               because ``|w| <= 64``: a pair sums to at most 2 * 255 * 64 = 32640 < 2^15;
* ``avx2w8``   x86 with AVX2, 8-bit weights: 16 weight bytes (4 lanes x 4 K) sign-extended
               to 16 bits (``vpmovsxbw``), multiplied by the row's 4 activation bytes
               zero-extended and broadcast, pairs summed to int32 (``vpmaddwd``, exact: no
               saturation). A lane keeps two partial sums (``K`` pairs 0-1 and 2-3,
               accumulator ``[2l]`` and ``[2l + 1]``) that the epilogue adds. Before this path
               8-bit weights on AVX2 took ``generic``: 7x7/2 stem at 224² 30 ms (Zen 3);
* ``generic``  everything else (arm64 included): plain widening int32 multiply-add over the
               16 lanes, vectorized by LLVM. Measured in the object code: arm64 widens bytes
               with ``ushll``/``sshll`` and accumulates with NEON ``smlal``/``smlal2`` (no
               ``sdot``/``udot``: u8 x s8 needs ``usdot`` of ARMv8.6 i8mm);
* ``dp4a``     CUDA (``sm_80`` / ``sm_90``, :func:`gpu_func`): one thread per output,
               ``__dp4a`` (s8 x s8, 4 products summed into int32) over the same packed
               weights, activations as signed bytes ``s = u - 128`` (so the folded zero point
               is ``z_u - 128``). The conv / depthwise entries stay CPU-only: on GPUs graphs
               run dense convs as im2col + this GEMM and depthwise on the reference kernel.

CPU schedule (TVMScript text per shape, see ``_GEMM_TEMPLATE``: TVM 0.27's ``tensorize``
segfaults, so the instruction is placed by hand): parallel over blocks of ``NB`` tiles (output
channels; over row blocks when there is only one channel block), per block rows in groups of
``MB`` with an (MB, NB, 16) int32 accumulator kept in registers across the K loop (the
``MB x NB`` tile updates unrolled per 4-wide K group), then the epilogue (offset, requant) on
the block. Activations are repacked to bytes once per call (``pack``; conv: im2col).

Conv (NCHW, one function, the epilogue stores channel by channel; when ``R`` adjacent output
pixels of one image (R in 32/16/8/4, a multiple of MB, dividing OH*OW) make whole row groups, the
register blocks of a group first fill an L1 tile and each channel's R pixels are then computed
and stored as one vector, :func:`_store_rows`: 1.14-1.38x on 16-channel convs on Zen 3, neutral
on wide ones): either im2col + this GEMM,
or **direct** (implicit GEMM, :attr:`ConvSpec.direct`): the input is copied once into a
zero-point-padded byte image ``xpad`` and K runs over ``(c, kh, q)`` with each kernel row's
taps rounded up to ``KQ`` (a multiple of 4; the extra taps have zero weights), so the 4-byte
activation group of row ``(b, oh, ow)`` is the unaligned load ``xpad[b, c, oh*sh + kh,
ow*sw + 4q ..]``, straight from the image, with no im2col copy (9x / 49x the input for 3x3 / 7x7).
With ``C % 4 == 0`` (:attr:`ConvSpec.channels_packed`) the image is channels-last, ``xpad[b, h,
w, c]``, K runs over ``(kh, kw, c)`` and a group is 4 adjacent channels of one pixel: no padded
taps at all.
Depthwise conv (K = 9 or 25 per channel, too short for a GEMM) is a direct TE schedule:
parallel over (batch, channel), taps unrolled, the output row left to LLVM's vectorizer.
Threads: :func:`set_num_threads` (TVM's pool; ``TVM_NUM_THREADS``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from ...ir.dtypes import DType
from ...ir.errors import LoweringError
from ...ir.qformats import codebook_grid_bits
from ...ir.qtype import QKind, QType
from ..target import Target
from . import KernelFamily, register_family
from .common import (
    BoundLayer,
    MaxPoolWindow,
    OutputRange,
    bind_layer,
    dyadic_params,
    set_num_threads,
)

__all__ = [
    "FAMILY",
    "ConvSpec",
    "DepthwiseSpec",
    "Int8Spec",
    "OutputRange",
    "PackedWeights",
    "build",
    "build_conv",
    "build_depthwise",
    "conv_source",
    "gemm_source",
    "gpu_func",
    "kernel_path",
    "lower",
    "lower_conv",
    "lower_depthwise",
    "pack_conv_weights",
    "pack_depthwise_weights",
    "pack_weights",
    "reduces_range",
    "set_num_threads",
]

LANES = 16  # channels per weight tile (one 512-bit vpdpbusd result)
GROUP = 4  # K elements per int32 lane (vpdpbusd / vpmaddubsw+vpmaddwd)
A_DTYPES = ("uint8", "int8")
#: how a GEMM's / dense conv's products are formed: the vector paths of :func:`kernel_path`, or
#: AMX tiles (:func:`.amx.int8_gemm_source` / :func:`.amx.int8_conv_source`; the ``amx``
#: family's entries)
CONV_ENGINES = ("simd", "amx")
_INT32_MAX = (1 << 31) - 1


def _check_output(requant: OutputRange | None, name: str) -> None:
    if requant is not None and not isinstance(requant, OutputRange):
        raise LoweringError(f"int8 {name}: requant must be an OutputRange or None")


def _check_acc_shift(acc_shift: int, requant: OutputRange | None) -> None:
    if not 0 <= acc_shift <= 31:
        raise LoweringError(f"int8: acc_shift {acc_shift} outside 0..31")
    if acc_shift and requant is None:
        raise LoweringError("int8: acc_shift needs the requant output stage (the shifted "
                            "accumulator is int64)")


@dataclass(frozen=True, slots=True)
class Int8Spec:
    """One GEMM layer shape ``(M, K) x (K, N)``: weight bits (2..8, signed), activation dtype
    (``uint8`` / ``int8``), output stage (``requant`` None: accumulator-out, int32), and the
    register block ``(MB, NB)``: rows and 16-channel tiles per accumulator block (0 = pick)."""

    M: int
    K: int
    N: int
    w_bits: int = 8
    a_dtype: str = "uint8"
    requant: OutputRange | None = None
    MB: int = 0
    NB: int = 0
    acc_shift: int = 0
    engine: str = "simd"  # or "amx": AMX tiles (:func:`.amx.int8_gemm_source`)

    def __post_init__(self):
        if min(self.M, self.K, self.N) < 1:
            raise LoweringError(f"int8: shape M={self.M} K={self.K} N={self.N} must be >= 1")
        if self.engine not in CONV_ENGINES:
            raise LoweringError(f"int8: engine {self.engine!r}; use one of {CONV_ENGINES}")
        if not 2 <= self.w_bits <= 8:
            raise LoweringError(
                f"int8: weight bits {self.w_bits} unsupported; use 2..8 (signed), or the "
                f"bitserial family for 1-bit weights")
        if self.a_dtype not in A_DTYPES:
            raise LoweringError(f"int8: activation dtype {self.a_dtype!r}; use one of {A_DTYPES}")
        if self.MB < 0 or self.NB < 0:
            raise LoweringError(f"int8: register block ({self.MB}, {self.NB}) must be >= 0")
        _check_output(self.requant, "GEMM")
        _check_acc_shift(self.acc_shift, self.requant)

    @property
    def block(self) -> tuple[int, int]:
        """``(MB, NB)`` of the AVX-512 / generic / CUDA paths (:meth:`block_for`)."""
        return self.block_for("vnni")

    def block_for(self, path: str) -> tuple[int, int]:
        """``(MB, NB)``: explicit, or by the path's register file (:data:`_AUTO_BLOCKS`):
        AVX-512 has 32 vector registers and a tile's accumulator is one of them (1 row x 8
        tiles for GEMV, 4 x 4 otherwise); AVX2 has 16, a tile takes 2 (``avx2``) or 4
        (``avx2w8``), so about 12 stay for accumulators."""
        gemv, (rows_mb, rows_nb) = _AUTO_BLOCKS.get(path, _AUTO_BLOCKS["vnni"])
        mb = self.MB or (1 if self.M == 1 else rows_mb)
        # the GEMV width for one-row blocks, unless one row is the path's own pick
        nb = self.NB or (gemv if mb == 1 and (self.M == 1 or rows_mb != 1) else rows_nb)
        return min(mb, self.M), max(1, min(nb, -(-self.N // LANES)))

    @property
    def out_dtype(self) -> str:
        return "int32" if self.requant is None else self.requant.dtype

    in_shape = property(lambda self: (self.M, self.K))
    out_shape = property(lambda self: (self.M, self.N))


#: per path: (NB for one row, (MB, NB) for several) when the spec leaves the block to pick.
#: AVX2 blocks measured on Zen 3, one thread (3136x576x64 / 16x4096x4096): avx2 (2, 2) 1.53 /
#: 3.70 ms, (3, 2) 2.32 / 4.93; avx2w8 (1, 2) 2.50 / 5.92 ms, (3, 1) 3.00 / 6.91. Later, with
#: the direct convs too (another day, ~20% slower machine), avx2w8 (2, 1) against (1, 2):
#: 7x7/2 stem 3->64 at 224² 3.77 vs 4.79 ms, 3x3 64@56² 4.14 vs 4.52, 16@8² batch 60 0.70 vs
#: 0.67, 3136x576x64 3.18 vs 3.52, 16x4096x4096 6.67 vs 6.62, 128x768x3072 7.51 vs 7.10
_AUTO_BLOCKS = {"vnni": (8, (4, 4)), "avx2": (4, (2, 2)), "avx2w8": (3, (2, 1))}


def kernel_path(target: Target, w_bits: int) -> str:
    """``vnni`` / ``avx2`` / ``generic`` / ``dp4a`` (CUDA) for ``target`` and the weight width
    (module doc)."""
    if target.is_gpu:
        return "dp4a"
    if "avx512_vnni" in target.features:
        return "vnni"
    if "avx2" in target.features:
        return "avx2" if w_bits <= 7 else "avx2w8"
    return "generic"


def reduces_range(target: Target) -> bool:
    """Whether 8-bit weights should be quantized to 7 bits for ``target`` (a recipe's
    ``reduce_range = "auto"``): true where 8-bit weights fall off the fast path, i.e. x86 with
    AVX2 and no AVX-512 VNNI, whose exact 8-bit path ``avx2w8`` does half the products per
    instruction of the 7-bit ``vpmaddubsw`` path (onnxruntime gives the same advice for the
    same reason: its ``reduce_range``). Measured on Zen 3, one thread, 60x16x8x8 3x3 conv with
    requant: 579 us at 8 bits, 443 us at 7."""
    return kernel_path(target, 8) == "avx2w8"


@dataclass(frozen=True, slots=True, eq=False)
class PackedWeights:
    """Compile-time layer parameters in kernel layout.

    ``w`` (NO, KB, NB, 16, 4) int8 (module docstring; padding 0); ``offset`` (N,) int32:
    ``bias - z_u * colsum(w)`` wrapped mod 2^32 (with ``acc_shift``: ``- z_u * colsum(w)``
    only, and ``bias`` (N,) int64 is added after the shift); ``mult``, ``shift`` (N,) int64
    (empty in accumulator-out mode)."""

    w: np.ndarray
    offset: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self):
        for arr in (self.w, self.offset, self.mult, self.shift, self.bias):
            arr.setflags(write=False)


def tile_weights(w: np.ndarray, NB: int) -> np.ndarray:
    """(K, N) int8 -> (NO, KB, NB, 16, 4) int8, zero padded (module docstring layout)."""
    K, N = w.shape
    KB = -(-K // GROUP)
    NO = -(-N // (NB * LANES))
    padded = np.zeros((KB * GROUP, NO * NB * LANES), np.int8)
    padded[:K, :N] = w
    # [kb, i, o, t, l] -> [o, kb, t, l, i]
    return np.ascontiguousarray(
        padded.reshape(KB, GROUP, NO, NB, LANES).transpose(2, 0, 3, 4, 1))


def pack_weights(spec: Int8Spec, target: Target, w: np.ndarray, *, bias=None,
                 a_zero_point: int = 0, mult=None, shift=None) -> PackedWeights:
    """Compile-time packing of ``w`` (K, N) integer weight values (int2..int8 range of
    ``spec.w_bits``; lower-bit weights are stored one per byte) and the folded ``offset``.

    The weight layout is the same on every path; the folded zero point is not: CPU paths
    multiply bytes ``u`` (``z_u``), CUDA multiplies signed bytes ``s = u - 128`` with
    ``__dp4a`` (``z_s = z_u - 128``; :func:`gpu_func`).

    Raises :class:`LoweringError` when a weight is out of range, when the activation zero
    point is out of its dtype's range, or when ``|acc|`` could leave int32."""
    w = np.asarray(w)
    if w.shape != (spec.K, spec.N) or w.dtype.kind not in "iu":
        raise LoweringError(
            f"int8: weights must be integer ({spec.K}, {spec.N}), got {w.dtype} {w.shape}")
    w = w.astype(np.int64)
    lo, hi = -(1 << (spec.w_bits - 1)), (1 << (spec.w_bits - 1)) - 1
    if w.size and (w.min() < lo or w.max() > hi):
        raise LoweringError(
            f"int8: weights in [{w.min()}, {w.max()}] do not fit int{spec.w_bits} "
            f"[{lo}, {hi}]; quantize them first")
    a_lo, a_hi = (0, 255) if spec.a_dtype == "uint8" else (-128, 127)
    if not a_lo <= a_zero_point <= a_hi:
        raise LoweringError(
            f"int8: activation zero point {a_zero_point} outside {spec.a_dtype} [{a_lo}, {a_hi}]")
    bias = np.zeros(spec.N, np.int64) if bias is None else np.broadcast_to(
        np.asarray(bias, np.int64), (spec.N,))
    x_mag = max(a_hi - a_zero_point, a_zero_point - a_lo)
    bound = spec.K * x_mag * max(-lo, hi) + (
        int(np.abs(bias).max()) if spec.N and not spec.acc_shift else 0)
    if bound > _INT32_MAX:
        raise LoweringError(
            f"int8: K={spec.K} with int{spec.w_bits} weights, {spec.a_dtype} activations "
            f"(zero point {a_zero_point}) and this bias may overflow the int32 accumulator "
            f"(bound {bound}); split K")
    z_u = a_zero_point + (128 if spec.a_dtype == "int8" else 0)
    if target.is_gpu:  # __dp4a multiplies s8 x s8: the kernel's operand is s = u - 128
        z_u -= 128
    folded = 0 if spec.acc_shift else bias  # shifted: bias joins after the shift, in int64
    offset = (folded - z_u * w.sum(0)).astype(np.int32)  # wraps mod 2^32 (module docstring)
    mult_a, shift_a = dyadic_params("int8", spec.requant, spec.N, mult, shift)
    if spec.engine == "amx":
        from . import amx

        tiles = amx.tile_gemm_weights(spec, w.astype(np.int8))
    else:
        tiles = tile_weights(w.astype(np.int8), spec.block_for(kernel_path(target,
                                                                           spec.w_bits))[1])
    return PackedWeights(tiles, offset, mult_a, shift_a,
                         bias.copy() if spec.acc_shift else np.zeros(0, np.int64))


# -- TIR ----------------------------------------------------------------------------------------
# The GEMM core is written as TVMScript text (formatted per shape, parsed with
# ``tvm.script.from_source``): TVM 0.27's ``Schedule.tensorize`` crashes (segfault, even on its
# own x86 VNNI intrinsic), so the instruction is placed by hand, which also pins the register
# block exactly. LLVM 22's ``vpdpbusd.512`` takes (<16 x i32>, <64 x i8>, <64 x i8>).

@dataclass(frozen=True, slots=True)
class _Gemm:
    """The GEMM core's geometry: padded rows ``MP``, ``KB`` groups, ``NO`` blocks of ``NB``."""

    M: int
    K: int
    N: int
    MB: int
    NB: int

    @property
    def MP(self) -> int:
        return -(-self.M // self.MB) * self.MB

    @property
    def KB(self) -> int:
        return -(-self.K // GROUP)

    @property
    def NO(self) -> int:
        return -(-self.N // (self.NB * LANES))


#: one (lanes, 4) tile update per path: ``acc[mi, t, :] += sum_i a[i] * w[o, kb, t, :, i]``
_TILE_UPDATE = {
    "vnni": """
                        acc[mi, t, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                            acc.vload([mi, t, 0], "int32x16"),
                            T.reinterpret(T.broadcast(T.reinterpret(
                                {A4}, dtype="int32"),
                                16), dtype="int8x64"),
                            w.vload([o, {KBI}, t, 0, 0], "int8x64"), dtype="int32x16")""",
    "avx2": """
                        for h in T.unroll(2):
                            acc[mi, t, T.ramp(h * 8, 1, 8)] = acc.vload(
                                [mi, t, h * 8], "int32x8") + T.call_llvm_pure_intrin(
                                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                                T.call_llvm_pure_intrin(
                                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                                    T.reinterpret(T.broadcast(T.reinterpret(
                                        {A4},
                                        dtype="int32"), 8), dtype="uint8x32"),
                                    w.vload([o, {KBI}, t, h * 8, 0], "int8x32"), dtype="int16x16"),
                                T.broadcast(T.int16(1), 16), dtype="int32x8")""",
    "avx2w8": """
                        for j in T.unroll(4):
                            acc[mi, t, T.ramp(j * 8, 1, 8)] = acc.vload(
                                [mi, t, j * 8], "int32x8") + T.call_llvm_pure_intrin(
                                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                                T.Cast("int16x16", w.vload([o, {KBI}, t, j * 4, 0], "int8x16")),
                                T.reinterpret(T.broadcast(T.reinterpret(
                                    T.Cast("int16x4", {A4}), dtype="int64"), 4),
                                    dtype="int16x16"), dtype="int32x8")""",
    "generic": """
                        for i in T.unroll(4):
                            for l in T.vectorized(16):
                                acc[mi, t, l] = acc[mi, t, l] + T.Cast(
                                    "int32", {A1}) * T.Cast(
                                    "int32", w[o, {KBI}, t, l, i])""",
}

_GEMM_TEMPLATE = """
# from tvm.script import tirx as T
@T.prim_func(s_tir=True)
def main({args}):
    T.func_attr({{"tirx.noalias": True, "global_symbol": "main"}})
{pack_loops}
    for {outer} in T.parallel({outer_n}):
        acc = T.alloc_buffer(({MB}, {NB}, {ACCW}), "int32", scope="local")
        for {inner} in T.serial({inner_n}):
{block}
{store_loops}
"""

#: one register block: ``acc`` zeroed, then the K loop of tile updates (12-space indent)
_REGISTER_BLOCK = """            for mi, t in T.grid({MB}, {NB}):
                for l in T.vectorized({ACCW}):
                    acc[mi, t, l] = 0
            {kloop}
                for mi in T.unroll({MB}):
                    for t in T.unroll({NB}):{update}"""

#: channel-major convs whose row groups stay inside one image (:func:`_store_rows`): ``G``
#: register blocks of ``MB`` rows fill an L1 ``tile`` (NB, 16, R) first, then each channel's
#: ``R = G*MB`` adjacent output pixels are computed and stored as one vector
_GROUPED_TEMPLATE = """
# from tvm.script import tirx as T
@T.prim_func(s_tir=True)
def main({args}):
    T.func_attr({{"tirx.noalias": True, "global_symbol": "main"}})
    yf = T.decl_buffer(({YSIZE},), "{ODT}", data=y.data)
{pack_loops}
    for {outer} in T.parallel({outer_n}):
        acc = T.alloc_buffer(({MB}, {NB}, {ACCW}), "int32", scope="local")
        tile = T.alloc_buffer(({NB}, 16, {R}), "int32", scope="local")
        for {inner} in T.serial({inner_n}):
            for g in T.serial({G}):
{block}
                for mi, t, l in T.grid({MB}, {NB}, 16):
                    tile[t, l, g * {MB} + mi] = {lane}
            for t, l in T.grid({NB}, 16):
                {guard}for r in T.vectorized({R}):
                    {guard_pad}yf[mg * {R} // {OHW} * {NOHW} + ((o * {NB} + t) * 16 + l) * {OHW}
                       + mg * {R} % {OHW} + r] = {value}
"""

#: the epilogue's loops over the register block: row-major outputs ((M, N): a tile's 16
#: channels are contiguous, one vector store) ...
_STORE_ROWS = """            for mi in T.serial({MB}):
                if mo * {MB} + mi < {M}:
                    for t in T.serial({NB}):
                        for l in T.{lane_kind}(16):
                            {store}"""
#: ... or channel-major (NCHW convs: a channel's MB rows are adjacent pixels, so the block is
#: stored channel by channel instead of as MB*NB 16-lane scatters)
_STORE_CHANNELS = """            for t in T.serial({NB}):
                for l in T.serial(16):
                    for mi in T.serial({MB}):
                        if mo * {MB} + mi < {M}:
                            {store}"""


def _lane(halves: bool) -> str:
    """Accumulator lane ``(mi, t, l)``; with ``halves`` (the ``avx2w8`` layout) the sum of its
    two partial sums ``acc[2l]`` and ``acc[2l + 1]``."""
    return "(acc[mi, t, l * 2] + acc[mi, t, l * 2 + 1])" if halves else "acc[mi, t, l]"


def _store_text(N: int, requant: OutputRange | None, out_dtype: str, y_index: str,
                guard_n: bool, acc_shift: int = 0, halves: bool = False) -> str:
    """The epilogue statement for lane ``(mi, t, l)`` of block ``(o, mo)``: ``y[y_index] =``
    :func:`_output_value` of the lane (:func:`_lane`)."""
    n = "((o * {NB} + t) * 16 + l)"
    store = f"y[{y_index}] = {_output_value(_lane(halves), n, requant, out_dtype, acc_shift)}"
    return f"if {n} < {N}:\n" + " " * 32 + store if guard_n else store


def _mult64(load: str) -> str:
    """The int64 multiplier ``load`` as a sign-extended int32: ``dyadic_params`` keeps every
    ``mult`` in [0, 2^31), so the truncation is exact, and LLVM then multiplies the two
    sign-extended 32-bit operands with ``vpmuldq`` instead of emulating a 64x64-bit multiply
    (AVX2 has none): 3136x144x16 GEMM with requant 252 -> 233 µs, 480x32x32 27 -> 22 µs on
    Zen 3."""
    return f'T.Cast("int64", T.Cast("int32", {load}))'


def _output_value(lane: str, n: str, requant: OutputRange | None, out_dtype: str,
                  acc_shift: int) -> str:
    """The output of accumulator ``lane`` of channel ``n``: plus the wrapped offset (unsigned
    add: wraps by definition), shifted left by ``acc_shift`` plus the int64 ``bias``, then
    requant (int64) or int32 out. With both, ``((a << s) + b)·m + h`` is formed as
    ``((a·m) << s) + (b·m + h)`` (the same integer): ``a·m`` multiplies two sign-extended
    int32 (one ``vpmuldq``; ``(a << s) + b`` is 64-bit, a ``vpmullq`` of 3 uops) and the
    per-channel ``b·m + h`` is hoisted out of the pixel loop."""
    acc = (f'T.Cast("int32", T.Cast("uint32", {lane}) + '
           f'T.Cast("uint32", offset[{n}]))')
    half = f'((T.int64(1) << shift[{n}]) >> T.int64(1))'
    if requant is None:
        value = acc
        if acc_shift:
            value = f'((T.Cast("int64", {acc}) << T.int64({acc_shift})) + bias[{n}])'
    else:
        if acc_shift:  # ((a << s) + b)·m + h = ((a·m) << s) + (b·m + h): a·m is 32x32 bits
            shifted = (f'(((T.Cast("int64", {acc}) * {_mult64(f"mult[{n}]")}) << '
                       f'T.int64({acc_shift})) + (bias[{n}] * mult[{n}] + {half})) >> '
                       f'shift[{n}]')
        else:
            shifted = (f'(T.Cast("int64", {acc}) * {_mult64(f"mult[{n}]")} + {half}) >> '
                       f'shift[{n}]')
        value = (f'T.Cast("{out_dtype}", T.max(T.min(({shifted}) + T.int64({requant.zero_point}),'
                 f' T.int64({requant.hi})), T.int64({requant.lo})))')
    return value


def _byte(expr: str, a_dtype: str) -> str:
    """Activation code -> the unsigned byte the GEMM multiplies (int8: x + 128 = x ^ 0x80)."""
    if a_dtype == "int8":
        return f'T.bitwise_xor(T.Cast("uint8", {expr}), T.uint8(128))'
    return expr


def _pack_loops(g: _Gemm, a_dtype: str, loops: str, row: str, col: str, code: str) -> str:
    """The ``pack`` statements: ``loops`` (a ``T.grid`` header over the source) writes
    ``pack[row, col] = byte(code)``; rows >= M and columns >= K are zero-filled (padding
    columns meet zero weights; padding rows are never stored)."""
    KP = g.KB * GROUP
    text = [f'    pack = T.alloc_buffer(({g.MP}, {KP}), "uint8")',
            f"    for {loops}:", f"        pack[{row}, {col}] = {_byte(code, a_dtype)}"]
    if KP > g.K:
        text += [f"    for m, k in T.grid({g.M}, {KP - g.K}):",
                 f"        pack[m, {g.K} + k] = T.uint8(0)"]
    if g.MP > g.M:
        text += [f"    for m, k in T.grid({g.MP - g.M}, {KP}):",
                 f"        pack[{g.M} + m, k] = T.uint8(0)"]
    return "\n".join(text)


#: the GEMM's K loop and operand reads over the ``pack`` matrix: ``(kloop, kb index, 4-byte
#: activation group, activation byte i)``
_PACKED_K = ("for kb in T.serial({KB}):", "kb", 'pack.vload([mo * {MB} + mi, kb * 4], "uint8x4")',
             "pack[mo * {MB} + mi, kb * 4 + i]")


def _gemm_source(g: _Gemm, path: str, in_shape, a_dtype: str, pack_loops: str,
                 out_shape, out_dtype: str, y_index: str, requant: OutputRange | None,
                 k_reads: tuple[str, str, str, str] = _PACKED_K,
                 channel_major: bool = False, acc_shift: int = 0, ohw: int = 0) -> str:
    """TVMScript of one layer: ``pack_loops`` (the statements that lay the activation bytes
    out, e.g. the GEMM's (MP, KP) ``pack``), the register-blocked GEMM with its K loop and
    reads ``k_reads`` (:data:`_PACKED_K`, or the direct conv's), and the epilogue."""
    def buf(shape, dtype):
        return f'T.Buffer({tuple(shape)!r}, "{dtype}")'
    args = [f"x: {buf(in_shape, a_dtype)}",
            f'w: {buf((g.NO, g.KB, g.NB, LANES, GROUP), "int8")}',
            f'offset: {buf((g.N,), "int32")}']
    if acc_shift:
        args.append(f'bias: {buf((g.N,), "int64")}')
    if requant is not None:
        args += [f'mult: {buf((g.N,), "int64")}', f'shift: {buf((g.N,), "int64")}']
    args.append(f"y: {buf(out_shape, out_dtype)}")
    # parallel over channel blocks; over row blocks when there is a single channel block
    # (a conv with <= 16*NB output channels)
    by_channel = g.NO > 1 or g.MP == g.MB
    guard_n = g.N % (g.NB * LANES) != 0
    store = _store_text(g.N, requant, out_dtype, y_index, guard_n, acc_shift,
                        halves=path == "avx2w8")
    rows = _store_rows(g, ohw) if channel_major else 0
    if rows:
        return _grouped_source(g, path, args, pack_loops, out_dtype, requant, acc_shift, rows,
                               ohw, by_channel, guard_n, k_reads)
    store_loops = (_STORE_CHANNELS if channel_major else _STORE_ROWS).replace(
        "{MB}", str(g.MB)).replace("{NB}", str(g.NB)).replace("{M}", str(g.M)).replace(
        "{lane_kind}", "serial" if guard_n else "vectorized")
    if channel_major:
        store = store.replace("\n" + " " * 32, "\n" + " " * 32 + " " * 4)
    store_loops = store_loops.replace("{store}", store.replace("{NB}", str(g.NB)))
    return _GEMM_TEMPLATE.format(
        args=", ".join(args), MB=g.MB, NB=g.NB, ACCW=_acc_width(path),
        block=_register_block(g, path, k_reads),
        store_loops=store_loops,
        outer="o" if by_channel else "mo", outer_n=g.NO if by_channel else g.MP // g.MB,
        inner="mo" if by_channel else "o", inner_n=g.MP // g.MB if by_channel else g.NO,
        pack_loops=pack_loops)


def _acc_width(path: str) -> int:
    """int32 lanes of one accumulator tile: 16, or 32 on ``avx2w8`` (two partial sums each)."""
    return 2 * LANES if path == "avx2w8" else LANES


def _register_block(g: _Gemm, path: str, k_reads, indent: str = "") -> str:
    """:data:`_REGISTER_BLOCK` for ``path`` with the K loop and reads ``k_reads``, every
    line indented by ``indent`` more."""
    kloop, kbi, a4, a1 = (r.replace("{KB}", str(g.KB)).replace("{MB}", str(g.MB))
                          for r in k_reads)
    update = _TILE_UPDATE[path].replace("{MB}", str(g.MB)).replace("{A4}", a4).replace(
        "{A1}", a1).replace("{KBI}", kbi)
    text = _REGISTER_BLOCK.format(MB=g.MB, NB=g.NB, kloop=kloop, update=update,
                                  ACCW=_acc_width(path))
    return "\n".join(indent + line if line.strip() else line for line in text.split("\n"))


def _store_rows(g: _Gemm, ohw: int) -> int:
    """``R``, the output pixels per channel stored together by the grouped epilogue: the
    largest of 32, 16, 8, 4 that is a multiple of ``MB`` and divides ``ohw`` (the pixels of
    one image, so a group never spans two images), else 0 (the per-block epilogue). Before
    this, a block's ``MB`` rows were stored channel by channel as scalars: 16 lines written
    a few bytes at a time, at the channel stride (4 KB apart for int32 at 32x32)."""
    if ohw <= 0:
        return 0
    return next((r for r in (32, 16, 8, 4) if r % g.MB == 0 and ohw % r == 0 and r <= g.M),
                0)


def _grouped_source(g: _Gemm, path: str, args: list[str], pack_loops: str, out_dtype: str,
                    requant, acc_shift: int, rows: int, ohw: int, by_channel: bool,
                    guard_n: bool, k_reads) -> str:
    """:data:`_GROUPED_TEMPLATE` for a channel-major conv (``rows`` = R, see
    :func:`_store_rows`); the register block index is ``mo = mg*G + g``."""
    reads = tuple(re.sub(r"\bmo\b", f"(mg * {rows // g.MB} + g)", r) for r in k_reads)
    n = "((o * {NB} + t) * 16 + l)".replace("{NB}", str(g.NB))
    value = _output_value("tile[t, l, r]", n, requant, out_dtype, acc_shift)
    groups = g.MP // rows
    return _GROUPED_TEMPLATE.format(
        args=", ".join(args), MB=g.MB, NB=g.NB, G=rows // g.MB, R=rows, OHW=ohw,
        NOHW=g.N * ohw, YSIZE=g.M * g.N, ODT=out_dtype,
        ACCW=_acc_width(path),
        block=_register_block(g, path, reads, "    "), lane=_lane(path == "avx2w8"),
        value=value,
        guard=f"if {n} < {g.N}:\n" + " " * 20 if guard_n else "",
        guard_pad="    " if guard_n else "",
        outer="o" if by_channel else "mg", outer_n=g.NO if by_channel else groups,
        inner="mg" if by_channel else "o", inner_n=groups if by_channel else g.NO,
        pack_loops=pack_loops)


def _requant_te(requant: OutputRange, N: int, out_dtype: str):
    """``(mult, shift, body(n, acc))`` of the requant epilogue in TE (int64, module doc)."""
    from tvm import te, tirx

    mult = te.placeholder((N,), "int64", name="mult")
    shift = te.placeholder((N,), "int64", name="shift")
    one = tirx.const(1, "int64")

    def body(n, acc):
        s = shift[n]
        v = (acc.astype("int64") * mult[n].astype("int32").astype("int64")  # _mult64
             + ((one << s) >> one)) >> s
        v = v + tirx.const(requant.zero_point, "int64")
        v = tirx.max(tirx.min(v, tirx.const(requant.hi, "int64")),
                     tirx.const(requant.lo, "int64"))
        return v.astype(out_dtype)
    return mult, shift, body


def gemm_source(spec: Int8Spec, target: Target) -> str:
    """The TVMScript text of a GEMM layer (``main(x, w, offset, [bias], [mult, shift], y)``;
    ``bias`` with ``acc_shift`` only)."""
    if target.is_gpu:
        raise LoweringError(f"int8: {target.name} has no TVMScript CPU GEMM; use gpu_func")
    path = kernel_path(target, spec.w_bits)
    g = _Gemm(spec.M, spec.K, spec.N, *spec.block_for(path))
    pack = _pack_loops(g, spec.a_dtype, f"m, k in T.grid({spec.M}, {spec.K})", "m", "k",
                       "x[m, k]")
    y_index = f"mo * {g.MB} + mi, (o * {g.NB} + t) * 16 + l"
    return _gemm_source(g, path, spec.in_shape, spec.a_dtype,
                        pack, spec.out_shape, spec.out_dtype, y_index, spec.requant,
                        acc_shift=spec.acc_shift)


@dataclass(frozen=True, slots=True, eq=False)
class Int8Kernel:
    """A compiled layer: ``lib`` (TVM module; entry ``main``) for ``spec`` on ``target``,
    built for ``path``. Entry arguments: ``x``, ``w``, ``offset``, [``mult``, ``shift``],
    ``y``."""

    spec: object
    target: Target
    path: str
    lib: object

    def bind(self, packed: PackedWeights) -> BoundLayer:
        """Upload the packed parameters once; returns a callable layer (host targets)."""
        if self.target.is_gpu:
            raise LoweringError(f"int8: kernel built for {self.target.name} cannot run on this "
                                f"host's CPU; load the compiled module on a GPU")
        params = [packed.w, packed.offset]
        if getattr(self.spec, "acc_shift", 0):
            params.append(packed.bias)
        if self.spec.requant is not None:
            params += [packed.mult, packed.shift]
        return bind_layer(self, params, family="int8", in_shape=self.spec.in_shape,
                          out_shape=self.spec.out_shape)

    def __call__(self, x: np.ndarray, packed: PackedWeights) -> np.ndarray:
        """Run once on numpy codes (convenience; binds every call)."""
        return self.bind(packed)(x)


# -- CUDA ---------------------------------------------------------------------------------------
#: threads per CUDA block (one output (m, n) per thread; consecutive threads, consecutive n)
GPU_THREADS = 128


def _dp4a_emulated(a, b, acc):
    """``__dp4a(a, b, acc)`` as CUDA defines it, for a CPU build of :func:`gpu_func`: the four
    signed bytes of each int32 word (byte i = bits 8i..8i+7), multiplied pairwise and added
    to ``acc`` (int32)."""
    from tvm.script import tirx as T

    total = acc
    for i in range(GROUP):
        a_i = T.Cast("int32", T.Cast("int8", a >> T.int32(8 * i)))  # truncate, sign-extend
        b_i = T.Cast("int32", T.Cast("int8", b >> T.int32(8 * i)))
        total = total + a_i * b_i
    return total


def gpu_func(spec: Int8Spec, bind_threads: bool = True):
    """The CUDA GEMM as a PrimFunc ``main(x, w, offset, [bias], [mult, shift], y)`` over the
    CPU paths' packed weights (``w`` (NO, KB, NB, 16, 4) int8: a channel's 4 weights of one
    K group are one little-endian int32 word).

    Two kernels: ``xs[m, k] = int8(u[m, k] - 128)`` (zero padded to ``KB * 4``; uint8 codes
    ``x ^ 0x80``, int8 codes as they are), then one thread per output ``(m, n)``::

        acc = sum_kb __dp4a(xs[m, 4kb : 4kb+4], w[o, kb, t, l, 0:4], acc)    (s8 x s8 -> s32)
        y[m, n] = epilogue(acc + offset[n])         (offset = bias - z_s colsum(w), z_s = z_u - 128)

    with the CPU paths' epilogue (``acc_shift``, int64 requant). Exact without wrapping: every
    partial sum is at most ``K * 128 * max|w|`` <= the bound :func:`pack_weights` checks.
    ``bind_threads=False`` gives the same loops serial, with ``__dp4a`` replaced by its
    definition (:func:`_dp4a_emulated`) over the same int32 words, so the formula the GPU runs
    is checked bit-exactly on a CPU (``tvm.compile`` for llvm)."""
    from tvm.script import tirx as T

    M, K, N, NB = spec.M, spec.K, spec.N, spec.block[1]
    KB, THREADS = -(-K // GROUP), GPU_THREADS
    KP, NO = KB * GROUP, -(-N // (NB * LANES))
    ADT, ODT, SH = spec.a_dtype, spec.out_dtype, spec.acc_shift
    REQ = spec.requant is not None
    ZY, LO, HI = (spec.requant.zero_point, spec.requant.lo, spec.requant.hi) if REQ else (0, 0, 0)
    XB, YB = -(-M * KP // THREADS), -(-M * N // THREADS)

    def loop(extent, thread):
        if bind_threads:
            return T.thread_binding(extent, thread=thread)
        return T.serial(extent)

    def signed_byte(v):
        """The kernel operand ``s = u - 128`` of an activation code, as int8."""
        if ADT == "uint8":
            return T.reinterpret("int8", v ^ T.uint8(128))
        return v

    def dot4(xs, w, m, kb, n, acc):
        a = T.reinterpret("int32", xs.vload([m, kb * GROUP], "int8x4"))
        b = T.reinterpret("int32", w.vload([n // (NB * LANES), kb, n // LANES % NB, n % LANES, 0],
                                           "int8x4"))
        if bind_threads:
            return T.call_pure_extern("int32", "__dp4a", a, b, acc)
        return _dp4a_emulated(a, b, acc)

    def output(acc, n, offset, bias, mult, shift):
        """The CPU paths' epilogue (:func:`_store_text`): wrapped offset add, acc_shift, requant."""
        v = T.Cast("int32", T.Cast("uint32", acc) + T.Cast("uint32", offset[n]))
        if SH:
            v = (T.Cast("int64", v) << T.int64(SH)) + bias[n]
        if not REQ:
            return v
        s = shift[n]
        r = (T.Cast("int64", v) * mult[n] + ((T.int64(1) << s) >> T.int64(1))) >> s
        return T.Cast(ODT, T.max(T.min(r + T.int64(ZY), T.int64(HI)), T.int64(LO)))

    @T.macro
    def body(x, w, offset, bias, mult, shift, y):
        xs = T.alloc_buffer((M, KP), "int8")
        for bx in loop(XB, "blockIdx.x"):
            for tx in loop(THREADS, "threadIdx.x"):
                if bx * THREADS + tx < M * KP:
                    m = T.meta_var((bx * THREADS + tx) // KP)
                    k = T.meta_var((bx * THREADS + tx) % KP)
                    xs[m, k] = T.if_then_else(k < K, signed_byte(x[m, T.min(k, K - 1)]),
                                              T.int8(0))
        for bx in loop(YB, "blockIdx.x"):
            for tx in loop(THREADS, "threadIdx.x"):
                if bx * THREADS + tx < M * N:
                    acc = T.alloc_buffer((1,), "int32", scope="local")
                    m = T.meta_var((bx * THREADS + tx) // N)
                    n = T.meta_var((bx * THREADS + tx) % N)
                    acc[0] = 0
                    for kb in range(KB):
                        acc[0] = dot4(xs, w, m, kb, n, acc[0])
                    y[m, n] = output(acc[0], n, offset, bias, mult, shift)

    XS, WS = (M, K), (NO, KB, NB, LANES, GROUP)
    if SH:
        @T.prim_func
        def main(x: T.Buffer(XS, ADT), w: T.Buffer(WS, "int8"), offset: T.Buffer((N,), "int32"),
                 bias: T.Buffer((N,), "int64"), mult: T.Buffer((N,), "int64"),
                 shift: T.Buffer((N,), "int64"), y: T.Buffer((M, N), ODT)):
            T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
            body(x, w, offset, bias, mult, shift, y)
    elif REQ:
        @T.prim_func
        def main(x: T.Buffer(XS, ADT), w: T.Buffer(WS, "int8"), offset: T.Buffer((N,), "int32"),
                 mult: T.Buffer((N,), "int64"), shift: T.Buffer((N,), "int64"),
                 y: T.Buffer((M, N), ODT)):
            T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
            body(x, w, offset, None, mult, shift, y)
    else:
        @T.prim_func
        def main(x: T.Buffer(XS, ADT), w: T.Buffer(WS, "int8"), offset: T.Buffer((N,), "int32"),
                 y: T.Buffer((M, N), ODT)):
            T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
            body(x, w, offset, None, None, None, y)
    return main


def lower(spec: Int8Spec, target: Target):
    """The layer's TIR module (before ``tvm.compile``): the TVMScript GEMM on CPU targets,
    :func:`gpu_func` on CUDA."""
    import tvm

    if target.is_gpu:
        return tvm.IRModule({"main": gpu_func(spec)})
    if spec.engine == "amx":
        from . import amx

        return amx.lower_int8_gemm(spec, target)
    return tvm.IRModule({"main": tvm.script.from_source(gemm_source(spec, target))})


def build(spec: Int8Spec, target: Target) -> Int8Kernel:
    """Compile one GEMM layer shape for ``target`` (cached per (spec, target) in-process)."""
    return _build_cached(spec, target)


@functools.lru_cache(maxsize=256)
def _build_cached(spec: Int8Spec, target: Target) -> Int8Kernel:
    import tvm

    from ..build import tir_pipeline

    path = "amx" if spec.engine == "amx" else kernel_path(target, spec.w_bits)
    return Int8Kernel(spec, target, path, tvm.compile(lower(spec, target),
                                                      target=target.tvm_dict(),
                                                      tir_pipeline=tir_pipeline(target)))


# -- conv ---------------------------------------------------------------------------------------
def _conv_out(size: int, k: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    return (size + pad_lo + pad_hi - k) // stride + 1


@dataclass(frozen=True, slots=True)
class ConvSpec:
    """A dense (group 1) NCHW conv: input (B, C, H, W), weights (OC, C, KH, KW), ``stride``
    (sh, sw), ``pads`` (top, left, bottom, right), dilation 1. Lowered as im2col + the GEMM:
    row ``m = (b, oh, ow)``, column ``k = (c, kh, kw)``; padded pixels read ``z_x``."""

    B: int
    C: int
    H: int
    W: int
    OC: int
    KH: int
    KW: int
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    w_bits: int = 8
    a_dtype: str = "uint8"
    requant: OutputRange | None = None
    acc_shift: int = 0
    engine: str = "simd"  # or "amx": AMX byte tiles (:mod:`.amx`, CPUs with AMX)
    pool: MaxPoolWindow | None = None  # a max-pool fused behind the requant (amx only)

    def __post_init__(self):
        if min(self.B, self.C, self.H, self.W, self.OC, self.KH, self.KW, *self.stride) < 1:
            raise LoweringError(f"int8 conv: every size and stride must be >= 1 in {self}")
        if self.pool is not None and (self.engine != "amx" or self.requant is None):
            raise LoweringError("int8 conv: a fused max-pool needs engine 'amx' and a requant "
                                "output")
        if self.engine not in CONV_ENGINES:
            raise LoweringError(f"int8 conv: engine {self.engine!r}; use one of {CONV_ENGINES}")
        if min(self.pads) < 0 or self.OH < 1 or self.OW < 1:
            raise LoweringError(f"int8 conv: pads {self.pads} give an empty output in {self}")
        if self.a_dtype not in A_DTYPES or not 2 <= self.w_bits <= 8:
            raise LoweringError(f"int8 conv: a_dtype {self.a_dtype!r} / w_bits {self.w_bits} "
                                f"unsupported; use {A_DTYPES} and 2..8")
        _check_output(self.requant, "conv")
        _check_acc_shift(self.acc_shift, self.requant)

    @property
    def OH(self) -> int:
        return _conv_out(self.H, self.KH, self.stride[0], self.pads[0], self.pads[2])

    @property
    def OW(self) -> int:
        return _conv_out(self.W, self.KW, self.stride[1], self.pads[1], self.pads[3])

    @property
    def KQ(self) -> int:
        """Taps per kernel row as the GEMM sees them: ``KW`` (im2col, channel-packed direct),
        or ``KW`` rounded up to whole 4-byte groups (direct)."""
        if self.direct and not self.channels_packed:
            return -(-self.KW // GROUP) * GROUP
        return self.KW

    @property
    def channels_packed(self) -> bool:
        """Direct conv over a channels-last byte image (``C % 4 == 0``, a kernel larger than
        1x1): K runs over ``(kh, kw, c)`` and a 4-byte group is 4 adjacent channels of one
        pixel, so no tap is padded (3x3: a quarter fewer MACs than the rounded-up rows), and
        a row's taps read adjacent bytes. Zen 3, one thread, 3x3, against the rounded-up
        rows, 7-bit / 8-bit weights: 64->64 at 56² 2.71 -> 1.79 / 4.12 -> 2.89 ms, 128->128 at
        28² 2.51 -> 1.62 / 4.15 -> 3.03 ms, 16->16 at 32² batch 20 1.40 -> 1.09 ms; 256 and
        512 channels at 14² / 7² within 3-8 %."""
        return self.C % GROUP == 0 and self.KH * self.KW > 1

    @property
    def direct(self) -> bool:
        """Implicit GEMM (module docstring) when rounding ``KW`` up to whole 4-tap groups
        costs less than the im2col copy it saves: no more than a third more MACs (KW = 3, 4,
        7, 8, ...; never 1x1 or 5x5), and ``OC * (KQ - KW) <= 64 * KW`` (the wasted MACs per
        row grow with OC, the copy does not). Measured on Zen 5, one thread: 7x7/2 stem
        3->64 at 224² 0.49 ms direct vs 0.56 im2col; 3x3 64->64 at 56² 0.40 vs 0.47; 128->128
        at 28² 0.33 vs 0.32; 512->512 at 7² 0.34 vs 0.27."""
        if self.channels_packed:
            return True
        kq = -(-self.KW // GROUP) * GROUP
        return 3 * kq <= 4 * self.KW and self.OC * (kq - self.KW) <= 64 * self.KW

    @property
    def gemm(self) -> Int8Spec:
        """The GEMM: M = B*OH*OW, K = C*KH*KQ, N = OC."""
        return Int8Spec(self.B * self.OH * self.OW, self.C * self.KH * self.KQ, self.OC,
                        self.w_bits, self.a_dtype, self.requant, acc_shift=self.acc_shift)

    in_shape = property(lambda self: (self.B, self.C, self.H, self.W))
    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(B, OC, OH, OW), or the pooled rows and columns with a fused ``pool``."""
        if self.pool is not None:
            return (self.B, self.OC, *self.pool.out_shape(self.OH, self.OW))
        return (self.B, self.OC, self.OH, self.OW)

    out_dtype = property(lambda self: self.gemm.out_dtype)


def pack_conv_weights(spec: ConvSpec, target: Target, w: np.ndarray, *, bias=None,
                      a_zero_point: int = 0, mult=None, shift=None) -> PackedWeights:
    """(OC, C, KH, KW) weights -> the im2col GEMM's :class:`PackedWeights`; the zero point
    is a runtime input of :func:`build_conv` too (it is the padding value)."""
    w = np.asarray(w)
    if w.shape != (spec.OC, spec.C, spec.KH, spec.KW):
        raise LoweringError(f"int8 conv: weights {w.shape}, spec wants "
                            f"{(spec.OC, spec.C, spec.KH, spec.KW)}")
    if spec.engine == "amx":  # the same checks and offset on K = (c, kh, kw), AMX tiles
        from . import amx

        g = Int8Spec(spec.B * spec.OH * spec.OW, spec.C * spec.KH * spec.KW, spec.OC,
                     spec.w_bits, spec.a_dtype, spec.requant, acc_shift=spec.acc_shift)
        packed = pack_weights(g, target, w.reshape(spec.OC, -1).T, bias=bias,
                              a_zero_point=a_zero_point, mult=mult, shift=shift)
        return PackedWeights(amx.tile_weights(spec, w), packed.offset, packed.mult,
                             packed.shift, packed.bias)
    if spec.KQ > spec.KW:  # direct: zero taps pad each kernel row to whole 4-byte groups
        w = np.concatenate([w, np.zeros(w.shape[:3] + (spec.KQ - spec.KW,), w.dtype)], 3)
    if spec.channels_packed:  # K = (kh, kw, c)
        w = w.transpose(0, 2, 3, 1)
    return pack_weights(spec.gemm, target, w.reshape(spec.OC, -1).T, bias=bias,
                        a_zero_point=a_zero_point, mult=mult, shift=shift)


def _refuse_gpu_conv(target: Target, entry: str) -> None:
    """The conv / depthwise entries have CPU schedules only; on CUDA a graph runs a dense
    conv as im2col + :func:`gpu_func` (``lowering/families.py``), depthwise on the reference
    kernel."""
    if target.is_gpu:
        raise LoweringError(f"int8 {entry}: no {target.name} schedule for this entry; on GPUs "
                            f"run dense convs as im2col + the int8 GEMM (int8.build)")


def conv_source(spec: ConvSpec, target: Target, zero_point: int) -> str:
    """TVMScript of a dense conv (im2col or direct, :attr:`ConvSpec.direct`); the epilogue
    writes NCHW."""
    _refuse_gpu_conv(target, "conv")
    g_spec = spec.gemm
    path = kernel_path(target, spec.w_bits)
    g = _Gemm(g_spec.M, g_spec.K, g_spec.N, *g_spec.block_for(path))
    (sh, sw), (pt, pl, pb, pr) = spec.stride, spec.pads
    OH, OW, KH, KW = spec.OH, spec.OW, spec.KH, spec.KW
    row = f"(mo * {g.MB} + mi)"
    y_index = (f"{row} // {OH * OW}, (o * {g.NB} + t) * 16 + l, {row} // {OW} % {OH}, "
               f"{row} % {OW}")
    if spec.direct:
        return _gemm_source(g, path, spec.in_shape, spec.a_dtype, _xpad_loops(spec, zero_point),
                            spec.out_shape, spec.out_dtype, y_index, spec.requant,
                            _direct_k_reads(spec, g), channel_major=True,
                            acc_shift=spec.acc_shift, ohw=OH * OW)
    HP, WP = spec.H + pt + pb, spec.W + pl + pr
    src, pad_text = "x", ""
    if any(spec.pads):  # pad once (zero point), so the im2col copy has no bounds checks
        h, v = f"(hp - {pt})", f"(wp - {pl})"
        pixel = (f"x[b, c, T.min(T.max({h}, 0), {spec.H - 1}), "
                 f"T.min(T.max({v}, 0), {spec.W - 1})]")
        pad_text = (
            f'    xpad = T.alloc_buffer(({spec.B}, {spec.C}, {HP}, {WP}), "{spec.a_dtype}")\n'
            f"    for b, c, hp, wp in T.grid({spec.B}, {spec.C}, {HP}, {WP}):\n"
            f"        xpad[b, c, hp, wp] = T.if_then_else({h} >= 0 and {h} < {spec.H} and "
            f"{v} >= 0 and {v} < {spec.W}, {pixel}, T.{spec.a_dtype}({zero_point}))\n")
        src = "xpad"
    pack = pad_text + _pack_loops(
        g, spec.a_dtype, f"b, oh, ow, c, kh, kw in T.grid({spec.B}, {OH}, {OW}, {spec.C}, "
                         f"{KH}, {KW})", f"(b * {OH} + oh) * {OW} + ow",
        f"(c * {KH} + kh) * {KW} + kw", f"{src}[b, c, oh * {sh} + kh, ow * {sw} + kw]")
    return _gemm_source(g, path, spec.in_shape, spec.a_dtype, pack, spec.out_shape,
                        spec.out_dtype, y_index, spec.requant, channel_major=True,
                        acc_shift=spec.acc_shift, ohw=OH * OW)


def _xpad_width(spec: ConvSpec) -> int:
    """Columns of the direct conv's padded byte image: the padded input, widened so the last
    output's last 4-byte group (taps ``KW .. KQ-1`` meet zero weights) stays inside."""
    return max(spec.W + spec.pads[1] + spec.pads[3], (spec.OW - 1) * spec.stride[1] + spec.KQ)


def _xpad_loops(spec: ConvSpec, zero_point: int) -> str:
    """The direct conv's prologue: ``xpad`` uint8 = the GEMM bytes of the zero-point-padded
    input (fill with byte(z_x), then copy the rows in): (B, C, HP, WPX), or channels last
    (B, HP, WP, C) when :attr:`ConvSpec.channels_packed`."""
    HP, WPX = spec.H + spec.pads[0] + spec.pads[2], _xpad_width(spec)
    pt, pl = spec.pads[:2]
    fill = f"T.uint8({(zero_point + (128 if spec.a_dtype == 'int8' else 0)) & 0xFF})"
    dims, inner = ("b, hp, wp, c", "b, h + {pt}, w_ + {pl}, c") if spec.channels_packed else \
        ("b, c, hp, wp", "b, c, h + {pt}, w_ + {pl}")
    sizes = {"b": spec.B, "c": spec.C, "hp": HP, "wp": WPX, "h": spec.H, "w_": spec.W}
    grid = ", ".join(str(sizes[d]) for d in dims.split(", "))
    copy = dims.replace("hp", "h").replace("wp", "w_")
    return "\n".join([
        f'    xpad = T.alloc_buffer(({grid}), "uint8")',
        f"    for {dims} in T.grid({grid}):",
        f"        xpad[{dims}] = {fill}",
        f"    for {copy} in T.grid({', '.join(str(sizes[d]) for d in copy.split(', '))}):",
        f"        xpad[{inner.format(pt=pt, pl=pl)}] = {_byte('x[b, c, h, w_]', spec.a_dtype)}"])


def _direct_k_reads(spec: ConvSpec, g: _Gemm) -> tuple[str, str, str, str]:
    """The direct conv's K loop and its reads; the 4-byte group of row ``r = (b, oh, ow)``
    (rows past M, never stored, read row M-1) is ``xpad[b, c, oh*sh + kh, ow*sw + 4q ..]``
    over ``(c, kh, q)`` (``kb = (c*KH + kh)*KQ/4 + q``), or, channels packed,
    ``xpad[b, oh*sh + kh, ow*sw + kw, 4cq ..]`` over ``(kh, kw, cq)`` (``kb = (kh*KW +
    kw)*C/4 + cq``)."""
    (sh, sw), OH, OW = spec.stride, spec.OH, spec.OW
    r = f"T.min(mo * {g.MB} + mi, {g.M - 1})"
    b, h, w = f"{r} // {OH * OW}", f"{r} // {OW} % {OH} * {sh} + kh", f"{r} % {OW} * {sw}"
    if spec.channels_packed:
        c4 = spec.C // GROUP
        at = f"{b}, {h}, {w} + kw, cq * 4"
        loop, kb = (f"for kh, kw, cq in T.grid({spec.KH}, {spec.KW}, {c4}):",
                    f"(kh * {spec.KW} + kw) * {c4} + cq")
    else:
        q4 = spec.KQ // GROUP
        at = f"{b}, c, {h}, {w} + q * 4"
        loop, kb = (f"for c, kh, q in T.grid({spec.C}, {spec.KH}, {q4}):",
                    f"(c * {spec.KH} + kh) * {q4} + q")
    return loop, kb, f'xpad.vload([{at}], "uint8x4")', f"xpad[{at} + i]"


def lower_conv(spec: ConvSpec, target: Target, zero_point: int = 0):
    """TIR module of a dense conv (im2col GEMM, NCHW epilogue; AMX tiles when
    ``spec.engine == "amx"``)."""
    import tvm

    if spec.engine == "amx":
        from . import amx

        return amx.lower_int8(spec, target, zero_point)
    return tvm.IRModule({"main": tvm.script.from_source(conv_source(spec, target,
                                                                    zero_point))})


def build_conv(spec: ConvSpec, target: Target, zero_point: int) -> Int8Kernel:
    """Compile a dense conv for ``target``; ``zero_point`` (z_x) is the padding code."""
    return _build_conv_cached(spec, target, zero_point)


@functools.lru_cache(maxsize=64)
def _build_conv_cached(spec: ConvSpec, target: Target, zero_point: int) -> Int8Kernel:
    import tvm

    from ..build import tir_pipeline

    mod = lower_conv(spec, target, zero_point)
    path = "amx" if spec.engine == "amx" else kernel_path(target, spec.w_bits)
    return Int8Kernel(spec, target, path, tvm.compile(mod, target=target.tvm_dict(),
                                                      tir_pipeline=tir_pipeline(target)))


# -- depthwise conv -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DepthwiseSpec:
    """A depthwise NCHW conv (group = C): input (B, C, H, W), weights (C, 1, KH, KW) with
    KH, KW in {3, 5}, ``stride`` (sh, sw) in {1, 2}, ``pads`` (top, left, bottom, right).

    Direct schedule (no GEMM: K = KH*KW is tiny): ``acc[b,c,oh,ow] = sum_{kh,kw}
    (xpad[b, c, oh*sh+kh, ow*sw+kw] - z_x) * w[c, kh, kw] + bias[c]`` with ``xpad`` padded by
    ``z_x``, int32, parallel over (b, c), output row vectorized along ``ow``."""

    B: int
    C: int
    H: int
    W: int
    KH: int = 3
    KW: int = 3
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    w_bits: int = 8
    a_dtype: str = "uint8"
    requant: OutputRange | None = None

    def __post_init__(self):
        if self.KH not in (3, 5) or self.KW not in (3, 5):
            raise LoweringError(f"int8 depthwise: kernel {self.KH}x{self.KW}; only 3x3 and "
                                f"5x5 (and 3x5 / 5x3) are scheduled")
        if any(s not in (1, 2) for s in self.stride):
            raise LoweringError(f"int8 depthwise: stride {self.stride}; only 1 and 2")
        if min(self.B, self.C, self.H, self.W) < 1 or min(self.pads) < 0:
            raise LoweringError(f"int8 depthwise: bad sizes or pads in {self}")
        if self.OH < 1 or self.OW < 1:
            raise LoweringError(f"int8 depthwise: pads {self.pads} give an empty output")
        if self.a_dtype not in A_DTYPES or not 2 <= self.w_bits <= 8:
            raise LoweringError(f"int8 depthwise: a_dtype {self.a_dtype!r} / w_bits "
                                f"{self.w_bits} unsupported; use {A_DTYPES} and 2..8")
        _check_output(self.requant, "depthwise")

    OH = property(lambda self: _conv_out(self.H, self.KH, self.stride[0], self.pads[0],
                                         self.pads[2]))
    OW = property(lambda self: _conv_out(self.W, self.KW, self.stride[1], self.pads[1],
                                         self.pads[3]))
    in_shape = property(lambda self: (self.B, self.C, self.H, self.W))
    out_shape = property(lambda self: (self.B, self.C, self.OH, self.OW))
    out_dtype = property(lambda self: "int32" if self.requant is None else self.requant.dtype)


def pack_depthwise_weights(spec: DepthwiseSpec, w: np.ndarray, *, bias=None,
                           a_zero_point: int = 0, mult=None, shift=None) -> PackedWeights:
    """(C, 1, KH, KW) weights -> ``w`` (C, KH, KW) int8, ``offset`` = bias (int32; the zero
    point is subtracted in the kernel), requant parameters."""
    w = np.asarray(w)
    if w.shape != (spec.C, 1, spec.KH, spec.KW) or w.dtype.kind not in "iu":
        raise LoweringError(f"int8 depthwise: weights {w.dtype} {w.shape}, spec wants integer "
                            f"{(spec.C, 1, spec.KH, spec.KW)}")
    lo, hi = -(1 << (spec.w_bits - 1)), (1 << (spec.w_bits - 1)) - 1
    if w.size and (w.min() < lo or w.max() > hi):
        raise LoweringError(f"int8 depthwise: weights in [{w.min()}, {w.max()}] do not fit "
                            f"int{spec.w_bits}")
    bias = np.zeros(spec.C, np.int64) if bias is None else np.broadcast_to(
        np.asarray(bias, np.int64), (spec.C,))
    bound = spec.KH * spec.KW * 255 * 128 + int(np.abs(bias).max())
    if bound > _INT32_MAX:
        raise LoweringError(f"int8 depthwise: bias up to {int(np.abs(bias).max())} may "
                            f"overflow the int32 accumulator")
    mult_a, shift_a = dyadic_params("int8", spec.requant, spec.C, mult, shift)
    return PackedWeights(np.ascontiguousarray(w[:, 0].astype(np.int8)),
                         bias.astype(np.int32), mult_a, shift_a)


def _depthwise_func(spec: DepthwiseSpec, zero_point: int):
    from tvm import te, tirx

    x = te.placeholder(spec.in_shape, spec.a_dtype, name="x")
    w = te.placeholder((spec.C, spec.KH, spec.KW), "int8", name="w")
    bias = te.placeholder((spec.C,), "int32", name="offset")
    pt, pl, pb, pr = spec.pads
    HP, WP = spec.H + pt + pb, spec.W + pl + pr
    zx = tirx.const(zero_point, "int32")

    def pad_body(b, c, h, v):
        inside = tirx.all(h >= pt, h < spec.H + pt, v >= pl, v < spec.W + pl)
        pixel = x[b, c, tirx.min(tirx.max(h - pt, 0), spec.H - 1),
                  tirx.min(tirx.max(v - pl, 0), spec.W - 1)].astype("int32")
        return tirx.if_then_else(inside, pixel - zx, tirx.const(0, "int32"))
    xpad = te.compute((spec.B, spec.C, HP, WP), pad_body, name="pad")
    kh = te.reduce_axis((0, spec.KH), name="kh")
    kw = te.reduce_axis((0, spec.KW), name="kw")
    sh, sw = spec.stride
    acc = te.compute(
        spec.out_shape,
        lambda b, c, oh, ow: te.sum(xpad[b, c, oh * sh + kh, ow * sw + kw]
                                    * w[c, kh, kw].astype("int32"), axis=[kh, kw]),
        name="gemm")
    args = [x, w, bias]
    if spec.requant is None:
        y = te.compute(spec.out_shape, lambda b, c, oh, ow: acc[b, c, oh, ow] + bias[c],
                       name="out")
    else:
        mult, shift, body = _requant_te(spec.requant, spec.C, spec.out_dtype)
        y = te.compute(spec.out_shape,
                       lambda b, c, oh, ow: body(c, acc[b, c, oh, ow] + bias[c]), name="out")
        args += [mult, shift]
    return te.create_prim_func(args + [y])


def lower_depthwise(spec: DepthwiseSpec, target: Target, zero_point: int = 0):
    """Scheduled IRModule: parallel over (b, c); per channel the padded plane, then per
    output row the ``ow`` loop vectorized with the taps unrolled, requant fused."""
    import tvm

    _refuse_gpu_conv(target, "depthwise")
    sch = tvm.s_tir.Schedule(_depthwise_func(spec, zero_point))
    out = sch.get_sblock("out")
    gemm = sch.get_sblock("gemm")
    pad = sch.get_sblock("pad")
    b, c, oh, ow = sch.get_loops(out)
    bc = sch.fuse(b, c)
    sch.parallel(bc)
    sch.compute_at(gemm, oh)
    sch.compute_at(pad, bc)
    _, _, ow_g, kh, kw = sch.get_loops(gemm)
    sch.reorder(kh, kw, ow_g)
    init = sch.decompose_reduction(gemm, kh)
    sch.unroll(kh)
    sch.unroll(kw)
    # ow_g (under the reduction) is left to LLVM's loop vectorizer: s_tir refuses to vectorize
    # a loop whose block reduces
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(ow)
    if spec.stride == (1, 1):
        # the pad plane as a constant fill plus an unconditional interior, both vectorized
        # (the if_then_else on the innermost index kept the row scalar). Zen 3, one thread,
        # 3x3: 128@56² 0.99 -> 0.62 ms; 64@16² batch 20 and 512@14² unchanged. Stride 2
        # was slower split (128@112² 1.18 -> 1.39 ms, 256@28² 0.20 -> 0.23), so it stays.
        row = sch.get_loops(pad)[1]
        if sch.can_decompose_padding(pad, row):
            fill = sch.decompose_padding(pad, row)
            sch.vectorize(sch.get_loops(fill)[-1])
            sch.vectorize(sch.get_loops(pad)[-1])
    return sch.mod


def build_depthwise(spec: DepthwiseSpec, target: Target, zero_point: int) -> Int8Kernel:
    """Compile a depthwise conv for ``target``; ``zero_point`` (z_x) is the padding code."""
    return _build_dw_cached(spec, target, zero_point)


@functools.lru_cache(maxsize=64)
def _build_dw_cached(spec: DepthwiseSpec, target: Target, zero_point: int) -> Int8Kernel:
    import tvm

    mod = lower_depthwise(spec, target, zero_point)
    return Int8Kernel(spec, target, "generic", tvm.compile(mod, target=target.tvm_dict()))


# -- registry entry -------------------------------------------------------------------------------
def operand_bits(qtype: QType, role: str) -> int | None:
    """Bits of a QType this family computes with, or None. Weights: symmetric signed uniform
    int2..int8 (zero points 0), and every format whose *integer weight values* (what
    ``passes/fold_scales`` stores: binary ±1, ternary −1/0/1, pow2 ±2^s with s ≤ t) fit a
    signed byte — binary and ternary as int2, pow2 as int(t + 2) when t ≤ 6 (t = 2^(bits−1) − 1
    zero-free, one less with a zero code), codebooks of <= 4 index bits as the signed width of
    their integer level grid (:func:`~lowbit.ir.qformats.codebook_grid_bits`: 7 bits, one
    byte per weight in memory). Activations: uniform 8-bit (or fewer) with one zero point."""
    if role == "weight" and qtype.kind in (QKind.BINARY, QKind.TERNARY):
        return 2
    if role == "weight" and qtype.kind == QKind.POW2:
        t = (1 << (qtype.bits - 1)) - (1 if qtype.zero_free else 2)
        return t + 2 if t + 2 <= 8 else None
    if role == "weight" and qtype.kind == QKind.CODEBOOK:
        grid = codebook_grid_bits(qtype.bits)
        return grid if grid <= 8 else None
    if qtype.kind != QKind.UNIFORM or qtype.bits > 8:
        return None
    if role == "weight":
        ok = qtype.signed and qtype.bits >= 2 and not any(qtype.zero_point)
        return qtype.bits if ok else None
    return qtype.bits if len(qtype.zero_point) <= 1 else None


def accepts(w_qtype: QType, a_qtype: QType) -> bool:
    """True for weights :func:`operand_bits` takes x uniform <= 8-bit per-tensor activations."""
    return (operand_bits(w_qtype, "weight") is not None
            and operand_bits(a_qtype, "activation") is not None)


def accumulator_dtype(K: int, w_qtype: QType, a_qtype: QType) -> DType:
    """Accumulator rule: int32 (raises :class:`LoweringError` if K * |w| * |x - z_x| cannot fit
    int32; bias is checked at :func:`pack_weights`)."""
    from ...ir.dyadic import fits_accumulator

    if not fits_accumulator(K, w_qtype, a_qtype, 32):
        raise LoweringError(f"int8: K={K} with {w_qtype} x {a_qtype} overflows int32; split K")
    return DType.int(32)


FAMILY = register_family(KernelFamily(
    name="int8",
    accepts=accepts,
    accumulator_dtype=accumulator_dtype,
    build=build,
    pack_weights=pack_weights,
    formula=__doc__[:__doc__.index("The zero point")].strip(),
))
