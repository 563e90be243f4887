"""lowbit as an ``onnx.backend.base.Backend``: import, default passes, reference execution.

This is the harness the ONNX backend test suite (``onnx.backend.test.BackendTest``) drives:
``LowbitBackend.prepare(model)`` returns a :class:`LowbitRep`; ``rep.run(inputs)`` compiles the
model for the shapes of ``inputs`` and runs it with :func:`lowbit.runtime.reference.run_reference`.

Why compilation happens in ``run`` and not in ``prepare``: the lowbit IR is *shape-static*. Every
graph input's shape is bound to the shape of the array actually given (``input_shapes``), and ONNX
parameter tensors (Reshape's shape, Slice's starts, Pad's pads, Resize's scales...) become
attributes at import time. When such a parameter tensor is itself a *graph input* — as in many
node tests, where ``shape`` is fed like data — the importer raises
:class:`~lowbit.ir.errors.NonConstantInputError` naming it; the backend then freezes that input
to the value given (``constants=``) and imports again. Compiled graphs are cached per input
shapes and dtypes, plus the values of the inputs that had to be frozen.

Models older than the importer's minimum opset (7) are first upgraded with
``onnx.version_converter`` (see :func:`upgrade_old_opset`), as the importer's error advises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from ..ir import Graph
from ..ir.errors import ExecutionError, InvalidModelError, NonConstantInputError

__all__ = ["CLAIMED_OPS", "UPGRADE_OPSET", "LowbitBackend", "LowbitRep", "compile_for",
           "prepare", "run_model", "run_node", "supports_device", "upgrade_old_opset"]

#: The ONNX ops (default domain) lowbit's importer claims; mirrors ``compiler/onnx_import``.
#: The backend test suite runs every test whose model uses only these ops.
CLAIMED_OPS: frozenset[str] = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "PRelu",
    "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Softmax",
    "LogSoftmax", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Neg",
    "Abs", "ReduceMean", "ReduceSum", "ReduceMax", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Concat", "Split",
    "Slice", "Squeeze", "Unsqueeze", "Shape", "Gather", "Cast", "Resize", "Pad",
    "LayerNormalization", "Constant", "ConstantOfShape", "Identity", "Dropout", "Expand",
    "Where", "Equal", "MatMulInteger", "QuantizeLinear", "DequantizeLinear", "LRN", "Sum",
})

#: Models below the importer's minimum opset are upgraded to this opset with
#: ``onnx.version_converter`` first (the pytorch-converted / -operator suites are opset 6).
UPGRADE_OPSET = 7

def _runtime_input_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are fed at run time (old IR versions also list initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initializers]


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade_old_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` converted to :data:`UPGRADE_OPSET` when its default-domain opset is older
    (the importer rejects those and advises exactly this conversion); otherwise ``model``."""
    opset = _default_opset(model)
    if opset is None or opset >= UPGRADE_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, UPGRADE_OPSET)
    except (RuntimeError, ValueError) as error:  # the C++ converter's ConvertError
        raise InvalidModelError(f"model {model.graph.name!r} uses opset {opset} and "
                                f"onnx.version_converter cannot upgrade it to "
                                f"{UPGRADE_OPSET}: {error}") from None


def _array_key(array: np.ndarray) -> tuple:
    return (array.dtype.str, array.shape, array.tobytes())


def compile_for(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    frozen: set[str],
    run_passes: bool = True,
) -> Graph:
    """Import ``model`` with every input shape bound to its feed's shape, then run the default
    passes.

    Inputs named in ``frozen`` are passed as ``constants=``. When the importer raises
    :class:`NonConstantInputError` naming another graph input, that name is added to ``frozen``
    (the caller's set is updated, so it can key its cache) and the import is retried.
    """
    from .onnx_import import import_onnx

    # Each retry freezes one more feed, so this ends within len(feeds) + 1 imports.
    while True:
        shapes = {n: tuple(a.shape) for n, a in feeds.items() if n not in frozen}
        constants = {n: feeds[n] for n in frozen}
        try:
            graph = import_onnx(model, input_shapes=shapes, constants=constants or None)
        except NonConstantInputError as error:
            if error.value_name not in feeds or error.value_name in frozen:
                raise  # computed at run time inside the graph: nothing to freeze
            frozen.add(error.value_name)
            continue
        if run_passes:
            from ..passes import default_pipeline

            graph = default_pipeline()(graph).graph
        return graph


class LowbitRep(BackendRep):
    """A prepared model: compiles lazily per input signature and runs the reference executor."""

    def __init__(self, model: onnx.ModelProto, run_passes: bool = True):
        self.model = upgrade_old_opset(model)
        self.run_passes = run_passes
        self.input_names = _runtime_input_names(self.model)
        self.output_names = [v.name for v in self.model.graph.output]
        #: signature (names, shapes, dtypes) -> names of inputs frozen as constants
        self._frozen: dict[tuple, frozenset[str]] = {}
        #: (signature, frozen values) -> compiled graph
        self._graphs: dict[tuple, Graph] = {}

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(self.input_names))
            if unknown:
                raise ExecutionError(f"model {self.model.graph.name!r}: unknown input(s) "
                                     f"{unknown}; the model's inputs are {self.input_names}")
            return {n: np.asarray(a) for n, a in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) > len(self.input_names):
            raise ExecutionError(f"model {self.model.graph.name!r}: got {len(inputs)} inputs, "
                                 f"the model has {len(self.input_names)}: {self.input_names}")
        # Fewer arrays than inputs: trailing optional inputs are omitted.
        return {n: np.asarray(a) for n, a in zip(self.input_names, inputs)}

    def graph_for(self, feeds: Mapping[str, np.ndarray]) -> Graph:
        """The compiled graph for these feeds (cached by shapes/dtypes and frozen values)."""
        signature = tuple((n, a.shape, a.dtype.str) for n, a in sorted(feeds.items()))
        frozen = self._frozen.get(signature)
        if frozen is not None:
            key = (signature, tuple(_array_key(feeds[n]) for n in sorted(frozen)))
            if key in self._graphs:
                return self._graphs[key]
        learned: set[str] = set(frozen or ())
        graph = compile_for(self.model, feeds, learned, self.run_passes)
        self._frozen[signature] = frozenset(learned)
        key = (signature, tuple(_array_key(feeds[n]) for n in sorted(learned)))
        self._graphs[key] = graph
        return graph

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run on ``inputs`` (a list in graph-input order, or a name -> array dict); returns
        the outputs in graph-output order."""
        from ..runtime.reference import run_reference

        feeds = self._feeds(inputs)
        graph = self.graph_for(feeds)
        graph_feeds = {v.name: feeds[v.name] for v in graph.inputs}
        results = run_reference(graph, graph_feeds)
        return tuple(results[v.name] for v in graph.outputs)


class LowbitBackend(Backend):
    """``onnx.backend.base.Backend`` over lowbit's importer, default passes and reference
    executor. CPU only."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> LowbitRep:
        """Return a :class:`LowbitRep`; compilation waits for the first ``run`` because the
        input shapes (and possibly values) are only known then. ``run_passes=False`` skips the
        default pass pipeline. Other keyword arguments (e.g. the suite's rtol/atol) are
        ignored."""
        if not cls.supports_device(device):
            raise ExecutionError(f"lowbit backend runs on CPU only, not on device {device!r}")
        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        elif isinstance(model, (str, os.PathLike)):
            model = onnx.load(model)
        return LowbitRep(model, run_passes=kwargs.get("run_passes", True))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU only (an unparsable device string is simply not supported)."""
        try:
            return Device(device).type == DeviceType.CPU
        except (AttributeError, ValueError):
            return False

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        """``prepare(model).run(inputs)``."""
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run one node: wrap it in a one-node model (opset ``opset_version`` or the newest)
        whose inputs are typed from ``inputs`` and run it."""
        arrays = [np.asarray(a) for a in (inputs.values() if isinstance(inputs, Mapping)
                                          else inputs)]
        names = [n for n in node.input if n]
        graph_inputs = [
            onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, arrays)
        ]
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        opsets = [onnx.helper.make_opsetid("", opset)]
        # Output types: from outputs_info, else from ONNX shape inference on the bare node.
        probe = onnx.helper.make_model(
            onnx.helper.make_graph([node], "probe", graph_inputs, []), opset_imports=opsets)
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(probe).graph.value_info}
        graph_outputs = []
        for i, name in enumerate(node.output):
            if outputs_info is not None and i < len(outputs_info):
                dtype, shape = outputs_info[i]
                elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
                graph_outputs.append(onnx.helper.make_tensor_value_info(name, elem, shape))
            elif name in inferred:
                graph_outputs.append(inferred[name])
            else:
                raise ExecutionError(f"run_node: cannot infer the type of output {name!r} of "
                                     f"{node.op_type} node {node.name!r}; pass outputs_info")
        model = onnx.helper.make_model(
            onnx.helper.make_graph([node], f"run_node_{node.op_type}", graph_inputs,
                                   graph_outputs),
            opset_imports=opsets,
        )
        return cls.prepare(model, device, **kwargs).run(arrays)


prepare = LowbitBackend.prepare
run_model = LowbitBackend.run_model
run_node = LowbitBackend.run_node
supports_device = LowbitBackend.supports_device
