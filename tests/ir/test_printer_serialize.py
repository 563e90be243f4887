"""Text dump (stable, one line per node, summary) and JSON round trip."""

import numpy as np
from lowbit.ir import (
    FLOAT32,
    INT8,
    Granularity,
    Graph,
    Op,
    QKind,
    QType,
    from_json,
    to_json,
    verify,
)
from lowbit.ir import attrs as A


def _conv_graph():
    g = Graph("net", 17)
    x = g.add_input("x", FLOAT32, (1, 3, 8, 8))
    w = g.add_const(np.arange(4 * 3 * 9, dtype=np.float32).reshape(4, 3, 3, 3) / 100, "w")
    b = g.add_const(np.zeros(4, np.float32), "b")
    y = g.make(Op.CONV, x, w, b, attrs=A.ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1), 1), name="conv")
    r = g.make(Op.RELU, y, name="relu")
    g.outputs = [r]
    return g


EXPECTED = """\
graph net (opset 17)
  inputs:  %x: float32[1,3,8,8]
  outputs: %relu: float32[1,4,8,8]
  %conv: float32[1,4,8,8] = Conv(%x, %w: const float32[4,3,3,3], %b: const float32[4]) \
{strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1}
  %relu: float32[1,4,8,8] = Relu(%conv)
summary: 2 nodes | Conv×1 Relu×1 | params 112 (448 B) | MACs 6.91K
"""


def test_text_dump_is_exact_and_stable():
    g = _conv_graph()
    assert str(g) == EXPECTED
    assert str(g.copy()) == EXPECTED


def test_dump_shows_qtype_and_kernel():
    g = _conv_graph()
    w = g.values["w"]
    q = g.add_const(np.clip(np.round(w.const * 10), -8, 7).astype(np.int8), "wq", dtype=INT8)
    q.qtype = QType(QKind.UNIFORM, 4, granularity=Granularity(0), scale=(0.01, 0.02, 0.03, 0.04),
                    multiplier=(1 << 30,) * 4, shift=(35,) * 4)
    g.nodes[0].set_input(1, q)
    g.nodes[0].meta["kernel"] = "int8"
    text = str(g)
    assert "s4 per-channel(axis=0) scale=[0.01..0.04]x4" in text
    assert "dyadic(m=1073741824x4, shift=35x4)" in text
    assert "# kernel=int8" in text
    assert "params 112 (70 B)" in text  # 108 int4 weights = 54 B, + 4 float32 biases


def test_json_round_trip_exact():
    g = _conv_graph()
    g.values["w"].qtype = QType(QKind.TERNARY, 2, scale=(0.5,))
    g2 = from_json(to_json(g))
    verify(g2)
    assert str(g2) == str(g)
    assert to_json(g2) == to_json(g)
    np.testing.assert_array_equal(g2.values["w"].const, g.values["w"].const)
    assert g2.values["w"].qtype == g.values["w"].qtype


def test_json_round_trip_fake_quant_attrs():
    from lowbit.ir.attrs import FakeQuantAttrs

    g = Graph("fq", 17)
    x = g.add_input("x", FLOAT32, (2, 4))
    q = QType(QKind.POW2, 4, granularity=Granularity(0), scale=(0.5, 0.25), zero_free=True)
    y = g.make(Op.FAKE_QUANT, x, attrs=FakeQuantAttrs(q, "weight"))
    g.outputs = [y]
    g2 = from_json(to_json(g))
    assert g2.nodes[0].attrs == g.nodes[0].attrs
    assert str(g2) == str(g)


def test_graph_pickles_through_its_json_form():
    """Graphs go to worker processes by pickle: deep chains must not hit the recursion limit,
    and the text, constants, node meta and graph meta survive."""
    import pickle

    from lowbit.ir.printer import format_graph

    g = Graph("deep")
    x = g.add_input("x", FLOAT32, (1, 4))
    w = g.add_const(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    for _ in range(3000):  # far deeper than pickle's recursion through Value/Node links
        x = g.make(Op.MATMUL, x, w)
    g.outputs = [x]
    g.nodes[5].meta["kernel"] = "int8"
    g.meta["quant"] = "w4a8"
    back = pickle.loads(pickle.dumps(g))
    assert format_graph(back) == format_graph(g)
    np.testing.assert_array_equal(back.values["w"].const, w.const)
    assert back.nodes[5].meta["kernel"] == "int8"
    assert back.meta["quant"] == "w4a8"
