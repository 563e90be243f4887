"""ReduceMean / ReduceSum / ReduceMax reference kernels (axes None = every axis)."""

from __future__ import annotations

import numpy as np

from ...ir import Op
from . import kernel


def _axes(node, x: np.ndarray) -> tuple[int, ...]:
    axes = node.attrs.axes
    return tuple(range(x.ndim)) if axes is None else tuple(axes)


@kernel(Op.REDUCE_SUM)
def reduce_sum(node, inputs):
    """y = Σ x over ``axes`` in x's dtype (integers wrap); the empty sum is 0."""
    x = inputs[0]
    y = np.sum(x, axis=_axes(node, x), keepdims=node.attrs.keepdims, dtype=x.dtype)
    return [np.asarray(y)]


@kernel(Op.REDUCE_MEAN)
def reduce_mean(node, inputs):
    """y = Σ x / count over ``axes``; integer inputs truncate toward zero like ONNX Runtime."""
    x = inputs[0]
    axes = _axes(node, x)
    if x.dtype.kind == "f":
        y = np.mean(x, axis=axes, keepdims=node.attrs.keepdims).astype(x.dtype)
    else:
        total = np.sum(x.astype(np.int64), axis=axes, keepdims=node.attrs.keepdims)
        count = max(1, int(np.prod([x.shape[a] for a in axes], dtype=np.int64)))
        y = (np.sign(total) * (np.abs(total) // count)).astype(x.dtype)
    return [np.asarray(y)]


@kernel(Op.REDUCE_MAX)
def reduce_max(node, inputs):
    """y = max x over ``axes``; NaN propagates; the empty max is −inf (dtype minimum for ints,
    False for bool)."""
    x = inputs[0]
    if x.dtype == np.bool_:
        initial = False
    elif x.dtype.kind == "f":
        initial = -np.inf
    else:
        initial = np.iinfo(x.dtype).min
    y = np.max(x, axis=_axes(node, x), keepdims=node.attrs.keepdims, initial=initial)
    return [np.asarray(y, dtype=x.dtype)]
