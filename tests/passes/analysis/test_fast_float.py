"""fast_float: torch convs agree with the reference conv; batch-N copies of a graph and the
check that rejects a graph whose batch is not axis 0."""

import numpy as np
import pytest
from lowbit.ir import FLOAT32, Graph, Op
from lowbit.ir.attrs import ConvAttrs, ReshapeAttrs, TransposeAttrs
from lowbit.passes.analysis.fast_float import (
    FastFakeQuantInterpreter,
    one_torch_thread,
    rebatched,
    same_outputs,
    stack_feeds,
)
from lowbit.runtime.reference import Interpreter


def conv_graph(x_shape, w_shape, strides, pads, dilations, group, batch_reshape=False):
    rng = np.random.default_rng(0)
    g = Graph("conv")
    x = g.add_input("x", FLOAT32, x_shape)
    w = g.add_const(rng.standard_normal(w_shape).astype(np.float32), "w")
    b = g.add_const(rng.standard_normal(w_shape[0]).astype(np.float32), "b")
    y = g.make(Op.CONV, x, w, b, attrs=ConvAttrs(strides, pads, dilations, group), name="conv")
    if batch_reshape:  # an exporter's Flatten: the batch baked into the target shape
        numel = int(np.prod(g.node_by_name("conv").outputs[0].shape[1:]))
        y = g.make(Op.RESHAPE, y, attrs=ReshapeAttrs((x_shape[0], numel)), name="flatten")
    g.outputs = [y]
    return g


CASES = [  # x shape, w shape, strides, pads (begins + ends), dilations, group
    ((2, 8, 11, 9), (16, 8, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((1, 8, 12, 12), (8, 2, 3, 3), (2, 2), (0, 1, 2, 0), (1, 1), 4),  # asymmetric pads
    ((3, 4, 10, 10), (6, 4, 3, 2), (1, 2), (2, 0, 2, 1), (2, 1), 1),  # dilation
    ((2, 6, 17), (4, 3, 5), (2,), (2, 1), (1,), 2),  # 1-D
    ((2, 16, 7, 7), (16, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),  # depthwise
]


@pytest.mark.parametrize("case", CASES)
def test_torch_conv_matches_the_reference(case):
    g = conv_graph(*case)
    x = np.random.default_rng(1).standard_normal(case[0]).astype(np.float32)
    want = Interpreter(g).run({"x": x})
    with one_torch_thread():
        got = FastFakeQuantInterpreter(g).run({"x": x})
    for name in want:
        assert got[name].dtype == want[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_rebatched_retargets_a_baked_batch_and_matches_per_batch_runs():
    g = conv_graph((2, 8, 6, 6), (4, 8, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                   batch_reshape=True)
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((2, 8, 6, 6)).astype(np.float32)} for _ in range(3)]
    stacked = stack_feeds(feeds)
    assert stacked["x"].shape == (6, 8, 6, 6)
    big = rebatched(g, stacked)
    assert big is not None and big.outputs[0].shape == (6, 144)
    assert g.outputs[0].shape == (2, 144)  # the original graph is untouched
    parts = [Interpreter(g).run(f) for f in feeds]
    with one_torch_thread():
        assert same_outputs(FastFakeQuantInterpreter(big).run(stacked), parts)


def test_a_graph_whose_batch_is_not_axis_0_is_rejected():
    """x (2, 3) -> Transpose -> Reshape (1, 6): rebatching axis 0 mixes the samples."""
    g = Graph("mix")
    x = g.add_input("x", FLOAT32, (2, 3))
    t = g.make(Op.TRANSPOSE, x, attrs=TransposeAttrs((1, 0)), name="t")
    g.outputs = [g.make(Op.RESHAPE, t, attrs=ReshapeAttrs((1, 6)), name="r")]
    feeds = [{"x": np.arange(6, dtype=np.float32).reshape(2, 3) + 10 * i} for i in range(2)]
    big = rebatched(g, stack_feeds(feeds))
    if big is not None:  # shapes re-infer to (1, 12); the values must give it away
        parts = [Interpreter(g).run(f) for f in feeds]
        assert not same_outputs(Interpreter(big).run(stack_feeds(feeds)), parts)


def test_feeds_that_do_not_stack():
    a = {"x": np.zeros((2, 3), np.float32)}
    assert stack_feeds([a]) is None  # one batch: nothing to stack
    assert stack_feeds([a, {"x": np.zeros((2, 4), np.float32)}]) is None
    assert stack_feeds([a, {"y": np.zeros((2, 3), np.float32)}]) is None
    assert stack_feeds([{"x": np.float32(1)}, {"x": np.float32(2)}]) is None


def test_without_torch_it_is_the_reference_simulator(monkeypatch):
    from lowbit.passes.analysis import fast_float

    monkeypatch.setattr(fast_float, "has_torch", lambda: False)
    g = conv_graph(*CASES[0])
    x = np.random.default_rng(3).standard_normal(CASES[0][0]).astype(np.float32)
    with one_torch_thread():
        got = FastFakeQuantInterpreter(g).run({"x": x})
    want = Interpreter(g).run({"x": x})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_channels_last_results_feed_numpy_ops_and_the_next_conv():
    """A 2-D conv returns NCHW arrays with channels-last strides; Relu (torch), Add and the
    Reshape + MatMul of a head (numpy), and the next conv read them as the reference does."""
    rng = np.random.default_rng(3)
    g = Graph("chain")
    x = g.add_input("x", FLOAT32, (2, 6, 9, 9))

    def const(shape, name):
        return g.add_const(rng.standard_normal(shape).astype(np.float32), name)

    a = g.make(Op.CONV, x, const((8, 6, 3, 3), "w1"), const(8, "b1"),
               attrs=ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1), 1), name="c1")
    r = g.make(Op.RELU, a, name="r1")
    b = g.make(Op.CONV, r, const((8, 8, 3, 3), "w2"), None,
               attrs=ConvAttrs((1, 1), (0, 1, 2, 1), (1, 1), 1), name="c2")
    s = g.make(Op.ADD, b, r, name="add")
    flat = g.make(Op.RESHAPE, s, attrs=ReshapeAttrs((2, 8 * 9 * 9)), name="flat")
    g.outputs = [g.make(Op.MATMUL, flat, const((8 * 9 * 9, 5), "wf"), name="fc"), r]
    feed = {"x": rng.standard_normal((2, 6, 9, 9)).astype(np.float32)}
    want = Interpreter(g).run(feed)
    with one_torch_thread():
        got = FastFakeQuantInterpreter(g).run(feed)
    assert not got[r.name].flags.c_contiguous  # the channels-last layout came through
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_conv_weights_are_converted_once_per_read_only_array():
    """_channels_last_weight: a read-only (graph constant) weight is converted once and the
    same tensor comes back; a writable array (a fake-quantized weight) is converted every
    call, so changing it in place is seen."""
    from lowbit.passes.analysis import fast_float

    rng = np.random.default_rng(0)
    const = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    const.setflags(write=False)
    first = fast_float._channels_last_weight(const)
    assert fast_float._channels_last_weight(const) is first
    np.testing.assert_array_equal(first.numpy(), const)
    live = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fast_float._channels_last_weight(live)
    live[0] = 7.0
    np.testing.assert_array_equal(fast_float._channels_last_weight(live).numpy(), live)
    assert id(live) not in fast_float._WEIGHTS
