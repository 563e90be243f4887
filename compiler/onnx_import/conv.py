"""Conv and ConvTranspose converters (auto_pad and output_shape resolved to explicit pads)."""

from __future__ import annotations

from ...ir.attrs import ConvAttrs, ConvTransposeAttrs
from ...ir.ops import Op
from .registry import converter, get_attr

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def check_auto_pad(node, version) -> str | None:
    """Reject auto_pad spellings ONNX does not define."""
    value = get_attr(node, "auto_pad", "NOTSET")
    if value not in AUTO_PADS:
        return f"auto_pad={value!r} (expected one of {AUTO_PADS})"
    return None


def resolve_pads(auto_pad: str, sizes, kernel, strides, dilations, pads) -> tuple[int, ...]:
    """Explicit ``(begins..., ends...)`` pads for a conv/pool window.

    SAME_*: out = ceil(in / stride), total = max(0, (out − 1)·stride + (k − 1)·dilation + 1 − in);
    SAME_UPPER puts ``total // 2`` at the begin (extra at the end), SAME_LOWER the reverse.
    VALID: zeros. NOTSET: the ``pads`` attribute (default zeros).
    """
    n = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return tuple(begins + ends)
    if auto_pad == "VALID":
        return (0,) * (2 * n)
    return tuple(int(p) for p in pads) if pads else (0,) * (2 * n)


def window_attrs(ctx, kernel):
    """``(strides, dilations)`` with ONNX defaults of 1 per spatial axis."""
    n = len(kernel)
    strides = tuple(int(s) for s in ctx.attr("strides", None) or (1,) * n)
    dilations = tuple(int(d) for d in ctx.attr("dilations", None) or (1,) * n)
    return strides, dilations


@converter("Conv", versions=(1, 11, 22), check=check_auto_pad)
def convert_conv(ctx):
    """Conv with kernel_shape from the weight and auto_pad resolved to explicit pads."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape", None) or w.shape[2:])
    strides, dilations = window_attrs(ctx, kernel)
    pads = resolve_pads(ctx.attr("auto_pad", "NOTSET"), x.shape[2:], kernel, strides, dilations,
                        ctx.attr("pads", None))
    attrs = ConvAttrs(strides=strides, pads=pads, dilations=dilations,
                      group=int(ctx.attr("group", 1)))
    return ctx.emit(Op.CONV, [x, w, b], attrs)


@converter("ConvTranspose", versions=(1, 11, 22), check=check_auto_pad)
def convert_conv_transpose(ctx):
    """output_shape (or SAME auto_pad: out = in·stride) resolved to pads:
    total = stride·(in − 1) + output_padding + (k − 1)·dilation + 1 − out; SAME_UPPER puts
    ``total // 2`` at the begin, otherwise at the end. A negative total grows output_padding."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape", None) or w.shape[2:])
    n = len(kernel)
    strides, dilations = window_attrs(ctx, kernel)
    out_pad = [int(p) for p in ctx.attr("output_padding", None) or (0,) * n]
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    output_shape = ctx.attr("output_shape", None)
    sizes = x.shape[2:]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is not None:
            target = [int(o) for o in output_shape][-n:]
        else:
            target = [size * s for size, s in zip(sizes, strides)]
        begins, ends = [], []
        for i in range(n):
            full = strides[i] * (sizes[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            total = full - target[i]
            if total < 0:
                out_pad[i] -= total
                total = 0
            if auto_pad == "SAME_UPPER":
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
        pads = tuple(begins + ends)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * n)
    else:
        pads = tuple(int(p) for p in ctx.attr("pads", None) or (0,) * (2 * n))
    attrs = ConvTransposeAttrs(strides=strides, pads=pads, dilations=dilations,
                               output_padding=tuple(out_pad), group=int(ctx.attr("group", 1)))
    return ctx.emit(Op.CONV_TRANSPOSE, [x, w, b], attrs)
