"""Elementwise reference kernels: unary activations, numpy-broadcasting binaries, Where, Cast.

All follow the ONNX operator spec: the result keeps the first input's dtype (no numpy type
promotion), integer Div truncates toward zero, Pow's result has the base's dtype, Clip is
``min(max(x, lo), hi)`` so ``lo > hi`` yields ``hi`` and NaN propagates.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ...ir import Op
from . import kernel


def _scalar(x: np.ndarray, value) -> np.generic:
    """``value`` as a scalar of ``x``'s dtype (keeps float32 math in float32)."""
    return x.dtype.type(value)


@kernel(Op.RELU)
def relu(node, inputs):
    """y = max(x, 0)."""
    x = inputs[0]
    return [np.where(x < 0, _scalar(x, 0), x)]


@kernel(Op.SIGMOID)
def sigmoid(node, inputs):
    """y = 1 / (1 + exp(−x)), overflow-free (scipy expit)."""
    return [special.expit(inputs[0])]


@kernel(Op.TANH)
def tanh(node, inputs):
    """y = tanh(x)."""
    return [np.tanh(inputs[0])]


@kernel(Op.ERF)
def erf(node, inputs):
    """y = erf(x) (ints are computed in float64 and cast back)."""
    x = inputs[0]
    if x.dtype.kind != "f":
        return [special.erf(x.astype(np.float64)).astype(x.dtype)]
    return [special.erf(x)]


@kernel(Op.GELU)
def gelu(node, inputs):
    """none: y = x/2 · (1 + erf(x/√2));
    tanh: y = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³))); computed in float64."""
    x = inputs[0]
    xd = x.astype(np.float64)
    if node.attrs.approximate == "tanh":
        inner = np.sqrt(2.0 / np.pi) * (xd + 0.044715 * xd ** 3)
        y = 0.5 * xd * (1.0 + np.tanh(inner))
    else:
        y = 0.5 * xd * (1.0 + special.erf(xd / np.sqrt(2.0)))
    return [y.astype(x.dtype)]


@kernel(Op.EXP)
def exp(node, inputs):
    """y = exp(x)."""
    return [np.exp(inputs[0])]


@kernel(Op.LOG)
def log(node, inputs):
    """y = ln(x) (−inf at 0, NaN below)."""
    return [np.log(inputs[0])]


@kernel(Op.SQRT)
def sqrt(node, inputs):
    """y = √x (NaN below 0)."""
    return [np.sqrt(inputs[0])]


@kernel(Op.NEG)
def neg(node, inputs):
    """y = −x (integers wrap)."""
    return [np.negative(inputs[0])]


@kernel(Op.ABS)
def abs_(node, inputs):
    """y = |x|."""
    return [np.abs(inputs[0])]


@kernel(Op.RECIPROCAL)
def reciprocal(node, inputs):
    """y = 1 / x."""
    x = inputs[0]
    return [np.divide(_scalar(x, 1), x)]


@kernel(Op.LEAKY_RELU)
def leaky_relu(node, inputs):
    """y = x if x >= 0 else alpha · x."""
    x = inputs[0]
    return [np.where(x < 0, x * _scalar(x, node.attrs.alpha), x)]


@kernel(Op.HARD_SIGMOID)
def hard_sigmoid(node, inputs):
    """y = max(0, min(1, alpha · x + beta))."""
    x = inputs[0]
    y = x * _scalar(x, node.attrs.alpha) + _scalar(x, node.attrs.beta)
    return [np.minimum(np.maximum(y, _scalar(x, 0)), _scalar(x, 1))]


@kernel(Op.HARD_SWISH)
def hard_swish(node, inputs):
    """y = x · max(0, min(1, x/6 + 1/2))  (ONNX: alpha = 1/6, beta = 0.5)."""
    x = inputs[0]
    gate = x * _scalar(x, 1.0 / 6.0) + _scalar(x, 0.5)
    return [x * np.minimum(np.maximum(gate, _scalar(x, 0)), _scalar(x, 1))]


@kernel(Op.CLIP)
def clip(node, inputs):
    """y = min(max(x, min), max); a None bound is unbounded; NaN stays NaN."""
    x = inputs[0]
    y = x
    if node.attrs.min is not None:
        y = np.maximum(y, _scalar(x, node.attrs.min))
    if node.attrs.max is not None:
        y = np.minimum(y, _scalar(x, node.attrs.max))
    return [y if y is not x else x.copy()]


@kernel(Op.CAST)
def cast(node, inputs):
    """ONNX Cast: float -> int truncates toward zero, x -> bool is x != 0, int -> narrower int
    wraps (two's complement, also for sub-byte widths such as int4)."""
    x = inputs[0]
    to = node.attrs.to
    if to.kind == "bool":
        return [x != 0]
    y = x.astype(to.numpy)
    if to.is_integer and to.bits < to.storage_bits:
        # wrap into the narrow range: keep the low ``bits`` bits, sign-extend when signed
        low = y.astype(np.int64) & ((1 << to.bits) - 1)
        if to.signed:
            low = np.where(low >= (1 << (to.bits - 1)), low - (1 << to.bits), low)
        y = low.astype(to.numpy)
    return [y]


@kernel(Op.IDENTITY)
def identity(node, inputs):
    """y = x."""
    return [inputs[0]]


@kernel(Op.ADD)
def add(node, inputs):
    """y = a + b (broadcasting; integers wrap)."""
    return [np.add(inputs[0], inputs[1])]


@kernel(Op.SUB)
def sub(node, inputs):
    """y = a − b."""
    return [np.subtract(inputs[0], inputs[1])]


@kernel(Op.MUL)
def mul(node, inputs):
    """y = a · b."""
    return [np.multiply(inputs[0], inputs[1])]


@kernel(Op.DIV)
def div(node, inputs):
    """y = a / b; integer division truncates toward zero (C semantics), x / 0 = 0 for ints."""
    a, b = inputs
    if a.dtype.kind == "f":
        return [np.divide(a, b)]
    if a.dtype.kind == "u":
        return [np.floor_divide(a, b)]
    q = np.floor_divide(a, b)
    inexact = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return [np.where(inexact, q + 1, q).astype(a.dtype)]


@kernel(Op.POW)
def pow_(node, inputs):
    """y = a ** b with y's dtype = a's dtype; integer bases with negative or float exponents are
    computed in float64 and truncated toward zero."""
    a, b = inputs
    if a.dtype.kind == "f":
        if b.dtype != a.dtype:
            return [np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)]
        return [np.power(a, b)]
    if b.dtype.kind in "iu" and not np.any(b < 0):
        return [np.power(a, b.astype(a.dtype))]
    y = np.power(a.astype(np.float64), b.astype(np.float64))
    return [np.trunc(y).astype(a.dtype)]


@kernel(Op.PRELU)
def prelu(node, inputs):
    """y = x if x >= 0 else slope · x (slope broadcasts to x)."""
    x, slope = inputs
    return [np.where(x < 0, x * slope, x).astype(x.dtype)]


@kernel(Op.EQUAL)
def equal(node, inputs):
    """y = (a == b) as bool."""
    return [np.equal(inputs[0], inputs[1])]


@kernel(Op.WHERE)
def where(node, inputs):
    """y = condition ? a : b (broadcasting all three)."""
    cond, a, b = inputs
    return [np.where(cond.astype(bool), a, b)]
