"""Resize import vs onnxruntime: scales / sizes resolved to explicit sizes and per-axis scales,
modes nearest / linear / cubic, coordinate transforms, opset 10 / 11 / 13 / 18 / 19 forms."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import UnsupportedOpError

RNG = np.random.default_rng(9)
X = RNG.standard_normal((1, 2, 4, 6)).astype(np.float32)
F32, I64 = np.float32, np.int64


def _resize(opset, attrs, scales=None, sizes=None, roi=None):
    inits, names = {}, ["x"]
    if opset == 10:
        inits["scales"] = np.asarray(scales, F32)
        return single_node_model("Resize", {"x": X}, ["y"], attrs, opset=10,
                                 initializers=inits, inputs=["x", "scales"])
    for key, value, dtype in (("roi", roi, F32), ("scales", scales, F32), ("sizes", sizes, I64)):
        if value is None and opset == 11 and key != "sizes":
            value = []  # opset 11: roi and scales are required inputs, empty = absent
        if value is not None:
            inits[key] = np.asarray(value, dtype)
            names.append(key)
        else:
            names.append("")
    return single_node_model("Resize", {"x": X}, ["y"], attrs, opset=opset, initializers=inits,
                             inputs=names)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_opset10_upsample_semantics(mode):
    graph = check_against_ort(_resize(10, {"mode": mode}, scales=[1, 1, 2, 1.5]), {"x": X},
                              rtol=1e-5, atol=1e-5)
    attrs = graph.nodes[0].attrs
    assert attrs.sizes == (1, 2, 8, 9) and attrs.coordinate_transformation_mode == "asymmetric"


@pytest.mark.parametrize("opset", [11, 13, 19])
@pytest.mark.parametrize("mode, coord, nearest", [
    ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "asymmetric", "floor"),
    ("nearest", "align_corners", "round_prefer_ceil"),
    ("linear", "half_pixel", None),
    ("linear", "pytorch_half_pixel", None),
    ("linear", "align_corners", None),
    ("cubic", "half_pixel", None),
    ("cubic", "asymmetric", None),
])
@pytest.mark.parametrize("how", ["scales", "sizes"])
def test_resize(opset, mode, coord, nearest, how):
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if nearest:
        attrs["nearest_mode"] = nearest
    if how == "scales":
        model = _resize(opset, attrs, scales=[1, 1, 2.0, 0.5])
        expected = (1, 2, 8, 3)
    else:
        model = _resize(opset, attrs, sizes=[1, 2, 7, 9])
        expected = (1, 2, 7, 9)
    graph = check_against_ort(model, {"x": X}, rtol=1e-4, atol=1e-5)
    attrs_ir = graph.nodes[0].attrs
    assert attrs_ir.sizes == expected and attrs_ir.mode == mode
    if how == "sizes":
        assert attrs_ir.scales == pytest.approx((1, 1, 7 / 4, 9 / 6))


def test_resize_cubic_attributes():
    attrs = {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}
    graph = check_against_ort(_resize(13, attrs, scales=[1, 1, 1.5, 2]), {"x": X}, rtol=1e-4,
                              atol=1e-5)
    assert graph.nodes[0].attrs.cubic_coeff_a == -0.5 and graph.nodes[0].attrs.exclude_outside


def test_resize_tf_crop_and_resize_roi():
    attrs = {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
             "extrapolation_value": 7.0}
    roi = [0, 0, 0.2, -0.1, 1, 1, 0.9, 1.2]
    graph = check_against_ort(_resize(13, attrs, sizes=[1, 2, 3, 5], roi=roi), {"x": X},
                              rtol=1e-4, atol=1e-5)
    assert graph.nodes[0].attrs.roi == pytest.approx(tuple(roi))


def test_resize_tf_crop_and_resize_with_scales_keeps_full_output_size():
    """onnxruntime and onnx's reference ignore the roi when sizing from scales."""
    attrs = {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}
    roi = [0, 0, 0.4, 0.6, 1, 1, 0.6, 0.8]
    graph = check_against_ort(_resize(13, attrs, scales=[1, 1, 5.0, 2.5], roi=roi), {"x": X},
                              rtol=1e-4, atol=1e-5)
    assert graph.nodes[0].attrs.sizes == (1, 2, 20, 15)


@pytest.mark.parametrize("policy, expected", [("stretch", (1, 2, 8, 9)),
                                              ("not_larger", (1, 2, 6, 9)),
                                              ("not_smaller", (1, 2, 8, 12))])
def test_resize_axes_and_aspect_ratio_opset18(policy, expected):
    attrs = {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": policy}
    graph = check_against_ort(_resize(18, attrs, sizes=[8, 9]), {"x": X})
    assert graph.nodes[0].attrs.sizes == expected


def test_resize_antialias_is_reported():
    model = _resize(18, {"mode": "linear", "antialias": 1}, scales=[1, 1, 0.5, 0.5])
    with pytest.raises(UnsupportedOpError, match=r"Resize node 'resize_node': antialias=1"):
        check_against_ort(model, {"x": X})
