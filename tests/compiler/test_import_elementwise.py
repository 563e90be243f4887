"""Binary/unary arithmetic, Sum, Equal, Where, Cast import vs onnxruntime."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import Op

RNG = np.random.default_rng(2)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("opset", [7, 13, 14, 21])
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("b_shape", [(2, 3, 4), (4,), (3, 1), ()])
def test_binary(opset, op_type, b_shape):
    a, b = _rand(2, 3, 4), _rand(*b_shape) + 3.0
    model = single_node_model(op_type, {"a": a, "b": np.asarray(b)}, ["y"], opset=opset)
    graph = check_against_ort(model, {"a": a, "b": np.asarray(b)})
    assert graph.nodes[0].op.value == op_type


def test_binary_integer():
    a = RNG.integers(-50, 50, (3, 4)).astype(np.int32)
    b = RNG.integers(1, 9, (4,)).astype(np.int32)
    for op_type in ("Add", "Mul", "Sub"):
        model = single_node_model(op_type, {"a": a, "b": b}, ["y"], opset=14)
        check_against_ort(model, {"a": a, "b": b})



@pytest.mark.parametrize("opset", [7, 13, 15])
def test_pow(opset):
    a, b = np.abs(_rand(3, 4)) + 0.5, _rand(4)
    model = single_node_model("Pow", {"a": a, "b": b}, ["y"], opset=opset)
    check_against_ort(model, {"a": a, "b": b}, rtol=1e-5)


@pytest.mark.parametrize("opset", [7, 13])
@pytest.mark.parametrize("op_type", ["Sqrt", "Exp", "Log", "Reciprocal", "Neg", "Abs", "Erf"])
def test_unary(opset, op_type):
    x = np.abs(_rand(2, 5)) + 0.1
    if op_type in ("Neg", "Abs", "Erf"):
        x = x - 0.6
    model = single_node_model(op_type, {"x": x}, ["y"], opset=opset if op_type != "Erf" else 13)
    graph = check_against_ort(model, {"x": x})
    assert graph.nodes[0].op.value == op_type


@pytest.mark.parametrize("opset", [8, 13])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_sum_is_chain_of_add(opset, n):
    feeds = {f"x{i}": _rand(3, 1 if i % 2 else 4) for i in range(n)}
    model = single_node_model("Sum", feeds, ["y"], opset=opset)
    graph = check_against_ort(model, feeds)
    ops = [node.op for node in graph.nodes]
    assert ops == ([Op.ADD] * (n - 1) if n > 1 else [Op.IDENTITY])


@pytest.mark.parametrize("opset", [11, 13, 19])
def test_equal_and_where(opset):
    a = RNG.integers(0, 3, (3, 4)).astype(np.int64)
    b = RNG.integers(0, 3, (4,)).astype(np.int64)
    model = single_node_model("Equal", {"a": a, "b": b}, ["y"], opset=opset)
    check_against_ort(model, {"a": a, "b": b})
    cond = a == 1
    x, y = _rand(3, 4), _rand(1, 4)
    model = single_node_model("Where", {"c": cond, "x": x, "y": y}, ["z"],
                              opset=max(opset, 9))
    check_against_ort(model, {"c": cond, "x": x, "y": y})


@pytest.mark.parametrize("opset", [9, 13, 19, 21])
@pytest.mark.parametrize("src, to", [
    (np.float32, 7),   # INT64
    (np.float32, 3),   # INT8
    (np.int64, 1),     # FLOAT
    (np.float32, 10),  # FLOAT16
    (np.int32, 9),     # BOOL
    (np.float32, 11),  # DOUBLE
])
def test_cast(opset, src, to):
    x = (RNG.standard_normal((3, 5)) * 20).astype(src)
    if to == 3:
        x = np.clip(x, -100, 100)
    model = single_node_model("Cast", {"x": x}, ["y"], {"to": to}, opset=opset)
    check_against_ort(model, {"x": x})
