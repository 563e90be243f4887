"""Bias correction: b' = b + (W - W_q)·E[x] removes the quantized layer's output mean shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lowbit.ir.errors import QuantizationError, ShapeError
from lowbit.ir.qformats import dequantize, fit_weights
from lowbit.ir.qtype import Granularity
from lowbit.passes.ptq import corrected_bias


def _quantized(w, kind="ternary", bits=2):
    qtype, codes = fit_weights(w, kind, bits, granularity=Granularity(0))
    return dequantize(codes, qtype)


def test_linear_mean_error_is_zero_after_correction():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 24)).astype(np.float32) * 0.1
    b = rng.standard_normal(16).astype(np.float32)
    x = np.maximum(rng.standard_normal((500, 24)) + 0.5, 0).astype(np.float32)  # mean > 0
    w_q = _quantized(w)
    shift_before = (x @ w_q.T + b - (x @ w.T + b)).mean(axis=0)
    b_new = corrected_bias(w, w_q, b, x.mean(axis=0), kind="linear")
    shift_after = (x @ w_q.T + b_new - (x @ w.T + b)).mean(axis=0)
    assert np.abs(shift_before).max() > 0.05  # the quantization really shifted the mean
    np.testing.assert_allclose(shift_after, 0.0, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_conv_mean_shift_removed(groups):
    rng = np.random.default_rng(groups)
    c_in, c_out = 8, 8
    w = (rng.laplace(size=(c_out, c_in // groups, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    means = rng.uniform(0.2, 2.0, size=c_in)
    x = (rng.standard_normal((64, c_in, 10, 10)) * 0.3 + means[None, :, None, None])
    x = x.astype(np.float32)
    w_q = _quantized(w, "pow2", 3)

    def conv(weight, bias):
        return F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                        groups=groups).numpy()

    y = conv(w, b)
    shift_before = (conv(w_q, b) - y).mean(axis=(0, 2, 3))
    b_new = corrected_bias(w, w_q, b, x.mean(axis=(0, 2, 3)), kind="conv", groups=groups)
    shift_after = (conv(w_q, b_new) - y).mean(axis=(0, 2, 3))
    assert np.abs(shift_before).max() > 0.05
    # valid conv: every window sees the per-channel mean up to sampling noise
    assert np.abs(shift_after).max() < 0.05 * np.abs(shift_before).max()


def test_formula_on_hand_example():
    # Two groups, one output channel each; kernel window of 2 sums out.
    w = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])
    w_q = np.array([[[0.5, 2.0]], [[3.0, 3.0]]])
    b_new = corrected_bias(w, w_q, np.array([10.0, 20.0]), np.array([2.0, 3.0]), groups=2)
    # b0 + (0.5 + 0) * 2 = 11;  b1 + (0 + 1) * 3 = 23
    np.testing.assert_array_equal(b_new, [11.0, 23.0])
    assert b_new.dtype == np.float32


def test_missing_bias_is_zero():
    w = np.ones((2, 3))
    b_new = corrected_bias(w, np.zeros((2, 3)), None, np.array([1.0, 2.0, 3.0]), kind="linear")
    np.testing.assert_array_equal(b_new, [6.0, 6.0])


def test_shape_errors():
    w = np.ones((4, 2, 3, 3))
    with pytest.raises(ShapeError, match="differ"):
        corrected_bias(w, np.ones((4, 2, 3, 1)), None, np.ones(2))
    with pytest.raises(ShapeError, match="input mean"):
        corrected_bias(w, w, None, np.ones(3), groups=2)
    with pytest.raises(ShapeError, match="groups"):
        corrected_bias(w, w, None, np.ones(6), groups=3)
    with pytest.raises(ShapeError, match="bias"):
        corrected_bias(w, w, np.ones(5), np.ones(2))
    with pytest.raises(QuantizationError, match="layer kind"):
        corrected_bias(w, w, None, np.ones(2), kind="matmul")
