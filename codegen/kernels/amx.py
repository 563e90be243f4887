"""The ``amx`` kernel family: dense 2-D convolutions and GEMMs on Intel AMX tiles.

Computes, bit-exactly, three layers that other families compute with vector instructions:

* the bit-serial XNOR conv of :mod:`.bitserial_conv` (``w_format == a_format ==
  "bipolar"``), with the sign codes as bytes ``b = (x + 1) / 2`` in {0, 1} and the weights as
  signed bytes in {-1, +1}::

    D[b, n, o]   = sum_{c, kh, kw} x~[b, c, o*s + k] * w[n, c, kh, kw]
                 = 2 * A[b, n, o] - wsum[n]          A = sum b~ * w  (AMX ``tdpbsud``)
    acc[b, n, o] = offset[n] - K + D                  (``offset`` of :mod:`.bitserial`)
                 = off2[n] + 2 * A[b, n, o]           off2 = offset - K - wsum  (compile time)
    y            = requant(acc)   (or acc itself in accumulator-out mode)

  ``x~`` is ``x`` padded with ``pad_code`` (a real +-1 code, as in the popcount direct conv;
  an im2col border correction, when the graph needs one, is the caller's as there);
* the int8 family's dense conv (:class:`.int8.ConvSpec` with ``engine="amx"``): ``A = sum u *
  w`` over the activation bytes ``u`` (int8 codes as ``x ^ 0x80``, padding ``z_u``) and the
  int2..int8 weights, then the int8 family's own epilogue (wrapped ``offset``, ``acc_shift``
  and ``bias``, dyadic requant), so the output equals its ``vpdpbusd`` kernels';
* the int8 family's GEMM (:class:`.int8.Int8Spec` with ``engine="amx"``, QMatMul layers and
  im2col convs): ``tdpbusd`` of 16 activation rows (bytes, K padded to 64) by the weights in
  VNNI order, the same epilogue (:func:`int8_gemm_source`).

``A`` is exact in int32 (the families' own bound checks run when the weights are packed).

One AMX ``tdpbsud`` multiplies a 16 x 64 signed-byte tile by a 64 x 16 unsigned-byte tile (in
VNNI order, 4 bytes of K per column) into 16 x 16 int32: 16,384 products, where one 512-bit
``vpxorq`` + ``vpopcntq`` + ``vpaddq`` triple covers 512 bit-products and one ``vpdpbusd`` 64
byte-products. Tiles:

* **A** (weights, ``tmm4/5``): 16 output channels x one K chunk, packed once at compile time
  (:func:`tile_weights`);
* **B** (activations, ``tmm6/7``): 16 K-groups of 4 bytes x 16 output pixels. The prologue
  writes the activations as uint32 *words* of 4 K-bytes, so the 16 pixels of a tile are 16
  adjacent words and the K-groups of a tile a fixed stride apart. Two layouts
  (:class:`TileGeometry`): ``channels`` (a word is channels ``4g .. 4g+3`` of one padded
  pixel, ``xw[b, g, row, phase, q]``, columns split by phase ``col % s_w``, ``q = col //
  s_w``, so every stride reads adjacent words; a tap and a 64-channel chunk per tile), and
  ``taps`` for convs with fewer than 16 channels (a word is taps ``4q .. 4q+3`` of one kernel
  row for one output column, ``xw[b, c, row, q, ow]``, read from a padded byte image; the
  K-groups of a tile are one channel's ``KH * ceil(KW/4)`` row groups: the 7x7/2 stem's 14);
* **C** (``tmm0..3``): 2 channel tiles x 2 pixel tiles accumulate over the K chunks, then go
  to a per-thread accumulator block and the epilogue writes whole NCHW output rows from it
  while it is in L1 (bands of about :data:`BAND_PIXELS` pixels).

Output pixels ``o = (oh, ow)`` are numbered ``m = oh * P + ow`` in one of two pitches, the one
with fewer tiles: *flat* (channels layout, stride 1: ``P`` = the padded width, so a tile may
run across rows; columns ``ow >= OW`` are computed and dropped) or *rowwise* (``P`` = ``OW``
rounded up to 16; a tile never leaves its row). Channels are padded to 64 (zero weights, zero
bytes), output channels to 32.

Measured on this project's Xeon (one thread, whole layer, resident tensors; BENCHMARKS.md):
3x3 int8 convs 3.2-3.7x faster than the ``vpdpbusd`` kernel (56²·64 0.50 -> 0.15 ms), the 7x7/2
stem at 224² 0.72 -> 0.42 ms, GEMMs 1.4-3.5x at M >= 16 (128x4096x4096 6.3 -> 1.8 ms); XNOR
convs 1.1-1.25x the popcount kernel at stride 1 (56²·64 133 -> 110 us: a tile load per
``tdpbsud`` bounds it) and slower at stride 2 and on 7²·512 (its byte weights miss L2).
Kernel selection times the families per layer shape and keeps the fastest.

Entry: ``x (B, C, H, W), w / wt, offset / off2, [bias], [mult, shift] (XNOR: or [t,
above, below], the threshold output of :mod:`.bitserial_conv`), y``; an int8 conv with a
fused max-pool (``spec.pool``) writes the pooled codes (:func:`_pooled_epilogue`). The first
statement asks Linux for the AMX tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``, a no-op after the first call in a process); without it the first tile
instruction faults. Targets: x86 with ``amx_tile`` and ``amx_int8`` (:func:`available`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...ir.errors import LoweringError
from ..target import Target
from . import KernelFamily, register_family

#: Linux x86-64: SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
_ARCH_PRCTL, _REQ_XCOMP_PERM, _XTILEDATA = 158, 0x1023, 18
TILE_ROWS = 16  # pixels (B tile columns) / channels (A tile rows) per tile
TILE_K = 64  # bytes of K per tile row
#: output pixels per band: whole rows, about this many; the band's accumulators stay in a
#: per-thread block (32 channels x ~256 pixels x 4 bytes) the epilogue reads back from L1
BAND_PIXELS = 192
FEATURES = frozenset({"amx_tile", "amx_int8"})


def available(target: Target) -> bool:
    """True when ``target`` is an x86 CPU with AMX tiles and AMX int8."""
    return target.kind == "llvm" and FEATURES <= target.features


@dataclass(frozen=True, slots=True)
class TileGeometry:
    """The tiling of one conv (module docstring): ``layout`` ``"channels"`` (K-groups of 4
    channels of a pixel) or ``"taps"`` (K-groups of 4 taps of a kernel row of one channel)."""

    CP: int  # input channels padded to 64
    NP: int  # output channels padded to 32
    s_h: int
    s_w: int
    pitch: int  # P: output pixel m = oh * P + ow
    flat: bool
    MT: int  # pixel tiles per image (even)
    WQ: int  # words per phase row of the code image
    HX: int  # rows of the code image (padded input rows plus the rows garbage pixels read)
    layout: str = "channels"
    Q: int = 1  # taps: 4-tap groups per kernel row
    R: int = 16  # K-group rows of a B tile (taps: KH * Q)

    @property
    def KC(self) -> int:
        return self.CP // TILE_K

    @property
    def G(self) -> int:
        return self.CP // 4

    @property
    def plane(self) -> int:
        """uint32 words per channel group ``g``."""
        return self.HX * self.s_w * self.WQ


@dataclass(frozen=True, slots=True)
class ConvDims:
    """The shape of a dense 2-D conv, whichever spec it comes from: input (B, C, H, W),
    weights (N, C, KH, KW), strides, pads (top, left, bottom, right), output (OH, OW)."""

    B: int
    C: int
    H: int
    W: int
    N: int
    KH: int
    KW: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    OH: int
    OW: int


def dims(spec) -> ConvDims:
    """:class:`ConvDims` of a bit-serial ``BitConvSpec`` or an int8 ``ConvSpec``."""
    N = spec.N if hasattr(spec, "N") else spec.OC
    strides = spec.strides if hasattr(spec, "strides") else spec.stride
    return ConvDims(spec.B, spec.C, spec.H, spec.W, N, spec.KH, spec.KW, tuple(strides),
                    tuple(spec.pads), spec.OH, spec.OW)


def geometry(spec) -> TileGeometry:
    """Tiling of ``spec`` (a bipolar x bipolar ``BitConvSpec`` or an int8 ``ConvSpec``)."""
    spec = dims(spec)
    s_h, s_w = spec.strides
    pt, pl, pb, pr = spec.pads
    HP, WP = spec.H + pt + pb, spec.W + pl + pr
    OH, OW = spec.OH, spec.OW

    def tiles(pitch):
        return 2 * -(-(OH * pitch) // (2 * TILE_ROWS))

    flat_ok = s_h == 1 and s_w == 1
    row_pitch = -(-OW // TILE_ROWS) * TILE_ROWS
    flat = flat_ok and tiles(WP) <= tiles(row_pitch)
    pitch = WP if flat else row_pitch
    MT = tiles(pitch)
    # words a tile may read past the last real output: (last m) -> its row / column
    last = MT * TILE_ROWS - 1
    oh_last = last // pitch
    WQ = max(-(-WP // s_w), (pitch - 1) + (spec.KW - 1) // s_w + 1)
    if flat:
        WQ = WP  # the flat pitch is the row width itself
    HX = max(HP, oh_last * s_h + spec.KH + 1)
    NP = -(-spec.N // 32) * 32
    Q = -(-spec.KW // 4)
    if taps_layout(spec):  # words of 4 taps per output column: rowwise tiles, no flat pitch
        MT = tiles(row_pitch)
        oh_last = (MT * TILE_ROWS - 1) // row_pitch
        return TileGeometry(spec.C, NP, s_h, s_w, row_pitch, False, MT, row_pitch,
                            max(HP, oh_last * s_h + spec.KH), "taps", Q, spec.KH * Q)
    return TileGeometry(-(-spec.C // TILE_K) * TILE_K, NP, s_h, s_w, pitch, flat, MT, WQ, HX)


def taps_layout(spec) -> bool:
    """The ``taps`` layout for convs with few input channels (fewer than 16: the channel
    layout would pad K to 64 per tap, 4x and more) whose kernel rows fit one tile's 16 K-groups
    (``KH * ceil(KW / 4) <= 16``; the 7x7 stem: 14 rows of 4 taps)."""
    spec = spec if isinstance(spec, ConvDims) else dims(spec)
    return spec.C < 16 and spec.KH * -(-spec.KW // 4) <= TILE_ROWS


def accepts(spec) -> bool:
    """The AMX XNOR conv takes bipolar weights x bipolar codes (1 bit each)."""
    return spec.w_format == "bipolar" and spec.a_format == "bipolar"


#: most padding of the weights to whole tiles the family takes (stored size / true size)
MAX_PADDING = 1.25


def check_padding(spec) -> None:
    """:class:`LoweringError` when the tile layout pads the weights too much: the padded
    products are wasted, and the artifact stores the padding (zeros join the stored palette,
    so a binary layer padded at all would take 2 bits a weight on disk, not 1). Rule: the
    XNOR conv needs no padding (``C % 64 == 0``, ``N % 32 == 0``); an int8 conv at most
    :data:`MAX_PADDING` (channels: ``CP * NP``; taps: ``NP * 4 * ceil(KW / 4)``)."""
    d, g = dims(spec), geometry(spec)
    if g.layout == "taps":
        ratio = g.NP * 4 * g.Q / (d.N * d.KW)
    else:
        ratio = g.CP * g.NP / (d.C * d.N)
    binary = getattr(spec, "w_format", None) == "bipolar"
    if ratio > (1.0 if binary else MAX_PADDING):
        raise LoweringError(
            f"amx: {d.C} -> {d.N} channels pad to {g.CP if g.layout != 'taps' else d.C} -> "
            f"{g.NP} in whole tiles ({ratio:.2f}x the weights); the vector kernels take it")


@dataclass(frozen=True, slots=True, eq=False)
class PackedXnor:
    """``wt`` (NP/16, KH*KW, KC, 16, 64) int8 (channel tile, tap, 64-channel chunk, output
    channel, input channel), ``off2`` (NP,) int32, ``mult`` / ``shift`` (N,) int64."""

    wt: np.ndarray
    offset: np.ndarray
    mult: np.ndarray
    shift: np.ndarray

    def __post_init__(self):
        for arr in (self.wt, self.offset, self.mult, self.shift):
            arr.setflags(write=False)


def pack_weights(spec, w: np.ndarray, packed) -> PackedXnor:
    """``w`` (N, C, KH, KW) +-1 and the popcount conv's :class:`~.bitserial.PackedWeights`
    ``packed`` (its ``offset``, ``mult``, ``shift`` and bound checks) -> :class:`PackedXnor`."""
    w = np.asarray(w, np.int64)
    g = geometry(spec)
    N, C, KH, KW = w.shape
    K = C * KH * KW
    wsum = w.reshape(N, -1).sum(1)
    off2 = np.zeros(g.NP, np.int64)
    off2[:N] = packed.offset.astype(np.int64) - K - wsum
    if np.abs(off2).max() + 2 * K > (1 << 31) - 1:
        raise LoweringError(f"amx xnor conv: K={K} with this offset overflows int32")
    return PackedXnor(tile_weights(spec, w), off2.astype(np.int32), packed.mult, packed.shift)


def tile_weights(spec, w: np.ndarray) -> np.ndarray:
    """(N, C, KH, KW) integer weights (each fits int8) -> the A tiles ``(NP/16, KH*KW, KC, 16,
    64)`` int8: channel tile, tap, 64-channel chunk, output channel, input channel; padded
    channels 0 (:func:`weight_shape`; the taps layout: ``(NP/16, C, 16, 4*KH*Q)``)."""
    g = geometry(spec)
    N, C, KH, KW = np.asarray(w).shape
    if g.layout == "taps":  # (NP/16, C, 16, 4R): byte (kh*Q + q)*4 + i is tap kw = 4q + i
        full = np.zeros((g.NP, C, KH, g.Q * 4), np.int8)
        full[:N, :, :, :KW] = w
        return np.ascontiguousarray(full.reshape(g.NP // TILE_ROWS, TILE_ROWS, C, -1)
                                    .transpose(0, 2, 1, 3))
    full = np.zeros((g.NP, g.CP, KH, KW), np.int8)
    full[:N, :C] = w
    # (NT, 16, KC, 64, KH, KW) -> (NT, KH*KW, KC, 16, 64)
    wt = full.reshape(g.NP // TILE_ROWS, TILE_ROWS, g.KC, TILE_K, KH, KW)
    return np.ascontiguousarray(wt.transpose(0, 4, 5, 2, 1, 3)).reshape(
        g.NP // TILE_ROWS, KH * KW, g.KC, TILE_ROWS, TILE_K)


def weight_shape(spec) -> tuple[int, ...]:
    """Shape of :func:`tile_weights`' array for ``spec``."""
    g, d = geometry(spec), dims(spec)
    if g.layout == "taps":
        return (g.NP // TILE_ROWS, d.C, TILE_ROWS, 4 * g.R)
    return (g.NP // TILE_ROWS, d.KH * d.KW, g.KC, TILE_ROWS, TILE_K)


def _intrin(name: str, *args: str) -> str:
    return f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.{name}", {", ".join(args)}))'


def tile_config_lines(indent: str, a_bytes: int = TILE_K, b_rows: int = TILE_ROWS) -> list[str]:
    """TVMScript lines that load palette 1: C tiles ``tmm0..3`` and A tiles ``tmm4/5`` of 16
    rows, B tiles ``tmm6/7`` of ``b_rows``; A rows of ``a_bytes`` (= 4 * b_rows), the rest 64."""
    shapes = [(TILE_ROWS, TILE_K)] * 4 + [(TILE_ROWS, a_bytes)] * 2 + [(b_rows, TILE_K)] * 2
    lines = ['cfg = T.alloc_buffer((64,), "uint8", scope="local")',
             "for i in T.serial(64):",
             "    cfg[i] = T.uint8(0)",
             "cfg[0] = T.uint8(1)"]
    for t, (rows, colsb) in enumerate(shapes):
        lines += [f"cfg[{16 + 2 * t}] = T.uint8({colsb})", f"cfg[{48 + t}] = T.uint8({rows})"]
    lines.append(_intrin("ldtilecfg", 'cfg.access_ptr("r")'))
    return [f"{indent}{line}" for line in lines]


def permission_line(indent: str) -> str:
    """The arch_prctl request of the module docstring (its result is ignored: a refusal makes
    the next tile instruction fault, which :func:`available` prevents on hosts without AMX)."""
    return (f'{indent}T.evaluate(T.call_extern("int64", "syscall", T.int64({_ARCH_PRCTL}), '
            f"T.int64({_REQ_XCOMP_PERM}), T.int64({_XTILEDATA})))")


def _conv_source(spec, args: list[str], byte, pad_byte: int, out) -> str:
    """TVMScript of one AMX conv (module docstring): ``args`` the entry's buffers (``x`` first,
    ``wt`` second), ``byte(src, c)`` the unsigned byte of activation expression ``src`` of
    channel expression ``c``,
    ``pad_byte`` the byte of a padded pixel, ``out(n, at)`` the output of channel ``n`` from
    the tile sum ``at`` (int32)."""
    d, g = dims(spec), geometry(spec)
    B, C, H, W, N = d.B, d.C, d.H, d.W, d.N
    KH, KW, OH, OW = d.KH, d.KW, d.OH, d.OW
    pt, pl = d.pads[:2]
    s_h, s_w, P, WQ = g.s_h, g.s_w, g.pitch, g.WQ

    def code(c, h, w_):
        inside = f"{h} >= 0 and {h} < {H} and {w_} >= 0 and {w_} < {W}"
        src = (f"x[b, T.min({c}, {C - 1}), T.min(T.max({h}, 0), {H - 1}), "
               f"T.min(T.max({w_}, 0), {W - 1})]")
        # channels past C are 0 (their weights are 0 too); padded pixels carry pad_byte
        return (f"T.Select({c} < {C}, T.Select({inside}, T.Cast('uint32', {byte(src, c)}), "
                f"T.uint32({pad_byte})), T.uint32(0))")

    taps = g.layout == "taps"
    pool = getattr(spec, "pool", None)
    # a fused pool of column stride > 1 reads the row's columns by residue: the taps layout
    # stores them so (pixel_order), and every pool tap is then a unit-stride vector load
    order = pixel_order(OW, pool.strides[1]) if taps and pool is not None else None
    if taps:  # word (b, c, row, q, p): taps 4q..4q+3 of output column ow = order⁻¹(p)
        # the bytes first go to a padded image (fill, then the rows copied in), so the words'
        # loads are plain strided vector loads (made dense by the lowbit_cpu pipeline)
        WX = max((P - 1) * s_w + 4 * g.Q, W + d.pads[1] + d.pads[3])

        def word(ow):
            return " | ".join(f"(T.Cast('uint32', xpad[b, c, row, ({ow}) * {s_w} + q * 4 + "
                              f"{i}]) << T.uint32({8 * i}))" for i in range(4))
        pack = [f'    xpad = T.alloc_buffer(({B}, {C}, {g.HX}, {WX}), "uint8")',
                f"    for b, c, row in T.grid({B}, {C}, {g.HX}):",
                f"        for col in T.vectorized({WX}):",
                f"            xpad[b, c, row, col] = T.uint8({pad_byte})",
                f"    for b, c, h in T.grid({B}, {C}, {H}):",
                f"        for w_ in T.vectorized({W}):",
                f"            xpad[b, c, h + {pt}, w_ + {pl}] = {byte('x[b, c, h, w_]', 'c')}",
                f'    xw = T.alloc_buffer(({B}, {C}, {g.HX}, {g.Q}, {P}), "uint32")',
                f"    for b, c, row, q in T.grid({B}, {C}, {g.HX}, {g.Q}):"]
        if order is None:
            pack += [f"        for ow in T.vectorized({P}):",
                     f"            xw[b, c, row, q, ow] = {word('ow')}"]
        else:
            sw = pool.strides[1]
            for r, (start, count) in enumerate(zip(order.starts, order.counts)):
                pack += [f"        for k in T.vectorized({count}):",
                         f"            xw[b, c, row, q, {start} + k] = {word(f'k * {sw} + {r}')}"]
            if P > OW:  # the pitch's padding columns keep their places
                pack += [f"        for ow in T.vectorized({OW}, {P}):",
                         f"            xw[b, c, row, q, ow] = {word('ow')}"]
    else:  # word (b, g, row, phase, q): channels 4g..4g+3 of padded pixel (row, q*s_w + ph)
        word = " | ".join(
            f"({code(f'g * 4 + {i}', f'row - {pt}', f'q * {s_w} + ph - {pl}')} << "
            f"T.uint32({8 * i}))" for i in range(4))
        pack = [f'    xw = T.alloc_buffer(({B}, {g.G}, {g.HX}, {s_w}, {WQ}), "uint32")',
                f"    for b, g, row, ph in T.grid({B}, {g.G}, {g.HX}, {s_w}):",
                f"        for q in T.vectorized({WQ}):",
                f"            xw[b, g, row, ph, q] = {word}"]
    # bands of whole output rows: each band's pixel-tile pairs go to a per-thread accumulator
    # block (L1) and the band's rows are written from it
    # a fused pool takes bands of at least 2 rows: with 1-row bands (P > BAND_PIXELS / 2:
    # the 224² stem) its 3x3/2 windows came out as the last row alone (seen at 40² and 224²
    # with a forced 1-row band; 2-row bands are exact), a miscompile of the degenerate row
    # loop not tracked down here
    rows = max(2 if getattr(spec, "pool", None) is not None else 1, BAND_PIXELS // P)
    bands = -(-OH // rows)
    lo = f"(j * {rows * P} // 32)"
    hi = f"((T.min({OH}, (j + 1) * {rows}) * {P} + 31) // 32)"
    TPMAX = max(-(-(min(OH, (j + 1) * rows) * P) // 32) - (j * rows * P) // 32
                for j in range(bands))
    SL = TPMAX * 32
    n = "nb * 32 + nn"
    lines = [
        "@T.prim_func",
        f"def main({', '.join(args)}):",
        '    T.func_attr({"global_symbol": "main", "tir.noalias": True})',
        permission_line("    "),
        *pack,
        f"    for nb in T.parallel({g.NP // 32}):",
        *(tile_config_lines("        ", 4 * g.R, g.R) if taps else
          tile_config_lines("        ")),
        # per-thread blocks on the stack ("local"): in "global" scope TVM's storage rewrite
        # may fold them into the dead prologue image when the nb loop has one iteration (a
        # uint8 buffer then backs the int32 tile stores, and the build fails)
        f'        acc = T.alloc_buffer((32, {SL}), "int32", scope="local")',
        f"        for b, j in T.grid({B}, {bands}):",
        f"            for tpi in T.serial({TPMAX}):",
        f"                if {lo} + tpi < {hi}:",
        *[f"                    {_intrin('tilezero', f'T.uint8({t})')}" for t in range(4)],
        "                    " + (f"for c in T.serial({C}):" if taps else
                                  f"for kh, kw, kc in T.grid({KH}, {KW}, {g.KC}):"),
    ]
    inner, tp = " " * 24, f"({lo} + tpi)"
    for t in range(2):  # A tiles: the nb pair's two 16-channel weight tiles
        at = (f"((nb * 2 + {t}) * {C} + c) * {16 * 4 * g.R}" if taps else
              f"(((nb * 2 + {t}) * {KH * KW} + kh * {KW} + kw) * {g.KC} + kc) * 1024")
        lines.append(inner + _intrin("tileloadd64", f"T.uint8({4 + t})",
                                     f'wt.access_ptr("r", offset={at})',
                                     f"T.int64({4 * g.R if taps else 64})"))
    for t in range(2):  # B tiles: pixel tiles 2tp, 2tp+1
        m0 = f"(({tp} * 2 + {t}) * 16)"
        if taps:  # K-group rows (kh, q) are P words apart
            base = (f"(((b * {C} + c) * {g.HX} + ({m0} // {P}) * {s_h}) * {g.Q}) * {P} "
                    f"+ {m0} % {P}")
            stride = P * 4
        else:
            base = (f"(((b * {g.G} + kc * 16) * {g.HX} + ({m0} // {P}) * {s_h} + kh) * {s_w} "
                    f"+ kw % {s_w}) * {WQ} + {m0} % {P} + kw // {s_w}")
            stride = g.plane * 4
        lines.append(inner + _intrin(
            "tileloadd64", f"T.uint8({6 + t})", f'xw.access_ptr("r", offset={base})',
            f"T.int64({stride})"))
    for c, (a, bt) in enumerate(((4, 6), (4, 7), (5, 6), (5, 7))):
        lines.append(inner + _intrin(
            "tdpbsud", f"T.uint8({c})", f"T.uint8({a})", f"T.uint8({bt})"))
    for c, (nt, mt) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        lines.append(" " * 20 + _intrin(
            "tilestored64", f"T.uint8({c})",
            f'acc.access_ptr("w", offset={nt * 16 * SL} + (tpi * 2 + {mt}) * 16)',
            f"T.int64({SL * 4})"))
    if pool is None:
        at = f"acc[nn, oh * {P} + ow - {lo} * 32]"
        body = [f"for ow in T.vectorized({OW}):", f"    y[b, {n}, oh, ow] = {out(n, at)}"]
    else:
        body = _pooled_epilogue(pool, OH, OW, P, lo, n, out, order)
        at = lines.index(f'        acc = T.alloc_buffer((32, {SL}), "int32", scope="local")')
        vm = (_open_rows(pool), 32, pool.out_shape(OH, OW)[1])
        # vm lives across bands: touched here, at the nb level, so TVM does not place the
        # allocation inside the band / channel loops (the common scope of its other uses)
        lines[at + 1:at + 1] = [f'        vm = T.alloc_buffer({vm}, "int32", scope="local")',
                                f"        for v, c, q in T.grid{vm}:",
                                "            vm[v, c, q] = 0",
                                f'        hm = T.alloc_buffer(({vm[2]},), "int32", scope="local")',
                                f"        for q in T.serial({vm[2]}):",
                                "            hm[q] = 0"]
    if N != g.NP:
        body = [f"if {n} < {N}:"] + ["    " + ln for ln in body]
    lines += ["            for nn in T.serial(32):",
              f"                for oh in T.serial(j * {rows}, T.min({OH}, (j + 1) * {rows})):",
              *["                    " + ln for ln in body],
              "        " + _intrin("tilerelease")]
    return "\n".join(lines) + "\n"


def _open_rows(pool) -> int:
    """Pooled rows whose windows can be open at one conv row: ``ceil(kh / sh)``."""
    return -(-pool.kernel[0] // pool.strides[0])


@dataclass(frozen=True, slots=True)
class PixelOrder:
    """A row's output columns grouped by residue mod ``stride``: column ``ow = k·stride + r``
    sits at ``starts[r] + k`` (``counts[r]`` columns of residue ``r``)."""

    stride: int
    starts: tuple[int, ...]
    counts: tuple[int, ...]

    def at(self, offset: int, pw: int | str) -> str:
        """Position of column ``pw·stride + offset`` (``pw`` an int or a loop variable)."""
        r, k = offset % self.stride, offset // self.stride
        return f"{self.starts[r] + k} + {pw}"


def pixel_order(width: int, stride: int) -> PixelOrder | None:
    """:class:`PixelOrder` of a ``width``-column row for a pool of column ``stride`` (None
    for stride 1: the natural order is already unit stride)."""
    if stride == 1:
        return None
    counts = tuple(-(-(width - r) // stride) for r in range(stride))
    starts = tuple(sum(counts[:r]) for r in range(stride))
    return PixelOrder(stride, starts, counts)


def _pooled_epilogue(pool, OH: int, OW: int, P: int, lo: str, n: str, out,
                     order: PixelOrder | None = None) -> list[str]:
    """Epilogue statements (per channel ``nn``, conv row ``oh`` of the band) of a conv with a
    fused max-pool (:class:`.common.MaxPoolWindow`): the row's accumulators are max-pooled
    along the row (taps clipped to the row: a clipped window still holds its in-bounds
    pixels, and a pad never wins) into ``vm[i % V]`` of every pooled row ``i`` whose window
    holds ``oh`` (started by its first real row, ``max`` after), and a pooled row whose last
    real row this is goes out through ``out`` (the requant: monotone, so pooling the raw
    tile sums first is exact). With ``order`` the row's accumulators are in that
    :class:`PixelOrder` (taps of a stride-2 pool: evens, then odds)."""
    (kh, kw), (sh, sw), (pt, pl, _, _) = pool.kernel, pool.strides, pool.pads
    PH, PW = pool.out_shape(OH, OW)
    V = _open_rows(pool)

    def tap(col: str) -> str:
        return f"acc[nn, oh * {P} + {col} - {lo} * 32]"

    def column(pw: int | str, dj: int) -> str:
        if order is not None:
            return order.at(dj - pl, pw)
        return f"{pw} * {sw} + {dj - pl}"

    def row_max(pw: int | str, taps) -> str:
        expr = tap(column(pw, taps[0]))
        for dj in taps[1:]:
            expr = f"T.max({expr}, {tap(column(pw, dj))})"
        return expr

    inner = [pw for pw in range(PW) if pw * sw - pl >= 0 and pw * sw - pl + kw <= OW]
    border = [(pw, [dj for dj in range(kw) if 0 <= pw * sw - pl + dj < OW])
              for pw in range(PW) if pw not in inner]
    # the row's horizontal maxima once (hm), then into every open window
    lines = [f"for pw in T.vectorized({inner[0]}, {inner[-1] + 1}):",
             f"    hm[pw] = {row_max('pw', list(range(kw)))}"] if inner else []
    lines += [f"hm[{pw}] = {row_max(pw, taps)}" for pw, taps in border]
    for t in range(V):  # the pooled rows i whose window may hold this conv row
        i = f"((oh + {pt}) // {sh} - {t})"
        last = f"T.min({OH - 1}, {i} * {sh} - {pt} + {kh - 1})"
        slot = f"vm[{i} % {V}, nn, "
        lines.append(f"if {i} >= 0 and {i} < {PH} and oh <= {last}:")
        for start in (True, False):  # the window's first real row starts the max
            head = f"if oh == T.max(0, {i} * {sh} - {pt}):" if start else "else:"
            lines += ["    " + head, f"        for pw in T.vectorized({PW}):",
                      f"            {slot}pw] = " + ("hm[pw]" if start else
                                                     f"T.max({slot}pw], hm[pw])")]
        lines += [f"    if oh == {last}:",
                  f"        for pw in T.vectorized({PW}):",
                  f"            y[b, {n}, {i}, pw] = {out(n, f'{slot}pw]')}"]
    return lines


def xnor_conv_source(spec) -> str:
    """TVMScript of the AMX XNOR conv of a bit-serial ``BitConvSpec`` (module docstring)."""
    if not accepts(spec):
        raise LoweringError(f"amx xnor conv: needs bipolar x bipolar, got {spec.w_format} x "
                            f"{spec.a_format}")
    g, d = geometry(spec), dims(spec)
    x_dtype = spec.in_threshold or "int8"
    args = [f'x: T.Buffer(({d.B}, {d.C}, {d.H}, {d.W}), "{x_dtype}")',
            f'wt: T.Buffer({weight_shape(spec)}, "int8")',
            f'off2: T.Buffer(({g.NP},), "int32")']
    r = spec.requant
    if r is not None:
        args += [f'mult: T.Buffer(({d.N},), "int64")', f'shift: T.Buffer(({d.N},), "int64")']
    if spec.threshold:
        args += [f't: T.Buffer(({d.N},), "int32")', f'above: T.Buffer(({d.N},), "int8")',
                 f'below: T.Buffer(({d.N},), "int8")']
    if spec.in_threshold is not None:  # the input codes: per-channel thresholds of x
        args += [f'ti: T.Buffer(({d.C},), "{x_dtype}")', f'flip: T.Buffer(({d.C},), "uint8")']
    args.append(f'y: T.Buffer(({d.B}, {d.N}, {d.OH}, {d.OW}), "{spec.out_dtype}")')

    def out(n, at):
        if spec.threshold:
            return f"T.Select(off2[{n}] + 2 * {at} >= t[{n}], above[{n}], below[{n}])"
        if r is None:
            return f"off2[{n}] + 2 * {at}"
        value = f"T.int64(off2[{n}]) + T.int64(2) * T.int64({at})"
        half = f"((T.int64(1) << shift[{n}]) >> T.int64(1))"
        return (f'T.Cast("{spec.out_dtype}", T.max(T.min(((({value}) * mult[{n}] + {half}) '
                f">> shift[{n}]) + T.int64({r.zero_point}), T.int64({r.hi})), "
                f"T.int64({r.lo})))")

    def byte(src, c):
        if spec.in_threshold is not None:  # bit (q >= ti[c]) xor flip[c], as the popcount pack
            return f'T.bitwise_xor(T.Cast("uint8", {src} >= ti[{c}]), flip[{c}])'
        return f"T.Select({src} > T.int8(0), T.uint8(1), T.uint8(0))"

    return _conv_source(spec, args, byte, 1 if spec.pad_code > 0 else 0, out)


def _int8_args(spec, x_shape, w_shape, N: int, y_shape) -> list[str]:
    """The int8 family's entry buffers: ``x, w, offset, [bias], [mult, shift], y``."""
    args = [f'x: T.Buffer({tuple(x_shape)}, "{spec.a_dtype}")',
            f'w: T.Buffer({tuple(w_shape)}, "int8")', f'offset: T.Buffer(({N},), "int32")']
    if spec.acc_shift:
        args.append(f'bias: T.Buffer(({N},), "int64")')
    if spec.requant is not None:
        args += [f'mult: T.Buffer(({N},), "int64")', f'shift: T.Buffer(({N},), "int64")']
    return args + [f'y: T.Buffer({tuple(y_shape)}, "{spec.out_dtype}")']


def int8_conv_source(spec, zero_point: int) -> str:
    """TVMScript of an int8-family dense conv (``int8.ConvSpec``) on AMX tiles: the bytes
    ``u`` of the activation codes (int8: ``x ^ 0x80``) times the signed weights, then the int8
    family's own epilogue (wrapped ``offset``, ``acc_shift`` + ``bias``, dyadic requant;
    :func:`.int8._output_value`), so the output equals the ``vpdpbusd`` kernels'."""
    from . import int8

    d = dims(spec)
    if spec.pool is not None and d.C * d.KH * d.KW * 255 * 128 > (1 << 31) - 1:
        raise LoweringError(f"amx: a fused max-pool pools the raw tile sums, which must not "
                            f"wrap; K = {d.C * d.KH * d.KW} is too large")
    args = _int8_args(spec, (d.B, d.C, d.H, d.W), weight_shape(spec), d.N, spec.out_shape)
    pad = (zero_point + (128 if spec.a_dtype == "int8" else 0)) & 0xFF
    source = _conv_source(spec, args, lambda src, _: int8._byte(src, spec.a_dtype), pad,
                          lambda n, at: int8._output_value(at, n, spec.requant,
                                                           spec.out_dtype, spec.acc_shift))
    return source.replace("wt.access_ptr", "w.access_ptr")


def _module(source: str, target: Target):
    import tvm

    if not available(target):
        raise LoweringError(f"amx conv: target {target.name} has no AMX "
                            f"({sorted(FEATURES)} not in {sorted(target.features)})")
    return tvm.IRModule({"main": tvm.script.from_source(source)})


def lower(spec, target: Target):
    """The IRModule of ``spec`` for an AMX ``target``: :func:`xnor_conv_source` of a
    bit-serial conv spec (normally reached via :func:`.bitserial_conv.lower` with ``spec.engine
    == "amx"``), or :func:`int8_gemm_source` of an ``int8.Int8Spec`` (the family's GEMM
    entry in graphs)."""
    from . import int8

    if isinstance(spec, int8.Int8Spec):
        return _module(int8_gemm_source(replace(spec, engine="amx")), target)
    return _module(xnor_conv_source(spec), target)


def lower_int8(spec, target: Target, zero_point: int):
    """The IRModule of :func:`int8_conv_source` (via :func:`.int8.lower_conv` with
    ``spec.engine == "amx"``)."""
    return _module(int8_conv_source(spec, zero_point), target)


# -- the int8 family's GEMM on tiles -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GemmGeometry:
    """An ``(M, K) x (K, N)`` GEMM in tiles: rows padded to whole 32-row pairs (``MP``), K to
    64 (``KP``), N to 32 (``NP``)."""

    MP: int
    KP: int
    NP: int

    @property
    def KC(self) -> int:
        return self.KP // TILE_K


def gemm_geometry(spec) -> GemmGeometry:
    return GemmGeometry(-(-spec.M // 32) * 32, -(-spec.K // TILE_K) * TILE_K,
                        -(-spec.N // 32) * 32)


def gemm_weight_shape(spec) -> tuple[int, int, int, int]:
    """``(NP/16, KP/64, 16, 64)`` int8: per 16-channel tile and 64-deep K chunk, the VNNI B
    tile (row ``k4``, bytes ``4 * n + i`` = ``w[k4 * 4 + i, n]``)."""
    g = gemm_geometry(spec)
    return (g.NP // TILE_ROWS, g.KC, TILE_ROWS, TILE_K)


def tile_gemm_weights(spec, w: np.ndarray) -> np.ndarray:
    """(K, N) integer weights -> :func:`gemm_weight_shape` (padding 0)."""
    g = gemm_geometry(spec)
    full = np.zeros((g.KP, g.NP), np.int8)
    full[:spec.K, :spec.N] = w
    # [kc, k4, i, nt, n] -> [nt, kc, k4, n, i]
    return np.ascontiguousarray(full.reshape(g.KC, TILE_ROWS, 4, g.NP // TILE_ROWS, TILE_ROWS)
                                .transpose(3, 0, 1, 4, 2)).reshape(gemm_weight_shape(spec))


def check_gemm_padding(spec) -> None:
    """:class:`LoweringError` when whole tiles pad the weights by more than
    :data:`MAX_PADDING` (``KP * NP`` against ``K * N``) or the GEMM has fewer than 16 rows (a
    tile of 16 rows would compute mostly padding: the vector GEMV kernels take it)."""
    g = gemm_geometry(spec)
    ratio = g.KP * g.NP / (spec.K * spec.N)
    if ratio > MAX_PADDING:
        raise LoweringError(f"amx: a {spec.K}x{spec.N} weight pads to {g.KP}x{g.NP} in whole "
                            f"tiles ({ratio:.2f}x); the vector kernels take it")
    if spec.M < TILE_ROWS:
        raise LoweringError(f"amx: {spec.M} rows fill less than one 16-row tile; the vector "
                            f"GEMV kernels take it")


def int8_gemm_source(spec) -> str:
    """TVMScript of an int8-family GEMM (``int8.Int8Spec``) on AMX tiles: ``A`` tiles are 16
    rows of the activation bytes (``xp``, K padded with zeros; int8 codes as ``x ^ 0x80``), ``B``
    tiles the weights in VNNI order, ``tdpbusd`` (u8 x s8); the int8 family's epilogue per
    32 x 32 block, vectorized along the output row."""
    from . import int8

    g = gemm_geometry(spec)
    M, K, N = spec.M, spec.K, spec.N
    args = _int8_args(spec, (M, K), gemm_weight_shape(spec), N, (M, N))
    n, m = "nb * 32 + nn", "mb * 32 + mm"
    out = int8._output_value("acc[mm, nn]", n, spec.requant, spec.out_dtype, spec.acc_shift)
    guard_n = N % 32 != 0
    row = ["for nn in T.serial(32):" if guard_n else "for nn in T.vectorized(32):"]
    store = f"y[{m}, {n}] = {out}"
    row += ([f"    if {n} < {N}:", f"        {store}"] if guard_n else [f"    {store}"])
    lines = [
        "@T.prim_func",
        f"def main({', '.join(args)}):",
        '    T.func_attr({"global_symbol": "main", "tir.noalias": True})',
        permission_line("    "),
        f'    xp = T.alloc_buffer(({g.MP}, {g.KP}), "uint8")',
        f"    for m in T.serial({g.MP}):",
        f"        for k in T.vectorized({g.KP}):",
        f"            xp[m, k] = T.Select(m < {M} and k < {K}, "
        f"{int8._byte(f'x[T.min(m, {M - 1}), T.min(k, {K - 1})]', spec.a_dtype)}, "
        f"T.uint8(0))",
        f"    for nb in T.parallel({g.NP // 32}):",
        *tile_config_lines("        "),
        '        acc = T.alloc_buffer((32, 32), "int32")',
        f"        for mb in T.serial({g.MP // 32}):",
        *[f"            {_intrin('tilezero', f'T.uint8({t})')}" for t in range(4)],
        f"            for kc in T.serial({g.KC}):",
    ]
    inner = " " * 16
    for t in range(2):  # A: rows mb*32 + 16t .. of the activation bytes, 64 bytes of K
        lines.append(inner + _intrin(
            "tileloadd64", f"T.uint8({4 + t})",
            f'xp.access_ptr("r", offset=(mb * 32 + {16 * t}) * {g.KP} + kc * 64)',
            f"T.int64({g.KP})"))
    for t in range(2):  # B: the nb pair's two 16-channel weight tiles
        lines.append(inner + _intrin(
            "tileloadd64", f"T.uint8({6 + t})",
            f'w.access_ptr("r", offset=((nb * 2 + {t}) * {g.KC} + kc) * 1024)', "T.int64(64)"))
    for c, (a, b) in enumerate(((4, 6), (4, 7), (5, 6), (5, 7))):
        lines.append(inner + _intrin("tdpbusd", f"T.uint8({c})", f"T.uint8({a})",
                                     f"T.uint8({b})"))
    for c, (mt, nt) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        lines.append(" " * 12 + _intrin(
            "tilestored64", f"T.uint8({c})",
            f'acc.access_ptr("w", offset={mt * 16 * 32 + nt * 16})', "T.int64(128)"))
    lines += [f"            for mm in T.serial(T.min(32, {M} - mb * 32)):",
              *["                " + ln for ln in row],
              "        " + _intrin("tilerelease")]
    return "\n".join(lines) + "\n"


def lower_int8_gemm(spec, target: Target):
    """The IRModule of :func:`int8_gemm_source` (via :func:`.int8.lower` with
    ``spec.engine == "amx"``)."""
    return _module(int8_gemm_source(spec), target)


# -- registry entry -------------------------------------------------------------------------------
def _binary(qtype) -> bool:
    return qtype.kind.value == "binary"


def _accepts(w_qtype, a_qtype) -> bool:
    """Binary (+-1) weights x binary (sign) activations (the XNOR conv), or what the int8
    family takes (its conv on tiles)."""
    from . import int8

    return (_binary(w_qtype) and _binary(a_qtype)) or int8.accepts(w_qtype, a_qtype)


def _accumulator_dtype(K: int, w_qtype, a_qtype):
    """int32: XNOR ``|acc| <= K`` plus the bias (checked when the weights are packed); int8
    operands: the int8 family's rule."""
    from ...ir.dtypes import DType
    from . import int8

    if not (_binary(w_qtype) and _binary(a_qtype)):
        return int8.accumulator_dtype(K, w_qtype, a_qtype)
    if K > (1 << 30):
        raise LoweringError(f"amx: K={K} too long for the int32 accumulator; split K")
    return DType.int(32)


def _pack(spec, target: Target, w, **kw):
    from . import bitserial_conv, int8

    if isinstance(spec, int8.Int8Spec):
        return int8.pack_weights(spec, target, w, **kw)
    module = int8 if isinstance(spec, int8.ConvSpec) else bitserial_conv
    return module.pack_conv_weights(spec, target, w, **kw)


def _build(spec, target: Target):
    from . import bitserial_conv, int8

    if isinstance(spec, int8.ConvSpec):
        raise LoweringError("amx: the int8 conv entry is int8.build_conv(spec, target, z_x)")
    if isinstance(spec, int8.Int8Spec):
        return int8.build(replace(spec, engine="amx"), target)
    return bitserial_conv.build(spec, target)


FAMILY = register_family(KernelFamily(
    name="amx",
    accepts=_accepts,
    accumulator_dtype=_accumulator_dtype,
    build=_build,
    pack_weights=_pack,
    formula=__doc__[__doc__.index("Computes"):__doc__.index("``A`` is exact")].strip(),
))
