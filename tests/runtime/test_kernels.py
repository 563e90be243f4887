"""Reference kernels vs onnxruntime: one single-node ONNX model per case, the same node built
directly in the IR, outputs compared (rtol 1e-5 for floats, exact for ints and bools)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from lowbit.ir import FLOAT32, INT8, INT32, DType, ExecutionError, Graph, Op, attrs
from lowbit.runtime.kernels import get_kernel, registered_ops
from lowbit.runtime.reference import run_reference
from onnx import helper

RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32, low=-3.0, high=3.0):
    """Uniform random test data of ``dtype``."""
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(int(low), int(high), size=shape).astype(dtype)
    return RNG.uniform(low, high, size=shape).astype(dtype)


def run_onnx(op_type, inputs, onnx_attrs, params, n_out, opset, domain=""):
    """Run a single ``op_type`` node in onnxruntime. ``inputs`` become graph inputs, ``params``
    ({position: array or None}) become initializers (None = absent optional input)."""
    names, graph_inputs, feeds, inits = [], [], {}, []
    total = len(inputs) + len(params)
    data = iter(inputs)
    for pos in range(total):
        if pos in params:
            value = params[pos]
            if value is None:
                names.append("")
                continue
            name = f"p{pos}"
            inits.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        else:
            value = next(data)
            if value is None:
                names.append("")
                continue
            name = f"x{pos}"
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
            feeds[name] = value
        names.append(name)
    while names and names[-1] == "":
        names.pop()
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, domain=domain, **(onnx_attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_ir(op, node_attrs, inputs, expected):
    """Build ``op`` as a one-node IR graph (output types taken from ``expected``) and run it."""
    g = Graph("t")
    values = []
    for i, array in enumerate(inputs):
        values.append(None if array is None
                      else g.add_input(f"x{i}", DType.from_numpy(array.dtype), array.shape))
    node = g.add_node(op, values, node_attrs, outputs=len(expected),
                      out_types=[(DType.from_numpy(e.dtype), e.shape) for e in expected])
    g.outputs = list(node.outputs)
    feeds = {}
    for i, array in enumerate(inputs):
        if array is not None:  # read-only copies: a kernel that writes into its input fails
            feeds[f"x{i}"] = np.array(array)
            feeds[f"x{i}"].setflags(write=False)
    result = run_reference(g, feeds)
    for i, array in enumerate(inputs):
        if array is not None:
            np.testing.assert_array_equal(feeds[f"x{i}"], array)
    return [result[v.name] for v in node.outputs]


def check(op, node_attrs, op_type, inputs, onnx_attrs=None, params=None, *, n_out=1,
          opset=21, rtol=1e-5, atol=1e-6):
    """Compare the reference kernel of ``op`` with onnxruntime's ``op_type``."""
    expected = run_onnx(op_type, inputs, onnx_attrs, params or {}, n_out, opset)
    got = run_ir(op, node_attrs, inputs, expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        if e.dtype.kind == "f":
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, e)
    return got


# -- registry -------------------------------------------------------------------------------

def test_every_onnx_op_has_a_kernel():
    # lowbit-only ops (FakeQuant, QConv, Requantize...) belong to the quantized simulators
    onnx_ops = {op for op in Op if onnx.defs.has(op.value)}
    assert Op.CONV in onnx_ops and Op.RESIZE in onnx_ops
    assert onnx_ops <= registered_ops()


def test_get_kernel_unknown_op_raises(monkeypatch):
    from lowbit.runtime import kernels

    monkeypatch.delitem(kernels._KERNELS, Op.RELU)
    with pytest.raises(ExecutionError, match="Relu"):
        get_kernel(Op.RELU)


# -- elementwise ----------------------------------------------------------------------------

UNARY = [
    (Op.RELU, None, "Relu", {}), (Op.SIGMOID, None, "Sigmoid", {}),
    (Op.TANH, None, "Tanh", {}), (Op.ERF, None, "Erf", {}), (Op.EXP, None, "Exp", {}),
    (Op.NEG, None, "Neg", {}), (Op.ABS, None, "Abs", {}),
    (Op.RECIPROCAL, None, "Reciprocal", {}), (Op.IDENTITY, None, "Identity", {}),
    (Op.GELU, attrs.GeluAttrs("none"), "Gelu", {}),
    (Op.GELU, attrs.GeluAttrs("tanh"), "Gelu", {"approximate": "tanh"}),
    (Op.LEAKY_RELU, attrs.LeakyReluAttrs(0.1), "LeakyRelu", {"alpha": 0.1}),
    (Op.HARD_SIGMOID, attrs.HardSigmoidAttrs(0.3, 0.4), "HardSigmoid",
     {"alpha": 0.3, "beta": 0.4}),
    (Op.HARD_SWISH, None, "HardSwish", {}),
]


@pytest.mark.parametrize("op,node_attrs,op_type,onnx_attrs", UNARY,
                         ids=[f"{u[2]}-{i}" for i, u in enumerate(UNARY)])
def test_unary_float(op, node_attrs, op_type, onnx_attrs):
    x = rand(2, 3, 5, low=-6, high=6)
    x[0, 0, :3] = [0.0, -0.0, 3.0]
    check(op, node_attrs, op_type, [x], onnx_attrs)


@pytest.mark.parametrize("op,op_type", [(Op.LOG, "Log"), (Op.SQRT, "Sqrt")])
def test_unary_positive_domain(op, op_type):
    check(op, None, op_type, [rand(4, 7, low=0.01, high=9)])


@pytest.mark.parametrize("dtype", [np.int8, np.int32])
@pytest.mark.parametrize("op,op_type", [(Op.RELU, "Relu"), (Op.NEG, "Neg"), (Op.ABS, "Abs")])
def test_unary_int(op, op_type, dtype):
    check(op, None, op_type, [rand(3, 4, dtype=dtype, low=-100, high=100)])


def test_relu_keeps_nan():
    x = np.array([np.nan, -1.0, 2.0], dtype=np.float32)
    check(Op.RELU, None, "Relu", [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int8])
@pytest.mark.parametrize("op,op_type", [(Op.ADD, "Add"), (Op.SUB, "Sub"), (Op.MUL, "Mul")])
def test_binary_broadcast(op, op_type, dtype):
    check(op, None, op_type, [rand(2, 1, 4, dtype=dtype, low=-50, high=50),
                              rand(3, 1, dtype=dtype, low=-50, high=50)])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8])
def test_div_int_truncates_toward_zero(dtype):
    a = np.array([7, -7, 7, -7, 0, 5, -1], dtype=dtype)
    b = np.array([2, 2, -2, -2, 3, 5, 3], dtype=dtype)
    got = check(Op.DIV, None, "Div", [a, b])[0]
    np.testing.assert_array_equal(got, [3, -3, -3, 3, 0, 1, 0])


def test_div_uint_and_float():
    check(Op.DIV, None, "Div", [rand(5, dtype=np.uint8, low=0, high=250),
                                rand(5, dtype=np.uint8, low=1, high=9)])
    check(Op.DIV, None, "Div", [rand(2, 3), rand(3, low=0.5, high=2)])


@pytest.mark.parametrize("exp_dtype", [np.float32, np.int32, np.int64])
def test_pow_float_base(exp_dtype):
    base = rand(2, 3, low=0.1, high=3)
    exponent = rand(3, dtype=exp_dtype, low=-2, high=4)
    check(Op.POW, None, "Pow", [base, exponent])


def test_pow_int_base():
    base = np.array([2, -3, 4, 0, 5], dtype=np.int32)
    check(Op.POW, None, "Pow", [base, np.array([3, 3, 0, 2, 1], dtype=np.int32)])
    check(Op.POW, None, "Pow", [base, np.array([2.0, 2.0, 0.5, 1.0, 2.0], dtype=np.float32)])


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (4,)])
def test_prelu(slope_shape):
    check(Op.PRELU, None, "PRelu", [rand(2, 3, 2, 4), rand(*slope_shape)])


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_equal(dtype):
    a = rand(3, 4, dtype=np.int32, low=0, high=3).astype(dtype)
    b = rand(4, dtype=np.int32, low=0, high=3).astype(dtype)
    check(Op.EQUAL, None, "Equal", [a, b])


def test_where_broadcast():
    cond = rand(3, 1, dtype=np.int32, low=0, high=2).astype(bool)
    check(Op.WHERE, None, "Where", [cond, rand(1, 4), rand(3, 4)])


CLIPS = [(-1.0, 1.0), (None, 0.5), (-0.5, None), (None, None), (2.0, 1.0)]


@pytest.mark.parametrize("lo,hi", CLIPS)
def test_clip_float(lo, hi):
    x = rand(4, 5)
    x[0, 0] = np.nan
    params = {1: None if lo is None else np.float32(lo), 2: None if hi is None else np.float32(hi)}
    check(Op.CLIP, attrs.ClipAttrs(lo, hi), "Clip", [x], params=params)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8])
def test_clip_int(dtype):
    x = rand(4, 5, dtype=dtype, low=0 if dtype == np.uint8 else -100, high=100)
    check(Op.CLIP, attrs.ClipAttrs(3, 50), "Clip", [x],
          params={1: np.array(3, dtype), 2: np.array(50, dtype)})


CASTS = [(np.float32, np.int32), (np.float32, np.int8), (np.float32, np.float16),
         (np.float32, np.bool_), (np.int32, np.float32), (np.int64, np.int8),
         (np.bool_, np.float32), (np.float64, np.float32), (np.int32, np.uint8)]


@pytest.mark.parametrize("src,dst", CASTS)
def test_cast(src, dst):
    x = rand(3, 6, low=-100, high=100).astype(src)
    if np.dtype(src).kind == "f":
        x[0, :4] = [-2.7, 2.7, -0.5, 0.0]
    if dst == np.uint8:
        x = np.abs(x)
    to = helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    check(Op.CAST, attrs.CastAttrs(DType.from_numpy(dst)), "Cast", [x], {"to": to})


def test_cast_to_int4_wraps():
    g = Graph()
    x = g.add_input("x", INT32, (4,))
    y = g.make(Op.CAST, x, attrs=attrs.CastAttrs(DType.int(4)))
    g.outputs = [y]
    out = run_reference(g, {"x": np.array([7, 8, -9, 3], dtype=np.int32)})[y.name]
    np.testing.assert_array_equal(out, [7, -8, 7, 3])
    assert out.dtype == np.int8


# -- linear ---------------------------------------------------------------------------------

@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 2)),
                                             ((4,), (4, 3)), ((2, 1, 3, 4), (5, 4, 2)),
                                             ((3, 4), (4,))])
def test_matmul(a_shape, b_shape):
    check(Op.MATMUL, None, "MatMul", [rand(*a_shape), rand(*b_shape)])


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 5), (1, 1)])
def test_gemm(trans_a, trans_b, c_shape):
    a = rand(4, 3) if trans_a else rand(3, 4)
    b = rand(5, 4) if trans_b else rand(4, 5)
    inputs = [a, b] + ([] if c_shape is None else [rand(*c_shape)])
    check(Op.GEMM, attrs.GemmAttrs(0.5, 2.0, trans_a, trans_b), "Gemm", inputs,
          {"alpha": 0.5, "beta": 2.0, "transA": int(trans_a), "transB": int(trans_b)})


@pytest.mark.parametrize("a_dtype,b_dtype", [(np.uint8, np.uint8), (np.int8, np.int8),
                                             (np.uint8, np.int8)])
@pytest.mark.parametrize("zp", ["none", "scalar", "vector"])
def test_matmul_integer(a_dtype, b_dtype, zp):
    def low(dt):
        return 0 if dt == np.uint8 else -128

    a = rand(3, 6, dtype=a_dtype, low=low(a_dtype), high=127)
    b = rand(6, 4, dtype=b_dtype, low=low(b_dtype), high=127)
    inputs = [a, b]
    if zp == "scalar":
        inputs += [np.array(3, a_dtype), np.array(-2 if b_dtype == np.int8 else 5, b_dtype)]
    elif zp == "vector":
        # onnxruntime rejects per-row A zero points: check against the spec formula instead
        a_zp, b_zp = rand(3, dtype=a_dtype, low=0, high=9), rand(4, dtype=b_dtype, low=0, high=9)
        want = (a.astype(np.int64) - a_zp[:, None].astype(np.int64)) @ \
            (b.astype(np.int64) - b_zp.astype(np.int64))
        got = run_ir(Op.MATMUL_INTEGER, None, [a, b, a_zp, b_zp],
                     [np.zeros((3, 4), np.int32)])[0]
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int32
        return
    check(Op.MATMUL_INTEGER, None, "MatMulInteger", inputs)


def test_matmul_integer_batched_exact_int32():
    check(Op.MATMUL_INTEGER, None, "MatMulInteger",
          [rand(2, 3, 8, dtype=np.int8, low=-128, high=127),
           rand(8, 5, dtype=np.int8, low=-128, high=127)])


# -- conv -----------------------------------------------------------------------------------

CONVS = [
    # (x shape, w shape, strides, pads, dilations, group)
    ((1, 3, 7, 7), (4, 3, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 3, 8, 6), (5, 3, 3, 2), (2, 1), (1, 0, 1, 1), (1, 1), 1),
    ((1, 4, 9, 9), (6, 2, 3, 3), (1, 2), (1, 1, 1, 1), (2, 1), 2),
    ((1, 6, 5, 5), (6, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),  # depthwise
    ((1, 3, 1, 1), (2, 3, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1
    ((1, 2, 10, 7), (3, 2, 1, 1), (3, 2), (0, 1, 2, 0), (1, 1), 1),  # asymmetric pads
    ((2, 4, 11), (4, 2, 3), (2,), (2, 1), (2,), 2),  # 1-D
    ((1, 2, 4, 5, 6), (3, 2, 2, 3, 2), (1, 2, 1), (0, 1, 1, 1, 0, 0), (1, 1, 2), 1),  # 3-D
    ((1, 3, 7, 5), (4, 3, 7, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # kernel = input
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_shape,w_shape,strides,pads,dilations,group", CONVS)
def test_conv(x_shape, w_shape, strides, pads, dilations, group, bias):
    inputs = [rand(*x_shape), rand(*w_shape)] + ([rand(w_shape[0])] if bias else [])
    check(Op.CONV, attrs.ConvAttrs(strides, pads, dilations, group), "Conv", inputs,
          {"strides": strides, "pads": pads, "dilations": dilations, "group": group},
          rtol=1e-4, atol=1e-4)


CONV_TRANSPOSES = [
    # (x shape, w shape, strides, pads, dilations, output_padding, group)
    ((1, 3, 4, 4), (3, 2, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), (0, 0), 1),
    ((2, 2, 3, 5), (2, 3, 3, 2), (2, 3), (1, 0, 1, 1), (1, 1), (1, 2), 1),
    ((1, 4, 5, 3), (4, 1, 2, 3), (2, 1), (0, 1, 0, 1), (2, 2), (0, 0), 2),
    ((1, 4, 5, 5), (4, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 4),  # depthwise
    ((1, 2, 6), (2, 3, 4), (3,), (1, 2), (1,), (2,), 1),  # 1-D
    ((1, 2, 3, 2, 3), (2, 2, 2, 2, 2), (2, 1, 2), (0, 0, 1, 0, 1, 0), (1, 2, 1), (1, 0, 0), 1),
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_shape,w_shape,strides,pads,dilations,output_padding,group",
                         CONV_TRANSPOSES)
def test_conv_transpose(x_shape, w_shape, strides, pads, dilations, output_padding, group, bias):
    inputs = [rand(*x_shape), rand(*w_shape)] + ([rand(w_shape[1] * group)] if bias else [])
    check(Op.CONV_TRANSPOSE,
          attrs.ConvTransposeAttrs(strides, pads, dilations, output_padding, group),
          "ConvTranspose", inputs,
          {"strides": strides, "pads": pads, "dilations": dilations,
           "output_padding": output_padding, "group": group}, rtol=1e-4, atol=1e-4)


# -- normalization --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5), (1, 4, 6)])
def test_batchnorm(shape):
    c = shape[1]
    check(Op.BATCHNORM, attrs.BatchNormAttrs(1e-3), "BatchNormalization",
          [rand(*shape), rand(c), rand(c), rand(c), rand(c, low=0.1, high=2)],
          {"epsilon": 1e-3})


@pytest.mark.parametrize("axis", [1, 2, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layernorm(axis, with_bias):
    x = rand(2, 3, 4, 5)
    scale = rand(*x.shape[axis:])
    inputs = [x, scale] + ([rand(*x.shape[axis:])] if with_bias else [])
    check(Op.LAYERNORM, attrs.LayerNormAttrs(axis, 1e-4), "LayerNormalization", inputs,
          {"axis": axis, "epsilon": 1e-4}, rtol=1e-4, atol=1e-5)


def test_layernorm_mean_and_inv_std_outputs():
    x = rand(3, 4, 6)
    check(Op.LAYERNORM, attrs.LayerNormAttrs(2), "LayerNormalization", [x, rand(6), rand(6)],
          {"axis": 2}, n_out=3, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    check(Op.LRN, attrs.LRNAttrs(size, 2e-4, 0.75, 1.5), "LRN", [rand(2, 6, 3, 4)],
          {"size": size, "alpha": 2e-4, "beta": 0.75, "bias": 1.5})


def test_lrn_even_size_window_is_asymmetric():
    # onnxruntime rejects even sizes; the spec window for size 2 is [c, c + 1]
    x = rand(1, 4, 2, 2, low=-5, high=5)
    got = run_ir(Op.LRN, attrs.LRNAttrs(2, 0.5, 0.75, 1.0), [x], [x])[0]
    sq = np.pad(x.astype(np.float64) ** 2, [(0, 0), (0, 1), (0, 0), (0, 0)])
    want = x / (1.0 + 0.5 / 2 * (sq[:, :4] + sq[:, 1:])) ** 0.75
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("op,op_type", [(Op.SOFTMAX, "Softmax"),
                                        (Op.LOG_SOFTMAX, "LogSoftmax")])
def test_softmax(op, op_type, axis):
    x = rand(3, 4, 5, low=-50, high=50)
    x[0, 0, 0] = 1000.0  # no overflow
    check(op, attrs.SoftmaxAttrs(axis), op_type, [x], {"axis": axis})


# -- reduce ---------------------------------------------------------------------------------

REDUCES = [(Op.REDUCE_MEAN, "ReduceMean"), (Op.REDUCE_SUM, "ReduceSum"),
           (Op.REDUCE_MAX, "ReduceMax")]


@pytest.mark.parametrize("axes", [None, (1,), (0, 2), (2,)])
@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("op,op_type", REDUCES)
def test_reduce(op, op_type, axes, keepdims):
    params = {} if axes is None else {1: np.array(axes, dtype=np.int64)}
    check(op, attrs.ReduceAttrs(axes, keepdims), op_type, [rand(3, 4, 5)],
          {"keepdims": int(keepdims)}, params)


@pytest.mark.parametrize("op,op_type", REDUCES)
def test_reduce_int32(op, op_type):
    x = rand(3, 4, dtype=np.int32, low=-100, high=100)
    check(op, attrs.ReduceAttrs((1,), True), op_type, [x], {},
          {1: np.array([1], dtype=np.int64)})


def test_reduce_max_empty_is_minus_inf():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2, 0))
    y = g.add_node(Op.REDUCE_MAX, [x], attrs.ReduceAttrs((1,), False),
                   out_types=[(FLOAT32, (2,))]).output
    g.outputs = [y]
    out = run_reference(g, {"x": np.zeros((2, 0), np.float32)})[y.name]
    np.testing.assert_array_equal(out, [-np.inf, -np.inf])


# -- pooling --------------------------------------------------------------------------------

POOLS = [
    # (x shape, kernel, strides, pads, dilations, ceil_mode)
    ((1, 2, 7, 7), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), False),
    ((1, 2, 7, 7), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), True),
    ((2, 3, 8, 6), (2, 3), (2, 1), (1, 0, 0, 2), (1, 1), False),
    ((1, 1, 6, 6), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),  # ceil drops a window
    ((1, 2, 9, 8), (2, 2), (3, 3), (0, 0, 1, 1), (1, 1), True),
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), False),  # 1x1
    ((1, 2, 10), (3,), (2,), (1, 2), (1,), True),  # 1-D
    ((1, 1, 4, 5, 6), (2, 2, 3), (1, 2, 2), (0, 1, 1, 1, 0, 1), (1, 1, 1), False),  # 3-D
    ((1, 2, 9, 9), (3, 2), (1, 2), (1, 1, 1, 1), (2, 2), False),  # dilated
    ((1, 2, 9, 9), (3, 3), (2, 2), (1, 1, 1, 1), (2, 1), True),
]


def _pool_onnx_attrs(kernel, strides, pads, dilations, ceil_mode):
    return {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations,
            "ceil_mode": int(ceil_mode)}


@pytest.mark.parametrize("x_shape,kernel,strides,pads,dilations,ceil_mode", POOLS)
def test_maxpool(x_shape, kernel, strides, pads, dilations, ceil_mode):
    check(Op.MAXPOOL, attrs.PoolAttrs(kernel, strides, pads, dilations, ceil_mode), "MaxPool",
          [rand(*x_shape)], _pool_onnx_attrs(kernel, strides, pads, dilations, ceil_mode))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_maxpool_int(dtype):
    x = rand(1, 2, 5, 5, dtype=dtype, low=0 if dtype == np.uint8 else -128, high=127)
    a = ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False)
    check(Op.MAXPOOL, attrs.PoolAttrs(*a), "MaxPool", [x], _pool_onnx_attrs(*a))


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("x_shape,kernel,strides,pads,dilations,ceil_mode", POOLS)
def test_avgpool(x_shape, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    onnx_attrs = _pool_onnx_attrs(kernel, strides, pads, dilations, ceil_mode)
    onnx_attrs["count_include_pad"] = int(count_include_pad)
    check(Op.AVGPOOL,
          attrs.PoolAttrs(kernel, strides, pads, dilations, ceil_mode, count_include_pad),
          "AveragePool", [rand(*x_shape)], onnx_attrs)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 7), (1, 1, 1, 1), (1, 2, 3, 2, 2)])
@pytest.mark.parametrize("op,op_type", [(Op.GLOBAL_AVGPOOL, "GlobalAveragePool"),
                                        (Op.GLOBAL_MAXPOOL, "GlobalMaxPool")])
def test_global_pool(op, op_type, shape):
    check(op, None, op_type, [rand(*shape)])


# -- movement -------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_flatten(axis):
    check(Op.FLATTEN, attrs.FlattenAttrs(axis), "Flatten", [rand(2, 3, 4)], {"axis": axis})


def test_reshape_transpose_concat():
    x = rand(2, 3, 4)
    check(Op.RESHAPE, attrs.ReshapeAttrs((4, 6)), "Reshape", [x],
          params={1: np.array([4, 6], np.int64)})
    check(Op.TRANSPOSE, attrs.TransposeAttrs((2, 0, 1)), "Transpose", [x], {"perm": (2, 0, 1)})
    check(Op.CONCAT, attrs.ConcatAttrs(1), "Concat", [x, rand(2, 1, 4), rand(2, 5, 4)],
          {"axis": 1})


@pytest.mark.parametrize("axis,sizes", [(0, (1, 3)), (1, (2, 2, 1)), (2, (6,))])
def test_split(axis, sizes):
    x = rand(4, 5, 6)
    check(Op.SPLIT, attrs.SplitAttrs(axis, sizes), "Split", [x], {"axis": axis},
          {1: np.array(sizes, np.int64)}, n_out=len(sizes))


SLICES = [
    ((1,), (3,), (0,), (1,)), ((-3,), (-1,), (1,), (1,)), ((0, 1), (100, 1000), (0, 2), (1, 2)),
    ((-1,), (-100,), (1,), (-1,)), ((5,), (0,), (2,), (-2,)), ((10,), (-10,), (0,), (-1,)),
    ((2,), (2,), (1,), (1,)), ((-100,), (2,), (2,), (3,)), ((3,), (-7,), (2,), (-3,)),
    ((2**62,), (-(2**62),), (1,), (-1,)),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice(starts, ends, axes, steps):
    x = rand(4, 5, 7)
    check(Op.SLICE, attrs.SliceAttrs(starts, ends, axes, steps), "Slice", [x],
          params={i + 1: np.array(p, np.int64) for i, p in enumerate((starts, ends, axes, steps))})


def test_squeeze_unsqueeze():
    x = rand(1, 3, 1, 4)
    check(Op.SQUEEZE, attrs.AxesAttrs((0, 2)), "Squeeze", [x], params={1: np.array([0, 2])})
    check(Op.UNSQUEEZE, attrs.AxesAttrs((0, 3, 6)), "Unsqueeze", [x],
          params={1: np.array([0, 3, 6])})


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32])
def test_gather(axis, idx_dtype):
    x = rand(3, 4, 5)
    dim = x.shape[axis]
    indices = np.array([[0, -1], [dim - 1, -dim]], dtype=idx_dtype)
    check(Op.GATHER, attrs.GatherAttrs(axis), "Gather", [x, indices], {"axis": axis})


def test_gather_scalar_index_and_out_of_range():
    x = rand(3, 4)
    check(Op.GATHER, attrs.GatherAttrs(1), "Gather", [x, np.array(-2, np.int64)], {"axis": 1})
    g = Graph()
    xv = g.add_input("x", FLOAT32, (3, 4))
    iv = g.add_const(np.array([3], np.int64), "idx")
    y = g.add_node(Op.GATHER, [xv, iv], attrs.GatherAttrs(0), name="gather_rows",
                   out_types=[(FLOAT32, (1, 4))]).output
    g.outputs = [y]
    with pytest.raises(ExecutionError, match="gather_rows.*index 3 out of range"):
        run_reference(g, {"x": x})


@pytest.mark.parametrize("x_shape,shape", [((3, 1), (2, 3, 4)), ((1, 4), (3, 1)),
                                           ((2, 3), (2, 3))])
def test_expand(x_shape, shape):
    out = np.broadcast_shapes(x_shape, shape)
    check(Op.EXPAND, attrs.ExpandAttrs(tuple(out)), "Expand", [rand(*x_shape)],
          params={1: np.array(shape, np.int64)})


PADS = [(0, 1, 2, 1, 0, 1), (1, 0, 0, 0, 2, 2), (0, -1, 1, 0, 1, -2), (0, 0, 3, 0, 0, 4)]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", PADS)
def test_pad(mode, pads):
    x = rand(2, 4, 5)
    params = {1: np.array(pads, np.int64)}
    if mode == "constant":
        params[2] = np.float32(1.5)
    check(Op.PAD, attrs.PadAttrs(pads, mode, 1.5 if mode == "constant" else 0), "Pad", [x],
          {"mode": mode}, params)


def test_pad_int_constant():
    x = rand(3, 3, dtype=np.int32, low=-9, high=9)
    check(Op.PAD, attrs.PadAttrs((1, 0, 0, 2), "constant", 7), "Pad", [x], {},
          {1: np.array([1, 0, 0, 2], np.int64), 2: np.int32(7)})


# -- resize ---------------------------------------------------------------------------------

TRANSFORMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
              "asymmetric"]
RESIZE_SIZES = [((1, 2, 4, 5), (1, 2, 8, 10)), ((1, 1, 6, 7), (1, 1, 3, 4)),
                ((2, 1, 3, 3), (2, 1, 7, 2)), ((1, 1, 5, 4), (1, 1, 1, 4))]


def _resize_check(x, sizes, mode, transform, extra_attrs=None, extra_onnx=None, roi=None,
                  scales_input=None):
    scales = (tuple(o / i for o, i in zip(sizes, x.shape)) if scales_input is None
              else tuple(scales_input))
    node_attrs = attrs.ResizeAttrs(tuple(sizes), scales, mode, transform,
                                   roi=None if roi is None else tuple(roi),
                                   **(extra_attrs or {}))
    onnx_attrs = {"mode": mode, "coordinate_transformation_mode": transform, **(extra_onnx or {})}
    params = {1: None if roi is None else np.array(roi, np.float32)}
    if scales_input is None:
        params[2], params[3] = None, np.array(sizes, np.int64)
    else:
        params[2] = np.array(scales_input, np.float32)
    check(Op.RESIZE, node_attrs, "Resize", [x], onnx_attrs, params, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("in_shape,sizes", RESIZE_SIZES)
def test_resize_interpolating(in_shape, sizes, mode, transform):
    _resize_check(rand(*in_shape), sizes, mode, transform)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor",
                                          "ceil"])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("in_shape,sizes", RESIZE_SIZES[:3])
def test_resize_nearest(in_shape, sizes, transform, nearest_mode):
    _resize_check(rand(*in_shape), sizes, "nearest", transform,
                  {"nearest_mode": nearest_mode}, {"nearest_mode": nearest_mode})


@pytest.mark.parametrize("a", [-0.5, -0.75])
def test_resize_cubic_coeff_and_exclude_outside(a):
    extra = {"cubic_coeff_a": a, "exclude_outside": True}
    _resize_check(rand(1, 1, 4, 6), (1, 1, 9, 3), "cubic", "half_pixel", extra,
                  {"cubic_coeff_a": a, "exclude_outside": 1})


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize(mode):
    roi = [0, 0, 0.4, -0.2, 1, 1, 1.3, 0.7]
    _resize_check(rand(1, 1, 5, 6), (1, 1, 4, 5), mode, "tf_crop_and_resize",
                  {"extrapolation_value": 9.0}, {"extrapolation_value": 9.0}, roi=roi)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_from_scales(mode):
    x = rand(1, 2, 3, 4)
    _resize_check(x, (1, 2, 6, 6), mode, "asymmetric", scales_input=(1.0, 1.0, 2.0, 1.5))


def test_resize_3d_volume():
    _resize_check(rand(1, 1, 3, 4, 2), (1, 1, 6, 3, 4), "linear", "half_pixel")


def test_resize_uint8_rounds():
    x = rand(1, 1, 3, 3, dtype=np.uint8, low=0, high=255)
    _resize_check(x, (1, 1, 6, 6), "nearest", "asymmetric", {"nearest_mode": "floor"},
                  {"nearest_mode": "floor"})


# -- quantization ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16])
@pytest.mark.parametrize("granularity", ["tensor", "axis", "block"])
def test_quantize(dtype, granularity):
    x = rand(4, 6, low=-40, high=40)
    x[0, :4] = [0.5, 1.5, 2.5, -2.5]  # ties round half to even
    onnx_attrs = {"output_dtype": helper.np_dtype_to_tensor_dtype(np.dtype(dtype))}
    axis, block = None, 0
    if granularity == "tensor":
        scale, zp_shape = np.float32(0.25), ()
    elif granularity == "axis":
        axis = 1
        scale, zp_shape = rand(6, low=0.1, high=1.0), (6,)
        onnx_attrs["axis"] = 1
    else:
        axis, block = 1, 4
        scale, zp_shape = rand(4, 2, low=0.1, high=1.0), (4, 2)
        onnx_attrs.update(axis=1, block_size=4)
    zp = rand(*zp_shape, dtype=np.int32, low=0, high=20).astype(dtype)
    check(Op.QUANTIZE, attrs.QuantizeAttrs(DType.from_numpy(dtype), axis, True, block),
          "QuantizeLinear", [x, np.asarray(scale, np.float32), zp], onnx_attrs)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
@pytest.mark.parametrize("granularity", ["tensor", "axis", "block"])
def test_dequantize(dtype, granularity):
    low, high = (0, 255) if dtype == np.uint8 else (-128, 127)
    x = rand(4, 6, dtype=dtype, low=low, high=high)
    axis, block, onnx_attrs = None, 0, {}
    if granularity == "tensor":
        scale, zp_shape = np.float32(0.37), ()
    elif granularity == "axis":
        axis, onnx_attrs = 0, {"axis": 0}
        scale, zp_shape = rand(4, low=0.1, high=1.0), (4,)
    else:
        axis, block, onnx_attrs = 1, 3, {"axis": 1, "block_size": 3}
        scale, zp_shape = rand(4, 2, low=0.1, high=1.0), (4, 2)
    inputs = [x, np.asarray(scale, np.float32)]
    if dtype != np.int32:
        inputs.append(rand(*zp_shape, dtype=np.int32, low=0, high=20).astype(dtype))
    check(Op.DEQUANTIZE, attrs.DequantizeAttrs(axis, block), "DequantizeLinear", inputs,
          onnx_attrs)


def test_quantize_int4_saturates():
    g = Graph()
    x = g.add_input("x", FLOAT32, (5,))
    s = g.add_const(np.float32(0.5), "scale")
    y = g.add_node(Op.QUANTIZE, [x, s], attrs.QuantizeAttrs(DType.int(4)),
                   out_types=[(DType.int(4), (5,))]).output
    g.outputs = [y]
    out = run_reference(g, {"x": np.array([-100, -4.25, 0.75, 3.4, 100], np.float32)})[y.name]
    np.testing.assert_array_equal(out, [-8, -8, 2, 7, 7])
    assert out.dtype == np.int8


def test_dequantize_int8_per_tensor_bit_exact():
    g = Graph()
    x = g.add_input("x", INT8, (3,))
    s = g.add_const(np.float32(0.5), "scale")
    z = g.add_const(np.int8(-128), "zp")
    y = g.add_node(Op.DEQUANTIZE, [x, s, z], attrs.DequantizeAttrs(),
                   out_types=[(FLOAT32, (3,))]).output
    g.outputs = [y]
    out = run_reference(g, {"x": np.array([127, -128, 0], np.int8)})[y.name]
    np.testing.assert_array_equal(out, [127.5, 0.0, 64.0])
    assert out.dtype == np.float32


def test_resize_fractional_scale_follows_onnx_reference():
    # onnx backend test resize_downsample_scales_linear_align_corners: the target length is
    # W = 0.6 · 4 = 2.4 (not 2), so x_orig(1) = 1 · 3 / 1.4; onnxruntime (3.0) disagrees
    x = np.arange(1, 9, dtype=np.float32).reshape(1, 1, 2, 4)
    node_attrs = attrs.ResizeAttrs((1, 1, 1, 2), (1.0, 1.0, 0.6, 0.6), "linear", "align_corners")
    got = run_ir(Op.RESIZE, node_attrs, [x], [np.zeros((1, 1, 1, 2), np.float32)])[0]
    np.testing.assert_allclose(got.ravel(), [1.0, 1.0 + 3 / 1.4], rtol=1e-6)
