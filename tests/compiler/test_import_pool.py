"""MaxPool / AveragePool / GlobalAveragePool / GlobalMaxPool import vs onnxruntime."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import Op

RNG = np.random.default_rng(6)
X = RNG.standard_normal((1, 2, 9, 8)).astype(np.float32)


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("opset", [9, 11, 19, 22])
@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 2], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER", "strides": [2, 3]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 2], "dilations": [2, 2]},
])
def test_pool(op_type, opset, attrs):
    if "ceil_mode" in attrs and opset < 10:
        pytest.skip("ceil_mode exists from opset 10")
    if "dilations" in attrs and (opset < 10 or op_type == "AveragePool" and opset < 19):
        pytest.skip("dilations need MaxPool-10 / AveragePool-19")
    if "count_include_pad" in attrs and op_type == "MaxPool":
        pytest.skip("AveragePool only")
    model = single_node_model(op_type, {"x": X}, ["y"], attrs, opset=opset)
    graph = check_against_ort(model, {"x": X}, rtol=1e-5, atol=1e-6)
    (node,) = graph.nodes
    assert node.attrs.kernel_shape == tuple(attrs["kernel_shape"])
    assert len(node.attrs.pads) == 4


@pytest.mark.parametrize("op_type, op", [("GlobalAveragePool", Op.GLOBAL_AVGPOOL),
                                         ("GlobalMaxPool", Op.GLOBAL_MAXPOOL)])
@pytest.mark.parametrize("opset", [9, 22])
def test_global_pool(op_type, op, opset):
    model = single_node_model(op_type, {"x": X}, ["y"], opset=opset)
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].op is op
