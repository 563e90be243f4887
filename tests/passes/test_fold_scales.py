"""fold_scales: fake-quant graph -> integer graph, and the two simulators agreeing.

*Fake-quant simulation* = ``run_reference`` on the calibrated fake-quant graph (FakeQuant
kernel); *integer simulation* = ``run_reference`` on the folded graph (QConv / QMatMul / QAdd /
Requantize kernels). Inputs are fed on the input grid (codes · 2^−4) so the float boundary
(QuantizeLinear, which divides in float32) is exact and every difference comes from a requant
boundary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lowbit.ir import FLOAT32, Graph, Op, QuantizationError, verify
from lowbit.ir.attrs import ConcatAttrs, ConvAttrs, FakeQuantAttrs, PoolAttrs
from lowbit.ir.qformats import activation_qtype, fit_weights
from lowbit.ir.qtype import Granularity, QKind, QType
from lowbit.ir.serialize import from_json, to_json
from lowbit.passes.fold_scales import FoldScales, integer_weights
from lowbit.runtime.reference import Interpreter, run_reference

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
S_IN = 2.0**-4  # input grid: u8 codes · 2^-4 (activation_qtype(0, 255/16, 8) gives exactly this)


# -- building and calibrating fake-quant graphs by hand ------------------------------------------
class _MinMax(Interpreter):
    """Pass-through run that records each activation FakeQuant's input range."""

    def __init__(self, graph):
        super().__init__(graph)
        self.seen = {}

    def run_node(self, node, inputs):
        if node.op == Op.FAKE_QUANT and node.attrs.role == "activation" \
                and not node.attrs.qtype.scale:
            x = inputs[0]
            lo, hi = self.seen.get(node.name, (np.inf, -np.inf))
            self.seen[node.name] = (min(lo, float(x.min())), max(hi, float(x.max())),
                                    float(np.abs(x).mean()))
            return [x]
        return super().run_node(node, inputs)


def calibrate(graph, feeds):
    """Fill every uncalibrated activation FakeQuant (minmax; binary: α = mean|x|), in order."""
    for node in graph.nodes:
        if node.op != Op.FAKE_QUANT or node.attrs.role != "activation" or node.attrs.qtype.scale:
            continue
        rec = _MinMax(graph)
        rec.run(feeds)
        lo, hi, mean_abs = rec.seen[node.name]
        q = node.attrs.qtype
        if q.kind == QKind.BINARY:
            new = QType(QKind.BINARY, 1, True, scale=(mean_abs,))
        else:
            new = activation_qtype(lo, hi, q.bits, q.signed)
        node.attrs = FakeQuantAttrs(new, "activation")
    verify(graph)
    return graph


def act(g, x, bits=8, signed=False, binary=False, name="fq"):
    q = QType(QKind.BINARY, 1, True) if binary else QType(QKind.UNIFORM, bits, signed)
    return g.make(Op.FAKE_QUANT, x, attrs=FakeQuantAttrs(q, "activation"), name=name)


def wfq(g, w, kind="uniform", bits=8, gran=None, name="w", **kw):
    gran = Granularity(0) if gran is None else gran
    q, _ = fit_weights(w, kind, bits, granularity=gran, **kw)
    c = g.add_const(w.astype(np.float32), name)
    return g.make(Op.FAKE_QUANT, c, attrs=FakeQuantAttrs(q, "weight"), name=name + "_fq")


def grid_input(shape, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=shape)
    codes.reshape(-1)[0] = 255  # the calibrated range is exactly [0, 255/16]
    return (codes * S_IN).astype(np.float32)


def pow2_grid_weight(shape, axis, rng):
    """int8 codes · 2^-7 with a ±127 in every channel: symmetric scale exactly 2^-7."""
    codes = rng.integers(-127, 128, size=shape)
    moved = np.moveaxis(codes, axis, 0).reshape(shape[axis], -1)
    moved[:, 0] = 127
    codes = np.moveaxis(moved.reshape(np.moveaxis(codes, axis, 0).shape), 0, axis)
    return codes * 2.0**-7


def conv_attrs(pads=1):
    return ConvAttrs((1, 1), (pads,) * 4, (1, 1), 1)


def two_layer(layer, w2, mid, relu=True, bias=True, seed=0):
    """x -> FQ u8 -> layer1 (8-bit weights on a 2^-7 grid, no bias) -> [Relu] -> FQ mid ->
    layer2 (weights w2 = (kind, bits, granularity, extra kwargs)) + bias -> FQ u8 out."""
    rng = np.random.default_rng(seed)
    g = Graph("two")
    if layer == "conv":
        x = g.add_input("x", FLOAT32, (2, 3, 6, 5))
        feeds = {"x": grid_input((2, 3, 6, 5), seed)}
        w1 = pow2_grid_weight((8, 3, 3, 3), 0, rng)
        w2_shape, ch = (6, 8, 3, 3), 0
    else:
        x = g.add_input("x", FLOAT32, (5, 12))
        feeds = {"x": grid_input((5, 12), seed)}
        w1 = pow2_grid_weight((12, 16), 1, rng)
        w2_shape, ch = (16, 7), 1
    kind, bits, gran, extra = w2
    gran = gran if gran is not None else Granularity(ch)

    def linear(inp, w, name, b=None):
        if layer == "conv":
            args = (inp, w) if b is None else (inp, w, b)
            return g.make(Op.CONV, *args, attrs=conv_attrs(), name=name)
        y = g.make(Op.MATMUL, inp, w, name=name)
        return y if b is None else g.make(Op.ADD, y, b, name=name + "_bias")

    h = linear(act(g, x, name="x_fq"), wfq(g, w1, gran=Granularity(ch), name="w1"), "layer1")
    if relu:
        h = g.make(Op.RELU, h, name="relu1")
    bits_mid, signed_mid, binary_mid = mid
    h = act(g, h, bits_mid, signed_mid, binary_mid, name="mid_fq")
    w2v = rng.standard_normal(w2_shape)
    b2 = g.add_const(rng.standard_normal(w2_shape[ch]).astype(np.float32) * 0.3, "b2")
    y = linear(h, wfq(g, w2v, kind, bits, gran, name="w2", **extra), "layer2", b2 if bias
               else None)
    g.outputs = [act(g, y, 8, True, name="out_fq")]
    verify(g)
    return calibrate(g, feeds), feeds


def steps(fq_graph, int_graph, feeds):
    """|fake-quant − integer| of the (single) output, in output quantization steps."""
    a = run_reference(fq_graph, feeds)
    b = run_reference(int_graph, feeds)
    assert list(a) == list(b)
    name = next(iter(a))
    out_fq = fq_graph.outputs[0].producer
    scale = out_fq.attrs.qtype.scale[0]
    diff = np.abs(a[name].astype(np.float64) - b[name]) / scale
    whole = np.rint(diff)
    assert np.all(np.abs(diff - whole) < 1e-3), "both outputs lie on the output grid"
    return whole


def fold(graph, **kw):
    result = FoldScales(**kw)(graph, check=True)
    assert result.changed
    verify(result.graph)
    assert not any(n.op == Op.FAKE_QUANT for n in result.graph.nodes), "rewrite did not fire"
    again = FoldScales(**kw)(result.graph, check=True)
    assert again.changed is False
    return result.graph


# -- golden IR ----------------------------------------------------------------------------------
BEFORE = """
  inputs:  %x: float32[2,4]
  outputs: %y: float32[2,3]
  %x_fq: float32[2,4] = FakeQuant(%x) {qtype={u8 per-tensor scale=0.0625}, role=activation}
  %w_fq: float32[4,3] = FakeQuant(%w: const float32[4,3]) \
{qtype={s4 per-channel(axis=1) scale=0.25x3}, role=weight}
  %mm: float32[2,3] = MatMul(%x_fq, %w_fq)
  %add: float32[2,3] = Add(%mm, %b: const float32[3])
  %relu: float32[2,3] = Relu(%add)
  %y: float32[2,3] = FakeQuant(%relu) {qtype={s8 per-tensor scale=0.03125 zp=-100}, \
role=activation}
"""

EXPECTED = """
  inputs:  %x: float32[2,4]
  outputs: %y: float32[2,3]
  %x_fq_q: uint8[2,4] {u8 per-tensor scale=0.0625} = QuantizeLinear(%x, \
%x_fq_scale: const float32[]=0.0625, %x_fq_zp: const uint8[]=0) \
{dtype=uint8, axis=None, saturate=True, block_size=0}  # node=x_fq
  %add_q: int8[2,3] {s8 per-tensor scale=0.03125 zp=-100 dyadic(m=1073741824x3, shift=38x3)} \
= QMatMul(%x_fq_q, %w_fq_int: const int4[4,3] {s4 per-channel(axis=1) scale=0.25x3}, \
%b_int: const int32[3] {s32 per-channel(axis=0) scale=0.0001221x3}) \
{requant=requant(zx=0 m=1073741824 shift=38 zy=-100 -> int8 [-100,127] axis=1 x3), \
acc_dtype=int32, groups=None, acc_shift=7}  # node=mm
  %y: float32[2,3] = DequantizeLinear(%add_q, %y_scale: const float32[]=0.03125, \
%y_zp: const int8[]=-100) {axis=None, block_size=0}  # node=y_dequant
"""


def golden_graph():
    g = Graph("golden")
    x = g.add_input("x", FLOAT32, (2, 4))
    xq = g.make(Op.FAKE_QUANT, x, attrs=FakeQuantAttrs(activation_qtype(0, 255 / 16, 8, False)),
                name="x_fq")
    w = np.array([[7, -7, 1], [0, 3, 7], [-3, 2, 0], [1, -1, -7]]) * 0.25
    wq, _ = fit_weights(w, "uniform", 4, granularity=Granularity(1))
    wf = g.make(Op.FAKE_QUANT, g.add_const(w.astype(np.float32), "w"),
                attrs=FakeQuantAttrs(wq, "weight"), name="w_fq")
    y = g.make(Op.MATMUL, xq, wf, name="mm")
    y = g.make(Op.ADD, y, g.add_const(np.array([0.5, -1.0, 0.25], np.float32), "b"))
    y = g.make(Op.RELU, y)
    out_q = QType(QKind.UNIFORM, 8, True, scale=(2.0**-5,), zero_point=(-100,))
    g.outputs = [g.make(Op.FAKE_QUANT, y, attrs=FakeQuantAttrs(out_q), name="y")]
    verify(g)
    return g


def test_golden_ir_before_and_expected(ir_lines):
    """Relu folds into lo = zy = −100; s_x·s_w / s_y = 2^-4·2^-2 / 2^-5 = 1/2 so acc_shift =
    log2(1/2) + 8 = 7 (bias int32 at 2^-6 / 2^7 = 2^-13) and M = 2^-8 (m = 2^30, shift 38);
    the graph output keeps its name through DequantizeLinear."""
    g = golden_graph()
    assert ir_lines(str(g)) == ir_lines(BEFORE)
    folded = fold(g)
    assert ir_lines(str(folded)) == ir_lines(EXPECTED)
    assert ir_lines(str(g)) == ir_lines(BEFORE), "not in place: the input is untouched"
    np.testing.assert_array_equal(folded.values["b_int"].const, [4096, -8192, 2048])
    np.testing.assert_array_equal(folded.values["w_fq_int"].const,
                                  [[7, -7, 1], [0, 3, 7], [-3, 2, 0], [1, -1, -7]])


def test_golden_numerics_within_one_step():
    """M = 1/2 makes exact ties possible: half up (integer) vs half even (FakeQuant) can differ
    by one step there, nowhere else."""
    g = golden_graph()
    feeds = {"x": grid_input((2, 4))}
    assert steps(g, fold(g), feeds).max() <= 1


def test_exact_when_the_multiplier_is_a_power_of_two_at_least_one():
    """Inputs on the grid, weights on 2^-7, no bias, s_out = s_x·s_w: M = 1, so requant is the
    identity and both simulators compute the same integers: equal bit for bit."""
    for layer in ("matmul", "conv"):
        rng = np.random.default_rng(3)
        g = Graph("exact")
        shape = (2, 3, 5, 4) if layer == "conv" else (4, 9)
        x = g.add_input("x", FLOAT32, shape)
        xq = act(g, x, name="x_fq")
        if layer == "conv":
            w = wfq(g, pow2_grid_weight((4, 3, 3, 3), 0, rng), gran=Granularity(0))
            y = g.make(Op.CONV, xq, w, attrs=conv_attrs())
        else:
            w = wfq(g, pow2_grid_weight((9, 6), 1, rng), gran=Granularity(1))
            y = g.make(Op.MATMUL, xq, w)
        out_q = QType(QKind.UNIFORM, 8, True, scale=(2.0**-11,), zero_point=(0,))
        g.outputs = [g.make(Op.FAKE_QUANT, y, attrs=FakeQuantAttrs(out_q), name="out_fq")]
        feeds = {"x": grid_input(shape)}
        calibrate(g, feeds)
        folded = fold(g)
        rq = next(n for n in folded.nodes if n.op in (Op.QCONV, Op.QMATMUL)).attrs.requant
        assert set(rq.multiplier) == {1 << 30} and set(rq.shift) == {30}
        np.testing.assert_array_equal(run_reference(folded, feeds)["out_fq"],
                                      run_reference(g, feeds)["out_fq"])


# -- every weight format x activation width ------------------------------------------------------
WEIGHTS = {
    "u8-per-channel": ("uniform", 8, None, {}),
    "u4-per-channel": ("uniform", 4, None, {}),
    "u2-per-channel": ("uniform", 2, None, {}),
    "u4-asymmetric": ("uniform", 4, None, {"symmetric": False}),
    "u3-per-tensor": ("uniform", 3, Granularity(), {}),
    "binary": ("binary", 1, None, {}),
    "ternary": ("ternary", 2, None, {}),
    "pow2-4": ("pow2", 4, None, {}),
    "pow2-4-zero-free": ("pow2", 4, None, {"zero_free": True}),
    "codebook-3": ("codebook", 3, None, {}),
}
ACTIVATIONS = {
    "a8u": (8, False, False), "a8s": (8, True, False), "a4u": (4, False, False),
    "a4s": (4, True, False), "a2u": (2, False, False), "a1u": (1, False, False),
    "binary": (1, True, True),
}


@pytest.mark.parametrize("layer", ["matmul", "conv"])
@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize("acts", list(ACTIVATIONS))
def test_fake_quant_and_integer_simulations_agree(layer, weights, acts):
    """Within one output step: the mid codes agree exactly (layer 1 has no bias and exact float
    products, so only a tie at 2^-31 relative precision could differ), and layer 2 differs by
    its requant rounding (half up with a dyadic M vs half even in float64), the int32 bias
    rounding (<= s_acc/2): together below one step. (Fitted codebooks are snapped onto the
    integer level grid of fold_scales, so they add no rounding.)"""
    relu = not ACTIVATIONS[acts][1]  # signed mid formats see negative values
    g, feeds = two_layer(layer, WEIGHTS[weights], ACTIVATIONS[acts], relu=relu)
    folded = fold(g)
    ops = {n.op for n in folded.nodes}
    assert (Op.QCONV if layer == "conv" else Op.QMATMUL) in ops
    assert Op.ADD not in ops and Op.RELU not in ops, "bias and ReLU fold into the layer"
    diff = steps(g, folded, feeds)
    assert diff.max() <= 1
    assert np.mean(diff < 0.5) > 0.9


@pytest.mark.parametrize("layer,gran", [("matmul", Granularity(0, 5)),
                                        ("conv", Granularity(1, 3))])
def test_per_group_weights_rescale_group_sums(layer, gran):
    """Per-group scales: group partial sums are rescaled onto the channel's common unit with
    16 bits of headroom, so their rounding is far below one output step."""
    g, feeds = two_layer(layer, ("uniform", 4, gran, {}), (8, False, False))
    folded = fold(g)
    node = next(n for n in folded.nodes if n.name == "layer2")
    assert node.attrs.groups is not None and node.attrs.groups.size == gran.group_size
    assert steps(g, folded, feeds).max() <= 1


# -- residual Add / Concat ----------------------------------------------------------------------
def residual_graph(kind):
    rng = np.random.default_rng(5)
    g = Graph("res")
    x = g.add_input("x", FLOAT32, (2, 4, 5, 5))
    xq = act(g, x, name="x_fq")
    h = g.make(Op.CONV, xq, wfq(g, rng.standard_normal((4, 4, 3, 3)), name="w1"),
               g.add_const(rng.standard_normal(4).astype(np.float32), "b1"),
               attrs=conv_attrs(), name="conv1")
    if kind == "add":
        y = g.make(Op.ADD, h, xq, name="residual")
        y = g.make(Op.RELU, y, name="relu")
    else:
        y = g.make(Op.CONCAT, xq, h, attrs=ConcatAttrs(1), name="cat")
    y = act(g, y, 8, kind != "add", name="sum_fq")
    pooled = g.make(Op.MAXPOOL, y, attrs=PoolAttrs((2, 2), (1, 1), (0,) * 4, (1, 1)))
    w2 = wfq(g, rng.standard_normal((3, pooled.shape[1], 2, 2)), name="w2")
    y = g.make(Op.CONV, act(g, pooled, 8, kind != "add", name="pool_fq"), w2,
               attrs=conv_attrs(0), name="conv2")
    g.outputs = [act(g, y, 8, True, name="out_fq")]
    feeds = {"x": grid_input((2, 4, 5, 5))}
    return calibrate(g, feeds), feeds


def test_residual_add_becomes_qadd_with_one_rounding():
    """QAdd sums both inputs at a common shift and rounds once: the residual output is within
    one step, and so is the final output (the requant of conv2 adds no more than one step when
    its input codes agree, which they do here)."""
    g, feeds = residual_graph("add")
    folded = fold(g)
    qadd = next(n for n in folded.nodes if n.op == Op.QADD)
    assert qadd.inputs[0].producer.op == Op.QCONV  # int32 accumulators straight in
    assert qadd.attrs.a.lo == qadd.attrs.a.out_zero_point, "ReLU folded into the clamp"
    assert qadd.attrs.a.axis == 1 and qadd.attrs.b.axis is None
    assert steps(g, folded, feeds).max() <= 1


def test_concat_requantizes_inputs_onto_the_output_scale():
    g, feeds = residual_graph("concat")
    folded = fold(g)
    cat = next(n for n in folded.nodes if n.op == Op.CONCAT)
    assert all(v.dtype.is_integer for v in cat.inputs)
    assert {v.producer.op for v in cat.inputs} == {Op.REQUANTIZE}
    assert steps(g, folded, feeds).max() <= 1


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_int8(group):
    """ConvTranspose (int8, per-channel along weight axis 1, repeated per group): exact
    accumulation, one requant rounding."""
    from lowbit.ir.attrs import ConvTransposeAttrs

    rng = np.random.default_rng(9)
    g = Graph("deconv")
    x = g.add_input("x", FLOAT32, (2, 4, 3, 3))
    w = wfq(g, rng.standard_normal((4, 3, 3, 3)), gran=Granularity(1))
    b = g.add_const(rng.standard_normal(3 * group).astype(np.float32), "b")
    y = g.make(Op.CONV_TRANSPOSE, act(g, x, name="x_fq"), w, b,
               attrs=ConvTransposeAttrs((2, 2), (1, 1, 0, 0), (1, 1), (1, 1), group),
               name="deconv")
    g.outputs = [act(g, y, 8, True, name="out_fq")]
    feeds = {"x": grid_input((2, 4, 3, 3))}
    calibrate(g, feeds)
    folded = fold(g)
    node = folded.node_by_name("deconv")
    assert node.op == Op.QCONV and node.attrs.transposed
    assert len(node.attrs.requant.multiplier) == 3 * group
    assert steps(g, folded, feeds).max() <= 1


def test_shared_skip_connection_stays_integer():
    """ResNet block: the stem's ReLU output feeds both the next layer's input FakeQuant and the
    residual Add, so the stem keeps int32 accumulators, the ReLU becomes a clamping identity
    Requantize, the input FakeQuant a Requantize, the Add a QAdd on the two accumulators, and
    the ReLU after the Add's FakeQuant a clamp on its codes: no float op between the first
    QuantizeLinear and the last DequantizeLinear, and the output within one step."""
    rng = np.random.default_rng(8)
    g = Graph("block")
    x = g.add_input("x", FLOAT32, (2, 4, 5, 5))

    def conv(v, name):
        w = wfq(g, rng.standard_normal((4, 4, 3, 3)) * 0.3, name=name + "_w")
        b = g.add_const(rng.standard_normal(4).astype(np.float32) * 0.1, name + "_b")
        return g.make(Op.CONV, v, w, b, attrs=conv_attrs(), name=name)

    stem = g.make(Op.RELU, conv(act(g, x, 8, True, name="x_fq"), "stem"), name="stem_relu")
    h = g.make(Op.RELU, conv(act(g, stem, name="c1_fq"), "c1"), name="c1_relu")
    h = conv(act(g, h, name="c2_fq"), "c2")
    y = act(g, g.make(Op.ADD, h, stem, name="residual"), 8, True, name="add_fq")
    y = g.make(Op.RELU, y, name="add_relu")
    y = conv(act(g, y, name="head_fq"), "head")
    g.outputs = [act(g, y, 8, True, name="out_fq")]
    feeds = {"x": grid_input((2, 4, 5, 5)) - 8.0}
    calibrate(g, feeds)
    folded = fold(g)
    ops = [n.op for n in folded.nodes]
    assert ops[0] == Op.QUANTIZE and ops[-1] == Op.DEQUANTIZE
    assert set(ops[1:-1]) <= {Op.QCONV, Op.QADD, Op.REQUANTIZE}, ops
    qadd = folded.node_by_name("residual")
    assert [v.producer.name for v in qadd.inputs] == ["c2", "stem_relu"]
    assert steps(g, folded, feeds).max() <= 1


# -- extremes -----------------------------------------------------------------------------------
def single_matmul(w, out_q, in_q=None, bias=None, kind="uniform", bits=8, x=None):
    g = Graph("single")
    xv = g.add_input("x", FLOAT32, (3, w.shape[0]))
    in_q = in_q or activation_qtype(0, 255 / 16, 8, False)
    xq = g.make(Op.FAKE_QUANT, xv, attrs=FakeQuantAttrs(in_q), name="x_fq")
    y = g.make(Op.MATMUL, xq, wfq(g, w, kind, bits, Granularity(1)))
    if bias is not None:
        y = g.make(Op.ADD, y, g.add_const(bias.astype(np.float32), "b"))
    g.outputs = [g.make(Op.FAKE_QUANT, y, attrs=FakeQuantAttrs(out_q), name="out_fq")]
    return g, {"x": grid_input((3, w.shape[0])) if x is None else x}


@pytest.mark.parametrize("out_scale", [1e8, 1e-9])
def test_extreme_requant_multipliers(out_scale):
    """s_out = 1e8 gives M ~ 1e-12 (shift capped at 62, every output is the zero point);
    s_out = 1e-9 gives M ~ 5e5 (every output saturates): both simulators agree exactly."""
    w = np.random.default_rng(1).standard_normal((6, 4))
    g, feeds = single_matmul(w, QType(QKind.UNIFORM, 8, True, scale=(out_scale,),
                                      zero_point=(-3,)))
    folded = fold(g)
    rq = next(n for n in folded.nodes if n.op == Op.QMATMUL).attrs.requant
    assert (max(rq.shift) == 62) if out_scale > 1 else (min(rq.multiplier) > 0)
    assert steps(g, folded, feeds).max() == 0


@pytest.mark.parametrize("kind,bits", [("uniform", 8), ("binary", 1), ("ternary", 2),
                                       ("pow2", 3), ("codebook", 2)])
def test_zero_range_channels_and_all_zero_weights(kind, bits):
    """A channel of all-zero weights (and a fully zero weight) gets integer weights 0 and a
    positive unit, so its bias alone survives; negative input zero point (signed codes on
    non-negative data: zp = −128)."""
    w = np.random.default_rng(2).standard_normal((5, 4))
    w[:, 2] = 0.0
    in_q = activation_qtype(0.0, 255 / 16, 8, True)
    assert in_q.zero_point[0] == -128
    out_q = activation_qtype(-4.0, 4.0, 8, True)
    for weights in (w, np.zeros_like(w)):
        iw = integer_weights(weights, fit_weights(weights, kind, bits,
                                                  granularity=Granularity(1))[0])
        assert np.all(iw.values[:, 2] == 0) and np.all(iw.unit > 0)
        g, feeds = single_matmul(weights, out_q, in_q, bias=np.array([0.5, -1.0, 2.0, 0.0]),
                                 kind=kind, bits=bits)
        assert steps(g, fold(g), feeds).max() <= 1


# -- accumulator bounds -------------------------------------------------------------------------
def wide_graph(k):
    g = Graph("wide")
    x = g.add_input("x", FLOAT32, (1, k))
    xq = g.make(Op.FAKE_QUANT, x, attrs=FakeQuantAttrs(activation_qtype(0, 255 / 16, 8, False)))
    w = np.ones((k, 2))
    w[0] = -1.0
    y = g.make(Op.MATMUL, xq, wfq(g, w, gran=Granularity(1)), name="wide_mm")
    g.outputs = [y]
    return g


def test_accumulator_bound_widens_to_int64_or_refuses():
    """K·max|w|·max|a| = 70000·127·255 > 2^31 − 1: int64 accumulator, exact result; without
    widening the pass refuses, naming the node, K and the bit widths."""
    g = wide_graph(70000)
    folded = fold(g)
    node = next(n for n in folded.nodes if n.op == Op.QMATMUL)
    assert str(node.attrs.acc_dtype) == "int64" and node.output.dtype.bits == 64
    x = np.full((1, 70000), 255 * S_IN, dtype=np.float32)
    got = run_reference(folded, {"x": x})
    want = run_reference(g, {"x": x})
    np.testing.assert_allclose(next(iter(got.values())), next(iter(want.values())), rtol=1e-6)
    with pytest.raises(QuantizationError, match=r"wide_mm.*K=70000, 8-bit uniform weights "
                                                r"and 8-bit activations"):
        FoldScales(widen_accumulators=False).run(g)
    assert str(next(n for n in fold(wide_graph(60000)).nodes
                    if n.op == Op.QMATMUL).attrs.acc_dtype) == "int32"


def test_binary_activations_at_a_float_boundary_are_a_sign():
    """Float -> binary: a binary Requantize of the float input, sign(x) with sign(0) = +1,
    exactly the binary FakeQuant's codes (zeros included); the layer after it is exact up to
    its requant rounding."""
    g = Graph("sign")
    x = g.add_input("x", FLOAT32, (4, 6))
    xq = act(g, x, binary=True, name="bin_fq")
    w = np.random.default_rng(4).standard_normal((6, 3))
    y = g.make(Op.MATMUL, xq, wfq(g, w, gran=Granularity(1)))
    g.outputs = [act(g, y, 8, True, name="out_fq")]
    feeds = {"x": np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)}
    feeds["x"][0, :3] = [0.0, -0.0, 1e-30]
    calibrate(g, feeds)
    folded = fold(g)
    boundary = folded.nodes[0]
    assert boundary.op == Op.REQUANTIZE and boundary.attrs.requant.binary
    assert boundary.inputs[0].dtype.is_float
    assert steps(g, folded, feeds).max() <= 1


def test_refusals_are_typed_and_named():
    g2 = Graph("uncal")
    x = g2.add_input("x", FLOAT32, (2, 4))
    g2.outputs = [act(g2, x, name="raw_fq")]
    with pytest.raises(QuantizationError, match="raw_fq.*uncalibrated.*calibrate"):
        FoldScales().run(g2)
    with pytest.raises(QuantizationError, match="pow2 weights of 8 bits"):
        integer_weights(np.ones((2, 2)), fit_weights(np.ones((2, 2)), "pow2", 8,
                                                     granularity=Granularity(1))[0])


def test_no_fake_quant_means_no_change_and_json_round_trip():
    g, feeds = two_layer("conv", WEIGHTS["u4-per-channel"], ACTIVATIONS["a4u"])
    folded = fold(g)
    back = from_json(to_json(folded))
    verify(back)
    assert str(back) == str(folded)
    np.testing.assert_array_equal(run_reference(back, feeds)["out_fq"],
                                  run_reference(folded, feeds)["out_fq"])


# -- a realistic model --------------------------------------------------------------------------
def test_digits_cnn_integer_graph_matches_fake_quant():
    """examples/digits_cnn.onnx: default pipeline, FakeQuants inserted by hand (w8 per-channel,
    a8 minmax over digits_calib.npz), folded; argmax of integer vs fake-quant logits agrees on
    >= 99% of digits_eval.npz and accuracy stays at the float model's level."""
    import lowbit
    from lowbit.passes import default_pipeline

    calib = np.load(EXAMPLES / "digits_calib.npz")["input"]
    with np.load(EXAMPLES / "digits_eval.npz") as data:
        xe, labels = data["input"], data["labels"]

    def load(n):
        graph = lowbit.import_onnx(str(EXAMPLES / "digits_cnn.onnx"),
                                   input_shapes={"input": (n, 1, 8, 8)})
        graph = default_pipeline()(graph).graph
        for node in list(graph.nodes):
            if node.op not in (Op.CONV, Op.MATMUL):
                continue
            x, w = node.inputs[:2]
            idx = graph.nodes.index(node)
            fx = graph.add_node(Op.FAKE_QUANT, [x], FakeQuantAttrs(QType(QKind.UNIFORM, 8,
                                False)), name=node.name + "_in_fq", index=idx).output
            ch = 0 if node.op == Op.CONV else 1
            wq, _ = fit_weights(w.const, "uniform", 8, granularity=Granularity(ch))
            fw = graph.add_node(Op.FAKE_QUANT, [w], FakeQuantAttrs(wq, "weight"),
                                name=node.name + "_w_fq", index=idx + 1).output
            node.set_input(0, fx)
            node.set_input(1, fw)
        return graph

    calibrated = calibrate(load(len(calib)), {"input": calib})
    g = load(len(xe))
    for node, ref in zip(g.nodes, calibrated.nodes):
        if node.op == Op.FAKE_QUANT:
            node.attrs = ref.attrs
    folded = fold(g)
    assert sum(n.op in (Op.QCONV, Op.QMATMUL) for n in folded.nodes) == 4
    fq = run_reference(g, {"input": xe})["logits"]
    integer = run_reference(folded, {"input": xe})["logits"]
    assert np.mean(fq.argmax(1) == integer.argmax(1)) >= 0.99
    assert np.mean(integer.argmax(1) == labels) >= 0.97


def test_constant_fold_keeps_weight_fake_quants():
    """A weight FakeQuant has only constant inputs, yet constant_fold must leave it for
    fold_scales (even with a custom skip list)."""
    from lowbit.passes import ConstantFold

    g = golden_graph()
    for pass_ in (ConstantFold(), ConstantFold(skip_ops=frozenset())):
        assert pass_(g, check=True).changed is False
        assert sum(n.op == Op.FAKE_QUANT for n in g.nodes) == 3


def test_shared_skip_source_requantizes_to_8bit_codes_at_its_layer():
    """A stem conv -> Relu -> MaxPool read by a float op and a residual Add (the binarized
    ResNet's stem): insert_fake_quant puts an 8-bit FakeQuant on the pooled value, so the stem
    requantizes straight to unsigned 8-bit codes (Relu folded), MaxPool runs on them and the
    QAdd reads them: no int32 accumulator tensor between the stem and the first block."""
    import lowbit

    rng = np.random.default_rng(3)
    g = Graph("stem")
    x = g.add_input("x", FLOAT32, (1, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    stem = g.make(Op.CONV, x, g.add_const(w, "ws"), attrs=conv_attrs(), name="stem")
    pooled = g.make(Op.MAXPOOL, g.make(Op.RELU, stem, name="relu"),
                    attrs=PoolAttrs((2, 2), (2, 2), (0,) * 4, (1, 1)), name="pool")
    gate = g.make(Op.SIGMOID, pooled, name="gate")
    w2 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    block = g.make(Op.CONV, gate, g.add_const(w2, "wb"), attrs=conv_attrs(), name="block")
    s = g.make(Op.ADD, block, pooled, name="res")
    w3 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    g.outputs = [g.make(Op.CONV, s, g.add_const(w3, "wl"), attrs=conv_attrs(0), name="last")]
    feeds = {"x": grid_input((4, 3, 8, 8))}
    q = lowbit.quantize(g, quant="int8", calib=feeds)
    qconv = next(n for n in q.nodes if n.op == Op.QCONV)
    out = qconv.output.qtype
    assert (out.bits, out.signed, out.granularity.axis) == (8, False, None)
    rq = qconv.attrs.requant
    assert len(rq.multiplier) and (rq.lo, rq.hi) == (out.zero_point[0], 255)  # Relu folded
    pool = next(n for n in q.nodes if n.op == Op.MAXPOOL)
    assert pool.inputs[0] is qconv.output and pool.output.qtype.bits == 8
    qadd = next(n for n in q.nodes if n.op == Op.QADD)
    assert pool.output in qadd.inputs
    got = run_reference(q, {"x": feeds["x"][:1]})[q.outputs[0].name]
    want = run_reference(g, {"x": feeds["x"][:1]})[g.outputs[0].name]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
