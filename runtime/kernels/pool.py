"""MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool reference kernels.

Output size per spatial axis, with span = (k − 1) · dilation + 1:
``floor((in + pad_begin + pad_end − span) / stride) + 1``, or with ``ceil_mode`` the ceiling,
minus one when the last window would start in the right padding (ONNX / PyTorch rule).
AveragePool divides by the number of window elements inside the input, or inside input + the
explicit pads when ``count_include_pad`` (never counting the extra ceil-mode overhang).
"""

from __future__ import annotations

import math

import numpy as np

from ...ir import Op
from . import kernel
from .conv import sliding_windows


def pool_output_shape(in_shape, attrs) -> list[int]:
    """Spatial output shape of a pooling window over ``in_shape`` (spatial dims only)."""
    nd = len(in_shape)
    out = []
    for i in range(nd):
        span = (attrs.kernel_shape[i] - 1) * attrs.dilations[i] + 1
        room = in_shape[i] + attrs.pads[i] + attrs.pads[nd + i] - span
        size = (math.ceil(room / attrs.strides[i]) if attrs.ceil_mode
                else room // attrs.strides[i]) + 1
        if attrs.ceil_mode and (size - 1) * attrs.strides[i] >= in_shape[i] + attrs.pads[i]:
            size -= 1
        out.append(size)
    return out


def _padded(x: np.ndarray, attrs, out_shape, value) -> np.ndarray:
    """``x`` padded by the explicit pads plus whatever overhang the last window needs."""
    nd = x.ndim - 2
    width = [(0, 0), (0, 0)]
    for i in range(nd):
        span = (attrs.kernel_shape[i] - 1) * attrs.dilations[i] + 1
        need = (out_shape[i] - 1) * attrs.strides[i] + span
        width.append((attrs.pads[i], max(attrs.pads[nd + i], need - x.shape[2 + i]
                                          - attrs.pads[i])))
    return np.pad(x, width, mode="constant", constant_values=value)


def _window_axes(nd: int) -> tuple[int, ...]:
    return tuple(range(2 + nd, 2 + 2 * nd))


@kernel(Op.MAXPOOL)
def maxpool(node, inputs):
    """y = max over each (dilated) window; padding never wins (it is −inf / the dtype min)."""
    x = inputs[0]
    attrs = node.attrs
    nd = x.ndim - 2
    out_shape = pool_output_shape(x.shape[2:], attrs)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _padded(x, attrs, out_shape, low)
    windows = sliding_windows(xp, attrs.kernel_shape, attrs.strides, attrs.dilations, out_shape)
    return [np.max(windows, axis=_window_axes(nd))]


@kernel(Op.AVGPOOL)
def avgpool(node, inputs):
    """y = Σ window / count, count per the module docstring."""
    x = inputs[0]
    attrs = node.attrs
    nd = x.ndim - 2
    out_shape = pool_output_shape(x.shape[2:], attrs)
    xp = _padded(x, attrs, out_shape, 0)
    windows = sliding_windows(xp, attrs.kernel_shape, attrs.strides, attrs.dilations, out_shape)
    total = np.sum(windows, axis=_window_axes(nd), dtype=np.float64)
    # count = the same windows over a mask of the positions that count
    mask = np.zeros((1, 1) + xp.shape[2:], dtype=np.float64)
    if attrs.count_include_pad:
        region = tuple(slice(0, x.shape[2 + i] + attrs.pads[i] + attrs.pads[nd + i])
                       for i in range(nd))
    else:
        region = tuple(slice(attrs.pads[i], attrs.pads[i] + x.shape[2 + i]) for i in range(nd))
    mask[(0, 0) + region] = 1.0
    count = np.sum(sliding_windows(mask, attrs.kernel_shape, attrs.strides, attrs.dilations,
                                   out_shape), axis=_window_axes(nd))
    return [(total / count).astype(x.dtype)]


@kernel(Op.GLOBAL_AVGPOOL)
def global_avgpool(node, inputs):
    """y[n, c, 1...] = mean of x[n, c] over every spatial position."""
    x = inputs[0]
    axes = tuple(range(2, x.ndim))
    return [np.mean(x, axis=axes, keepdims=True).astype(x.dtype)]


@kernel(Op.GLOBAL_MAXPOOL)
def global_maxpool(node, inputs):
    """y[n, c, 1...] = max of x[n, c] over every spatial position."""
    x = inputs[0]
    return [np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]
