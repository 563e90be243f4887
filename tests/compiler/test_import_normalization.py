"""BatchNormalization, LayerNormalization, LRN, Softmax, LogSoftmax import vs onnxruntime."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import Op

RNG = np.random.default_rng(4)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("opset", [9, 14, 15])
@pytest.mark.parametrize("epsilon", [1e-5, 1e-2])
def test_batchnorm(opset, epsilon):
    x = _rand(2, 3, 4, 5)
    inits = {"scale": _rand(3), "bias": _rand(3), "mean": _rand(3),
             "var": np.abs(_rand(3)) + 0.5}
    model = single_node_model("BatchNormalization", {"x": x}, ["y"], {"epsilon": epsilon},
                              opset=opset, initializers=inits)
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-5)
    assert graph.nodes[0].attrs.epsilon == pytest.approx(epsilon)


@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm(axis, with_bias):
    x = _rand(2, 3, 4)
    norm_shape = x.shape[axis % 3:]
    inits = {"scale": _rand(*norm_shape)}
    if with_bias:
        inits["bias"] = _rand(*norm_shape)
    model = single_node_model("LayerNormalization", {"x": x}, ["y"], {"axis": axis},
                              opset=17, initializers=inits)
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-5)
    assert graph.nodes[0].attrs.axis == axis % 3


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("attrs", [{"size": 3}, {"size": 5, "alpha": 2e-3, "beta": 0.5,
                                                 "bias": 2.0}])
def test_lrn(opset, attrs):
    x = _rand(1, 6, 3, 3)
    model = single_node_model("LRN", {"x": x}, ["y"], attrs, opset=opset)
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-5)
    assert graph.nodes[0].attrs.size == attrs["size"]


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset, axis", [(13, None), (13, 1), (13, -2), (21, 0)])
def test_softmax_opset13(op_type, opset, axis):
    x = _rand(2, 3, 4)
    attrs = {} if axis is None else {"axis": axis}
    model = single_node_model(op_type, {"x": x}, ["y"], attrs, opset=opset)
    graph = check_against_ort(model, {"x": x}, rtol=1e-5, atol=1e-5)
    (node,) = graph.nodes
    assert node.attrs.axis == (-1 if axis is None else axis) % 3


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("axis, ops", [
    (None, [Op.RESHAPE, "softmax", Op.RESHAPE]),   # default axis 1: coerce to (2, 12)
    (0, [Op.RESHAPE, "softmax", Op.RESHAPE]),
    (-1, ["softmax"]),                             # last axis: coercion is a no-op
    (2, ["softmax"]),
])
def test_softmax_legacy_coerces_to_2d(op_type, opset, axis, ops):
    x = _rand(2, 3, 4)
    attrs = {} if axis is None else {"axis": axis}
    model = single_node_model(op_type, {"x": x}, ["y"], attrs, opset=opset)
    graph = check_against_ort(model, {"x": x}, rtol=1e-5, atol=1e-5)
    op = Op(op_type)
    assert [n.op for n in graph.nodes] == [op if o == "softmax" else o for o in ops]
    soft = next(n for n in graph.nodes if n.op is op)
    assert soft.attrs.axis == (1 if len(ops) == 3 else 2)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_mean_and_inv_std_dev_outputs(axis, dtype):
    x = _rand(2, 3, 4).astype(dtype)
    norm_shape = x.shape[axis % 3:]
    inits = {"scale": _rand(*norm_shape).astype(dtype), "bias": _rand(*norm_shape).astype(dtype)}
    model = single_node_model("LayerNormalization", {"x": x}, ["y", "mean", "inv_std"],
                              {"axis": axis}, opset=17, initializers=inits)
    graph = check_against_ort(model, {"x": x}, rtol=1e-4, atol=1e-5)
    assert [v.name for v in graph.outputs] == ["y", "mean", "inv_std"]
    assert graph.outputs[1].dtype.name == "float32"
    assert sum(n.op is Op.LAYERNORM for n in graph.nodes) == 1
