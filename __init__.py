"""lowbit — a quantizing tensor compiler: ONNX in, low-bit TVM kernels out.

Public API (issue 2)::

    graph = lowbit.import_onnx("model.onnx", input_shapes={"x": (1, 3, 32, 32)})
    print(graph)                                   # the text dump
    outs = lowbit.run_reference(graph, {"x": x})  # numpy reference executor

Compile and run::

    art = lowbit.compile("model.onnx", target="x86", quant="w4a8", calib="calib.npz")
    art.save("model.lbx")
    outs = lowbit.Session("model.lbx").run(None, {"x": x})

Per-layer plans under a budget (issue 5)::

    plan = lowbit.plan("model.onnx", "x86", calib="calib.npz", budget="size=0.25")
    plan.save("plan.toml")                                  # a recipe: --recipe plan.toml
    art = lowbit.compile("model.onnx", quant="auto", budget={"latency": "0.6x"},
                         calib="calib.npz")

Issue 3::

    qgraph = lowbit.quantize("model.onnx", quant="w4a8", calib="calib.npz",
                             input_shapes={"x": (16, 3, 32, 32)})   # integer graph
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os

#: the CPUs this process may run on, read when lowbit is imported: TVM's thread pool later
#: pins the thread that configures it to one CPU (lowbit.compiler.parallel gives workers these)
START_CPUS = frozenset(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else None

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
            input_shapes=None, *, threads=None, dump_ir=None, budget=None, max_drop=None,
            eval=None, jobs=None):
    """Quantize (unless ``quant == "none"``), lower and compile an ONNX model for ``target``;
    returns an :class:`~lowbit.runtime.artifact.Artifact` (``.save(path)``, then
    ``lowbit.Session(path)``). ``quant="auto"`` picks each layer's format, bits and kernel
    under ``budget`` (``"size=0.25,latency=0.6x"`` or ``{"size": 0.25}``), or the fastest plan
    within ``max_drop`` points on labelled ``eval`` data; ``jobs``: worker processes for the
    planning (default ``$LOWBIT_JOBS`` or one per CPU). See
    :func:`lowbit.compiler.driver.compile_model`."""
    from .compiler.driver import compile as _impl

    return _impl(model, target, quant, calib, recipe, input_shapes, threads=threads,
                 dump_ir=dump_ir, budget=budget, max_drop=max_drop, eval=eval, jobs=jobs)


def plan(model, target="x86", calib=None, budget=None, max_drop=None, eval=None, *,
         input_shapes=None, candidates=None, metric="sqnr", cache_dir=None, jobs=None):
    """The ``--quant auto`` plan of ``model`` for ``target``: per-layer sensitivity on
    ``calib``, kernel latencies measured on ``target``, an ILP under ``budget`` (CLI string or
    dict), or with ``max_drop`` + ``eval`` the fastest measured plan within the drop. Returns a
    :class:`~lowbit.compiler.allocate.Plan` (``.rows()``, ``.save("plan.toml")``). See
    :func:`lowbit.compiler.planner.plan`."""
    from .compiler.planner import plan as _impl

    return _impl(model, target, calib, budget, max_drop, eval, input_shapes=input_shapes,
                 candidates=candidates, metric=metric, cache_dir=cache_dir, jobs=jobs)


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
    "plan",
    "quantize",
    "run_reference",
]
