"""Dyadic requantization: to_dyadic accuracy, bit-exact requantize, clamp folding, acc bounds."""

import itertools

import numpy as np
import pytest
from lowbit.ir.dyadic import (
    MAX_SHIFT,
    accumulator_bound,
    fits_accumulator,
    fold_clamp,
    from_dyadic,
    requantize,
    to_dyadic,
)
from lowbit.ir.errors import QuantizationError
from lowbit.ir.qformats import activation_qtype, fit_weights
from lowbit.ir.qtype import Granularity, QKind, QType

I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1


def _reference(acc, m, shift, zp, qmin, qmax):
    """Arbitrary-precision Python ints: the definition of requantize."""
    half = (1 << (shift - 1)) if shift > 0 else 0
    return min(max(((int(acc) * int(m) + half) >> int(shift)) + int(zp), qmin), qmax)


# -- to_dyadic ---------------------------------------------------------------------------------
def test_to_dyadic_relative_error_and_normal_range():
    rng = np.random.default_rng(0)
    real = 10.0 ** rng.uniform(-9, 8, size=5000)  # normal: 2^-32 <= real < 2^31
    m, shift = to_dyadic(real)
    assert m.dtype == np.int64 and shift.dtype == np.int64
    assert np.all((m >= 2 ** 30) & (m < 2 ** 31))
    rel = np.abs(from_dyadic(m, shift) - real) / real
    assert rel.max() <= 2.0 ** -30
    # exact Python-int check of the same claim for a few values
    for r, mi, si in zip(real[:50], m[:50], shift[:50]):
        assert abs(int(mi) - r * 2.0 ** int(si)) <= 0.5 + 1e-6


def test_to_dyadic_tiny_multipliers_cap_the_shift():
    real = 10.0 ** np.random.default_rng(3).uniform(-20, -10, size=2000)
    m, shift = to_dyadic(real)
    assert shift.max() <= MAX_SHIFT
    assert np.all(np.abs(from_dyadic(m, shift) - real) <= 2.0 ** -63)


@pytest.mark.parametrize("mult_bits", [8, 15, 31])
def test_to_dyadic_mult_bits(mult_bits):
    m, shift = to_dyadic(np.array([0.1, 0.7, 3.0]), mult_bits=mult_bits)
    assert np.all((m >= 2 ** (mult_bits - 1)) & (m < 2 ** mult_bits))
    assert np.all(np.abs(from_dyadic(m, shift) / [0.1, 0.7, 3.0] - 1) <= 2.0 ** -mult_bits)


def test_to_dyadic_exact_powers_and_carry():
    m, shift = to_dyadic(np.array([1.0, 0.5, 2.0 ** 30]))
    np.testing.assert_array_equal(m, [2 ** 30] * 3)
    np.testing.assert_array_equal(shift, [30, 31, 0])
    m, shift = to_dyadic(1.0 - 2.0 ** -40)  # rounds up to 2^31: carry halves m
    assert (int(m), int(shift)) == (2 ** 30, 30)


def test_to_dyadic_zero_tiny_huge():
    real = np.array([0.0, 1e-300, 2.0 ** -70, 2.0 ** -62, 2.0 ** -50, 0.9 * 2.0 ** -63])
    m, shift = to_dyadic(real)
    np.testing.assert_array_equal(m, [0, 0, 0, 1, 2 ** 12, 0])
    np.testing.assert_array_equal(shift, [0, 0, 0, MAX_SHIFT, MAX_SHIFT, 0])
    m, shift = to_dyadic(1.5 * 2.0 ** 30)  # above 1 with a non-negative shift: fine
    assert (int(m), int(shift)) == (3 * 2 ** 29, 0)
    with pytest.raises(QuantizationError, match="negative shift"):
        to_dyadic(2.0 ** 31)
    with pytest.raises(QuantizationError, match=">= 0"):
        to_dyadic(-0.5)
    with pytest.raises(QuantizationError, match="finite"):
        to_dyadic(np.nan)
    with pytest.raises(QuantizationError, match="mult_bits"):
        to_dyadic(0.5, mult_bits=32)


# -- requantize --------------------------------------------------------------------------------
EXTREME_ACC = [0, 1, -1, 2, -2, 3, -3, 2 ** 31 - 1, -(2 ** 31 - 1), -(2 ** 31), 12345, -54321]


@pytest.mark.parametrize("m", [0, 1, 3, 2 ** 30, 2 ** 31 - 1])
@pytest.mark.parametrize("shift", [0, 1, 2, 31, 62])
@pytest.mark.parametrize("zp", [0, -128, 77])
def test_requantize_bit_exact_extremes(m, shift, zp):
    acc = np.array(EXTREME_ACC, dtype=np.int32)
    for qmin, qmax in [(I64_MIN, I64_MAX), (-128, 127), (0, 15)]:
        got = requantize(acc, m, shift, zp, qmin, qmax)
        want = [_reference(a, m, shift, zp, qmin, qmax) for a in EXTREME_ACC]
        assert got.dtype == np.int64
        assert got.tolist() == want


def test_requantize_bit_exact_random_per_channel():
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2 ** 31), 2 ** 31, size=(7, 5, 3), dtype=np.int64).astype(np.int32)
    m, shift = to_dyadic(10.0 ** rng.uniform(-9, 1, size=5))
    zp = rng.integers(-128, 128, size=5)
    got = requantize(acc, m, shift, zp, -128, 127, axis=1)
    want = np.empty(acc.shape, dtype=np.int64)
    for idx in np.ndindex(acc.shape):
        c = idx[1]
        want[idx] = _reference(acc[idx], m[c], shift[c], zp[c], -128, 127)
    np.testing.assert_array_equal(got, want)
    wide = requantize(acc, m, shift, zp, I64_MIN, I64_MAX, axis=-2)
    assert wide.tolist() == [[[_reference(acc[i, c, k], m[c], shift[c], zp[c], I64_MIN, I64_MAX)
                               for k in range(3)] for c in range(5)] for i in range(7)]


def test_requantize_rounds_half_up():
    acc = np.array([3, -3, 1, -1, 5, -5])  # / 2: 1.5, -1.5, 0.5, -0.5, 2.5, -2.5
    np.testing.assert_array_equal(requantize(acc, 1, 1, 0, -100, 100), [2, -1, 1, 0, 3, -2])


def test_requantize_matches_float_within_one_code():
    rng = np.random.default_rng(2)
    acc = rng.integers(-(2 ** 20), 2 ** 20, size=1000)
    real = 0.00123
    m, shift = to_dyadic(real)
    got = requantize(acc, m, shift, 0, I64_MIN, I64_MAX)
    assert np.abs(got - np.floor(acc * real + 0.5)).max() <= 1


def test_requantize_refuses_overflow_and_bad_arguments():
    acc = np.array([2 ** 40], dtype=np.int64)
    with pytest.raises(QuantizationError, match="overflow"):
        requantize(acc, 2 ** 31 - 1, 31, 0, -128, 127)
    assert requantize(acc, 1, 8, 0, I64_MIN, I64_MAX).tolist() == [2 ** 32]  # small m: fine
    with pytest.raises(QuantizationError, match="integer accumulator"):
        requantize(np.array([1.5]), 1, 0, 0, -8, 7)
    with pytest.raises(QuantizationError, match="shift"):
        requantize(np.array([1]), 1, 63, 0, -8, 7)
    with pytest.raises(QuantizationError, match="axis"):
        requantize(np.zeros((2, 3), np.int32), np.ones(2, np.int64), np.ones(2, np.int64), 0,
                   -8, 7, axis=1)
    with pytest.raises(QuantizationError, match="no channel axis"):
        requantize(np.zeros((2, 3), np.int32), np.ones(3, np.int64), 1, 0, -8, 7)


# -- fold_clamp --------------------------------------------------------------------------------
def test_fold_clamp_relu_and_relu6():
    assert fold_clamp(0.0, None, 0.05, -20, -128, 127) == (-20, 127)
    qt = activation_qtype(0.0, 6.0, 8, False)
    assert fold_clamp(0.0, 6.0, qt.scale[0], qt.zero_point[0], 0, 255) == (0, 255)
    assert fold_clamp(0.0, 6.0, 0.1, 10, -128, 127) == (10, 70)
    assert fold_clamp(float("-inf"), float("inf"), 0.1, 0, -8, 7) == (-8, 7)
    assert fold_clamp(100.0, 200.0, 0.1, 0, -8, 7) == (7, 7)  # clamp beyond range: constant
    with pytest.raises(QuantizationError, match="empty"):
        fold_clamp(1.0, 0.0, 0.1, 0, -8, 7)


@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (0.0, 6.0), (-0.05, 0.05), (0.25, 0.35)])
def test_fold_clamp_equals_clamp_then_quantize(lo, hi):
    scale, zp, qmin, qmax = 0.1, 5, -64, 63
    codes = np.arange(qmin, qmax + 1)
    real = (codes - zp) * scale
    want = np.clip(np.floor(np.clip(real, lo, hi) / scale + 0.5) + zp, qmin, qmax)
    new_min, new_max = fold_clamp(lo, hi, scale, zp, qmin, qmax)
    np.testing.assert_array_equal(np.clip(codes, new_min, new_max), want)


# -- accumulator bounds ------------------------------------------------------------------------
def _brute_force_bound(K, w_codes, zw, a_codes, za):
    best = 0
    for w in itertools.product(w_codes, repeat=K):
        for a in itertools.product(a_codes, repeat=K):
            best = max(best, abs(sum((wi - zw) * (ai - za) for wi, ai in zip(w, a))))
    return best


@pytest.mark.parametrize("K", [1, 2, 3])
def test_accumulator_bound_exact_by_brute_force(K):
    w_qt = QType(QKind.UNIFORM, 2, True, scale=(1.0,), zero_point=(0,))
    a_qt = activation_qtype(-1.0, 5.0, 2, True)  # signed 2-bit with a nonzero zero point
    za = a_qt.zero_point[0]
    assert za != 0
    want = _brute_force_bound(K, range(-2, 2), 0, range(-2, 2), za)
    assert accumulator_bound(K, w_qt, a_qt) == want
    u_qt = activation_qtype(0.0, 1.0, 2, False)
    assert accumulator_bound(K, w_qt, u_qt) == _brute_force_bound(K, range(-2, 2), 0, range(4), 0)


def test_accumulator_bound_int8_worst_case_vector():
    w_qt, _ = fit_weights(np.array([[1.0, -1.0]]), "uniform", 8, granularity=Granularity(0))
    a_qt = activation_qtype(0.0, 1.0, 8, False)
    K = 1000
    worst = np.full(K, -128, dtype=np.int64) @ np.full(K, 255, dtype=np.int64)
    assert accumulator_bound(K, w_qt, a_qt) == abs(int(worst)) == K * 128 * 255
    k_max = (2 ** 31 - 1) // (128 * 255)
    assert fits_accumulator(k_max, w_qt, a_qt)
    assert not fits_accumulator(k_max + 1, w_qt, a_qt)
    assert fits_accumulator(k_max + 1, w_qt, a_qt, acc_bits=64)


def test_accumulator_bound_low_bit_kinds():
    b = QType(QKind.BINARY, 1)
    t = QType(QKind.TERNARY, 2)
    a4 = activation_qtype(0.0, 1.0, 4, False)
    assert accumulator_bound(64, b, b) == 64
    assert accumulator_bound(64, t, a4) == 64 * 15
    p = QType(QKind.POW2, 3, zero_free=True)  # levels 2^0..2^-3 -> integers up to 2^3
    p0 = QType(QKind.POW2, 3)  # smallest level is zero -> integers up to 2^2
    assert accumulator_bound(10, p, a4) == 10 * 8 * 15
    assert accumulator_bound(10, p0, a4) == 10 * 4 * 15
    # codebook weights are integers on their level grid: 7 signed bits up to 4 index bits
    assert accumulator_bound(4, QType(QKind.CODEBOOK, 2, False), a4) == 4 * 63 * 15
    assert accumulator_bound(4, QType(QKind.CODEBOOK, 6, False), a4) == 4 * 2047 * 15
    with pytest.raises(QuantizationError, match="codebook"):  # codes index levels: no operand
        accumulator_bound(4, a4, QType(QKind.CODEBOOK, 2, False))
