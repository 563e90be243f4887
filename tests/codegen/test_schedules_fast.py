"""The float fast paths of lowbit.codegen.schedules: lane-split row reductions and the
output-channel-blocked conv.

Row reductions: float softmax / layer norm / row sums whose length has a 4-lane split are
rfactored into vector partial sums (checked on the scheduled TIR) and stay within 1e-5 of a
float64 reference; rows with no such split and integer reductions keep dlight's schedule
(integer results bit-exact). Blocked conv: float32 2-d convs (strides, dilations, asymmetric
pads, with / without bias) built by lowbit match onnxruntime to 1e-4, and the contraction
rule tiles them with the output column as register rows.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from lowbit.codegen.schedules import schedule_func
from lowbit.codegen.schedules.reduction import _row_plan
from lowbit.codegen.target import resolve_target
from tvm import te, topi

TARGET = tvm.target.Target(resolve_target("x86").tvm_dict())
RNG = np.random.default_rng(11)


def _run(func, args):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=TARGET)
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _scheduled(tensors, rule="row_reduction"):
    func = te.create_prim_func(tensors)
    name, sch = schedule_func(func, TARGET)
    assert name == rule
    return func, sch.mod["main"]


def test_row_plan():
    assert _row_plan(1000, 16, 1).partials == 40  # 8-lane vectors, 5 of them
    assert _row_plan(768, 16, 1).partials == 32  # 24 + 32 adds (64 partials: 12 + 64)
    assert _row_plan(40, 16, 2).partials == 8 and _row_plan(40, 16, 2).lanes == 16
    # short rows: one vector of partials (the serial sum of the partials dominates)
    assert _row_plan(32, 64, 1, acc_lanes=8).partials == 8
    assert _row_plan(32, 64, 1, acc_lanes=8).lanes == 64
    assert _row_plan(64, 16, 1, acc_lanes=8).partials == 8
    assert _row_plan(37, 16, 1) is None and _row_plan(6, 16, 1) is None


@pytest.mark.parametrize("cols", [1000, 40, 96])
def test_softmax_rows_are_lane_split(cols):
    x = te.placeholder((5, cols), name="x")
    xs = (RNG.standard_normal((5, cols)) * 4).astype(np.float32)
    _, func = _scheduled([x, topi.nn.softmax(x, axis=-1)])
    text = func.script()
    assert "_rf" in text and "T.vectorized" in text  # rfactor partials, vector updates
    got = _run(func, [xs, np.zeros_like(xs)])
    e = np.exp(xs.astype(np.float64) - xs.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_layer_norm_rows_are_lane_split():
    x = te.placeholder((7, 768), name="x")
    g = te.placeholder((768,), name="g")
    b = te.placeholder((768,), name="b")
    xs = (RNG.standard_normal((7, 768)) * 3 + 2).astype(np.float32)
    gs, bs = RNG.standard_normal(768).astype(np.float32), RNG.standard_normal(768).astype(
        np.float32)
    _, func = _scheduled([x, g, b, topi.nn.layer_norm(x, g, b, axis=[1], epsilon=1e-5)])
    assert func.script().count("_rf") >= 2  # mean and variance sums
    got = _run(func, [xs, gs, bs, np.zeros_like(xs)])
    x64 = xs.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, ref * gs + bs, rtol=1e-5, atol=1e-5)


def test_odd_rows_keep_the_ordered_schedule():
    x = te.placeholder((5, 37), name="x")
    xs = RNG.standard_normal((5, 37)).astype(np.float32)
    plain, func = _scheduled([x, topi.nn.softmax(x, axis=-1)])
    assert "_rf" not in func.script()
    np.testing.assert_allclose(_run(func, [xs, np.zeros_like(xs)]),
                               _run(plain, [xs, np.zeros_like(xs)]), rtol=1e-6, atol=1e-7)


def test_integer_row_sums_are_not_lane_split_and_stay_exact():
    x = te.placeholder((6, 64), "int32", name="x")
    k = te.reduce_axis((0, 64), name="k")
    s = te.compute((6,), lambda i: te.sum(x[i, k], axis=k), name="s")
    y = te.compute((6, 64), lambda i, j: x[i, j] * 3 - s[i], name="y")
    xs = RNG.integers(-(2 ** 24), 2 ** 24, size=(6, 64), dtype=np.int32)
    plain, func = _scheduled([x, y])
    assert "_rf" not in func.script()
    got = _run(func, [xs, np.zeros_like(xs)])
    np.testing.assert_array_equal(got, _run(plain, [xs, np.zeros_like(xs)]))
    np.testing.assert_array_equal(got, xs * 3 - xs.sum(-1, keepdims=True))


# -- output-channel-blocked conv ------------------------------------------------------------------
def _conv_model(f, c, k, strides, pads, dilations, bias, shape):
    from onnx import TensorProto, helper, numpy_helper

    w = (RNG.standard_normal((f, c, k, k)) * 0.2).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(f).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], strides=list(strides), pads=list(pads),
                            dilations=list(dilations))
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("f, c, k, strides, pads, dilations, bias, hw", [
    (32, 5, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, (13, 19)),
    (16, 3, 3, (2, 2), (0, 1, 2, 1), (1, 1), False, (11, 14)),
    (48, 4, 3, (1, 1), (2, 2, 2, 2), (2, 2), True, (9, 9)),
    (16, 2, 5, (1, 2), (2, 2, 2, 2), (1, 1), True, (8, 28)),
    (32, 24, 1, (2, 2), (0, 0, 0, 0), (1, 1), True, (15, 14)),  # a ResNet downsample
])
def test_blocked_conv_matches_onnxruntime(f, c, k, strides, pads, dilations, bias, hw):
    from lowbit.codegen.build import build
    from lowbit.compiler.onnx_import import import_onnx
    from tvm import relax

    ort = pytest.importorskip("onnxruntime")
    shape = (2, c) + hw
    model = _conv_model(f, c, k, strides, pads, dilations, bias, shape)
    xs = RNG.standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
    ex = build(import_onnx(model), "x86")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xs)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_blocked_conv_tiles_output_columns():
    """The contraction rule vectorizes the 16 blocked output channels and takes the output
    column (which reads the input's last dimension) as register rows: 14 on AVX-512; on AVX2
    each row holds the 16 channels as two ymm, so 8 / 2 = 4 rows (of the 28 columns)."""
    from lowbit.codegen.lowering.float_ops import packed_conv2d
    from lowbit.codegen.schedules.analysis import simd_bits

    x = te.placeholder((1, 8, 10, 28), name="x")
    w = te.placeholder((2, 8, 3, 3, 16), name="w")
    y = packed_conv2d(x, w, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    _, func = _scheduled([x, w, y], rule="contraction")
    text = func.script()
    rows = 14 if simd_bits(TARGET) >= 512 else 4
    assert f"T.unroll({rows})" in text or f"T.unroll(T.int64({rows}))" in text
    xs = RNG.standard_normal((1, 8, 10, 28)).astype(np.float32)
    ws = RNG.standard_normal((2, 8, 3, 3, 16)).astype(np.float32)
    got = _run(func, [xs, ws, np.zeros((1, 32, 10, 28), np.float32)])
    torch = pytest.importorskip("torch")
    w_oihw = ws.transpose(0, 4, 1, 2, 3).reshape(32, 8, 3, 3)
    ref = torch.nn.functional.conv2d(torch.from_numpy(xs), torch.from_numpy(w_oihw),
                                     padding=1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pads,width", [((1, 1), 112), ((0, 3), 29), ((2, 0), 7)])
def test_pad_epilogue_is_split_into_fill_and_interior(pads, width):
    """A fused epilogue + constant pad leaves no condition in the scheduled rows (the
    ``decompose_padding`` split of ``injective.split_padding``), and stays bit-exact (int32
    with int64 intermediates, extreme values, asymmetric pads, widths the lanes do not
    divide)."""
    x = te.placeholder((3, 5, width), "int32", name="x")
    bias = te.placeholder((3,), "int64", name="bias")
    y = te.compute(x.shape, lambda c, h, w: tvm.tirx.max(
        (x[c, h, w].astype("int64") << 2) + bias[c], tvm.tirx.const(0, "int64")
    ).astype("int32"), name="y")
    padded = topi.nn.pad(y, (0, pads[0], pads[1]), (0, pads[1], pads[0]),
                         pad_value=-7, name="pad")
    func = te.create_prim_func([x, bias, padded])
    name, sch = schedule_func(func, TARGET)
    assert name == "injective"
    script = sch.mod["main"].script()
    assert "pad_const" in script and "if_then_else" not in script
    xs = RNG.integers(-(1 << 29), 1 << 29, (3, 5, width)).astype(np.int32)
    xs[0, 0, :2] = [np.iinfo(np.int32).max >> 2, -(1 << 29)]
    b = np.array([0, -5, 1 << 20], np.int64)
    want = np.maximum((xs.astype(np.int64) << 2) + b[:, None, None], 0).astype(np.int32)
    want = np.pad(want, ((0, 0), pads, pads[::-1]), constant_values=-7)
    out = np.zeros(want.shape, np.int32)
    np.testing.assert_array_equal(_run(sch.mod["main"], [xs, b, out]), want)


@pytest.mark.parametrize("name,bits,float_lanes,row", [
    ("x86-avx2", 256, 8, 16), ("x86-avx512", 512, 16, 16), ("arm64", 128, 4, 16)])
def test_simd_width_follows_the_target_features(name, bits, float_lanes, row):
    """Register tiles are sized by the target's real SIMD width (TVM 0.27's
    ``llvm_get_vector_width`` says 512 for every x86 CPU, AVX2-only ones included);
    loops that are not register-tiled step 64 bytes."""
    from lowbit.codegen.schedules.analysis import row_lanes, simd_bits, vector_lanes

    target = tvm.target.Target(resolve_target(name).tvm_dict())
    assert simd_bits(target) == bits
    assert vector_lanes(target, 32) == float_lanes and row_lanes(target, 32) == row


def test_blocked_conv_on_avx2_uses_eight_channel_blocks():
    """On an AVX2 target the float conv's weight blocks and vector axis are 8 float32 lanes
    (one ymm), with 8 register rows: 8 accumulators + a weight vector + a broadcast fit the
    16 registers (16-lane blocks x 14 rows spilled: 3.1x slower than onnxruntime on Zen 3)."""
    import onnx
    from lowbit.codegen.lower import lower
    from lowbit.compiler.onnx_import import import_onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(RNG.standard_normal((16, 8, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    target = resolve_target("x86-avx2")
    mod = lower(import_onnx(model), target)
    (func,) = [f for gv, f in mod.functions.items() if gv.name_hint == "packed_conv2d"]
    blocked = "T.Buffer((T.int64(2), T.int64(8), T.int64(3), T.int64(3), T.int64(8))"
    assert blocked in func.script()  # (O/8, I, KH, KW, 8) weights
    tvm_target = target.tvm_target()
    name, sch = schedule_func(func, tvm_target)
    assert name == "contraction"
    text = sch.mod["main"].script()
    assert "T.unroll(8)" in text or "T.unroll(T.int64(8))" in text
    assert "T.vectorized(8)" in text or "T.vectorized(T.int64(8))" in text


@pytest.mark.parametrize("strides,blocked", [((2, 2), True), ((1, 1), False)])
def test_strided_1x1_conv_is_blocked(strides, blocked):
    """A strided 1×1 conv takes the blocked conv (its NCHW form reads no unit-stride row and
    is left scalar); a stride-1 1×1 stays an NCHW matrix product."""
    from lowbit.codegen.lower import lower
    from lowbit.compiler.onnx_import import import_onnx

    model = _conv_model(16, 8, 1, strides, (0, 0, 0, 0), (1, 1), False, (1, 8, 12, 12))
    mod = lower(import_onnx(model), resolve_target("x86"))
    names = [gv.name_hint for gv in mod.functions]
    assert ("packed_conv2d" in names) == blocked, names


@pytest.mark.parametrize("width,channels,rows,want", [
    (56, 8, 8, 1), (4, 8, 8, 2), (4, 2, 8, 2), (2, 8, 8, 4), (7, 4, 14, 2), (3, 3, 8, 1),
    (1, 16, 8, 4)])
def test_vectors_per_row_fill_the_register_tile(width, channels, rows, want):
    """Short output rows get more channel vectors per row (rows x vectors accumulators up to
    the row budget, vectors dividing the channel vectors, at most 4)."""
    from lowbit.codegen.lowering.float_ops import _vectors_per_row

    assert _vectors_per_row(width, channels, rows) == want


def test_narrow_blocked_conv_holds_two_vectors_per_row():
    """A 4-wide output on AVX2: 16-channel blocks (two ymm per row) x 4 rows, still matching
    onnxruntime."""
    from lowbit.codegen.build import build
    from lowbit.codegen.lower import lower
    from lowbit.compiler.onnx_import import import_onnx
    from tvm import relax

    ort = pytest.importorskip("onnxruntime")
    model = _conv_model(32, 6, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, (3, 6, 5, 4))
    target = resolve_target("x86-avx2")
    mod = lower(import_onnx(model), target)
    (func,) = [f for gv, f in mod.functions.items() if gv.name_hint == "packed_conv2d"]
    assert "T.int64(3), T.int64(3), T.int64(16))" in func.script()  # (2, 6, 3, 3, 16)
    name, sch = schedule_func(func, target.tvm_target())
    text = sch.mod["main"].script()
    assert "T.unroll(4)" in text or "T.unroll(T.int64(4))" in text
    assert "T.vectorized(16)" in text or "T.vectorized(T.int64(16))" in text
    xs = RNG.standard_normal((3, 6, 5, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
    got = relax.VirtualMachine(build(import_onnx(model), "x86-avx2"), tvm.cpu())["main"](
        tvm.runtime.tensor(xs)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
