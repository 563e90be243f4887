"""The bit-serial family's direct 2-D convolution: activations packed once per pixel, taps
read as packed words (no im2col of codes).

Computes the same layer as :mod:`.bitserial` on the im2col matrix, bit-exactly::

    acc[b, n, oh, ow] = sum_{c, kh, kw} (x~[b, c, oh*s_h + kh, ow*s_w + kw] - z_x)
                        * w[n, c, kh, kw] + bias[n]
    y = requant(acc)   (or acc itself in accumulator-out mode)

where ``x~`` is ``x`` padded with ``pad_code`` (``z_x``, a real 0; or +1 for bipolar codes, whose
border the caller subtracts). Same operand formats, plane weights and compile-time ``offset`` as
:mod:`.bitserial` (the formula there, with ``K = C*KH*KW``); only the K order and the activation
packing differ:

* **pack** (a block of the same PrimFunc): ``xp[i, b, t, h, w]`` (uint{W}) holds plane ``i`` of
  channels ``t*W .. t*W + W - 1`` of padded pixel ``(h, w)``, LSB first, bits past ``C`` zero. The
  codes are read once per pixel: ``B*C*Hp*Wp`` of them, where im2col packing reads
  ``KH*KW`` times more (a 3x3 conv: 9x). With ``in_threshold`` the bits are per-channel
  thresholds of raw integer codes (``(q >= ti[c]) xor flip[c]``: the sign of a residual
  stream's BN), so no separate pass writes sign codes.
* **pop**: K runs tap-major, ``k = (kh*KW + kw)*Cw*W + c`` with ``Cw = ceil(C / W)`` words per
  tap; the weight planes are laid out the same way with zero bits for ``c >= C`` (zero in both
  operands: nothing to AND / XOR popcounts; the XNOR form uses the true ``K``). The activation
  word of tap ``(kh, kw)``, word ``t`` at output ``(b, oh, ow)`` is
  ``xp[i, b, t, oh*s_h + kh, ow*s_w + kw]``: a direct load.
* **out**: NCHW ``(B, N, OH, OW)``, the requant of :mod:`.bitserial`, ``acc`` (int32),
  or with ``threshold`` int8 sign codes ``acc >= t[n] ? above[n] : below[n]`` (the next
  binary layer's input, :mod:`lowbit.codegen.lowering.fused_sign`).

Weights with uint activations in the bipolar-weight form (which need the per-row code sum ``U``)
are not taken here; they stay on the im2col layout.

CPU schedule: pack parallel over (plane, batch, word, row), a row of up to 64 pixels as one
vector, longer rows 16 pixels per vector (measured on Zen 5, 58x58x64: 8 per vector 45 us, 16
12 us; on the AMX Xeon a 56-wide row split by 16 left a predicated tail: the 56²·64 conv
153 -> 133-142 us whole), a constant border word written by its own loop first
(``decompose_padding``) so the interior has no conditions; pop as :mod:`.bitserial` (parallel
over N tiles of ``n_tile`` channels, per tile the output pixels, plane pairs, taps and words, the
tile's channels innermost as one vector, popcounts summed in 64-bit lanes), the out stage
computed per output row of the tile, vectorized along the row (per pixel it was 8 scalar
stores: 101 -> 80 us on 56x56x64). The pop runs at about one (XOR, popcount, add) per cycle;
a Harley-Seal full adder over a kernel row's 3 taps (2 popcounts instead of 3) measured slower.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ...ir.errors import LoweringError
from ..target import Target
from .bitserial import (
    BitserialSpec,
    OutputRange,
    PackedWeights,
    _needs_usum,
    _operand_affine,
    n_tile,
    pack_bits,
    pack_weights,
    weight_planes,
)

#: lane type the conv's popcounts accumulate in: 64-bit lanes add without narrowing each
#: ``vpopcntq`` result (int32 lanes cost a ``vpmovqd`` per tap-word)
POP_DTYPE = "int64"
#: how the dot products are formed: popcounts of packed words, or AMX byte tiles (:mod:`.amx`,
#: bipolar x bipolar only)
ENGINES = ("popcount", "amx")


@dataclass(frozen=True, slots=True)
class BitConvSpec:
    """A dense 2-D conv ``x (B, C, H, W) * w (N, C, KH, KW)``, strides ``(s_h, s_w)``, pads
    ``(top, left, bottom, right)`` filled with ``pad_code``, dilation 1, and the operand
    formats / output stage of :class:`~.bitserial.BitserialSpec`."""

    B: int
    C: int
    H: int
    W: int
    N: int
    KH: int
    KW: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    w_format: str
    w_bits: int
    a_format: str
    a_bits: int
    requant: OutputRange | None = None
    pad_code: int = 0
    engine: str = "popcount"  # or "amx": the XNOR conv on AMX tiles (:mod:`.amx`)
    #: accumulator out as int8 sign codes instead: ``y = acc >= t[n] ? above[n] : below[n]``
    #: (three more (N,) inputs after the weights: int32 ``t``, int8 ``above`` / ``below``)
    threshold: bool = False
    #: bipolar 1-bit codes computed by the pack from raw integer codes ``q`` of this dtype:
    #: bit ``(q >= ti[c]) xor flip[c]`` (1: code +1; two more (C,) inputs, last: ``ti`` of
    #: this dtype, ``flip`` uint8; the border still reads ``pad_code``)
    in_threshold: str | None = None

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise LoweringError(f"bitserial conv: engine {self.engine!r}; use one of {ENGINES}")
        if self.threshold and self.requant is not None:
            raise LoweringError("bitserial conv: a threshold output replaces the requant; "
                                "pass requant=None")
        if self.in_threshold is not None and (self.a_format, self.a_bits) != ("bipolar", 1):
            raise LoweringError("bitserial conv: input thresholds make 1-bit bipolar codes")
        if min(self.B, self.C, self.H, self.W, self.N, self.KH, self.KW, *self.strides) < 1:
            raise LoweringError(f"bitserial conv: every size must be >= 1, got {self}")
        if min(self.OH, self.OW) < 1:
            raise LoweringError(f"bitserial conv: empty output {self.OH}x{self.OW} for {self}")
        if _needs_usum(self.gemm):
            raise LoweringError("bitserial conv: bipolar weights x uint activations need the "
                                "im2col layout (row code sums)")

    @property
    def OH(self) -> int:
        return (self.H + self.pads[0] + self.pads[2] - self.KH) // self.strides[0] + 1

    @property
    def OW(self) -> int:
        return (self.W + self.pads[1] + self.pads[3] - self.KW) // self.strides[1] + 1

    @property
    def gemm(self) -> BitserialSpec:
        """The equivalent GEMM ``(B*OH*OW, C*KH*KW) x (C*KH*KW, N)`` (formats, output stage)."""
        return BitserialSpec(self.B * self.OH * self.OW, self.C * self.KH * self.KW, self.N,
                             self.w_format, self.w_bits, self.a_format, self.a_bits,
                             self.requant)

    @property
    def a_dtype(self) -> str:
        return self.gemm.a_dtype

    @property
    def out_dtype(self) -> str:
        return "int8" if self.threshold else self.gemm.out_dtype

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.B, self.N, self.OH, self.OW)


def pack_conv_weights(spec: BitConvSpec, target: Target, w: np.ndarray, *, bias=None,
                      a_zero_point: int = 0, mult=None, shift=None):
    """``w`` (N, C, KH, KW) weight values -> planes ``(w_bits, NT, KH*KW*Cw, T)`` in the tap-major
    K order of the module docstring; ``offset`` / ``mult`` / ``shift`` and every check are
    :func:`.bitserial.pack_weights` on the same K (its int32 bound proof included). The AMX
    engine gets :class:`.amx.PackedXnor` (byte tiles) built from the same checks."""
    w = np.asarray(w)
    if w.shape != (spec.N, spec.C, spec.KH, spec.KW) or w.dtype.kind not in "iu":
        raise LoweringError(f"bitserial conv: weights must be integer "
                            f"{(spec.N, spec.C, spec.KH, spec.KW)}, got {w.dtype} {w.shape}")
    w_tap = w.transpose(2, 3, 1, 0).reshape(-1, spec.N)  # (KH*KW*C, N), k = tap*C + c
    gemm = pack_weights(spec.gemm, target, w_tap, bias=bias, a_zero_point=a_zero_point,
                        mult=mult, shift=shift)
    W = target.popcount_bits
    Cw = -(-spec.C // W)
    planes = weight_planes(w_tap, spec.w_format, spec.w_bits)  # (bits, N, KH*KW*C)
    planes = planes.reshape(spec.w_bits, spec.N, spec.KH * spec.KW, spec.C)
    padded = np.zeros(planes.shape[:3] + (Cw * W,), np.uint8)
    padded[..., :spec.C] = planes  # channels past C: bit 0
    words = pack_bits(padded, W).reshape(spec.w_bits, spec.N, -1)  # (bits, N, KH*KW*Cw)
    tile = n_tile(W)
    n_tiles = -(-spec.N // tile)
    tiled = np.zeros((spec.w_bits, n_tiles * tile, words.shape[2]), words.dtype)
    tiled[:, :spec.N] = words
    tiled = tiled.reshape(spec.w_bits, n_tiles, tile, -1).transpose(0, 1, 3, 2).copy()
    packed = PackedWeights(tiled, gemm.offset, gemm.mult, gemm.shift, W)
    if spec.engine == "amx":
        from . import amx

        return amx.pack_weights(spec, w, packed)
    return packed


def _tir_func(spec: BitConvSpec, word_bits: int):
    """The layer as a TE compute -> PrimFunc (unscheduled); blocks ``pack``, ``pop``, ``out``."""
    from tvm import te, tirx

    W, A = word_bits, spec.a_bits
    wdt = f"uint{W}"
    B, C, H, Wd, N = spec.B, spec.C, spec.H, spec.W, spec.N
    (s_h, s_w), (pt, pl, pb, pr) = spec.strides, spec.pads
    Hp, Wp = H + pt + pb, Wd + pl + pr
    OH, OW = spec.OH, spec.OW
    Cw = -(-C // W)
    T = n_tile(W)
    NT = -(-N // T)
    KT = spec.KH * spec.KW * Cw
    x = te.placeholder((B, C, H, Wd), spec.in_threshold or spec.a_dtype, name="x")
    planes = te.placeholder((spec.w_bits, NT, KT, T), wdt, name="planes")
    offset = te.placeholder((N,), "int32", name="offset")
    a_dt = spec.a_dtype
    pad = tirx.const(spec.pad_code, a_dt)
    in_args = []
    if spec.in_threshold is not None:
        in_args = [te.placeholder((C,), spec.in_threshold, name="ti"),
                   te.placeholder((C,), "uint8", name="flip")]

    def bit(i, v):
        if spec.a_format == "bipolar":
            return (v > tirx.const(0, a_dt)).astype(wdt)
        return ((v >> i.astype(a_dt)) & tirx.const(1, a_dt)).astype(wdt)

    def bit_at(i, b, c, h, w):
        if not in_args:
            return bit(i, x[b, c, h, w])
        ti, flip = in_args  # no select of loads: LLVM turns one into scalar pointer selects
        return tirx.bitwise_xor(x[b, c, h, w] >= ti[c],
                                flip[c] != tirx.const(0, "uint8")).astype(wdt)

    def word_of(t, bit_of):  # W shifted bits OR-ed together, bits past C zero
        word = tirx.const(0, wdt)
        for e in range(W):
            c = t * W + e
            v = bit_of(tirx.min(c, C - 1)) << tirx.const(e, wdt)
            if C % W:
                v = tirx.if_then_else(c < C, v, tirx.const(0, wdt))
            word = word | v
        return word

    border = _border_word(spec, W)

    def pack_body(i, b, t, h, w):  # one spatial expression per word
        hh, ww = h - pt, w - pl
        if not any(spec.pads):
            return word_of(t, lambda c: bit_at(i, b, c, hh, ww))
        inside = tirx.all(hh >= 0, hh < H, ww >= 0, ww < Wd)
        if border is not None:  # one condition around the word: the pad splits off
            return tirx.if_then_else(inside, word_of(t, lambda c: bit_at(i, b, c, hh, ww)),
                                     tirx.const(border, wdt))
        hc, wc = tirx.min(tirx.max(hh, 0), H - 1), tirx.min(tirx.max(ww, 0), Wd - 1)
        return word_of(t, lambda c: tirx.if_then_else(inside, bit_at(i, b, c, hc, wc),
                                                      bit(i, pad)))
    xp = te.compute((A, B, Cw, Hp, Wp), pack_body, name="pack")

    kh = te.reduce_axis((0, spec.KH), name="kh")
    kw = te.reduce_axis((0, spec.KW), name="kw")
    t = te.reduce_axis((0, Cw), name="t")

    def word(i, b, oh, ow, kh, kw, t):
        return xp[i, b, t, oh * s_h + kh, ow * s_w + kw]

    def wword(j, n, kh, kw, t):
        return planes[j, n // T, (kh * spec.KW + kw) * Cw + t, n % T]

    sx, _ = _operand_affine(spec.a_format)
    sw, _ = _operand_affine(spec.w_format)
    pop_shape = (B, OH, OW, NT * T)
    if spec.gemm.xnor:
        pop = te.compute(pop_shape, lambda b, oh, ow, n: te.sum(tirx.popcount(
            word(0, b, oh, ow, kh, kw, t) ^ wword(0, n, kh, kw, t)).astype(POP_DTYPE),
            axis=[kh, kw, t]), name="pop")

        def at(b, n, oh, ow):
            return offset[n] - 2 * pop[b, oh, ow, n].astype("int32")
    else:
        i = te.reduce_axis((0, A), name="i")
        j = te.reduce_axis((0, spec.w_bits), name="j")
        top = spec.w_bits - 1

        def pop_body(b, oh, ow, n):
            count = tirx.popcount(word(i, b, oh, ow, kh, kw, t)
                                  & wword(j, n, kh, kw, t)).astype(POP_DTYPE)
            weighted = count << (i + j)
            if spec.w_format == "int":
                weighted = tirx.Select(j == top, -weighted, weighted)
            return te.sum(weighted, axis=[i, j, kh, kw, t])
        pop = te.compute(pop_shape, pop_body, name="pop")

        def at(b, n, oh, ow):
            return sx * sw * pop[b, oh, ow, n].astype("int32") + offset[n]

    args = [x, planes, offset]
    if spec.threshold:
        t = te.placeholder((N,), "int32", name="t")
        above = te.placeholder((N,), "int8", name="above")
        below = te.placeholder((N,), "int8", name="below")
        y = te.compute(spec.out_shape, lambda b, n, oh, ow: tirx.Select(
            at(b, n, oh, ow) >= t[n], above[n], below[n]), name="out")
        args += [t, above, below]
    elif spec.requant is None:
        y = te.compute(spec.out_shape, at, name="out")
    else:
        mult = te.placeholder((N,), "int64", name="mult")
        shift = te.placeholder((N,), "int64", name="shift")
        r = spec.requant
        one = tirx.const(1, "int64")

        def requant(b, n, oh, ow):
            s = shift[n]
            half = (one << s) >> one
            v = (at(b, n, oh, ow).astype("int64") * mult[n] + half) >> s
            v = v + tirx.const(r.zero_point, "int64")
            v = tirx.max(tirx.min(v, tirx.const(r.hi, "int64")), tirx.const(r.lo, "int64"))
            return v.astype(spec.out_dtype)
        y = te.compute(spec.out_shape, requant, name="out")
        args += [mult, shift]
    return te.create_prim_func(args + in_args + [y])


def _border_word(spec: BitConvSpec, word_bits: int) -> int | None:
    """The packed word of a border pixel when it is one constant for every word (one plane,
    and all words full or the pad bit 0), else None."""
    if spec.a_bits != 1:
        return None
    on = spec.pad_code > 0 if spec.a_format == "bipolar" else spec.pad_code & 1
    if on and spec.C % word_bits:
        return None
    return (1 << word_bits) - 1 if on else 0


def _schedule_cpu(func, spec: BitConvSpec, word_bits: int):
    """Module docstring: pack vectorized over a row's pixels, pop parallel over N tiles, out
    per output row."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    pop = sch.get_sblock("pop")
    out = sch.get_sblock("out")
    b, oh, ow, n, *reduce = sch.get_loops(pop)
    no, ni = sch.split(n, [None, n_tile(word_bits)])
    sch.reorder(no, b, oh, ow, *reduce, ni)
    sch.vectorize(ni)
    sch.parallel(no)
    sch.reverse_compute_at(out, oh)
    row = sch.get_loops(out)[-1]  # a row of one channel
    if spec.OW % 8 and spec.OW <= 64:  # whole: a split tail is scalar code with a guard per
        sch.vectorize(row)  # pixel (28-wide threshold rows: 92 -> 542 µs split by 8)
    else:
        _, oi = sch.split(row, [None, 8])
        sch.vectorize(oi)
    pack = sch.get_sblock("pack")
    i, b, t, h, w = sch.get_loops(pack)
    if any(spec.pads) and _border_word(spec, word_bits) is not None:
        # border words first, then the interior without conditions
        fill = sch.decompose_padding(pack, i)
        fi, fb, ft, fh, fw = sch.get_loops(fill)
        sch.parallel(sch.fuse(fi, fb, ft, fh))
        _vectorize_row(sch, fw)
        i, b, t, h, w = sch.get_loops(pack)
    sch.parallel(sch.fuse(i, b, t, h))
    _vectorize_row(sch, w)
    return sch.mod


#: a pack row up to this many pixels is vectorized whole (LLVM cuts it into full vectors and
#: a short tail); a 16-pixel split of a 56- or 58-wide row leaves a predicated partial vector
PACK_WHOLE_ROW = 64


def _vectorize_row(sch, loop) -> None:
    """Vectorize a pack row whole up to :data:`PACK_WHOLE_ROW` pixels, else by 16."""
    extent = int(sch.get(loop).extent)
    if extent <= PACK_WHOLE_ROW:
        sch.vectorize(loop)
    else:
        _, inner = sch.split(loop, [None, 16])
        sch.vectorize(inner)


def lower(spec: BitConvSpec, target: Target):
    """The scheduled IRModule for ``spec`` on a CPU ``target`` (GPU targets use the im2col
    layout of :mod:`.bitserial`)."""
    if target.is_gpu:
        raise LoweringError(f"bitserial conv: no {target.name} schedule; use the im2col layout")
    if spec.engine == "amx":
        from . import amx

        return amx.lower(spec, target)
    return _schedule_cpu(_tir_func(spec, target.popcount_bits), spec, target.popcount_bits)


@functools.lru_cache(maxsize=64)
def build(spec: BitConvSpec, target: Target):
    """Compile one conv shape for ``target`` (TVM module, entry ``main``: ``x, planes, offset,
    [mult, shift] or [t, above, below], [ti, flip], y``; AMX: ``x, wt, off2, ...`` the
    same)."""
    import tvm

    from ..build import tir_pipeline

    return tvm.compile(lower(spec, target), target=target.tvm_dict(),
                       tir_pipeline=tir_pipeline(target))
