"""Helpers the kernel-family bench scripts share: batch timing and one-layer ORT baselines.

The scripts run as ``python bench/bench_<family>.py``, so this directory is ``sys.path[0]`` and
they import it as ``from _common import ...``.

- :func:`batch_seconds`: mean seconds per call of ``number`` back-to-back calls.
- :func:`layer_model`: a one-graph ONNX model (opset 17, IR version 9) of given nodes.
- :func:`ort_session`: an onnxruntime CPU session with ``threads`` intra-op threads (one
  inter-op thread), from a model or a saved model's path.
- :func:`matmul_model` / :func:`matmul_integer_model`: the baselines ``y = x @ w`` in fp32
  ``MatMul`` and in ``MatMulInteger`` (uint8 ``x`` with zero point ``zx``, int8 ``w``, int32 ``y``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

ONNX_OPSET = 17
ONNX_IR_VERSION = 9


def batch_seconds(fn, number: int) -> float:
    """Mean time of ``number`` back-to-back calls (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def layer_model(nodes, inputs, outputs, inits, name: str = "layer"):
    """``onnx.ModelProto`` of one graph (``nodes``, value infos, initializers), opset 17."""
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    return model


def ort_session(model, threads: int = 1):
    """onnxruntime CPU ``InferenceSession`` of ``model`` (a ModelProto, or a path to one)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def matmul_model(w: np.ndarray, M: int, name: str = "fp32"):
    """fp32 ``MatMul``: ``y (M, N) = x (M, K) @ w`` with ``w`` a float32 initializer."""
    from onnx import TensorProto, helper, numpy_helper

    K, N = w.shape
    return layer_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
                       [numpy_helper.from_array(w.astype(np.float32), "w")], name)


def matmul_integer_model(w: np.ndarray, M: int, zx: int, name: str = "int8"):
    """``MatMulInteger``: ``y (M, N) int32 = (x - zx) @ w``, uint8 ``x``, int8 ``w``."""
    from onnx import TensorProto, helper, numpy_helper

    K, N = w.shape
    return layer_model([helper.make_node("MatMulInteger", ["x", "w", "zx"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.UINT8, [M, K])],
                       [helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])],
                       [numpy_helper.from_array(w.astype(np.int8), "w"),
                        numpy_helper.from_array(np.array(zx, np.uint8), "zx")], name)
