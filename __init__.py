"""lowbit — a quantizing tensor compiler: ONNX in, low-bit TVM kernels out.

Public API (issue 2)::

    graph = lowbit.import_onnx("model.onnx", input_shapes={"x": (1, 3, 32, 32)})
    print(graph)                                   # the text dump
    outs = lowbit.run_reference(graph, {"x": x})  # numpy reference executor

Compile and run::

    art = lowbit.compile("model.onnx", target="x86", quant="w4a8", calib="calib.npz")
    art.save("model.lbx")
    outs = lowbit.Session("model.lbx").run(None, {"x": x})

Issue 3::

    qgraph = lowbit.quantize("model.onnx", quant="w4a8", calib="calib.npz",
                             input_shapes={"x": (16, 3, 32, 32)})   # integer graph
"""

from __future__ import annotations

__version__ = "0.1.0"

from .ir import DType, Graph, LowbitError, Node, Op, QType, Value


def import_onnx(path, input_shapes=None):
    """Import an ONNX model (path, bytes or ModelProto) into a lowbit :class:`Graph`."""
    from .compiler.onnx_import import import_onnx as _impl

    return _impl(path, input_shapes=input_shapes)


def run_reference(graph, feeds):
    """Execute ``graph`` with the numpy reference executor: ``{output_name: ndarray}``."""
    from .runtime.reference import run_reference as _impl

    return _impl(graph, feeds)


def quantize(model_or_graph, quant="w4a8", calib=None, recipe=None, calibration="minmax",
             input_shapes=None, *, fold=True, dump_ir=None):
    """Quantize a model (ONNX path / bytes / ModelProto, or a Graph) with preset ``quant`` (or
    ``recipe``) calibrated on ``calib``; returns the integer :class:`Graph` (``fold=False``: the
    calibrated fake-quant graph). See :func:`lowbit.compiler.quantize.quantize`."""
    from .compiler.quantize import quantize as _impl

    return _impl(model_or_graph, quant, calib, recipe, calibration, input_shapes, fold=fold,
                 dump_ir=dump_ir)


def compile(model, target="x86", quant="w4a8", calib=None, recipe=None,
            input_shapes=None, *, threads=None, dump_ir=None):
    """Quantize (unless ``quant == "none"``), lower and compile an ONNX model for ``target``;
    returns an :class:`~lowbit.runtime.artifact.Artifact` (``.save(path)``, then
    ``lowbit.Session(path)``). See :func:`lowbit.compiler.driver.compile_model`."""
    from .compiler.driver import compile as _impl

    return _impl(model, target, quant, calib, recipe, input_shapes, threads=threads,
                 dump_ir=dump_ir)


def __getattr__(name):
    """Lazy exports: ``lowbit.Session`` (imports TVM's runtime only when first used)."""
    if name == "Session":
        from .runtime.session import Session

        return Session
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")


__all__ = [
    "DType",
    "Graph",
    "LowbitError",
    "Node",
    "Op",
    "QType",
    "Session",
    "Value",
    "__version__",
    "compile",
    "import_onnx",
    "quantize",
    "run_reference",
]
