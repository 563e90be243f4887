"""Arithmetic and comparison converters: Add Sub Mul Div Pow, unary math, Sum, Equal, Where,
Cast. All binary ops use numpy (multidirectional) broadcasting, as ONNX does from opset 7 (the
oldest opset lowbit imports, so the legacy ``broadcast``/``axis`` attributes never occur)."""

from __future__ import annotations

from ...ir.attrs import CastAttrs
from ...ir.ops import Op
from .loader import ONNX_DTYPES, onnx_type_name
from .registry import converter, get_attr

_BINARY = {"Add": Op.ADD, "Sub": Op.SUB, "Mul": Op.MUL, "Div": Op.DIV}
_UNARY = {"Sqrt": Op.SQRT, "Exp": Op.EXP, "Log": Op.LOG, "Reciprocal": Op.RECIPROCAL,
          "Neg": Op.NEG, "Abs": Op.ABS}


def _binary(op: Op):
    def convert(ctx):
        return ctx.emit(op, [ctx.input(0), ctx.input(1)])

    return convert


for _name, _op in _BINARY.items():
    converter(_name, versions=(7, 13, 14))(_binary(_op))
converter("Pow", versions=(7, 12, 13, 15))(_binary(Op.POW))

for _name, _op in _UNARY.items():
    converter(_name, versions=(6, 13))(lambda ctx, _op=_op: ctx.emit(_op, [ctx.input(0)]))
converter("Erf", versions=(9, 13))(lambda ctx: ctx.emit(Op.ERF, [ctx.input(0)]))


@converter("Sum", versions=(6, 8, 13))
def convert_sum(ctx):
    """Sum(x0, x1, ..., xn) = ((x0 + x1) + ...) + xn; a single input is returned unchanged."""
    acc = ctx.input(0)
    for i in range(1, ctx.n_inputs):
        acc = ctx.emit(Op.ADD, [acc, ctx.input(i)])[0]
    return [acc]


@converter("Equal", versions=(7, 11, 13, 19))
def convert_equal(ctx):
    """Elementwise a == b (bool), numpy broadcasting."""
    return ctx.emit(Op.EQUAL, [ctx.input(0), ctx.input(1)])


@converter("Where", versions=(9, 16))
def convert_where(ctx):
    """y = x if condition else y_other, numpy broadcasting of all three."""
    return ctx.emit(Op.WHERE, [ctx.input(0), ctx.input(1), ctx.input(2)])


def check_cast(node, version) -> str | None:
    """The target type must be a lowbit dtype."""
    to = get_attr(node, "to", None)
    if to not in ONNX_DTYPES:
        shown = onnx_type_name(to) if isinstance(to, int) else repr(to)
        return f"to={shown} is not a lowbit dtype"
    return None


@converter("Cast", versions=(6, 9, 13, 19, 21, 23, 24, 25, 28), check=check_cast)
def convert_cast(ctx):
    """ONNX Cast; ``saturate`` only concerns float8 targets, which lowbit lacks."""
    return ctx.emit(Op.CAST, [ctx.input(0)], CastAttrs(to=ONNX_DTYPES[ctx.attr("to")]))
