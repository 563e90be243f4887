"""Rewrite helpers shared by the passes: replace a node's outputs and keep graph-output names.

The graph's interface is its input and output *names* (feeds and fetches go by name), so a
rewrite that replaces a graph output must hand the old name to the replacement. A replacement
can take a name unless it is a graph input or already a graph output (it would need two names);
:func:`can_replace` tells a pass before it rewrites.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir import Graph, IRError, Node, Value


def is_graph_output(graph: Graph, value: Value) -> bool:
    """True when ``value`` is one of the graph's outputs."""
    return any(v is value for v in graph.outputs)


def can_replace(graph: Graph, old: Value, new: Value) -> bool:
    """Whether uses of ``old`` may move to ``new`` without changing the graph's interface:
    always when ``old`` is internal; when ``old`` is a graph output, only if ``new`` can take its
    name (``new`` is neither a graph input nor a graph output already)."""
    if not is_graph_output(graph, old):
        return True
    return not (any(v is new for v in graph.inputs) or is_graph_output(graph, new))


def rename(graph: Graph, value: Value, name: str) -> None:
    """Give ``value`` the (free) ``name``, keeping ``graph.values`` in sync."""
    if value.name == name:
        return
    if name in graph.values:
        raise IRError(f"cannot rename %{value.name} to %{name}: the name is taken")
    del graph.values[value.name]
    value.name = name
    graph.values[name] = value


def replace_node(graph: Graph, node: Node, replacements: Sequence[Value],
                 take_names: bool = False) -> None:
    """Point every use of ``node.outputs[i]`` at ``replacements[i]`` and remove ``node``.

    A replacement of a graph output takes the old output's name (callers check
    :func:`can_replace` first). With ``take_names`` every replacement takes its old name (for
    values the rewrite just created, so the printed IR keeps familiar names)."""
    assert len(replacements) == len(node.outputs), (node, replacements)
    renames = []
    for old, new in zip(node.outputs, replacements):
        if old is new:
            continue
        if is_graph_output(graph, old):
            assert can_replace(graph, old, new), (old, new)
            renames.append((new, old.name))
        elif take_names and can_replace(graph, old, new) and not any(
                v is new for v in graph.inputs) and not is_graph_output(graph, new):
            renames.append((new, old.name))
        graph.replace_uses(old, new)
    graph.remove_node(node)
    for new, name in renames:
        if name not in graph.values:
            rename(graph, new, name)


def remove_if_unused(graph: Graph, node: Node | None) -> bool:
    """Remove ``node`` when none of its outputs is used or a graph output; True if removed."""
    if node is None or node.graph is not graph:
        return False
    if any(v.users or is_graph_output(graph, v) for v in node.outputs):
        return False
    graph.remove_node(node)
    return True


def position(graph: Graph, node: Node) -> int:
    """Index of ``node`` in ``graph.nodes`` (to insert replacements where it stands)."""
    for i, n in enumerate(graph.nodes):
        if n is node:
            return i
    raise IRError(f"node {node.name} is not in graph {graph.name}")
