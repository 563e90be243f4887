"""Activation converters: Relu, Clip, PRelu, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Tanh,
Gelu."""

from __future__ import annotations

import numpy as np

from ...ir.attrs import ClipAttrs, GeluAttrs, HardSigmoidAttrs, LeakyReluAttrs, ReshapeAttrs
from ...ir.ops import Op
from .registry import converter, get_attr


def _unary(op: Op):
    return lambda ctx: ctx.emit(op, [ctx.input(0)])


converter("Relu", versions=(6, 13, 14))(_unary(Op.RELU))
converter("Sigmoid", versions=(6, 13))(_unary(Op.SIGMOID))
converter("Tanh", versions=(6, 13))(_unary(Op.TANH))
converter("HardSwish", versions=(14, 22))(_unary(Op.HARD_SWISH))


def _scalar(array):
    """A python scalar from a 0-d / 1-element array (int stays int, float stays float)."""
    if array is None or np.asarray(array).size == 0:
        return None
    item = np.asarray(array).reshape(-1)[0].item()
    return item


@converter("Clip", versions=(6, 11, 12, 13))
def convert_clip(ctx):
    """y = min(max(x, min), max): bounds are attributes before opset 11, constant inputs after
    (a missing bound is None)."""
    if ctx.version < 11:
        low, high = ctx.attr("min", None), ctx.attr("max", None)
        low = None if low is None else float(low)
        high = None if high is None else float(high)
    else:
        low, high = _scalar(ctx.const(1)), _scalar(ctx.const(2))
    return ctx.emit(Op.CLIP, [ctx.input(0)], ClipAttrs(min=low, max=high))


@converter("PRelu", versions=(7, 9, 16))
def convert_prelu(ctx):
    """y = x if x >= 0 else slope·x, slope broadcast to x (unidirectional, numpy rules).

    A 1-D slope of length C = x.shape[1] that does not broadcast numpy-style is the opset < 7
    per-channel form (left as is by onnx's version converter): it is reshaped to (C, 1, ..., 1).
    """
    x, slope = ctx.input(0), ctx.input(1)
    if (slope.rank == 1 and x.rank > 2 and slope.shape[0] == x.shape[1] != x.shape[-1]
            and slope.shape[0] != 1):
        shape = (slope.shape[0],) + (1,) * (x.rank - 2)
        slope = ctx.emit(Op.RESHAPE, [slope], ReshapeAttrs(shape=shape))[0]
    return ctx.emit(Op.PRELU, [x, slope])


@converter("LeakyRelu", versions=(6, 16))
def convert_leaky_relu(ctx):
    """y = x if x >= 0 else alpha·x (alpha default 0.01)."""
    return ctx.emit(Op.LEAKY_RELU, [ctx.input(0)],
                    LeakyReluAttrs(alpha=float(ctx.attr("alpha", 0.01))))


@converter("HardSigmoid", versions=(6, 22))
def convert_hard_sigmoid(ctx):
    """y = max(0, min(1, alpha·x + beta)) (defaults 0.2, 0.5)."""
    attrs = HardSigmoidAttrs(alpha=float(ctx.attr("alpha", 0.2)),
                             beta=float(ctx.attr("beta", 0.5)))
    return ctx.emit(Op.HARD_SIGMOID, [ctx.input(0)], attrs)


def check_gelu(node, version) -> str | None:
    """Only approximate = "none" | "tanh" exist."""
    value = get_attr(node, "approximate", "none")
    if value not in ("none", "tanh"):
        return f"approximate={value!r} (expected 'none' or 'tanh')"
    return None


@converter("Gelu", versions=(20,), check=check_gelu)
def convert_gelu(ctx):
    """Gelu-20: erf form ("none") or tanh approximation."""
    return ctx.emit(Op.GELU, [ctx.input(0)], GeluAttrs(approximate=ctx.attr("approximate",
                                                                              "none")))
