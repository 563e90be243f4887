"""Gemm, MatMul and MatMulInteger converters."""

from __future__ import annotations

from ...ir.attrs import GemmAttrs
from ...ir.ops import Op
from .registry import converter


@converter("Gemm", versions=(7, 9, 11, 13))
def convert_gemm(ctx):
    """Y = alpha·op(A)·op(B) + beta·C (C optional from opset 11; C broadcasts
    unidirectionally to (M, N))."""
    attrs = GemmAttrs(alpha=float(ctx.attr("alpha", 1.0)), beta=float(ctx.attr("beta", 1.0)),
                      trans_a=bool(ctx.attr("transA", 0)), trans_b=bool(ctx.attr("transB", 0)))
    return ctx.emit(Op.GEMM, [ctx.input(0), ctx.input(1), ctx.input(2)], attrs)


@converter("MatMul", versions=(1, 9, 13))
def convert_matmul(ctx):
    """numpy.matmul semantics (batched, 1-D operands promoted)."""
    return ctx.emit(Op.MATMUL, [ctx.input(0), ctx.input(1)])


@converter("MatMulInteger", versions=(10,))
def convert_matmul_integer(ctx):
    """Y = (A − a_zero_point) @ (B − b_zero_point) in int32; zero points optional."""
    return ctx.emit(Op.MATMUL_INTEGER, [ctx.input(i) for i in range(4)])
