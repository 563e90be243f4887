"""Conv and ConvTranspose reference kernels (N-d, groups, strides, dilations, pads).

Conv is im2col + matmul on a strided window view (no Python loop over pixels):
``cols[n, g, (c, k), p] = x_padded[n, g·Cg + c, p·stride + k·dilation]`` and
``y[n, g·Mg + m, p] = Σ_(c, k) w[g·Mg + m, c, k] · cols[n, g, (c, k), p] + b[g·Mg + m]``.
ConvTranspose is the adjoint: one matmul gives every (output channel, kernel tap) contribution
of every input pixel, then a loop over the kernel taps (not pixels) scatter-adds them at
``i·stride + k·dilation`` and the result is cropped by the pads.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...ir import Op
from . import kernel


def sliding_windows(xp: np.ndarray, kernel_shape, strides, dilations, out_shape) -> np.ndarray:
    """A read-only view ``(N, C, *out_shape, *kernel_shape)`` of the windows of the (already
    padded) ``xp``: element ``[n, c, o..., k...] = xp[n, c, o·stride + k·dilation ...]``."""
    spans = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    view = sliding_window_view(xp, spans, axis=tuple(range(2, 2 + len(spans))))
    outer = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_shape, strides))
    inner = tuple(slice(None, None, d) for d in dilations)
    return view[(slice(None), slice(None)) + outer + inner]


def _pad_spatial(x: np.ndarray, pads, value=0) -> np.ndarray:
    nd = x.ndim - 2
    if not any(pads):
        return x
    width = [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)]
    return np.pad(x, width, mode="constant", constant_values=value)


@kernel(Op.CONV)
def conv(node, inputs):
    """y = conv(x, w) + b; w is (M, C/group, k...)."""
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    attrs = node.attrs
    n = x.shape[0]
    m, cg = w.shape[:2]
    kernel_shape = w.shape[2:]
    nd = len(kernel_shape)
    group = attrs.group
    xp = _pad_spatial(x, attrs.pads)
    out_shape = [
        (xp.shape[2 + i] - ((kernel_shape[i] - 1) * attrs.dilations[i] + 1)) // attrs.strides[i]
        + 1 for i in range(nd)
    ]
    windows = sliding_windows(xp, kernel_shape, attrs.strides, attrs.dilations, out_shape)
    windows = windows.reshape((n, group, cg) + windows.shape[2:])
    # (N, g, Cg, O..., K...) -> (N, g, Cg, K..., O...) -> (N, g, Cg·K, P): the im2col copy
    order = (0, 1, 2) + tuple(range(3 + nd, 3 + 2 * nd)) + tuple(range(3, 3 + nd))
    ksize, pixels = math.prod(kernel_shape), math.prod(out_shape)
    cols = windows.transpose(order).reshape(n, group, cg * ksize, pixels)
    wm = w.reshape(group, m // group, cg * ksize)
    y = np.matmul(wm, cols).reshape((n, m) + tuple(out_shape))
    if b is not None:
        y = y + b.reshape((1, m) + (1,) * nd)
    return [y.astype(x.dtype, copy=False)]


@kernel(Op.CONV_TRANSPOSE)
def conv_transpose(node, inputs):
    """y = conv_transpose(x, w) + b; w is (C, M/group, k...); output size per axis
    stride·(in−1) + output_padding + (k−1)·dilation + 1 − pad_begin − pad_end."""
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    attrs = node.attrs
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    mg = w.shape[1]
    kernel_shape = w.shape[2:]
    nd = len(kernel_shape)
    group = attrs.group
    cg = c // group
    xm = x.reshape(n, group, cg, math.prod(spatial))
    wm = w.reshape(group, cg, mg * math.prod(kernel_shape)).transpose(0, 2, 1)
    cols = np.matmul(wm, xm).reshape((n, group, mg) + tuple(kernel_shape) + tuple(spatial))
    full = [attrs.strides[i] * (spatial[i] - 1) + (kernel_shape[i] - 1) * attrs.dilations[i]
            + 1 + attrs.output_padding[i] for i in range(nd)]
    acc = np.zeros((n, group, mg) + tuple(full), dtype=cols.dtype)
    lead = (slice(None),) * 3
    for taps in itertools.product(*(range(k) for k in kernel_shape)):
        target = tuple(
            slice(k * d, k * d + s * (size - 1) + 1, s)
            for k, d, s, size in zip(taps, attrs.dilations, attrs.strides, spatial)
        )
        acc[lead + target] += cols[lead + taps]
    crop = tuple(slice(attrs.pads[i], full[i] - attrs.pads[nd + i]) for i in range(nd))
    y = acc[lead + crop].reshape((n, group * mg) + tuple(full[i] - attrs.pads[i]
                                                          - attrs.pads[nd + i]
                                                          for i in range(nd)))
    if b is not None:
        y = y + b.reshape((1, group * mg) + (1,) * nd)
    return [np.ascontiguousarray(y, dtype=x.dtype)]
