"""Integer ops lowered to ``relax.call_tir`` of ``tvm.te`` PrimFuncs: the "reference" family.

Every kernel here computes the integer simulator's formula (``lowbit.runtime.kernels.quantized``,
``lowbit.ir.dyadic.requantize``, attrs in ``lowbit.ir.attrs``) bit-exactly, in int32 / int64:

* accumulate  ``acc = (Σ (x − zx)·w << acc_shift) + bias``. The zero-point correction is
  folded at compile time: ``Σ (x − zx)·w = Σ x·w − zx·colsum(w)``, so the kernel computes
  ``(Σ x·w << acc_shift) + offset`` with ``offset = bias − (zx·colsum(w) << acc_shift)`` (conv
  padding reads ``zx``, i.e. a real 0). The running sum is int32 when the compile-time bound
  ``max|x|·max_n Σ_k |w[k, n]| << acc_shift + max|offset|`` fits int32, else int64, so no
  intermediate ever wraps.
* per-group layers (``GroupRescale``): partial sums ``acc_r`` over each reduction group r are
  rescaled ``(acc_r·m[r, c] + 2^(s[r, c]−1)) >> s[r, c]`` and summed (int64), then shifted and
  biased.
* requant     ``y = clamp(zy + ((acc·m[c] + 2^(s[c]−1)) >> s[c]), lo, hi)`` in int64 (``>>``
  arithmetic, no rounding term for s = 0), ``clamp(acc >= 0 ? 1 : −1, lo, hi)`` for binary
  outputs, or ``acc`` itself in accumulator-out mode.

Codes travel in their numpy storage dtype (int4 -> int8, uint2 -> uint8, ...).

Kernel-family seam: a QMatMul / QConv whose ``node.meta["kernel"]`` names a family of
``lowbit.codegen.kernels`` is lowered by :mod:`lowbit.codegen.lowering.families` instead (the
family's scheduled GEMM plus, where needed, an im2col and an epilogue built from the pieces
here: :class:`_Requant`, :func:`_bias`, :func:`_channel_count`).
"""

from __future__ import annotations

import numpy as np

from ...ir import Op
from ...ir.qformats import rescale_groups
from . import fail, out_dtype, out_shape, register_lowering
from .thresholds import sign_thresholds

_INT32_MAX = (1 << 31) - 1


def _te():
    from tvm import te

    return te


def _tirx():
    from tvm import tirx

    return tirx


# -- shared pieces ------------------------------------------------------------------------------
class _PerChannel:
    """Compile-time int64 parameters (one per channel, or one): immediates when uniform, else a
    constant tensor passed to the kernel -- stored as int32 when every value fits and widened
    in the expression, so a product with a widened int32 operand is a sign-extended 32x32
    multiply (``vpmuldq``): AVX2 has no 64-bit vector multiply and LLVM otherwise builds one
    from three 32-bit multiplies per lane."""

    def __init__(self, values):
        array = np.asarray(values, dtype=np.int64).reshape(-1)
        fits = bool(array.size) and bool(np.all(np.abs(array) <= _INT32_MAX))
        self.array = array.astype(np.int32) if fits else array
        self.uniform = bool(self.array.size) and bool(np.all(self.array == self.array[0]))

    def expr(self, tensor, c):
        tirx = _tirx()
        if self.uniform or tensor is None:
            return tirx.const(int(self.array[0]), "int64")
        return tensor[c].astype("int64")


class _Requant:
    """The Requant output stage as a te expression builder (see the module docstring)."""

    def __init__(self, rq, channels: int):
        self.rq = rq
        m = np.asarray(rq.multiplier, dtype=np.int64)
        s = np.asarray(rq.shift, dtype=np.int64)
        if m.size not in (0, 1, channels):
            raise ValueError(f"{m.size} multipliers for {channels} channels")
        half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
        self.params = [_PerChannel(v) for v in (m, s, half)] if m.size else []

    def constants(self) -> list[np.ndarray]:
        """The non-uniform parameter arrays the kernel takes as inputs (in order)."""
        return [p.array for p in self.params if not p.uniform]

    def _pow2_shift(self) -> int | None:
        """``s − k`` when every channel has the same multiplier ``m = 2^k`` and shift
        ``s >= k``, else None. Then ``(acc·2^k + 2^(s−1)) >> s = (acc + 2^(s−k−1)) >> (s−k)``
        (``= acc`` when ``s = k``): exact, with no 64-bit multiply (which AVX2 lacks) -- e.g.
        the int32 rescale ``m = 2^30, s = 30`` in front of a max-pool."""
        if not self.params or not all(p.uniform for p in self.params):
            return None
        m, s = int(self.params[0].array[0]), int(self.params[1].array[0])
        if m <= 0 or m & (m - 1):
            return None
        k = m.bit_length() - 1
        return s - k if s >= k else None

    def apply(self, acc, tensors, c, dtype: str):
        """``acc`` (int64 PrimExpr) -> the output code of channel ``c`` in ``dtype``."""
        tirx = _tirx()
        rq = self.rq
        if rq.accumulates:
            return acc.astype(dtype)
        lo, hi = tirx.const(rq.lo, "int64"), tirx.const(rq.hi, "int64")
        if rq.binary:
            sign = tirx.Select(acc >= 0, tirx.const(1, "int64"), tirx.const(-1, "int64"))
            return tirx.max(tirx.min(sign, hi), lo).astype(dtype)
        pow2 = self._pow2_shift()
        if pow2 is not None:  # m = 2^k, k <= s: the same value without the int64 multiply
            if pow2 > 0:
                acc = (acc + tirx.const(1 << (pow2 - 1), "int64")) >> tirx.const(pow2, "int64")
            y = tirx.const(rq.out_zero_point, "int64") + acc
            return tirx.max(tirx.min(y, hi), lo).astype(dtype)
        it = iter(tensors)
        m, s, half = (p.expr(None if p.uniform else next(it), c) for p in self.params)
        y = tirx.const(rq.out_zero_point, "int64") + ((acc * m + half) >> s)
        return tirx.max(tirx.min(y, hi), lo).astype(dtype)


def _channel_count(rq, shape, axis_default):
    n = max(len(rq.multiplier), 1)
    axis = rq.axis if rq.axis is not None else axis_default
    if n > 1 and (axis is None or shape[axis] != n):
        raise ValueError(f"{n} requant channels do not match axis {axis} of {shape}")
    return n, (axis if n > 1 else None)


def _x_max(x_value, zx: int) -> int:
    """max |x − zx| over the codes of ``x_value``'s dtype."""
    return max(abs(int(x_value.dtype.min) - zx), abs(int(x_value.dtype.max) - zx))


def _acc_type(x_max: int, abs_colsum_max: int, acc_shift: int, offset: np.ndarray) -> str:
    """int32 when every partial sum provably fits int32 (module docstring), else int64."""
    off = int(np.abs(offset).max()) if offset.size else 0
    bound = ((x_max * abs_colsum_max) << acc_shift) + off
    return "int32" if bound <= _INT32_MAX else "int64"


def _group_weights(node, w: np.ndarray, w_channel_axis: int):
    """Masked weight stack (R, *w.shape) and (R, C) multipliers / shifts of a GroupRescale
    (the reference's reduction-group index r, C-order over the non-channel parameter dims)."""
    red, m, s = rescale_groups(node.attrs.groups, w.shape, w_channel_axis)
    n_red = m.shape[0]
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    stack = np.stack([np.where(red == r, w, 0) for r in range(n_red)]).astype(w.dtype)
    return stack, m, s, half


def _bias(ctx, node, index: int, channels: int) -> np.ndarray:
    if index >= len(node.inputs) or node.inputs[index] is None:
        return np.zeros(channels, dtype=np.int64)
    b = ctx.require_const(node, index, "bias").astype(np.int64).reshape(-1)
    if b.size == 1:
        b = np.full(channels, b[0], dtype=np.int64)
    return b


# -- QMatMul / QConv ----------------------------------------------------------------------------
def _linear(ctx, node, *, w_channel_axis: int, out_channel_axis: int, build_sum,
            fold: bool = True):
    """Shared driver of QMatMul / QConv: folds the zero point (or stacks groups) and emits one
    PrimFunc ``acc -> requant``. ``build_sum(x, w, acc_dtype, zx, group)`` returns the te
    reduction ``Σ x·w`` (``zx`` subtracted in-kernel when not None; ``group`` True: ``w`` is
    the (R, ...) stack and the sum has a leading r axis). ``fold`` False: subtract ``zx``
    in-kernel (for kernels whose taps do not all read x or zx)."""
    te = _te()
    attrs = node.attrs
    rq = attrs.requant
    x = ctx.input(node, 0)
    w = ctx.require_const(node, 1, "integer weight")
    shape = out_shape(node)
    channels = shape[out_channel_axis]
    bias = _bias(ctx, node, 2, channels)
    rank = len(shape)
    out_channel_axis %= rank
    try:
        n_rq, rq_axis = _channel_count(rq, shape, out_channel_axis)
        stage = _Requant(rq, n_rq)
    except ValueError as err:
        raise fail(node, str(err)) from None
    dt = out_dtype(node)
    zx = int(rq.in_zero_point)
    shift = int(attrs.acc_shift)
    w64 = w.astype(np.int64)
    reduce_axes = tuple(d for d in range(w.ndim) if d != w_channel_axis)
    extra = [ctx.constant(a) for a in stage.constants()]

    def channel(idx):
        return idx[out_channel_axis]

    def rq_channel(idx):
        return None if rq_axis is None else idx[rq_axis % rank]

    if attrs.groups is None:
        colsum = w64.sum(axis=reduce_axes)
        offset = bias - ((zx * colsum) << shift) if fold else bias
        acc_dt = _acc_type(_x_max(node.inputs[0], 0 if fold else zx),
                           int(np.abs(w64).sum(axis=reduce_axes).max()), shift, offset)
        off_const = ctx.constant(offset.astype(acc_dt))

        def compute(xt, wt, ot, *params):
            total = build_sum(xt, wt, acc_dt, None if fold else zx, False)

            def body(*idx):
                c = channel(idx)
                acc = ((total(*idx) << shift) + ot[c]).astype("int64")
                return stage.apply(acc, params, rq_channel(idx), dt)

            return te.compute(shape, body, name="y")

        return ctx.emit_te(compute, x, ctx.weight(w, f"{node.name}:w0"), off_const, *extra,
                           name=node.name)

    stack, gm, gs, ghalf = _group_weights(node, w, w_channel_axis)
    n_red = stack.shape[0]

    def compute_groups(xt, wt, mt, st, ht, bt, *params):
        partial = build_sum(xt, wt, "int64", zx, True)
        r = te.reduce_axis((0, n_red), name="r")

        def rescaled(*idx):
            c = channel(idx)
            part = partial(r, *idx)
            return te.sum((part * mt[r, c] + ht[r, c]) >> st[r, c], axis=r)

        acc = te.compute(shape, rescaled, name="acc")

        def body(*idx):
            c = channel(idx)
            return stage.apply((acc(*idx) << shift) + bt[c], params, rq_channel(idx), dt)

        return te.compute(shape, body, name="y")

    return ctx.emit_te(compute_groups, x, ctx.weight(stack, f"{node.name}:w0"),
                       ctx.constant(gm), ctx.constant(gs), ctx.constant(ghalf),
                       ctx.constant(bias), *extra, name=node.name)


@register_lowering(Op.QMATMUL)
def qmatmul(ctx, node):
    """Integer MatMul, x (..., K) codes, w (K, N) integer constant:
    ``acc[..., n] = (Σ_k (x[..., k] − zx)·w[k, n] << acc_shift) + bias[n]``, then
    ``y = clamp(zy + ((acc·m[n] + 2^(s[n]−1)) >> s[n]), lo, hi)`` (int64; binary: sign;
    accumulator-out: acc). Zero point folded into the bias (module docstring)."""
    te = _te()
    w = ctx.require_const(node, 1, "integer weight")
    if w.ndim != 2:
        raise fail(node, f"weight must be 2-D (K, N), got shape {list(w.shape)}")
    K = w.shape[0]
    rank = len(out_shape(node))

    def build_sum(xt, wt, acc_dt, zx, grouped):
        k = te.reduce_axis((0, K), name="k")
        shape = out_shape(node)

        def term(xv, wv):
            xv = xv.astype(acc_dt)
            if zx is not None:
                xv = xv - _tirx().const(zx, acc_dt)
            return xv * wv.astype(acc_dt)

        if grouped:
            return te.compute((wt.shape[0], *shape), lambda r, *i: te.sum(
                term(xt[(*i[:rank - 1], k)], wt[r, k, i[rank - 1]]), axis=k), name="partial")
        return te.compute(shape, lambda *i: te.sum(
            term(xt[(*i[:rank - 1], k)], wt[k, i[rank - 1]]), axis=k), name="sum")

    return _linear(ctx, node, w_channel_axis=1, out_channel_axis=rank - 1, build_sum=build_sum)


@register_lowering(Op.QCONV)
def qconv(ctx, node):
    """Integer Conv over N spatial dims (groups, dilations, strides, pads; ``transposed`` for
    ConvTranspose): ``acc[b, c, o] = (Σ_{ci, k} (x − zx)·w << acc_shift) + bias[c]`` with
    padding = a real 0 (code zx), then the requant of :func:`qmatmul` along channel axis 1.
    Direct convolution: ``Σ_{ci, k} xpad[b, g·Cg + ci, o·stride + k·dilation]·w[c, ci, k]``
    (transposed: ``Σ_{ci, k} (x[b, g·Cg + ci, i] − zx)·w[g·Cg + ci, c mod Co_g, k]`` over the
    taps where ``i = (o + pad − k·dilation) / stride`` is an integer inside the input)."""
    a = node.attrs
    x = ctx.input(node, 0)
    in_shape = tuple(int(d) for d in x.ty.shape)
    if a.transposed:
        build_sum = _transposed_sum(node, in_shape)
        return _linear(ctx, node, w_channel_axis=1, out_channel_axis=1, build_sum=build_sum,
                       fold=False)
    build_sum = _direct_sum(node, in_shape)
    return _linear(ctx, node, w_channel_axis=0, out_channel_axis=1, build_sum=build_sum)


def _direct_sum(node, in_shape):
    te, tirx = _te(), _tirx()
    a = node.attrs
    nd = len(a.strides)
    shape = out_shape(node)
    zx = int(a.requant.in_zero_point)
    w_shape = node.inputs[1].const.shape
    cg = w_shape[1]
    co_g = shape[1] // a.group
    pads_b, pads_e = a.pads[:nd], a.pads[nd:]
    padded = in_shape[:2] + tuple(in_shape[2 + i] + pads_b[i] + pads_e[i] for i in range(nd))

    def build_sum(xt, wt, acc_dt, zx_sub, grouped):
        if any(pads_b) or any(pads_e):
            def pad_body(b, c, *s):
                inside = tirx.all(*[tirx.all(s[i] >= pads_b[i],
                                             s[i] < pads_b[i] + in_shape[2 + i])
                                    for i in range(nd)])
                src = xt[(b, c, *[s[i] - pads_b[i] for i in range(nd)])]
                return tirx.if_then_else(inside, src, tirx.const(zx, xt.dtype))

            xp = te.compute(padded, pad_body, name="xpad")
        else:
            xp = xt
        ci = te.reduce_axis((0, cg), name="ci")
        ks = [te.reduce_axis((0, w_shape[2 + i]), name=f"k{i}") for i in range(nd)]

        def term(b, c, o, wv):
            src = (b, (c // co_g) * cg + ci,
                   *[o[i] * a.strides[i] + ks[i] * a.dilations[i] for i in range(nd)])
            xv = xp[src].astype(acc_dt)
            if zx_sub is not None:
                xv = xv - tirx.const(zx_sub, acc_dt)
            return xv * wv.astype(acc_dt)

        if grouped:
            return te.compute((wt.shape[0], *shape), lambda r, b, c, *o: te.sum(
                term(b, c, o, wt[(r, c, ci, *ks)]), axis=[ci, *ks]), name="partial")
        return te.compute(shape, lambda b, c, *o: te.sum(
            term(b, c, o, wt[(c, ci, *ks)]), axis=[ci, *ks]), name="sum")

    return build_sum


def _transposed_sum(node, in_shape):
    te, tirx = _te(), _tirx()
    a = node.attrs
    nd = len(a.strides)
    shape = out_shape(node)
    w_shape = node.inputs[1].const.shape
    cg = in_shape[1] // a.group
    co_g = w_shape[1]

    def build_sum(xt, wt, acc_dt, zx_sub, grouped):
        ci = te.reduce_axis((0, cg), name="ci")
        ks = [te.reduce_axis((0, w_shape[2 + i]), name=f"k{i}") for i in range(nd)]

        def term(b, c, o, wv):
            g = c // co_g
            nums = [o[i] + a.pads[i] - ks[i] * a.dilations[i] for i in range(nd)]
            valid = tirx.all(*[tirx.all(tirx.floormod(nums[i], a.strides[i]) == 0,
                                        nums[i] >= 0,
                                        tirx.floordiv(nums[i], a.strides[i]) < in_shape[2 + i])
                               for i in range(nd)])
            src = (b, g * cg + ci, *[tirx.floordiv(nums[i], a.strides[i]) for i in range(nd)])
            xv = xt[src].astype(acc_dt) - tirx.const(zx_sub, acc_dt)
            return tirx.if_then_else(valid, xv * wv.astype(acc_dt), tirx.const(0, acc_dt))

        def w_at(r, c):
            g = c // co_g
            idx = (g * cg + ci, c % co_g, *ks)
            return wt[(r, *idx)] if r is not None else wt[idx]

        if grouped:
            return te.compute((wt.shape[0], *shape), lambda r, b, c, *o: te.sum(
                term(b, c, o, w_at(r, c)), axis=[ci, *ks]), name="partial")
        return te.compute(shape, lambda b, c, *o: te.sum(
            term(b, c, o, w_at(None, c)), axis=[ci, *ks]), name="sum")

    return build_sum


# -- QAdd / Requantize ------------------------------------------------------------------------
def _broadcast_index(idx, in_shape, out_shape_):
    """Index of an input of ``in_shape`` broadcast (numpy rules) to ``out_shape_``."""
    lead = len(out_shape_) - len(in_shape)
    return tuple(0 if in_shape[d] == 1 and out_shape_[lead + d] != 1 else idx[lead + d]
                 for d in range(len(in_shape)))


@register_lowering(Op.QADD)
def qadd(ctx, node):
    """Integer residual add: ``y = clamp(zy + ((Σ_i (x_i − z_i)·m_i[c] + 2^(S−1)) >> S), lo,
    hi)`` in int64 (numpy broadcasting; ``m_i`` per tensor or per channel along ``axis``;
    ``S``, ``zy``, ``lo``, ``hi`` from ``a``)."""
    te, tirx = _te(), _tirx()
    a, b = node.attrs.a, node.attrs.b
    shape = out_shape(node)
    dt = out_dtype(node)
    xs = [ctx.input(node, 0), ctx.input(node, 1)]
    shapes = [tuple(int(d) for d in v.ty.shape) for v in xs]
    params, arrays = [], []
    for rq in (a, b):
        p = _PerChannel(rq.multiplier)
        if not p.uniform:
            if rq.axis is None or shape[rq.axis] != p.array.size:
                raise fail(node, f"{p.array.size} multipliers do not match axis {rq.axis} of "
                                 f"{shape}")
            arrays.append(p.array)
        params.append(p)
    s = int(a.shift[0])
    half = (1 << (s - 1)) if s > 0 else 0

    def compute(xa, xb, *tensors):
        it = iter(tensors)
        per = [None if p.uniform else next(it) for p in params]

        def body(*idx):
            total = tirx.const(half, "int64")
            for xt, xshape, rq, p, tensor in zip((xa, xb), shapes, (a, b), params, per):
                xv = xt[_broadcast_index(idx, xshape, shape)].astype("int64")
                m = p.expr(tensor, idx[rq.axis] if tensor is not None else None)
                total = total + (xv - tirx.const(rq.in_zero_point, "int64")) * m
            y = (total >> s) + tirx.const(a.out_zero_point, "int64")
            return tirx.max(tirx.min(y, tirx.const(a.hi, "int64")),
                            tirx.const(a.lo, "int64")).astype(dt)

        return te.compute(shape, body, name="y")

    return ctx.emit_te(compute, *xs, *[ctx.constant(v) for v in arrays], name=node.name)


@register_lowering(Op.REQUANTIZE)
def requantize(ctx, node, x=None, source=None):
    """``y = requant(x − zx)`` per the Requant stage (int64; channel axis ``requant.axis``); a
    float input (binary requant only): ``y = clamp(x < 0 ? −1 : 1, lo, hi)``, or per-channel
    thresholds on the integer codes the float input was computed from
    (:mod:`.thresholds`). ``x``: a Relax expression to apply the node's stage to instead of
    its input (an elementwise stage: any shape of the same rank and channel count; the
    bitserial conv uses it to sign the unpadded tensor and pad the codes itself), ``source``
    the IR value ``x`` computes."""
    te, tirx = _te(), _tirx()
    rq = node.attrs.requant
    if x is None:
        x, shape, source = ctx.input(node, 0), out_shape(node), node.inputs[0]
    else:
        shape = tuple(int(d) for d in x.ty.shape)
    dt = out_dtype(node)
    is_float = str(x.ty.dtype).startswith("float")
    if is_float and not rq.binary:
        raise fail(node, "a float input needs a binary requant; use QuantizeLinear")
    found = sign_thresholds(source) if is_float and source is not None else None
    if found is not None and found.source.shape == shape:
        return _threshold(ctx, node, found, shape)
    try:
        n_rq, axis = _channel_count(rq, shape, None)
        stage = _Requant(rq, n_rq)
    except ValueError as err:
        raise fail(node, str(err)) from None

    def compute(xt, *params):
        def body(*idx):
            if is_float:
                acc = tirx.Select(xt[idx] < tirx.const(0, xt.dtype), tirx.const(-1, "int64"),
                                  tirx.const(1, "int64"))
            else:
                acc = xt[idx].astype("int64") - tirx.const(rq.in_zero_point, "int64")
            return stage.apply(acc, params, idx[axis] if axis is not None else None, dt)

        return te.compute(shape, body, name="y")

    extra = [ctx.constant(v) for v in stage.constants()]
    return ctx.emit_te(compute, x, *extra, name=node.name)


def _threshold(ctx, node, found, shape):
    """``y = q >= t[c] ? above[c] : below[c]`` (:class:`.thresholds.Thresholds`, the codes
    clamped to the node's ``[lo, hi]``) on the integer codes ``q`` behind the float input."""
    te, tirx = _te(), _tirx()
    rq = node.attrs.requant
    dt = out_dtype(node)
    q = ctx.values[found.source.name]
    t = ctx.constant(found.t)
    above = ctx.constant(np.clip(found.above, rq.lo, rq.hi).astype(dt))
    below = ctx.constant(np.clip(found.below, rq.lo, rq.hi).astype(dt))

    def compute(qt, tt, at, bt):
        return te.compute(shape, lambda *i: tirx.Select(qt[i] >= tt[i[1]], at[i[1]], bt[i[1]]),
                          name="y")

    return ctx.emit_te(compute, q, t, above, below, name=node.name)


@register_lowering(Op.MATMUL_INTEGER)
def matmul_integer(ctx, node):
    """ONNX MatMulInteger, 2-D: ``y[m, n] = Σ_k (a[m, k] − za)·(b[k, n] − zb[n])`` in int32
    (zero points constant, per tensor; zb may be per column)."""
    te, tirx = _te(), _tirx()
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    sa = tuple(int(d) for d in a.ty.shape)
    sb = tuple(int(d) for d in b.ty.shape)
    if len(sa) != 2 or len(sb) != 2:
        raise fail(node, f"only 2-D MatMulInteger lowers, got {list(sa)} x {list(sb)}")
    za = ctx.const_array(node, 2)
    zb = ctx.const_array(node, 3)
    if (len(node.inputs) > 2 and node.inputs[2] is not None and za is None) or (
            len(node.inputs) > 3 and node.inputs[3] is not None and zb is None):
        raise fail(node, "zero points must be constants for codegen")
    za = 0 if za is None else int(np.asarray(za).reshape(-1)[0])
    zb = np.zeros(sb[1], np.int32) if zb is None else np.broadcast_to(
        np.asarray(zb, np.int32).reshape(-1), (sb[1],)).copy()

    def compute(at, bt, zbt):
        k = te.reduce_axis((0, sa[1]), name="k")
        return te.compute((sa[0], sb[1]), lambda m, n: te.sum(
            (at[m, k].astype("int32") - tirx.const(za, "int32"))
            * (bt[k, n].astype("int32") - zbt[n]), axis=k), name="y")

    return ctx.emit_te(compute, a, b, ctx.constant(zb), name=node.name)


# -- QuantizeLinear / DequantizeLinear ----------------------------------------------------------
def _param(node, array, x_shape):
    """A scale / zero point shaped to broadcast against x (the reference's broadcast_param)."""
    from ...runtime.kernels.quant import broadcast_param

    if array is None:
        return None
    return np.ascontiguousarray(broadcast_param(node, np.asarray(array),
                                                np.empty(x_shape, dtype=np.uint8)))


def _q_params(ctx, node, x_shape):
    scale = _param(node, ctx.require_const(node, 1, "scale"), x_shape)
    zp = ctx.const_array(node, 2)
    if len(node.inputs) > 2 and node.inputs[2] is not None and zp is None:
        raise fail(node, "zero point (input 2) must be a constant for codegen")
    return scale, _param(node, zp, x_shape)


@register_lowering(Op.QUANTIZE)
def quantize(ctx, node):
    """``y = clamp(round_half_even(x / scale) + zp, dtype.min, dtype.max)``: the division in
    x's float type (IEEE, as numpy), the zero point added in float64 (the reference's order).
    For float32 ``x``, a dtype of at most 16 bits and ``|zp| <= 2^16`` the add and the clamp
    run in float32 instead, with the same result: a rounded quotient below 2^23 in magnitude
    plus the zero point is exact, and a larger one (already an integer) stays beyond the
    clamp bounds, on the same side, after the add's rounding. float64 lanes halve the vector
    width (the layer-norm -> quantize kernel of the digits transformer: ~10 % faster)."""
    te, tirx = _te(), _tirx()
    x = ctx.input(node, 0)
    x_shape = tuple(int(d) for d in x.ty.shape)
    dtype = node.attrs.dtype
    if not dtype.is_integer:
        raise fail(node, f"quantizing to {dtype} is not supported; use an integer dtype")
    scale, zp = _q_params(ctx, node, x_shape)
    fdt = str(x.ty.dtype) if str(x.ty.dtype).startswith("float") \
        else str(scale.dtype)
    dt = out_dtype(node)
    lo, hi = float(dtype.min), float(dtype.max)
    narrow = fdt == "float32" and dtype.bits <= 16 and (
        zp is None or float(np.max(np.abs(zp), initial=0)) <= 2.0 ** 16)
    adt = "float32" if narrow else "float64"
    zpf = np.zeros((), adt) if zp is None else zp.astype(adt)

    def compute(xt, st, zt):
        def body(*idx):
            xv = xt[idx].astype(fdt)
            q = tirx.nearbyint(xv / st[_broadcast_index(idx, scale.shape, x_shape)].astype(fdt))
            q = q.astype(adt) + zt[_broadcast_index(idx, zpf.shape, x_shape)]
            q = tirx.max(tirx.min(q, tirx.const(hi, adt)), tirx.const(lo, adt))
            return q.astype(dt)

        return te.compute(x_shape, body, name="y")

    return ctx.emit_te(compute, x, ctx.constant(scale), ctx.constant(zpf), name=node.name)


@register_lowering(Op.DEQUANTIZE)
def dequantize(ctx, node):
    """``y = float(x − zp) · scale``: the subtraction exact, then one rounding to the output
    float type (the reference's int64 ``x − zp``). It runs in int32 when that is exact too --
    ``x`` of at most 16 bits and ``|zp| <= 2^30``, or int32 ``x`` with no zero point -- because
    int64 -> float conversions have no vector instruction before AVX-512DQ: on an AVX2 CPU the
    int64 form scalarizes the whole fused epilogue it sits in (measured on Zen 3: a 56²×64
    dequantize -> BN -> sign chain ran 0.42 ms)."""
    te = _te()
    x = ctx.input(node, 0)
    x_shape = tuple(int(d) for d in x.ty.shape)
    scale, zp = _q_params(ctx, node, x_shape)
    dt = out_dtype(node)
    wide = _dequant_int_type(str(x.ty.dtype), zp)
    zpw = np.zeros((), wide) if zp is None else zp.astype(wide)

    def compute(xt, st, zt):
        def body(*idx):
            diff = xt[idx].astype(wide) - zt[_broadcast_index(idx, zpw.shape, x_shape)]
            return diff.astype(dt) * st[_broadcast_index(idx, scale.shape, x_shape)].astype(dt)

        return te.compute(x_shape, body, name="y")

    return ctx.emit_te(compute, x, ctx.constant(scale), ctx.constant(zpw), name=node.name)


def _dequant_int_type(x_dtype: str, zp) -> str:
    """``"int32"`` when ``x − zp`` is exact in int32 for every code of ``x_dtype`` (see
    :func:`dequantize`), else ``"int64"``."""
    bits = np.dtype(x_dtype).itemsize * 8
    zp_max = 0 if zp is None else int(np.abs(np.asarray(zp, np.int64)).max(initial=0))
    if bits <= 16 and zp_max <= 1 << 30:
        return "int32"
    return "int32" if x_dtype == "int32" and zp_max == 0 else "int64"
