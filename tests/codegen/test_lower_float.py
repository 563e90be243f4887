"""Float graphs lowered to TVM Relax, built for the host and run on the Relax VM, match
``lowbit.run_reference`` (rtol / atol 1e-4): the two example models after the default passes,
and single-op graphs covering the attribute corner cases of each lowering."""

from __future__ import annotations

from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.codegen.build import build
from lowbit.codegen.lower import lower
from lowbit.codegen.lowering import registered_ops
from lowbit.ir import INT64, Graph, LoweringError, Op
from lowbit.ir import attrs as A
from lowbit.passes import default_pipeline

tvm = pytest.importorskip("tvm")
from tvm import relax

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_tvm(graph: Graph, feeds: dict) -> dict:
    ex = build(graph, "x86")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feeds[v.name]))
                       for v in graph.inputs])
    outs = [out] if len(graph.outputs) == 1 else list(out)
    return {v.name: o.numpy() for v, o in zip(graph.outputs, outs)}


def check(graph: Graph, feeds: dict) -> None:
    got, want = run_tvm(graph, feeds), lowbit.run_reference(graph, feeds)
    for v in graph.outputs:
        assert got[v.name].shape == tuple(want[v.name].shape), v.name
        assert got[v.name].dtype == np.asarray(want[v.name]).dtype, v.name
        np.testing.assert_allclose(got[v.name], want[v.name], rtol=1e-4, atol=1e-4,
                                   err_msg=v.name)


@pytest.mark.parametrize("model,shape,calib", [
    ("digits_cnn.onnx", (4, 1, 8, 8), "digits_calib.npz"),
    ("digits_transformer.onnx", (4, 8, 8), "digits_transformer_calib.npz"),
])
def test_example_models(model, shape, calib):
    graph = lowbit.import_onnx(EXAMPLES / model, input_shapes={"input": shape})
    graph = default_pipeline().run(graph).graph
    x = np.load(EXAMPLES / calib)["input"][:shape[0]].astype(np.float32)
    check(graph, {"input": x})


def _rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def single(op, attrs, inputs, consts=(), n_out=1):
    """A one-node graph: ``inputs`` are (name, array) graph inputs, ``consts`` (name, array)
    constants appended after them (None entries = absent optional inputs)."""
    g = Graph(op.value)
    feeds, values = {}, []
    for name, arr in inputs:
        from lowbit.ir import DType

        values.append(g.add_input(name, DType.from_numpy(arr.dtype), arr.shape))
        feeds[name] = arr
    for name, arr in consts:
        values.append(None if arr is None else g.add_const(arr, name))
    node = g.add_node(op, values, attrs, name="n", outputs=n_out)
    g.outputs = list(node.outputs)
    return g, feeds


X4 = ("x", _rand((2, 4, 7, 6)))
CASES = {
    "conv_groups": (Op.CONV, A.ConvAttrs((2, 1), (1, 0, 2, 1), (1, 2), 2), [X4],
                    [("w", _rand((6, 2, 3, 2), 1)), ("b", _rand((6,), 2))]),
    "conv_depthwise": (Op.CONV, A.ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1), 4), [X4],
                       [("w", _rand((4, 1, 3, 3), 1))]),
    "conv_transpose": (Op.CONV_TRANSPOSE,
                       A.ConvTransposeAttrs((2, 2), (1, 0, 0, 1), (1, 1), (1, 0), 2), [X4],
                       [("w", _rand((4, 3, 3, 2), 1)), ("b", _rand((6,), 2))]),
    "gemm": (Op.GEMM, A.GemmAttrs(0.5, 2.0, True, True), [("a", _rand((5, 3)))],
             [("b", _rand((4, 5), 1)), ("c", _rand((4,), 2))]),
    "matmul_batched": (Op.MATMUL, None, [("a", _rand((2, 3, 5))), ("b", _rand((5, 4), 1))], []),
    "batchnorm": (Op.BATCHNORM, A.BatchNormAttrs(1e-3), [X4],
                  [("s", _rand((4,), 1)), ("bb", _rand((4,), 2)), ("m", _rand((4,), 3)),
                   ("v", np.abs(_rand((4,), 4)) + 0.5)]),
    "layernorm": (Op.LAYERNORM, A.LayerNormAttrs(2), [X4],
                  [("s", _rand((7, 6), 1)), ("bb", _rand((6,), 2))]),
    "log_softmax": (Op.LOG_SOFTMAX, A.SoftmaxAttrs(1), [X4], []),
    "softmax": (Op.SOFTMAX, A.SoftmaxAttrs(3), [X4], []),
    "gelu_tanh": (Op.GELU, A.GeluAttrs("tanh"), [X4], []),
    "hard_swish": (Op.HARD_SWISH, None, [X4], []),
    "hard_sigmoid": (Op.HARD_SIGMOID, A.HardSigmoidAttrs(0.3, 0.4), [X4], []),
    "leaky_relu": (Op.LEAKY_RELU, A.LeakyReluAttrs(0.1), [X4], []),
    "clip_min_only": (Op.CLIP, A.ClipAttrs(-0.5, None), [X4], []),
    "prelu": (Op.PRELU, None, [X4], [("slope", _rand((4, 1, 1), 1))]),
    "pow": (Op.POW, None, [("x", np.abs(_rand((3, 4))) + 0.1)], [("p", np.float32(1.7))]),
    "where": (Op.WHERE, None, [("c", _rand((3, 1)) > 0), ("a", _rand((3, 4)))],
              [("bb", _rand((4,), 1))]),
    "maxpool_ceil_pads": (Op.MAXPOOL, A.PoolAttrs((3, 2), (2, 2), (1, 0, 1, 1), (1, 1), True),
                          [X4], []),
    "avgpool_ceil_include_pad": (Op.AVGPOOL,
                                 A.PoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True, True),
                                 [X4], []),
    "avgpool_exclude_pad": (Op.AVGPOOL, A.PoolAttrs((2, 3), (1, 2), (0, 1, 1, 1), (1, 1)),
                            [X4], []),
    "global_maxpool": (Op.GLOBAL_MAXPOOL, None, [X4], []),
    "reduce_max": (Op.REDUCE_MAX, A.ReduceAttrs((1, 3), False), [X4], []),
    "reduce_sum_all": (Op.REDUCE_SUM, A.ReduceAttrs(None, True), [X4], []),
    "split": (Op.SPLIT, A.SplitAttrs(2, (2, 5)), [X4], [], 2),
    "slice_negative_step": (Op.SLICE, A.SliceAttrs((-1, 1), (-100, 5), (3, 1), (-2, 2)), [X4],
                            []),
    "concat": (Op.CONCAT, A.ConcatAttrs(1), [X4, ("y", _rand((2, 3, 7, 6), 1))], []),
    "gather_negative": (Op.GATHER, A.GatherAttrs(2), [X4],
                        [("i", np.array([[-1, 0], [3, -7]], np.int64))]),
    "expand": (Op.EXPAND, A.ExpandAttrs((3, 4, 5)), [("x", _rand((4, 1)))], []),
    "pad_reflect_crop": (Op.PAD, A.PadAttrs((0, 0, 2, -1, 0, 0, 1, 2), "reflect"), [X4], []),
    "pad_constant": (Op.PAD, A.PadAttrs((0, 1, 0, 0, 0, 0, 2, 1), "constant", 1.5), [X4], []),
    "resize_nearest": (Op.RESIZE, A.ResizeAttrs((2, 4, 14, 9), (1.0, 1.0, 2.0, 1.5), "nearest",
                                                "asymmetric", "floor"), [X4], []),
    # nearest resizes gather through index tables built by the reference's coordinate rule
    "resize_nearest_half_pixel_down": (Op.RESIZE, A.ResizeAttrs(
        (2, 4, 5, 4), (1.0, 1.0, 5 / 7, 4 / 6), "nearest", "half_pixel", "round_prefer_floor"),
        [X4], []),
    "resize_nearest_align_corners_ceil": (Op.RESIZE, A.ResizeAttrs(
        (2, 4, 13, 11), (1.0, 1.0, 13 / 7, 11 / 6), "nearest", "align_corners",
        "round_prefer_ceil"), [X4], []),
    "resize_nearest_pytorch_ceil": (Op.RESIZE, A.ResizeAttrs(
        (2, 4, 21, 1), (1.0, 1.0, 3.0, 1 / 6), "nearest", "pytorch_half_pixel", "ceil"),
        [X4], []),
    "resize_nearest_symmetric": (Op.RESIZE, A.ResizeAttrs(
        (2, 4, 10, 6), (1.0, 1.0, 10 / 7, 1.0), "nearest", "half_pixel_symmetric",
        "round_prefer_floor"), [X4], []),
    "resize_linear": (Op.RESIZE, A.ResizeAttrs((2, 4, 10, 12), (1.0, 1.0, 10 / 7, 2.0),
                                               "linear", "half_pixel"), [X4], []),
    "cast_truncates": (Op.CAST, A.CastAttrs(INT64), [("x", _rand((3, 4)) * 5)], []),
    "transpose": (Op.TRANSPOSE, A.TransposeAttrs((0, 2, 3, 1)), [X4], []),
    "flatten": (Op.FLATTEN, A.FlattenAttrs(2), [X4], []),
    "lrn": (Op.LRN, A.LRNAttrs(3, 2e-2, 0.6, 1.5), [("x", _rand((2, 5, 3, 2)))], []),
    "reciprocal": (Op.RECIPROCAL, None, [("x", np.abs(_rand((3, 4))) + 0.5)], []),
    "gelu_erf": (Op.GELU, A.GeluAttrs("none"), [X4], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_op(case):
    op, attrs, inputs, consts, *n = CASES[case]
    graph, feeds = single(op, attrs, inputs, consts, n[0] if n else 1)
    check(graph, feeds)


def test_every_ir_op_has_a_lowering():
    """Every IR op has a generic lowering (FakeQuant's raises a LoweringError that says why)."""
    missing = set(Op) - registered_ops()
    assert not missing, sorted(op.value for op in missing)


def test_unsupported_attribute_names_node_and_op():
    graph, _ = single(Op.PAD, A.PadAttrs((0, 0, 1, 1), "wrap"), [("x", _rand((3, 4)))], [])
    with pytest.raises(LoweringError, match="Pad node 'n'.*wrap"):
        lower(graph, "x86")


def test_unsupported_op_names_node_and_op():
    """A 4-d spatial conv has no Relax op: the error names the node and op."""
    graph, _ = single(Op.CONV, A.ConvAttrs((1,) * 4, (0,) * 8, (1,) * 4), [
        ("x", _rand((1, 1, 2, 2, 2, 2)))], [("w", _rand((1, 1, 1, 1, 1, 1), 1))])
    with pytest.raises(LoweringError, match="Conv node 'n'.*4-d"):
        lower(graph, "x86")


def test_lower_signature_and_constants_inside():
    """main's params are the graph inputs in order; weights are bound Relax constants."""
    graph, _ = single(Op.CONV, A.ConvAttrs((1, 1), (0, 0, 0, 0), (1, 1), 1), [X4],
                      [("w", _rand((3, 4, 1, 1), 1))])
    mod = lower(graph, "x86")
    main = mod["main"]
    assert [p.name for p in main.params] == ["x"]
    assert "metadata" in mod.script() or "R.const" in mod.script()
