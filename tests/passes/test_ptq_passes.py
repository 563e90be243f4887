"""The PTQ pass wrappers: bias_correction and reconstruct on calibrated fake-quant graphs
(the math itself is tested with lowbit.passes.ptq)."""

import numpy as np
import pytest
from lowbit.compiler.recipes import preset, replace
from lowbit.ir import FLOAT32, Graph, Op, QKind, verify
from lowbit.ir import attrs as A
from lowbit.ir.qformats import dequantize, fit_weights, quantize
from lowbit.ir.qtype import Granularity
from lowbit.passes.bias_correction import BiasCorrection
from lowbit.passes.calibrate import Calibrate, FakeQuantInterpreter, fake_quantize
from lowbit.passes.insert_fake_quant import InsertFakeQuant, quantized_layers
from lowbit.passes.reconstruct import Reconstruct, transpose_qtype
from lowbit.runtime.reference import run_reference


def conv_mlp_graph(batch=8):
    """conv (3x3, bias) -> relu -> reshape -> MatMul + bias; fixed weights."""
    rng = np.random.default_rng(0)
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (batch, 2, 5, 5))
    c = g.make(Op.CONV, x, g.add_const(rng.standard_normal((6, 2, 3, 3)).astype(np.float32),
                                       "wc"),
               g.add_const(rng.standard_normal(6).astype(np.float32), "bc"),
               attrs=A.ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1)), name="conv")
    r = g.make(Op.RELU, c, name="relu")
    f = g.make(Op.RESHAPE, r, attrs=A.ReshapeAttrs((batch, 150)), name="flat")
    m = g.make(Op.MATMUL, f, g.add_const(rng.standard_normal((150, 4)).astype(np.float32)
                                         * 0.1, "wf"), name="fc")
    g.outputs = [g.make(Op.ADD, m, g.add_const(np.zeros(4, np.float32), "bf"), name="out")]
    return g


def calib_data(n=64):
    rng = np.random.default_rng(1)
    return {"x": (rng.standard_normal((n, 2, 5, 5)) + 0.5).astype(np.float32)}


def prepared(recipe):
    g = conv_mlp_graph()
    InsertFakeQuant(replace(preset(recipe), first_last_int8=False))(g)
    Calibrate(calib_data(), "minmax")(g)
    return g


def output_error(g):
    """Mean squared error of the fake-quant graph vs the float graph on the calib data."""
    float_graph = conv_mlp_graph()
    x = calib_data()["x"]
    err = 0.0
    for start in range(0, len(x), 8):
        feed = {"x": x[start:start + 8]}
        err += float(((FakeQuantInterpreter(g).run(feed)["out"]
                       - run_reference(float_graph, feed)["out"]) ** 2).sum())
    return err


def mean_output_shift(g):
    float_graph = conv_mlp_graph()
    x = calib_data()["x"][:8]
    diff = FakeQuantInterpreter(g).run({"x": x})["out"] - run_reference(float_graph,
                                                                       {"x": x})["out"]
    return float(np.abs(diff.mean(axis=0)).mean())


def test_bias_correction_changes_only_biases_and_reduces_the_mean_shift():
    g = prepared("ternary")
    before_shift = mean_output_shift(g)
    weights = [layer.weight.const for layer in quantized_layers(g)]
    result = BiasCorrection(calib_data())(g, check=True)
    verify(g)
    assert result.changed
    assert [layer.weight.const for layer in quantized_layers(g)] == weights
    assert all("max |b' - b|" in layer.weight_fq.meta["bias_correction"]
               for layer in quantized_layers(g))
    assert mean_output_shift(g) < before_shift
    assert BiasCorrection(calib_data())(g).changed is False


@pytest.mark.parametrize("recipe", ["w2a8", "ternary"])
def test_reconstruct_lowers_output_error_and_keeps_fake_quant_idempotent(recipe):
    g = prepared(recipe)
    before = output_error(g)
    result = Reconstruct(calib_data(), iters=60)(g, check=True)
    verify(g)
    assert result.changed
    after = output_error(g)
    assert after < before
    for layer in quantized_layers(g):
        fq = layer.weight_fq
        assert fq.meta["ptq"].startswith(("adaround", "round"))
        w = fq.inputs[0].const
        # the stored weight sits on the grid: fake-quantizing it is the identity
        np.testing.assert_array_equal(fake_quantize(w, fq.attrs.qtype), w)
    assert Reconstruct(calib_data(), iters=60)(g).changed is False


def test_reconstruct_is_deterministic():
    texts = []
    for _ in range(2):
        g = prepared("w2a8")
        Reconstruct(calib_data(), iters=30, seed=3)(g)
        texts.append(str(g) + repr([fq.inputs[0].const.tobytes() for fq in
                                     (layer.weight_fq for layer in quantized_layers(g))]))
    assert texts[0] == texts[1]


@pytest.mark.parametrize("granularity", [Granularity(1), Granularity(0, 4), Granularity()])
@pytest.mark.parametrize("kind,bits", [(QKind.UNIFORM, 3), (QKind.CODEBOOK, 2)])
def test_transpose_qtype_matches_transposed_weight(granularity, kind, bits):
    w = np.random.default_rng(2).standard_normal((10, 3)).astype(np.float32)
    qtype, codes = fit_weights(w, kind, bits, granularity=granularity)
    flipped = transpose_qtype(qtype, w.shape)
    np.testing.assert_array_equal(quantize(w.T, flipped), codes.T)
    np.testing.assert_array_equal(dequantize(codes.T, flipped), dequantize(codes, qtype).T)
    assert transpose_qtype(flipped, w.T.shape) == qtype


def test_reconstruct_run_many_equals_run_on_each():
    """Copies of one model at other weight formats: run_many batches the layers that see the
    same inputs (the conv of w2a8 and ternary) and leaves every graph as run() does."""
    recipes = ("w2a8", "ternary", "w4a8")
    together = [prepared(r) for r in recipes]
    results = Reconstruct(calib_data(), iters=30, seed=3).run_many(together)
    assert [r.graph for r in results] == together and all(r.changed for r in results)
    for recipe, graph in zip(recipes, together):
        alone = prepared(recipe)
        Reconstruct(calib_data(), iters=30, seed=3)(alone)
        assert str(graph) == str(alone)
        for mine, theirs in zip(quantized_layers(graph), quantized_layers(alone)):
            assert mine.weight_fq.meta["ptq"] == theirs.weight_fq.meta["ptq"]
            np.testing.assert_array_equal(mine.weight_fq.inputs[0].const,
                                          theirs.weight_fq.inputs[0].const)
    assert all(not r.changed for r in Reconstruct(calib_data(), iters=30).run_many(together))
