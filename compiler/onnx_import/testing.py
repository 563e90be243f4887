"""Helpers for importer tests: build single-node ONNX models and compare lowbit's reference
executor with onnxruntime (TVM ``check_correctness`` style)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...ir.verifier import verify

_NP_TO_ONNX = {np.dtype(k): v for k, v in {
    np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE,
    np.float16: TensorProto.FLOAT16, np.int8: TensorProto.INT8, np.int16: TensorProto.INT16,
    np.int32: TensorProto.INT32, np.int64: TensorProto.INT64, np.uint8: TensorProto.UINT8,
    np.uint16: TensorProto.UINT16, np.uint32: TensorProto.UINT32,
    np.uint64: TensorProto.UINT64, np.bool_: TensorProto.BOOL}.items()}


def onnx_elem_type(dtype) -> int:
    """numpy dtype -> ONNX TensorProto element type."""
    return _NP_TO_ONNX[np.dtype(dtype)]


def single_node_model(op_type: str, feeds: dict, outputs, attrs: dict | None = None,
                      opset: int = 17, initializers: dict | None = None,
                      inputs: list[str] | None = None, dynamic: dict | None = None):
    """A model with one ``op_type`` node.

    ``feeds`` {name: array} become graph inputs (their shapes static unless ``dynamic`` maps a
    name to dim names), ``initializers`` {name: array} constants; ``inputs`` orders the node's
    inputs ("" for an absent optional one; default: feeds then initializers); ``outputs`` is a
    list of output names (types left to shape inference; ORT needs none).
    """
    initializers = initializers or {}
    names = inputs if inputs is not None else list(feeds) + list(initializers)
    node = helper.make_node(op_type, names, list(outputs), name=f"{op_type.lower()}_node",
                            **(attrs or {}))
    graph_inputs = []
    for name, array in feeds.items():
        shape = list(np.shape(array))
        if dynamic and name in dynamic:
            shape = list(dynamic[name])
        graph_inputs.append(helper.make_tensor_value_info(name, onnx_elem_type(array.dtype),
                                                          shape))
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                     for o in outputs]
    inits = [numpy_helper.from_array(np.asarray(a), name) for name, a in initializers.items()]
    graph = helper.make_graph([node], "test", graph_inputs, graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model)
    for out in model.graph.output:
        for vi in list(inferred.graph.output) + list(inferred.graph.value_info):
            if vi.name == out.name and vi.type.tensor_type.elem_type:
                out.CopyFrom(vi)
    missing = [o for o in model.graph.output if not o.type.tensor_type.HasField("shape")]
    if missing:  # the checker wants output types: take them from an onnxruntime run
        for out in missing:
            out.ClearField("type")
        results = run_ort(model, feeds)
        for out in missing:
            out.CopyFrom(helper.make_tensor_value_info(
                out.name, onnx_elem_type(results[out.name].dtype), results[out.name].shape))
    return model


def run_ort(model: onnx.ModelProto, feeds: dict) -> dict:
    """``{output_name: ndarray}`` from onnxruntime (CPU, graph optimizations off)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def check_against_ort(model: onnx.ModelProto, feeds: dict, rtol: float = 1e-5,
                      atol: float = 1e-5, **import_kwargs):
    """Import ``model``, verify the IR, run the reference executor and compare every output
    with onnxruntime (same dtype and shape, values within tolerance). Returns the graph."""
    from ...runtime.reference import run_reference
    from .importer import import_onnx

    graph = import_onnx(model, **import_kwargs)
    verify(graph)
    expected = run_ort(model, feeds)
    lowbit_feeds = {k: v for k, v in feeds.items()
                    if k not in import_kwargs.get("constants", {})}
    got = run_reference(graph, lowbit_feeds)
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for name, want in expected.items():
        have = np.asarray(got[name])
        assert have.shape == want.shape, (name, have.shape, want.shape)
        assert have.dtype == want.dtype, (name, have.dtype, want.dtype)
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(have, want, rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(have, want, err_msg=name)
    return graph
