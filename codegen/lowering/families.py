"""Kernel families in compiled graphs: QMatMul / QConv lowered onto ``lowbit.codegen.kernels``.

A QMatMul or QConv whose ``node.meta["kernel"]`` names a family is computed by that family's
scheduled GEMM, bit-exactly to the integer simulator (``runtime/kernels/quantized.py``)::

    acc = (Σ (x − zx)·w << acc_shift) + bias              y = requant(acc)

Two ways to place the output stage (:func:`plan_layer` picks; both exact):

* **fused**  (``acc_shift == 0``, a non-binary requant or accumulator-out, QMatMul or the int8
  family's own conv entries, or the bitserial direct conv): the family's epilogue does it;
  bias and ``zx`` are folded into its compile-time ``offset`` (``offset = bias − zx·colsum(w)``
  in the family's terms). The int8 family's GEMM and conv also take ``acc_shift > 0`` with a
  requant: ``offset = −zx·colsum(w)`` and the epilogue computes ``(int64(D) << acc_shift) +
  bias`` before the requant, as the split epilogue does.
* **split**  (everything else): the family runs in accumulator-out mode with bias 0, so it
  returns the raw dot product ``D = Σ (x − zx)·w`` in int32 (its ``pack_weights`` proves
  ``|D|`` fits int32, else the family cannot take the layer), and a ``te`` epilogue computes
  ``acc = (int64(D) << acc_shift) + bias[c]`` and the Requant stage (dyadic / binary /
  accumulator-out, :class:`~lowbit.codegen.lowering.quantized._Requant`) in int64.

Layouts (:attr:`LayerPlan.layout`):

* ``gemm``       QMatMul; ``x (..., K)`` is reshaped to ``(M, K)``;
* ``conv``       int8 family, dense 2-D conv, dilation 1, CPU targets: int8's direct or
  im2col+GEMM function (NCHW); on CUDA int8 convs take ``im2col`` (the GEMM's ``gpu_func``);
* ``depthwise``  int8 family, 2-D depthwise 3x3 / 5x5, stride 1 / 2, dilation 1, CPU targets
  (on CUDA the family refuses the layer: the reference kernel runs it);
* ``bitconv``    bitserial family, dense 2-D conv, dilation 1, CPU targets: the direct conv of
  ``kernels/bitserial_conv.py`` (codes packed once per pixel inside the kernel, taps read as
  words; NCHW out); padding reads ``zx``, or +1 for binary codes with the border correction
  below; bipolar weights x uint activations stay on ``im2col``. The ``amx`` family is the same
  layout and spec with ``engine="amx"`` (binary x binary on AMX byte tiles,
  ``kernels/amx.py``; CPUs with AMX only, and convolutions only);
* ``im2col``     any other dense conv (any rank, stride, dilation): a ``te`` im2col
  ``(B, O..., C, k...)`` in the family's activation dtype (padding reads ``zx``, a real 0),
  reshaped to ``(M, K) = (B·ΠO, C·Πk)``; the weights ``(OC, C, k...)`` become
  ``(K, N) = w.reshape(OC, −1).T``; the split epilogue writes NCHW. Binary (±1) activations
  have no code for the padding's real 0: the im2col pads with +1 and the epilogue subtracts
  the border taps' contribution, ``D = D_padded − Σ_{taps k outside x at o} wsum[c, k]`` with
  ``wsum[c, k] = Σ_ci w[c, ci, k]`` (compile time; at most Πk conditional adds per output).

No family lowers (reference kernel only, :class:`LoweringError` when forced): transposed conv,
grouped conv other than the int8 depthwise case, per-group weight scales (``GroupRescale``).
Each family is reached through an adapter (:data:`ADAPTERS`) that turns a layer into the
family's spec; a family without one has no graph lowering.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ...ir import Node, Op
from ...ir.errors import LoweringError
from . import _identifier, fail, out_dtype, out_shape, register_lowering
from .quantized import _channel_count, _Requant
from .thresholds import sign_thresholds


# -- adapters: layer -> family spec ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Operands:
    """What a family adapter sees of a layer: the QTypes, the activation storage dtype, the
    (K, N) integer weight values and the target."""

    w_qtype: object
    a_qtype: object
    a_dtype: str
    w: np.ndarray
    target: object
    acc_shift: int = 0  # nonzero only for a fused plan of a family that shifts (int8)


@dataclass(frozen=True, slots=True)
class Adapter:
    """How a family computes graph layers: ``gemm(ops, M, K, N, requant) -> spec`` (raises
    :class:`LoweringError` with the reason when it cannot); the family module name; and for
    the int8 family its own ``conv`` / ``depthwise`` entries."""

    module: str
    gemm: Callable
    conv: Callable | None = None
    depthwise: Callable | None = None


def _kernels(name: str):
    import importlib

    return importlib.import_module(f"lowbit.codegen.kernels.{name}")


def _bitserial_gemm(ops: Operands, M, K, N, requant):
    bs = _kernels("bitserial")
    w_fmt = bs.operand_format(ops.w_qtype, "weight")
    a_fmt = bs.operand_format(ops.a_qtype, "activation")
    if w_fmt is None or a_fmt is None:
        raise LoweringError(f"bitserial takes binary / uint1..4 / int2..4 weights x binary / "
                            f"uint1..4 activations, not {ops.w_qtype} x {ops.a_qtype}")
    return bs.BitserialSpec(M, K, N, *w_fmt, *a_fmt, requant)


def _int8_bits(ops: Operands) -> int:
    int8 = _kernels("int8")
    bits = int8.operand_bits(ops.w_qtype, "weight")
    if bits is None or ops.a_dtype not in int8.A_DTYPES:
        raise LoweringError(f"int8 takes int2..8 symmetric weights x uint8 / int8 activation "
                            f"codes, not {ops.w_qtype} x {ops.a_qtype} ({ops.a_dtype})")
    return bits


def _int8_gemm(ops: Operands, M, K, N, requant):
    return _kernels("int8").Int8Spec(M, K, N, _int8_bits(ops), ops.a_dtype, requant,
                                     acc_shift=ops.acc_shift)


def _int8_conv(ops: Operands, geo: ConvGeometry, requant):
    (B, C, H, W), (OC, _, KH, KW) = geo.x_shape, geo.w_shape
    return _kernels("int8").ConvSpec(B, C, H, W, OC, KH, KW, tuple(geo.strides),
                                     tuple(geo.pads), _int8_bits(ops), ops.a_dtype, requant,
                                     ops.acc_shift)


def _int8_depthwise(ops: Operands, geo: ConvGeometry, requant):
    (B, C, H, W), (_, _, KH, KW) = geo.x_shape, geo.w_shape
    return _kernels("int8").DepthwiseSpec(B, C, H, W, KH, KW, tuple(geo.strides),
                                          tuple(geo.pads), _int8_bits(ops), ops.a_dtype,
                                          requant)


def _lut_gemm(ops: Operands, M, K, N, requant):
    lut = _kernels("lut")
    fmt = lut.weight_format(ops.w_qtype)
    a_signed = lut.activation_format(ops.a_qtype)
    if fmt is None or a_signed is None:
        raise LoweringError(f"lut takes binary / ternary / uint1..4 / int2..4 / codebook1..4 "
                            f"weights x uniform <= 8-bit activations, not {ops.w_qtype} x "
                            f"{ops.a_qtype}")
    lut.isa_for(ops.target)  # AVX2 / AVX-512 / NEON / CUDA
    levels = tuple(int(v) for v in np.unique(ops.w)) if fmt[0] == "codebook" else ()
    return lut.LutSpec(M, K, N, fmt[0], fmt[1], bool(a_signed), requant, levels)


def _shiftadd_gemm(variant: str):
    def gemm(ops: Operands, M, K, N, requant):
        target = ops.target  # CUDA runs both variants (shiftadd.gpu_func)
        if variant == "int8" and not target.is_gpu and "avx512_vnni" not in target.features:
            raise LoweringError(f"shiftadd_int8 needs AVX-512 VNNI; target {target.name} has "
                                f"{sorted(target.features)}")
        w_q, a_q = ops.w_qtype, ops.a_qtype
        return _kernels("shiftadd").ShiftAddSpec(M, K, N, w_q.bits, w_q.zero_free, variant,
                                                 a_signed=bool(a_q.signed), a_bits=a_q.bits,
                                                 requant=requant)
    return gemm


def _amx_gemm(ops: Operands, M, K, N, requant):
    amx = _kernels("amx")
    if not amx.available(ops.target):
        raise LoweringError(f"amx needs a CPU with AMX tiles (amx_tile, amx_int8); target "
                            f"{ops.target.name} has {sorted(ops.target.features)}")
    if _binary(ops.w_qtype) and _binary(ops.a_qtype):
        raise LoweringError("amx runs binary layers as direct convs only (bitserial takes "
                            "binary GEMMs)")
    spec = replace(_int8_gemm(ops, M, K, N, requant), engine="amx")
    amx.check_gemm_padding(spec)
    return spec


def _amx_conv(ops: Operands, geo: ConvGeometry, requant):
    if not _kernels("amx").available(ops.target):
        raise LoweringError(f"amx needs a CPU with AMX tiles (amx_tile, amx_int8); target "
                            f"{ops.target.name} has {sorted(ops.target.features)}")
    spec = replace(_int8_conv(ops, geo, requant), engine="amx")
    _kernels("amx").check_padding(spec)
    return spec


#: family name -> adapter (a new family registers one here to be usable in graphs)
ADAPTERS: dict[str, Adapter] = {
    "amx": Adapter("amx", _amx_gemm, _amx_conv),
    "bitserial": Adapter("bitserial", _bitserial_gemm),
    "int8": Adapter("int8", _int8_gemm, _int8_conv, _int8_depthwise),
    "lut": Adapter("lut", _lut_gemm),
    "shiftadd": Adapter("shiftadd", _shiftadd_gemm("shift")),
    "shiftadd_int8": Adapter("shiftadd", _shiftadd_gemm("int8")),
}


# -- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConvGeometry:
    """A QConv's shapes: x (B, C, S...), w (OC, C/group, k...), out (B, OC, O...)."""

    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class LayerPlan:
    """How family ``family`` computes one layer: ``layout`` (module docstring), the family
    ``spec``, ``fused`` (family epilogue) or split, the packed parameters (the PrimFunc's
    arguments between x and y, in order), ``lower()`` -> the scheduled PrimFunc, the GEMM
    shape ``(M, K, N)``, the im2col padding code and the binary-activation ``border``
    correction ``(OC, k...)`` (None: none needed)."""

    family: str
    layout: str
    spec: object
    fused: bool
    params: tuple
    lower: Callable
    gemm_shape: tuple[int, int, int]
    pad_code: int = 0
    border: np.ndarray | None = None
    #: constant arrays passed after every other argument (a bitconv's input thresholds)
    extra: tuple = ()


def _geometry(node: Node) -> ConvGeometry:
    a = node.attrs
    return ConvGeometry(tuple(int(d) for d in node.inputs[0].shape),
                        tuple(int(d) for d in node.inputs[1].const.shape), out_shape(node),
                        tuple(a.strides), tuple(a.pads), tuple(a.dilations))


def _refusal(node: Node, family: str, why: str) -> LoweringError:
    return LoweringError(f"{node.op.value} node '{node.name}': kernel family '{family}' cannot "
                         f"take this layer: {why}")


def plan_layer(node: Node, family: str, target) -> LayerPlan:
    """The plan of ``family`` for ``node`` on ``target``; :class:`LoweringError` naming the
    node, the family and why when it cannot take the layer (``accepts``, the family's
    ``accumulator_dtype`` rule, layout, target ISA). Packs the weights (numpy), which proves
    the int32 bounds with the actual weights and bias."""
    from ..kernels import get_family

    fam = get_family(family)  # unknown names: LoweringError listing the known ones
    adapter = ADAPTERS.get(family)
    if adapter is None:
        raise _refusal(node, family, "the family has no graph adapter in "
                                     "lowbit/codegen/lowering/families.py")
    if node.op not in (Op.QMATMUL, Op.QCONV):
        raise _refusal(node, family, "only QMatMul and QConv run on kernel families")
    a = node.attrs
    w_q, a_q = node.inputs[1].qtype, node.inputs[0].qtype
    w = node.inputs[1].const
    if w_q is None or a_q is None or w is None:
        raise _refusal(node, family, "the weight must be a constant and both operands need a "
                                     "QType (run fold_scales)")
    if not fam.accepts(w_q, a_q):
        raise _refusal(node, family, f"it does not accept weight {w_q} x activation {a_q}")
    if a.groups is not None:
        raise _refusal(node, family, "per-group weight scales (GroupRescale) run on the "
                                     "reference kernel only")
    rq = a.requant
    a_dtype = str(node.inputs[0].dtype.numpy)
    geo = None
    if node.op == Op.QMATMUL:
        x_shape = tuple(int(d) for d in node.inputs[0].shape)
        K, N = (int(d) for d in w.shape)
        M = int(np.prod(x_shape[:-1]))
        layouts = ["gemm"]
        w_gemm = w
    else:
        geo = _geometry(node)
        if a.transposed:
            raise _refusal(node, family, "transposed conv runs on the reference kernel only")
        C, OC = geo.x_shape[1], geo.w_shape[0]
        if a.group == 1:
            layouts = ["im2col"]
            if len(a.strides) == 2 and set(a.dilations) == {1}:
                if family == "amx" and _binary(a_q) and _binary(w_q):
                    layouts.insert(0, "bitconv")  # the XNOR engine; else int8's conv entry
                elif adapter.conv is not None and not target.is_gpu:  # GPU: im2col + GEMM
                    layouts.insert(0, "conv")
                elif family == "bitserial" and not target.is_gpu:
                    layouts.insert(0, "bitconv")
            w_gemm = w.reshape(OC, -1).T
        elif a.group == C == OC and geo.w_shape[1] == 1 and adapter.depthwise is not None:
            if target.is_gpu:
                raise _refusal(node, family, f"the depthwise entry has no {target.name} "
                                             "schedule; the reference kernel runs it there")
            layouts, w_gemm = ["depthwise"], w
        else:
            raise _refusal(node, family, f"grouped conv (group={a.group}) runs on the reference "
                                         "kernel only (int8 has depthwise 3x3 / 5x5)")
        M = geo.out_shape[0] * int(np.prod(geo.out_shape[2:]))
        K, N = int(np.prod(geo.w_shape[1:])), OC
    try:
        fam.accumulator_dtype(K, w_q, a_q)  # the family's declared accumulator rule
    except LoweringError as err:
        raise _refusal(node, family, str(err)) from None
    ops = Operands(w_q, a_q, a_dtype, np.asarray(w_gemm), target)
    errors = []
    for layout in layouts:
        # int8's GEMM / conv epilogue shifts the accumulator itself (int64, then the bias)
        shifts = family in ("int8", "amx") and layout in ("gemm", "conv") and not rq.accumulates
        fused_ok = (a.acc_shift == 0 or shifts) and not rq.binary and layout != "im2col"
        fused_ok = fused_ok and not (geo is not None and _binary(a_q) and any(geo.pads))
        for fused in ((True, False) if fused_ok else (False,)):
            try:
                op = replace(ops, acc_shift=int(a.acc_shift) if fused else 0)
                return _make_plan(node, family, adapter, layout, fused, op, geo, (M, K, N))
            except LoweringError as err:
                errors.append(str(err))
    raise _refusal(node, family, errors[-1])


def _make_plan(node, family, adapter, layout, fused, ops, geo, gemm_shape) -> LayerPlan:
    from ..kernels.bitserial import OutputRange

    rq = node.attrs.requant
    requant = None
    if fused and not rq.accumulates:
        requant = OutputRange(rq.out_zero_point, rq.lo, rq.hi)
    M, K, N = gemm_shape
    kw = {"bias": _bias_array(node, N) if fused else None,
          "a_zero_point": int(rq.in_zero_point),
          "mult": np.asarray(rq.multiplier, np.int64) if requant else None,
          "shift": np.asarray(rq.shift, np.int64) if requant else None}
    target = ops.target
    if layout in ("gemm", "im2col"):
        spec = adapter.gemm(ops, M, K, N, requant)
        from ..kernels import get_family

        packed = get_family(family).pack_weights(spec, target, ops.w, **kw)
        module = _kernels(adapter.module)

        def lower():
            return module.lower(spec, target)["main"]
    elif layout == "bitconv":
        bc = _kernels("bitserial_conv")
        engine = "amx" if family == "amx" else "popcount"
        if engine == "amx" and not _kernels("amx").available(target):
            raise LoweringError(f"amx needs a CPU with AMX tiles (amx_tile, amx_int8); target "
                                f"{target.name} has {sorted(target.features)}")
        g = _bitserial_gemm(ops, M, K, N, requant)  # the same operand formats
        (B, C, H, W), (_, _, KH, KW) = geo.x_shape, geo.w_shape
        pad_code = 1 if _binary(ops.a_qtype) else int(rq.in_zero_point)
        spec = bc.BitConvSpec(B, C, H, W, N, KH, KW, tuple(geo.strides), tuple(geo.pads),
                              g.w_format, g.w_bits, g.a_format, g.a_bits, requant, pad_code,
                              engine)
        if engine == "amx":
            _kernels("amx").check_padding(spec)
        packed = bc.pack_conv_weights(spec, target, node.inputs[1].const, **kw)

        def lower():
            return bc.lower(spec, target)["main"]
    else:
        int8 = _kernels("int8")
        zx = int(rq.in_zero_point)
        if layout == "conv":
            spec = adapter.conv(ops, geo, requant)
            packed = int8.pack_conv_weights(spec, target, node.inputs[1].const, **kw)

            def lower():
                return int8.lower_conv(spec, target, zx)["main"]
        else:
            spec = adapter.depthwise(ops, geo, requant)
            packed = int8.pack_depthwise_weights(spec, ops.w, **kw)

            def lower():
                return int8.lower_depthwise(spec, target, zx)["main"]
    weights = next(getattr(packed, f) for f in ("planes", "wq", "weights", "w", "wt")
                   if hasattr(packed, f))
    params = [weights, packed.offset]
    if ops.acc_shift:
        params.append(packed.bias)
    if requant is not None or family == "lut":  # lut always takes mult / shift
        params += [packed.mult, packed.shift] if requant is not None else \
            [np.zeros(N, np.int64), np.zeros(N, np.int64)]
    pad_code, border = int(rq.in_zero_point), None
    if layout in ("im2col", "bitconv") and _binary(ops.a_qtype) and any(geo.pads):
        pad_code = 1  # the +1 code; its border contribution is subtracted in the epilogue
        w4 = np.asarray(node.inputs[1].const, np.int64)
        border = (pad_code - int(rq.in_zero_point)) * w4.sum(axis=1)  # (OC, k...)
    return LayerPlan(family, layout, spec, fused, tuple(params), lower, gemm_shape, pad_code,
                     border)


def _binary(qtype) -> bool:
    return qtype.kind.value == "binary"


def _bias_array(node: Node, channels: int) -> np.ndarray:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return np.zeros(channels, np.int64)
    if node.inputs[2].const is None:
        raise fail(node, "bias (input 2) must be a constant for codegen")
    b = np.asarray(node.inputs[2].const, np.int64).reshape(-1)
    return np.full(channels, b[0], np.int64) if b.size == 1 else b


# -- Relax emission -------------------------------------------------------------------------------
def _add_scheduled(ctx, prim, name: str):
    """Add a family's already-scheduled PrimFunc to the module: opaque to fusion (its
    schedule must survive) and marked scheduled so dlight leaves it alone."""
    # dlight (TVM's GPU rules, lowbit's CPU rules) skips functions marked "tirx.is_scheduled"
    prim = prim.with_attr("tir.is_scheduled", True).with_attr("tirx.is_scheduled", True)
    prim = prim.with_attr("op_pattern", 8)
    if prim.attrs is not None and "global_symbol" in prim.attrs:
        prim = prim.without_attr("global_symbol")
    return ctx.bb.add_func(prim, _identifier(name))


def _inside(node, o, k):
    """Per spatial dim: the input position of output ``o`` and tap ``k``, and whether it lies
    inside x (not in the padding)."""
    from tvm import tirx

    a = node.attrs
    sizes = tuple(int(d) for d in node.inputs[0].shape[2:])
    nd = len(a.strides)
    pos = [o[i] * a.strides[i] + k[i] * a.dilations[i] - a.pads[i] for i in range(nd)]
    return pos, tirx.all(*[tirx.all(pos[i] >= 0, pos[i] < sizes[i]) for i in range(nd)])


def _im2col(ctx, node, x, a_dtype: str, gemm_shape, pad_code: int):
    """``cols[b, o..., c, k...] = x[b, c, o·stride + k·dilation − pad_begin]`` (``pad_code``
    outside: ``zx``, or +1 for binary codes), reshaped to (M, K)."""
    from tvm import relax, te, tirx

    a = node.attrs
    geo = _geometry(node)
    nd = len(a.strides)
    sizes, ks, outs = geo.x_shape[2:], geo.w_shape[2:], geo.out_shape[2:]
    B, C = geo.x_shape[:2]
    pad = tirx.const(pad_code, a_dtype)

    def compute(xt):
        def body(b, *rest):
            o, c, k = rest[:nd], rest[nd], rest[nd + 1:]
            pos, inside = _inside(node, o, k)
            src = (b, c, *[tirx.min(tirx.max(pos[i], 0), sizes[i] - 1) for i in range(nd)])
            return tirx.if_then_else(inside, xt[src].astype(a_dtype), pad)

        return te.compute((B, *outs, C, *ks), body, name="im2col")

    cols = ctx.emit_te(compute, x, name=f"{node.name}_im2col")
    M, K, _ = gemm_shape
    return ctx.bb.emit(relax.op.reshape(cols, (M, K)))


def _epilogue(ctx, node, acc, acc_index, border=None):
    """``y[idx] = requant((int64(acc[acc_index(idx)] − corr) << acc_shift) + bias[c])`` (the
    split path's output stage; channel ``c`` on the last axis for QMatMul, axis 1 for QConv;
    ``corr`` the border correction of binary activations, ``border`` (OC, k...), else 0).

    The shift and the bias run in int32 instead when no value can leave int32
    (:func:`_fits_int32`: ``max|x − zx| · max_c Σ|w[c]| · 2^acc_shift + max|bias|``, the
    static bound ``fold_scales`` checks for an int32 accumulator) -- the same numbers, and
    AVX2 has no vector int64 -> float conversion, so an int64 shift-and-add before an
    accumulator-out dequantize split the fused float epilogue into 4-lane pieces (the digits
    transformer's MLP epilogue + GELU + quantize on Zen 3: 69 -> 47 µs)."""
    import itertools

    from tvm import te, tirx

    rq = node.attrs.requant
    shape = out_shape(node)
    rank = len(shape)
    ch_axis = rank - 1 if node.op == Op.QMATMUL else 1
    bias = _bias_array(node, shape[ch_axis])
    try:
        n_rq, rq_axis = _channel_count(rq, shape, ch_axis)
        stage = _Requant(rq, n_rq)
    except ValueError as err:
        raise fail(node, str(err)) from None
    shift = int(node.attrs.acc_shift)
    has_bias = bool(np.any(bias))
    dt = out_dtype(node)

    taps = [] if border is None else list(itertools.product(*map(range, border.shape[1:])))
    wide = "int64" if taps or not _fits_int32(ctx, node, bias) else "int32"

    def compute(at, bt, *params):
        border_t, params = (params[0], params[1:]) if taps else (None, params)

        def body(*idx):
            v = at[acc_index(idx)].astype(wide)
            for k in taps:  # the padded taps' +1 codes contributed border[c, k]; take it back
                _, inside = _inside(node, idx[2:], k)
                v = v - tirx.if_then_else(inside, tirx.const(0, "int64"),
                                          border_t[(idx[1], *k)])
            if shift:
                v = v << tirx.const(shift, wide)
            if has_bias:
                v = v + bt[idx[ch_axis]]
            if rq.accumulates:
                return v.astype(dt)
            return stage.apply(v.astype("int64"), params,
                               None if rq_axis is None else idx[rq_axis % rank], dt)

        return te.compute(shape, body, name="epilogue")

    extra = [ctx.constant(p) for p in stage.constants()]
    if taps:
        extra.insert(0, ctx.constant(border.astype(np.int64)))
    return ctx.emit_te(compute, acc, ctx.constant(bias.astype(wide)), *extra,
                       name=f"{node.name}_epilogue")


def _fits_int32(ctx, node, bias: np.ndarray) -> bool:
    """True when ``(D << acc_shift) + bias`` provably stays in int32 for every input:
    ``D = Σ (x − zx)·w`` is bounded by ``max|x − zx|`` over x's codes times the largest
    per-channel ``Σ|w|`` (channel axis 1 of a QMatMul's (K, N) weight, axis 0 of a QConv's).
    Grouped rescales (``attrs.groups``) are not bounded here: False."""
    from .quantized import _acc_type, _x_max

    if getattr(node.attrs, "groups", None) is not None:
        return False
    w = np.abs(ctx.require_const(node, 1, "integer weight").astype(np.int64))
    axis = 1 if node.op == Op.QMATMUL else 0
    colsum = w.sum(axis=tuple(d for d in range(w.ndim) if d != axis))
    zx = int(node.attrs.requant.in_zero_point)
    return _acc_type(_x_max(node.inputs[0], zx), int(colsum.max(initial=0)),
                     int(node.attrs.acc_shift), bias) == "int32"


def _padded_sign(node: Node):
    """``(pad node, requantize node)`` when a conv without padding of its own reads binary
    (sign) codes of a constant-mode spatial Pad of a float tensor: sign is elementwise, so
    ``sign(pad(x, v)) = pad(sign(x), sign(v))`` and the direct conv can pad the codes itself
    (its pack writes the border code), instead of a separate pass that pads the float tensor
    (measured on the binarized ResNet-18: the pad blocks the elementwise chain from fusing
    into one vectorized loop). None otherwise."""
    requant = node.inputs[0].producer
    if requant is None or requant.op != Op.REQUANTIZE or not requant.attrs.requant.binary:
        return None
    pad = requant.inputs[0].producer
    if pad is None or pad.op != Op.PAD or pad.attrs.mode != "constant":
        return None
    p = tuple(int(v) for v in pad.attrs.pads)
    if (not pad.inputs[0].dtype.is_float or len(p) != 8 or min(p) < 0 or p[0] or p[1] or p[4]
            or p[5] or any(node.attrs.pads)):
        return None
    return pad, requant


def _absorb_pad(ctx, node, plan: LayerPlan):
    """``(plan, x)`` of a bitconv layer whose input is :func:`_padded_sign`: the spec reads
    the unpadded codes with the Pad's widths and its value's sign as ``pad_code`` (real codes:
    no border correction), x = the Requantize stage applied to the Pad's input. Three
    producers of that stage: the previous conv's kernel (:mod:`.fused_sign`); the conv's own
    pack, when the stage is per-channel thresholds (:mod:`.thresholds`) of integer codes with
    the Pad's input shape (x = those codes, the spec's ``in_threshold``, the plan's ``extra``
    = ``(t, flip)``: bit ``(q >= t[c]) xor flip[c]``; a channel whose sign never changes gets
    ``t`` = the dtype's minimum); else a Requantize kernel."""
    from . import quantized

    found = _padded_sign(node) if plan.layout == "bitconv" else None
    if found is None:
        return plan, ctx.input(node, 0)
    pad, requant = found
    p = tuple(int(v) for v in pad.attrs.pads)
    rq = requant.attrs.requant
    code = int(min(max(-1 if np.float32(pad.attrs.value) < 0 else 1, rq.lo), rq.hi))
    H, W = [int(d) for d in pad.inputs[0].shape][2:]
    spec = replace(plan.spec, H=H, W=W, pads=(p[2], p[3], p[6], p[7]), pad_code=code)
    bc, target = _kernels("bitserial_conv"), ctx.target
    plan = replace(plan, spec=spec, lower=lambda: bc.lower(spec, target)["main"])
    fused = ctx.fused.get(node.name)
    if fused is not None:  # the producing conv writes the codes (fused_sign)
        from .fused_sign import emit

        return plan, emit(ctx, fused)
    found = sign_thresholds(pad.inputs[0])
    if found is not None and found.source.shape == pad.inputs[0].shape:
        # the pack thresholds the integer codes itself: no pass writes the sign codes
        up, down = (np.clip(v, rq.lo, rq.hi) > 0 for v in (found.above, found.below))
        dtype = found.source.dtype.numpy
        ti = np.where(up == down, np.iinfo(dtype).min, found.t).astype(dtype)
        spec = replace(spec, in_threshold=str(np.dtype(dtype)))
        plan = replace(plan, spec=spec, lower=lambda: bc.lower(spec, target)["main"],
                       extra=(ti, (~up).astype(np.uint8)))
        return plan, ctx.values[found.source.name]
    raw = ctx.input(pad, 0)
    return plan, quantized.requantize(ctx, requant, x=raw, source=pad.inputs[0])


def lower_layer(ctx, node, family: str):
    """Lower ``node`` on ``family`` (module docstring): x (reshaped / im2col'd / as is) ->
    the family's scheduled PrimFunc via ``relax.call_tir`` -> the fused output, or the split
    epilogue."""
    from tvm import relax

    plan, x = _absorb_pad(ctx, node, plan_layer(node, family, ctx.target))
    gv = _add_scheduled(ctx, plan.lower(), f"{family}_{node.name}")
    spec = plan.spec
    a_dtype = spec.a_dtype
    x_shape = tuple(int(d) for d in x.ty.shape)
    M, K, N = plan.gemm_shape
    if plan.layout == "im2col":
        x = _im2col(ctx, node, x, a_dtype, plan.gemm_shape, plan.pad_code)
    else:
        if plan.layout == "gemm" and len(x_shape) != 2:
            x = ctx.bb.emit(relax.op.reshape(x, (M, K)))
        if str(x.ty.dtype) != a_dtype and getattr(spec, "in_threshold", None) is None:
            x = ctx.bb.emit(relax.op.astype(x, a_dtype))
    y_shape = (M, N) if plan.layout in ("gemm", "im2col") else out_shape(node)
    args = relax.Tuple([x, *[ctx.weight(p, f"{node.name}:w{i}")
                             for i, p in enumerate(plan.params)],
                        *[ctx.constant(a) for a in plan.extra]])
    y = ctx.bb.emit(relax.call_tir(gv, args, out_ty=relax.TensorType(y_shape, spec.out_dtype)))
    if plan.fused:
        if spec.out_dtype != out_dtype(node):
            y = ctx.bb.emit(relax.op.astype(y, out_dtype(node)))
        if tuple(y_shape) != out_shape(node):
            y = ctx.bb.emit(relax.op.reshape(y, out_shape(node)))
        return y
    if plan.layout == "gemm":
        lead = out_shape(node)[:-1]

        def acc_index(idx):
            row = 0
            for d, size in zip(idx[:-1], lead):
                row = row * size + d
            return (row, idx[-1])
    elif plan.layout == "im2col":
        spatial = out_shape(node)[2:]

        def acc_index(idx):
            row = idx[0]
            for d, size in zip(idx[2:], spatial):
                row = row * size + d
            return (row, idx[1])
    else:
        def acc_index(idx):
            return tuple(idx)
    return _epilogue(ctx, node, y, acc_index, plan.border)


for _name in ADAPTERS:
    register_lowering(Op.QMATMUL, Op.QCONV, kernel=_name)(
        functools.partial(lower_layer, family=_name))
