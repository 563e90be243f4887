"""canonicalize: rewrite equivalent spellings into one canonical form the later stages expect."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op, Value
from ..ir.attrs import ReshapeAttrs, TransposeAttrs
from .base import Pass, PassResult
from .rewrite import can_replace, position, remove_if_unused, replace_node

#: ops that only relabel the same elements in the same order
_VIEWS = frozenset({Op.RESHAPE, Op.FLATTEN, Op.SQUEEZE, Op.UNSQUEEZE, Op.IDENTITY})


class Canonicalize(Pass):
    """Rules, applied in one walk in graph order (so chains are handled as they are met):

    * Gemm -> MatMul (+ Mul) (+ Add): Y = alpha·op(A)·op(B) + beta·C becomes
      MatMul(op(A), op(B)) [· alpha] [+ beta·C]. A transpose of a constant operand is folded
      into a new constant (else a Transpose node); alpha is folded into a constant B (or else a
      constant A), otherwise a Mul by the scalar follows the MatMul; beta·C is folded when C is
      constant, otherwise a Mul of C; the Add is dropped when C is absent or beta = 0.
    * Flatten, Squeeze, Unsqueeze -> Reshape to the same output shape; a chain of such views
      (Reshape/Flatten/Squeeze/Unsqueeze/Identity) collapses into one Reshape of the chain's
      source; a Reshape to the source's own shape disappears. Views left unused are removed.
    * Identity is removed, and so is an identity Transpose (perm = 0..rank−1) — except when its
      output is a graph output that its input cannot replace (the input is a graph input or
      another graph output): graph input/output names are the interface and stay.
    * Dropout, Constant, Shape never reach the IR (the importer folds them); nothing to do.
    """

    name = "canonicalize"
    in_place = True

    def run(self, graph: Graph) -> PassResult:
        changed = False
        for node in list(graph.nodes):
            if node.graph is not graph:  # removed by an earlier rewrite in this walk
                continue
            rule = _RULES.get(node.op)
            if rule is not None and rule(graph, node):
                changed = True
        return PassResult(graph, changed)


# -- Gemm -----------------------------------------------------------------------------------------
def _gemm(graph: Graph, node: Node) -> bool:
    a, b = node.inputs[:2]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    attrs = node.attrs
    at = position(graph, node)
    base = node.name

    def add(op, inputs, attrs=None, suffix=""):
        nonlocal at
        new = graph.add_node(op, inputs, attrs, name=f"{base}_{suffix}", index=at)
        at += 1
        return new.output

    def scalar(value: float, like: Value) -> Value:
        return graph.add_const(np.array(value, dtype=like.dtype.numpy), f"{base}_alpha",
                               dtype=like.dtype)

    def transposed(v: Value, suffix: str) -> Value:
        if v.is_const:
            return graph.add_const(v.const.T, f"{v.name}_t", dtype=v.dtype)
        return add(Op.TRANSPOSE, [v], TransposeAttrs((1, 0)), suffix)

    a2 = transposed(a, "transpose_a") if attrs.trans_a else a
    b2 = transposed(b, "transpose_b") if attrs.trans_b else b
    scale_after = False
    if attrs.alpha != 1.0:
        if b2.is_const:
            b2 = graph.add_const(b2.const * attrs.alpha, f"{b.name}_scaled", dtype=b.dtype)
        elif a2.is_const:
            a2 = graph.add_const(a2.const * attrs.alpha, f"{a.name}_scaled", dtype=a.dtype)
        else:
            scale_after = True
    y = add(Op.MATMUL, [a2, b2], suffix="matmul")
    if scale_after:
        y = add(Op.MUL, [y, scalar(attrs.alpha, y)], suffix="mul_alpha")
    if c is not None and attrs.beta != 0.0:
        if attrs.beta != 1.0:
            if c.is_const:
                c = graph.add_const(c.const * attrs.beta, f"{c.name}_scaled", dtype=c.dtype)
            else:
                beta = graph.add_const(np.array(attrs.beta, dtype=c.dtype.numpy), f"{base}_beta",
                                       dtype=c.dtype)
                c = add(Op.MUL, [c, beta], suffix="mul_beta")
        y = add(Op.ADD, [y, c], suffix="bias")
    replace_node(graph, node, [y], take_names=True)
    return True


# -- views ----------------------------------------------------------------------------------------
def _view(graph: Graph, node: Node) -> bool:
    """Flatten/Squeeze/Unsqueeze/Reshape: one Reshape from the chain source, or nothing."""
    first = node.inputs[0]
    source = first
    while source.producer is not None and source.producer.op in _VIEWS:
        source = source.producer.inputs[0]
    out = node.output
    if source.shape == out.shape and can_replace(graph, out, source):
        replace_node(graph, node, [source])
    elif node.op == Op.RESHAPE and first is source:
        return False
    else:
        at = position(graph, node)
        new = graph.add_node(Op.RESHAPE, [source], ReshapeAttrs(tuple(out.shape)),
                             name=node.name, index=at).output
        replace_node(graph, node, [new], take_names=True)
    _remove_unused_chain(graph, first)
    return True


def _remove_unused_chain(graph: Graph, value: Value) -> None:
    producer = value.producer
    while producer is not None and producer.op in _VIEWS:
        upstream = producer.inputs[0].producer
        if not remove_if_unused(graph, producer):
            break
        producer = upstream


def _identity(graph: Graph, node: Node) -> bool:
    x = node.inputs[0]
    if not can_replace(graph, node.output, x):
        return False
    replace_node(graph, node, [x])
    return True


def _transpose(graph: Graph, node: Node) -> bool:
    if tuple(node.attrs.perm) != tuple(range(len(node.attrs.perm))):
        return False
    return _identity(graph, node)


_RULES = {
    Op.GEMM: _gemm,
    Op.FLATTEN: _view,
    Op.SQUEEZE: _view,
    Op.UNSQUEEZE: _view,
    Op.RESHAPE: _view,
    Op.IDENTITY: _identity,
    Op.TRANSPOSE: _transpose,
}
