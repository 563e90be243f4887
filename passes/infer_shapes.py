"""infer_shapes: re-run every shape/dtype rule in graph order and update the outputs."""

from __future__ import annotations

from ..ir import Graph
from ..ir.infer import infer_node
from .base import Pass, PassResult


class InferShapes(Pass):
    """For each node in topological order, set every output's ``(dtype, shape)`` to what
    :func:`lowbit.ir.infer.infer_node` gives from the (already updated) inputs. ``changed`` is
    True when any output dtype or shape differed. Raises the rule's ShapeError on a node whose
    inputs no longer line up."""

    name = "infer_shapes"
    in_place = True

    def run(self, graph: Graph) -> PassResult:
        changed = False
        for node in graph.nodes:
            for out, (dtype, shape) in zip(node.outputs, infer_node(node)):
                shape = None if shape is None else tuple(int(d) for d in shape)
                if out.dtype != dtype or out.shape != shape:
                    out.dtype, out.shape = dtype, shape
                    changed = True
        return PassResult(graph, changed)
