"""ReduceMean / ReduceSum / ReduceMax import vs onnxruntime: axes as attribute (old opsets) or
input (ReduceSum 13+, ReduceMean/ReduceMax 18+), keepdims, noop_with_empty_axes."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model

RNG = np.random.default_rng(5)
X = RNG.standard_normal((2, 3, 4)).astype(np.float32)
INPUT_SINCE = {"ReduceMean": 18, "ReduceSum": 13, "ReduceMax": 18}


@pytest.mark.parametrize("op_type", sorted(INPUT_SINCE))
@pytest.mark.parametrize("opset", [11, 13, 18, 21])
@pytest.mark.parametrize("axes, keepdims", [([1], 1), ([-1, 0], 0), (None, 1), (None, 0)])
def test_reduce(op_type, opset, axes, keepdims):
    attrs, inits, names = {"keepdims": keepdims}, {}, ["x"]
    if axes is not None:
        if opset >= INPUT_SINCE[op_type]:
            inits["axes"] = np.asarray(axes, np.int64)
            names.append("axes")
        else:
            attrs["axes"] = axes
    model = single_node_model(op_type, {"x": X}, ["y"], attrs, opset=opset,
                              initializers=inits, inputs=names)
    graph = check_against_ort(model, {"x": X}, rtol=1e-5, atol=1e-6)
    (node,) = graph.nodes
    assert node.attrs.axes == (None if axes is None else tuple(sorted(a % 3 for a in axes)))
    assert node.attrs.keepdims == bool(keepdims)


@pytest.mark.parametrize("op_type", sorted(INPUT_SINCE))
def test_noop_with_empty_axes(op_type):
    model = single_node_model(op_type, {"x": X}, ["y"], {"noop_with_empty_axes": 1}, opset=18)
    graph = check_against_ort(model, {"x": X})
    assert [n.op.value for n in graph.nodes] == ["Identity"]
