"""The reference Interpreter: feed validation, the run_node seam, memory freeing, outputs that
are graph inputs or constants, declared output dtypes, and error paths."""

from __future__ import annotations

import numpy as np
import pytest
from lowbit.ir import FLOAT32, FLOAT64, INT32, DType, ExecutionError, Graph, Op, attrs
from lowbit.runtime.reference import Interpreter, evaluate_node, run_reference


def relu_chain(length: int = 6) -> Graph:
    """x -> relu -> add(bias) -> relu -> ... (``length`` nodes), output the last value."""
    g = Graph("chain")
    v = g.add_input("x", FLOAT32, (2, 3))
    bias = g.add_const(np.full((3,), 0.5, np.float32), "bias")
    for i in range(length):
        v = g.make(Op.RELU, v, name=f"relu{i}") if i % 2 == 0 else g.make(Op.ADD, v, bias)
    g.outputs = [v]
    return g


def test_runs_and_matches_numpy():
    g = relu_chain(4)
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    out = run_reference(g, {"x": x})
    assert list(out) == [g.outputs[0].name]
    want = np.maximum(np.maximum(x, 0) + 0.5, 0) + 0.5
    np.testing.assert_array_equal(out[g.outputs[0].name], want)


def test_missing_input():
    with pytest.raises(ExecutionError, match=r"missing input\(s\) \['x'\]"):
        run_reference(relu_chain(), {})


def test_unknown_input_names_listed():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ExecutionError, match=r"unknown input name\(s\) \['y'\].*\['x'\]"):
        run_reference(relu_chain(), {"x": x, "y": x})


def test_wrong_dtype_says_expected():
    with pytest.raises(ExecutionError, match="'x' has dtype float64 but the graph expects "
                                             "float32"):
        run_reference(relu_chain(), {"x": np.zeros((2, 3))})


def test_wrong_shape():
    with pytest.raises(ExecutionError, match=r"'x' has shape \[3, 2\].*expects \[2, 3\]"):
        run_reference(relu_chain(), {"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(ExecutionError, match=r"'x' has shape \[6\]"):
        run_reference(relu_chain(), {"x": np.zeros(6, np.float32)})


def test_sub_byte_input_values_must_fit():
    g = Graph()
    x = g.add_input("x", DType.int(4), (3,))
    g.outputs = [g.make(Op.RELU, x, name="y")]
    out = run_reference(g, {"x": np.array([-8, 0, 7], np.int8)})["y"]
    np.testing.assert_array_equal(out, [0, 0, 7])
    assert out.dtype == np.int8
    with pytest.raises(ExecutionError, match=r"'x' is int4.*outside \[-8, 7\]"):
        run_reference(g, {"x": np.array([-8, 9, 7], np.int8)})


def test_outputs_may_be_inputs_consts_and_in_declared_order():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2,))
    c = g.add_const(np.array([1, 2, 3], np.int32), "table")
    y = g.make(Op.NEG, x, name="neg")
    g.outputs = [y, x, c]
    x_in = np.array([1.5, -2.0], np.float32)
    out = run_reference(g, {"x": x_in})
    assert list(out) == ["neg", "x", c.name]
    np.testing.assert_array_equal(out["x"], x_in)
    np.testing.assert_array_equal(out[c.name], [1, 2, 3])
    assert out[c.name].dtype == np.int32
    np.testing.assert_array_equal(out["neg"], -x_in)


def test_intermediate_value_that_is_also_an_output_is_kept():
    g = Graph()
    x = g.add_input("x", FLOAT32, (3,))
    a = g.make(Op.RELU, x, name="a")
    b = g.make(Op.NEG, a, name="b")
    g.outputs = [b, a]
    out = run_reference(g, {"x": np.array([-1, 0, 2], np.float32)})
    np.testing.assert_array_equal(out["a"], [0, 0, 2])
    np.testing.assert_array_equal(out["b"], [0, 0, -2])


def test_output_dtype_is_the_declared_one():
    # the node declares float64 for a float32 computation: the interpreter stores float64
    g = Graph()
    x = g.add_input("x", FLOAT32, (2,))
    y = g.add_node(Op.RELU, [x], out_types=[(FLOAT64, (2,))]).output
    g.outputs = [y]
    out = run_reference(g, {"x": np.array([1, -1], np.float32)})[y.name]
    assert out.dtype == np.float64


class Recorder(Interpreter):
    """Records the live environment size and replaces Relu by a clamp at 1 (the seam)."""

    def __init__(self, graph):
        super().__init__(graph)
        self.live: list[int] = []
        self.seen: list[str] = []

    def run_node(self, node, inputs):
        self.live.append(len(self.env))
        self.seen.append(node.name)
        if node.op == Op.RELU:
            return [np.minimum(np.maximum(inputs[0], 0), 1).astype(inputs[0].dtype)]
        return super().run_node(node, inputs)


def test_run_node_override_changes_results_and_sees_every_node_in_order():
    g = relu_chain(3)
    interp = Recorder(g)
    out = interp.run({"x": np.full((2, 3), 5.0, np.float32)})
    assert interp.seen == [n.name for n in g.nodes]
    np.testing.assert_array_equal(out[g.outputs[0].name], np.ones((2, 3)))


def test_intermediates_are_freed_after_their_last_use():
    g = relu_chain(12)
    interp = Recorder(g)
    interp.run({"x": np.ones((2, 3), np.float32)})
    # only the value being consumed is alive when each node runs (constants are not in env)
    assert max(interp.live) == 1
    assert interp.env == {}


def test_fan_out_value_survives_until_its_last_user():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2,))
    a = g.make(Op.RELU, x, name="a")
    b = g.make(Op.NEG, a, name="b")
    c = g.make(Op.EXP, b, name="c")
    d = g.make(Op.ADD, c, a, name="d")
    g.outputs = [d]
    xin = np.array([-1.0, 2.0], np.float32)
    out = run_reference(g, {"x": xin})
    a_ = np.maximum(xin, 0)
    np.testing.assert_allclose(out["d"], np.exp(-a_) + a_, rtol=1e-6)


def test_same_value_twice_as_input():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2,))
    a = g.make(Op.RELU, x, name="a")
    y = g.make(Op.MUL, a, a, name="y")
    g.outputs = [y]
    out = run_reference(g, {"x": np.array([3.0, -1.0], np.float32)})
    np.testing.assert_array_equal(out["y"], [9.0, 0.0])


def test_shape_mismatch_between_kernel_and_ir_is_reported():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2, 3))
    y = g.add_node(Op.RELU, [x], name="bad", out_types=[(FLOAT32, (3, 2))]).output
    g.outputs = [y]
    with pytest.raises(ExecutionError, match=r"'bad'.*shape \[2, 3\].*declares \[3, 2\]"):
        run_reference(g, {"x": np.zeros((2, 3), np.float32)})


def test_unsorted_graph_is_reported():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2,))
    a = g.make(Op.RELU, x, name="a")
    b = g.make(Op.NEG, a, name="b")
    g.nodes.reverse()
    g.outputs = [b]
    with pytest.raises(ExecutionError, match="'b' reads %a before it is computed"):
        run_reference(g, {"x": np.zeros(2, np.float32)})


def test_numpy_failure_becomes_execution_error_naming_the_node():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2, 3))
    y = g.add_node(Op.RESHAPE, [x], attrs.ReshapeAttrs((4, 2)), name="reshape_bad",
                   out_types=[(FLOAT32, (4, 2))]).output
    g.outputs = [y]
    with pytest.raises(ExecutionError, match="Reshape node 'reshape_bad' failed"):
        run_reference(g, {"x": np.zeros((2, 3), np.float32)})


def test_float_edge_values_do_not_warn_or_raise():
    g = Graph()
    x = g.add_input("x", FLOAT32, (3,))
    y = g.make(Op.RECIPROCAL, g.make(Op.LOG, x), name="y")
    g.outputs = [y]
    with np.errstate(all="raise"):  # the interpreter must not trip the caller's settings
        out = run_reference(g, {"x": np.array([0.0, 1.0, -1.0], np.float32)})["y"]
    assert out[0] == 0.0 and np.isinf(out[1]) and np.isnan(out[2])


def test_evaluate_node_for_constant_folding():
    g = Graph()
    a = g.add_const(np.array([[1, 2], [3, 4]], np.int32), "a")
    b = g.add_const(np.array([10, 20], np.int32), "b")
    node = g.add_node(Op.ADD, [a, b])
    (out,) = evaluate_node(node, [a.const, b.const])
    np.testing.assert_array_equal(out, [[11, 22], [13, 24]])
    assert out.dtype == np.int32 and node.output.dtype == INT32


def test_evaluate_node_wraps_kernel_errors():
    g = Graph()
    x = g.add_input("x", FLOAT32, (2, 3))
    node = g.add_node(Op.TRANSPOSE, [x], attrs.TransposeAttrs((0, 0)), name="tr",
                      out_types=[(FLOAT32, (2, 2))])
    with pytest.raises(ExecutionError, match="Transpose node 'tr' failed"):
        evaluate_node(node, [np.zeros((2, 3), np.float32)])


def _vgg19(rng) -> Graph:
    """VGG-19 at 224x224 with random weights (16 3x3 convs, 5 maxpools, 3 Gemms)."""
    g = Graph("vgg19")
    x = g.add_input("x", FLOAT32, (1, 3, 224, 224))
    channels = 3
    for repeat, width in [(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)]:
        for _ in range(repeat):
            w = g.add_const(rng.standard_normal((width, channels, 3, 3), np.float32) * 0.05)
            b = g.add_const(np.zeros(width, np.float32))
            x = g.make(Op.RELU, g.make(Op.CONV, x, w, b, attrs=attrs.ConvAttrs(
                (1, 1), (1, 1, 1, 1), (1, 1))))
            channels = width
        x = g.make(Op.MAXPOOL, x, attrs=attrs.PoolAttrs((2, 2), (2, 2), (0,) * 4, (1, 1)))
    x = g.make(Op.FLATTEN, x, attrs=attrs.FlattenAttrs(1))
    for fan_in, fan_out in [(25088, 4096), (4096, 4096), (4096, 1000)]:
        w = g.add_const(rng.standard_normal((fan_out, fan_in), np.float32) * 0.01)
        x = g.make(Op.GEMM, x, w, g.add_const(np.zeros(fan_out, np.float32)),
                   attrs=attrs.GemmAttrs(trans_b=True))
    g.outputs = [g.make(Op.SOFTMAX, x, attrs=attrs.SoftmaxAttrs(1))]
    return g


@pytest.mark.slow
def test_vgg19_size_graph_runs():
    """A vgg19-size graph (548 MB of weights) at 224x224 runs; speed is a benchmark matter
    (bench/bench_import.py), not asserted here."""
    rng = np.random.default_rng(0)
    g = _vgg19(rng)
    x = rng.standard_normal((1, 3, 224, 224), np.float32)
    out = run_reference(g, {"x": x})[g.outputs[0].name]
    assert out.shape == (1, 1000) and abs(float(out.sum()) - 1.0) < 1e-4
