"""ReduceMean / ReduceSum / ReduceMax converters.

``axes`` is an attribute before the version that moved it to input 1 (ReduceSum 13, ReduceMean
and ReduceMax 18). No axes = all axes, unless ``noop_with_empty_axes=1``: then the op is the
identity and the input is returned unchanged.
"""

from __future__ import annotations

from ...ir.attrs import ReduceAttrs
from ...ir.ops import Op
from .registry import converter


def _reduce(op: Op, axes_input_since: int):
    def convert(ctx):
        x = ctx.input(0)
        if ctx.version >= axes_input_since:
            axes = ctx.const(1, "axes")
        else:
            axes = ctx.attr("axes", None)
        if axes is None or len(axes) == 0:
            if ctx.attr("noop_with_empty_axes", 0):
                return [x]
            norm = None
        else:
            norm = tuple(sorted({ctx.axis(a, x.rank, "axes entry") for a in axes}))
        attrs = ReduceAttrs(axes=norm, keepdims=bool(ctx.attr("keepdims", 1)))
        return ctx.emit(op, [x], attrs)

    return convert


converter("ReduceMean", versions=(1, 11, 13, 18))(_reduce(Op.REDUCE_MEAN, 18))
converter("ReduceSum", versions=(1, 11, 13))(_reduce(Op.REDUCE_SUM, 13))
converter("ReduceMax", versions=(1, 11, 12, 13, 18, 20))(_reduce(Op.REDUCE_MAX, 18))
