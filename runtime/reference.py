"""The numpy reference executor: the float oracle of lowbit.

:class:`Interpreter` walks ``graph.nodes`` in order (torch.fx ``Interpreter`` style) with an
environment ``{Value: ndarray}``; :meth:`Interpreter.run_node` is the seam subclasses override
(fake-quant, integer simulation) — by default it calls the kernel registry of
:mod:`lowbit.runtime.kernels`. Every node result is checked against the shape the IR declares
and stored in the dtype it declares. An intermediate array is dropped as soon as its last user
has run, so peak memory stays near the widest cut of the graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..ir import Graph, Node, Value
from ..ir.errors import ExecutionError, LowbitError
from .kernels import get_kernel

#: numpy errors a kernel can raise on bad data; reported as ExecutionError naming the node
_KERNEL_ERRORS = (ValueError, IndexError, ArithmeticError)


def _conform(node: Node, results) -> list[np.ndarray]:
    """Check count and shapes of ``results`` against ``node.outputs``; cast to declared dtypes."""
    results = list(results)
    if len(results) != len(node.outputs):
        raise ExecutionError(f"{node.op.value} node '{node.name}': kernel returned "
                             f"{len(results)} outputs, the node has {len(node.outputs)}")
    out = []
    for value, array in zip(node.outputs, results):
        array = np.asarray(array)
        if value.shape is not None and array.shape != value.shape:
            raise ExecutionError(f"{node.op.value} node '{node.name}': output %{value.name} "
                                 f"has shape {list(array.shape)} at run time but the IR declares "
                                 f"{list(value.shape)}; re-run shape inference")
        if array.dtype != value.dtype.numpy:
            array = array.astype(value.dtype.numpy)
        out.append(array)
    return out


def evaluate_node(node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Run one node's reference kernel on ``inputs`` (one array per node input, None for an
    absent optional input); returns one array per output in the declared dtypes."""
    with np.errstate(all="ignore"):
        try:
            results = get_kernel(node.op)(node, list(inputs))
        except LowbitError:
            raise
        except _KERNEL_ERRORS as err:
            raise ExecutionError(f"{node.op.value} node '{node.name}' failed: {err}") from err
        return _conform(node, results)


class Interpreter:
    """Run a graph node by node; override :meth:`run_node` to change how a node computes.

    During :meth:`run`, ``self.env`` maps every live (computed, still needed) Value to its array.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.env: dict[Value, np.ndarray] = {}

    # -- the seam -----------------------------------------------------------------------------
    def run_node(self, node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        """Compute ``node`` from its input arrays; default: the reference kernel."""
        return get_kernel(node.op)(node, inputs)

    # -- driver -------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray],
            initial_env: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Validate ``feeds`` (graph input name -> array), run every node, and return the graph
        outputs keyed by name, in ``graph.outputs`` order, in their declared dtypes.

        ``initial_env`` (value name -> array, as torch.fx's ``Interpreter.run(initial_env=)``)
        resumes from a cut: those values count as computed, and a node whose outputs all
        appear there is skipped. The caller vouches that the arrays are what the skipped nodes
        would compute (e.g. a float prefix shared by a graph and its one-layer-quantized copy).
        """
        graph = self.graph
        self.env = dict(self.validate_feeds(feeds))
        given = set()
        if initial_env:
            by_name = {v.name: v for node in graph.nodes for v in node.outputs}
            for name, array in initial_env.items():
                value = by_name.get(name)
                if value is not None:
                    self.env[value] = array
                    given.add(value)
        remaining = self._use_counts()
        keep = {id(v) for v in graph.outputs}
        with np.errstate(all="ignore"):
            for node in graph.nodes:
                if given and node.outputs and all(v in given for v in node.outputs):
                    continue
                inputs = [self._fetch(node, v) for v in node.inputs]
                try:
                    results = self.run_node(node, inputs)
                except LowbitError:
                    raise
                except _KERNEL_ERRORS as err:
                    raise ExecutionError(f"{node.op.value} node '{node.name}' failed: {err}") \
                        from err
                del inputs
                for value, array in zip(node.outputs, _conform(node, results)):
                    if value.users or id(value) in keep:
                        self.env[value] = array
                for value in {id(v): v for v in node.inputs if v is not None}.values():
                    if value in remaining:
                        remaining[value] -= sum(1 for v in node.inputs if v is value)
                        if remaining[value] == 0 and id(value) not in keep:
                            self.env.pop(value, None)
        outputs = {}
        for value in graph.outputs:
            array = value.const if value.is_const else self.env.get(value)
            if array is None:
                raise ExecutionError(f"graph output %{value.name} was never computed: no node "
                                     "produces it and it is not a graph input or constant")
            outputs[value.name] = np.asarray(array, dtype=value.dtype.numpy)
        self.env = {}
        return outputs

    def validate_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[Value, np.ndarray]:
        """Feed arrays keyed by graph input Value; ExecutionError on a missing or unknown name,
        a wrong shape or a wrong dtype (no silent conversion: float64 is not float32), or a
        sub-byte integer input (int4 stored in int8...) holding values outside its range."""
        expected = {v.name: v for v in self.graph.inputs}
        unknown = sorted(set(feeds) - set(expected))
        if unknown:
            raise ExecutionError(f"unknown input name(s) {unknown}; graph inputs are "
                                 f"{list(expected)}")
        missing = [name for name in expected if name not in feeds]
        if missing:
            raise ExecutionError(f"missing input(s) {missing}; feed every graph input "
                                 f"{list(expected)}")
        env = {}
        for name, value in expected.items():
            array = np.asarray(feeds[name])
            want = value.dtype.numpy
            if array.dtype != want:
                raise ExecutionError(f"input '{name}' has dtype {array.dtype} but the graph "
                                     f"expects {want}; convert it with .astype(np.{want})")
            if value.shape is not None and (
                len(array.shape) != len(value.shape)
                or any(d >= 0 and d != g for d, g in zip(value.shape, array.shape))
            ):
                raise ExecutionError(f"input '{name}' has shape {list(array.shape)} but the "
                                     f"graph expects {list(value.shape)}")
            dt = value.dtype
            if dt.is_integer and dt.bits < dt.storage_bits and array.size and (
                array.min() < dt.min or array.max() > dt.max
            ):
                raise ExecutionError(f"input '{name}' is {dt} (stored as {want}) but holds values "
                                     f"outside [{dt.min}, {dt.max}]; clip or requantize it")
            env[value] = array
        return env

    def _use_counts(self) -> dict[Value, int]:
        counts: dict[Value, int] = {}
        for node in self.graph.nodes:
            for v in node.inputs:
                if v is not None and not v.is_const:
                    counts[v] = counts.get(v, 0) + 1
        return counts

    def _fetch(self, node: Node, value: Value | None) -> np.ndarray | None:
        if value is None:
            return None
        if value.is_const:
            return value.const
        try:
            return self.env[value]
        except KeyError:
            raise ExecutionError(f"{node.op.value} node '{node.name}' reads %{value.name} before "
                                 "it is computed; the graph is not topologically sorted "
                                 "(call graph.topological_sort())") from None


def run_reference(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``feeds`` with the numpy reference kernels (see :class:`Interpreter`)."""
    return Interpreter(graph).run(feeds)
