"""Float ops (and the data-movement ops on any dtype) lowered to ``relax.op.*``.

Each lowering reproduces the reference kernel of the same op (``lowbit.runtime.kernels``);
shapes are static, so reshape-like ops reshape to the node's declared output shape and the
pooling / slicing rules are resolved here at compile time (explicit pads, explicit indices)
rather than trusting TVM's variants of ONNX's corner cases.
"""

from __future__ import annotations

import math

import numpy as np

from ...ir import Op
from ...ir.infer import slice_range
from . import fail, out_dtype, out_shape, register_lowering


def _R():
    from tvm import relax

    return relax.op


def _dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def _scalar(value, dtype: str):
    from tvm import relax

    return relax.const(np.asarray(value, dtype=dtype), dtype)


def _channel(expr, rank: int):
    """A 1-D per-channel tensor shaped to broadcast along axis 1 of a rank-``rank`` tensor."""
    n = int(expr.ty.shape[0])
    return _R().reshape(expr, (1, n) + (1,) * (rank - 2))


# -- linear --------------------------------------------------------------------------------
_CONV = {1: ("conv1d", "NCW", "OIW"), 2: ("conv2d", "NCHW", "OIHW"),
         3: ("conv3d", "NCDHW", "OIDHW")}
_CONV_T = {1: ("conv1d_transpose", "NCW", "IOW"), 2: ("conv2d_transpose", "NCHW", "IOHW")}


@register_lowering(Op.CONV)
def conv(ctx, node):
    """y = conv(x, w) + b (groups and depthwise via ``groups``; ONNX pads order kept). Float32
    2-d convs with constant weights on llvm targets use :func:`packed_conv2d` (weights blocked
    by output channel at compile time, see :func:`_packed_conv_lanes`), others ``relax.nn``."""
    R = _R()
    x, w, b = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    a = node.attrs
    nd = len(a.strides)
    if nd not in _CONV:
        raise fail(node, f"{nd}-d convolution has no lowering; only 1-d, 2-d and 3-d")
    lanes = _packed_conv_lanes(ctx, node)
    if lanes:
        packed = _pack_conv_weight(ctx.const_array(node, 1), lanes)
        args = (x, ctx.constant(packed)) + (() if b is None else (b,))
        return ctx.emit_te(packed_conv2d, *args, strides=a.strides, pads=a.pads,
                           dilations=a.dilations, name="packed_conv2d")
    name, layout, klayout = _CONV[nd]
    y = getattr(R.nn, name)(x, w, strides=a.strides, padding=a.pads, dilation=a.dilations,
                            groups=a.group, data_layout=layout, kernel_layout=klayout)
    return y if b is None else R.add(ctx.bb.emit(y), _channel(b, nd + 2))


def _packed_conv_lanes(ctx, node) -> int:
    """The output-channel block of :func:`packed_conv2d` for ``node``, or 0 when the plain
    NCHW lowering is used: llvm targets, float32, 2-d, group 1, a constant weight whose
    output channels the float32 SIMD width divides, a kernel larger than 1×1 or a strided one
    (stride-1 1×1 convs stay NCHW matrix products; a strided 1×1 -- a ResNet downsample --
    reads no unit-stride row there, and ran 40-100× slower than the blocked conv on Zen 3)."""
    from ..schedules.analysis import vector_lanes
    from ..schedules.contraction import broadcast_rows

    w = ctx.const_array(node, 1)
    if ctx.target.kind != "llvm" or w is None or w.dtype != np.float32 or w.ndim != 4:
        return 0
    if node.attrs.group != 1:
        return 0
    if w.shape[2] * w.shape[3] == 1 and all(s == 1 for s in node.attrs.strides):
        return 0
    if _dtype_of(ctx.input(node, 0)) != "float32":
        return 0
    target = ctx.target.tvm_target()
    lanes = vector_lanes(target, 32)
    if w.shape[0] % lanes:
        return 0
    return lanes * _vectors_per_row(out_shape(node)[3], w.shape[0] // lanes,
                                    broadcast_rows(target))


def _vectors_per_row(out_width: int, channel_vectors: int, max_rows: int) -> int:
    """SIMD vectors of output channels per block of :func:`packed_conv2d`: 1, or more when the
    output rows are too short to fill the register tile -- the tile's rows are a divisor of
    the output width (at most ``max_rows``), and ``rows · vectors`` accumulators should reach
    ``max_rows`` (independent multiply-add chains). Doubles while the product stays within
    ``max_rows``, the channel vectors divide evenly and at most :data:`MAX_ROW_VECTORS`.
    Measured on Zen 3 (AVX2, 8 rows): a 4-wide 3×3 conv of the digits CNN at batch 64 took
    0.80 ms with one vector (4 accumulators), 0.58 ms with two."""
    from ..schedules.analysis import largest_divisor
    from ..schedules.contraction import MAX_ROW_VECTORS

    rows = largest_divisor(out_width, max_rows)
    k = 1
    while (rows * k * 2 <= max_rows and k * 2 <= MAX_ROW_VECTORS
           and channel_vectors % (k * 2) == 0):
        k *= 2
    return k


def _pack_conv_weight(w: np.ndarray, lanes: int) -> np.ndarray:
    """OIHW -> (O/lanes, I, H, W, lanes): ``packed[o, i, y, x, l] = w[o·lanes + l, i, y, x]``
    (done once at compile time; weights are constants)."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o // lanes, lanes, i, kh, kw).transpose(0, 2, 3, 4, 1))


def packed_conv2d(x, w, b=None, *, strides, pads, dilations):
    """TE: 2-d convolution with output-channel-blocked weights (:func:`_pack_conv_weight`).

    ``y5[n,o,i,j,l] = Σ_{c,ky,kx} xp[n, c, i·sh + ky·dh, j·sw + kx·dw] · w[o, c, ky, kx, l]``
    (``xp``: x zero-padded by ``pads``, ONNX order), then
    ``y[n, o·L + l, i, j] = y5[n, o, i, j, l] (+ b[o·L + l])``: the conv accumulates ``L``
    output channels in one SIMD vector (the contraction schedule's vector axis is ``l``, its
    register rows are ``j``), the last block writes NCHW (and adds the bias)."""
    from tvm import te

    n, c, h, wd = (int(d) for d in x.shape)
    blocks, _, kh, kw = (int(d) for d in w.shape[:4])
    lanes = int(w.shape[4])
    (sh, sw), (dh, dw) = strides, dilations
    top, left, bottom, right = pads
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + left + right - (kw - 1) * dw - 1) // sw + 1
    xp = te.compute((n, c, h + top + bottom, wd + left + right),
                    lambda b_, c_, i, j: te.if_then_else(
                        te.all(i >= top, i < top + h, j >= left, j < left + wd),
                        x[b_, c_, i - top, j - left], te.const(0.0, x.dtype)), name="pad")
    rc = te.reduce_axis((0, c), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    y5 = te.compute((n, blocks, oh, ow, lanes), lambda b_, o, i, j, l: te.sum(
        xp[b_, rc, i * sh + ry * dh, j * sw + rx * dw] * w[o, rc, ry, rx, l],
        axis=[rc, ry, rx]), name="conv")
    if b is None:
        return te.compute((n, blocks * lanes, oh, ow),
                          lambda b_, f, i, j: y5[b_, f // lanes, i, j, f % lanes], name="nchw")
    return te.compute((n, blocks * lanes, oh, ow),
                      lambda b_, f, i, j: y5[b_, f // lanes, i, j, f % lanes] + b[f], name="nchw")


@register_lowering(Op.CONV_TRANSPOSE)
def conv_transpose(ctx, node):
    """y = conv_transpose(x, w) + b; w is (C_in, C_out/group, k...)."""
    R = _R()
    x, w, b = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    a = node.attrs
    nd = len(a.strides)
    if nd not in _CONV_T:
        raise fail(node, f"{nd}-d transposed convolution has no lowering; only 1-d and 2-d")
    name, layout, klayout = _CONV_T[nd]
    y = getattr(R.nn, name)(x, w, strides=a.strides, padding=a.pads,
                            output_padding=a.output_padding or (0,) * nd,
                            dilation=a.dilations, groups=a.group, data_layout=layout,
                            kernel_layout=klayout)
    y = ctx.bb.emit(y)
    got = tuple(int(d) for d in y.ty.shape)
    if got != out_shape(node):
        raise fail(node, f"TVM's output shape {got} differs from the declared "
                         f"{out_shape(node)}; check output_padding / pads")
    return y if b is None else R.add(y, _channel(b, nd + 2))


@register_lowering(Op.MATMUL)
def matmul(ctx, node):
    """y = a @ b (numpy matmul broadcasting)."""
    return _R().matmul(ctx.input(node, 0), ctx.input(node, 1))


@register_lowering(Op.GEMM)
def gemm(ctx, node):
    """Y = alpha · op(A) · op(B) + beta · C."""
    R = _R()
    a, b, c = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    at = node.attrs
    dt = out_dtype(node)
    if at.trans_a:
        a = R.permute_dims(a, (1, 0))
    if at.trans_b:
        b = R.permute_dims(b, (1, 0))
    y = R.matmul(a, b)
    if at.alpha != 1.0:
        y = R.multiply(y, _scalar(at.alpha, dt))
    if c is not None and at.beta != 0.0:
        c = c if at.beta == 1.0 else R.multiply(c, _scalar(at.beta, dt))
        y = R.add(y, c)
    return y


# -- normalization --------------------------------------------------------------------------
@register_lowering(Op.BATCHNORM)
def batchnorm(ctx, node):
    """y = (x − mean) · (scale / sqrt(var + eps)) + bias per channel (the reference's order)."""
    R = _R()
    x = ctx.input(node, 0)
    scale, bias, mean, var = (ctx.input(node, i) for i in range(1, 5))
    rank = len(out_shape(node))
    dt = _dtype_of(x)
    inv = R.divide(scale, R.sqrt(R.add(var, _scalar(node.attrs.epsilon, dt))))
    centered = R.subtract(x, _channel(mean, rank))
    return R.add(R.multiply(centered, _channel(ctx.bb.emit(inv), rank)), _channel(bias, rank))


@register_lowering(Op.LAYERNORM)
def layernorm(ctx, node):
    """y = (x − mean) / sqrt(var + eps) · scale (+ bias) over axes [axis, rank)."""
    R = _R()
    if len(node.outputs) > 1:
        raise fail(node, "the Mean / InvStdDev outputs have no lowering; drop them")
    x, scale, bias = ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)
    shape = out_shape(node)
    axes = list(range(node.attrs.axis, len(shape)))
    norm_shape = tuple(shape[node.attrs.axis:])
    scale = R.broadcast_to(scale, norm_shape)
    if bias is None:
        bias = ctx.constant(np.zeros(norm_shape, dtype=_dtype_of(x)))
    else:
        bias = R.broadcast_to(bias, norm_shape)
    return R.nn.layer_norm(x, ctx.bb.emit(scale), ctx.bb.emit(bias), axes,
                           epsilon=node.attrs.epsilon)


@register_lowering(Op.LRN)
def lrn(ctx, node):
    """y = x / (bias + alpha / size · Σ_{c'} x_{c'}²) ** beta over channels
    c' in [c − floor((size−1)/2), c + ceil((size−1)/2)] (zero-padded window sum)."""
    R = _R()
    x = ctx.input(node, 0)
    a = node.attrs
    shape = tuple(int(d) for d in x.ty.shape)
    dt = _dtype_of(x)
    before, after = (a.size - 1) // 2, a.size - 1 - (a.size - 1) // 2
    sq = ctx.bb.emit(R.multiply(x, x))
    widths = [0, 0, before, after] + [0, 0] * (len(shape) - 2)
    padded = ctx.bb.emit(R.nn.pad(sq, widths, "constant", 0.0)) if a.size > 1 else sq
    total = None
    for j in range(a.size):
        part = ctx.bb.emit(R.strided_slice(padded, [1], [j], [j + shape[1]]))
        total = part if total is None else ctx.bb.emit(R.add(total, part))
    base = R.add(_scalar(a.bias, dt), R.multiply(total, _scalar(a.alpha / a.size, dt)))
    return R.divide(x, ctx.bb.emit(R.power(ctx.bb.emit(base), _scalar(a.beta, dt))))


@register_lowering(Op.FAKE_QUANT)
def fake_quant(ctx, node):
    """FakeQuant is the float simulation of a format; codegen takes the integer graph."""
    raise fail(node, "FakeQuant is a simulation op with no kernel; quantize with fold=True "
                     "(fold_scales) to get the integer graph")


@register_lowering(Op.SOFTMAX)
def softmax(ctx, node):
    """y = exp(x − max) / Σ exp(x − max) along ``axis``."""
    return _R().nn.softmax(ctx.input(node, 0), axis=node.attrs.axis)


@register_lowering(Op.LOG_SOFTMAX)
def log_softmax(ctx, node):
    """y = x − max − log Σ exp(x − max) along ``axis``."""
    return _R().nn.log_softmax(ctx.input(node, 0), axis=node.attrs.axis)


# -- unary elementwise ----------------------------------------------------------------------
_UNARY = {Op.RELU: ("nn", "relu"), Op.SIGMOID: ("", "sigmoid"), Op.TANH: ("", "tanh"),
          Op.ERF: ("", "erf"), Op.EXP: ("", "exp"), Op.LOG: ("", "log"),
          Op.SQRT: ("", "sqrt"), Op.NEG: ("", "negative"), Op.ABS: ("", "abs")}


@register_lowering(*_UNARY)
def unary(ctx, node):
    """y = f(x) elementwise (relu, sigmoid, tanh, erf, exp, log, sqrt, neg, abs)."""
    R = _R()
    space, name = _UNARY[node.op]
    return getattr(R.nn if space else R, name)(ctx.input(node, 0))


@register_lowering(Op.RECIPROCAL)
def reciprocal(ctx, node):
    """y = 1 / x."""
    x = ctx.input(node, 0)
    return _R().divide(_scalar(1, _dtype_of(x)), x)


@register_lowering(Op.GELU)
def gelu(ctx, node):
    """y = x/2 · (1 + erf(x/√2)), or the tanh approximation when approximate = "tanh"."""
    R = _R()
    x = ctx.input(node, 0)
    if node.attrs.approximate == "tanh":
        return R.nn.gelu_tanh(x)
    if node.attrs.approximate != "none":
        raise fail(node, f"unknown approximate={node.attrs.approximate!r}; use none or tanh")
    return R.nn.gelu(x)


@register_lowering(Op.LEAKY_RELU)
def leaky_relu(ctx, node):
    """y = x if x >= 0 else alpha · x."""
    return _R().nn.leakyrelu(ctx.input(node, 0), alpha=node.attrs.alpha)


def _hard_sigmoid(ctx, x, alpha: float, beta: float):
    R = _R()
    dt = _dtype_of(x)
    lin = ctx.bb.emit(R.add(R.multiply(x, _scalar(alpha, dt)), _scalar(beta, dt)))
    return R.minimum(R.maximum(lin, _scalar(0, dt)), _scalar(1, dt))


@register_lowering(Op.HARD_SIGMOID)
def hard_sigmoid(ctx, node):
    """y = max(0, min(1, alpha · x + beta))."""
    return _hard_sigmoid(ctx, ctx.input(node, 0), node.attrs.alpha, node.attrs.beta)


@register_lowering(Op.HARD_SWISH)
def hard_swish(ctx, node):
    """y = x · max(0, min(1, x/6 + 1/2)) (composed)."""
    x = ctx.input(node, 0)
    return _R().multiply(x, ctx.bb.emit(_hard_sigmoid(ctx, x, 1.0 / 6.0, 0.5)))


@register_lowering(Op.CLIP)
def clip(ctx, node):
    """y = min(max(x, min), max); a missing bound is no bound."""
    R = _R()
    x = ctx.input(node, 0)
    dt = _dtype_of(x)
    y = x
    if node.attrs.min is not None:
        y = ctx.bb.emit(R.maximum(y, _scalar(node.attrs.min, dt)))
    if node.attrs.max is not None:
        y = R.minimum(y, _scalar(node.attrs.max, dt))
    return y


@register_lowering(Op.CAST)
def cast(ctx, node):
    """y = x converted to ``to`` (float -> int truncates toward zero, like C)."""
    return _R().astype(ctx.input(node, 0), out_dtype(node))


@register_lowering(Op.IDENTITY)
def identity(ctx, node):
    """y = x."""
    return ctx.input(node, 0)


# -- binary / ternary elementwise --------------------------------------------------------------
_BINARY = {Op.ADD: "add", Op.SUB: "subtract", Op.MUL: "multiply", Op.EQUAL: "equal"}


@register_lowering(*_BINARY)
def binary(ctx, node):
    """y = a ∘ b with numpy broadcasting (add, sub, mul, equal)."""
    return getattr(_R(), _BINARY[node.op])(ctx.input(node, 0), ctx.input(node, 1))


@register_lowering(Op.DIV)
def div(ctx, node):
    """y = a / b (float only: integer division semantics differ between ONNX and TVM)."""
    a = ctx.input(node, 0)
    if not _dtype_of(a).startswith("float"):
        raise fail(node, f"integer Div ({_dtype_of(a)}) has no lowering; cast to float first")
    return _R().divide(a, ctx.input(node, 1))


@register_lowering(Op.POW)
def power(ctx, node):
    """y = a ** b in a's float type."""
    R = _R()
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    dt = _dtype_of(a)
    if not dt.startswith("float"):
        raise fail(node, f"integer Pow ({dt}) has no lowering; cast to float first")
    if _dtype_of(b) != dt:
        b = R.astype(b, dt)
    return R.power(a, b)


@register_lowering(Op.PRELU)
def prelu(ctx, node):
    """y = x if x >= 0 else slope · x (slope broadcasts to x)."""
    R = _R()
    x, slope = ctx.input(node, 0), ctx.input(node, 1)
    neg = ctx.bb.emit(R.less(x, _scalar(0, _dtype_of(x))))
    return R.where(neg, ctx.bb.emit(R.multiply(x, slope)), x)


@register_lowering(Op.WHERE)
def where(ctx, node):
    """y = condition ? a : b (broadcasting all three)."""
    return _R().where(ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2))


# -- reductions and pooling -------------------------------------------------------------------
_REDUCE = {Op.REDUCE_MEAN: "mean", Op.REDUCE_SUM: "sum", Op.REDUCE_MAX: "max"}


@register_lowering(*_REDUCE)
def reduce(ctx, node):
    """y = mean / sum / max over ``axes`` (None: all), keeping reduced dims when keepdims."""
    axes = None if node.attrs.axes is None else list(node.attrs.axes)
    return getattr(_R(), _REDUCE[node.op])(ctx.input(node, 0), axis=axes,
                                           keepdims=node.attrs.keepdims)


@register_lowering(Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL)
def global_pool(ctx, node):
    """y[n, c, 1...] = mean / max of x[n, c] over every spatial position."""
    R = _R()
    x = ctx.input(node, 0)
    axes = list(range(2, len(out_shape(node))))
    fn = R.mean if node.op == Op.GLOBAL_AVGPOOL else R.max
    return fn(x, axis=axes, keepdims=True)


_POOL = {1: ("1d", "NCW"), 2: ("2d", "NCHW"), 3: ("3d", "NCDHW")}


def _pool_geometry(node, in_spatial):
    """(pad widths over every axis, output spatial shape): explicit pads plus the ceil-mode
    overhang the last window needs (the reference's ``_padded``)."""
    from ...runtime.kernels.pool import pool_output_shape

    a = node.attrs
    nd = len(in_spatial)
    out = pool_output_shape(in_spatial, a)
    width = [0, 0, 0, 0]
    begins, ends = [0, 0], [0, 0]
    for i in range(nd):
        span = (a.kernel_shape[i] - 1) * a.dilations[i] + 1
        need = (out[i] - 1) * a.strides[i] + span
        begins.append(a.pads[i])
        ends.append(max(a.pads[nd + i], need - in_spatial[i] - a.pads[i]))
    del width
    return begins, ends, out


def _pad_expr(ctx, x, begins, ends, value):
    if not any(begins) and not any(ends):
        return x
    widths = [w for pair in zip(begins, ends) for w in pair]
    return ctx.bb.emit(_R().nn.pad(x, widths, "constant", value))


@register_lowering(Op.MAXPOOL)
def maxpool(ctx, node):
    """y = max over each (dilated) window; padding (−inf / the dtype minimum) never wins.
    Behind an AMX conv the conv's kernel pools (:mod:`.fused_pool`)."""
    from .fused_pool import FusedPool, emit

    fused = ctx.fused.get(node.name)
    if isinstance(fused, FusedPool):
        return emit(ctx, fused, node)
    R = _R()
    if len(node.outputs) > 1:
        raise fail(node, "the Indices output has no lowering; drop it")
    x = ctx.input(node, 0)
    shape = tuple(int(d) for d in x.ty.shape)
    nd = len(shape) - 2
    if nd not in _POOL:
        raise fail(node, f"{nd}-d pooling has no lowering; only 1-d, 2-d and 3-d")
    dt = _dtype_of(x)
    low = -math.inf if dt.startswith("float") else int(np.iinfo(dt).min)
    begins, ends, _ = _pool_geometry(node, shape[2:])
    xp = _pad_expr(ctx, x, begins, ends, low)
    suffix, layout = _POOL[nd]
    a = node.attrs
    return getattr(R.nn, f"max_pool{suffix}")(xp, a.kernel_shape, a.strides, (0,) * (2 * nd),
                                              a.dilations, False, False, layout)


@register_lowering(Op.AVGPOOL)
def avgpool(ctx, node):
    """y = Σ window / count: count = window elements inside the input, or inside input + the
    explicit pads when ``count_include_pad``, never the ceil-mode overhang (compile-time
    counts; a window sum is the zero-padded average times the window size)."""
    R = _R()
    x = ctx.input(node, 0)
    shape = tuple(int(d) for d in x.ty.shape)
    nd = len(shape) - 2
    if nd not in _POOL:
        raise fail(node, f"{nd}-d pooling has no lowering; only 1-d, 2-d and 3-d")
    a = node.attrs
    begins, ends, out = _pool_geometry(node, shape[2:])
    xp = _pad_expr(ctx, x, begins, ends, 0.0)
    suffix, layout = _POOL[nd]
    mean = ctx.bb.emit(getattr(R.nn, f"avg_pool{suffix}")(
        xp, a.kernel_shape, a.strides, (0,) * (2 * nd), a.dilations, False, True, layout))
    # counts: the same windows over a 0/1 mask of the positions that count
    padded = [shape[2 + i] + begins[2 + i] + ends[2 + i] for i in range(nd)]
    mask = np.zeros(padded, dtype=np.float64)
    if a.count_include_pad:
        region = tuple(slice(0, shape[2 + i] + a.pads[i] + a.pads[nd + i]) for i in range(nd))
    else:
        region = tuple(slice(a.pads[i], a.pads[i] + shape[2 + i]) for i in range(nd))
    mask[region] = 1.0
    count = np.zeros(out, dtype=np.float64)
    for taps in np.ndindex(*a.kernel_shape):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                      for t, d, o, s in zip(taps, a.dilations, out, a.strides))
        count += mask[index]
    window = float(np.prod(a.kernel_shape))
    if np.all(count == window):
        return mean
    factor = (window / count).astype(_dtype_of(x)).reshape((1, 1) + tuple(out))
    return R.multiply(mean, ctx.constant(factor))


# -- data movement --------------------------------------------------------------------------
@register_lowering(Op.FLATTEN, Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE)
def reshape(ctx, node):
    """y = x reshaped to the node's (static) output shape."""
    return _R().reshape(ctx.input(node, 0), out_shape(node))


@register_lowering(Op.TRANSPOSE)
def transpose(ctx, node):
    """Output axis i is input axis perm[i]."""
    return _R().permute_dims(ctx.input(node, 0), list(node.attrs.perm))


@register_lowering(Op.CONCAT)
def concat(ctx, node):
    """y = concatenate(inputs, axis)."""
    from tvm import relax

    parts = [ctx.input(node, i) for i in range(len(node.inputs))]
    return _R().concat(relax.Tuple(parts), axis=node.attrs.axis)


@register_lowering(Op.SPLIT)
def split(ctx, node):
    """Pieces of ``sizes`` along ``axis`` (a tuple, one element per output)."""
    cuts = np.cumsum(node.attrs.sizes)[:-1].tolist()
    if not cuts:
        return (ctx.input(node, 0),)
    return _R().split(ctx.input(node, 0), [int(c) for c in cuts], axis=node.attrs.axis)


@register_lowering(Op.SLICE)
def slice_(ctx, node):
    """y = x[starts:ends:steps] per sliced axis, ONNX clamping (resolved at compile time into
    explicit in-range bounds; a negative step becomes ``take`` of explicit indices)."""
    R = _R()
    x = ctx.input(node, 0)
    shape = tuple(int(d) for d in x.ty.shape)
    a = node.attrs
    y = x
    for start, end, axis, step in zip(a.starts, a.ends, a.axes, a.steps):
        lo, stop, stp, _ = slice_range(shape[axis], int(start), int(end), int(step))
        idx = np.arange(lo, stop, stp, dtype=np.int64)
        if stp > 0 and idx.size:
            y = ctx.bb.emit(R.strided_slice(y, [axis], [int(lo)], [int(idx[-1]) + 1], [stp]))
        else:
            y = ctx.bb.emit(R.take(y, ctx.constant(idx), axis=axis))
    return y


@register_lowering(Op.GATHER)
def gather(ctx, node):
    """y = take(data, indices, axis), negative indices counted from the back."""
    R = _R()
    data = ctx.input(node, 0)
    axis = node.attrs.axis
    dim = int(data.ty.shape[axis])
    const = ctx.const_array(node, 1)
    if const is not None:
        idx = const.astype(np.int64)
        if np.any((idx < -dim) | (idx >= dim)):
            raise fail(node, f"constant indices out of range [-{dim}, {dim - 1}]")
        return R.take(data, ctx.constant(np.where(idx < 0, idx + dim, idx)), axis=axis)
    idx = ctx.input(node, 1)
    dt = _dtype_of(idx)
    wrapped = R.where(ctx.bb.emit(R.less(idx, _scalar(0, dt))),
                      ctx.bb.emit(R.add(idx, _scalar(dim, dt))), idx)
    return R.take(data, ctx.bb.emit(wrapped), axis=axis)


@register_lowering(Op.EXPAND)
def expand(ctx, node):
    """y = x broadcast (numpy rules) to the output shape."""
    return _R().broadcast_to(ctx.input(node, 0), out_shape(node))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge"}


@register_lowering(Op.PAD)
def pad(ctx, node):
    """Pad every axis by (begin, end) with constant ``value`` | reflect | edge; negative pads
    crop first."""
    R = _R()
    x = ctx.input(node, 0)
    a = node.attrs
    if a.mode not in _PAD_MODES:
        raise fail(node, f"pad mode {a.mode!r} has no lowering; use constant, reflect or edge")
    shape = tuple(int(d) for d in x.ty.shape)
    rank = len(shape)
    begins, ends = a.pads[:rank], a.pads[rank:]
    for i, (b, e) in enumerate(zip(begins, ends)):
        if b < 0 or e < 0:
            x = ctx.bb.emit(R.strided_slice(x, [i], [max(-b, 0)], [shape[i] - max(-e, 0)]))
    widths = [max(int(v), 0) for pair in zip(begins, ends) for v in pair]
    if not any(widths):
        return x
    value = float(a.value) if a.mode == "constant" else 0.0
    return R.nn.pad(x, widths, _PAD_MODES[a.mode], value)


_RESIZE_METHOD = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}
_ROUNDING = {"round_prefer_floor": "round_prefer_floor", "round_prefer_ceil": "round_prefer_ceil",
             "floor": "floor", "ceil": "ceil"}


@register_lowering(Op.RESIZE)
def resize(ctx, node):
    """ONNX Resize of the two spatial axes of an NCHW tensor (``relax.op.image.resize2d``)."""
    x = ctx.input(node, 0)
    a = node.attrs
    shape = tuple(int(d) for d in x.ty.shape)
    if len(shape) != 4 or tuple(a.sizes[:2]) != shape[:2]:
        raise fail(node, f"only 4-d NCHW resizes of H and W lower; got {shape} -> {a.sizes}")
    if a.mode not in _RESIZE_METHOD or a.nearest_mode not in _ROUNDING:
        raise fail(node, f"resize mode {a.mode!r} / nearest_mode {a.nearest_mode!r} has no "
                         "lowering")
    ctm = a.coordinate_transformation_mode
    if ctm not in ("align_corners", "tf_crop_and_resize"):
        for i in (2, 3):
            if a.scales and abs(a.scales[i] - a.sizes[i] / shape[i]) > 1e-6 * a.scales[i]:
                raise fail(node, f"scale {a.scales[i]} on axis {i} is not output/input size; "
                                 "TVM's resize derives scales from sizes")
    roi = None
    if ctm == "tf_crop_and_resize":
        if a.roi is None:
            raise fail(node, "tf_crop_and_resize needs roi")
        rank = len(shape)
        roi = (a.roi[2], a.roi[3], a.roi[rank + 2], a.roi[rank + 3])
    if a.mode == "nearest" and ctm != "tf_crop_and_resize":
        return _nearest_resize(ctx, node, x, shape)
    rounding = _ROUNDING[a.nearest_mode] if a.mode == "nearest" else ""
    return _R().image.resize2d(
        x, (int(a.sizes[2]), int(a.sizes[3])), roi=roi, layout="NCHW",
        method=_RESIZE_METHOD[a.mode], coordinate_transformation_mode=ctm,
        rounding_method=rounding, cubic_alpha=a.cubic_coeff_a,
        cubic_exclude=int(a.exclude_outside), extrapolation_value=a.extrapolation_value)


def _nearest_resize(ctx, node, x, shape):
    """Nearest resize as a gather through compile-time index tables:
    ``y[n, c, i, j] = x[n, c, rows[i], cols[j]]``, the tables computed by the reference
    kernel's own coordinate rule (:func:`lowbit.runtime.kernels.resize.original_coordinates`
    and its nearest tap), so the source pixels are the oracle's by construction. TVM's resize
    evaluates the float coordinate formula and an int64 ``ceil`` per element, which does not
    vectorize on AVX2 (measured on Zen 3, 2× of 56²·64: 2.1 ms vs onnxruntime 0.9 ms)."""
    from tvm import te

    from ...runtime.kernels.resize import _taps, original_coordinates

    a = node.attrs
    tables = []
    for axis in (2, 3):
        coords = original_coordinates(a, axis, shape[axis], int(a.sizes[axis]), len(shape))
        index, _ = _taps(a, coords, shape[axis])
        tables.append(np.ascontiguousarray(index[:, 0].astype(np.int32)))
    out = (shape[0], shape[1], int(a.sizes[2]), int(a.sizes[3]))

    def compute(xt, rows, cols):
        return te.compute(out, lambda n, c, i, j: xt[n, c, rows[i], cols[j]], name="resize")

    return ctx.emit_te(compute, x, *[ctx.constant(t) for t in tables], name=node.name)
