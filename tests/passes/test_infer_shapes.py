"""infer_shapes: re-runs every rule, updates stale types, reports change honestly."""

import numpy as np
import pytest
from lowbit.ir import FLOAT32, INT8, Graph, Op, ShapeError
from lowbit.ir import attrs as A
from lowbit.passes import InferShapes


def _graph():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 3))
    w = g.add_const(np.ones((3, 4), np.float32), "w")
    y = g.make(Op.MATMUL, x, w, name="mm")
    z = g.make(Op.RELU, y, name="relu")
    g.outputs = [z]
    return g


def test_no_change_on_consistent_graph(apply_pass):
    apply_pass(InferShapes(), _graph())
    assert InferShapes()(_graph()).changed is False


def test_propagates_a_new_input_shape(ir_lines):
    g = _graph()
    g.inputs[0].shape = (5, 3)
    result = InferShapes()(g, check=True)
    assert result.changed is True and result.graph is g
    assert ir_lines(str(g)) == ir_lines("""
        inputs:  %x: float32[5,3]
        outputs: %relu: float32[5,4]
        %mm: float32[5,4] = MatMul(%x, %w: const float32[3,4])
        %relu: float32[5,4] = Relu(%mm)
    """)
    assert InferShapes()(g).changed is False


def test_updates_a_stale_dtype():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (4,))
    s = g.add_const(np.float32(0.5), "s")
    q = g.make(Op.QUANTIZE, x, s, attrs=A.QuantizeAttrs(INT8), name="q")
    q.dtype = FLOAT32
    g.outputs = [q]
    assert InferShapes()(g).changed is True
    assert q.dtype == INT8


def test_error_names_node_after_incompatible_change():
    g = _graph()
    g.inputs[0].shape = (2, 5)
    with pytest.raises(ShapeError, match=r"MatMul node 'mm': inner dims differ"):
        InferShapes()(g)
