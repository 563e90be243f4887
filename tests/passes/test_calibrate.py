"""calibrate: observers fill activation scales / zero points; pass-through while observing;
signedness from data; binary scales; determinism; errors. Also the fake-quant simulator."""

import numpy as np
import pytest
from lowbit.compiler.recipes import preset
from lowbit.ir import FLOAT32, CalibrationError, Graph, Op, QKind, verify
from lowbit.ir.qformats import activation_qtype
from lowbit.passes.calibrate import Calibrate, FakeQuantInterpreter, capture_values, fake_quantize
from lowbit.passes.insert_fake_quant import InsertFakeQuant
from lowbit.runtime.reference import Interpreter, run_reference


def two_layer_graph(batch=4):
    """x -> fc1 (MatMul + bias) -> relu -> fc2; the same weights on every call."""
    rng = np.random.default_rng(0)
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (batch, 6))
    h = g.make(Op.MATMUL, x, g.add_const(rng.standard_normal((6, 5)).astype(np.float32), "w1"),
               name="fc1")
    h = g.make(Op.ADD, h, g.add_const(np.full(5, 0.1, np.float32), "b1"), name="bias1")
    h = g.make(Op.RELU, h, name="relu")
    g.outputs = [g.make(Op.MATMUL, h, g.add_const(
        rng.standard_normal((5, 3)).astype(np.float32), "w2"), name="fc2")]
    return g


def quantized(recipe="int8", batch=4):
    g = two_layer_graph(batch)
    InsertFakeQuant(preset(recipe))(g)
    return g


def samples(n=32, low=-1.0, high=2.0, seed=1):
    return {"x": np.random.default_rng(seed).uniform(low, high, (n, 6)).astype(np.float32)}


def test_minmax_fills_exact_activation_qtypes_and_records_range():
    g = quantized()
    data = samples()
    assert Calibrate(data, "minmax")(g, check=True).changed
    verify(g)
    first = g.node_by_name("fc1/input_fq")
    x = data["x"]
    assert first.attrs.qtype == activation_qtype(float(x.min()), float(x.max()), 8, True)
    assert first.meta["calib_range"] == f"[{x.min():.6g}, {x.max():.6g}]"
    # the second FakeQuant saw the first layer's output on float (passed-through) inputs and
    # fake-quantized weights
    wq = g.node_by_name("fc1/weight_fq")
    hidden = np.maximum(x @ fake_quantize(wq.inputs[0].const, wq.attrs.qtype) + 0.1, 0)
    second = g.node_by_name("fc2/input_fq").attrs.qtype
    assert second == activation_qtype(0.0, float(hidden.max()), 8, False)
    assert second.signed is False and second.zero_point == (0,)


def _calib(graph, data):
    from lowbit.passes.calibrate import as_calibration_set

    return as_calibration_set(graph, data)


def test_capture_values_concatenates_batches():
    g = two_layer_graph()
    relu_out = g.node_by_name("fc2").inputs[0]
    data = samples()
    hidden = capture_values(g, _calib(g, data), [relu_out])[relu_out.name]
    expected = np.maximum(data["x"] @ g.node_by_name("fc1").inputs[1].const + 0.1, 0)
    np.testing.assert_allclose(hidden, expected, rtol=1e-5, atol=1e-6)


def test_capture_values_stops_after_the_last_wanted_value(monkeypatch):
    """The nodes after the captured value's consumer never run (fc2 would fail here)."""
    g = two_layer_graph()
    bias_out = g.node_by_name("relu").inputs[0]
    ran = []
    real = FakeQuantInterpreter.run_node

    def spy(self, node, inputs):
        ran.append(node.name)
        return real(self, node, inputs)

    monkeypatch.setattr(FakeQuantInterpreter, "run_node", spy)
    data = samples()
    hidden = capture_values(g, _calib(g, data), [bias_out])[bias_out.name]
    np.testing.assert_allclose(
        hidden, data["x"] @ g.node_by_name("fc1").inputs[1].const + 0.1, rtol=1e-5, atol=1e-6)
    assert "relu" not in ran and "fc2" not in ran
    assert ran.count("fc1") == len(_calib(g, data)) == 8


def test_signed_follows_the_observed_range():
    g = quantized()
    Calibrate(samples(low=0.0, high=1.0), "minmax")(g)
    assert g.node_by_name("fc1/input_fq").attrs.qtype.signed is False
    g = quantized()
    Calibrate(samples(low=-1.0, high=1.0), "minmax")(g)
    assert g.node_by_name("fc1/input_fq").attrs.qtype.signed is True


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_every_method_calibrates_deterministically(method):
    data = samples()
    data["x"][0, 0] = 40.0  # one outlier: clipping methods choose a smaller range
    runs = []
    for _ in range(2):
        g = quantized()
        Calibrate(data, method)(g)
        runs.append([n.attrs for n in g.nodes if n.op == Op.FAKE_QUANT])
        assert all(n.attrs.qtype.scale for n in g.nodes if n.op == Op.FAKE_QUANT)
    assert runs[0] == runs[1]
    scale = runs[0][1].qtype.scale[0]  # fc1/input_fq (after fc1/weight_fq)
    minmax = activation_qtype(float(data["x"].min()), 40.0, 8, True).scale[0]
    if method == "minmax":
        assert scale == pytest.approx(minmax)
    elif method == "percentile":
        assert scale < minmax
    else:
        assert scale <= minmax


def test_second_run_reports_no_change():
    g = quantized()
    Calibrate(samples(), "minmax")(g)
    before = str(g)
    assert Calibrate(samples(seed=5), "minmax")(g, check=True).changed is False
    assert str(g) == before


def test_binary_activation_scale_is_mean_abs():
    """w1a1 keeps the first and last layer int8, so the middle layer gets sign activations
    with the per-tensor scale mean|x| of its (pass-through) input."""
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (4, 6))
    h = g.make(Op.MATMUL, x, g.add_const(np.eye(6, dtype=np.float32), "w1"), name="a")
    h = g.make(Op.MATMUL, h, g.add_const(np.eye(6, dtype=np.float32), "w2"), name="b")
    g.outputs = [g.make(Op.MATMUL, h, g.add_const(np.eye(6, dtype=np.float32), "w3"),
                        name="c")]
    InsertFakeQuant(preset("w1a1"))(g)
    data = samples()
    Calibrate(data, "minmax")(g)
    qtype = g.node_by_name("b/input_fq").attrs.qtype
    assert qtype.kind == QKind.BINARY and qtype.bits == 1
    # b's input is x @ fake_quant_int8(I) = x (the identity is exact at int8)
    assert qtype.scale[0] == pytest.approx(float(np.abs(data["x"]).mean()), rel=1e-5)
    assert g.node_by_name("c/input_fq").attrs.qtype.kind == QKind.UNIFORM


def test_bad_calibration_data_is_a_calibration_error():
    g = quantized()
    with pytest.raises(CalibrationError, match="'y'"):
        Calibrate({"y": samples()["x"]}, "minmax")(g)
    with pytest.raises(CalibrationError, match="needs sample data"):
        Calibrate(None, "minmax")(quantized())
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        Calibrate(samples(), "median")


def test_fake_quant_simulator_matches_registered_kernel_and_needs_calibration():
    g = quantized("w4a8")
    feed = {"x": samples(4)["x"]}
    with pytest.raises(CalibrationError, match="no scale yet"):
        FakeQuantInterpreter(g).run(feed)
    Calibrate(samples(), "minmax")(g)
    ours = FakeQuantInterpreter(g).run(feed)
    kernel = run_reference(g, feed)
    np.testing.assert_array_equal(ours["fc2"], kernel["fc2"])
    # and it really quantizes: differs from the float graph, but not by much
    float_out = Interpreter(two_layer_graph()).run(feed)["fc2"]
    assert not np.array_equal(ours["fc2"], float_out)


def test_no_progress_output_when_not_a_terminal(capsys):
    g = quantized()
    Calibrate(samples(), "minmax")(g)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
