"""Conv / ConvTranspose import vs onnxruntime: pads, auto_pad, strides, dilations, groups,
output_shape, across opsets."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import Op

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("opset", [11, 17, 22])
@pytest.mark.parametrize("attrs, w_shape", [
    ({}, (4, 3, 3, 3)),
    ({"pads": [1, 0, 2, 1], "strides": [2, 1]}, (4, 3, 3, 3)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (4, 3, 3, 3)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (4, 3, 4, 4)),
    ({"auto_pad": "VALID", "dilations": [2, 1]}, (4, 3, 3, 2)),
    ({"group": 3, "pads": [1, 1, 1, 1]}, (6, 1, 3, 3)),
])
def test_conv2d(opset, attrs, w_shape):
    x = _rand(1, 3, 9, 8)
    model = single_node_model("Conv", {"x": x}, ["y"], attrs, opset=opset,
                              initializers={"w": _rand(*w_shape), "b": _rand(w_shape[0])})
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-4)
    (node,) = graph.nodes
    assert node.op is Op.CONV and len(node.attrs.pads) == 4


def test_conv1d_without_bias():
    x = _rand(2, 2, 11)
    model = single_node_model("Conv", {"x": x}, ["y"], {"strides": [3]},
                              initializers={"w": _rand(5, 2, 2)})
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-4)
    assert len(graph.nodes[0].inputs) == 2


def test_conv_same_pads_resolved_explicitly():
    x = _rand(1, 1, 6, 6)
    model = single_node_model("Conv", {"x": x}, ["y"], {"auto_pad": "SAME_UPPER",
                                                        "strides": [2, 2]},
                              initializers={"w": _rand(1, 1, 4, 4)})
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-4)
    # out = 3, total = (3-1)*2 + 4 - 6 = 2 -> 1 each side
    assert graph.nodes[0].attrs.pads == (1, 1, 1, 1)


@pytest.mark.parametrize("opset", [11, 17, 22])
@pytest.mark.parametrize("attrs", [
    {},
    {"strides": [2, 2], "pads": [1, 0, 1, 0]},
    {"strides": [2, 2], "output_padding": [1, 1]},
    {"strides": [3, 2], "output_shape": [10, 8]},
    {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"group": 2, "dilations": [2, 1]},
])
def test_conv_transpose(opset, attrs):
    x = _rand(1, 4, 4, 4)
    model = single_node_model("ConvTranspose", {"x": x}, ["y"], attrs, opset=opset,
                              initializers={"w": _rand(4, 3, 3, 3), "b": _rand(3 * attrs.get(
                                  "group", 1))})
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-4)
    assert graph.nodes[0].op is Op.CONV_TRANSPOSE
