"""lowbit — a quantizing tensor compiler: ONNX in, low-bit TVM kernels out.

Public API (issue 2)::

    graph = lowbit.import_onnx("model.onnx", input_shapes={"x": (1, 3, 32, 32)})
    print(graph)                                   # the text dump
    outs = lowbit.run_reference(graph, {"x": x})  # numpy reference executor
"""

from __future__ import annotations

__version__ = "0.1.0"

from .ir import (DType, Graph, LowbitError, Node, Op, QType, Value)  # noqa: E402


def import_onnx(path, input_shapes=None):
    """Import an ONNX model (path, bytes or ModelProto) into a lowbit :class:`Graph`."""
    from .compiler.onnx_import import import_onnx as _impl

    return _impl(path, input_shapes=input_shapes)


def run_reference(graph, feeds):
    """Execute ``graph`` with the numpy reference executor: ``{output_name: ndarray}``."""
    from .runtime.reference import run_reference as _impl

    return _impl(graph, feeds)


__all__ = ["__version__", "import_onnx", "run_reference", "Graph", "Node", "Value", "Op", "DType",
           "QType", "LowbitError"]
