"""Pooling converters: MaxPool, AveragePool (auto_pad resolved to pads), GlobalAveragePool,
GlobalMaxPool."""

from __future__ import annotations

from ...ir.attrs import PoolAttrs
from ...ir.ops import Op
from .conv import check_auto_pad, resolve_pads, window_attrs
from .registry import converter


def check_maxpool(node, version) -> str | None:
    """No Indices output; a defined auto_pad."""
    if len([o for o in node.output if o]) > 1:
        return "the Indices output is not supported"
    return check_auto_pad(node, version)


def _pool_attrs(ctx, x) -> PoolAttrs:
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape"))
    strides, dilations = window_attrs(ctx, kernel)
    pads = resolve_pads(ctx.attr("auto_pad", "NOTSET"), x.shape[2:], kernel, strides, dilations,
                        ctx.attr("pads", None))
    return PoolAttrs(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                     ceil_mode=bool(ctx.attr("ceil_mode", 0)),
                     count_include_pad=bool(ctx.attr("count_include_pad", 0)))


@converter("MaxPool", versions=(1, 8, 10, 11, 12, 22), check=check_maxpool)
def convert_maxpool(ctx):
    """Max over each window; padding never wins (it is −inf)."""
    x = ctx.input(0)
    return ctx.emit(Op.MAXPOOL, [x], _pool_attrs(ctx, x))


@converter("AveragePool", versions=(1, 7, 10, 11, 19, 22), check=check_auto_pad)
def convert_avgpool(ctx):
    """Padding counts in the average only when count_include_pad=1."""
    x = ctx.input(0)
    return ctx.emit(Op.AVGPOOL, [x], _pool_attrs(ctx, x))


converter("GlobalAveragePool", versions=(1, 22))(
    lambda ctx: ctx.emit(Op.GLOBAL_AVGPOOL, [ctx.input(0)]))
converter("GlobalMaxPool", versions=(1, 22))(
    lambda ctx: ctx.emit(Op.GLOBAL_MAXPOOL, [ctx.input(0)]))
