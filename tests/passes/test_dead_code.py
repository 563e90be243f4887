"""dead_code: nodes not reaching a graph output and unused constants are removed."""

import numpy as np
from lowbit.ir import FLOAT32, Graph, Op
from lowbit.ir import attrs as A
from lowbit.passes import DeadCode


def _graph():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 4))
    g.add_input("unused_input", FLOAT32, (1,))
    parts = g.add_node(Op.SPLIT, [x], A.SplitAttrs(1, (1, 3)), name="split", outputs=2).outputs
    live = g.make(Op.RELU, parts[0], name="relu")
    dead = g.make(Op.EXP, parts[1], name="exp")
    g.make(Op.MUL, dead, g.add_const(np.ones(3, np.float32), "k"), name="dead_mul")
    g.add_const(np.zeros(5, np.float32), "orphan")
    g.outputs = [live]
    return g


EXPECTED = """
  inputs:  %x: float32[2,4], %unused_input: float32[1]
  outputs: %relu: float32[2,1]
  %split: float32[2,1], %split_out1: float32[2,3] = Split(%x) {axis=1, sizes=(1, 3)}
  %relu: float32[2,1] = Relu(%split)
"""


def test_removes_dead_nodes_and_constants(apply_pass):
    g = _graph()
    assert len(g.nodes) == 4
    result = apply_pass(DeadCode(), g, EXPECTED)
    assert result.changed and len(g.nodes) == 2
    assert "k" not in g.values and "orphan" not in g.values and "exp" not in g.values
    assert [v.name for v in g.inputs] == ["x", "unused_input"]


def test_nothing_dead_reports_no_change():
    g = _graph()
    DeadCode()(g)
    text = str(g)
    assert DeadCode()(g).changed is False and str(g) == text
