"""Quantized reference kernels: the two simulators of issue 3.

* **Fake-quant simulation** — ``FakeQuant``: ``y = dequantize(quantize(x, qtype), qtype)``
  with :mod:`lowbit.ir.qformats` (float in, float out, values snapped to the format's grid).
* **Integer simulation** — ``QConv``, ``QMatMul``, ``QAdd``, ``Requantize`` (attrs in
  :mod:`lowbit.ir.attrs`, formulas in :mod:`lowbit.passes.fold_scales`), computed in int64
  numpy, bit-exact to the formulas:

  - ``acc = (Σ (x − zx)·w << acc_shift) + bias`` exactly. The dot products run in float64
    (BLAS) only when
    ``max|x − zx| · Σ|w| < 2^53`` makes every partial sum an exactly representable integer,
    otherwise in int64; the result must fit the declared ``acc_dtype`` (the pass checks this
    statically; a violation here is an :class:`ExecutionError`, never a silent wrap).
  - per-group layers: ``acc[c] = Σ_r ((acc_r[c]·m[r,c] + 2^(s[r,c]−1)) >> s[r,c]) + bias[c]``.
  - requant: ``y = clamp(zy + ((acc·m[c] + 2^(shift[c]−1)) >> shift[c]), lo, hi)``
    (:func:`lowbit.ir.dyadic.requantize`, half up), or ``clamp(sign(acc), lo, hi)`` for binary
    outputs (sign(0) = +1), or ``acc`` itself when the requant is empty.
  - QAdd: ``y = clamp(zy + ((Σ_i (x_i − z_i)·m_i[c] + 2^(S−1)) >> S), lo, hi)``.
  - Requantize of a float input (binary only, the float->binary boundary):
    ``y = clamp(sign(x), lo, hi)``, sign(0) = +1.
"""

from __future__ import annotations

import numpy as np

from ...ir import Op
from ...ir.dyadic import requantize
from ...ir.errors import LowbitError
from ...ir.qformats import dequantize, quantize, rescale_groups
from . import fail, kernel
from .conv import conv, conv_transpose

_INT64_MAX = (1 << 63) - 1
_FLOAT64_EXACT = 1 << 53


@kernel(Op.FAKE_QUANT)
def fake_quant(node, inputs):
    """y = dequantize(quantize(x, qtype), qtype) in x's float type (``lowbit.ir.qformats``)."""
    x = inputs[0]
    qtype = node.attrs.qtype
    if not qtype.scale and not qtype.codebook:
        raise fail(node, f"{node.attrs.role} FakeQuant has no scale yet (uncalibrated {qtype});"
                         " run the calibrate pass first")
    try:
        return [dequantize(quantize(x, qtype), qtype).astype(x.dtype)]
    except LowbitError as err:
        raise fail(node, str(err)) from None


def channel_view(values, ndim: int, axis: int | None) -> np.ndarray:
    """``values`` (one per channel, or one) shaped to broadcast along ``axis`` of an
    ``ndim``-d tensor, as int64."""
    arr = np.asarray(values, dtype=np.int64)
    if axis is None or arr.size == 1:
        return arr.reshape(())
    view = [1] * ndim
    view[axis] = arr.size
    return arr.reshape(view)


def apply_requant(node, acc: np.ndarray, rq) -> np.ndarray:
    """The :class:`~lowbit.ir.attrs.Requant` output stage on an int64 accumulator."""
    if rq.accumulates:
        dt = rq.out_dtype
        if acc.size and (acc.min() < dt.min or acc.max() > dt.max):
            raise fail(node, f"accumulator range [{acc.min()}, {acc.max()}] overflows {dt}; "
                             "fold_scales must widen the accumulator")
        return acc
    if rq.binary:
        return np.clip(np.where(acc >= 0, 1, -1), rq.lo, rq.hi).astype(np.int64)
    axis = rq.axis if len(rq.multiplier) > 1 else None
    try:
        return requantize(acc, rq.multiplier, rq.shift, rq.out_zero_point, rq.lo, rq.hi, axis)
    except LowbitError as err:
        raise fail(node, str(err)) from None


def _exact(linear, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``linear(x, w)`` on int64 ``x`` and integer ``w``, exactly (see module docstring)."""
    x_max = int(np.abs(x).max()) if x.size else 0
    w_sum = int(np.abs(w.astype(np.int64)).sum())
    if x_max * w_sum < _FLOAT64_EXACT:
        return np.rint(linear(x.astype(np.float64), w.astype(np.float64))).astype(np.int64)
    if x_max * w_sum > _INT64_MAX:
        raise OverflowError(f"dot products up to {x_max * w_sum} overflow int64")
    return linear(x, w.astype(np.int64)).astype(np.int64)


def _accumulate(node, linear, x: np.ndarray, w: np.ndarray, bias, w_channel_axis: int,
                out_channel_axis: int) -> np.ndarray:
    """``Σ (x − zx)·w`` (+ per-group rescale) ``+ bias`` in int64."""
    attrs = node.attrs
    xi = x.astype(np.int64) - attrs.requant.in_zero_point
    groups = attrs.groups
    if groups is None:
        acc = _exact(linear, xi, w)
    else:
        red, m, s = rescale_groups(groups, w.shape, w_channel_axis)
        acc = None
        for r in range(m.shape[0]):
            mask = red == r
            part = _exact(linear, xi, np.where(mask, w, 0))
            part = requantize(part, m[r], s[r], 0, -(1 << 63), _INT64_MAX, out_channel_axis)
            acc = part if acc is None else acc + part
    if attrs.acc_shift:
        acc = np.left_shift(acc, attrs.acc_shift)
    if bias is not None:
        acc = acc + channel_view(bias, acc.ndim, out_channel_axis)
    dt = attrs.acc_dtype
    if acc.size and (acc.min() < dt.min or acc.max() > dt.max):
        raise fail(node, f"accumulator range [{acc.min()}, {acc.max()}] overflows {dt}; "
                         "fold_scales must widen the accumulator")
    return acc


@kernel(Op.QCONV)
def qconv(node, inputs):
    """acc = conv(x − zx, w) + bias (exact), then requant (module docstring)."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    transposed = node.attrs.transposed
    base = conv_transpose if transposed else conv

    def linear(xa, wa):
        return base(node, [xa, wa, None])[0]

    acc = _accumulate(node, linear, x, w, bias, 1 if transposed else 0, 1)
    return [apply_requant(node, acc, node.attrs.requant)]


@kernel(Op.QMATMUL)
def qmatmul(node, inputs):
    """acc = (x − zx) @ w + bias (exact), then requant along the last axis."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    acc = _accumulate(node, np.matmul, x, w, bias, 1, -1)
    return [apply_requant(node, acc, node.attrs.requant)]


@kernel(Op.QADD)
def qadd(node, inputs):
    """y = clamp(zy + ((Σ_i (x_i − z_i)·m_i[c] + 2^(S−1)) >> S), lo, hi)."""
    a, b = node.attrs.a, node.attrs.b
    shape = np.broadcast_shapes(inputs[0].shape, inputs[1].shape)
    total = np.zeros(shape, dtype=np.int64)
    bound = 0
    for x, rq in zip(inputs, (a, b)):
        xi = x.astype(np.int64) - rq.in_zero_point
        m = channel_view(rq.multiplier, len(shape), rq.axis)
        if xi.size:
            bound += int(np.abs(xi).max()) * int(np.abs(m).max())
        total = total + xi * m
    shift = int(a.shift[0])
    bound += (1 << (shift - 1)) if shift > 0 else 0
    if bound > _INT64_MAX:
        raise fail(node, f"QAdd sum bound {bound} overflows int64; fold_scales must lower the "
                         "common shift")
    half = (1 << (shift - 1)) if shift > 0 else 0
    out = np.right_shift(total + half, shift) + a.out_zero_point
    return [np.clip(out, a.lo, a.hi)]


@kernel(Op.REQUANTIZE)
def requantize_kernel(node, inputs):
    """y = requant(x − zx) (module docstring); a float input (binary requant only) gives
    y = clamp(sign(x), lo, hi) with sign(0) = +1, the rule of the binary FakeQuant."""
    rq = node.attrs.requant
    if inputs[0].dtype.kind == "f":
        if not rq.binary:
            raise fail(node, "a float input needs a binary requant; use QuantizeLinear")
        return [np.clip(np.where(inputs[0] < 0, -1, 1), rq.lo, rq.hi)]
    acc = inputs[0].astype(np.int64) - rq.in_zero_point
    return [apply_requant(node, acc, rq)]
