"""Resize converter: scales/sizes (and opset 18 ``axes`` / ``keep_aspect_ratio_policy``)
resolved to explicit output sizes and per-axis scales.

* sizes given: scale_i = sizes_i / in_i; with keep_aspect_ratio_policy not_larger (not_smaller)
  one scale s = min (max) over the resized axes of sizes_i / in_i, and sizes_i = round(s · in_i).
* scales given: sizes_i = floor(in_i · scale_i). The spec text multiplies by (roi_end −
  roi_start) too, but onnxruntime and onnx's reference evaluator ignore the roi there; lowbit
  follows them.
* opset 10 is the Upsample-style op: asymmetric coordinates, nearest_mode floor.
"""

from __future__ import annotations

import math

from ...ir.attrs import ResizeAttrs
from ...ir.errors import ShapeError
from ...ir.ops import Op
from .registry import converter, get_attr

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
POLICIES = ("stretch", "not_larger", "not_smaller")


def check_resize(node, version) -> str | None:
    """Known modes only; antialias=1 is unsupported."""
    checks = (("mode", "nearest", MODES), ("coordinate_transformation_mode", "half_pixel",
              COORDINATE_MODES), ("nearest_mode", "round_prefer_floor", NEAREST_MODES),
              ("keep_aspect_ratio_policy", "stretch", POLICIES))
    for name, default, allowed in checks:
        value = get_attr(node, name, default)
        if value not in allowed:
            return f"{name}={value!r} (lowbit supports {', '.join(allowed)})"
    if get_attr(node, "antialias", 0):
        return "antialias=1 (lowbit supports antialias=0)"
    return None


def _given(array):
    """None for an absent or empty (opset 11 placeholder) parameter tensor."""
    return None if array is None or array.size == 0 else array


@converter("Resize", versions=(10, 11, 13, 18, 19), check=check_resize)
def convert_resize(ctx):
    """Resize with scales/sizes/roi resolved (see the module docstring)."""
    x = ctx.input(0)
    rank = x.rank
    in_shape = tuple(x.shape)
    if ctx.version == 10:
        scales_in, sizes_in, roi_in = _given(ctx.const(1, "scales")), None, None
    else:
        roi_in = _given(ctx.const(1, "roi"))
        scales_in = _given(ctx.const(2, "scales"))
        sizes_in = _given(ctx.const(3, "sizes"))
    axes = ctx.attr("axes", None)
    axes = list(range(rank)) if axes is None else [ctx.axis(a, rank, "axes entry") for a in axes]
    if (scales_in is None) == (sizes_in is None):
        raise ShapeError(f"Resize node '{ctx.name}': exactly one of 'scales' and 'sizes' must "
                         "be given")
    scales = [1.0] * rank
    sizes = list(in_shape)
    if sizes_in is not None:
        wanted = [int(s) for s in sizes_in]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for a, s in zip(axes, wanted):
                sizes[a], scales[a] = s, s / in_shape[a]
        else:
            ratios = [s / in_shape[a] for a, s in zip(axes, wanted)]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                sizes[a] = math.floor(scale * in_shape[a] + 0.5)
                scales[a] = scale
    else:
        for a, s in zip(axes, scales_in):
            scales[a] = float(s)
            sizes[a] = math.floor(in_shape[a] * float(s))
    roi = None
    if roi_in is not None:
        full = [0.0] * rank + [1.0] * rank
        n = len(axes)
        for j, a in enumerate(axes):
            full[a], full[a + rank] = float(roi_in[j]), float(roi_in[j + n])
        roi = tuple(full)
    if ctx.version == 10:
        coord, nearest = "asymmetric", "floor"
    else:
        coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
        nearest = ctx.attr("nearest_mode", "round_prefer_floor")
    attrs = ResizeAttrs(
        sizes=tuple(sizes), scales=tuple(scales), mode=ctx.attr("mode", "nearest"),
        coordinate_transformation_mode=coord, nearest_mode=nearest,
        cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
        exclude_outside=bool(ctx.attr("exclude_outside", 0)),
        extrapolation_value=float(ctx.attr("extrapolation_value", 0.0)), roi=roi)
    return ctx.emit(Op.RESIZE, [x], attrs)
