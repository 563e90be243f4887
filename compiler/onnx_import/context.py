"""What a converter sees: :class:`ConvertContext`, one per ONNX node.

* ``ctx.input(i)`` -> the IR :class:`Value` of ONNX input ``i`` (None when absent or empty);
* ``ctx.const(i, what)`` -> its constant ndarray, or :class:`NonConstantInputError` naming node,
  op, input name and the graph inputs it is computed from;
* ``ctx.attr(name, default)``; ``ctx.opset`` (model opset), ``ctx.version`` (schema version);
* ``ctx.emit(op, inputs, attrs, n_outputs)`` adds IR nodes and *folds eagerly*: when every input
  is a constant and each output has at most :data:`FOLD_LIMIT` elements, the node is evaluated
  with the reference executor and constants are returned instead. With all graph input shapes
  bound, this turns Shape -> Gather -> Concat -> Reshape chains into constant attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ...ir.core import Graph, Value
from ...ir.errors import NonConstantInputError, ShapeError, UnsupportedOpError
from ...ir.ops import Op
from .registry import get_attr, schema_version

#: largest output (elements) that ``emit`` folds into a constant
FOLD_LIMIT = 16 * 1024 * 1024
#: ops never folded: the quantizer must see integer weights and their scales
NO_FOLD = frozenset({Op.DEQUANTIZE})


class ConvertContext:
    """The view of one ONNX node that a converter works with."""

    def __init__(self, graph: Graph, values: dict[str, Value], node: onnx.NodeProto, name: str,
                 opset: int, version: int):
        self.graph = graph
        self.node = node
        self.name = name
        self.op_type = node.op_type
        self.opset = opset
        self.version = version
        self._values = values
        #: values this converter created (nodes' outputs and folded constants)
        self.created: list[Value] = []

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        """Number of ONNX inputs, absent optional ones ("") included."""
        return len(self.node.input)

    @property
    def n_outputs(self) -> int:
        """Number of ONNX outputs the node declares with a non-empty name (trailing)."""
        names = list(self.node.output)
        while names and not names[-1]:
            names.pop()
        return len(names)

    def has_input(self, i: int) -> bool:
        """True when optional input ``i`` is present (named, not "")."""
        return i < len(self.node.input) and bool(self.node.input[i])

    def input(self, i: int) -> Value | None:
        """IR value of ONNX input ``i``; None when the optional input is absent."""
        if not self.has_input(i):
            return None
        return self._values[self.node.input[i]]

    def inputs(self) -> list[Value | None]:
        """IR values of all ONNX inputs (None for absent ones)."""
        return [self.input(i) for i in range(self.n_inputs)]

    def input_name(self, i: int) -> str:
        """The schema's name of input ``i`` (e.g. Reshape input 1 is ``shape``)."""
        version = schema_version(self.op_type, self.opset)
        if version is None:
            return str(i)
        formal = onnx.defs.get_schema(self.op_type, self.opset).inputs
        if not formal:
            return str(i)
        return formal[min(i, len(formal) - 1)].name

    def const(self, i: int, what: str | None = None) -> np.ndarray | None:
        """Constant data of input ``i`` (None when absent); NonConstantInputError if computed."""
        value = self.input(i)
        if value is None:
            return None
        if value.is_const:
            return value.const
        formal = what or self.input_name(i)
        onnx_name = self.node.input[i]
        sources = _graph_input_sources(value)
        origin = ("computed from graph input " + ", ".join(f"'{s}'" for s in sources)
                  if sources else "computed")
        raise NonConstantInputError(
            f"{self.op_type} node '{self.name}' input '{formal}' (%{onnx_name}) must be a "
            f"compile-time constant; it is {origin} at run time (opset {self.opset}); bind the "
            f"input shapes with input_shapes= or freeze it with constants={{'{onnx_name}': ...}}",
            value_name=onnx_name)

    def attr(self, name: str, default=None):
        """Python value of ONNX attribute ``name`` (strings decoded), or ``default``."""
        return get_attr(self.node, name, default)

    def axis(self, axis: int, rank: int, what: str = "axis") -> int:
        """``axis`` normalized to ``[0, rank)``; ShapeError naming the node when out of range."""
        a = int(axis)
        if a < 0:
            a += rank
        if not 0 <= a < rank:
            raise ShapeError(f"{self.op_type} node '{self.name}': {what} {axis} is out of range "
                             f"for rank {rank} (opset {self.opset})")
        return a

    def unsupported(self, message: str) -> UnsupportedOpError:
        """An UnsupportedOpError that names the node, op and opset."""
        return UnsupportedOpError(f"{self.op_type} node '{self.name}' (opset {self.opset}): "
                                  f"{message}")

    # -- emission -------------------------------------------------------------------------------
    def emit(self, op: Op, inputs: Sequence[Value | None], attrs=None, n_outputs: int = 1,
             name: str | None = None) -> list[Value]:
        """Add ``op(inputs; attrs)``; constant-fold it when all inputs are constants."""
        graph = self.graph
        inputs = list(inputs)
        while inputs and inputs[-1] is None:  # absent trailing optional inputs
            inputs.pop()
        node = graph.add_node(op, inputs, attrs, name=name or self.name, outputs=n_outputs)
        present = [v for v in inputs if v is not None]
        foldable = (
            op not in NO_FOLD
            and present
            and all(v.is_const for v in present)
            and all(o.shape is not None and int(np.prod(o.shape)) <= FOLD_LIMIT
                    for o in node.outputs)
        )
        if not foldable:
            self.created.extend(node.outputs)
            return list(node.outputs)
        from ...runtime.reference import evaluate_node

        arrays = [None if v is None else v.const for v in inputs]
        results = evaluate_node(node, arrays)
        types = [(o.name, o.dtype, o.shape) for o in node.outputs]
        graph.remove_node(node)
        outs = []
        for (out_name, dtype, shape), array in zip(types, results):
            array = np.asarray(array)
            assert tuple(array.shape) == tuple(shape), (op, array.shape, shape)
            outs.append(graph.add_const(array, name=out_name, dtype=dtype))
        self.created.extend(outs)
        return outs

    def constant(self, array, name: str | None = None, dtype=None) -> Value:
        """A new constant value created by this converter."""
        value = self.graph.add_const(array, name=name or self.name, dtype=dtype)
        self.created.append(value)
        return value


def _graph_input_sources(value: Value) -> list[str]:
    """Names of the graph inputs that ``value`` is computed from (walking producers)."""
    seen: set[int] = set()
    found: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if v.producer is None:
            if not v.is_const and v.name not in found:
                found.append(v.name)
            continue
        stack.extend(x for x in v.producer.inputs if x is not None)
    return sorted(found)
