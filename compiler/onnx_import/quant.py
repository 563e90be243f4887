"""QuantizeLinear / DequantizeLinear converters.

Q: y = saturate(round_half_even(x / scale) + zero_point); the output dtype is the zero point's,
else ``output_dtype`` (opset 21+), else uint8. DQ: y = (x − zero_point) · scale. A scale with
one element is per tensor (axis None); a 1-D scale is per channel along ``axis`` (default 1);
``block_size`` > 0 (opset 21+) means blocked scales along ``axis``.
"""

from __future__ import annotations

from ...ir.attrs import DequantizeAttrs, QuantizeAttrs
from ...ir.dtypes import UINT8
from ...ir.ops import Op
from .loader import ONNX_DTYPES, onnx_type_name
from .registry import converter, get_attr

_VERSIONS = (10, 13, 19, 21, 23, 24, 25, 28)


def check_quant(node, version) -> str | None:
    """output_dtype (opset 21+) must be a lowbit dtype."""
    out = get_attr(node, "output_dtype", 0)
    if out and out not in ONNX_DTYPES:
        return f"output_dtype={onnx_type_name(out)} is not a lowbit dtype"
    return None


def _axis(ctx, scale) -> int | None:
    if scale.shape is None or scale.numel == 1 and not int(ctx.attr("block_size", 0)):
        return None
    return ctx.axis(ctx.attr("axis", 1), ctx.input(0).rank)


@converter("QuantizeLinear", versions=_VERSIONS, check=check_quant)
def convert_quantize(ctx):
    """QuantizeLinear -> QuantizeAttrs(dtype, axis, saturate, block_size)."""
    x, scale, zero = ctx.input(0), ctx.input(1), ctx.input(2)
    if zero is not None:
        dtype = zero.dtype
    elif ctx.attr("output_dtype", 0):
        dtype = ONNX_DTYPES[ctx.attr("output_dtype")]
    else:
        dtype = UINT8
    attrs = QuantizeAttrs(dtype=dtype, axis=_axis(ctx, scale),
                          saturate=bool(ctx.attr("saturate", 1)),
                          block_size=int(ctx.attr("block_size", 0)))
    return ctx.emit(Op.QUANTIZE, [x, scale, zero], attrs)


@converter("DequantizeLinear", versions=_VERSIONS, check=check_quant)
def convert_dequantize(ctx):
    """DequantizeLinear -> DequantizeAttrs(axis, block_size); never folded."""
    x, scale, zero = ctx.input(0), ctx.input(1), ctx.input(2)
    attrs = DequantizeAttrs(axis=_axis(ctx, scale), block_size=int(ctx.attr("block_size", 0)))
    return ctx.emit(Op.DEQUANTIZE, [x, scale, zero], attrs)
