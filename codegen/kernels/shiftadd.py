"""Shift-add kernels for power-of-two weights: quantized MatMul without weight multiplies.

Weights are pow2 integers as ``passes/fold_scales.py`` writes them: with ``E = 2^(bits-1)``
exponent codes and ``t = E - 1`` (``zero_free``) or ``t = E - 2`` (the smallest level reads
0), every weight is ``w = sign * 2^s`` with ``s = t - e`` in ``0 .. t``, or ``w = 0`` (not
zero_free). The layer is the integer simulator's, bit-exactly::

    acc[m, n] = sum_k (x[m, k] - z_x) * w[k, n] + bias[n]                      (int32)
    y[m, n]   = clamp(z_y + ((acc * mult[n] + 2^(shift[n]-1)) >> shift[n]), lo, hi)

(int64 intermediate, arithmetic shift, no rounding term for ``shift = 0``: the rule of
:func:`lowbit.ir.dyadic.requantize`), or ``acc`` itself in accumulator-out mode. The kernel
computes ``acc = sum_k u[m, k] * w[k, n] + offset[n]`` with ``offset[n] = bias[n] - z_u *
sum_k w[k, n]`` folded at compile time (``u = x``, ``z_u = z_x``; for int8 activations in the
``int8`` variant ``u = x + 128`` as uint8 and ``z_u = z_x + 128``).

Two variants (:data:`VARIANTS`):

* ``shift`` (true shift-add): each weight is a ``bits``-wide field ``sign << (bits-1) | s``
  (zero: ``s`` field all ones, sign 0), two fields per byte for ``bits <= 4`` (nibbles: element
  ``2j`` low, ``2j+1`` high), one per byte for 5 bits; the kernel adds ``+-(u << s)``, no
  multiplies. Nibble formats whose pair sum fits int16 (``2 * max|u| * 2^t <= 2^15 - 1``: pow2
  2 and 3 bits, 4 bits with a zero code) run in int16 lanes (AVX-512BW ``vpsllvw``, NEON
  ``ushl .8h``: 32 products per op), summing :attr:`ShiftAddSpec.chunk` bytes before widening
  to int32; the others in int32 lanes (``vpsllvd``). Exponent range: ``t <= 15``, i.e. pow2
  with 2..5 bits, with or without zero; the int32 accumulator bound ``K * max|u| * 2^t +
  max|offset| <= 2^31 - 1`` is checked (5-bit zero_free with 8-bit activations: K <= 257).
* ``int8``: the same nibble fields are mapped at run time through a 16-entry ``+-2^s`` table
  (``vpshufb``) to int8 values and fed to an int8 dot product (AVX-512 VNNI ``vpdpbusd``: 64
  u8 x s8 products per instruction). ``2^7 = 128`` does not fit int8, so exactly ``t <= 6``:
  pow2 2 and 3 bits (both), 4 bits with a zero code only; wider formats are refused with
  :class:`LoweringError`. On CPUs x86 with AVX-512 VNNI only (no ARM path: refused on
  other CPUs); on CUDA it runs the shift-add compute below over its own layout.

Layouts: ``shift``: ``(NB, ceil(K / per_byte), 64)`` uint8, channel ``n`` at
``[n // 64, :, n % 64]``; ``int8``: ``(NB, KP / 8, 4, 64)`` uint8 (``KP`` = K rounded up to
8): byte ``[b, q, j, 4c + i]`` holds k = ``8q + i`` (low nibble) and ``8q + 4 + i`` (high) of
channel ``64b + 16j + c``, so one 64-byte load feeds two ``vpdpbusd`` of a 16-channel group.
Activations are copied inside the compiled function into a zero-padded ``(M, KP)`` buffer, so
K is free; padded channels and k meet zero activations. The GEMM runs parallel over 64-channel
blocks (TVM thread pool; :func:`~lowbit.codegen.kernels.common.set_num_threads`), the
epilogue right after each tile.

Why ``int8`` beats ``shift`` on x86: every weight has its own shift, so a shift-add step is
~4-5 vector ops (field unpack, ``vpsllvw``, zero and sign selects, add) for 32 products, per
activation row; one ``vpdpbusd`` does 64 products and the nibble decode (and, shift, two
``vpshufb``) is shared by 128 products and by every row of the tile. Both stream 4-bit
weights. Shift-add pays off where multipliers cost area or energy (FPGA / ASIC), not on a CPU
with int8 dot-product instructions; measured numbers are in ``bench/bench_shiftadd.py``.

CUDA (``sm_80`` / ``sm_90``, :func:`gpu_func`): both variants, over the same packed weights as
on the CPU, as one TE compute (``acc += +-(u << s)`` per weight field read from the variant's
layout: shifts, no multiplies) with one thread per output and the epilogue in that thread.
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
from .common import BoundLayer, OutputRange, bind_layer, dyadic_params, set_num_threads

__all__ = [
    "VARIANTS",
    "OutputRange",
    "ShiftAddPacked",
    "ShiftAddSpec",
    "build",
    "lower",
    "pack_weights",
    "pow2_values",
    "set_num_threads",
]

VARIANTS = ("shift", "int8")
#: largest weight exponent ``t`` (``|w| <= 2^t``) per variant (module docstring)
MAX_TOP = {"shift": 15, "int8": 6}
#: output channels per block (parallel unit): 64 lanes (shift) / four 16-lane vpdpbusd (int8)
BLOCK = 64
_INT32_MAX = (1 << 31) - 1


def pow2_top(bits: int, zero_free: bool) -> int:
    """``t``: the largest shift, ``|w| <= 2^t`` (``2^(bits-1) - 1``, one less with a zero)."""
    n_exp = 1 << (bits - 1)
    return n_exp - 1 if zero_free else n_exp - 2


def pow2_values(bits: int, zero_free: bool) -> np.ndarray:
    """Every legal integer weight of the format, ascending (``+-2^s``, and 0 unless zero_free)."""
    mags = [1 << s for s in range(pow2_top(bits, zero_free) + 1)]
    vals = [-m for m in mags] + mags + ([] if zero_free else [0])
    return np.array(sorted(vals), np.int64)


@dataclass(frozen=True, slots=True)
class ShiftAddSpec:
    """One layer shape ``(M, K) x (K, N)``, the pow2 weight format, the variant, the
    activation codes (``a_signed``: int8 else uint8; ``a_bits`` their width, for the bound),
    and the output stage (``requant`` None: accumulator-out, int32)."""

    M: int
    K: int
    N: int
    w_bits: int
    zero_free: bool
    variant: str = "shift"
    a_signed: bool = False
    a_bits: int = 8
    requant: OutputRange | None = None

    def __post_init__(self):
        if min(self.M, self.K, self.N) < 1:
            raise LoweringError(f"shiftadd: shape M={self.M} K={self.K} N={self.N} must be >= 1")
        if self.variant not in VARIANTS:
            raise LoweringError(f"shiftadd: variant {self.variant!r}; use one of {VARIANTS}")
        if not 1 <= self.a_bits <= 8:
            raise LoweringError(f"shiftadd: activations of {self.a_bits} bits; use 1..8")
        if not 2 <= self.w_bits <= 8:
            raise LoweringError(f"shiftadd: pow2 weights have 2..8 bits, got {self.w_bits}")
        top, limit = self.top, MAX_TOP[self.variant]
        if top > limit:
            fmt = self.format_name
            hint = ("use the 'shift' variant" if self.variant == "int8" and top <= MAX_TOP["shift"]
                    else "use fewer pow2 bits")
            raise LoweringError(
                f"shiftadd {self.variant}: {fmt} weights reach 2^{top}, beyond the variant's "
                f"2^{limit} (int8 holds +-2^6; shift lanes 2^15); {hint}")

    @property
    def format_name(self) -> str:
        return f"{self.w_bits}-bit pow2{' zero_free' if self.zero_free else ''}"

    @property
    def top(self) -> int:
        return pow2_top(self.w_bits, self.zero_free)

    @property
    def a_dtype(self) -> str:
        return "int8" if self.a_signed else "uint8"

    @property
    def out_dtype(self) -> str:
        return "int32" if self.requant is None else self.requant.dtype

    @property
    def per_byte(self) -> int:
        """Weight fields per stored byte in the shift variant (2: nibbles)."""
        return 2 if self.w_bits <= 4 else 1

    @property
    def k_padded(self) -> int:
        """K rounded up to the variant's K step (int8: 8, two vpdpbusd quads per nibble byte;
        shift: fields per byte)."""
        step = 8 if self.variant == "int8" else 2 * self.chunk or self.per_byte
        return -(-self.K // step) * step

    @property
    def chunk(self) -> int:
        """Weight bytes (two k each) the shift variant sums in int16 lanes before widening to
        int32: ``floor((2^15 - 1) / (2 * max|u| * 2^t))``; 0 (int32 lanes) when that is < 1 or
        the fields are not nibbles."""
        if self.variant != "shift" or self.per_byte != 2:
            return 0
        u_lo, u_hi = self.u_range()
        return min(32, ((1 << 15) - 1) // (2 * max(abs(u_lo), abs(u_hi), 1) << self.top))

    @property
    def n_blocks(self) -> int:
        return -(-self.N // BLOCK)

    def u_range(self) -> tuple[int, int]:
        """Range of the kernel's activation operand ``u`` (int8 variant shifts int8 to uint8)."""
        if not self.a_signed:
            return 0, (1 << self.a_bits) - 1
        lo, hi = -(1 << (self.a_bits - 1)), (1 << (self.a_bits - 1)) - 1
        return (lo + 128, hi + 128) if self.variant == "int8" else (lo, hi)


@dataclass(frozen=True, slots=True, eq=False)
class ShiftAddPacked:
    """Compile-time parameters in kernel layout (module docstring): ``weights`` (uint8 bytes of
    weight fields), ``offset`` (N,) int32, ``mult`` / ``shift`` (N,) int64 (empty:
    accumulator-out)."""

    variant: str
    weights: np.ndarray
    offset: np.ndarray
    mult: np.ndarray
    shift: np.ndarray

    def __post_init__(self):
        for arr in (self.weights, self.offset, self.mult, self.shift):
            arr.setflags(write=False)


def encode_fields(w: np.ndarray, spec: ShiftAddSpec) -> np.ndarray:
    """Integer weights -> ``bits``-wide fields ``sign << (bits-1) | s`` (zero: s all ones)."""
    mag = np.abs(w)
    s = np.zeros(w.shape, np.int64)
    nz = mag > 0
    s[nz] = np.log2(mag[nz]).astype(np.int64)  # exact: magnitudes are powers of two
    smask = (1 << (spec.w_bits - 1)) - 1
    fields = np.where(nz, s, smask) | (w < 0).astype(np.int64) << (spec.w_bits - 1)
    return fields.astype(np.uint8)


def pack_weights(spec: ShiftAddSpec, target: Target, w: np.ndarray, *, bias=None,
                 a_zero_point: int = 0, mult=None, shift=None) -> ShiftAddPacked:
    """Compile-time packing: weight layout of ``spec.variant`` and ``offset[n]``.

    ``w`` (K, N) holds the pow2 *integer* weights (``+-2^s``, 0); ``bias`` (N,) int;
    ``a_zero_point`` the activations' ``z_x``; ``mult`` / ``shift`` (N,) or scalars for requant
    mode. Raises :class:`LoweringError` for a weight outside the format, or when ``acc`` or a
    partial sum could leave int32."""
    del target  # the layouts are the same on every target
    w = np.asarray(w)
    if w.shape != (spec.K, spec.N) or w.dtype.kind not in "iu":
        raise LoweringError(
            f"shiftadd: weights must be integer ({spec.K}, {spec.N}), got {w.dtype} {w.shape}")
    w = w.astype(np.int64)
    legal = pow2_values(spec.w_bits, spec.zero_free)
    bad = ~np.isin(w, legal)
    if bad.any():
        fmt = spec.format_name
        raise LoweringError(
            f"shiftadd: weight {int(w[bad][0])} is not a {fmt} integer (+-2^0..2^{spec.top}"
            f"{'' if spec.zero_free else ', 0'}); fold pow2 weights with passes/fold_scales")
    bias = np.zeros(spec.N, np.int64) if bias is None else np.broadcast_to(
        np.asarray(bias, np.int64), (spec.N,))
    shifted = spec.variant == "int8" and spec.a_signed
    z_u = int(a_zero_point) + (128 if shifted else 0)
    offset = bias - z_u * w.sum(0)
    u_lo, u_hi = spec.u_range()
    x_lo, x_hi = (u_lo - 128, u_hi - 128) if shifted else (u_lo, u_hi)
    x_mag = max(abs(x_lo - a_zero_point), abs(x_hi - a_zero_point))
    col = np.abs(w).sum(0).max()
    bound = max(int(col) * max(abs(u_lo), abs(u_hi)) + int(np.abs(offset).max()),
                int(col) * x_mag + int(np.abs(bias).max()))
    if bound > _INT32_MAX:
        raise LoweringError(
            f"shiftadd: K={spec.K} with these pow2 weights (|w| up to 2^{spec.top}) and "
            f"{spec.a_dtype[:-1]}{spec.a_bits} activations may overflow the int32 accumulator "
            f"(bound {bound}); split K or use fewer pow2 bits")
    mult_a, shift_a = dyadic_params("shiftadd", spec.requant, spec.N, mult, shift)
    NP, KP = spec.n_blocks * BLOCK, spec.k_padded
    fields = np.zeros((KP, NP), np.uint8)  # padding: +1 * 0 (padded u is 0)
    fields[:spec.K, :spec.N] = encode_fields(w, spec)
    if spec.variant == "int8":
        # [b, q, j, 4 c + i]: low nibble k = 8q + i, high nibble k = 8q + 4 + i, channel
        # 64 b + 16 j + c (one 64-byte load feeds two vpdpbusd of one 16-channel group)
        f = fields.reshape(KP // 8, 2, 4, spec.n_blocks, 4, 16).transpose(3, 0, 4, 5, 2, 1)
        packed = (f[..., 0] | (f[..., 1] << 4)).reshape(spec.n_blocks, KP // 8, 4, BLOCK)
    else:
        if spec.per_byte == 2:
            fields = fields[0::2] | (fields[1::2] << 4)
        packed = fields.reshape(-1, spec.n_blocks, BLOCK).transpose(1, 0, 2)
    return ShiftAddPacked(spec.variant, np.ascontiguousarray(packed), offset.astype(np.int32),
                          mult_a, shift_a)


# -- TIR: shift variant ----------------------------------------------------------------------
def _requant_expr(spec: ShiftAddSpec, acc, mult, shift):
    """``clamp(z_y + ((acc * m + 2^(s-1)) >> s), lo, hi)`` in int64, as a TIR expression."""
    from tvm import tirx

    r = spec.requant
    one = tirx.const(1, "int64")
    v = (acc.astype("int64") * mult + ((one << shift) >> one)) >> shift
    v = v + tirx.const(r.zero_point, "int64")
    v = tirx.max(tirx.min(v, tirx.const(r.hi, "int64")), tirx.const(r.lo, "int64"))
    return v.astype(spec.out_dtype)


def _shift_func(spec: ShiftAddSpec):
    """The shift-add layer as TE -> PrimFunc (unscheduled). Blocks: ``xpad`` (zero-padded int32
    activations ``u``), ``dot`` (``sum_k +-(u << s)``), ``out`` (offset, requant). Reads the
    weight fields from the ``spec.variant``'s layout: the CPU schedules the ``shift`` variant
    (:func:`_schedule_shift`), CUDA both (:func:`gpu_func`; ``int8`` layout: the nibble at
    ``[k // 8, n % 64 // 16, 4 (n % 16) + k % 4]``, high for ``k % 8 >= 4``, and ``u = x + 128``
    for int8 codes)."""
    from tvm import te, tirx

    M, K, N, KP, T = spec.M, spec.K, spec.N, spec.k_padded, BLOCK
    pb, bits = spec.per_byte, spec.w_bits
    smask = (1 << (bits - 1)) - 1
    int8_layout = spec.variant == "int8"
    x = te.placeholder((M, K), spec.a_dtype, name="x")
    wt = te.placeholder((spec.n_blocks, KP // 8, 4, T) if int8_layout else
                        (spec.n_blocks, KP // pb, T), "uint8", name="weights")
    offset = te.placeholder((N,), "int32", name="offset")

    def code(m, k):
        v = x[m, tirx.min(k, K - 1)]
        if int8_layout and spec.a_signed:  # u = x + 128 (the variant's uint8 operand)
            v = tirx.reinterpret("uint8", v) ^ tirx.const(128, "uint8")
        return v.astype("int32")
    xpad = te.compute((M, KP), lambda m, k: tirx.if_then_else(
        k < K, code(m, k), tirx.const(0, "int32")), name="xpad")
    k = te.reduce_axis((0, KP), name="k")

    def term(m, n):
        if int8_layout:
            byte = wt[n // T, k // 8, n % T // 16, n % 16 * 4 + k % 4].astype("int32")
            field = (byte >> (k % 8 // 4 * 4)) & ((1 << bits) - 1)
        else:
            byte = wt[n // T, k // pb, n % T].astype("int32")
            field = (byte >> ((k % pb) * 4)) & ((1 << bits) - 1) if pb == 2 else byte
        s = field & smask
        v = xpad[m, k] << s
        if not spec.zero_free:  # the all-ones s field is the zero weight
            v = tirx.Select(s == smask, tirx.const(0, "int32"), v)
        return tirx.Select(field > smask, -v, v)
    dot = te.compute((M, spec.n_blocks * T), lambda m, n: te.sum(term(m, n), axis=k),
                     name="dot")
    args = [x, wt, offset]
    if spec.requant is None:
        y = te.compute((M, N), lambda m, n: dot[m, n] + offset[n], name="out")
    else:
        mult = te.placeholder((N,), "int64", name="mult")
        shift = te.placeholder((N,), "int64", name="shift")
        y = te.compute((M, N), lambda m, n: _requant_expr(
            spec, dot[m, n] + offset[n], mult[n], shift[n]), name="out")
        args += [mult, shift]
    return te.create_prim_func(args + [y])


def _schedule_shift(func, spec: ShiftAddSpec):
    """int32 lanes (formats without an int16 chunk). Parallel over 64-channel blocks; per
    block, M = 1: k (split by the fields per byte and unrolled, so the nibble shift is a
    constant), then the 64 channels as one vectorized int32x64 loop (four zmm accumulators);
    M > 1: 16-channel groups, k, then the rows unrolled around one int32x16 vector, so each
    weight field is decoded once for all rows."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    dot, out = sch.get_sblock("dot"), sch.get_sblock("out")
    m, n, k = sch.get_loops(dot)
    nb, nc = sch.split(n, [None, BLOCK])
    ko, ki = sch.split(k, [None, spec.per_byte])
    if spec.M == 1:
        sch.reorder(nb, m, ko, ki, nc)
    else:  # decode each weight vector once for all rows: M accumulators of 16 lanes
        nc, lanes = sch.split(nc, [None, 16])
        sch.reorder(nb, nc, ko, ki, m, lanes)
        sch.unroll(m)
        nc = lanes
    sch.parallel(nb)
    sch.reverse_compute_at(out, nb)
    sch.unroll(ki)
    sch.vectorize(nc)
    return sch.mod


def _epilogue(spec: ShiftAddSpec):
    """TIR macro storing one output: ``out[m, n] = requant(acc + offset[n])`` (or ``acc +
    offset[n]`` in accumulator-out mode), skipped for rows / channels past ``M`` / ``N``."""
    from tvm.script import tirx as T

    M, N, requant, out_dt = spec.M, spec.N, spec.requant is not None, spec.out_dtype
    zp, lo, hi = (spec.requant.zero_point, spec.requant.lo, spec.requant.hi) if requant else (
        0, 0, 0)

    @T.macro
    def epilogue(acc, m, n, offset, mult, shift, out):
        if m < M and n < N:
            if requant:
                s = shift[n]
                v64 = T.Cast("int64", acc + offset[n]) * mult[n]
                v64 = T.shift_right(v64 + T.shift_right(
                    T.shift_left(T.int64(1), s), T.int64(1)), s) + T.int64(zp)
                out[m, n] = T.Cast(out_dt, T.max(T.min(v64, T.int64(hi)), T.int64(lo)))
            else:
                out[m, n] = acc + offset[n]
    return epilogue


def _entry(spec: ShiftAddSpec, body, weights_shape: tuple[int, ...]):
    """The IRModule whose ``main`` takes ``x, weights, offset, [mult, shift], out`` (uint8
    weights of ``weights_shape``) and runs the TIR macro ``body`` on them."""
    import tvm
    from tvm.script import tirx as T

    M, K, N, a_dt, out_dt = spec.M, spec.K, spec.N, spec.a_dtype, spec.out_dtype
    if spec.requant is not None:
        @T.prim_func
        def main(x: T.Buffer((M, K), a_dt), weights: T.Buffer(weights_shape, "uint8"),
                 offset: T.Buffer((N,), "int32"), mult: T.Buffer((N,), "int64"),
                 shift: T.Buffer((N,), "int64"), out: T.Buffer((M, N), out_dt)):
            T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
            body(x, weights, offset, mult, shift, out)
    else:
        @T.prim_func
        def main(x: T.Buffer((M, K), a_dt), weights: T.Buffer(weights_shape, "uint8"),
                 offset: T.Buffer((N,), "int32"), out: T.Buffer((M, N), out_dt)):
            T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
            body(x, weights, offset, None, None, out)
    return tvm.IRModule({"main": main})


# -- TIR: int8 variant (AVX-512 VNNI) -------------------------------------------------------
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"  # LLVM 22 signature: (i32x16, i8x64, i8x64)
_VPSHUFB = "llvm.x86.avx512.pshuf.b.512"


def _int8_tiles(M: int) -> tuple[int, int]:
    """``(MT, JT)``: rows x 16-channel groups per register tile (<= 8 accumulators, >= 4
    independent vpdpbusd chains); decoded weights are reused across the MT rows."""
    MT = min(M, 4)
    return MT, 4 if MT <= 2 else 2


def _int8_func(spec: ShiftAddSpec):
    """The int8 variant as hand-written TIR (``tensorize`` with TVM 0.27's registered
    ``dot_16x4_vnni`` segfaults here, and its body passes vpdpbusd the pre-LLVM-22 operand
    types; LLVM 22 wants ``(i32x16, i8x64, i8x64)``).

    Per 64-channel block (parallel), per tile of MT rows x JT 16-channel groups, per 8 k: one
    64-byte load of nibbles per group, ``& 0xF`` / ``>> 4``, two ``vpshufb`` through the
    16-entry field -> int8 table (``+-2^s``, 0), two ``vpdpbusd`` per row with the broadcast
    4-byte activation quads. Epilogue (offset, requant) per tile from the local accumulators.
    """
    from tvm.script import tirx as T

    M, K, KP, NB = spec.M, spec.K, spec.k_padded, spec.n_blocks
    KQ = KP // 8
    MT, JT = _int8_tiles(M)
    MO, JO = -(-M // MT), 4 // JT
    bits, zero_free, a_signed = spec.w_bits, spec.zero_free, spec.a_signed
    smask = (1 << (bits - 1)) - 1
    epilogue = _epilogue(spec)

    @T.macro
    def body(x, weights, offset, mult, shift, out):
        xpad = T.alloc_buffer((M, KP), "uint8")
        tbl = T.alloc_buffer((64,), "int8")
        for i in range(64):  # field -> value, the 16-byte table in each 128-bit lane
            f = i % 16
            mag = T.shift_left(1, f & smask)
            val = T.Select(T.shift_right(f, bits - 1) % 2 == 1, -mag, mag)
            if not zero_free:
                val = T.Select(f & smask == smask, 0, val)
            tbl[i] = T.Cast("int8", val)
        for m, k in T.grid(M, KP):
            if k < K:
                if a_signed:  # u = x + 128
                    xpad[m, k] = T.Cast("uint8", x[m, k] ^ T.int8(-128))
                else:
                    xpad[m, k] = x[m, k]
            else:
                xpad[m, k] = T.uint8(0)
        for b in T.parallel(NB):
            acc = T.alloc_buffer((MT, JT * 16), "int32", scope="local")
            table = tbl.vload([0], "int8x64")
            for mo, jo in T.grid(MO, JO):
                for mi in T.unroll(MT):
                    for ji in T.unroll(JT):
                        acc[mi, T.ramp(ji * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                for q in range(KQ):
                    for ji in T.unroll(JT):
                        v = weights.vload([b, q, jo * JT + ji, 0], "uint8x64")
                        w_lo = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(_VPSHUFB), table,
                            T.reinterpret(v & T.broadcast(T.uint8(15), 64), dtype="int8x64"),
                            dtype="int8x64")
                        w_hi = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id(_VPSHUFB), table,
                            T.reinterpret(v >> T.broadcast(T.uint8(4), 64), dtype="int8x64"),
                            dtype="int8x64")
                        for mi in T.unroll(MT):
                            m = T.min(mo * MT + mi, M - 1)  # rows past M: computed, not stored
                            a_lo = T.reinterpret(T.broadcast(T.reinterpret(
                                xpad.vload([m, q * 8], "uint8x4"), dtype="int32"), 16),
                                dtype="int8x64")
                            a_hi = T.reinterpret(T.broadcast(T.reinterpret(
                                xpad.vload([m, q * 8 + 4], "uint8x4"), dtype="int32"), 16),
                                dtype="int8x64")
                            partial = T.call_llvm_pure_intrin(
                                T.llvm_lookup_intrinsic_id(_VPDPBUSD),
                                acc.vload([mi, ji * 16], "int32x16"), a_lo, w_lo,
                                dtype="int32x16")
                            acc[mi, T.ramp(ji * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                T.llvm_lookup_intrinsic_id(_VPDPBUSD), partial, a_hi, w_hi,
                                dtype="int32x16")
                for mi, c in T.grid(MT, JT * 16):
                    epilogue(acc[mi, c], mo * MT + mi, b * 64 + jo * JT * 16 + c, offset, mult,
                             shift, out)

    return _entry(spec, body, (NB, KQ, 4, 64))


def _shift16_func(spec: ShiftAddSpec):
    """The shift variant in int16 lanes (:attr:`ShiftAddSpec.chunk` > 0), hand-written TIR.

    Per 64-channel block (parallel), per tile of MT rows: for each chunk of ``chunk`` weight
    bytes (``2 * chunk`` k), ``acc16 += +-(u << s)`` in int16x64 (AVX-512BW ``vpsllvw``,
    NEON ``ushl`` on 16-bit lanes; 32 products per vector op instead of 16), then
    ``acc32 += sext(acc16)``. Exact: a chunk adds at most ``2 * chunk * max|u| * 2^t <= 2^15 - 1``.
    """
    from tvm.script import tirx as T

    M, K, KP, NB = spec.M, spec.K, spec.k_padded, spec.n_blocks
    RP = spec.chunk
    NC = KP // 2 // RP
    MT = min(M, 4)
    MO = -(-M // MT)
    bits, zero_free = spec.w_bits, spec.zero_free
    smask = (1 << (bits - 1)) - 1
    epilogue = _epilogue(spec)

    def term(f, xv):  # +-(u << s) for int16x64 fields f and a scalar u (parse-time helper)
        from tvm import tirx

        def vec(c):
            return tirx.Broadcast(tirx.const(c, "int16"), 64)
        s = f & vec(smask)
        v = tirx.Broadcast(xv, 64) << s
        if not zero_free:  # the all-ones s field is the zero weight
            v = tirx.Select(s == vec(smask), vec(0), v)
        return tirx.Select(f > vec(smask), vec(0) - v, v)

    @T.macro
    def body(x, weights, offset, mult, shift, out):
        xpad = T.alloc_buffer((M, KP), "int16")
        for m, k in T.grid(M, KP):
            xpad[m, k] = T.if_then_else(k < K, T.Cast("int16", x[m, T.min(k, K - 1)]),
                                        T.int16(0))
        for b in T.parallel(NB):
            acc = T.alloc_buffer((MT, 64), "int32", scope="local")
            acc16 = T.alloc_buffer((MT, 64), "int16", scope="local")
            for mo in range(MO):
                for mi in T.unroll(MT):
                    acc[mi, T.ramp(0, 1, 64)] = T.broadcast(T.int32(0), 64)
                for c in range(NC):
                    for mi in T.unroll(MT):
                        acc16[mi, T.ramp(0, 1, 64)] = T.broadcast(T.int16(0), 64)
                    for r in range(RP):
                        j = c * RP + r
                        v = T.Cast("int16x64", weights.vload([b, j, 0], "uint8x64"))
                        f_lo = v & T.broadcast(T.int16(15), 64)
                        f_hi = v >> T.broadcast(T.int16(4), 64)
                        for mi in T.unroll(MT):
                            m = T.min(mo * MT + mi, M - 1)
                            acc16[mi, T.ramp(0, 1, 64)] = (acc16.vload([mi, 0], "int16x64")
                                                           + term(f_lo, xpad[m, 2 * j])
                                                           + term(f_hi, xpad[m, 2 * j + 1]))
                    for mi in T.unroll(MT):
                        acc[mi, T.ramp(0, 1, 64)] = acc.vload([mi, 0], "int32x64") + T.Cast(
                            "int32x64", acc16.vload([mi, 0], "int16x64"))
                for mi, c in T.grid(MT, 64):
                    epilogue(acc[mi, c], mo * MT + mi, b * 64 + c, offset, mult, shift, out)

    return _entry(spec, body, (NB, KP // 2, 64))


# -- CUDA -----------------------------------------------------------------------------------
#: threads per CUDA block (consecutive threads: consecutive output channels of one row)
GPU_THREADS = 64


def gpu_func(spec: ShiftAddSpec, bind_threads: bool = True):
    """The CUDA layer, either variant, over its CPU weight layout: :func:`_shift_func`'s TE
    compute (``acc += +-(u << s)`` per weight field, no multiplies; int32, exact within the
    bound :func:`pack_weights` checks), scheduled with one thread per padded activation for
    ``xpad`` and one thread per output for ``dot``, the epilogue in the same thread with the
    accumulator in a register. ``bind_threads=False`` returns the unscheduled PrimFunc, which
    ``tvm.compile`` builds for llvm: the formula the GPU runs, checked on a CPU."""
    import tvm

    func = _shift_func(spec)
    if not bind_threads:
        return func
    sch = tvm.s_tir.Schedule(func)
    for name in ("xpad", "dot"):
        block = sch.get_sblock(name)
        bx, tx = sch.split(sch.fuse(*sch.get_loops(block)[:2]), [None, GPU_THREADS])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    dot = sch.get_sblock("dot")
    sch.decompose_reduction(dot, sch.get_loops(dot)[2])
    sch.reverse_compute_at(sch.get_sblock("out"), tx)
    sch.set_scope(dot, 0, "local")
    return sch.mod["main"]


def lower(spec: ShiftAddSpec, target: Target):
    """The scheduled IRModule for ``spec`` on ``target`` (before ``tvm.compile``).

    shift: any LLVM CPU target (x86, arm64). int8: x86 with AVX-512 VNNI (refused on other
    CPUs with :class:`LoweringError`). CUDA: both variants, :func:`gpu_func`."""
    import tvm

    if target.is_gpu:
        return tvm.IRModule({"main": gpu_func(spec)})
    if spec.variant == "int8":
        if "avx512_vnni" not in target.features:
            raise LoweringError(
                f"shiftadd int8 variant needs AVX-512 VNNI (vpdpbusd), target {target.name} "
                f"has {sorted(target.features)}; use variant 'shift' there")
        return _int8_func(spec)
    if spec.chunk:
        return _shift16_func(spec)
    return _schedule_shift(_shift_func(spec), spec)


@dataclass(frozen=True, slots=True, eq=False)
class ShiftAddKernel:
    """A compiled layer: ``lib`` (TVM module; entry ``main``) for ``spec`` on ``target``.

    Entry arguments: ``x`` (M, K), ``weights``, ``offset``, [``mult``, ``shift``], ``y``."""

    spec: ShiftAddSpec
    target: Target
    lib: object

    def bind(self, packed: ShiftAddPacked) -> BoundShiftAdd:
        """Upload the packed parameters once; returns a callable layer (host targets)."""
        if self.target.is_gpu:
            raise LoweringError(f"shiftadd: kernel built for {self.target.name} cannot run on this "
                                f"host's CPU; load the compiled module on a GPU")
        if packed.variant != self.spec.variant:
            raise LoweringError(
                f"shiftadd: weights packed for the {packed.variant} variant, kernel built for "
                f"{self.spec.variant}; repack them")
        params = [packed.weights, packed.offset]
        spec = self.spec
        if spec.requant is not None:
            params += [packed.mult, packed.shift]
        return bind_layer(self, params, family="shiftadd", in_shape=(spec.M, spec.K),
                          out_shape=(spec.M, spec.N))

    def __call__(self, x: np.ndarray, packed: ShiftAddPacked) -> np.ndarray:
        """Run once on numpy codes (convenience; binds every call)."""
        return self.bind(packed)(x)


#: the shared bound layer, under the name this module exported before ``common.py``
BoundShiftAdd = BoundLayer


def build(spec: ShiftAddSpec, target: Target) -> ShiftAddKernel:
    """Compile one layer shape for ``target`` (cached per (spec, target) in this process)."""
    return _build_cached(spec, target)


@functools.lru_cache(maxsize=256)
def _build_cached(spec: ShiftAddSpec, target: Target) -> ShiftAddKernel:
    import tvm

    return ShiftAddKernel(spec, target, tvm.compile(lower(spec, target),
                                                    target=target.tvm_dict()))


# -- registry entries -----------------------------------------------------------------------
def _activation_ok(a_qtype: QType) -> bool:
    return (a_qtype.kind == QKind.UNIFORM and a_qtype.bits <= 8
            and len(a_qtype.zero_point) <= 1)


def accepts_for(variant: str):
    """``accepts(w, a)`` of a variant: pow2 weights within :data:`MAX_TOP` x uniform <= 8-bit
    per-tensor activations."""
    def accepts(w_qtype: QType, a_qtype: QType) -> bool:
        return (w_qtype.kind == QKind.POW2 and 2 <= w_qtype.bits <= 8
                and pow2_top(w_qtype.bits, w_qtype.zero_free) <= MAX_TOP[variant]
                and _activation_ok(a_qtype))
    accepts.__doc__ = accepts_for.__doc__
    return accepts


def accumulator_dtype(K: int, w_qtype: QType, a_qtype: QType) -> DType:
    """Accumulator rule: int32; raises :class:`LoweringError` when ``K * 2^t * max|x - z_x|``
    cannot fit (the bias and the kernel operand range are checked at :func:`pack_weights`)."""
    from ...ir.dyadic import fits_accumulator

    if not fits_accumulator(K, w_qtype, a_qtype, 32):
        raise LoweringError(
            f"shiftadd: K={K} with {w_qtype} x {a_qtype} overflows int32; split K or use "
            f"fewer pow2 bits")
    return DType.int(32)


_FORMULA = __doc__[:__doc__.index("Two variants")].strip()
SHIFT_FAMILY = register_family(KernelFamily(
    name="shiftadd", accepts=accepts_for("shift"), accumulator_dtype=accumulator_dtype,
    build=build, pack_weights=pack_weights,
    formula=_FORMULA + "\nVariant shift: acc += +-(u << s) per weight, no multiplies."))
INT8_FAMILY = register_family(KernelFamily(
    name="shiftadd_int8", accepts=accepts_for("int8"), accumulator_dtype=accumulator_dtype,
    build=build, pack_weights=pack_weights,
    formula=_FORMULA + "\nVariant int8: pow2 codes as int8 +-2^s, u8 x s8 dot product (VNNI)."))
