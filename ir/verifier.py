"""The IR verifier: checks the invariants every pass must keep.

* every node input is a graph input, a constant, or an output of an *earlier* node;
* use-lists match the inputs exactly; every output's producer is its node;
* value and node names are unique and registered in ``graph.values``;
* attributes are of the op's declared class (``OP_ATTRS``);
* output dtype/shape agree with the shape rules (``lowbit.ir.infer``);
* a QType's codes fit the value's integer dtype;
* graph outputs are defined.
"""

from __future__ import annotations

from .attrs import OP_ATTRS
from .core import Graph
from .errors import IRError, ShapeError
from .infer import infer_node


def verify(graph: Graph, check_types: bool = True) -> None:
    """Raise :class:`IRError` at the first broken invariant."""
    defined: set[int] = {id(v) for v in graph.inputs}
    node_names: set[str] = set()
    for v in graph.inputs:
        if v.is_const or v.producer is not None:
            raise IRError(f"graph input %{v.name} must not be a constant or produced by a node")
    for node in graph.nodes:
        where = f"{node.op.value} node '{node.name}'"
        if node.name in node_names:
            raise IRError(f"duplicate node name '{node.name}'")
        node_names.add(node.name)
        if node.graph is not graph:
            raise IRError(f"{where} does not belong to graph {graph.name}")
        expected = OP_ATTRS[node.op]
        if (expected is None) != (node.attrs is None) or (
            expected is not None and not isinstance(node.attrs, expected)
        ):
            raise IRError(f"{where}: attrs {type(node.attrs).__name__} but op wants "
                          f"{getattr(expected, '__name__', None)}")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if graph.values.get(v.name) is not v:
                raise IRError(f"{where}: input {i} %{v.name} is not registered in the graph")
            if not v.is_const and id(v) not in defined:
                raise IRError(f"{where}: input {i} %{v.name} is used before it is defined "
                              "(dangling value or nodes out of topological order)")
            if (node, i) not in v._users:
                raise IRError(f"{where}: use-list of %{v.name} misses input {i}")
        for i, out in enumerate(node.outputs):
            if out.producer is not node or out.index != i:
                raise IRError(f"{where}: output %{out.name} has a stale producer")
            if graph.values.get(out.name) is not out:
                raise IRError(f"{where}: output %{out.name} is not registered in the graph")
            if out.is_const:
                raise IRError(f"{where}: output %{out.name} is marked constant")
            defined.add(id(out))
        if check_types:
            try:
                types = infer_node(node)
            except ShapeError as e:
                raise IRError(f"shape rules reject {where}: {e}") from None
            for out, (dt, shape) in zip(node.outputs, types):
                if out.dtype != dt or out.shape != (None if shape is None else tuple(shape)):
                    raise IRError(f"{where}: output %{out.name} is {out.dtype}{list(out.shape or [])}"
                                  f" but the shape rules give {dt}{list(shape or [])}")
    for v in graph.values.values():
        for node, i in v._users:
            if node.graph is not graph or node.inputs[i] is not v:
                raise IRError(f"use-list of %{v.name} names {node.name} input {i}, which is stale")
        if v.qtype is not None and v.dtype.is_integer and v.qtype.kind.value == "uniform":
            if v.qtype.storage.bits > v.dtype.bits:
                raise IRError(f"%{v.name}: QType {v.qtype} needs {v.qtype.storage} but the value "
                              f"is {v.dtype}")
            if v.is_const and not v.qtype.can_represent(v.const):
                raise IRError(f"%{v.name}: constant codes fall outside QType {v.qtype}")
    for v in graph.outputs:
        if not v.is_const and id(v) not in defined:
            raise IRError(f"graph output %{v.name} is not produced by any node or input")
