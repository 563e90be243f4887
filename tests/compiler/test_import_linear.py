"""Gemm / MatMul / MatMulInteger import vs onnxruntime."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import Op

RNG = np.random.default_rng(1)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("opset", [9, 11, 13, 21])
@pytest.mark.parametrize("attrs", [
    {},
    {"transA": 1},
    {"transB": 1, "alpha": 0.5, "beta": 2.0},
])
def test_gemm(opset, attrs):
    a = _rand(4, 3) if attrs.get("transA") else _rand(3, 4)
    b = _rand(5, 4) if attrs.get("transB") else _rand(4, 5)
    model = single_node_model("Gemm", {"a": a}, ["y"], attrs, opset=opset,
                              initializers={"b": b, "c": _rand(5)})
    graph = check_against_ort(model, {"a": a}, rtol=1e-4, atol=1e-4)
    attrs_ir = graph.nodes[0].attrs
    assert attrs_ir.trans_a == bool(attrs.get("transA", 0))
    assert attrs_ir.alpha == attrs.get("alpha", 1.0)


def test_gemm_without_c_opset13():
    a, b = _rand(2, 3), _rand(3, 4)
    model = single_node_model("Gemm", {"a": a, "b": b}, ["y"], opset=13)
    check_against_ort(model, {"a": a, "b": b}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 6)), ((4,), (2, 4, 3)),
                                    ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul(opset, shapes):
    a, b = _rand(*shapes[0]), _rand(*shapes[1])
    model = single_node_model("MatMul", {"a": a, "b": b}, ["y"], opset=opset)
    check_against_ort(model, {"a": a, "b": b}, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("zero_points", [False, True])
def test_matmul_integer(zero_points):
    a = RNG.integers(0, 255, (3, 4)).astype(np.uint8)
    b = RNG.integers(0, 255, (4, 2)).astype(np.uint8)
    inits = {"a_zp": np.uint8(12), "b_zp": np.uint8(200)} if zero_points else {}
    model = single_node_model("MatMulInteger", {"a": a, "b": b}, ["y"], opset=13,
                              initializers=inits)
    graph = check_against_ort(model, {"a": a, "b": b})
    assert graph.nodes[0].op is Op.MATMUL_INTEGER
