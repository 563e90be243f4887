"""Normalization converters: BatchNormalization (inference), LayerNormalization, LRN, Softmax,
LogSoftmax."""

from __future__ import annotations

import numpy as np

from ...ir.attrs import (
    BatchNormAttrs,
    CastAttrs,
    LayerNormAttrs,
    LRNAttrs,
    ReduceAttrs,
    ReshapeAttrs,
    SoftmaxAttrs,
)
from ...ir.dtypes import FLOAT32
from ...ir.ops import Op
from .registry import converter, get_attr


def check_batchnorm(node, version) -> str | None:
    """Inference only: no training_mode, no running-statistics outputs, spatial=1."""
    if get_attr(node, "training_mode", 0):
        return "training_mode=1 (lowbit imports inference graphs; export with model.eval())"
    if version < 9 and get_attr(node, "spatial", 1) != 1:
        return "spatial=0 (per-element statistics) is not supported"
    if sum(1 for o in node.output if o) > 1:
        return "training outputs (running mean/var) are requested; export in inference mode"
    return None


@converter("BatchNormalization", versions=(7, 9, 14, 15), check=check_batchnorm)
def convert_batchnorm(ctx):
    """y = (x − mean) / sqrt(var + epsilon) · scale + bias over channel axis 1."""
    inputs = [ctx.input(i) for i in range(5)]
    return ctx.emit(Op.BATCHNORM, inputs, BatchNormAttrs(epsilon=float(ctx.attr("epsilon",
                                                                                1e-5))))


def check_layernorm(node, version) -> str | None:
    """Statistics are float32 (stash_type=1)."""
    if get_attr(node, "stash_type", 1) != 1:
        return "stash_type other than 1 (float32 statistics) is not supported"
    return None


@converter("LayerNormalization", versions=(17,), check=check_layernorm)
def convert_layernorm(ctx):
    """Statistics over axes [axis, rank) (axis default −1, normalized); bias optional. The
    optional Mean and InvStdDev outputs (float32, reduced dims kept as 1) are computed beside it:
    mean = ReduceMean(x), inv_std_dev = 1 / sqrt(ReduceMean((x − mean)²) + epsilon)."""
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", -1), x.rank)
    epsilon = float(ctx.attr("epsilon", 1e-5))
    outs = ctx.emit(Op.LAYERNORM, [x, ctx.input(1), ctx.input(2)],
                    LayerNormAttrs(axis=axis, epsilon=epsilon))
    if ctx.n_outputs > 1:
        outs += _layernorm_statistics(ctx, x, axis, epsilon)
    return outs[:ctx.n_outputs]


def _layernorm_statistics(ctx, x, axis, epsilon):
    if x.dtype != FLOAT32:
        x = ctx.emit(Op.CAST, [x], CastAttrs(to=FLOAT32))[0]
    stats = ReduceAttrs(axes=tuple(range(axis, x.rank)), keepdims=True)
    mean = ctx.emit(Op.REDUCE_MEAN, [x], stats)[0]
    centered = ctx.emit(Op.SUB, [x, mean])[0]
    var = ctx.emit(Op.REDUCE_MEAN, [ctx.emit(Op.MUL, [centered, centered])[0]], stats)[0]
    eps = ctx.constant(np.asarray(epsilon, np.float32), name=f"{ctx.name}_epsilon")
    std = ctx.emit(Op.SQRT, [ctx.emit(Op.ADD, [var, eps])[0]])[0]
    return [mean, ctx.emit(Op.RECIPROCAL, [std])[0]]


@converter("LRN", versions=(1, 13))
def convert_lrn(ctx):
    """y = x / (bias + alpha/size · Σ window x²)^beta across channels."""
    attrs = LRNAttrs(size=int(ctx.attr("size")), alpha=float(ctx.attr("alpha", 1e-4)),
                     beta=float(ctx.attr("beta", 0.75)), bias=float(ctx.attr("bias", 1.0)))
    return ctx.emit(Op.LRN, [ctx.input(0)], attrs)


def _softmax(op: Op):
    def convert(ctx):
        """Opset >= 13: along ``axis`` (default −1). Opset < 13: the input is coerced to 2-D
        (prod(shape[:axis]), prod(shape[axis:])) with axis default 1, emitted as
        Reshape -> op(axis=1) -> Reshape; when axis is the last one the coercion changes nothing
        and a single op(axis=rank−1) is emitted."""
        x = ctx.input(0)
        if ctx.version >= 13:
            return ctx.emit(op, [x], SoftmaxAttrs(axis=ctx.axis(ctx.attr("axis", -1), x.rank)))
        axis = ctx.axis(ctx.attr("axis", 1), x.rank) if x.rank else 0
        if axis >= x.rank - 1:
            return ctx.emit(op, [x], SoftmaxAttrs(axis=max(x.rank - 1, 0)))
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        cols = int(np.prod(x.shape[axis:], dtype=np.int64))
        flat = ctx.emit(Op.RESHAPE, [x], ReshapeAttrs(shape=(rows, cols)))[0]
        y = ctx.emit(op, [flat], SoftmaxAttrs(axis=1))[0]
        return ctx.emit(Op.RESHAPE, [y], ReshapeAttrs(shape=tuple(x.shape)))

    return convert


converter("Softmax", versions=(1, 11, 13))(_softmax(Op.SOFTMAX))
converter("LogSoftmax", versions=(1, 11, 13))(_softmax(Op.LOG_SOFTMAX))
