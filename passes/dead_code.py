"""dead_code: remove nodes whose results never reach a graph output, then unused constants."""

from __future__ import annotations

from ..ir import Graph
from .base import Pass, PassResult


class DeadCode(Pass):
    """A node is live when one of its outputs is a graph output or an input of a live node
    (computed backwards from ``graph.outputs``). Every other node is removed (a multi-output
    node stays whole if any output is live); then constants no node or graph output uses are
    dropped (``graph.forget_unused_constants()``). Graph inputs stay even when unused: they are
    the graph's interface."""

    name = "dead_code"
    in_place = True

    def run(self, graph: Graph) -> PassResult:
        live: set[int] = set()
        needed = {id(v) for v in graph.outputs}
        for node in reversed(graph.nodes):
            if any(id(v) in needed for v in node.outputs):
                live.add(id(node))
                needed.update(id(v) for v in node.inputs if v is not None)
        dead = [n for n in graph.nodes if id(n) not in live]
        for node in reversed(dead):
            graph.remove_node(node)
        dropped = graph.forget_unused_constants()
        return PassResult(graph, bool(dead) or dropped > 0)
