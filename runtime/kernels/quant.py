"""QuantizeLinear / DequantizeLinear reference kernels (per tensor, per axis, blocked).

Quantize: ``y = clamp(round_half_even(x / scale) + zero_point, dtype.min, dtype.max)``.
Dequantize: ``y = (x − zero_point) · scale`` (exact integer subtraction, then float).
Per-axis: ``scale`` is 1-D of length ``x.shape[axis]``. Blocked (``block_size`` > 0): ``scale``
has x's rank with ``ceil(x.shape[axis] / block_size)`` along ``axis``; element i along ``axis``
uses block ``i // block_size``.
"""

from __future__ import annotations

import numpy as np

from ...ir import Op
from . import fail, kernel


def broadcast_param(node, param: np.ndarray | None, x: np.ndarray) -> np.ndarray | None:
    """A scale / zero point expanded so that it broadcasts elementwise against ``x``."""
    if param is None:
        return None
    axis, block = node.attrs.axis, node.attrs.block_size
    if block and block > 0:
        if axis is None or param.ndim != x.ndim:
            raise fail(node, f"blocked quantization needs axis and a rank-{x.ndim} scale, got "
                             f"axis={axis} and scale shape {list(param.shape)}")
        expanded = np.repeat(param, block, axis=axis)
        return np.take(expanded, np.arange(x.shape[axis]), axis=axis)
    if axis is None or param.ndim == 0:
        if param.size != 1:
            raise fail(node, f"per-tensor scale / zero point must have one element, got shape "
                             f"{list(param.shape)}; set axis for per-axis quantization")
        return param.reshape(())
    if param.ndim == 1:
        if param.shape[0] != x.shape[axis]:
            if param.shape[0] == 1:
                return param.reshape(())
            raise fail(node, f"per-axis scale has {param.shape[0]} entries but axis {axis} of "
                             f"the input has {x.shape[axis]}")
        return param.reshape((1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1))
    return param


@kernel(Op.QUANTIZE)
def quantize(node, inputs):
    """y = saturate(round_half_even(x / scale) + zero_point) into ``attrs.dtype``."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    dtype = node.attrs.dtype
    if not dtype.is_integer:
        raise fail(node, f"quantizing to {dtype} is not supported; use an integer dtype")
    scale = broadcast_param(node, scale, x)
    if x.dtype.kind != "f":  # int32 input (opset 21): divide in the scale's float type
        x = x.astype(scale.dtype)
    q = np.rint(x / scale.astype(x.dtype, copy=False)).astype(np.float64)
    if zp is not None:
        q = q + broadcast_param(node, zp, x).astype(np.float64)
    q = np.clip(q, dtype.min, dtype.max)
    return [q.astype(dtype.numpy)]


@kernel(Op.DEQUANTIZE)
def dequantize(node, inputs):
    """y = (x − zero_point) · scale in the scale's float type."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    scale = broadcast_param(node, scale, x)
    diff = x.astype(np.int64)
    if zp is not None:
        diff = diff - broadcast_param(node, zp, x).astype(np.int64)
    out_dtype = node.outputs[0].dtype.numpy if node.outputs else scale.dtype
    return [(diff.astype(out_dtype) * scale.astype(out_dtype)).astype(out_dtype)]
