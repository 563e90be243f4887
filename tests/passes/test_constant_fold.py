"""constant_fold: all-constant nodes become constants (names, dtype and QType kept)."""

import numpy as np
from lowbit.ir import FLOAT32, INT8, Graph, Op, QKind, QType
from lowbit.ir import attrs as A
from lowbit.passes import ConstantFold


def _graph():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 3))
    w = g.add_const(np.arange(6, dtype=np.float32).reshape(3, 2), "w")
    wt = g.make(Op.TRANSPOSE, w, attrs=A.TransposeAttrs((1, 0)), name="wt")
    ws = g.make(Op.MUL, wt, g.add_const(np.float32(0.5), "half"), name="ws")
    y = g.make(Op.ADD, x, ws, name="add")
    g.outputs = [y]
    return g


BEFORE = """
  inputs:  %x: float32[2,3]
  outputs: %add: float32[2,3]
  %wt: float32[2,3] = Transpose(%w: const float32[3,2]) {perm=(1, 0)}
  %ws: float32[2,3] = Mul(%wt, %half: const float32[]=0.5)
  %add: float32[2,3] = Add(%x, %ws)
"""

EXPECTED = """
  inputs:  %x: float32[2,3]
  outputs: %add: float32[2,3]
  %add: float32[2,3] = Add(%x, %ws: const float32[2,3])
"""


def test_folds_a_chain_in_one_run(apply_pass, ir_lines):
    g = _graph()
    assert ir_lines(str(g)) == ir_lines(BEFORE)
    result = apply_pass(ConstantFold(), g, EXPECTED)
    assert result.changed and len(g.nodes) == 1
    np.testing.assert_array_equal(g.values["ws"].const,
                                  np.arange(6, dtype=np.float32).reshape(3, 2).T * 0.5)


def test_folded_graph_output_keeps_its_name_dtype_and_qtype():
    g = Graph("t")
    g.add_input("x", FLOAT32, (2,))
    s = g.add_const(np.float32(0.25), "s")
    q = g.make(Op.QUANTIZE, g.add_const(np.array([1.0, -2.0], np.float32), "w"), s,
               attrs=A.QuantizeAttrs(INT8), name="wq")
    q.qtype = QType(QKind.UNIFORM, 8, scale=(0.25,))
    g.outputs = [q]
    result = ConstantFold()(g, check=True)
    assert result.changed and g.nodes == []
    out = g.outputs[0]
    assert out.name == "wq" and out.is_const and out.dtype == INT8 and out.qtype == q.qtype
    np.testing.assert_array_equal(out.const, np.array([4, -8], np.int8))


def test_dequantize_and_non_constant_nodes_are_left_alone():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2,))
    codes = g.add_const(np.array([3, -1], np.int8), "codes")
    w = g.make(Op.DEQUANTIZE, codes, g.add_const(np.float32(0.5), "s"),
               attrs=A.DequantizeAttrs(), name="dq")
    g.outputs = [g.make(Op.MUL, x, w, name="mul")]
    text = str(g)
    assert ConstantFold()(g).changed is False
    assert str(g) == text
    assert ConstantFold(skip_ops=frozenset())(g).changed is True
    assert [n.op for n in g.nodes] == [Op.MUL]


def test_output_cap_is_respected():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (64, 64))
    big = g.make(Op.EXPAND, g.add_const(np.float32(1.0), "one"), attrs=A.ExpandAttrs((64, 64)),
                 name="big")
    g.outputs = [g.make(Op.ADD, x, big, name="add")]
    assert ConstantFold(max_elements=64 * 64 - 1)(g).changed is False
    assert ConstantFold(max_elements=64 * 64)(g).changed is True
