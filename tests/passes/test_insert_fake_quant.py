"""insert_fake_quant: weight / activation FakeQuants per recipe, first/last int8, overrides,
exclusions, depthwise and ConvTranspose layers, float-only ops, residual outputs."""

import re

import numpy as np
import pytest
from lowbit.compiler.recipes import LayerOverride, WeightOverride, preset, replace
from lowbit.ir import FLOAT32, Graph, Op, QKind, verify
from lowbit.ir import attrs as A
from lowbit.ir.qformats import fit_weights
from lowbit.ir.qtype import Granularity
from lowbit.passes.insert_fake_quant import InsertFakeQuant, quantized_layers

rng = np.random.default_rng(0)
CONV1x1 = A.ConvAttrs((1, 1), (0, 0, 0, 0), (1, 1))


def const(g, name, *shape):
    return g.add_const(rng.standard_normal(shape).astype(np.float32), name)


def chain_graph():
    """conv1 -> relu -> conv2 -> reshape -> fc (MatMul + bias Add)."""
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 3, 4, 4))
    c1 = g.make(Op.CONV, x, const(g, "w1", 4, 3, 1, 1), attrs=CONV1x1, name="conv1")
    r1 = g.make(Op.RELU, c1, name="relu1")
    c2 = g.make(Op.CONV, r1, const(g, "w2", 4, 4, 1, 1), attrs=CONV1x1, name="conv2")
    flat = g.make(Op.RESHAPE, c2, attrs=A.ReshapeAttrs((2, 64)), name="flat")
    fc = g.make(Op.MATMUL, flat, const(g, "w3", 64, 5), name="fc")
    g.outputs = [g.make(Op.ADD, fc, const(g, "b3", 5), name="out")]
    return g


def _lines(g):
    """Printed node lines with the fitted scale values masked (checked numerically apart)."""
    return [re.sub(r"scale=\S+?\}", "scale=*}", " ".join(line.split()))
            for line in str(g).splitlines()[3:-1]]


CONV_ATTRS = "{strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1}"


def test_w4a8_chain_before_expected_and_rules():
    g = chain_graph()
    result = InsertFakeQuant(preset("w4a8"))(g, check=True)
    assert result.changed and result.graph is g
    verify(g)
    assert _lines(g) == [
        ("%conv1/weight_fq: float32[4,3,1,1] = FakeQuant(%w1: const float32[4,3,1,1]) "
        "{qtype={s8 per-channel(axis=0) scale=*}, role=weight}"),
        ("%conv1/input_fq: float32[2,3,4,4] = FakeQuant(%x) {qtype={s8 per-tensor}, "
        "role=activation}"),
        f"%conv1: float32[2,4,4,4] = Conv(%conv1/input_fq, %conv1/weight_fq) {CONV_ATTRS}",
        "%relu1: float32[2,4,4,4] = Relu(%conv1)",
        ("%conv2/input_fq: float32[2,4,4,4] = FakeQuant(%relu1) {qtype={u8 per-tensor}, "
        "role=activation}"),
        ("%conv2/weight_fq: float32[4,4,1,1] = FakeQuant(%w2: const float32[4,4,1,1]) "
        "{qtype={s4 per-channel(axis=0) scale=*}, role=weight}"),
        f"%conv2: float32[2,4,4,4] = Conv(%conv2/input_fq, %conv2/weight_fq) {CONV_ATTRS}",
        "%flat: float32[2,64] = Reshape(%conv2) {shape=(2, 64)}",
        ("%fc/input_fq: float32[2,64] = FakeQuant(%flat) {qtype={s8 per-tensor}, "
        "role=activation}"),
        ("%fc/weight_fq: float32[64,5] = FakeQuant(%w3: const float32[64,5]) "
        "{qtype={s8 per-channel(axis=1) scale=*}, role=weight}"),
        "%fc: float32[2,5] = MatMul(%fc/input_fq, %fc/weight_fq)",
        "%out: float32[2,5] = Add(%fc, %b3: const float32[5])",
    ]
    rules = {n.name: n.meta["quant_rule"] for n in g.nodes if "quant_rule" in n.meta}
    assert rules == {"conv1": "first_last_int8", "conv2": "default", "fc": "first_last_int8"}
    # the weight QTypes are exactly fit_weights' (per output channel: Conv axis 0, MatMul 1)
    conv2 = g.node_by_name("conv2/weight_fq")
    expected, _ = fit_weights(conv2.inputs[0].const, QKind.UNIFORM, 4,
                              granularity=Granularity(0))
    assert conv2.attrs.qtype == expected
    fc = g.node_by_name("fc/weight_fq").attrs.qtype
    assert fc.granularity == Granularity(1) and len(fc.scale) == 5
    # auto signedness is left to calibration
    assert all(n.meta.get("signed_auto") == 1 for n in g.nodes
               if n.op == Op.FAKE_QUANT and n.attrs.role == "activation")


def test_second_run_reports_no_change():
    g = chain_graph()
    InsertFakeQuant(preset("int8"))(g)
    before = str(g)
    assert InsertFakeQuant(preset("int8"))(g, check=True).changed is False
    assert str(g) == before


def test_node_and_op_overrides_and_exclusion_are_recorded():
    recipe = replace(preset("w4a8"), first_last_int8=False,
                     ops={"MatMul": LayerOverride(WeightOverride(bits=2))},
                     nodes={"conv2": LayerOverride(exclude=True)})
    g = chain_graph()
    InsertFakeQuant(recipe)(g)
    verify(g)
    assert g.node_by_name("conv1").meta["quant_rule"] == "default"
    assert g.node_by_name("conv2").meta["quant_rule"] == 'excluded by nodes["conv2"]'
    assert g.node_by_name("fc").meta["quant_rule"] == "ops.MatMul"
    assert g.node_by_name("conv2").inputs[1].is_const  # stays float
    assert g.node_by_name("fc/weight_fq").attrs.qtype.bits == 2


def test_preset_none_inserts_nothing():
    g = chain_graph()
    assert InsertFakeQuant(preset("none"))(g).changed is False
    assert not any(n.op == Op.FAKE_QUANT for n in g.nodes)


@pytest.mark.parametrize("name,kind,bits", [("ternary", QKind.TERNARY, 2),
                                            ("pow2", QKind.POW2, 4),
                                            ("codebook4", QKind.CODEBOOK, 4),
                                            ("w1a8", QKind.BINARY, 1)])
def test_weight_formats_of_presets(name, kind, bits):
    g = chain_graph()
    InsertFakeQuant(preset(name))(g)
    qtype = g.node_by_name("conv2/weight_fq").attrs.qtype
    assert (qtype.kind, qtype.bits) == (kind, bits)


def test_binary_activations_and_per_group_weights():
    recipe = preset("w1a1")
    g = chain_graph()
    InsertFakeQuant(recipe)(g)
    assert g.node_by_name("conv2/input_fq").attrs.qtype.kind == QKind.BINARY
    grouped = replace(preset("w4a8"), first_last_int8=False, default=replace(
        preset("w4a8").default, weights=replace(preset("w4a8").default.weights,
                                                granularity="per_group", group_size=16)))
    g = chain_graph()
    InsertFakeQuant(grouped)(g)
    # per-group runs along the reduction axis: MatMul K (axis 0), Conv C_in (axis 1)
    assert g.node_by_name("fc/weight_fq").attrs.qtype.granularity == Granularity(0, 16)
    assert g.node_by_name("conv1/weight_fq").attrs.qtype.granularity == Granularity(1, 16)


def test_depthwise_conv_is_quantized_and_conv_transpose_forced_int8():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 4, 5, 5))
    dw = g.make(Op.CONV, x, const(g, "wd", 4, 1, 3, 3),
                attrs=A.ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1), group=4), name="dw")
    pw = g.make(Op.CONV, dw, const(g, "wp", 4, 4, 1, 1), attrs=CONV1x1, name="pw")
    ct = g.make(Op.CONV_TRANSPOSE, pw, const(g, "wt", 4, 2, 2, 2),
                attrs=A.ConvTransposeAttrs((2, 2), (0, 0, 0, 0), (1, 1), (0, 0)), name="up")
    g.outputs = [g.make(Op.RELU, ct, name="y")]
    InsertFakeQuant(replace(preset("ternary"), first_last_int8=False))(g)
    verify(g)
    assert g.node_by_name("dw/weight_fq").attrs.qtype.kind == QKind.TERNARY
    up = g.node_by_name("up/weight_fq").attrs.qtype
    assert (up.kind, up.bits, up.granularity) == (QKind.UNIFORM, 8, Granularity(1))
    assert "int8 only" in g.node_by_name("up").meta["quant_rule"]


def test_float_only_ops_and_activation_matmul_stay_float():
    """LayerNorm / Softmax / Q·Kᵀ keep float; the FakeQuant on the next layer's input is the
    boundary. The Q / K / V projections share one input FakeQuant."""
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 4, 8))
    ln = g.make(Op.LAYERNORM, x, const(g, "gamma", 8), const(g, "beta", 8),
                attrs=A.LayerNormAttrs(2), name="ln")
    q = g.make(Op.MATMUL, ln, const(g, "wq", 8, 8), name="q")
    k = g.make(Op.MATMUL, ln, const(g, "wk", 8, 8), name="k")
    v = g.make(Op.MATMUL, ln, const(g, "wv", 8, 8), name="v")
    kt = g.make(Op.TRANSPOSE, k, attrs=A.TransposeAttrs((0, 2, 1)), name="kt")
    scores = g.make(Op.MATMUL, q, kt, name="scores")
    probs = g.make(Op.SOFTMAX, scores, attrs=A.SoftmaxAttrs(2), name="softmax")
    g.outputs = [g.make(Op.MATMUL, probs, v, name="pv")]
    InsertFakeQuant(preset("w4a8"))(g)
    verify(g)
    for name in ("ln", "softmax", "scores", "pv"):
        node = g.node_by_name(name)
        assert all(i.producer is None or i.producer.op != Op.FAKE_QUANT for i in node.inputs
                   if i is not None), name
    sources = {g.node_by_name(n).inputs[0].producer.name for n in ("q", "k", "v")}
    assert sources == {"q/input_fq"}
    assert [layer.node.name for layer in quantized_layers(g)] == ["q", "k", "v"]


def test_residual_add_of_integer_paths_gets_output_fake_quant():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 4, 3, 3))
    a = g.make(Op.RELU, g.make(Op.CONV, x, const(g, "wa", 4, 4, 1, 1), attrs=CONV1x1,
                               name="ca"), name="ra")
    b = g.make(Op.CONV, a, const(g, "wb", 4, 4, 1, 1), attrs=CONV1x1, name="cb")
    s = g.make(Op.ADD, a, b, name="res")
    c = g.make(Op.CONV, s, const(g, "wc", 4, 4, 1, 1), attrs=CONV1x1, name="cc")
    g.outputs = [g.make(Op.ADD, c, s, name="res2")]  # a graph output: left alone
    InsertFakeQuant(preset("int8"))(g)
    verify(g)
    fq = g.node_by_name("res/output_fq")
    assert fq.inputs[0] is s and fq.attrs.role == "activation" and fq.attrs.qtype.bits == 8
    assert g.node_by_name("cc").inputs[0] is fq.output  # the layer reads the residual FQ
    assert g.node_by_name("res2").inputs[1] is fq.output
    assert not any(n.name == "res2/output_fq" for n in g.nodes)


def skip_graph():
    """stem conv -> relu -> maxpool, read by a middle conv and by the residual Add."""
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 3, 6, 6))
    stem = g.make(Op.CONV, x, const(g, "ws", 4, 3, 1, 1), attrs=CONV1x1, name="stem")
    pooled = g.make(Op.MAXPOOL, g.make(Op.RELU, stem, name="relu"),
                    attrs=A.PoolAttrs((2, 2), (2, 2), (0,) * 4, (1, 1)), name="pool")
    mid = g.make(Op.CONV, g.make(Op.SIGMOID, pooled, name="gate"), const(g, "wm", 4, 4, 1, 1),
                 attrs=CONV1x1, name="mid")
    mid2 = g.make(Op.CONV, pooled, const(g, "wm2", 4, 4, 1, 1), attrs=CONV1x1, name="mid2")
    s = g.make(Op.ADD, pooled, g.make(Op.ADD, mid, mid2, name="branch"), name="res")
    g.outputs = [g.make(Op.CONV, s, const(g, "wl", 2, 4, 1, 1), attrs=CONV1x1, name="last")]
    return g


def test_shared_skip_source_gets_an_8bit_fake_quant():
    """The stem's pooled output feeds a float op, a layer and the residual Add: one 8-bit
    FakeQuant on it, read by all three, so the stem can requantize straight to 8-bit codes."""
    g = skip_graph()
    InsertFakeQuant(preset("int8"))(g)
    verify(g)
    fq = g.node_by_name("pool/skip_fq")
    assert fq.inputs[0] is g.node_by_name("pool").output and fq.attrs.qtype.bits == 8
    assert fq.meta["signed_auto"] == 1
    assert list(g.node_by_name("pool").output.users) == [(fq, 0)]
    assert g.node_by_name("gate").inputs[0] is fq.output
    assert g.node_by_name("mid2").inputs[0] is fq.output  # the a8 layer shares it
    assert g.node_by_name("res").inputs[0] is fq.output


def test_skip_source_left_alone_when_a_reader_wants_lower_bit_activations():
    g = skip_graph()
    InsertFakeQuant(preset("w2a2"))(g)  # mid2 (a middle layer) reads 2-bit activations
    verify(g)
    assert not any(n.name.endswith("skip_fq") for n in g.nodes)
    assert g.node_by_name("mid2").inputs[0].producer.attrs.qtype.bits == 2


def test_skip_source_that_already_is_8bit_codes_is_not_requantized():
    """Add -> (8-bit output FakeQuant) -> Relu, read by a layer and the next Add: the Relu of
    codes is already 8-bit, so no second FakeQuant (it would only round the shortcut again).
    The conv ``ca``'s accumulators, read only by a layer and an Add, keep the exact int32
    shortcut too."""
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 4, 3, 3))
    a = g.make(Op.CONV, x, const(g, "wa", 4, 4, 1, 1), attrs=CONV1x1, name="ca")
    b = g.make(Op.CONV, a, const(g, "wb", 4, 4, 1, 1), attrs=CONV1x1, name="cb")
    r = g.make(Op.RELU, g.make(Op.ADD, a, b, name="res"), name="relu")
    c = g.make(Op.CONV, r, const(g, "wc", 4, 4, 1, 1), attrs=CONV1x1, name="cc")
    d = g.make(Op.CONV, g.make(Op.ADD, r, c, name="res2"), const(g, "wd", 2, 4, 1, 1),
               attrs=CONV1x1, name="cd")
    g.outputs = [d]
    InsertFakeQuant(preset("int8"))(g)
    verify(g)
    assert g.node_by_name("res/output_fq").output is g.node_by_name("relu").inputs[0]
    assert not any(n.name == "relu/skip_fq" for n in g.nodes)
    assert g.node_by_name("res2").inputs[0] is g.node_by_name("relu").output
    assert not any(n.name.endswith("skip_fq") for n in g.nodes)
    assert g.node_by_name("res").inputs[0] is a


def test_weight_fits_are_remembered_per_array_and_codes_are_copies():
    """A sensitivity run fits one layer's weights once per candidate: the same array and spec
    give the same QType from memory, and the codes handed out are private copies."""
    from lowbit.compiler.recipes import WeightSpec
    from lowbit.passes import insert_fake_quant as module

    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    spec = WeightSpec("codebook", 4)
    qtype, codes = module.weight_qtype(w, Op.CONV, spec)
    codes[...] = 0
    again, codes2 = module.weight_qtype(w, Op.CONV, spec)
    assert again is qtype and codes2.any()
    fresh, _ = module._fit(w.copy(), Op.CONV, spec)
    assert fresh == qtype
    other, _ = module.weight_qtype(w.copy(), Op.CONV, spec)  # another array: fitted anew
    assert other == qtype and other is not qtype
