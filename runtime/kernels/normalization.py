"""BatchNormalization (inference), LayerNormalization, LRN, Softmax, LogSoftmax."""

from __future__ import annotations

import numpy as np

from ...ir import Op
from . import kernel


def _stash_dtype(x: np.ndarray) -> np.dtype:
    """Statistics are computed in float32 (ONNX stash_type = 1), float64 for float64 inputs."""
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


@kernel(Op.BATCHNORM)
def batchnorm(node, inputs):
    """y = (x − mean) / sqrt(var + epsilon) · scale + bias, per channel (axis 1)."""
    x, scale, bias, mean, var = inputs[:5]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    dt = _stash_dtype(x)
    inv = scale.astype(dt) / np.sqrt(var.astype(dt) + dt.type(node.attrs.epsilon))
    y = (x.astype(dt) - mean.astype(dt).reshape(shape)) * inv.reshape(shape) \
        + bias.astype(dt).reshape(shape)
    return [y.astype(x.dtype, copy=False)]


@kernel(Op.LAYERNORM)
def layernorm(node, inputs):
    """y = (x − mean) / sqrt(var + epsilon) · scale (+ bias), statistics over [axis, rank) in
    the stash type; optional outputs Mean and InvStdDev keep the reduced dims as 1."""
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    dt = _stash_dtype(x)
    axes = tuple(range(node.attrs.axis, x.ndim))
    xs = x.astype(dt)
    mean = np.mean(xs, axis=axes, keepdims=True)
    centered = xs - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True)
    inv_std = dt.type(1) / np.sqrt(var + dt.type(node.attrs.epsilon))
    y = centered * inv_std * scale.astype(dt)
    if bias is not None:
        y = y + bias.astype(dt)
    outs = [y.astype(x.dtype, copy=False), mean, inv_std]
    return outs[:len(node.outputs)]


@kernel(Op.LRN)
def lrn(node, inputs):
    """y = x / (bias + alpha / size · Σ x_c'²) ** beta over channels
    c' in [c − floor((size−1)/2), c + ceil((size−1)/2)]."""
    x = inputs[0]
    a = node.attrs
    dt = _stash_dtype(x)
    sq = x.astype(dt) ** 2
    before, after = (a.size - 1) // 2, a.size - 1 - (a.size - 1) // 2
    width = [(0, 0)] * x.ndim
    width[1] = (before, after)
    padded = np.pad(sq, width)
    channels = x.shape[1]
    total = np.zeros_like(sq)
    for offset in range(a.size):
        total += padded[:, offset:offset + channels]
    denom = (dt.type(a.bias) + dt.type(a.alpha / a.size) * total) ** dt.type(a.beta)
    return [(x.astype(dt) / denom).astype(x.dtype, copy=False)]


@kernel(Op.SOFTMAX)
def softmax(node, inputs):
    """y = exp(x − max) / Σ exp(x − max) along ``axis``."""
    x = inputs[0]
    axis = node.attrs.axis
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return [e / np.sum(e, axis=axis, keepdims=True)]


@kernel(Op.LOG_SOFTMAX)
def log_softmax(node, inputs):
    """y = (x − max) − log Σ exp(x − max) along ``axis``."""
    x = inputs[0]
    axis = node.attrs.axis
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return [shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))]
