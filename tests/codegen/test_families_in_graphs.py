"""Kernel families inside compiled graphs (codegen/lowering/families.py): bit-exact to the
integer simulator (lowbit.run_reference) on the digits CNN at every preset, and on single
QMatMul / QConv layers with acc_shift, bias, binary requant, odd shapes and extreme values.

Every integer intermediate is exposed as a graph output, so each layer is compared exactly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.codegen.build import build
from lowbit.codegen.lowering.families import plan_layer
from lowbit.codegen.select import candidates, select_kernels
from lowbit.codegen.target import resolve_target
from lowbit.compiler.recipes import preset
from lowbit.ir import FLOAT32, DType, Graph, LoweringError, Op, QKind, QType
from lowbit.ir.attrs import QConvAttrs, QMatMulAttrs, Requant

tvm = pytest.importorskip("tvm")
from tvm import relax

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CNN = EXAMPLES / "digits_cnn.onnx"
CALIB = EXAMPLES / "digits_calib.npz"
LAYERS = (Op.QCONV, Op.QMATMUL)
_GRAPHS: dict = {}


def host():
    return resolve_target("x86")


def quantized_cnn(quant: str) -> Graph:
    """digits_cnn at preset ``quant`` without reconstruction, every node output exposed."""
    if quant not in _GRAPHS:
        recipe = preset(quant)
        recipe = replace(recipe, ptq=replace(recipe.ptq, reconstruct=False))
        g = lowbit.quantize(CNN, recipe=recipe, calib=str(CALIB),
                            input_shapes={"input": (8, 1, 8, 8)})
        outs = list(g.outputs)
        outs += [v for n in g.nodes for v in n.outputs if v not in outs]
        g.outputs = outs
        _GRAPHS[quant] = g
    return _GRAPHS[quant].copy()


def calib_batch() -> np.ndarray:
    return np.load(CALIB)["input"][:8].astype(np.float32)


def run_tvm(graph: Graph, feeds: dict, target="x86") -> dict:
    ex = build(graph, target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feeds[v.name]))
                       for v in graph.inputs])
    outs = [out] if len(graph.outputs) == 1 else list(out)
    return {v.name: o.numpy() for v, o in zip(graph.outputs, outs)}


def assert_bit_exact(graph: Graph, feeds: dict) -> None:
    got, want = run_tvm(graph, feeds), lowbit.run_reference(graph, feeds)
    for v in graph.outputs:
        if v.dtype.is_integer:
            assert got[v.name].dtype == v.dtype.numpy, v.name
            np.testing.assert_array_equal(got[v.name].astype(np.int64),
                                          np.asarray(want[v.name]).astype(np.int64),
                                          err_msg=v.name)
        else:
            np.testing.assert_allclose(got[v.name], want[v.name], rtol=1e-5, atol=1e-5,
                                       err_msg=v.name)


def kernels(graph: Graph) -> dict[str, str]:
    return {n.name: n.meta["kernel"] for n in graph.nodes if n.op in LAYERS}


#: preset -> families the static selection must put on the middle convs (weights of the
#: preset; the first conv and the classifier are int8 by the first/last rule)
EXPECTED = {
    "int8": "int8",
    "w4a8": "int8",
    "w1a8": "int8",  # binary / ternary / pow2 (t <= 6) integer weights fit int8
    "w2a2": "bitserial",
    "ternary": "int8",
    "pow2": "int8",
}


@pytest.mark.parametrize("quant", sorted(EXPECTED))
def test_cnn_static_selection_bit_exact(quant):
    """Static selection puts every layer on a non-reference family and the compiled graph is
    bit-exact (acc_shift > 0 layers: the split epilogue; acc_shift 0: fused)."""
    graph = quantized_cnn(quant)
    shifts = [n.attrs.acc_shift for n in graph.nodes if n.op in LAYERS]
    assert any(shifts), "the digits CNN has acc_shift > 0 layers"
    choices = select_kernels(graph, "x86", measure=False)
    chosen = kernels(graph)
    assert all(k != "reference" for k in chosen.values()), chosen
    convs = [n.name for n in graph.nodes if n.op == Op.QCONV][1:]
    assert {chosen[c] for c in convs} == {EXPECTED[quant]}
    assert all(c.source == "static" and c.us is None for c in choices.values())
    assert_bit_exact(graph, {"input": calib_batch()})


def test_every_candidate_family_bit_exact_w2a2():
    """w2a2: the 2-bit convs run in turn on bitserial, int8 and lut (im2col + split epilogue),
    all bit-exact."""
    graph = quantized_cnn("w2a2")
    target = host()
    conv = [n for n in graph.nodes if n.op == Op.QCONV][1:]
    pools = [candidates(n, target)[0] for n in conv]
    assert all(set(p) >= {"bitserial", "int8", "lut", "reference"} for p in pools)
    feeds = {"input": calib_batch()}
    for family in ("bitserial", "lut"):
        for n in conv:
            n.meta["kernel"] = family
        assert_bit_exact(graph, feeds)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["w4a8", "w1a8", "ternary", "pow2"])
def test_every_candidate_family_bit_exact(quant):
    graph = quantized_cnn(quant)
    target = host()
    layers = [n for n in graph.nodes if n.op in LAYERS]
    pools = {n.name: candidates(n, target)[0] for n in layers}
    for k in range(max(len(p) for p in pools.values())):
        for n in layers:
            n.meta["kernel"] = pools[n.name][k % len(pools[n.name])]
        assert_bit_exact(graph, {"input": calib_batch()})


# -- single layers ------------------------------------------------------------------------------
def uniform(bits: int, signed: bool, zp: int = 0) -> QType:
    return QType(QKind.UNIFORM, bits, signed, scale=(0.1,), zero_point=(zp,))


def _requant(rng, channels: int, zx: int, out: DType, lo: int, hi: int, shift: int,
             binary=False) -> Requant:
    if binary:
        return Requant(zx, (), (), 0, out, lo, hi, binary=True)
    mult = tuple(int(v) for v in rng.integers(1 << 29, 1 << 31, channels))
    return Requant(zx, mult, (shift,) * channels, 3, out, lo, hi, axis=None)


ACC32 = DType.int(32)


def matmul_graph(x_shape, w, bias, rq, acc_shift, a_q, w_q, acc_dtype=ACC32) -> Graph:
    g = Graph("qmm")
    x = g.add_input("x", DType.uint(8) if not a_q.signed else DType.int(8), x_shape)
    x.qtype = a_q
    wv = g.add_const(w.astype(np.int8), "w")
    wv.qtype = w_q
    b = g.add_const(np.asarray(bias, np.int32), "b")
    rq = replace(rq, axis=len(x_shape) - 1) if len(rq.multiplier) > 1 else rq
    out = rq.out_dtype
    node = g.add_node(Op.QMATMUL, [x, wv, b], QMatMulAttrs(rq, acc_dtype, acc_shift=acc_shift),
                      name="qmm", outputs=["y"],
                      out_types=[(out, (*x_shape[:-1], w.shape[1]))])
    g.outputs = [node.outputs[0]]
    return g


@pytest.mark.parametrize("family,a_bits,a_signed,w_bits,x_lead,binary", [
    ("int8", 8, False, 8, (3,), False),
    ("int8", 8, True, 4, (2, 4), True),
    ("bitserial", 2, False, 2, (1,), False),
    ("lut", 8, False, 3, (3,), False),
    ("lut", 8, True, 4, (8,), True),
])
def test_qmatmul_split_epilogue(family, a_bits, a_signed, w_bits, x_lead, binary):
    """acc_shift > 0, bias, odd K / N, 2-D and 3-D x, binary and dyadic requant: the family's
    raw dot product + the te epilogue (int8 with a dyadic requant: its own epilogue, which
    shifts in int64 and adds the bias after) equal the integer simulator."""
    rng = np.random.default_rng(a_bits * 100 + w_bits * 10 + len(x_lead))
    K, N, acc_shift = 77, 19, 3
    zx = 1 if not a_signed else -3
    a_q, w_q = uniform(a_bits, a_signed, zx), uniform(w_bits, True)
    w = rng.integers(1 - (1 << (w_bits - 1)), 1 << (w_bits - 1), (K, N))  # mean 0
    bias = rng.integers(-4000, 4000, N)
    rq = _requant(rng, N, zx, DType.int(2) if binary else DType.uint(8),
                  -1 if binary else 0, 1 if binary else 255, 36, binary)
    g = matmul_graph((*x_lead, K), w, bias, rq, acc_shift, a_q, w_q)
    node = g.nodes[0]
    node.meta["kernel"] = family
    plan = plan_layer(node, family, host())
    assert plan.fused == (family == "int8" and not binary) and plan.layout == "gemm"
    lo, hi = (a_q.min, a_q.max)
    x = rng.integers(lo, hi + 1, (*x_lead, K)).astype(g.inputs[0].dtype.numpy)
    want = lowbit.run_reference(g, {"x": x})["y"]
    assert len(np.unique(want)) > 1
    assert_bit_exact(g, {"x": x})


@pytest.mark.parametrize("family,x_lead", [("int8", (3,)), ("int8", (2, 3)), ("lut", (2, 1))])
def test_qmatmul_fused_when_acc_shift_zero(family, x_lead):
    """acc_shift 0: the family's own epilogue (bias and zx in its offset), x of any rank."""
    rng = np.random.default_rng(3)
    K, N = 70, 33
    rq = _requant(rng, N, 2, DType.uint(8), 0, 255, 33)
    g = matmul_graph((*x_lead, K), rng.integers(-7, 8, (K, N)), rng.integers(-99, 99, N), rq,
                     0, uniform(8, False, 2), uniform(4, True))
    assert plan_layer(g.nodes[0], family, host()).fused
    g.nodes[0].meta["kernel"] = family
    x = rng.integers(0, 256, (*x_lead, K)).astype(np.uint8)
    assert len(np.unique(lowbit.run_reference(g, {"x": x})["y"])) > 5
    assert_bit_exact(g, {"x": x})


def test_extreme_codes_and_weights_no_overflow():
    """All-max activations (zero point 0) x all-max weights, acc_shift 4: the raw dot product
    K·255·127 fits int32, the shifted acc + bias needs int64: the epilogue keeps it exact."""
    K, N = 4000, 17
    w = np.full((K, N), 127)
    rq = Requant(0, (), (), 0, DType.int(64), -(1 << 63), (1 << 63) - 1)
    g = matmul_graph((1, K), w, np.full(N, 1 << 30), rq, 4, uniform(8, False),
                     uniform(8, True), acc_dtype=DType.int(64))
    g.nodes[0].meta["kernel"] = "int8"
    x = np.full((1, K), 255, np.uint8)
    got = run_tvm(g, {"x": x})["y"]
    assert int(got[0, 0]) == ((255 * 127 * K) << 4) + (1 << 30)
    np.testing.assert_array_equal(got, lowbit.run_reference(g, {"x": x})["y"])


def conv_graph(x_shape, w, bias, rq, attrs_kw, a_q, w_q, out_shape) -> Graph:
    g = Graph("qconv")
    x = g.add_input("x", DType.uint(8) if not a_q.signed else DType.int(8), x_shape)
    x.qtype = a_q
    wv = g.add_const(w.astype(np.int8), "w")
    wv.qtype = w_q
    b = g.add_const(np.asarray(bias, np.int32), "b")
    if len(rq.multiplier) > 1:
        rq = replace(rq, axis=1)
    attrs = QConvAttrs(requant=rq, acc_dtype=DType.int(32), **attrs_kw)
    node = g.add_node(Op.QCONV, [x, wv, b], attrs, name="qconv", outputs=["y"],
                      out_types=[(rq.out_dtype, out_shape)])
    g.outputs = [node.outputs[0]]
    return g


@pytest.mark.parametrize("family,layout,a_bits,w_bits,dil,acc_shift,shift", [
    ("int8", "conv", 8, 8, 1, 2, 38),
    ("int8", "im2col", 8, 4, 2, 1, 36),
    ("bitserial", "bitconv", 2, 2, 1, 3, 34),
    ("bitserial", "bitconv", 3, 2, 1, 0, 34),  # acc_shift 0: requant fused into the kernel
    ("bitserial", "im2col", 2, 2, 2, 3, 34),  # dilation 2: no direct conv
    ("lut", "im2col", 8, 2, 1, 0, 34),
])
def test_qconv_families(family, layout, a_bits, w_bits, dil, acc_shift, shift):
    """Dense conv, stride 2, asymmetric pads, zx != 0 (padding reads zx), odd channels."""
    rng = np.random.default_rng(11)
    B, C, H, W, OC, k = 2, 5, 9, 7, 13, 3
    s, pads = 2, (1, 0, 2, 1)
    OH = (H + pads[0] + pads[2] - dil * (k - 1) - 1) // s + 1
    OW = (W + pads[1] + pads[3] - dil * (k - 1) - 1) // s + 1
    zx = 1
    a_q, w_q = uniform(a_bits, False, zx), uniform(w_bits, True)
    w = rng.integers(1 - (1 << (w_bits - 1)), 1 << (w_bits - 1), (OC, C, k, k))  # mean 0
    rq = _requant(rng, OC, zx, DType.uint(8), 0, 255, shift)
    g = conv_graph((B, C, H, W), w, rng.integers(-900, 900, OC), rq,
                   {"strides": (s, s), "pads": pads, "dilations": (dil, dil), "group": 1,
                    "acc_shift": acc_shift}, a_q, w_q, (B, OC, OH, OW))
    node = g.nodes[0]
    plan = plan_layer(node, family, host())
    assert plan.layout == layout
    assert plan.fused == ((acc_shift == 0 or family == "int8") and layout != "im2col")
    node.meta["kernel"] = family
    x = rng.integers(0, 1 << a_bits, (B, C, H, W)).astype(np.uint8)
    assert len(np.unique(lowbit.run_reference(g, {"x": x})["y"])) > 5
    assert_bit_exact(g, {"x": x})


def test_int8_depthwise_with_acc_shift():
    rng = np.random.default_rng(5)
    B, C, H, W = 1, 6, 8, 9
    rq = _requant(rng, C, 3, DType.uint(8), 0, 255, 34)
    g = conv_graph((B, C, H, W), rng.integers(-7, 8, (C, 1, 3, 3)), rng.integers(-50, 50, C),
                   rq, {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1),
                        "group": C, "acc_shift": 2}, uniform(8, False, 3), uniform(4, True),
                   (B, C, H, W))
    node = g.nodes[0]
    assert plan_layer(node, "int8", host()).layout == "depthwise"
    with pytest.raises(LoweringError, match="lut.*grouped conv"):
        plan_layer(node, "lut", host())
    node.meta["kernel"] = "int8"
    x = rng.integers(0, 256, (B, C, H, W)).astype(np.uint8)
    assert len(np.unique(lowbit.run_reference(g, {"x": x})["y"])) > 5
    assert_bit_exact(g, {"x": x})


def test_layers_no_family_takes():
    """Grouped conv (not depthwise) stays on the reference kernel; forcing a family is a
    LoweringError saying why."""
    rng = np.random.default_rng(0)
    rq = _requant(rng, 4, 0, DType.uint(8), 0, 255, 36)
    base = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "acc_shift": 1}
    grouped = conv_graph((1, 4, 5, 5), rng.integers(-8, 8, (4, 2, 3, 3)), np.zeros(4), rq,
                         {**base, "group": 2}, uniform(8, False), uniform(4, True), (1, 4, 3, 3))
    with pytest.raises(LoweringError, match=r"qconv.*'int8'.*grouped conv \(group=2\)"):
        plan_layer(grouped.nodes[0], "int8", host())
    assert candidates(grouped.nodes[0], host())[0] == ["reference"]


@pytest.mark.parametrize("stride,pads,binary_out", [(1, (1, 1, 1, 1), True),
                                                    (2, (0, 1, 2, 1), False)])
def test_binary_activations_padded_conv_on_amx_tiles(stride, pads, binary_out):
    """The same layer shape class on the amx family (64 -> 32 channels: whole tiles), on a
    CPU with AMX: the +1 padding codes and the border correction as on bitserial."""
    from lowbit.codegen.kernels import amx

    if not amx.available(host()):
        pytest.skip("host CPU has no AMX tiles")
    rng = np.random.default_rng(stride)
    B, C, H, W, OC, k = 2, 64, 6, 7, 32, 3
    OH = (H + pads[0] + pads[2] - k) // stride + 1
    OW = (W + pads[1] + pads[3] - k) // stride + 1
    binary = QType(QKind.BINARY, 1, True, scale=(1.0,))
    rq = (Requant(0, (), (), 0, DType.int(2), -1, 1, binary=True) if binary_out else
          Requant(0, (), (), 0, DType.int(32), -(1 << 31), (1 << 31) - 1))
    g = conv_graph((B, C, H, W), rng.choice([-1, 1], (OC, C, k, k)), rng.integers(-9, 9, OC),
                   rq, {"strides": (stride, stride), "pads": pads, "dilations": (1, 1),
                        "group": 1, "acc_shift": 1}, binary, binary, (B, OC, OH, OW))
    node = g.nodes[0]
    plan = plan_layer(node, "amx", host())
    assert plan.layout == "bitconv" and plan.spec.engine == "amx" and plan.border is not None
    assert candidates(node, host())[0] == ["amx", "bitserial", "reference"]
    node.meta["kernel"] = "amx"
    x = rng.choice(np.array([-1, 1], np.int8), (B, C, H, W))
    assert len(np.unique(lowbit.run_reference(g, {"x": x})["y"])) > 1
    assert_bit_exact(g, {"x": x})


@pytest.mark.parametrize("stride,pads,binary_out", [(1, (1, 1, 1, 1), True),
                                                    (2, (0, 1, 2, 1), False)])
def test_binary_activations_padded_conv(stride, pads, binary_out):
    """w1a1 conv with padding on bitserial XNOR-popcount (direct conv, and im2col when forced by
    dilation): the padding holds +1 codes and the epilogue subtracts the border taps (the real
    padding value is 0, no +-1 code)."""
    rng = np.random.default_rng(stride)
    B, C, H, W, OC, k = 2, 37, 6, 7, 9, 3
    OH = (H + pads[0] + pads[2] - k) // stride + 1
    OW = (W + pads[1] + pads[3] - k) // stride + 1
    binary = QType(QKind.BINARY, 1, True, scale=(1.0,))
    if binary_out:
        rq = Requant(0, (), (), 0, DType.int(2), -1, 1, binary=True)
    else:
        rq = Requant(0, (), (), 0, DType.int(32), -(1 << 31), (1 << 31) - 1)
    g = conv_graph((B, C, H, W), rng.choice([-1, 1], (OC, C, k, k)), rng.integers(-9, 9, OC),
                   rq, {"strides": (stride, stride), "pads": pads, "dilations": (1, 1),
                        "group": 1, "acc_shift": 1}, binary, binary, (B, OC, OH, OW))
    node = g.nodes[0]
    plan = plan_layer(node, "bitserial", host())
    assert plan.layout == "bitconv" and plan.pad_code == 1 and plan.border is not None
    # 37 -> 9 channels would pad to 64 -> 32 on AMX tiles: that family refuses the layer
    assert candidates(node, host())[0] == ["bitserial", "reference"]
    node.meta["kernel"] = "bitserial"
    x = rng.choice(np.array([-1, 1], np.int8), (B, C, H, W))
    want = lowbit.run_reference(g, {"x": x})["y"]
    assert len(np.unique(want)) > 1
    assert_bit_exact(g, {"x": x})
    dilated = g.copy()
    node = dilated.nodes[0]
    node.attrs = replace(node.attrs, dilations=(2, 2), pads=(2, 2, 2, 2))
    node.outputs[0].shape = (B, OC, (H + 4 - 5) // stride + 1, (W + 4 - 5) // stride + 1)
    assert plan_layer(node, "bitserial", host()).layout == "im2col"
    assert_bit_exact(dilated, {"x": x})


@pytest.mark.parametrize("value,pads", [(1.0, (1, 1, 1, 1)), (-0.5, (0, 2, 1, 0))])
def test_bitconv_pads_sign_codes_itself(value, pads):
    """Pad(float, value) -> sign Requantize -> an unpadded w1a1 conv: the direct conv signs
    the unpadded tensor and writes the border code sign(value) itself (no separate pad pass),
    bit-exact to the simulator running the graph as written."""
    from lowbit.codegen.lowering.families import _padded_sign
    from lowbit.ir.attrs import PadAttrs, RequantizeAttrs

    rng = np.random.default_rng(sum(pads))
    B, C, H, W, OC, k = 2, 70, 5, 6, 9, 3
    Hp, Wp = H + pads[0] + pads[2], W + pads[1] + pads[3]
    g = Graph("padsign")
    f = g.add_input("f", FLOAT32, (B, C, H, W))
    p = g.add_node(Op.PAD, [f], PadAttrs((0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]),
                                         "constant", value), name="pad", outputs=["p"],
                   out_types=[(FLOAT32, (B, C, Hp, Wp))]).outputs[0]
    sign = Requant(0, (), (), 0, DType.int(2), -1, 1, binary=True)
    s = g.add_node(Op.REQUANTIZE, [p], RequantizeAttrs(sign), name="sign", outputs=["s"],
                   out_types=[(DType.int(2), (B, C, Hp, Wp))]).outputs[0]
    s.qtype = QType(QKind.BINARY, 1, True, scale=(1.0,))
    node = _w1a1_conv(g, s, rng.choice([-1, 1], (OC, C, k, k)),
                      (B, OC, Hp - k + 1, Wp - k + 1))
    node.meta["kernel"] = "bitserial"
    g.outputs = [node.outputs[0]]
    assert _padded_sign(node) is not None
    assert plan_layer(node, "bitserial", host()).layout == "bitconv"
    feeds = {"f": rng.standard_normal((B, C, H, W)).astype(np.float32)}
    feeds["f"][0, 0, 0, :3] = (0.0, -0.0, np.nan)  # sign(±0) = +1; NaN is not < 0: +1
    assert_bit_exact(g, feeds)
    names = [gv.name_hint for gv, _ in _lowered_functions(g)]
    assert not [n for n in names if "pad" in n], names


def _w1a1_conv(g, s, w, out_shape):
    """An unpadded stride-1 w1a1 QConv ``qconv`` of binary codes ``s`` with ±1 weights
    ``w``, no bias, int32 accumulators out."""
    wv = g.add_const(np.asarray(w, np.int8), "w")
    wv.qtype = QType(QKind.BINARY, 1, True, scale=(1.0,))
    rq = Requant(0, (), (), 0, DType.int(32), -(1 << 31), (1 << 31) - 1)
    attrs = QConvAttrs(requant=rq, acc_dtype=DType.int(32), strides=(1, 1),
                       pads=(0, 0, 0, 0), dilations=(1, 1), group=1, acc_shift=0)
    bias = g.add_const(np.zeros(out_shape[1], np.int32), "b")
    return g.add_node(Op.QCONV, [s, wv, bias], attrs, name="qconv", outputs=["y"],
                      out_types=[(DType.int(32), tuple(out_shape))])


def _lowered_functions(g):
    """The PrimFuncs of ``g`` after lowbit's Relax pipeline up to scheduling."""
    from lowbit.codegen.build import relax_pipeline
    from lowbit.codegen.lower import lower

    target = host()
    with target.tvm_target():
        mod = relax_pipeline(target)(lower(g, target))
    return [(gv, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_arm64_graph_uses_neon_family_kernels():
    """Static selection for arm64 puts the w2a2 convs on bitserial (the popcount is NEON
    ``cnt``), and the graph compiles to an AArch64 object."""
    graph = quantized_cnn("w2a2")
    choices = select_kernels(graph, "arm64", measure=False)
    assert sorted(c.family for c in choices.values()) == ["bitserial", "bitserial", "int8",
                                                          "int8"]
    ex = build(graph, "arm64")
    asm = "".join(m.inspect_source("asm") for m in ex.mod.imports if m.kind == "llvm")
    assert "cnt\t" in asm or "cnt " in asm
    assert "%rax" not in asm


@pytest.mark.parametrize("also_output", [False, True])
def test_amx_conv_then_max_pool_fused(also_output):
    """QConv (amx, u8 codes with a folded ReLU) -> MaxPool 3x3/2 pad 1, the ResNet stem's
    pattern: the conv's kernel pools (no pad / max_pool kernels left), bit-exact to the
    simulator; when the conv's codes are also a graph output it stays unfused."""
    from lowbit.codegen.kernels import amx
    from lowbit.ir.attrs import PoolAttrs

    if not amx.available(host()):
        pytest.skip("host CPU has no AMX tiles")
    rng = np.random.default_rng(7)
    B, C, H, W, OC, k = 1, 3, 40, 38, 32, 7
    OH, OW = (H + 6 - k) // 2 + 1, (W + 6 - k) // 2 + 1
    rq = _requant(rng, OC, 5, DType.uint(8), 9, 255, 37)
    g = conv_graph((B, C, H, W), rng.integers(-128, 128, (OC, C, k, k)),
                   rng.integers(-999, 999, OC), rq,
                   {"strides": (2, 2), "pads": (3, 3, 3, 3), "dilations": (1, 1), "group": 1,
                    "acc_shift": 2}, uniform(8, True, 5), uniform(8, True), (B, OC, OH, OW))
    conv = g.nodes[0]
    conv.meta["kernel"] = "amx"
    PH, PW = (OH + 2 - 3) // 2 + 1, (OW + 2 - 3) // 2 + 1
    pool = g.add_node(Op.MAXPOOL, [conv.outputs[0]],
                      PoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1)), name="pool",
                      outputs=["p"], out_types=[(DType.uint(8), (B, OC, PH, PW))])
    g.outputs = [pool.outputs[0]] + ([conv.outputs[0]] if also_output else [])
    x = rng.integers(-128, 128, (B, C, H, W)).astype(np.int8)
    assert len(np.unique(lowbit.run_reference(g, {"x": x})["p"])) > 10
    assert_bit_exact(g, {"x": x})
    names = [gv.name_hint for gv, _ in _lowered_functions(g)]
    if also_output:
        assert any("pool" in n for n in names) and "amx_qconv_maxpool" not in names, names
    else:
        assert names == ["amx_qconv_maxpool"], names


def _sign_of(g, v, name, value=1.0):
    """Pad(v, 1 pixel, ``value``) -> sign Requantize; returns the codes."""
    from lowbit.ir.attrs import PadAttrs, RequantizeAttrs

    B, C, H, W = v.shape
    p = g.add_node(Op.PAD, [v], PadAttrs((0, 0, 1, 1, 0, 0, 1, 1), "constant", value),
                   name=f"{name}_pad", outputs=[f"{name}_p"],
                   out_types=[(FLOAT32, (B, C, H + 2, W + 2))]).outputs[0]
    sign = Requant(0, (), (), 0, DType.int(2), -1, 1, binary=True)
    s = g.add_node(Op.REQUANTIZE, [p], RequantizeAttrs(sign), name=f"{name}_sign",
                   outputs=[f"{name}_s"], out_types=[(DType.int(2), (B, C, H + 2, W + 2))])
    s.outputs[0].qtype = QType(QKind.BINARY, 1, True, scale=(1.0,))
    return s.outputs[0]


@pytest.mark.parametrize("family", ["bitserial", "amx"])
def test_binary_conv_writes_the_next_convs_sign_codes(family):
    """conv1 (w1a1, accumulators with acc_shift + bias) -> per-channel DequantizeLinear ->
    Pad(1) -> sign -> conv2: conv1's kernel writes the sign codes itself (fused_sign: no
    epilogue / threshold kernels left), bit-exact to the simulator."""
    from lowbit.codegen.kernels import amx
    from lowbit.ir.attrs import DequantizeAttrs

    if family == "amx" and not amx.available(host()):
        pytest.skip("host CPU has no AMX tiles")
    rng = np.random.default_rng(11)
    B, C, H, W, k = 2, 64, 6, 7, 3
    binary = QType(QKind.BINARY, 1, True, scale=(1.0,))
    g = Graph("fused_sign")
    f = g.add_input("f", FLOAT32, (B, C, H, W))
    x = _sign_of(g, f, "in")
    acc = Requant(0, (), (), 0, DType.int(32), -(1 << 31), (1 << 31) - 1)
    outs = []
    for i, src in enumerate([x, None]):
        if src is None:  # the second conv reads sign(dequantize(conv1's accumulators))
            scale = g.add_const((rng.random(C) * 0.1 + 0.01).astype(np.float32), "scale")
            d = g.add_node(Op.DEQUANTIZE, [outs[0], scale], DequantizeAttrs(axis=1),
                           name="dq", outputs=["d"], out_types=[(FLOAT32, (B, C, H, W))])
            src = _sign_of(g, d.outputs[0], "mid")
        wv = g.add_const(rng.choice([-1, 1], (C, C, k, k)).astype(np.int8), f"w{i}")
        wv.qtype = binary
        bias = g.add_const(rng.integers(-5000, 5000, C).astype(np.int32), f"b{i}")
        attrs = QConvAttrs(requant=acc, acc_dtype=DType.int(32), strides=(1, 1),
                           pads=(0, 0, 0, 0), dilations=(1, 1), group=1, acc_shift=4)
        node = g.add_node(Op.QCONV, [src, wv, bias], attrs, name=f"conv{i}",
                          outputs=[f"y{i}"], out_types=[(DType.int(32), (B, C, H, W))])
        node.meta["kernel"] = family
        outs.append(node.outputs[0])
    g.outputs = [outs[1]]
    feeds = {"f": rng.standard_normal((B, C, H, W)).astype(np.float32)}
    assert_bit_exact(g, feeds)
    names = [gv.name_hint for gv, _ in _lowered_functions(g)]
    assert f"{family}_conv0_sign" in names and "dq" not in " ".join(names), names
    assert not [n for n in names if "epilogue" in n and "conv0" in n], names


@pytest.mark.parametrize("family", ["bitserial", "amx"])
@pytest.mark.parametrize("dtype,zp,value", [(DType.int(8), -5, 1.0), (DType.uint(8), 130, -0.5)])
def test_bitconv_pack_thresholds_integer_codes(family, dtype, zp, value):
    """Integer codes (a residual stream) -> per-channel DequantizeLinear -> Mul (some negative
    gammas: inverted predicates) -> Add -> Pad(1, value) -> sign -> a w1a1 direct conv
    (popcount or AMX XNOR): the conv's pack computes the sign codes from the integer codes by
    per-channel thresholds (no threshold kernel of its own), bit-exact to the simulator,
    border code sign(value)."""
    from lowbit.codegen.kernels import amx
    from lowbit.ir.attrs import DequantizeAttrs

    if family == "amx" and not amx.available(host()):
        pytest.skip("host CPU has no AMX tiles")
    rng = np.random.default_rng(abs(zp))
    B, C, H, W, OC, k = (2, 70, 5, 6, 9, 3) if family == "bitserial" else (2, 64, 5, 6, 32, 3)
    g = Graph("pack_thresholds")
    x = g.add_input("x", dtype, (B, C, H, W))
    scale = g.add_const((rng.random(C) * 0.1 + 0.01).astype(np.float32), "scale")
    zero = g.add_const(np.full(C, zp, dtype.numpy), "zp")
    v = g.add_node(Op.DEQUANTIZE, [x, scale, zero], DequantizeAttrs(axis=1), name="dq",
                   outputs=["d"], out_types=[(FLOAT32, (B, C, H, W))]).outputs[0]
    for op, const in ((Op.MUL, np.linspace(-2, 2, C)), (Op.ADD, rng.standard_normal(C))):
        c = g.add_const(const.astype(np.float32).reshape(C, 1, 1), f"c_{op.value}")
        v = g.add_node(op, [v, c], None, name=f"bn_{op.value}", outputs=[f"v_{op.value}"],
                       out_types=[(FLOAT32, (B, C, H, W))]).outputs[0]
    s = _sign_of(g, v, "in", value)
    node = _w1a1_conv(g, s, rng.choice([-1, 1], (OC, C, k, k)), (B, OC, H, W))
    node.meta["kernel"] = family
    g.outputs = [node.outputs[0]]
    info = np.iinfo(dtype.numpy)
    feeds = {"x": rng.integers(info.min, info.max + 1, (B, C, H, W)).astype(dtype.numpy)}
    feeds["x"][0, :, 0, 0] = info.min
    feeds["x"][1, :, 0, 0] = info.max
    want = lowbit.run_reference(g, feeds)["y"]
    assert len(np.unique(want)) > 10
    assert_bit_exact(g, feeds)
    names = [gv.name_hint for gv, _ in _lowered_functions(g)]
    assert names == [f"{family}_qconv"], names
