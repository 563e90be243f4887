"""Resize reference kernel: separable N-d nearest / linear / cubic interpolation.

Per resized axis, output index ``x`` maps to an input coordinate ``x_orig`` by the coordinate
transformation mode (``scale`` = ``attrs.scales[axis]``, ``L_in`` the input length,
``W = scale · L_in`` the possibly fractional target length, ``L_out`` the output length):

* half_pixel: (x + 0.5) / scale − 0.5
* half_pixel_symmetric: c · (1 − L_out / W) + (x + 0.5) / scale − 0.5, c = L_in / 2
* pytorch_half_pixel: (x + 0.5) / scale − 0.5 if W ≠ 1 else 0
* align_corners: x · (L_in − 1) / (W − 1) (0 when W = 1)
* asymmetric: x / scale
* tf_crop_and_resize: start · (L_in − 1) + x · (end − start) · (L_in − 1) / (W − 1)
  (0.5 · (start + end) · (L_in − 1) when W = 1); points with x_orig outside [0, L_in − 1]
  take ``extrapolation_value``.

Then nearest picks one tap by ``nearest_mode``; linear weighs taps floor, floor+1 by
(1 − t, t); cubic weighs floor−1 .. floor+2 by Keys' kernel with a = ``cubic_coeff_a``, t the
fractional part. Where the spec's "length_resized" is ambiguous for a fractional target the
ONNX reference implementation is followed (``W``, not ``L_out``: onnxruntime uses ``L_out`` and
so disagrees with the onnx backend tests for align_corners with scales). Taps are clamped to
the edge; ``exclude_outside`` zeroes the weights of taps outside the input and renormalizes.
Coordinates and sums are float64 (as the ONNX reference); integer outputs are rounded half to
even and saturated.
"""

from __future__ import annotations

import numpy as np

from ...ir import Op
from . import fail, kernel

_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize")


def original_coordinates(attrs, axis: int, in_len: int, out_len: int, rank: int) -> np.ndarray:
    """x_orig for every output index along ``axis`` (float64), per the module docstring."""
    mode = attrs.coordinate_transformation_mode
    scale = float(attrs.scales[axis])
    width = scale * in_len
    x = np.arange(out_len, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / width)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if width != 1 else np.zeros(out_len)
    if mode == "align_corners":
        return np.zeros(out_len) if width == 1 else x * (in_len - 1) / (width - 1)
    if mode == "asymmetric":
        return x / scale
    assert mode == "tf_crop_and_resize"
    start, end = float(attrs.roi[axis]), float(attrs.roi[rank + axis])
    if width == 1:
        return np.full(out_len, 0.5 * (start + end) * (in_len - 1))
    return start * (in_len - 1) + x * (end - start) * (in_len - 1) / (width - 1)


def _nearest_index(coords: np.ndarray, mode: str) -> np.ndarray:
    floor = np.floor(coords)
    frac = coords - floor
    if mode == "round_prefer_floor":
        return np.where(frac <= 0.5, floor, floor + 1)
    if mode == "round_prefer_ceil":
        return np.where(frac < 0.5, floor, floor + 1)
    if mode == "floor":
        return floor
    assert mode == "ceil"
    return np.ceil(coords)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights of taps floor−1 .. floor+2 for fractional part t."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _taps(attrs, coords: np.ndarray, in_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (out_len, n_taps), indices clamped into [0, in_len − 1]."""
    if attrs.mode == "nearest":
        index = _nearest_index(coords, attrs.nearest_mode)[:, None]
        weights = np.ones_like(index)
    else:
        floor = np.floor(coords)
        t = coords - floor
        if attrs.mode == "linear":
            index = floor[:, None] + np.array([0.0, 1.0])
            weights = np.stack([1 - t, t], axis=-1)
        else:
            index = floor[:, None] + np.array([-1.0, 0.0, 1.0, 2.0])
            weights = _cubic_weights(t, float(attrs.cubic_coeff_a))
        if attrs.exclude_outside:
            weights = np.where((index < 0) | (index > in_len - 1), 0.0, weights)
            total = weights.sum(axis=-1, keepdims=True)
            weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(index, 0, in_len - 1).astype(np.intp), weights


def _resize_axis(data: np.ndarray, axis: int, index: np.ndarray, weights: np.ndarray):
    """Σ_k weights[:, k] · data[index[:, k]] along ``axis``; zero-weight taps are skipped so
    an inf/NaN neighbour does not leak through 0 · inf."""
    shape = (1,) * axis + (-1,) + (1,) * (data.ndim - axis - 1)
    result = None
    for k in range(index.shape[1]):
        w = weights[:, k]
        if not np.any(w):
            continue
        taken = np.take(data, index[:, k], axis=axis)
        term = np.where(w.reshape(shape) == 0, 0.0, taken * w.reshape(shape))
        result = term if result is None else result + term
    if result is None:
        result = np.zeros(data.shape[:axis] + (index.shape[0],) + data.shape[axis + 1:])
    return result


@kernel(Op.RESIZE)
def resize(node, inputs):
    """ONNX Resize (see the module docstring for the formulas)."""
    x = inputs[0]
    a = node.attrs
    if a.mode not in _MODES:
        raise fail(node, f"unknown mode {a.mode!r}; expected one of {_MODES}")
    if a.coordinate_transformation_mode not in _TRANSFORMS:
        raise fail(node, f"unknown coordinate_transformation_mode "
                         f"{a.coordinate_transformation_mode!r}; expected one of {_TRANSFORMS}")
    crop = a.coordinate_transformation_mode == "tf_crop_and_resize"
    if crop and (a.roi is None or len(a.roi) != 2 * x.ndim):
        raise fail(node, f"tf_crop_and_resize needs roi with {2 * x.ndim} entries "
                         f"(starts then ends for every axis), got {a.roi}")
    data = x.astype(np.float64)
    outside = np.zeros((1,) * x.ndim, dtype=bool)
    for axis, (in_len, out_len) in enumerate(zip(x.shape, a.sizes)):
        coords = original_coordinates(a, axis, in_len, out_len, x.ndim)
        if crop:
            shape = (1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1)
            outside = outside | ((coords < 0) | (coords > in_len - 1)).reshape(shape)
        if out_len == in_len and np.array_equal(coords, np.arange(in_len)):
            continue  # identity along this axis
        if in_len == 0 or out_len == 0:
            data = np.zeros(data.shape[:axis] + (out_len,) + data.shape[axis + 1:])
            continue
        index, weights = _taps(a, coords, in_len)
        data = _resize_axis(data, axis, index, weights)
    if crop:
        data = np.where(outside, float(a.extrapolation_value), data)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    return [data.astype(x.dtype)]
