"""layer_sensitivity on the digits CNN: ranking, metrics, caching, determinism, errors."""

from dataclasses import replace
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.compiler import quantize as quantize_module
from lowbit.compiler.recipes import ActSpec, WeightSpec, preset
from lowbit.ir.errors import QuantizationError
from lowbit.passes.analysis import DEFAULT_CANDIDATES, Candidate, layer_sensitivity
from lowbit.passes.analysis import sensitivity as sensitivity_module
from lowbit.passes.analysis.sensitivity import PTQ_ITERS, clear_cache

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MODEL, CALIB = EXAMPLES / "digits_cnn.onnx", EXAMPLES / "digits_calib.npz"
SHAPES = {"input": (16, 1, 8, 8)}
CANDS = (
    Candidate("w8a8", WeightSpec("uniform", 8), ActSpec(8)),
    Candidate("w8a2", WeightSpec("uniform", 8), ActSpec(2)),
    Candidate("w2a8", WeightSpec("uniform", 2), ActSpec(8)),
    Candidate("w2a8-bitserial", WeightSpec("uniform", 2), ActSpec(8), kernel="bitserial"),
    Candidate("binarya8", WeightSpec("binary", 1), ActSpec(8)),
)


@pytest.fixture(scope="module")
def table():
    clear_cache()
    return layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, disk_cache=False)


def test_layers_are_the_quantizable_ones(table):
    assert [i.op for i in table.layers] == ["Conv", "Conv", "Conv", "MatMul"]
    assert [i.params for i in table.layers] == [144, 4608, 18432, 640]
    assert table.sensitivity.shape == table.weight_bytes.shape == (4, len(CANDS))
    assert not table.sensitivity.flags.writeable


def test_low_bits_damage_more_than_8_bits(table):
    for layer in table.layers:
        w8 = table.value(layer.name, "w8a8")
        assert table.value(layer.name, "w2a8") > 10 * w8, layer.name
        assert table.value(layer.name, "binarya8") > 10 * w8, layer.name
        assert table.value(layer.name, "w8a2") > w8, layer.name
        # fewer bits, fewer bytes
        row = table.weight_bytes[table.layer_index(layer.name)]
        assert row[0] > row[2] > row[4]


def test_first_conv_among_most_sensitive(table):
    at_2bit = table.sensitivity[:, table.candidate_index("w2a8")]
    top_half = np.argsort(-at_2bit)[: len(at_2bit) // 2]
    assert 0 in top_half
    # the classifier (last layer, few outputs) is the least sensitive at 2 bits
    assert np.argmin(at_2bit) == 3


def test_kernel_only_variants_share_the_measurement(table):
    a, b = table.candidate_index("w2a8"), table.candidate_index("w2a8-bitserial")
    np.testing.assert_array_equal(table.sensitivity[:, a], table.sensitivity[:, b])


def test_sqnr_cost_is_noise_power_of_a_single_layer_quantization(table):
    """Recompute one entry by hand: quantize only the second conv at w2a8 and compare."""
    layer = table.layers[1].name
    base = preset("none")  # w2a8 is measured after PTQ_ITERS steps of reconstruction
    recipe = replace(base, nodes={layer: CANDS[2].override},
                     ptq=replace(base.ptq, reconstruct=True, iters=PTQ_ITERS))
    fq = lowbit.quantize(MODEL, calib=CALIB, recipe=recipe, input_shapes=SHAPES, fold=False)
    fl = lowbit.quantize(MODEL, quant="none", input_shapes=SHAPES)
    inputs = np.load(CALIB)["input"]
    noise = signal = 0.0
    for start in range(0, len(inputs) - 15, 16):
        feed = {"input": inputs[start:start + 16]}
        f = next(iter(lowbit.run_reference(fl, feed).values())).astype(np.float64)
        q = next(iter(lowbit.run_reference(fq, feed).values())).astype(np.float64)
        noise += np.sum((q - f) ** 2)
        signal += np.sum(f ** 2)
    # the measurement runs float convs on torch (fast_float): float32 sums in another order
    assert table.value(layer, "w2a8") == pytest.approx(noise / signal, rel=1e-5)
    sqnr_db = 10 * np.log10(signal / noise)
    assert table.value(layer, "w2a8") == pytest.approx(10 ** (-sqnr_db / 10), rel=1e-5)


def test_deterministic_and_cached(table, monkeypatch, tmp_path):
    clear_cache()
    again = layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.sensitivity, table.sensitivity)
    np.testing.assert_array_equal(again.weight_bytes, table.weight_bytes)
    assert (tmp_path / "sensitivity.json").is_file()

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached pair was measured again")

    monkeypatch.setattr(quantize_module, "quantize", forbidden)
    monkeypatch.setattr(sensitivity_module._FloatPrefix, "quantize_one", forbidden)
    cached = layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, cache_dir=tmp_path)  # memory
    np.testing.assert_array_equal(cached.sensitivity, table.sensitivity)
    clear_cache()
    from_disk = layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, cache_dir=tmp_path)
    np.testing.assert_array_equal(from_disk.sensitivity, table.sensitivity)
    np.testing.assert_array_equal(from_disk.weight_bytes, table.weight_bytes)


def test_prefix_resume_equals_whole_runs(monkeypatch):
    """Resuming from the float prefix gives the numbers of whole-graph runs (plain rounding:
    reconstruction amplifies the last float bit, and whole runs calibrate with numpy convs,
    the prefix with torch's)."""
    clear_cache()
    resumed = layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, disk_cache=False, ptq_iters=0)
    clear_cache()
    monkeypatch.setattr(sensitivity_module, "PREFIX_CACHE_BYTES", 0)  # force whole runs
    whole = layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, disk_cache=False, ptq_iters=0)
    np.testing.assert_allclose(whole.sensitivity, resumed.sensitivity, rtol=2e-3)
    np.testing.assert_array_equal(whole.weight_bytes, resumed.weight_bytes)
    clear_cache()


def test_batched_prefix_equals_per_batch_runs(table, monkeypatch):
    """All calibration batches run as one batch-N graph give the per-batch numbers,
    reconstruction included (torch's conv sums in another order at another batch)."""
    from lowbit.passes.analysis import fast_float

    batched = []
    real = sensitivity_module._FloatPrefix._batched
    monkeypatch.setattr(sensitivity_module._FloatPrefix, "_batched",
                        lambda self, g, f: batched.append(real(self, g, f)) or batched[-1])
    clear_cache()
    layer_sensitivity(MODEL, CANDS[:1], CALIB, SHAPES, disk_cache=False)
    assert batched == [True]  # the digits CNN runs batched
    clear_cache()
    monkeypatch.setattr(fast_float, "stack_feeds", lambda feeds: None)
    per_batch = layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, disk_cache=False)
    assert batched[-1] is False
    np.testing.assert_allclose(per_batch.sensitivity, table.sensitivity, rtol=1e-4)
    np.testing.assert_array_equal(per_batch.weight_bytes, table.weight_bytes)
    clear_cache()


def test_kl_and_callable_metrics():
    cands = CANDS[:1] + CANDS[2:3]
    kl = layer_sensitivity(MODEL, cands, CALIB, SHAPES, metric="kl")
    assert kl.metric == "kl"
    assert np.all(kl.sensitivity >= 0)
    assert np.all(kl.sensitivity[:, 1] > kl.sensitivity[:, 0])
    seen = []

    def max_abs(float_out, quant_out):
        seen.append(float_out.shape)
        return float(np.max(np.abs(float_out - quant_out)))

    custom = layer_sensitivity(MODEL, cands, CALIB, SHAPES, metric=max_abs)
    assert custom.metric == "max_abs"
    assert seen[0] == (256, 10)  # every calibration batch, concatenated
    assert np.all(custom.sensitivity[:, 1] > custom.sensitivity[:, 0])


def test_default_candidates_cover_the_formats():
    names = {c.name for c in DEFAULT_CANDIDATES}
    assert len(names) == len(DEFAULT_CANDIDATES) == 21
    assert {c.weights.format for c in DEFAULT_CANDIDATES} == {
        "uniform", "ternary", "binary", "pow2", "codebook"}
    assert {c.activations.bits for c in DEFAULT_CANDIDATES} == {8, 4, 2}


def test_errors():
    with pytest.raises(QuantizationError, match="metric='snr'"):
        layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, metric="snr")
    with pytest.raises(QuantizationError, match="base='int8'"):
        layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, base="int8")
    with pytest.raises(QuantizationError, match="calibration data"):
        layer_sensitivity(MODEL, CANDS, None, SHAPES)
    with pytest.raises(QuantizationError, match="unique"):
        layer_sensitivity(MODEL, CANDS + CANDS[:1], CALIB, SHAPES)


@pytest.fixture
def pmap_jobs(monkeypatch):
    """The ``jobs`` of every pmap call layer_sensitivity makes (and no minimum workload)."""
    from lowbit.compiler import parallel

    real, calls = parallel.pmap, []

    def spy(fn, items, jobs=1, **kwargs):
        calls.append(jobs)
        return real(fn, items, jobs, **kwargs)

    monkeypatch.setattr(parallel, "pmap", spy)
    monkeypatch.setattr(sensitivity_module, "MIN_PARALLEL_MEASUREMENTS", 0)
    return calls


def test_workers_give_the_same_table(table, pmap_jobs):
    """Layers measured on two worker processes: the same numbers, bit for bit."""
    clear_cache()
    par = layer_sensitivity(MODEL, CANDS, CALIB, SHAPES, disk_cache=False, jobs=2)
    assert pmap_jobs == [2]
    np.testing.assert_array_equal(par.sensitivity, table.sensitivity)
    np.testing.assert_array_equal(par.weight_bytes, table.weight_bytes)


def test_a_metric_that_cannot_reach_workers_is_measured_here(pmap_jobs):
    def metric(f, q):  # a local function does not pickle
        return float(np.mean((f - q) ** 2))

    clear_cache()
    layer_sensitivity(MODEL, CANDS[2:3], CALIB, SHAPES, metric=metric, jobs=2)
    assert pmap_jobs == [1]


def test_lower_bit_activations_reuse_the_8_bit_reconstruction():
    """With sharing, w2a4 gets w2a8's reconstructed weights and bias; without, its own."""
    from lowbit.compiler.quantize import _float_graph
    from lowbit.passes.calibrate import as_calibration_set
    from lowbit.passes.insert_fake_quant import quantized_layers

    graph = _float_graph(MODEL, SHAPES)
    calib = as_calibration_set(graph, CALIB)
    prefix = sensitivity_module._FloatPrefix(graph, list(calib))
    layer = sensitivity_module.quantizable_layers(graph)[1].name
    w2a4 = Candidate("w2a4", WeightSpec("uniform", 2), ActSpec(4))

    def weights(g):
        (ql,) = [q for q in quantized_layers(g) if q.node.name == layer]
        return np.array(ql.weight.const), ql.weight_fq.attrs.qtype, ql.bias

    shared = {}
    a8 = weights(prefix.quantize_one(layer, CANDS[2], calib, PTQ_ITERS, shared))
    a4 = weights(prefix.quantize_one(layer, w2a4, calib, PTQ_ITERS, shared))
    own = weights(prefix.quantize_one(layer, w2a4, calib, PTQ_ITERS))
    np.testing.assert_array_equal(a4[0], a8[0])
    assert a4[1] == a8[1]
    assert not np.array_equal(own[0], a8[0])
    assert len(shared) == 1


def test_sharing_is_part_of_the_cache_key():
    w2a4 = Candidate("w2a4", WeightSpec("uniform", 2), ActSpec(4))
    cands = (CANDS[2], w2a4)
    clear_cache()
    on = layer_sensitivity(MODEL, cands, CALIB, SHAPES, disk_cache=False)
    off = layer_sensitivity(MODEL, cands, CALIB, SHAPES, disk_cache=False,
                            share_reconstruction=False)
    np.testing.assert_array_equal(on.sensitivity[:, 0], off.sensitivity[:, 0])
    assert not np.array_equal(on.sensitivity[:, 1], off.sensitivity[:, 1])
