"""Constant, ConstantOfShape, Shape, Identity, Dropout import, and eager constant folding of
shape subgraphs (Shape -> Gather -> Concat -> Reshape ends as one Reshape)."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import import import_onnx
from lowbit.compiler.onnx_import.testing import (
    check_against_ort,
    onnx_elem_type,
    run_ort,
    single_node_model,
)
from lowbit.ir import Op, verify
from lowbit.runtime.reference import run_reference
from onnx import TensorProto, TypeProto, helper, numpy_helper

RNG = np.random.default_rng(8)
X = RNG.standard_normal((2, 3, 4)).astype(np.float32)


def _model(nodes, inputs, outputs, opset=17, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.mark.parametrize("opset", [9, 13, 21])
def test_shape_gather_concat_reshape_folds_to_one_reshape(opset):
    """y = x.reshape(x.shape[0], -1) computed ONNX-style through a shape subgraph."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n"] + (["ax"] if opset >= 13 else []), ["n1"],
                         name="unsq", **({} if opset >= 13 else {"axes": [0]})),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [numpy_helper.from_array(np.asarray(0, np.int64), "zero"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.asarray([0], np.int64), "ax")]
    model = _model(nodes, [_float_input("x", ["N", 3, 4])], [_float_input("y", ["N", 12])],
                   opset=opset, initializers=inits)
    graph = import_onnx(model, input_shapes={"x": (2, 3, 4)})
    verify(graph)
    assert [n.op for n in graph.nodes] == [Op.RESHAPE]
    assert graph.nodes[0].attrs.shape == (2, 12)
    assert graph.nodes[0].name == "reshape" and graph.outputs[0].name == "y"
    np.testing.assert_array_equal(run_reference(graph, {"x": X})["y"], X.reshape(2, 12))


@pytest.mark.parametrize("opset", [9, 13, 15, 21])
@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"start": -2, "end": -1}, {"end": 10}])
def test_shape_output_is_constant(opset, attrs):
    if attrs and opset < 15:
        pytest.skip("start/end from opset 15")
    model = single_node_model("Shape", {"x": X}, ["y"], attrs, opset=opset)
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes == [] and graph.outputs[0].is_const and graph.outputs[0].name == "y"


@pytest.mark.parametrize("value", [
    {"value": numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))},
    {"value_float": 2.5}, {"value_floats": [1.0, 2.0]}, {"value_int": 7},
    {"value_ints": [1, 2, 3]},
])
def test_constant(value):
    node = helper.make_node("Constant", [], ["c"], name="const", **value)
    add = helper.make_node("Identity", ["c"], ["y"], name="id")
    model = _model([node, add], [], [helper.make_value_info("y", TypeProto())], opset=13)
    expected = run_ort(model, {})["y"]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(
        "y", onnx_elem_type(expected.dtype), expected.shape))
    graph = import_onnx(model)
    assert graph.nodes == [] and graph.outputs[0].name == "y"
    np.testing.assert_array_equal(graph.outputs[0].const, expected)
    assert graph.outputs[0].const.dtype == expected.dtype


@pytest.mark.parametrize("opset", [9, 20, 21])
@pytest.mark.parametrize("value", [None, np.asarray([3], np.int32), np.asarray([1.5], np.float32)])
def test_constant_of_shape_feeds_add(opset, value):
    attrs = {} if value is None else {"value": numpy_helper.from_array(value)}
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["c"], **attrs),
             helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "cf"], ["y"])]
    model = _model(nodes, [_float_input("x", [2, 3, 4])], [_float_input("y", [2, 3, 4])],
                   opset=opset)
    graph = check_against_ort(model, {"x": X})
    assert [n.op for n in graph.nodes] == [Op.ADD]
    assert graph.nodes[0].name == "Add_3"  # unnamed ONNX node: <op>_<index>


def test_identity_of_input_keeps_output_name():
    model = single_node_model("Identity", {"x": X}, ["y"], opset=21)
    graph = check_against_ort(model, {"x": X})
    assert graph.outputs[0].name == "y" and [n.op for n in graph.nodes] == [Op.IDENTITY]


def test_identity_inside_graph_disappears():
    nodes = [helper.make_node("Identity", ["x"], ["i"], name="id"),
             helper.make_node("Relu", ["i"], ["y"], name="relu")]
    model = _model(nodes, [_float_input("x", [2, 3, 4])], [_float_input("y", [2, 3, 4])])
    graph = check_against_ort(model, {"x": X})
    assert [n.op for n in graph.nodes] == [Op.RELU]
    assert graph.nodes[0].inputs[0].name == "x"


@pytest.mark.parametrize("opset", [9, 12, 13, 22])
def test_dropout_is_identity_with_true_mask(opset):
    names = ["x"]
    inits = {}
    if opset >= 12:
        inits = {"ratio": np.asarray(0.5, np.float32), "train": np.asarray(False)}
        names += ["ratio", "train"]
    model = single_node_model("Dropout", {"x": X}, ["y", "mask"], opset=opset,
                              initializers=inits, inputs=names)
    if opset >= 10:
        graph = check_against_ort(model, {"x": X})
    else:  # a float mask: onnxruntime returns zeros there, the spec keeps every element
        graph = import_onnx(model)
        np.testing.assert_array_equal(run_reference(graph, {"x": X})["y"], X)
    mask = graph.outputs[1]
    assert mask.is_const and mask.name == "mask" and bool(mask.const.all())
    assert [n.op for n in graph.nodes] == [Op.IDENTITY]  # y stays a named graph output


def test_dropout_training_mode_is_rejected():
    from lowbit.ir import UnsupportedOpError

    inits = {"ratio": np.asarray(0.5, np.float32), "train": np.asarray(True)}
    model = single_node_model("Dropout", {"x": X}, ["y"], opset=13, initializers=inits,
                              inputs=["x", "ratio", "train"])
    with pytest.raises(UnsupportedOpError, match="Dropout node 'dropout_node'.*training_mode"):
        import_onnx(model)


def test_folding_respects_size_limit(monkeypatch):
    from lowbit.compiler.onnx_import import context

    monkeypatch.setattr(context, "FOLD_LIMIT", 4)
    big = RNG.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], name="t"),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")]
    model = _model(nodes, [_float_input("x", [2, 4])], [_float_input("y", [2, 3])],
                   initializers=[numpy_helper.from_array(big, "w")])
    graph = import_onnx(model)
    assert [n.op for n in graph.nodes] == [Op.TRANSPOSE, Op.MATMUL]
    monkeypatch.setattr(context, "FOLD_LIMIT", 1 << 24)
    assert [n.op for n in import_onnx(model).nodes] == [Op.MATMUL]


def test_constant_graph_output_stays_constant():
    nodes = [helper.make_node("Add", ["a", "b"], ["c"], name="add"),
             helper.make_node("Relu", ["x"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(np.ones(3, np.float32), "a"),
             numpy_helper.from_array(np.full(3, 2, np.float32), "b")]
    model = _model(nodes, [_float_input("x", [3])], [_float_input("y", [3]),
                                                     _float_input("c", [3])],
                   initializers=inits)
    graph = check_against_ort(model, {"x": np.ones(3, np.float32)})
    assert graph.outputs[1].is_const and graph.outputs[1].name == "c"
    assert [v.name for v in graph.constants()] == ["c"]
