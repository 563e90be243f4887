"""The text form of a graph: one line per node, stable and diffable (torch.fx-like).

::

    graph main (opset 17)
      inputs:  %x: float32[1,3,8,8]
      outputs: %y: float32[1,10]
      %conv: float32[1,4,8,8] = Conv(%x, %w: const float32[4,3,3,3]) {strides=(1, 1), ...}
      ...
    summary: 5 nodes | Conv×1 Relu×1 ... | params 1,234 (4.82 KiB) | MACs 12.3K

Per value the line shows dtype and shape, and when present the QType (format, granularity,
scale range, zero point, dyadic multiplier/shift) and the chosen kernel (``node.meta["kernel"]``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .attrs import format_attrs
from .core import Graph, Node, Value
from .ops import Op


def format_type(v: Value) -> str:
    shape = "?" if v.shape is None else ",".join(str(d) for d in v.shape)
    text = f"{v.dtype}[{shape}]"
    if v.qtype is not None:
        text += f" {v.qtype}"
    return text


def _format_input(v: Value | None) -> str:
    if v is None:
        return "None"
    if v.is_const:
        if v.numel == 1:
            return f"%{v.name}: const {format_type(v)}={_scalar(v.const)}"
        return f"%{v.name}: const {format_type(v)}"
    return f"%{v.name}"


def _scalar(arr: np.ndarray) -> str:
    x = arr.reshape(-1)[0]
    return f"{x:.6g}" if isinstance(x, (float, np.floating)) else str(x)


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{v.name}: {format_type(v)}" for v in node.outputs)
    ins = ", ".join(_format_input(v) for v in node.inputs)
    line = f"{outs} = {node.op.value}({ins})"
    attrs = format_attrs(node.attrs)
    if attrs:
        line += " " + attrs
    notes = []
    if node.name != node.outputs[0].name:
        notes.append(f"node={node.name}")
    if "kernel" in node.meta:
        notes.append(f"kernel={node.meta['kernel']}")
    if notes:
        line += "  # " + " ".join(notes)
    return line


def node_macs(node: Node) -> int:
    """Multiply-accumulates of one node (0 for ops without a reduction over weights)."""
    out = node.outputs[0]
    if out.shape is None:
        return 0
    transposed = node.op == Op.QCONV and node.attrs.transposed
    if node.op == Op.CONV or (node.op == Op.QCONV and not transposed):
        w = node.inputs[1]
        return out.numel * int(np.prod(w.shape[1:]))
    if node.op == Op.CONV_TRANSPOSE or transposed:
        x, w = node.inputs[:2]
        return x.numel * int(np.prod(w.shape[1:]))
    if node.op in (Op.MATMUL, Op.MATMUL_INTEGER, Op.QMATMUL):
        a = node.inputs[0]
        return out.numel * (a.shape[-1] if a.rank else 1)
    if node.op == Op.GEMM:
        a = node.inputs[0]
        k = a.shape[0] if node.attrs.trans_a else a.shape[1]
        return out.numel * k
    return 0


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def graph_summary(graph: Graph) -> dict:
    """Op histogram, parameter count/bytes and MACs (also used by the JSON dump)."""
    hist = Counter(n.op.value for n in graph.nodes)
    consts = graph.constants()
    return {
        "nodes": len(graph.nodes),
        "ops": dict(sorted(hist.items())),
        "params": int(sum(v.numel for v in consts)),
        "param_bytes": int(sum(v.nbytes for v in consts)),
        "macs": int(sum(node_macs(n) for n in graph.nodes)),
    }


def format_graph(graph: Graph) -> str:
    opset = f" (opset {graph.opset})" if graph.opset is not None else ""
    lines = [f"graph {graph.name}{opset}"]
    lines.append("  inputs:  " + ", ".join(f"%{v.name}: {format_type(v)}" for v in graph.inputs))
    lines.append("  outputs: " + ", ".join(f"%{v.name}: {format_type(v)}"
                                          for v in graph.outputs))
    for node in graph.nodes:
        lines.append("  " + format_node(node))
    s = graph_summary(graph)
    hist = " ".join(f"{op}×{n}" for op, n in s["ops"].items()) or "-"
    lines.append(f"summary: {s['nodes']} nodes | {hist} | params {s['params']:,} "
                 f"({_bytes(s['param_bytes'])}) | MACs {_human(s['macs'])}")
    return "\n".join(lines) + "\n"
