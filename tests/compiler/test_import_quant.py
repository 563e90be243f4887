"""QuantizeLinear / DequantizeLinear / MatMulInteger import vs onnxruntime: per-tensor and
per-channel scales, zero-point dtypes, output_dtype, opsets 10 / 13 / 19 / 21."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import import import_onnx
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import INT8, UINT8, Op
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(10)
X = (RNG.standard_normal((2, 3, 4)) * 4).astype(np.float32)


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
@pytest.mark.parametrize("zp_dtype", [None, np.uint8, np.int8])
def test_quantize_per_tensor(opset, zp_dtype):
    inits = {"scale": np.asarray(0.05, np.float32)}
    if zp_dtype is not None:
        inits["zp"] = np.asarray(3, zp_dtype)
    model = single_node_model("QuantizeLinear", {"x": X}, ["y"], opset=opset,
                              initializers=inits)
    graph = check_against_ort(model, {"x": X})
    attrs = graph.nodes[0].attrs
    assert attrs.dtype == (INT8 if zp_dtype is np.int8 else UINT8) and attrs.axis is None


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_quantize_dequantize_per_channel(opset, axis):
    channels = X.shape[axis]
    scale = RNG.uniform(0.01, 0.1, channels).astype(np.float32)
    zp = RNG.integers(-5, 5, channels).astype(np.int8)
    model = single_node_model("QuantizeLinear", {"x": X}, ["y"], {"axis": axis}, opset=opset,
                              initializers={"scale": scale, "zp": zp})
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.axis == axis % 3
    q = RNG.integers(-100, 100, X.shape).astype(np.int8)
    model = single_node_model("DequantizeLinear", {"q": q}, ["y"], {"axis": axis},
                              opset=opset, initializers={"scale": scale, "zp": zp})
    graph = check_against_ort(model, {"q": q})
    assert graph.nodes[0].attrs.axis == axis % 3


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
def test_dequantize_per_tensor(opset):
    q = RNG.integers(0, 255, (3, 5)).astype(np.uint8)
    model = single_node_model("DequantizeLinear", {"q": q}, ["y"], opset=opset,
                              initializers={"scale": np.asarray(0.1, np.float32),
                                            "zp": np.asarray(128, np.uint8)})
    graph = check_against_ort(model, {"q": q})
    assert graph.nodes[0].op is Op.DEQUANTIZE


def test_quantize_output_dtype_opset21():
    model = single_node_model("QuantizeLinear", {"x": X}, ["y"],
                              {"output_dtype": TensorProto.INT8}, opset=21,
                              initializers={"scale": np.asarray(0.05, np.float32)})
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.dtype == INT8


def test_dequantize_of_constant_weights_is_kept():
    """The quantizer must see integer weights and their scale: DQ(const) is not folded."""
    w = RNG.integers(-127, 127, (4, 3)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], name="dq"),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.asarray(0.02, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 10
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    ir = check_against_ort(model, {"x": x}, rtol=1e-5, atol=1e-5)
    assert [n.op for n in ir.nodes] == [Op.DEQUANTIZE, Op.MATMUL]
    assert import_onnx(model).nodes[0].inputs[0].dtype == INT8
