"""Layer-wise reconstruction: lowers the output MSE for every format, never raises it, emits
legal codes, is deterministic; the losses it reports match an independent torch conv."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lowbit.ir.attrs import ConvAttrs
from lowbit.ir.errors import CalibrationError, QuantizationError, ShapeError
from lowbit.ir.qformats import dequantize, fit_weights, quantize
from lowbit.ir.qtype import Granularity
from lowbit.passes.ptq import ReconstructionResult, reconstruct_layer, reconstruct_layers

FORMATS = [
    ("uniform", 2, {}),
    ("uniform", 4, {}),
    ("ternary", 2, {}),
    ("binary", 1, {}),
    ("pow2", 3, {}),
    ("pow2", 4, {"zero_free": True}),
    ("codebook", 2, {}),
    ("codebook", 4, {}),
]
FORMAT_IDS = [f"{k}{b}{'-nz' if o else ''}" for k, b, o in FORMATS]
SAME = ConvAttrs(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1)


def _layer(c_out=16, c_in=8, k=3, n=64, size=8, seed=0):
    """Laplacian weights with per-channel magnitudes, correlated non-negative inputs."""
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=(c_out, c_in, k, k)) * rng.uniform(0.02, 0.1, (c_out, 1, 1, 1))
    b = rng.standard_normal(c_out) * 0.1
    mix = np.eye(c_in) + 0.3 * rng.standard_normal((c_in, c_in))
    z = rng.standard_normal((n, c_in, size, size))
    x = np.maximum(np.einsum("nchw,dc->ndhw", z, mix) + 0.3, 0.0)
    return w.astype(np.float32), b.astype(np.float32), x.astype(np.float32)


def _conv_mse(x, w, b, w_q, b_q, attrs=SAME, act=None):
    """Output MSE by an independent path: torch conv (ONNX pads begin..., end...)."""
    spatial = w.ndim - 2
    pads = []
    for i in reversed(range(spatial)):
        pads += [attrs.pads[i], attrs.pads[i + spatial]]
    conv = F.conv2d if spatial == 2 else F.conv1d

    def run(weight, bias):
        xt = F.pad(torch.from_numpy(x).double(), pads)
        y = conv(xt, torch.from_numpy(np.asarray(weight)).double(),
                 None if bias is None else torch.from_numpy(np.asarray(bias)).double(),
                 stride=attrs.strides, dilation=attrs.dilations, groups=attrs.group)
        return y.relu() if act == "relu" else y

    return float(((run(w, b) - run(w_q, b_q)) ** 2).mean())


@pytest.mark.parametrize("kind,bits,options", FORMATS, ids=FORMAT_IDS)
def test_adaround_lowers_conv_output_mse_for_every_format(kind, bits, options):
    w, b, x = _layer()
    qtype, _ = fit_weights(w, kind, bits, granularity=Granularity(0), **options)
    result = reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, iters=300)
    before = _conv_mse(x, w, b, dequantize(quantize(w, qtype), qtype), b)
    after = _conv_mse(x, w, b, dequantize(result.codes, result.qtype), result.bias)
    assert result.method == "adaround"
    assert after < 0.9 * before, (before, after)
    np.testing.assert_allclose([result.loss_before, result.loss_after], [before, after],
                               rtol=1e-6)
    assert result.codes.shape == w.shape and result.codes.dtype == qtype.storage.numpy
    assert result.qtype.can_represent(result.codes)
    assert (result.qtype.kind, result.qtype.bits, result.qtype.granularity) == \
        (qtype.kind, qtype.bits, qtype.granularity)
    assert result.bias.shape == b.shape and result.bias.dtype == np.float32


@pytest.mark.parametrize("kind,bits,options", FORMATS, ids=FORMAT_IDS)
def test_adaquant_never_raises_the_loss(kind, bits, options):
    w, b, x = _layer(seed=1)
    qtype, _ = fit_weights(w, kind, bits, granularity=Granularity(0), **options)
    result = reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, method="adaquant", iters=150)
    after = _conv_mse(x, w, b, dequantize(result.codes, result.qtype), result.bias)
    assert after <= result.loss_before * (1 + 1e-9)
    assert result.qtype.can_represent(result.codes)
    if kind in ("uniform", "ternary", "pow2"):  # the scale search + STE steps do help here
        assert result.method == "adaquant" and after < 0.9 * result.loss_before


def test_relu_grouped_strided_asymmetric_pads_match_torch_conv():
    rng = np.random.default_rng(3)
    attrs = ConvAttrs(strides=(2, 1), pads=(0, 1, 1, 2), dilations=(1, 2), group=2)
    w = (rng.laplace(size=(8, 3, 3, 3)) * 0.1).astype(np.float32)
    b = (rng.standard_normal(8) * 0.1).astype(np.float32)
    x = rng.standard_normal((40, 6, 9, 7)).astype(np.float32)
    qtype, _ = fit_weights(w, "ternary", 2, granularity=Granularity(0))
    result = reconstruct_layer(w, b, x, qtype, conv_attrs=attrs, act_fn="relu", iters=200)
    before = _conv_mse(x, w, b, dequantize(quantize(w, qtype), qtype), b, attrs, "relu")
    after = _conv_mse(x, w, b, dequantize(result.codes, result.qtype), result.bias, attrs,
                      "relu")
    np.testing.assert_allclose([result.loss_before, result.loss_after], [before, after],
                               rtol=1e-5)
    assert after < 0.85 * before


def test_conv1d_without_bias():
    rng = np.random.default_rng(4)
    attrs = ConvAttrs(strides=(1,), pads=(2, 0), dilations=(1,), group=1)
    w = (rng.standard_normal((6, 4, 3)) * 0.2).astype(np.float32)
    x = rng.standard_normal((32, 4, 20)).astype(np.float32)
    qtype, _ = fit_weights(w, "pow2", 3, granularity=Granularity(0))
    result = reconstruct_layer(w, None, x, qtype, conv_attrs=attrs, iters=200)
    after = _conv_mse(x, w, None, dequantize(result.codes, result.qtype), None, attrs)
    assert result.bias is None
    assert after == pytest.approx(result.loss_after, rel=1e-6)
    assert after < 0.85 * result.loss_before


@pytest.mark.parametrize("act_fn", [None, "relu"])
def test_linear_layer(act_fn):
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((10, 48)) * 0.1).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32) * 0.1
    x = (rng.standard_normal((300, 48)) @ (np.eye(48) + 0.2 * rng.standard_normal((48, 48))))
    x = x.astype(np.float32)
    qtype, codes = fit_weights(w, "ternary", 2, granularity=Granularity(0))
    result = reconstruct_layer(w, b, x, qtype, kind="linear", act_fn=act_fn, init_codes=codes,
                               iters=300)

    def mse(wq, bq):
        y, yq = x @ w.T + b, x @ wq.T + bq
        if act_fn == "relu":
            y, yq = np.maximum(y, 0), np.maximum(yq, 0)
        return float(((y.astype(np.float64) - yq) ** 2).mean())

    # the baseline is the TWN codes given as init_codes, not quantize(w, qtype)
    assert result.loss_before == pytest.approx(mse(dequantize(codes, qtype), b), rel=1e-5)
    after = mse(dequantize(result.codes, result.qtype), result.bias)
    assert after == pytest.approx(result.loss_after, rel=1e-5)
    assert after < 0.8 * result.loss_before


@pytest.mark.parametrize("act_fn", [None, "relu"])
def test_same_seed_gives_identical_result_and_threads_are_restored(act_fn):
    w, b, x = _layer(n=48)
    qtype, _ = fit_weights(w, "uniform", 2, granularity=Granularity(0))
    threads = torch.get_num_threads()
    runs = [reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, act_fn=act_fn, iters=60,
                              max_rows=1000, batch_rows=128, seed=7) for _ in range(2)]
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(runs[0].codes, runs[1].codes)
    np.testing.assert_array_equal(runs[0].bias, runs[1].bias)
    assert runs[0].qtype == runs[1].qtype and runs[0].loss_after == runs[1].loss_after


def test_zero_iterations_and_exact_weights_keep_plain_rounding():
    w, b, x = _layer(n=16)
    qtype, _ = fit_weights(w, "uniform", 4, granularity=Granularity(0))
    codes, new_qtype, bias = reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, iters=0)
    np.testing.assert_array_equal(codes, quantize(w, qtype))
    assert new_qtype == qtype and np.array_equal(bias, b)

    on_grid = dequantize(quantize(w, qtype), qtype)  # already representable: loss 0
    result = reconstruct_layer(on_grid, b, x, qtype, conv_attrs=SAME, iters=50)
    assert result.method == "round" and result.loss_before == 0.0 == result.loss_after


def test_result_unpacks_to_codes_qtype_bias():
    w, b, x = _layer(n=8)
    qtype, _ = fit_weights(w, "binary", 1, granularity=Granularity(0))
    result = reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, iters=20)
    assert isinstance(result, ReconstructionResult)
    codes, new_qtype, bias = result
    assert codes is result.codes and new_qtype is result.qtype and bias is result.bias


def test_typical_conv_is_fast_on_one_core():
    """64x32x3x3 conv, 256 samples of 8x8, default settings: a few seconds."""
    w, b, x = _layer(c_out=64, c_in=32, n=256)
    qtype, _ = fit_weights(w, "ternary", 2, granularity=Granularity(0))
    start = time.perf_counter()
    result = reconstruct_layer(w, b, x, qtype, conv_attrs=SAME)
    elapsed = time.perf_counter() - start
    assert result.loss_after < 0.7 * result.loss_before
    assert elapsed < 20.0, f"reconstruction took {elapsed:.1f}s"


def test_errors_name_the_problem():
    w, b, x = _layer(n=4)
    qtype, _ = fit_weights(w, "ternary", 2, granularity=Granularity(0))
    with pytest.raises(CalibrationError, match="channels"):
        reconstruct_layer(w, b, x[:, :4], qtype, conv_attrs=SAME)
    with pytest.raises(CalibrationError, match="shape"):
        reconstruct_layer(w, b, x[:, :, 0], qtype, conv_attrs=SAME)
    with pytest.raises(CalibrationError, match="NaN"):
        reconstruct_layer(w, b, np.full_like(x, np.nan), qtype, conv_attrs=SAME)
    with pytest.raises(QuantizationError, match="conv_attrs"):
        reconstruct_layer(w, b, x, qtype)
    with pytest.raises(QuantizationError, match="act_fn"):
        reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, act_fn="gelu")
    with pytest.raises(QuantizationError, match="method"):
        reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, method="brecq")
    with pytest.raises(QuantizationError, match="init_codes"):
        reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, init_codes=np.full(w.shape, 3))
    with pytest.raises(ShapeError, match="bias"):
        reconstruct_layer(w, b[:3], x, qtype, conv_attrs=SAME)
    with pytest.raises(ShapeError, match="conv"):
        reconstruct_layer(w, b, x, qtype, conv_attrs=ConvAttrs((1,), (0, 0), (1,), 1))


def test_chunked_row_collection_matches_one_chunk(monkeypatch):
    """Rows are unfolded and subsampled chunk by chunk; chunk size must not change the result."""
    import lowbit.passes.ptq.reconstruct as reconstruct_module

    w, b, x = _layer(n=40)
    qtype, _ = fit_weights(w, "pow2", 3, granularity=Granularity(0))
    options = {"conv_attrs": SAME, "act_fn": "relu", "iters": 40, "max_rows": 900,
               "batch_rows": 100}
    whole = reconstruct_layer(w, b, x, qtype, **options)
    monkeypatch.setattr(reconstruct_module, "_CHUNK_ELEMENTS", 3 * 64 * 72)  # 3 samples
    chunked = reconstruct_layer(w, b, x, qtype, **options)
    np.testing.assert_array_equal(whole.codes, chunked.codes)
    assert chunked.loss_after == pytest.approx(whole.loss_after, rel=1e-9)


@pytest.mark.parametrize("kind,bits,granularity", [
    ("uniform", 2, Granularity(1, 4)),   # per-group along C_in, last group partial (8 = 4 + 4)
    ("uniform", 3, Granularity(1, 3)),   # 8 = 3 + 3 + 2
    ("ternary", 2, Granularity()),
    ("codebook", 3, Granularity()),
    ("pow2", 3, Granularity(1, 5)),
], ids=str)
def test_other_granularities(kind, bits, granularity):
    w, b, x = _layer(seed=2)
    qtype, _ = fit_weights(w, kind, bits, granularity=granularity)
    result = reconstruct_layer(w, b, x, qtype, conv_attrs=SAME, iters=200)
    after = _conv_mse(x, w, b, dequantize(result.codes, result.qtype), result.bias)
    assert result.qtype.granularity == qtype.granularity
    assert len(result.qtype.scale) == len(qtype.scale)
    assert len(result.qtype.codebook) == len(qtype.codebook)
    assert after == pytest.approx(result.loss_after, rel=1e-6)
    assert after < 0.9 * result.loss_before


@pytest.mark.parametrize("act_fn", [None, "relu"])
def test_batched_formats_equal_one_format_runs(act_fn):
    """reconstruct_layers trains the formats as one batch; each result is the one-format run
    (same objective, same seeded mini-batches, gradients that do not mix)."""
    w, b, x = _layer(n=24)
    fits = [fit_weights(w, kind, bits, granularity=Granularity(0), **options)
            for kind, bits, options in FORMATS[:6]]
    options = dict(conv_attrs=SAME, act_fn=act_fn, iters=60, max_rows=600, batch_rows=128,
                   seed=3)
    together = reconstruct_layers(w, b, x, [q for q, _ in fits],
                                  init_codes=[c for _, c in fits], **options)
    for (qtype, codes), batched in zip(fits, together):
        alone = reconstruct_layer(w, b, x, qtype, init_codes=codes, **options)
        assert batched.method == alone.method
        np.testing.assert_array_equal(batched.codes, alone.codes)
        assert batched.qtype == alone.qtype
        assert batched.loss_after == pytest.approx(alone.loss_after, rel=1e-6)
        np.testing.assert_allclose(batched.bias, alone.bias, rtol=1e-5, atol=1e-7)
    assert any(r.method == "adaround" for r in together)


def test_batched_formats_split_above_the_weight_budget(monkeypatch):
    from lowbit.passes.ptq import reconstruct as module

    w, b, x = _layer(n=16)
    qtypes = [fit_weights(w, kind, bits, granularity=Granularity(0))[0]
              for kind, bits in (("uniform", 2), ("ternary", 2), ("uniform", 4))]
    options = dict(conv_attrs=SAME, act_fn="relu", iters=30, max_rows=400, batch_rows=64)
    whole = reconstruct_layers(w, b, x, qtypes, **options)
    monkeypatch.setattr(module, "MAX_BATCH_WEIGHTS", 2 * w.size)  # batches of 2 + 1
    split = reconstruct_layers(w, b, x, qtypes, **options)
    for one, two in zip(whole, split):
        np.testing.assert_array_equal(one.codes, two.codes)


@pytest.mark.parametrize("beta", [None, 2.0, 13.7])
def test_soft_round_backward_equals_autograd(beta):
    """The written-out backward of AdaRound's soft weights and regulariser (two formats
    stacked) equals autograd through the textbook formula."""
    from lowbit.passes.ptq.reconstruct import (
        ADAROUND_GAMMA,
        ADAROUND_LAMBDA,
        ADAROUND_ZETA,
        _SoftRound,
    )

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 300, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    lower = torch.randn(2, 300, generator=gen, dtype=torch.float64)
    gap = torch.rand(2, 300, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, 300, generator=gen, dtype=torch.float64)
    dgap = gap * (ADAROUND_ZETA - ADAROUND_GAMMA)
    w, reg = _SoftRound.apply(logits, lower, gap, dgap, beta, ADAROUND_LAMBDA, 2)
    ((w * upstream).sum() + 0.7 * reg).backward()
    got = logits.grad.clone()
    logits.grad = None
    h = (torch.sigmoid(logits) * (ADAROUND_ZETA - ADAROUND_GAMMA) + ADAROUND_GAMMA).clamp(0, 1)
    ref_w = lower + h * gap
    ref_reg = torch.zeros((), dtype=torch.float64) if beta is None else sum(
        ADAROUND_LAMBDA * (1 - (2 * h[f] - 1).abs() ** beta).mean() for f in range(2))
    ((ref_w * upstream).sum() + 0.7 * ref_reg).backward()
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(reg, ref_reg)
    torch.testing.assert_close(got, logits.grad)
