"""Graph, Node, Value: the lowbit IR (onnx-ir style, with use-lists).

* A :class:`Value` is a tensor: name, dtype, static shape, optional constant data (``const``),
  optional :class:`~lowbit.ir.qtype.QType`, its producer ``(node, index)`` and its users
  ``[(node, input_index), ...]``.
* A :class:`Node` has an :class:`~lowbit.ir.ops.Op`, a frozen attrs dataclass, an input tuple
  (``None`` for an absent optional input) and outputs fixed at construction.
* A :class:`Graph` owns nodes in topological order, graph inputs/outputs and a name table.

Mutations go through ``Node.set_input`` / ``Graph.replace_uses`` / ``Graph.remove_node`` so
use-lists stay exact and passes can rewrite without searching.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Iterator, Sequence

import numpy as np

from .attrs import OP_ATTRS
from .dtypes import DType
from .errors import IRError
from .ops import Op
from .qtype import QType

Shape = tuple[int, ...]


class Value:
    """A tensor in the graph (graph input, constant, or node output)."""

    __slots__ = ("_users", "const", "dtype", "index", "meta", "name", "producer", "qtype", "shape")

    def __init__(
        self,
        name: str,
        dtype: DType,
        shape: Sequence[int] | None,
        const: np.ndarray | None = None,
        qtype: QType | None = None,
    ):
        self.name = name
        self.dtype = dtype
        self.shape: Shape | None = None if shape is None else tuple(int(d) for d in shape)
        self.const = const
        self.qtype = qtype
        self.producer: Node | None = None
        self.index: int = 0
        self._users: list[tuple[Node, int]] = []
        self.meta: dict = {}

    # -- queries ------------------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def users(self) -> tuple[tuple[Node, int], ...]:
        """``(node, input_index)`` for every use as a node input."""
        return tuple(self._users)

    @property
    def rank(self) -> int:
        assert self.shape is not None, f"value {self.name} has no shape"
        return len(self.shape)

    @property
    def numel(self) -> int:
        assert self.shape is not None, f"value {self.name} has no shape"
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies at its dtype's *arithmetic* width (int4 = half a byte)."""
        bits = self.qtype.bits if self.qtype is not None else self.dtype.bits
        return (self.numel * bits + 7) // 8

    def __repr__(self) -> str:
        shape = "?" if self.shape is None else list(self.shape)
        kind = "const " if self.is_const else ""
        return f"Value(%{self.name}: {kind}{self.dtype}{shape})"


class Node:
    """One operation: ``outputs = op(inputs; attrs)``."""

    __slots__ = ("_inputs", "attrs", "graph", "meta", "name", "op", "outputs")

    def __init__(self, name: str, op: Op, inputs: Sequence[Value | None], attrs, outputs):
        self.name = name
        self.op = op
        self.attrs = attrs
        self._inputs: tuple[Value | None, ...] = ()
        self.outputs: tuple[Value, ...] = tuple(outputs)
        self.graph: Graph | None = None
        self.meta: dict = {}
        for i, out in enumerate(self.outputs):
            out.producer, out.index = self, i
        self._inputs = tuple(inputs)
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._users.append((self, i))

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return self._inputs

    @property
    def output(self) -> Value:
        """The single output (asserts there is exactly one)."""
        assert len(self.outputs) == 1, f"{self.op} {self.name} has {len(self.outputs)} outputs"
        return self.outputs[0]

    def set_input(self, index: int, value: Value | None) -> None:
        """Replace input ``index``, keeping both use-lists exact."""
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old._users.remove((self, index))
        items = list(self._inputs)
        items[index] = value
        self._inputs = tuple(items)
        if value is not None:
            value._users.append((self, index))

    def _detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._users.remove((self, i))
        self._inputs = tuple(None for _ in self._inputs)

    def __repr__(self) -> str:
        ins = ", ".join("None" if v is None else "%" + v.name for v in self._inputs)
        outs = ", ".join("%" + v.name for v in self.outputs)
        return f"Node({self.name}: {outs} = {self.op.value}({ins}))"


class Graph:
    """A DAG of nodes in topological order with named, unique values."""

    def __init__(self, name: str = "main", opset: int | None = None):
        self.name = name
        self.opset = opset
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.meta: dict = {}
        self._counter = 0

    def __reduce__(self):
        """Pickle as the exact JSON form of :mod:`lowbit.ir.serialize` plus ``meta`` (the
        value/node links are too deep for pickle's recursion; worker processes receive graphs
        this way)."""
        from .serialize import from_json, to_json

        return from_json, (to_json(self, indent=None),), {"meta": dict(self.meta)}

    # -- names --------------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """``base`` if unused by any value or node, else ``base_1``, ``base_2``..."""
        base = base or "v"
        if base not in self.values:
            return base
        while True:
            self._counter += 1
            cand = f"{base}_{self._counter}"
            if cand not in self.values:
                return cand

    def _register(self, value: Value) -> Value:
        if value.name in self.values and self.values[value.name] is not value:
            raise IRError(f"duplicate value name %{value.name} in graph {self.name}")
        self.values[value.name] = value
        return value

    # -- construction -------------------------------------------------------------------------
    def add_input(self, name: str, dtype: DType, shape: Sequence[int]) -> Value:
        """Append a graph input."""
        value = self._register(Value(name, dtype, shape))
        self.inputs.append(value)
        return value

    def add_const(self, array, name: str = "const", dtype: DType | None = None) -> Value:
        """A constant value (initializer). ``name`` is made unique."""
        arr = np.asarray(array)
        dt = dtype or DType.from_numpy(arr.dtype)
        if arr.dtype != dt.numpy:
            arr = arr.astype(dt.numpy)
        arr.setflags(write=False)
        return self._register(Value(self.unique_name(name), dt, arr.shape, const=arr))

    def add_node(
        self,
        op: Op,
        inputs: Sequence[Value | None],
        attrs=None,
        *,
        name: str | None = None,
        outputs: int | Sequence[str] = 1,
        out_types: Sequence[tuple[DType, Sequence[int]]] | None = None,
        index: int | None = None,
    ) -> Node:
        """Create a node, append it (or insert at ``index``) and return it.

        ``outputs`` is a count or a list of output names (made unique). Output dtypes/shapes
        come from ``out_types`` or, by default, from the shape/type rules in
        :mod:`lowbit.ir.infer`.
        """
        op = Op(op)
        expected = OP_ATTRS[op]
        if expected is None and attrs is not None:
            raise IRError(f"{op.value} takes no attributes, got {type(attrs).__name__}")
        if expected is not None and not isinstance(attrs, expected):
            raise IRError(f"{op.value} needs {expected.__name__} attributes, got {attrs!r}")
        node_name = name or op.value.lower()
        names = (
            [f"{node_name}_out{i}" if i else node_name for i in range(outputs)]
            if isinstance(outputs, int)
            else list(outputs)
        )
        outs = [Value(self.unique_name(n), DType("float", 32), None) for n in names]
        for v in outs:
            self._register(v)
        node = Node(self._unique_node_name(node_name), op, inputs, attrs, outs)
        node.graph = self
        if out_types is None:
            from .infer import infer_node

            out_types = infer_node(node)
        if len(out_types) != len(outs):
            raise IRError(f"{op.value} {node.name}: {len(out_types)} output types for "
                          f"{len(outs)} outputs")
        for v, (dt, shape) in zip(outs, out_types):
            v.dtype = dt
            v.shape = None if shape is None else tuple(int(d) for d in shape)
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def make(self, op: Op, *inputs: Value | None, attrs=None, name: str | None = None) -> Value:
        """Add a single-output node and return its output value."""
        return self.add_node(op, inputs, attrs, name=name).output

    def _unique_node_name(self, base: str) -> str:
        taken = self.meta.setdefault("_node_names", set())
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    # -- mutation -----------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value) -> int:
        """Point every use of ``old`` (node inputs and graph outputs) at ``new``; returns count."""
        count = 0
        for node, i in list(old._users):
            node.set_input(i, new)
            count += 1
        for i, out in enumerate(self.outputs):
            if out is old:
                self.outputs[i] = new
                count += 1
        return count

    def remove_node(self, node: Node) -> None:
        """Remove ``node``; its outputs must be unused (not consumed and not graph outputs)."""
        for out in node.outputs:
            if out._users or any(o is out for o in self.outputs):
                raise IRError(f"cannot remove {node.op.value} {node.name}: output %{out.name} is "
                              "still used; replace its uses first")
        node._detach_inputs()
        self.nodes.remove(node)
        for out in node.outputs:
            self.values.pop(out.name, None)
            out.producer = None
        self.meta.get("_node_names", set()).discard(node.name)
        node.graph = None

    def forget_unused_constants(self) -> int:
        """Drop constants no node and no graph output uses from the name table."""
        outs = {id(v) for v in self.outputs}
        dead = [n for n, v in self.values.items()
                if v.is_const and not v._users and id(v) not in outs]
        for n in dead:
            del self.values[n]
        return len(dead)

    def topological_sort(self) -> None:
        """Reorder ``nodes`` topologically (stable for already-sorted graphs)."""
        order: list[Node] = []
        done: set[int] = set()
        position = {id(n): i for i, n in enumerate(self.nodes)}
        state: dict[int, int] = {}
        for root in self.nodes:
            stack = [(root, False)]
            while stack:
                node, expanded = stack.pop()
                if id(node) in done:
                    continue
                if expanded:
                    done.add(id(node))
                    order.append(node)
                    continue
                if state.get(id(node)) == 1:
                    raise IRError(f"cycle through node {node.name}")
                state[id(node)] = 1
                stack.append((node, True))
                preds = [v.producer for v in node.inputs
                         if v is not None and v.producer is not None]
                for p in sorted(preds, key=lambda n: -position.get(id(n), 0)):
                    if id(p) not in done:
                        stack.append((p, False))
        self.nodes = order

    # -- queries ------------------------------------------------------------------------------
    def constants(self) -> list[Value]:
        """Constants used by nodes or graph outputs, in first-use order."""
        seen: dict[int, Value] = {}
        for node in self.nodes:
            for v in node.inputs:
                if v is not None and v.is_const:
                    seen.setdefault(id(v), v)
        for v in self.outputs:
            if v.is_const:
                seen.setdefault(id(v), v)
        return list(seen.values())

    def node_by_name(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def copy(self) -> Graph:
        """A deep copy, rebuilt node by node (no recursion, so graphs of any depth copy).
        Constant arrays, attrs and QTypes are shared: they are immutable."""
        g = Graph(self.name, self.opset)
        g._counter = self._counter
        g.meta = {k: _copy.deepcopy(v) for k, v in self.meta.items() if k != "_node_names"}
        g.meta["_node_names"] = set(self.meta.get("_node_names", ()))
        vmap: dict[int, Value] = {}

        def clone(v: Value) -> Value:
            new = Value(v.name, v.dtype, v.shape, const=v.const, qtype=v.qtype)
            new.meta = _copy.deepcopy(v.meta)
            vmap[id(v)] = new
            return g._register(new)

        g.inputs = [clone(v) for v in self.inputs]
        for v in self.values.values():
            if v.is_const:
                clone(v)
        for n in self.nodes:
            outs = [clone(v) for v in n.outputs]
            ins = [None if v is None else vmap.get(id(v)) or clone(v) for v in n.inputs]
            node = Node(n.name, n.op, ins, n.attrs, outs)
            node.graph = g
            node.meta = _copy.deepcopy(n.meta)
            g.nodes.append(node)
        g.outputs = [vmap.get(id(v)) or clone(v) for v in self.outputs]
        return g

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)
