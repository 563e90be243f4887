"""Shape and dtype rules, one per op (rules-as-data: ``_RULES[op] -> fn(node)``).

Each rule reads ``node.inputs`` (their ``dtype``/``shape``) and ``node.attrs`` and returns one
``(dtype, shape)`` per output. Rules raise :class:`ShapeError` naming the node, the op and the
offending input when the inputs do not line up. ``Graph.add_node`` calls :func:`infer_node`; the
``infer_shapes`` pass re-runs every rule to re-check a whole graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .core import Node, Shape
from .dtypes import BOOL, FLOAT32, INT32, INT64, DType
from .errors import ShapeError
from .ops import Op, OpKind

InferFn = Callable[[Node], list[tuple[DType, Shape]]]
_RULES: dict[Op, InferFn] = {}


def rule(*ops: Op):
    """Register a shape/dtype rule for ``ops``."""

    def deco(fn: InferFn) -> InferFn:
        for op in ops:
            _RULES[op] = fn
        return fn

    return deco


def infer_node(node: Node) -> list[tuple[DType, Shape]]:
    """Output ``(dtype, shape)`` list of ``node`` from its inputs and attributes."""
    fn = _RULES.get(node.op)
    if fn is None:
        raise ShapeError(f"no shape rule for op {node.op.value} (node {node.name})")
    for i, v in enumerate(node.inputs):
        if v is not None and v.shape is None:
            raise ShapeError(f"{node.op.value} node {node.name}: input {i} (%{v.name}) has no "
                             "known shape; bind dynamic dims with input_shapes=")
    return fn(node)


def fail(node: Node, message: str) -> ShapeError:
    """A ShapeError that names node and op."""
    return ShapeError(f"{node.op.value} node '{node.name}': {message}")


def broadcast_shapes(node: Node, *shapes: Shape) -> Shape:
    """Numpy (multidirectional) broadcasting of ``shapes``; error names the node."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise fail(node, f"input shapes {[list(s) for s in shapes]} do not broadcast") from None


@rule(*(OpKind.UNARY - {Op.CAST}))
def _unary(node: Node):
    x = node.inputs[0]
    return [(x.dtype, x.shape)]


@rule(Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW)
def _binary(node: Node):
    a, b = node.inputs[:2]
    return [(a.dtype, broadcast_shapes(node, a.shape, b.shape))]


@rule(Op.PRELU)
def _prelu(node: Node):
    """Output has x's shape: the slope broadcasts unidirectionally to x (ONNX opset >= 7)."""
    x, slope = node.inputs[:2]
    try:
        ok = tuple(np.broadcast_shapes(x.shape, slope.shape)) == tuple(x.shape)
    except ValueError:
        ok = False
    if not ok:
        raise fail(node, f"slope {_name(node, 1)} of shape {list(slope.shape)} does not "
                         f"broadcast to input {_name(node, 0)} of shape {list(x.shape)}; "
                         "a per-channel slope needs shape (C, 1, ..., 1)")
    return [(x.dtype, x.shape)]


@rule(Op.EQUAL)
def _equal(node: Node):
    a, b = node.inputs[:2]
    return [(BOOL, broadcast_shapes(node, a.shape, b.shape))]


@rule(Op.WHERE)
def _where(node: Node):
    c, a, b = node.inputs
    return [(a.dtype, broadcast_shapes(node, c.shape, a.shape, b.shape))]


@rule(Op.CAST)
def _cast(node: Node):
    return [(node.attrs.to, node.inputs[0].shape)]


# -- helpers --------------------------------------------------------------------------------------
def _name(node: Node, i: int) -> str:
    v = node.inputs[i]
    return "None" if v is None else f"%{v.name}"


def _check_axis(node: Node, axis: int, rank: int, what: str = "axis") -> None:
    if not 0 <= axis < rank:
        raise fail(node, f"{what} {axis} is out of range for rank-{rank} input {_name(node, 0)}; "
                         f"use 0..{rank - 1}")


def _numel(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _spatial_check(node: Node, x: Shape, n_spatial: int, *tuples: tuple[str, tuple, int]) -> None:
    """Input rank and attribute lengths of an N-d spatial op (conv / pool)."""
    if len(x) < 3:
        raise fail(node, f"input {_name(node, 0)} has shape {list(x)}; expected (N, C, spatial...)")
    for what, values, count in tuples:
        if len(values) != count:
            raise fail(node, f"{what}={values} has {len(values)} entries but input "
                             f"{_name(node, 0)} has {n_spatial} spatial dims (need {count})")


# -- linear algebra -------------------------------------------------------------------------------
@rule(Op.CONV)
def _conv(node: Node):
    """out_i = floor((in_i + pad_begin_i + pad_end_i − ((k_i−1)·dilation_i + 1)) / stride_i) + 1;
    channels: C_in == w.shape[1] · group, C_out = w.shape[0] divisible by group."""
    x, w = node.inputs[:2]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    a = node.attrs
    n = len(x.shape) - 2
    _spatial_check(node, x.shape, n, ("strides", a.strides, n), ("pads", a.pads, 2 * n),
                   ("dilations", a.dilations, n))
    if len(w.shape) != n + 2:
        raise fail(node, f"weight {_name(node, 1)} has shape {list(w.shape)}; expected rank "
                         f"{n + 2} (C_out, C_in/group, k...) for input {_name(node, 0)}")
    c_in, c_out = x.shape[1], w.shape[0]
    if a.group < 1 or c_in != w.shape[1] * a.group:
        raise fail(node, f"input {_name(node, 0)} has {c_in} channels but weight "
                         f"{_name(node, 1)} expects {w.shape[1] * a.group} (group={a.group})")
    if c_out % a.group:
        raise fail(node, f"weight {_name(node, 1)} has {c_out} output channels, not divisible "
                         f"by group={a.group}")
    if b is not None and b.shape != (c_out,):
        raise fail(node, f"bias {_name(node, 2)} has shape {list(b.shape)}; expected [{c_out}]")
    spatial = []
    for i in range(n):
        k = (w.shape[2 + i] - 1) * a.dilations[i] + 1
        span = x.shape[2 + i] + a.pads[i] + a.pads[n + i] - k
        if span < 0 or a.strides[i] < 1:
            raise fail(node, f"kernel extent {k} exceeds padded input size "
                             f"{x.shape[2 + i] + a.pads[i] + a.pads[n + i]} on spatial axis {i} "
                             f"of {_name(node, 0)}")
        spatial.append(span // a.strides[i] + 1)
    return [(x.dtype, (x.shape[0], c_out, *spatial))]


@rule(Op.CONV_TRANSPOSE)
def _conv_transpose(node: Node):
    """out_i = stride_i·(in_i − 1) + output_padding_i + ((k_i−1)·dilation_i + 1)
    − pad_begin_i − pad_end_i; w is (C_in, C_out/group, k...), C_out = w.shape[1] · group."""
    x, w = node.inputs[:2]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    a = node.attrs
    n = len(x.shape) - 2
    _spatial_check(node, x.shape, n, ("strides", a.strides, n), ("pads", a.pads, 2 * n),
                   ("dilations", a.dilations, n), ("output_padding", a.output_padding, n))
    if len(w.shape) != n + 2:
        raise fail(node, f"weight {_name(node, 1)} has shape {list(w.shape)}; expected rank "
                         f"{n + 2} (C_in, C_out/group, k...) for input {_name(node, 0)}")
    if a.group < 1 or x.shape[1] != w.shape[0] or w.shape[0] % a.group:
        raise fail(node, f"input {_name(node, 0)} has {x.shape[1]} channels but weight "
                         f"{_name(node, 1)} expects {w.shape[0]} (group={a.group})")
    c_out = w.shape[1] * a.group
    if b is not None and b.shape != (c_out,):
        raise fail(node, f"bias {_name(node, 2)} has shape {list(b.shape)}; expected [{c_out}]")
    spatial = []
    for i in range(n):
        k = (w.shape[2 + i] - 1) * a.dilations[i] + 1
        size = (a.strides[i] * (x.shape[2 + i] - 1) + a.output_padding[i] + k
                - a.pads[i] - a.pads[n + i])
        if size < 1:
            raise fail(node, f"output size {size} on spatial axis {i} is not positive; "
                             "check pads")
        spatial.append(size)
    return [(x.dtype, (x.shape[0], c_out, *spatial))]


def matmul_shape(node: Node, a: Shape, b: Shape) -> Shape:
    """numpy.matmul shape rule: a 1-D left operand is (1, K) and a 1-D right operand (K, 1), the
    added axis dropped from the result; batch dims broadcast; inner dims must agree."""
    if not a or not b:
        raise fail(node, f"operands {_name(node, 0)}{list(a)} and {_name(node, 1)}{list(b)} "
                         "must have rank >= 1")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise fail(node, f"inner dims differ: {_name(node, 0)} is {list(a)} (K={a2[-1]}) but "
                         f"{_name(node, 1)} is {list(b)} (K={b2[-2]})")
    batch = broadcast_shapes(node, a2[:-2], b2[:-2])
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@rule(Op.MATMUL)
def _matmul(node: Node):
    a, b = node.inputs[:2]
    return [(a.dtype, matmul_shape(node, a.shape, b.shape))]


@rule(Op.MATMUL_INTEGER)
def _matmul_integer(node: Node):
    """Integer matmul, int32 accumulator output; zero points (inputs 2, 3) are scalars or per
    row (A) / per column (B)."""
    a, b = node.inputs[:2]
    for i, v in enumerate(node.inputs[:2]):
        if not v.dtype.is_integer:
            raise fail(node, f"operand {_name(node, i)} is {v.dtype}; MatMulInteger needs "
                             "integer operands")
    return [(INT32, matmul_shape(node, a.shape, b.shape))]


@rule(Op.GEMM)
def _gemm(node: Node):
    """Y(M, N) = alpha · op(A)(M, K) · op(B)(K, N) + beta · C, C unidirectionally broadcast."""
    a, b = node.inputs[:2]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    at = node.attrs
    for i, v in enumerate((a, b)):
        if len(v.shape) != 2:
            raise fail(node, f"operand {_name(node, i)} has shape {list(v.shape)}; Gemm needs "
                             "2-D operands")
    m, k = a.shape[::-1] if at.trans_a else a.shape
    k2, n = b.shape[::-1] if at.trans_b else b.shape
    if k != k2:
        raise fail(node, f"inner dims differ: op(A) of {_name(node, 0)} is [{m}, {k}] but op(B) "
                         f"of {_name(node, 1)} is [{k2}, {n}] (trans_a={at.trans_a}, "
                         f"trans_b={at.trans_b})")
    if c is not None and (len(c.shape) > 2 or any(
            d not in (1, want) for d, want in zip(c.shape[::-1], (n, m)))):
        raise fail(node, f"C {_name(node, 2)} of shape {list(c.shape)} does not broadcast to "
                         f"[{m}, {n}]")
    return [(a.dtype, (m, n))]


# -- normalization / softmax ----------------------------------------------------------------------
@rule(Op.BATCHNORM)
def _batchnorm(node: Node):
    """Same shape as x; scale, bias, mean, var are all (C,) with C = x.shape[1]."""
    x = node.inputs[0]
    if len(x.shape) < 2:
        raise fail(node, f"input {_name(node, 0)} has shape {list(x.shape)}; expected (N, C, ...)")
    c = x.shape[1]
    for i, what in enumerate(("scale", "bias", "mean", "var"), start=1):
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is None:
            raise fail(node, f"missing {what} input {i}")
        if v.shape != (c,):
            raise fail(node, f"{what} {_name(node, i)} has shape {list(v.shape)} but input "
                             f"{_name(node, 0)} has {c} channels; expected [{c}]")
    return [(x.dtype, x.shape)]


@rule(Op.LAYERNORM)
def _layernorm(node: Node):
    """Y has x's shape; the optional Mean / InvStdDev outputs (float32) keep axes < axis and have
    size 1 on axes [axis, rank). scale (and bias) broadcast to x.shape[axis:]."""
    x = node.inputs[0]
    r = len(x.shape)
    _check_axis(node, node.attrs.axis, r)
    normalized = x.shape[node.attrs.axis:]
    for i in (1, 2):
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is not None and broadcast_shapes(node, v.shape, normalized) != normalized:
            raise fail(node, f"input {_name(node, i)} of shape {list(v.shape)} does not "
                             f"broadcast to the normalized shape {list(normalized)}")
    stats = x.shape[:node.attrs.axis] + (1,) * len(normalized)
    return [(x.dtype, x.shape)] + [(FLOAT32, stats)] * (len(node.outputs) - 1)


@rule(Op.LRN)
def _lrn(node: Node):
    x = node.inputs[0]
    if len(x.shape) < 2:
        raise fail(node, f"input {_name(node, 0)} has shape {list(x.shape)}; expected (N, C, ...)")
    return [(x.dtype, x.shape)]


@rule(Op.SOFTMAX, Op.LOG_SOFTMAX)
def _softmax(node: Node):
    x = node.inputs[0]
    _check_axis(node, node.attrs.axis, len(x.shape))
    return [(x.dtype, x.shape)]


# -- reductions and pooling -----------------------------------------------------------------------
@rule(*OpKind.REDUCE)
def _reduce(node: Node):
    """axes None = every axis; reduced axes become 1 (keepdims) or disappear."""
    x = node.inputs[0]
    r = len(x.shape)
    axes = tuple(range(r)) if node.attrs.axes is None else node.attrs.axes
    if len(set(axes)) != len(axes):
        raise fail(node, f"repeated axes {axes}")
    for ax in axes:
        _check_axis(node, ax, r, "reduce axis")
    if node.attrs.keepdims:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [(x.dtype, shape)]


def pool_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                     dilation: int, ceil_mode: bool) -> int:
    """Pooled length of one axis. With k' = (kernel−1)·dilation + 1 and
    span = size + pad_begin + pad_end − k': floor mode gives span // stride + 1, ceil mode
    ceil(span / stride) + 1, minus one when the last window would start inside the right
    padding, i.e. when (out − 1)·stride >= size + pad_begin (ONNX / PyTorch rule)."""
    span = size + pad_begin + pad_end - ((kernel - 1) * dilation + 1)
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


@rule(Op.MAXPOOL, Op.AVGPOOL)
def _pool(node: Node):
    """(N, C, spatial...) -> (N, C, pooled...) by :func:`pool_output_size`; MaxPool's optional
    second output (Indices) is int64 of the same shape."""
    x = node.inputs[0]
    a = node.attrs
    n = len(x.shape) - 2
    _spatial_check(node, x.shape, n, ("kernel_shape", a.kernel_shape, n),
                   ("strides", a.strides, n), ("pads", a.pads, 2 * n),
                   ("dilations", a.dilations, n))
    spatial = []
    for i in range(n):
        k = (a.kernel_shape[i] - 1) * a.dilations[i] + 1
        padded = x.shape[2 + i] + a.pads[i] + a.pads[n + i]
        if k > padded or a.strides[i] < 1:
            raise fail(node, f"window extent {k} exceeds padded input size {padded} on spatial "
                             f"axis {i} of {_name(node, 0)}")
        spatial.append(pool_output_size(x.shape[2 + i], a.kernel_shape[i], a.strides[i],
                                        a.pads[i], a.pads[n + i], a.dilations[i], a.ceil_mode))
    shape = (*x.shape[:2], *spatial)
    return [(x.dtype, shape)] + [(INT64, shape)] * (len(node.outputs) - 1)


@rule(Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL)
def _global_pool(node: Node):
    """(N, C, spatial...) -> (N, C, 1, ..., 1)."""
    x = node.inputs[0]
    if len(x.shape) < 3:
        raise fail(node, f"input {_name(node, 0)} has shape {list(x.shape)}; expected (N, C, "
                         "spatial...)")
    return [(x.dtype, (*x.shape[:2], *(1,) * (len(x.shape) - 2)))]


# -- data movement --------------------------------------------------------------------------------
@rule(Op.FLATTEN)
def _flatten(node: Node):
    """(prod(shape[:axis]), prod(shape[axis:])), axis in [0, rank]."""
    x = node.inputs[0]
    ax = node.attrs.axis
    if not 0 <= ax <= len(x.shape):
        raise fail(node, f"axis {ax} is out of range for rank-{len(x.shape)} input "
                         f"{_name(node, 0)}; use 0..{len(x.shape)}")
    return [(x.dtype, (_numel(x.shape[:ax]), _numel(x.shape[ax:])))]


@rule(Op.RESHAPE)
def _reshape(node: Node):
    """Output is attrs.shape; element counts must agree (no 0 / −1 placeholders)."""
    x = node.inputs[0]
    shape = node.attrs.shape
    if any(d < 0 for d in shape):
        raise fail(node, f"shape {list(shape)} has a negative dim; the importer must resolve "
                         "-1 / 0 placeholders")
    if _numel(shape) != _numel(x.shape):
        raise fail(node, f"cannot reshape {_name(node, 0)} of shape {list(x.shape)} "
                         f"({_numel(x.shape)} elements) to {list(shape)} "
                         f"({_numel(shape)} elements)")
    return [(x.dtype, tuple(shape))]


@rule(Op.TRANSPOSE)
def _transpose(node: Node):
    """Output dim i = input dim perm[i]."""
    x = node.inputs[0]
    perm = node.attrs.perm
    if sorted(perm) != list(range(len(x.shape))):
        raise fail(node, f"perm {list(perm)} is not a permutation of the "
                         f"{len(x.shape)} axes of {_name(node, 0)}")
    return [(x.dtype, tuple(x.shape[p] for p in perm))]


@rule(Op.CONCAT)
def _concat(node: Node):
    """Same rank and dtype everywhere; dims equal except on ``axis``, which adds up."""
    first = node.inputs[0]
    r = len(first.shape)
    ax = node.attrs.axis
    _check_axis(node, ax, r)
    total = 0
    for i, v in enumerate(node.inputs):
        if v.dtype != first.dtype:
            raise fail(node, f"input {_name(node, i)} is {v.dtype} but {_name(node, 0)} is "
                             f"{first.dtype}; insert a Cast")
        if len(v.shape) != r or any(d != e for j, (d, e) in enumerate(zip(v.shape, first.shape))
                                    if j != ax):
            raise fail(node, f"input {_name(node, i)} has shape {list(v.shape)} but "
                             f"{_name(node, 0)} has {list(first.shape)}; only axis {ax} may "
                             "differ")
        total += v.shape[ax]
    return [(first.dtype, tuple(total if j == ax else d for j, d in enumerate(first.shape)))]


@rule(Op.SPLIT)
def _split(node: Node):
    """One output per entry of ``sizes``; the sizes must add up to the split dim."""
    x = node.inputs[0]
    ax, sizes = node.attrs.axis, node.attrs.sizes
    _check_axis(node, ax, len(x.shape))
    if sum(sizes) != x.shape[ax] or any(s < 0 for s in sizes):
        raise fail(node, f"sizes {list(sizes)} do not add up to dim {x.shape[ax]} of "
                         f"{_name(node, 0)} on axis {ax}")
    if len(sizes) != len(node.outputs):
        raise fail(node, f"{len(sizes)} sizes but {len(node.outputs)} outputs")
    return [(x.dtype, tuple(s if j == ax else d for j, d in enumerate(x.shape)))
            for s in sizes]


def slice_range(dim: int, start: int, end: int, step: int) -> tuple[int, int, int, int]:
    """ONNX Slice normalization of one axis of size ``dim`` -> ``(start, stop, step, length)``.

    Negative ``start``/``end`` count from the end (``+ dim``). Then, for step > 0 both are clamped
    to [0, dim]; for step < 0, start to [0, dim − 1] and end to [−1, dim − 1]. The selected
    indices are ``start + i·step`` for i < length = max(0, ceil((stop − start) / step)).
    Note ``stop`` may be −1 for a negative step ("past index 0"): index numpy with
    ``slice(start, None if stop < 0 else stop, step)`` or ``start + step · arange(length)``."""
    if step == 0:
        raise ValueError("slice step must be non-zero")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
    else:
        start = min(max(start, 0), dim - 1)
        end = min(max(end, -1), dim - 1)
    length = max(0, -(-(end - start) // step))
    return start, end, step, length


@rule(Op.SLICE)
def _slice(node: Node):
    """Each sliced axis gets the length of :func:`slice_range`; other axes are kept."""
    x = node.inputs[0]
    a = node.attrs
    if not len(a.starts) == len(a.ends) == len(a.axes) == len(a.steps):
        raise fail(node, f"starts/ends/axes/steps have different lengths "
                         f"({len(a.starts)}/{len(a.ends)}/{len(a.axes)}/{len(a.steps)})")
    if len(set(a.axes)) != len(a.axes):
        raise fail(node, f"repeated axes {list(a.axes)}")
    shape = list(x.shape)
    for start, end, ax, step in zip(a.starts, a.ends, a.axes, a.steps):
        _check_axis(node, ax, len(x.shape), "slice axis")
        if step == 0:
            raise fail(node, f"step 0 on axis {ax}; steps must be non-zero")
        shape[ax] = slice_range(x.shape[ax], start, end, step)[3]
    return [(x.dtype, tuple(shape))]


@rule(Op.SQUEEZE)
def _squeeze(node: Node):
    """Drop ``axes`` (of the input), each of which must have size 1 (empty axes: no-op; the
    importer resolves ONNX's "all size-1 axes" default)."""
    x = node.inputs[0]
    axes = node.attrs.axes
    if len(set(axes)) != len(axes):
        raise fail(node, f"repeated axes {list(axes)}")
    for ax in axes:
        _check_axis(node, ax, len(x.shape), "squeeze axis")
        if x.shape[ax] != 1:
            raise fail(node, f"cannot squeeze axis {ax} of {_name(node, 0)} with shape "
                             f"{list(x.shape)}: its size is {x.shape[ax]}, not 1")
    return [(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


@rule(Op.UNSQUEEZE)
def _unsqueeze(node: Node):
    """Insert size-1 dims at ``axes`` of the output (rank = input rank + len(axes))."""
    x = node.inputs[0]
    axes = node.attrs.axes
    r = len(x.shape) + len(axes)
    if len(set(axes)) != len(axes):
        raise fail(node, f"repeated axes {list(axes)}")
    for ax in axes:
        _check_axis(node, ax, r, "unsqueeze axis (of the output)")
    rest = iter(x.shape)
    return [(x.dtype, tuple(1 if i in axes else next(rest) for i in range(r)))]


@rule(Op.GATHER)
def _gather(node: Node):
    """data.shape[:axis] + indices.shape + data.shape[axis+1:]; constant indices are range
    checked against [−dim, dim)."""
    data, idx = node.inputs[:2]
    ax = node.attrs.axis
    _check_axis(node, ax, len(data.shape))
    if not idx.dtype.is_integer:
        raise fail(node, f"indices {_name(node, 1)} are {idx.dtype}; expected int32 or int64")
    dim = data.shape[ax]
    if idx.is_const and idx.const.size and (idx.const.min() < -dim or idx.const.max() >= dim):
        raise fail(node, f"constant indices {_name(node, 1)} range "
                         f"[{idx.const.min()}, {idx.const.max()}] falls outside [-{dim}, {dim}) "
                         f"on axis {ax} of {_name(node, 0)}")
    return [(data.dtype, (*data.shape[:ax], *idx.shape, *data.shape[ax + 1:]))]


@rule(Op.EXPAND)
def _expand(node: Node):
    """Bidirectional (numpy) broadcast of the input shape with ``attrs.shape``."""
    x = node.inputs[0]
    return [(x.dtype, broadcast_shapes(node, x.shape, tuple(node.attrs.shape)))]


@rule(Op.PAD)
def _pad(node: Node):
    """out_i = in_i + pad_begin_i + pad_end_i (negative pads crop); must stay >= 0."""
    x = node.inputs[0]
    r = len(x.shape)
    pads = node.attrs.pads
    if len(pads) != 2 * r:
        raise fail(node, f"pads {list(pads)} has {len(pads)} entries; input {_name(node, 0)} of "
                         f"rank {r} needs {2 * r}")
    if node.attrs.mode not in ("constant", "reflect", "edge", "wrap"):
        raise fail(node, f"unknown mode {node.attrs.mode!r}; use constant/reflect/edge/wrap")
    shape = tuple(d + pads[i] + pads[r + i] for i, d in enumerate(x.shape))
    if any(d < 0 for d in shape):
        raise fail(node, f"pads {list(pads)} crop {_name(node, 0)} of shape {list(x.shape)} "
                         f"below zero: {list(shape)}")
    return [(x.dtype, shape)]


@rule(Op.RESIZE)
def _resize(node: Node):
    """Output shape is ``attrs.sizes`` (one entry per input axis)."""
    x = node.inputs[0]
    sizes = node.attrs.sizes
    if len(sizes) != len(x.shape) or any(d < 0 for d in sizes):
        raise fail(node, f"sizes {list(sizes)} do not match rank-{len(x.shape)} input "
                         f"{_name(node, 0)} {list(x.shape)}")
    return [(x.dtype, tuple(sizes))]


# -- quantization ---------------------------------------------------------------------------------
def _check_qparams(node: Node) -> None:
    """scale (input 1) and zero point (input 2) are scalars (per tensor), 1-D of length
    x.shape[axis] (per channel), or blocked (same rank as x)."""
    x = node.inputs[0]
    a = node.attrs
    scale = node.inputs[1] if len(node.inputs) > 1 else None
    if scale is None:
        raise fail(node, "missing scale input 1")
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if zp is not None and zp.shape != scale.shape:
        raise fail(node, f"zero point {_name(node, 2)} has shape {list(zp.shape)} but scale "
                         f"{_name(node, 1)} has {list(scale.shape)}")
    if len(scale.shape) <= 1 and _numel(scale.shape) == 1 and a.block_size == 0:
        return  # per tensor (ONNX ignores axis then)
    if a.axis is None:
        if _numel(scale.shape) != 1:
            raise fail(node, f"scale {_name(node, 1)} has shape {list(scale.shape)} but axis is "
                             "None (per tensor); set axis for per-channel scales")
        return
    _check_axis(node, a.axis, len(x.shape))
    if a.block_size > 0:
        want = tuple(-(-d // a.block_size) if i == a.axis else d for i, d in enumerate(x.shape))
    else:
        want = (x.shape[a.axis],)
    if scale.shape != want:
        raise fail(node, f"scale {_name(node, 1)} has shape {list(scale.shape)}; expected "
                         f"{list(want)} for axis={a.axis}, block_size={a.block_size}")


@rule(Op.QUANTIZE)
def _quantize(node: Node):
    """Output has x's shape and ``attrs.dtype``."""
    _check_qparams(node)
    return [(node.attrs.dtype, node.inputs[0].shape)]


@rule(Op.DEQUANTIZE)
def _dequantize(node: Node):
    """Output has x's shape and is float32."""
    _check_qparams(node)
    return [(FLOAT32, node.inputs[0].shape)]


@rule(Op.FAKE_QUANT)
def _fake_quant(node: Node):
    x = node.inputs[0]
    if not x.dtype.is_float:
        raise fail(node, f"input %{x.name} is {x.dtype}; FakeQuant takes a float tensor")
    return [(x.dtype, x.shape)]


# -- integer ops (fold_scales) --------------------------------------------------------------------
def _check_requant(node: Node, rq, out_rank: int, channels: int | None) -> None:
    """A Requant's multiplier count matches its channel axis; lo <= hi within the out dtype."""
    if not rq.out_dtype.is_integer:
        raise fail(node, f"requant output dtype {rq.out_dtype} is not an integer type")
    if len(rq.multiplier) != len(rq.shift):
        raise fail(node, "requant multiplier and shift have different lengths")
    if rq.axis is not None:
        _check_axis(node, rq.axis, out_rank, "requant channel axis")
        if rq.multiplier and channels is not None and len(rq.multiplier) not in (1, channels):
            raise fail(node, f"{len(rq.multiplier)} requant multipliers for {channels} channels "
                             f"on axis {rq.axis}")
    elif len(rq.multiplier) > 1:
        raise fail(node, f"{len(rq.multiplier)} requant multipliers but no channel axis")
    if not (rq.out_dtype.min <= rq.lo <= rq.hi <= rq.out_dtype.max):
        raise fail(node, f"requant clamp [{rq.lo}, {rq.hi}] is empty or outside "
                         f"{rq.out_dtype}")


def _check_int_input(node: Node, i: int) -> None:
    v = node.inputs[i]
    if not v.dtype.is_integer:
        raise fail(node, f"input {_name(node, i)} is {v.dtype}; {node.op.value} takes integer "
                         "codes (insert QuantizeLinear)")


@rule(Op.QCONV)
def _qconv(node: Node):
    """Shape of Conv / ConvTranspose (``transposed``); dtype ``requant.out_dtype``."""
    _check_int_input(node, 0)
    _check_int_input(node, 1)
    shape = (_conv_transpose if node.attrs.transposed else _conv)(node)[0][1]
    rq = node.attrs.requant
    _check_requant(node, rq, len(shape), shape[rq.axis] if rq.axis is not None else None)
    return [(rq.out_dtype, shape)]


@rule(Op.QMATMUL)
def _qmatmul(node: Node):
    """numpy.matmul shape of (x, w) with a 2-D (K, N) weight; dtype ``requant.out_dtype``."""
    _check_int_input(node, 0)
    _check_int_input(node, 1)
    x, w = node.inputs[:2]
    if len(w.shape) != 2:
        raise fail(node, f"weight {_name(node, 1)} has shape {list(w.shape)}; expected (K, N)")
    shape = matmul_shape(node, x.shape, w.shape)
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and b.shape != (w.shape[1],):
        raise fail(node, f"bias {_name(node, 2)} has shape {list(b.shape)}; "
                         f"expected [{w.shape[1]}]")
    rq = node.attrs.requant
    _check_requant(node, rq, len(shape), shape[rq.axis] if rq.axis is not None else None)
    return [(rq.out_dtype, shape)]


@rule(Op.QADD)
def _qadd(node: Node):
    """Broadcast of both integer inputs; ``a`` and ``b`` share shift, output zero point,
    dtype and clamp."""
    _check_int_input(node, 0)
    _check_int_input(node, 1)
    a, b = node.attrs.a, node.attrs.b
    shape = broadcast_shapes(node, node.inputs[0].shape, node.inputs[1].shape)
    shifts = set(a.shift) | set(b.shift)
    if len(shifts) > 1 or (a.out_zero_point, a.out_dtype, a.lo, a.hi) != (
            b.out_zero_point, b.out_dtype, b.lo, b.hi):
        raise fail(node, "QAdd terms a and b must share shift, output zero point, dtype and "
                         "clamp")
    for rq in (a, b):
        if not rq.multiplier:
            raise fail(node, "QAdd needs a multiplier for each input")
        _check_requant(node, rq, len(shape), shape[rq.axis] if rq.axis is not None else None)
    return [(a.out_dtype, shape)]


@rule(Op.REQUANTIZE)
def _requantize(node: Node):
    """Same shape as the input; dtype ``requant.out_dtype``. The input is integer, or float
    for a binary requant (the float->binary boundary, y = sign(x))."""
    x = node.inputs[0]
    rq = node.attrs.requant
    if not (rq.binary and x.dtype.is_float):
        _check_int_input(node, 0)
    _check_requant(node, rq, len(x.shape), x.shape[rq.axis] if rq.axis is not None else None)
    return [(rq.out_dtype, x.shape)]
