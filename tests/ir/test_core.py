"""Graph / Node / Value: use-lists, rewrites, names, topological order, copies."""

import numpy as np
import pytest
from lowbit.ir import FLOAT32, Graph, IRError, Op, verify
from lowbit.ir import attrs as A


def _chain():
    g = Graph("t", 17)
    x = g.add_input("x", FLOAT32, (2, 3))
    w = g.add_const(np.ones((2, 3), np.float32), "w")
    a = g.make(Op.ADD, x, w, name="add")
    r = g.make(Op.RELU, a, name="relu")
    g.outputs = [r]
    return g, x, w, a, r


def test_use_lists_follow_rewrites():
    g, x, w, a, r = _chain()
    assert [(n.name, i) for n, i in x.users] == [("add", 0)]
    assert a.producer.op is Op.ADD and a.index == 0
    relu = r.producer
    relu.set_input(0, x)
    assert a.users == () and [(n.name, i) for n, i in x.users] == [("add", 0), ("relu", 0)]
    g.remove_node(a.producer)
    assert x.users == ((relu, 0),) and "add" not in g.values
    verify(g)


def test_replace_uses_includes_graph_outputs():
    g, x, w, a, r = _chain()
    n = g.replace_uses(r, a)
    assert n == 1 and g.outputs == [a]
    g.remove_node(r.producer)
    verify(g)


def test_remove_used_node_is_refused():
    g, x, w, a, r = _chain()
    with pytest.raises(IRError, match="still used"):
        g.remove_node(a.producer)


def test_unique_names_for_values_and_nodes():
    g, x, w, a, r = _chain()
    r2 = g.make(Op.RELU, a, name="relu")
    assert r2.name != "relu" and r2.producer.name != "relu"
    c = g.add_const(np.zeros(1, np.float32), "w")
    assert c.name != "w"


def test_attrs_class_is_checked():
    g, x, *_ = _chain()
    with pytest.raises(IRError, match="ConvAttrs"):
        g.add_node(Op.CONV, [x, x], A.FlattenAttrs(1))
    with pytest.raises(IRError, match="takes no attributes"):
        g.add_node(Op.RELU, [x], A.FlattenAttrs(1))


def test_topological_sort_repairs_order():
    g, x, w, a, r = _chain()
    g.nodes.reverse()
    with pytest.raises(IRError, match="used before it is defined"):
        verify(g)
    g.topological_sort()
    assert [n.name for n in g.nodes] == ["add", "relu"]
    verify(g)


def test_copy_is_deep_but_shares_constants():
    g, x, w, a, r = _chain()
    h = g.copy()
    assert str(h) == str(g)
    h.nodes[1].set_input(0, h.inputs[0])
    assert g.nodes[1].inputs[0] is a  # original untouched
    assert h.values["w"].const is w.const  # read-only arrays shared
    assert not w.const.flags.writeable


def test_value_nbytes_uses_arithmetic_width():
    from lowbit.ir import DType

    g = Graph()
    v = g.add_const(np.zeros((3, 5), np.int8), "q", dtype=DType.int(4))
    assert v.dtype.name == "int4" and v.dtype.numpy == np.int8
    assert v.nbytes == 8  # 15 nibbles -> 8 bytes


def test_copy_of_a_deep_graph_does_not_recurse():
    """A 5,000-node chain copies (a recursive deepcopy would hit the recursion limit)."""
    g = Graph("deep")
    v = g.add_input("x", FLOAT32, (1, 4))
    for _ in range(5000):
        v = g.make(Op.RELU, v)
    g.outputs = [v]
    h = g.copy()
    assert len(h.nodes) == 5000 and str(h) == str(g)
    verify(h)
    assert h.nodes[0].graph is h and h.inputs[0].users[0][0] is h.nodes[0]
