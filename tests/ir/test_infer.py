"""Shape/dtype rules of lowbit.ir.infer vs onnx's own shape inference on one-node models,
plus every ShapeError the rules raise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from lowbit.ir import FLOAT32, INT8, INT32, INT64, UINT8, DType, Graph, Op, ShapeError
from lowbit.ir import attrs as A
from lowbit.ir.infer import pool_output_size, slice_range
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

OPSET = 21
_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
               np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int8): TensorProto.INT8,
               np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.bool_): TensorProto.BOOL}


def onnx_types(op_type, inputs, params=(), attrs=None, outputs=1):
    """Output (numpy dtype, shape) of one ONNX node per onnx.shape_inference.

    ``inputs``: (numpy dtype, shape) graph inputs named i0, i1...; ``params``: constant
    initializers appended after them (``None`` = an empty optional input)."""
    names, vis, inits = [], [], []
    for i, (dt, shape) in enumerate(inputs):
        names.append(f"i{i}")
        vis.append(oh.make_tensor_value_info(f"i{i}", _ONNX_TYPES[np.dtype(dt)], list(shape)))
    for j, p in enumerate(params):
        if p is None:
            names.append("")
            continue
        names.append(f"p{j}")
        inits.append(numpy_helper.from_array(np.asarray(p), f"p{j}"))
    outs = [f"o{k}" for k in range(outputs)]
    node = oh.make_node(op_type, names, outs, **(attrs or {}))
    graph = oh.make_graph([node], "g", vis, [oh.make_value_info(o, onnx.TypeProto()) for o in outs],
                          inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    result = []
    for o in inferred.graph.output:
        t = o.type.tensor_type
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        result.append((np.dtype(dt), tuple(d.dim_value for d in t.shape.dim)))
    return result


def ir_types(op, inputs, consts=(), attrs=None, outputs=1):
    """Output (numpy dtype, shape) per lowbit's shape rules; consts become constant Values."""
    g = Graph()
    vals = [g.add_input(f"i{i}", DType.from_numpy(dt), shape) for i, (dt, shape) in
            enumerate(inputs)]
    vals += [None if c is None else g.add_const(c, f"c{j}") for j, c in enumerate(consts)]
    node = g.add_node(op, vals, attrs, outputs=outputs)
    return [(v.dtype.numpy, v.shape) for v in node.outputs]


F = np.float32
rng = np.random.default_rng(0)


def w(*shape, dtype=F):
    return rng.standard_normal(shape).astype(dtype)


# (id, ir op, ir inputs, ir consts, ir attrs, onnx op, onnx inputs, onnx params, onnx attrs, n_out)
CASES = [
    ("conv", Op.CONV, [(F, (1, 3, 8, 8))], [w(4, 3, 3, 3), w(4)],
     A.ConvAttrs((2, 2), (1, 1, 0, 0), (1, 1)),
     "Conv", None, None, {"strides": [2, 2], "pads": [1, 1, 0, 0], "dilations": [1, 1]}, 1),
    ("conv_grouped_dilated", Op.CONV, [(F, (2, 4, 9, 7))], [w(6, 2, 3, 2)],
     A.ConvAttrs((1, 2), (1, 0, 2, 1), (2, 1), group=2),
     "Conv", None, None,
     {"strides": [1, 2], "pads": [1, 0, 2, 1], "dilations": [2, 1], "group": 2}, 1),
    ("conv_1d", Op.CONV, [(F, (1, 2, 10))], [w(5, 2, 4)], A.ConvAttrs((3,), (0, 2), (1,)),
     "Conv", None, None, {"strides": [3], "pads": [0, 2], "dilations": [1]}, 1),
    ("conv_transpose", Op.CONV_TRANSPOSE, [(F, (1, 4, 5, 5))], [w(4, 3, 3, 3), w(3)],
     A.ConvTransposeAttrs((2, 2), (1, 1, 1, 1), (1, 1), (1, 1)),
     "ConvTranspose", None, None,
     {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1], "output_padding": [1, 1]}, 1),
    ("conv_transpose_grouped", Op.CONV_TRANSPOSE, [(F, (1, 4, 5))], [w(4, 2, 3)],
     A.ConvTransposeAttrs((3,), (0, 1), (2,), (0,), group=2),
     "ConvTranspose", None, None,
     {"strides": [3], "pads": [0, 1], "dilations": [2], "group": 2}, 1),
    ("matmul_2d", Op.MATMUL, [(F, (3, 4)), (F, (4, 5))], [], None, "MatMul", None, None, {}, 1),
    ("matmul_1d_left", Op.MATMUL, [(F, (4,)), (F, (2, 4, 5))], [], None,
     "MatMul", None, None, {}, 1),
    ("matmul_1d_right", Op.MATMUL, [(F, (2, 3, 4)), (F, (4,))], [], None,
     "MatMul", None, None, {}, 1),
    ("matmul_1d_both", Op.MATMUL, [(F, (4,)), (F, (4,))], [], None, "MatMul", None, None, {}, 1),
    ("matmul_batch_broadcast", Op.MATMUL, [(F, (2, 1, 3, 4)), (F, (5, 4, 6))], [], None,
     "MatMul", None, None, {}, 1),
    ("gemm_trans_b", Op.GEMM, [(F, (3, 4))], [w(5, 4), w(5)], A.GemmAttrs(0.5, 2.0, False, True),
     "Gemm", None, None, {"alpha": 0.5, "beta": 2.0, "transB": 1}, 1),
    ("gemm_trans_a", Op.GEMM, [(F, (4, 3)), (F, (4, 5))], [], A.GemmAttrs(trans_a=True),
     "Gemm", None, None, {"transA": 1}, 1),
    ("matmul_integer", Op.MATMUL_INTEGER, [(np.uint8, (3, 4)), (np.int8, (4, 5))], [], None,
     "MatMulInteger", None, None, {}, 1),
    ("batchnorm", Op.BATCHNORM, [(F, (2, 3, 4, 4))], [w(3), w(3), w(3), np.ones(3, F)],
     A.BatchNormAttrs(), "BatchNormalization", None, None, {}, 1),
    ("layernorm_3_outputs", Op.LAYERNORM, [(F, (2, 3, 4))], [w(3, 4), w(4)],
     A.LayerNormAttrs(axis=1), "LayerNormalization", None, None, {"axis": 1}, 3),
    ("lrn", Op.LRN, [(F, (1, 6, 3, 3))], [], A.LRNAttrs(size=3), "LRN", None, None,
     {"size": 3}, 1),
    ("softmax", Op.SOFTMAX, [(F, (2, 5, 3))], [], A.SoftmaxAttrs(1), "Softmax", None, None,
     {"axis": 1}, 1),
    ("log_softmax", Op.LOG_SOFTMAX, [(F, (2, 5))], [], A.SoftmaxAttrs(0), "LogSoftmax", None,
     None, {"axis": 0}, 1),
    ("reduce_mean_keep", Op.REDUCE_MEAN, [(F, (2, 3, 4))], [], A.ReduceAttrs((1,), True),
     "ReduceMean", None, [np.array([1])], {"keepdims": 1}, 1),
    ("reduce_sum_all", Op.REDUCE_SUM, [(F, (2, 3, 4))], [], A.ReduceAttrs(None, False),
     "ReduceSum", None, None, {"keepdims": 0}, 1),
    ("reduce_max_two_axes", Op.REDUCE_MAX, [(F, (2, 3, 4))], [], A.ReduceAttrs((0, 2), False),
     "ReduceMax", None, [np.array([0, 2])], {"keepdims": 0}, 1),
    ("maxpool_indices", Op.MAXPOOL, [(F, (1, 2, 7, 6))], [],
     A.PoolAttrs((3, 2), (2, 1), (0, 1, 1, 0), (2, 1)),
     "MaxPool", None, None, {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 1, 0],
                                 "dilations": [2, 1]}, 2),
    ("avgpool_ceil", Op.AVGPOOL, [(F, (1, 3, 7, 8))], [],
     A.PoolAttrs((3, 3), (2, 3), (0, 0, 0, 0), (1, 1), ceil_mode=True),
     "AveragePool", None, None, {"kernel_shape": [3, 3], "strides": [2, 3], "ceil_mode": 1}, 1),
    ("global_avgpool", Op.GLOBAL_AVGPOOL, [(F, (2, 3, 4, 5))], [], None, "GlobalAveragePool",
     None, None, {}, 1),
    ("global_maxpool_1d", Op.GLOBAL_MAXPOOL, [(F, (2, 3, 4))], [], None, "GlobalMaxPool",
     None, None, {}, 1),
    ("flatten_axis0", Op.FLATTEN, [(F, (2, 3, 4))], [], A.FlattenAttrs(0), "Flatten", None,
     None, {"axis": 0}, 1),
    ("flatten_axis2", Op.FLATTEN, [(F, (2, 3, 4))], [], A.FlattenAttrs(2), "Flatten", None,
     None, {"axis": 2}, 1),
    ("flatten_axis_rank", Op.FLATTEN, [(F, (2, 3, 4))], [], A.FlattenAttrs(3), "Flatten", None,
     None, {"axis": 3}, 1),
    ("reshape", Op.RESHAPE, [(F, (2, 3, 4))], [], A.ReshapeAttrs((4, 6)), "Reshape", None,
     [np.array([4, 6])], {}, 1),
    ("transpose", Op.TRANSPOSE, [(F, (2, 3, 4))], [], A.TransposeAttrs((2, 0, 1)), "Transpose",
     None, None, {"perm": [2, 0, 1]}, 1),
    ("concat", Op.CONCAT, [(F, (2, 3, 4)), (F, (2, 1, 4)), (F, (2, 5, 4))], [],
     A.ConcatAttrs(1), "Concat", None, None, {"axis": 1}, 1),
    ("split", Op.SPLIT, [(F, (2, 7))], [], A.SplitAttrs(1, (3, 4)), "Split", None,
     [np.array([3, 4])], {"axis": 1}, 2),
    ("slice_negative_step", Op.SLICE, [(F, (6, 7, 8))], [],
     A.SliceAttrs((-1, 1), (-100, 2**62), (0, 2), (-2, 3)), "Slice", None,
     [np.array([-1, 1]), np.array([-100, 2**62]), np.array([0, 2]), np.array([-2, 3])], {}, 1),
    ("slice_clamped_start", Op.SLICE, [(F, (5, 4))], [], A.SliceAttrs((-10,), (-20,), (0,), (-1,)),
     "Slice", None, [np.array([-10]), np.array([-20]), np.array([0]), np.array([-1])], {}, 1),
    ("slice_empty", Op.SLICE, [(F, (5, 4))], [], A.SliceAttrs((3,), (1,), (1,), (1,)),
     "Slice", None, [np.array([3]), np.array([1]), np.array([1]), np.array([1])], {}, 1),
    ("squeeze", Op.SQUEEZE, [(F, (1, 3, 1, 2))], [], A.AxesAttrs((0, 2)), "Squeeze", None,
     [np.array([0, 2])], {}, 1),
    ("unsqueeze", Op.UNSQUEEZE, [(F, (3, 2))], [], A.AxesAttrs((0, 3)), "Unsqueeze", None,
     [np.array([0, 3])], {}, 1),
    ("gather", Op.GATHER, [(F, (3, 5, 2)), (np.int64, (2, 4))], [], A.GatherAttrs(1), "Gather",
     None, None, {"axis": 1}, 1),
    ("gather_scalar_index", Op.GATHER, [(F, (3, 5))], [np.array(-1, np.int64)], A.GatherAttrs(0),
     "Gather", None, None, {"axis": 0}, 1),
    ("expand_bidirectional", Op.EXPAND, [(F, (3, 1))], [], A.ExpandAttrs((2, 1, 4)), "Expand",
     None, [np.array([2, 1, 4])], {}, 1),
    ("pad_with_crop", Op.PAD, [(F, (2, 3, 4))], [], A.PadAttrs((0, 1, -1, 1, 2, 0)), "Pad", None,
     [np.array([0, 1, -1, 1, 2, 0])], {}, 1),
    ("resize", Op.RESIZE, [(F, (1, 3, 4, 4))], [],
     A.ResizeAttrs((1, 3, 8, 6), (1.0, 1.0, 2.0, 1.5)), "Resize", None,
     [None, None, np.array([1, 3, 8, 6])], {}, 1),
    ("quantize_int8", Op.QUANTIZE, [(F, (2, 3))], [np.float32(0.1), np.int8(0)],
     A.QuantizeAttrs(INT8), "QuantizeLinear", None, None, {}, 1),
    ("quantize_uint8_per_channel", Op.QUANTIZE, [(F, (2, 3))], [w(3), np.zeros(3, np.uint8)],
     A.QuantizeAttrs(UINT8, axis=1), "QuantizeLinear", None, None, {"axis": 1}, 1),
    ("dequantize_per_channel", Op.DEQUANTIZE, [(np.int8, (4, 3))], [w(4), np.zeros(4, np.int8)],
     A.DequantizeAttrs(axis=0), "DequantizeLinear", None, None, {"axis": 0}, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule_matches_onnx_shape_inference(case):
    _, op, inputs, consts, attrs, onnx_op, onnx_inputs, onnx_params, onnx_attrs, n_out = case
    ours = ir_types(op, inputs, consts, attrs, n_out)
    params = list(consts) if onnx_params is None else list(consts) + list(onnx_params)
    theirs = onnx_types(onnx_op, onnx_inputs or inputs, params, onnx_attrs, n_out)
    assert ours == theirs


@pytest.mark.parametrize("op", [Op.MAXPOOL, Op.AVGPOOL])
def test_pool_ceil_mode_drops_window_starting_in_right_padding(op):
    # onnx.shape_inference says 4 here, but the spec ("sliding windows that would start in the
    # right padded region are ignored"), onnxruntime and torch all give 3: compare with ort.
    import onnxruntime as ort

    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}
    node = oh.make_node(op.value, ["x"], ["y"], **attrs)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                  [1, 1, 5, 5])],
                          [oh.make_value_info("y", onnx.TypeProto())])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": np.ones((1, 1, 5, 5), F)})[0].shape
    ours = ir_types(op, [(F, (1, 1, 5, 5))], [],
                    A.PoolAttrs((2, 2), (2, 2), (1, 1, 1, 1), (1, 1), ceil_mode=True))
    assert ours == [(np.dtype(F), expected)] == [(np.dtype(F), (1, 1, 3, 3))]


def test_every_op_has_a_rule():
    from lowbit.ir.infer import _RULES

    assert set(Op) == set(_RULES)


# -- helpers: slice_range and pool_output_size -------------------------------------------------
@pytest.mark.parametrize("dim,start,end,step,expected", [
    (5, 1, 4, 1, (1, 4, 1, 3)),
    (5, -1, -6, -1, (4, -1, -1, 5)),         # negative step reaching index 0: stop is -1
    (5, -10, -20, -1, (0, -1, -1, 1)),       # ONNX clamps start to 0 (numpy would give empty)
    (5, 10, 2**62, 2, (5, 5, 2, 0)),
    (5, 0, 5, 2, (0, 5, 2, 3)),
    (5, 4, 0, -3, (4, 0, -3, 2)),
    (0, 0, 5, -1, (-1, -1, -1, 0)),          # empty dim: nothing selected
])
def test_slice_range(dim, start, end, step, expected):
    got = slice_range(dim, start, end, step)
    assert got == expected
    b, stop, st, length = got
    picked = [b + i * st for i in range(length)]
    assert all(0 <= p < dim for p in picked)
    if stop >= 0 or step > 0:
        assert picked == list(range(dim))[slice(b, stop, st)]


def test_slice_range_rejects_zero_step():
    with pytest.raises(ValueError):
        slice_range(4, 0, 4, 0)


@pytest.mark.parametrize("size", [4, 5, 6, 7, 10])
@pytest.mark.parametrize("kernel,stride,pad,dilation", [(2, 2, 1, 1), (3, 2, 1, 1),
                                                        (3, 3, 1, 1), (2, 3, 0, 2)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_output_size_matches_torch(size, kernel, stride, pad, dilation, ceil_mode):
    torch = pytest.importorskip("torch")
    x = torch.zeros(1, 1, size)
    y = torch.nn.functional.max_pool1d(x, kernel, stride, pad, dilation, ceil_mode=ceil_mode)
    assert pool_output_size(size, kernel, stride, pad, pad, dilation, ceil_mode) == y.shape[-1]


# -- errors -----------------------------------------------------------------------------------
def _graph_with(*inputs):
    g = Graph()
    return g, [g.add_input(f"x{i}", FLOAT32, s) for i, s in enumerate(inputs)]


def test_conv_channel_mismatch_names_inputs():
    g, (x,) = _graph_with((1, 3, 8, 8))
    wt = g.add_const(w(4, 4, 3, 3), "w")
    with pytest.raises(ShapeError, match=r"input %x0 has 3 channels but weight %w expects 4 "
                                         r"\(group=1\)"):
        g.make(Op.CONV, x, wt, attrs=A.ConvAttrs((1, 1), (0, 0, 0, 0), (1, 1)))


@pytest.mark.parametrize("case,pattern", [
    ("group", r"not divisible by group=2"),
    ("bias", r"bias %b has shape \[3\]; expected \[4\]"),
    ("kernel", r"kernel extent 9 exceeds padded input size 8"),
    ("pads", r"pads=\(0, 0\) has 2 entries"),
    ("rank", r"weight %w has shape \[4, 3, 3\]; expected rank 4"),
])
def test_conv_errors(case, pattern):
    g, (x,) = _graph_with((1, 4, 8, 8))
    attrs = A.ConvAttrs((1, 1), (0, 0, 0, 0), (1, 1))
    weight = {"group": w(3, 2, 3, 3), "rank": w(4, 3, 3)}.get(case, w(4, 4, 3, 3))
    inputs = [x, g.add_const(weight, "w")]
    if case == "group":
        attrs = A.ConvAttrs((1, 1), (0, 0, 0, 0), (1, 1), group=2)
    elif case == "bias":
        inputs.append(g.add_const(w(3), "b"))
    elif case == "kernel":
        attrs = A.ConvAttrs((1, 1), (0, 0, 0, 0), (4, 4))
    elif case == "pads":
        attrs = A.ConvAttrs((1, 1), (0, 0), (1, 1))
    with pytest.raises(ShapeError, match=pattern):
        g.make(Op.CONV, *inputs, attrs=attrs)


def test_conv_transpose_channel_mismatch():
    g, (x,) = _graph_with((1, 3, 5, 5))
    with pytest.raises(ShapeError, match=r"input %x0 has 3 channels but weight %w expects 4"):
        g.make(Op.CONV_TRANSPOSE, x, g.add_const(w(4, 2, 3, 3), "w"),
               attrs=A.ConvTransposeAttrs((1, 1), (0, 0, 0, 0), (1, 1), (0, 0)))


def test_matmul_inner_dims():
    g, (a, b) = _graph_with((3, 4), (5, 6))
    with pytest.raises(ShapeError, match=r"inner dims differ: %x0 is \[3, 4\] \(K=4\) but %x1 is "
                                         r"\[5, 6\] \(K=5\)"):
        g.make(Op.MATMUL, a, b)


def test_matmul_batch_dims_do_not_broadcast():
    g, (a, b) = _graph_with((2, 3, 4), (3, 4, 5))
    with pytest.raises(ShapeError, match="do not broadcast"):
        g.make(Op.MATMUL, a, b)


def test_matmul_integer_needs_integers():
    g, (a, b) = _graph_with((3, 4), (4, 5))
    with pytest.raises(ShapeError, match=r"operand %x0 is float32"):
        g.make(Op.MATMUL_INTEGER, a, b)


def test_gemm_errors():
    g, (a, b, c) = _graph_with((3, 4), (5, 4), (3,))
    with pytest.raises(ShapeError, match=r"op\(B\) of %x1 is \[5, 4\]"):
        g.make(Op.GEMM, a, b, attrs=A.GemmAttrs())
    with pytest.raises(ShapeError, match=r"C %x2 of shape \[3\] does not broadcast to \[3, 5\]"):
        g.make(Op.GEMM, a, b, c, attrs=A.GemmAttrs(trans_b=True))


def test_batchnorm_param_shape():
    g, (x,) = _graph_with((1, 3, 4, 4))
    p = [g.add_const(np.ones(n, F), name) for n, name in
         [(3, "scale"), (3, "bias"), (4, "mean"), (3, "var")]]
    with pytest.raises(ShapeError, match=r"mean %mean has shape \[4\] but input %x0 has 3 chan"):
        g.make(Op.BATCHNORM, x, *p, attrs=A.BatchNormAttrs())


@pytest.mark.parametrize("op,attrs,pattern", [
    (Op.SOFTMAX, A.SoftmaxAttrs(3), r"axis 3 is out of range for rank-3 input %x0"),
    (Op.LAYERNORM, A.LayerNormAttrs(5), r"axis 5 is out of range"),
    (Op.REDUCE_SUM, A.ReduceAttrs((3,)), r"reduce axis 3 is out of range"),
    (Op.REDUCE_SUM, A.ReduceAttrs((1, 1)), r"repeated axes"),
    (Op.FLATTEN, A.FlattenAttrs(4), r"axis 4 is out of range for rank-3 input %x0; use 0..3"),
    (Op.RESHAPE, A.ReshapeAttrs((5, 5)), (r"cannot reshape %x0 of shape \[2, 3, 4\] "
                                         r"\(24 elements\) to \[5, 5\] \(25 elements\)")),
    (Op.RESHAPE, A.ReshapeAttrs((-1, 4)), r"negative dim"),
    (Op.TRANSPOSE, A.TransposeAttrs((0, 0, 1)), r"perm \[0, 0, 1\] is not a permutation"),
    (Op.SPLIT, A.SplitAttrs(1, (1, 1)), r"sizes \[1, 1\] do not add up to dim 3"),
    (Op.SLICE, A.SliceAttrs((0,), (1,), (0,), (0,)), r"step 0 on axis 0"),
    (Op.SLICE, A.SliceAttrs((0,), (1,), (3,), (1,)), r"slice axis 3 is out of range"),
    (Op.SQUEEZE, A.AxesAttrs((1,)), r"cannot squeeze axis 1 of %x0 .* its size is 3, not 1"),
    (Op.UNSQUEEZE, A.AxesAttrs((5,)), r"unsqueeze axis \(of the output\) 5 is out of range"),
    (Op.EXPAND, A.ExpandAttrs((2, 5)), r"do not broadcast"),
    (Op.PAD, A.PadAttrs((0, 0, 0, 0)), r"has 4 entries; input %x0 of rank 3 needs 6"),
    (Op.PAD, A.PadAttrs((0, 0, -5, 0, 0, 0)), r"below zero"),
    (Op.PAD, A.PadAttrs((0,) * 6, mode="mirror"), r"unknown mode 'mirror'"),
    (Op.RESIZE, A.ResizeAttrs((4, 4), (1.0, 1.0)), r"sizes \[4, 4\] do not match rank-3"),
    (Op.MAXPOOL, A.PoolAttrs((5,), (1,), (0, 0), (1,)), r"window extent 5 exceeds padded"),
    (Op.GLOBAL_AVGPOOL, None, r"expected \(N, C, spatial...\)"),
])
def test_single_input_errors(op, attrs, pattern):
    g, (x,) = _graph_with((2, 3, 4) if op not in (Op.GLOBAL_AVGPOOL,) else (2, 3))
    outputs = len(attrs.sizes) if op == Op.SPLIT else 1
    with pytest.raises(ShapeError, match=pattern):
        g.add_node(op, [x], attrs, outputs=outputs)


def test_prelu_slope_broadcasts_to_input_only():
    g, (x, s, big) = _graph_with((2, 3, 4), (3, 1), (1, 2, 3, 4))
    assert g.make(Op.PRELU, x, s).shape == (2, 3, 4)
    with pytest.raises(ShapeError, match=r"slope %x2 of shape \[1, 2, 3, 4\] does not broadcast to"):
        g.make(Op.PRELU, x, big)
    with pytest.raises(ShapeError, match=r"slope %c of shape \[3\] .* needs shape \(C, 1"):
        g.make(Op.PRELU, x, g.add_input("c", FLOAT32, (3,)))


def test_concat_errors():
    g, (a, b) = _graph_with((2, 3), (3, 3))
    with pytest.raises(ShapeError, match=r"input %x1 has shape \[3, 3\] but %x0 has \[2, 3\]; "
                                         r"only axis 1 may differ"):
        g.make(Op.CONCAT, a, b, attrs=A.ConcatAttrs(1))
    c = g.add_input("i", INT64, (2, 3))
    with pytest.raises(ShapeError, match=r"input %i is int64 but %x0 is float32"):
        g.make(Op.CONCAT, a, c, attrs=A.ConcatAttrs(0))


def test_gather_errors():
    g, (x,) = _graph_with((3, 4))
    with pytest.raises(ShapeError, match=r"indices %x0 are float32"):
        g.make(Op.GATHER, x, x, attrs=A.GatherAttrs(0))
    idx = g.add_const(np.array([0, 3], np.int64), "idx")
    with pytest.raises(ShapeError, match=r"range \[0, 3\] falls outside \[-3, 3\) on axis 0"):
        g.make(Op.GATHER, x, idx, attrs=A.GatherAttrs(0))


def test_quantize_errors():
    g, (x,) = _graph_with((2, 3))
    s3, s2 = g.add_const(np.ones(3, F), "s3"), g.add_const(np.ones(2, F), "s2")
    with pytest.raises(ShapeError, match=r"scale %s3 has shape \[3\] but axis is None"):
        g.make(Op.QUANTIZE, x, s3, attrs=A.QuantizeAttrs(INT8))
    with pytest.raises(ShapeError, match=r"scale %s2 has shape \[2\]; expected \[3\] for axis=1"):
        g.make(Op.QUANTIZE, x, s2, attrs=A.QuantizeAttrs(INT8, axis=1))
    zp = g.add_const(np.zeros(2, np.int8), "zp")
    with pytest.raises(ShapeError, match=r"zero point %zp has shape \[2\] but scale %s3"):
        g.make(Op.QUANTIZE, x, s3, zp, attrs=A.QuantizeAttrs(INT8, axis=1))


def test_quantize_blocked_and_dequantize_dtype():
    g, (x,) = _graph_with((4, 6))
    s = g.add_const(np.ones((4, 2), F), "s")
    q = g.make(Op.QUANTIZE, x, s, attrs=A.QuantizeAttrs(DType.int(4), axis=1, block_size=4))
    assert (q.dtype, q.shape) == (DType.int(4), (4, 6))
    y = g.make(Op.DEQUANTIZE, q, s, attrs=A.DequantizeAttrs(axis=1, block_size=4))
    assert (y.dtype, y.shape) == (FLOAT32, (4, 6))
    m = g.make(Op.MATMUL_INTEGER, g.add_input("a", INT8, (3, 4)), q)
    assert m.dtype == INT32
