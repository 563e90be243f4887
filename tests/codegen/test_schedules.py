"""lowbit.codegen.schedules: each rule fires on its pattern and never changes results.

Every case builds a small PrimFunc (odd shapes), compiles it unscheduled and scheduled by the
rule that must take it, and compares: integer kernels bit-exact (and against a numpy
reference calling ``lowbit.ir.dyadic.requantize``), float kernels to 1e-6 (LLVM may contract
a multiply-add into an FMA differently in the two loop nests).
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from lowbit.codegen.schedules import rule_names, schedule_func
from lowbit.codegen.schedules.dense_loads import tir_pipeline
from lowbit.codegen.target import resolve_target
from lowbit.ir.dyadic import requantize
from tvm import te, topi

TARGET = tvm.target.Target(resolve_target("x86").tvm_dict())
RNG = np.random.default_rng(7)


def _run(func, args):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=TARGET, tir_pipeline=tir_pipeline())
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _check(tensors, inputs, rule: str, exact: bool):
    """Compile ``tensors`` (te, last one the output) plain and scheduled; return the output."""
    func = te.create_prim_func(tensors)
    name, sch = schedule_func(func, TARGET)
    assert name == rule, f"expected rule {rule}, got {name}"
    out = tensors[-1]
    empty = np.zeros([int(d) for d in out.shape], dtype=str(out.dtype))
    plain = _run(func, [*inputs, empty.copy()])
    scheduled = _run(sch.mod["main"], [*inputs, empty.copy()])
    if exact:
        np.testing.assert_array_equal(scheduled, plain)
    else:
        np.testing.assert_allclose(scheduled, plain, rtol=1e-6, atol=1e-6)
    return scheduled


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_registry_order():
    assert rule_names() == ("contraction", "strided_window", "row_reduction", "gemv",
                            "bare_reduction", "injective")


# -- injective -------------------------------------------------------------------------------
def test_injective_elementwise_chain_broadcast():
    x = te.placeholder((2, 5, 7, 9), name="x")
    a = te.placeholder((1, 5, 1, 1), name="a")
    y = topi.nn.relu(topi.add(topi.multiply(x, a), a))
    z = topi.multiply(y, x)
    xs, as_ = _f32(2, 5, 7, 9), _f32(1, 5, 1, 1)
    got = _check([x, a, z], [xs, as_], "injective", exact=False)
    np.testing.assert_allclose(got, np.maximum(xs * as_ + as_, 0) * xs, rtol=1e-5, atol=1e-6)


def test_injective_keeps_a_producer_read_many_times_materialized():
    """A 3x3 im2col gather reads every element of its producer 9 times: the elementwise chain
    before it (scale, sign) must stay its own loop nest, not be recomputed per read."""
    from lowbit.codegen.schedules.analysis import blocks_of

    x = te.placeholder((1, 4, 6, 6), name="x")
    s = te.compute(x.shape, lambda n, c, h, w: tvm.tirx.if_then_else(
        x[n, c, h, w] * 2.0 >= 0.0, 1.0, -1.0), name="sign")
    cols = te.compute((1, 4, 3, 3, 4, 4),
                      lambda n, c, kh, kw, h, w: s[n, c, h + kh, w + kw], name="im2col")
    func = te.create_prim_func([x, cols])
    name, sch = schedule_func(func, TARGET)
    assert name == "injective"
    assert len(blocks_of(sch)) == 2  # sign stays a block of its own
    xs = _f32(1, 4, 6, 6)
    empty = np.zeros((1, 4, 3, 3, 4, 4), np.float32)
    np.testing.assert_array_equal(_run(sch.mod["main"], [xs, empty.copy()]),
                                  _run(func, [xs, empty.copy()]))


def test_injective_vectorizes_long_rows():
    x = te.placeholder((3, 64), name="x")
    y = topi.sigmoid(x)
    xs = _f32(3, 64)
    got = _check([x, y], [xs], "injective", exact=False)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-xs)), rtol=1e-5)


def test_injective_gather_resize_and_transpose():
    x = te.placeholder((1, 3, 5, 7), name="x")
    y = topi.image.resize2d(x, (0, 0, 0, 0), (10, 14), method="nearest_neighbor",
                            coordinate_transformation_mode="asymmetric", rounding_method="floor")
    xs = _f32(1, 3, 5, 7)
    got = _check([x, y], [xs], "injective", exact=True)
    np.testing.assert_array_equal(got, xs.repeat(2, axis=2).repeat(2, axis=3))
    t = topi.transpose(x, (0, 2, 3, 1))
    got = _check([x, t], [xs], "injective", exact=True)
    np.testing.assert_array_equal(got, xs.transpose(0, 2, 3, 1))


def test_injective_integer_requantize_epilogue():
    acc = te.placeholder((3, 19), "int32", name="acc")
    mult = te.placeholder((19,), "int64", name="m")
    shift = 17

    def body(i, j):
        v = acc[i, j].astype("int64") * mult[j] + (1 << (shift - 1))
        return te.max(te.min((v >> shift) + 5, 255), 0).astype("uint8")

    y = te.compute((3, 19), body, name="y")
    accs = RNG.integers(-(2 ** 31), 2 ** 31 - 1, size=(3, 19), dtype=np.int64).astype(np.int32)
    ms = RNG.integers(1, 2 ** 31 - 1, size=19, dtype=np.int64)
    got = _check([acc, mult, y], [accs, ms], "injective", exact=True)
    np.testing.assert_array_equal(got, requantize(accs, ms, shift, 5, 0, 255, axis=1))


# -- contraction -------------------------------------------------------------------------------
def test_contraction_conv2d_bias_relu():
    x = te.placeholder((1, 3, 7, 9), name="x")
    w = te.placeholder((12, 3, 3, 3), name="w")
    b = te.placeholder((1, 12, 1, 1), name="b")
    y = topi.nn.relu(topi.add(topi.nn.conv2d_nchw(x, w, 1, 1, 1), b))
    xs, ws, bs = _f32(1, 3, 7, 9), _f32(12, 3, 3, 3), _f32(1, 12, 1, 1)
    got = _check([x, w, b, y], [xs, ws, bs], "contraction", exact=False)
    torch = pytest.importorskip("torch")
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(xs), torch.from_numpy(ws),
                                                padding=1) + torch.from_numpy(bs)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_contraction_residual_epilogue_is_not_recomputed_per_tile():
    """conv + (another input's elementwise epilogue) + add: the independent epilogue is inlined
    into the add, not moved under the tile loop, where it would be recomputed whole for every
    tile (a residual block's shortcut: 1.2 ms -> 25 ms in a whole graph)."""
    x = te.placeholder((2, 8, 6, 6), name="x")
    w = te.placeholder((16, 8, 3, 3), name="w")
    r = te.placeholder((2, 16, 6, 6), name="r")
    shortcut = te.compute(r.shape, lambda *i: r[i] * 2.0 + 1.0, name="shortcut")
    y = topi.nn.relu(topi.add(topi.nn.conv2d_nchw(x, w, 1, 1, 1), shortcut))
    func = te.create_prim_func([x, w, r, y])
    _, sch = schedule_func(func, TARGET)
    text = sch.mod["main"].script()
    assert 'T.sblock("shortcut")' not in text  # inlined into the add
    got = _check([x, w, r, y], [_f32(2, 8, 6, 6), _f32(16, 8, 3, 3), _f32(2, 16, 6, 6)],
                 "contraction", exact=False)
    assert got.min() >= 0


def test_contraction_depthwise_conv():
    x = te.placeholder((1, 6, 11, 13), name="x")
    w = te.placeholder((6, 1, 3, 3), name="w")
    y = topi.nn.depthwise_conv2d_nchw(x, w, 1, 1, 1)
    _check([x, w, y], [_f32(1, 6, 11, 13), _f32(6, 1, 3, 3)], "contraction", exact=False)


@pytest.mark.parametrize("m", [1, 3, 8])
def test_contraction_dense(m):
    a = te.placeholder((m, 13), name="a")
    b = te.placeholder((13, 10), name="b")
    k = te.reduce_axis((0, 13), name="k")
    c = te.compute((m, 10), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
    as_, bs = _f32(m, 13), _f32(13, 10)
    got = _check([a, b, c], [as_, bs], "contraction", exact=False)
    np.testing.assert_allclose(got, as_ @ bs, rtol=1e-5, atol=1e-5)


def _qmatmul(m: int, k: int, n: int, zx: int, shift: int):
    """uint8 x (zero point zx) @ int8 w, int32 acc + bias, per-channel dyadic requant."""
    x = te.placeholder((m, k), "uint8", name="x")
    w = te.placeholder((k, n), "int8", name="w")
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "int64", name="mult")
    r = te.reduce_axis((0, k), name="r")
    acc = te.compute((m, n), lambda i, j: te.sum(
        (x[i, r].astype("int32") - zx) * w[r, j].astype("int32"), axis=r), name="acc")

    def body(i, j):
        v = (acc[i, j] + bias[j]).astype("int64") * mult[j] + (1 << (shift - 1))
        return te.max(te.min((v >> shift) + 3, 255), 0).astype("uint8")

    return [x, w, bias, mult, te.compute((m, n), body, name="y")]


@pytest.mark.parametrize("m, k, n", [(1, 45, 19), (3, 33, 17), (8, 70, 40)])
def test_contraction_integer_qmatmul_bit_exact(m, k, n):
    zx, shift = 128, 20
    xs = RNG.integers(0, 256, size=(m, k), dtype=np.uint8)
    ws = RNG.integers(-128, 128, size=(k, n), dtype=np.int8)
    bias = RNG.integers(-5000, 5000, size=n, dtype=np.int32)
    mult = RNG.integers(1, 2 ** 20, size=n, dtype=np.int64)
    got = _check(_qmatmul(m, k, n, zx, shift), [xs, ws, bias, mult], "contraction", exact=True)
    acc = (xs.astype(np.int64) - zx) @ ws.astype(np.int64) + bias
    np.testing.assert_array_equal(got, requantize(acc, mult, shift, 3, 0, 255, axis=1))


def test_contraction_integer_extremes_no_overflow():
    """All-max codes and weights: |acc| = 255 * 128 * K stays in int32, results bit-exact."""
    m, k, n, zx, shift = 3, 67, 21, 0, 30
    xs = np.full((m, k), 255, dtype=np.uint8)
    ws = np.full((k, n), -128, dtype=np.int8)
    ws[:, ::2] = 127
    bias = np.zeros(n, dtype=np.int32)
    mult = np.full(n, 2 ** 31 - 1, dtype=np.int64)
    got = _check(_qmatmul(m, k, n, zx, shift), [xs, ws, bias, mult], "contraction", exact=True)
    acc = xs.astype(np.int64) @ ws.astype(np.int64)
    np.testing.assert_array_equal(got, requantize(acc, mult, shift, 3, 0, 255, axis=1))


def test_contraction_integer_qconv_bit_exact():
    """uint8 NCHW conv (zero point 7, pad with the zero point), int8 weights, int32 acc."""
    c, f, h, wd, zx = 5, 9, 6, 11, 7
    x = te.placeholder((1, c, h, wd), "uint8", name="x")
    w = te.placeholder((f, c, 3, 3), "int8", name="w")
    xp = te.compute((1, c, h + 2, wd + 2), lambda b, ci, i, j: te.if_then_else(
        te.all(i >= 1, i <= h, j >= 1, j <= wd), x[b, ci, i - 1, j - 1].astype("int32") - zx, 0),
        name="xpad")
    rc, ry, rx = (te.reduce_axis((0, e), name=nm) for e, nm in ((c, "rc"), (3, "ry"), (3, "rx")))
    y = te.compute((1, f, h, wd), lambda b, o, i, j: te.sum(
        xp[b, rc, i + ry, j + rx] * w[o, rc, ry, rx].astype("int32"), axis=[rc, ry, rx]),
        name="acc")
    xs = RNG.integers(0, 256, size=(1, c, h, wd), dtype=np.uint8)
    ws = RNG.integers(-128, 128, size=(f, c, 3, 3), dtype=np.int8)
    got = _check([x, w, y], [xs, ws], "contraction", exact=True)
    xpad = np.pad(xs.astype(np.int64) - zx, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, f, h, wd), dtype=np.int64)
    for dy in range(3):
        for dx in range(3):
            ref += np.einsum("bchw,oc->bohw", xpad[:, :, dy:dy + h, dx:dx + wd],
                             ws[:, :, dy, dx].astype(np.int64))
    np.testing.assert_array_equal(got, ref)


# -- reductions --------------------------------------------------------------------------------
def test_row_reduction_softmax_and_layer_norm():
    x = te.placeholder((5, 37), name="x")
    xs = _f32(5, 37)
    got = _check([x, topi.nn.softmax(x, axis=-1)], [xs], "row_reduction", exact=False)
    e = np.exp(xs - xs.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-5)
    g = te.placeholder((37,), name="g")
    b = te.placeholder((37,), name="b")
    y = topi.nn.layer_norm(x, g, b, axis=[1], epsilon=1e-5)
    _check([x, g, b, y], [xs, _f32(37), _f32(37)], "row_reduction", exact=False)


def test_strided_max_pool_goes_to_bare_reduction():
    x = te.placeholder((1, 4, 9, 11), name="x")
    y = topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (0, 0, 0, 0), "max")
    xs = _f32(1, 4, 9, 11)
    got = _check([x, y], [xs], "bare_reduction", exact=True)
    ref = np.lib.stride_tricks.sliding_window_view(xs, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    np.testing.assert_array_equal(got, ref.max(axis=(-1, -2)))


def _window_ref(xs, k, s, op=np.max):
    win = np.lib.stride_tricks.sliding_window_view(xs, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return op(win, axis=(-1, -2))


@pytest.mark.parametrize("dtype, shape, k, s", [
    ("uint8", (1, 5, 13, 15), 3, 2),  # odd row: 7 outputs
    ("int8", (2, 3, 9, 11), 3, 2),
    ("int16", (1, 4, 10, 17), 2, 2),
    ("uint8", (1, 2, 12, 29), 3, 3),  # stride 3
    ("int8", (1, 3, 8, 260), 3, 2),  # 129 outputs > MAX_ROW: not this rule
])
def test_strided_window_integer_max_pool_bit_exact(dtype, shape, k, s):
    """8- / 16-bit integer strided max-pools: the whole row one vector, every tap a dense load
    + shuffle (lowbit_cpu pipeline); values at the dtype's extremes; wider rows stay bare."""
    info = np.iinfo(dtype)
    x = te.placeholder(shape, dtype, name="x")
    y = topi.nn.pool2d(x, (k, k), (s, s), (1, 1), (0, 0, 0, 0), "max")
    xs = RNG.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    xs[0, 0, :2] = info.min
    xs[0, -1, -2:] = info.max
    rule = "strided_window" if (shape[3] - k) // s + 1 <= 128 else "bare_reduction"
    got = _check([x, y], [xs], rule, exact=True)
    np.testing.assert_array_equal(got, _window_ref(xs, k, s))


def test_strided_window_min_and_not_float_or_int32_or_stride_1():
    x8 = te.placeholder((1, 2, 9, 9), "int8", name="x")
    pooled = topi.nn.pool2d(x8, (3, 3), (2, 2), (1, 1), (0, 0, 0, 0), "max")
    neg = te.compute(pooled.shape, lambda *i: -pooled(*i), name="neg")  # two blocks
    assert schedule_func(te.create_prim_func([x8, neg]), TARGET)[0] != "strided_window"
    r = te.reduce_axis((0, 3), name="r")
    low = te.compute((1, 2, 9, 4), lambda b, c, h, w: te.min(x8[b, c, h, 2 * w + r], axis=r),
                     name="low")
    xs = RNG.integers(-128, 127, (1, 2, 9, 9), endpoint=True).astype(np.int8)
    got = _check([x8, low], [xs], "strided_window", exact=True)
    want = np.min(np.stack([xs[..., j:j + 7:2] for j in range(3)]), 0)
    np.testing.assert_array_equal(got, want)
    for dtype, stride in (("int32", 2), ("float32", 2), ("uint8", 1)):
        x = te.placeholder((1, 2, 9, 9), dtype, name="x")
        y = topi.nn.pool2d(x, (3, 3), (stride, stride), (1, 1), (0, 0, 0, 0), "max")
        assert schedule_func(te.create_prim_func([x, y]), TARGET)[0] != "strided_window"


def test_dense_strided_loads_rewrites_only_constant_strides_2_to_4():
    from lowbit.codegen.schedules.dense_loads import _dense
    from tvm import tirx

    buf = tirx.decl_buffer((64,), "int8", name="b")

    def load(stride, lanes=4):
        return tirx.BufferLoad(buf, [tirx.Ramp(tirx.IntImm("int32", 3),
                                               tirx.IntImm("int32", stride), lanes)])

    dense = _dense(load(2))
    assert isinstance(dense, tirx.Shuffle)
    assert [int(i) for i in dense.indices] == [0, 2, 4, 6]
    (inner,) = dense.vectors
    assert int(inner.indices[0].lanes) == 7 and int(inner.indices[0].stride) == 1  # 3..9
    assert [int(i) for i in _dense(load(4)).indices] == [0, 4, 8, 12]
    assert _dense(load(1)) is None and _dense(load(5)) is None
    assert _dense(tirx.BufferLoad(buf, [tirx.IntImm("int32", 3)])) is None


def test_global_average_pool():
    x = te.placeholder((2, 6, 5, 5), name="x")
    s = topi.sum(x, axis=[2, 3], keepdims=True)
    y = te.compute(s.shape, lambda *i: s(*i) / 25.0, name="mean")
    xs = _f32(2, 6, 5, 5)
    name, _ = schedule_func(te.create_prim_func([x, y]), TARGET)
    assert name is not None
    got = _check([x, y], [xs], name, exact=False)
    np.testing.assert_allclose(got, xs.mean(axis=(2, 3), keepdims=True), rtol=1e-5)


# -- the build pipeline ------------------------------------------------------------------------
def test_build_schedules_every_primfunc_of_a_small_cnn():
    """conv + relu + maxpool + flatten + gemm + softmax through lowbit.codegen.build: every
    PrimFunc gets a rule and the VM output matches the unscheduled pipeline."""
    from lowbit.codegen.build import relax_pipeline
    from lowbit.codegen.lower import lower
    from lowbit.codegen.schedules import apply_cpu_schedules, unscheduled
    from lowbit.compiler.onnx_import import import_onnx
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    n = helper.make_node
    inits = [numpy_helper.from_array(_f32(6, 2, 3, 3), "w"), numpy_helper.from_array(_f32(6), "b"),
             numpy_helper.from_array(_f32(6 * 4 * 5, 10), "fc")]
    graph = helper.make_graph(
        [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
         n("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         n("Flatten", ["p"], ["f"]), n("MatMul", ["f", "fc"], ["m"]),
         n("Softmax", ["m"], ["y"], axis=-1)], "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 2, 8, 10))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (3, 10))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    target = resolve_target("x86")
    mod = lower(import_onnx(model), target)
    with TARGET:
        legal = tvm.transform.Sequential(cpu_generic.legalize_passes(TARGET))(mod)
        assert unscheduled(apply_cpu_schedules()(legal)) == []
    xs = _f32(3, 2, 8, 10)
    outs = []
    for schedule in (False, True):
        ex = tvm.compile(mod, target=TARGET, relax_pipeline=relax_pipeline(target, schedule))
        outs.append(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xs)).numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)


def test_contraction_schedule_compiles_for_arm64():
    """The rules are ISA-neutral: on the aarch64 target the tile uses NEON 4-lane vectors."""
    arm = tvm.target.Target(resolve_target("arm64").tvm_dict())
    x = te.placeholder((1, 3, 7, 16), name="x")
    w = te.placeholder((8, 3, 3, 3), name="w")
    func = te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 1, 1)])
    name, sch = schedule_func(func, arm)
    assert name == "contraction"
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                      target=arm)
    asm = lib.mod.inspect_source("asm")
    assert "fmla" in asm and ".4s" in asm
