"""Data-movement reference kernels: Flatten, Reshape, Transpose, Concat, Split, Slice, Squeeze,
Unsqueeze, Gather, Expand, Pad."""

from __future__ import annotations

import math

import numpy as np

from ...ir import Op
from ...ir.infer import slice_range
from . import fail, kernel


@kernel(Op.FLATTEN)
def flatten(node, inputs):
    """y = x reshaped to (prod(shape[:axis]), prod(shape[axis:]))."""
    x = inputs[0]
    axis = node.attrs.axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@kernel(Op.RESHAPE)
def reshape(node, inputs):
    """y = x reshaped to the explicit ``shape``."""
    return [inputs[0].reshape(node.attrs.shape)]


@kernel(Op.TRANSPOSE)
def transpose(node, inputs):
    """Output axis i is input axis perm[i]."""
    return [np.ascontiguousarray(np.transpose(inputs[0], node.attrs.perm))]


@kernel(Op.CONCAT)
def concat(node, inputs):
    """Join the inputs along ``axis``."""
    return [np.concatenate([x for x in inputs if x is not None], axis=node.attrs.axis)]


@kernel(Op.SPLIT)
def split(node, inputs):
    """Cut along ``axis`` into consecutive pieces of ``sizes``."""
    x = inputs[0]
    axis, sizes = node.attrs.axis, node.attrs.sizes
    if sum(sizes) != x.shape[axis]:
        raise fail(node, f"split sizes {list(sizes)} do not sum to dim {x.shape[axis]} of "
                         f"axis {axis}")
    cuts = np.cumsum(sizes)[:-1]
    return [np.ascontiguousarray(p) for p in np.split(x, cuts, axis=axis)]


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice bounds for one axis as a Python slice (clamping rules:
    :func:`lowbit.ir.infer.slice_range`; a stop of −1 means "before the first element")."""
    start, stop, step, _ = slice_range(dim, start, end, step)
    return slice(start, None if stop < 0 else stop, step)


@kernel(Op.SLICE)
def slice_(node, inputs):
    """y = x[starts:ends:steps] per sliced axis, ONNX clamping."""
    x = inputs[0]
    a = node.attrs
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(a.starts, a.ends, a.axes, a.steps):
        index[axis] = slice_bounds(int(start), int(end), int(step), x.shape[axis])
    return [np.ascontiguousarray(x[tuple(index)])]


@kernel(Op.SQUEEZE)
def squeeze(node, inputs):
    """Drop the size-1 ``axes``."""
    x = inputs[0]
    bad = [a for a in node.attrs.axes if x.shape[a] != 1]
    if bad:
        raise fail(node, f"cannot squeeze axes {bad} of shape {list(x.shape)}: size is not 1")
    return [np.squeeze(x, axis=tuple(node.attrs.axes))]


@kernel(Op.UNSQUEEZE)
def unsqueeze(node, inputs):
    """Insert size-1 dims at ``axes`` (positions in the output)."""
    return [np.expand_dims(inputs[0], axis=tuple(sorted(node.attrs.axes)))]


@kernel(Op.GATHER)
def gather(node, inputs):
    """y = take(data, indices, axis) with negative indices counted from the back."""
    data, indices = inputs
    axis = node.attrs.axis
    dim = data.shape[axis]
    idx = indices.astype(np.int64)
    bad = (idx < -dim) | (idx >= dim)
    if np.any(bad):
        raise fail(node, f"index {int(idx[bad].flat[0])} out of range [-{dim}, {dim - 1}] on "
                         f"axis {axis}")
    return [np.take(data, np.where(idx < 0, idx + dim, idx), axis=axis)]


@kernel(Op.EXPAND)
def expand(node, inputs):
    """y = x broadcast (numpy rules) with ``shape``."""
    x = inputs[0]
    shape = np.broadcast_shapes(x.shape, tuple(node.attrs.shape))
    return [np.array(np.broadcast_to(x, shape))]


@kernel(Op.PAD)
def pad(node, inputs):
    """Pad every axis by (begin, end): constant ``value`` | reflect (mirror without the edge) |
    edge (repeat the edge) | wrap (periodic). Negative pads crop (applied first)."""
    x = inputs[0]
    a = node.attrs
    rank = x.ndim
    begins, ends = a.pads[:rank], a.pads[rank:]
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0))
                 for i, (b, e) in enumerate(zip(begins, ends)))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if a.mode == "constant":
        return [np.pad(x, width, mode="constant", constant_values=x.dtype.type(a.value))]
    if a.mode not in ("reflect", "edge", "wrap"):
        raise fail(node, f"unknown pad mode {a.mode!r}; expected constant, reflect, edge or wrap")
    for i, (b, e) in enumerate(width):
        if (b or e) and x.shape[i] == 0:
            raise fail(node, f"cannot {a.mode}-pad axis {i} of size 0")
    return [np.pad(x, width, mode=a.mode)]
