"""Shape and dtype rules, one per op (rules-as-data: ``_RULES[op] -> fn(node)``).

Each rule reads ``node.inputs`` (their ``dtype``/``shape``) and ``node.attrs`` and returns one
``(dtype, shape)`` per output. Rules raise :class:`ShapeError` naming the node, the op and the
offending input when the inputs do not line up. ``Graph.add_node`` calls :func:`infer_node`; the
``infer_shapes`` pass re-runs every rule to re-check a whole graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .core import Node, Shape
from .dtypes import BOOL, DType
from .errors import ShapeError
from .ops import Op, OpKind

InferFn = Callable[[Node], list[tuple[DType, Shape]]]
_RULES: dict[Op, InferFn] = {}


def rule(*ops: Op):
    """Register a shape/dtype rule for ``ops``."""

    def deco(fn: InferFn) -> InferFn:
        for op in ops:
            _RULES[op] = fn
        return fn

    return deco


def infer_node(node: Node) -> list[tuple[DType, Shape]]:
    """Output ``(dtype, shape)`` list of ``node`` from its inputs and attributes."""
    fn = _RULES.get(node.op)
    if fn is None:
        raise ShapeError(f"no shape rule for op {node.op.value} (node {node.name})")
    for i, v in enumerate(node.inputs):
        if v is not None and v.shape is None:
            raise ShapeError(f"{node.op.value} node {node.name}: input {i} (%{v.name}) has no "
                             "known shape; bind dynamic dims with input_shapes=")
    return fn(node)


def fail(node: Node, message: str) -> ShapeError:
    """A ShapeError that names node and op."""
    return ShapeError(f"{node.op.value} node '{node.name}': {message}")


def broadcast_shapes(node: Node, *shapes: Shape) -> Shape:
    """Numpy (multidirectional) broadcasting of ``shapes``; error names the node."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise fail(node, f"input shapes {[list(s) for s in shapes]} do not broadcast") from None


@rule(*(OpKind.UNARY - {Op.CAST}))
def _unary(node: Node):
    x = node.inputs[0]
    return [(x.dtype, x.shape)]


@rule(Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW, Op.PRELU)
def _binary(node: Node):
    a, b = node.inputs[:2]
    return [(a.dtype, broadcast_shapes(node, a.shape, b.shape))]


@rule(Op.EQUAL)
def _equal(node: Node):
    a, b = node.inputs[:2]
    return [(BOOL, broadcast_shapes(node, a.shape, b.shape))]


@rule(Op.WHERE)
def _where(node: Node):
    c, a, b = node.inputs
    return [(a.dtype, broadcast_shapes(node, c.shape, a.shape, b.shape))]


@rule(Op.CAST)
def _cast(node: Node):
    return [(node.attrs.to, node.inputs[0].shape)]
