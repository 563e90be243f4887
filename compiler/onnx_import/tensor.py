"""Data-movement converters: Flatten, Reshape, Transpose, Concat, Split, Slice, Squeeze,
Unsqueeze, Gather, Expand, Pad. Every ONNX parameter tensor is resolved into the IR attrs."""

from __future__ import annotations

import numpy as np

from ...ir.attrs import (
    AxesAttrs,
    ConcatAttrs,
    ExpandAttrs,
    FlattenAttrs,
    GatherAttrs,
    PadAttrs,
    ReshapeAttrs,
    SliceAttrs,
    SplitAttrs,
    TransposeAttrs,
)
from ...ir.errors import ShapeError
from ...ir.ops import Op
from .registry import converter, get_attr

_LATEST = (21, 23, 24, 25)


@converter("Flatten", versions=(1, 9, 11, 13) + _LATEST)
def convert_flatten(ctx):
    """(prod(shape[:axis]), prod(shape[axis:])), axis in [−rank, rank], default 1."""
    x = ctx.input(0)
    axis = int(ctx.attr("axis", 1))
    axis = axis + x.rank if axis < 0 else axis
    if not 0 <= axis <= x.rank:
        raise ShapeError(f"Flatten node '{ctx.name}': axis {ctx.attr('axis')} out of range for "
                         f"rank {x.rank}")
    return ctx.emit(Op.FLATTEN, [x], FlattenAttrs(axis=axis))


def resolve_reshape(ctx, in_shape, shape, allowzero: bool) -> tuple[int, ...]:
    """Explicit target shape: 0 copies the input dim (unless allowzero), −1 is inferred."""
    out = [int(d) for d in shape]
    for i, d in enumerate(out):
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                raise ShapeError(f"Reshape node '{ctx.name}': shape {list(shape)} copies dim {i} "
                                 f"(0) but the input has rank {len(in_shape)}")
            out[i] = int(in_shape[i])
    total = int(np.prod(in_shape, dtype=np.int64))
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ShapeError(f"Reshape node '{ctx.name}': invalid target shape {list(shape)}")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise ShapeError(f"Reshape node '{ctx.name}': cannot reshape {list(in_shape)} to "
                             f"{list(shape)}")
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != total:
        raise ShapeError(f"Reshape node '{ctx.name}': cannot reshape {list(in_shape)} "
                         f"({total} elements) to {list(shape)}")
    return tuple(out)


@converter("Reshape", versions=(5, 13, 14, 19) + _LATEST)
def convert_reshape(ctx):
    """Reshape with the constant ``shape`` input resolved (0 and −1 placeholders)."""
    x = ctx.input(0)
    shape = ctx.const(1, "shape")
    out = resolve_reshape(ctx, x.shape, shape, bool(ctx.attr("allowzero", 0)))
    return ctx.emit(Op.RESHAPE, [x], ReshapeAttrs(shape=out))


@converter("Transpose", versions=(1, 13) + _LATEST)
def convert_transpose(ctx):
    """perm default: reversed axes."""
    x = ctx.input(0)
    perm = ctx.attr("perm", None)
    perm = tuple(range(x.rank))[::-1] if perm is None else tuple(
        ctx.axis(p, x.rank, "perm entry") for p in perm)
    return ctx.emit(Op.TRANSPOSE, [x], TransposeAttrs(perm=perm))


@converter("Concat", versions=(4, 11, 13))
def convert_concat(ctx):
    """Concat along a normalized axis; a single input is returned unchanged."""
    inputs = [v for v in ctx.inputs() if v is not None]
    axis = ctx.axis(ctx.attr("axis", 1), inputs[0].rank)
    if len(inputs) == 1:
        return [inputs[0]]
    return ctx.emit(Op.CONCAT, inputs, ConcatAttrs(axis=axis))


@converter("Split", versions=(2, 11, 13, 18))
def convert_split(ctx):
    """Sizes from the ``split`` attribute (< 13) or input (>= 13); otherwise equal pieces, one
    per output (opset 18 ``num_outputs``: ceil(dim / n) each, the last one smaller)."""
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", 0), x.rank)
    dim = x.shape[axis]
    if ctx.version >= 13:
        sizes = ctx.const(1, "split")
    else:
        sizes = ctx.attr("split", None)
    n = len(ctx.node.output)
    if sizes is not None and len(sizes):
        sizes = tuple(int(s) for s in sizes)
    else:
        n = int(ctx.attr("num_outputs", n))
        if ctx.version >= 18 and ctx.attr("num_outputs", None) is not None:
            chunk = -(-dim // n)
            sizes = tuple(min(chunk, max(dim - chunk * i, 0)) for i in range(n))
        else:
            if dim % n:
                raise ShapeError(f"Split node '{ctx.name}': dim {dim} of axis {axis} does not "
                                 f"split into {n} equal parts; give 'split' sizes")
            sizes = (dim // n,) * n
    if sum(sizes) != dim:
        raise ShapeError(f"Split node '{ctx.name}': sizes {list(sizes)} do not add up to dim "
                         f"{dim} of axis {axis}")
    return ctx.emit(Op.SPLIT, [x], SplitAttrs(axis=axis, sizes=sizes), n_outputs=len(sizes))


@converter("Slice", versions=(1, 10, 11, 13))
def convert_slice(ctx):
    """starts/ends/axes/steps from attributes (< 10) or constant inputs; axes default
    0..len(starts)−1, steps default 1; ONNX clamping is left to the op (INT64 sentinels kept)."""
    x = ctx.input(0)
    if ctx.version < 10:
        starts, ends, axes = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes", None)
        steps = None
    else:
        starts, ends = ctx.const(1, "starts"), ctx.const(2, "ends")
        axes, steps = ctx.const(3, "axes"), ctx.const(4, "steps")
    starts = tuple(int(s) for s in starts)
    ends = tuple(int(e) for e in ends)
    axes = tuple(range(len(starts))) if axes is None else tuple(
        ctx.axis(a, x.rank, "axes entry") for a in axes)
    steps = (1,) * len(starts) if steps is None else tuple(int(s) for s in steps)
    if 0 in steps:
        raise ShapeError(f"Slice node '{ctx.name}': steps must be non-zero, got {list(steps)}")
    attrs = SliceAttrs(starts=starts, ends=ends, axes=axes, steps=steps)
    return ctx.emit(Op.SLICE, [x], attrs)


def _axes(ctx, since_input: int = 13):
    return ctx.const(1, "axes") if ctx.version >= since_input else ctx.attr("axes", None)


@converter("Squeeze", versions=(1, 11, 13) + _LATEST)
def convert_squeeze(ctx):
    """No axes = every dim of size 1."""
    x = ctx.input(0)
    axes = _axes(ctx)
    if axes is None or len(axes) == 0:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    else:
        axes = tuple(sorted({ctx.axis(a, x.rank, "axes entry") for a in axes}))
    return ctx.emit(Op.SQUEEZE, [x], AxesAttrs(axes=axes))


@converter("Unsqueeze", versions=(1, 11, 13) + _LATEST)
def convert_unsqueeze(ctx):
    """Axes refer to the output (rank + len(axes)); normalized and sorted."""
    x = ctx.input(0)
    axes = _axes(ctx)
    rank = x.rank + len(axes)
    axes = tuple(sorted({ctx.axis(a, rank, "axes entry") for a in axes}))
    return ctx.emit(Op.UNSQUEEZE, [x], AxesAttrs(axes=axes))


@converter("Gather", versions=(1, 11, 13))
def convert_gather(ctx):
    """numpy.take(data, indices, axis) with a normalized axis."""
    x = ctx.input(0)
    attrs = GatherAttrs(axis=ctx.axis(ctx.attr("axis", 0), x.rank))
    return ctx.emit(Op.GATHER, [x, ctx.input(1)], attrs)


@converter("Expand", versions=(8, 13))
def convert_expand(ctx):
    """Output shape = numpy broadcast of the input shape and the ``shape`` input."""
    x = ctx.input(0)
    shape = tuple(int(d) for d in ctx.const(1, "shape"))
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(tuple(x.shape), shape))
    except ValueError:
        raise ShapeError(f"Expand node '{ctx.name}': input shape {list(x.shape)} does not "
                         f"broadcast with shape {list(shape)}") from None
    return ctx.emit(Op.EXPAND, [x], ExpandAttrs(shape=out))


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def check_pad(node, version) -> str | None:
    """constant / reflect / edge (and wrap from opset 19)."""
    mode = get_attr(node, "mode", "constant")
    allowed = PAD_MODES if version >= 19 else PAD_MODES[:3]
    if mode not in allowed:
        return f"mode={mode!r} (lowbit supports {', '.join(allowed)})"
    return None


@converter("Pad", versions=(2, 11, 13, 18, 19) + _LATEST, check=check_pad)
def convert_pad(ctx):
    """pads from the attribute (< 11) or the constant input; opset 18
    ``axes`` scatter the given pads onto those axes (others 0)."""
    x = ctx.input(0)
    rank = x.rank
    if ctx.version < 11:
        pads = ctx.attr("pads")
        value = float(ctx.attr("value", 0.0))
    else:
        pads = ctx.const(1, "pads")
        raw = ctx.const(2, "constant_value")
        value = 0 if raw is None or raw.size == 0 else raw.reshape(-1)[0].item()
        axes = ctx.const(3, "axes") if ctx.version >= 18 else None
        if axes is not None:
            axes = [ctx.axis(a, rank, "axes entry") for a in axes]
            full = [0] * (2 * rank)
            for j, a in enumerate(axes):
                full[a] = int(pads[j])
                full[a + rank] = int(pads[j + len(axes)])
            pads = full
    pads = tuple(int(p) for p in pads)
    if len(pads) != 2 * rank:
        raise ShapeError(f"Pad node '{ctx.name}': {len(pads)} pads for an input of rank {rank} "
                         f"(need {2 * rank})")
    attrs = PadAttrs(pads=pads, mode=ctx.attr("mode", "constant"), value=value)
    return ctx.emit(Op.PAD, [x], attrs)
