"""Number formats: fit / quantize / dequantize for every kind, bit width and granularity."""

import numpy as np
import pytest
from lowbit.ir.errors import QuantizationError
from lowbit.ir.qformats import (
    ACTIVATION_BITS,
    WEIGHT_BITS,
    activation_qtype,
    codebook_grid_bits,
    dequantize,
    fit_weights,
    group_index,
    quantize,
    snap_codebook,
    weight_bytes,
)
from lowbit.ir.qtype import Granularity, QKind, QType

PER_TENSOR = Granularity()
PER_CHANNEL = Granularity(0)
PER_GROUP = Granularity(1, 5)  # 13 columns -> groups of 5, 5, 3 (partial last group)
GRANULARITIES = [PER_TENSOR, PER_CHANNEL, PER_GROUP]
ALL_FORMATS = [(kind, bits) for kind, widths in WEIGHT_BITS.items() for bits in widths]


def _weights(shape=(6, 13), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _per_element(params, w_shape, gran):
    gid, _ = group_index(w_shape, gran)
    return np.asarray(params, dtype=np.float64)[gid]


# -- uniform -----------------------------------------------------------------------------------
@pytest.mark.parametrize("gran", GRANULARITIES, ids=str)
@pytest.mark.parametrize("signed,symmetric", [(True, True), (True, False), (False, False),
                                              (False, True)])
@pytest.mark.parametrize("bits", WEIGHT_BITS[QKind.UNIFORM])
def test_uniform_round_trip_within_half_step(bits, signed, symmetric, gran):
    w = _weights()
    if not signed and symmetric:
        w = np.abs(w)
    qt, codes = fit_weights(w, "uniform", bits, signed=signed, granularity=gran,
                            symmetric=symmetric)
    assert qt.can_represent(codes) and codes.dtype == qt.storage.numpy
    scale = _per_element(qt.scale, w.shape, qt.granularity)
    err = np.abs(dequantize(codes, qt).astype(np.float64) - w)
    assert np.all(err <= scale / 2 * (1 + 1e-6) + 1e-6 * np.abs(w))
    if symmetric:
        assert not any(qt.zero_point)
        if signed:  # restricted range: -(2^(b-1)-1) .. 2^(b-1)-1
            assert codes.min() >= -(2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", WEIGHT_BITS[QKind.UNIFORM])
def test_uniform_exact_on_grid_symmetric(bits):
    rng = np.random.default_rng(bits)
    top = 2 ** (bits - 1) - 1
    q = rng.integers(-top, top + 1, size=(4, 9))
    q[:, 0] = top  # each channel reaches the extreme, so the fitted scale is exactly 2^-4
    w = (q * 2.0 ** -4).astype(np.float32)
    qt, codes = fit_weights(w, "uniform", bits, granularity=PER_CHANNEL)
    assert qt.scale == (2.0 ** -4,) * 4
    np.testing.assert_array_equal(codes, q)
    np.testing.assert_array_equal(dequantize(codes, qt), w)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_exact_on_grid_asymmetric(bits, signed):
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    rng = np.random.default_rng(bits)
    zps = [qmin, qmax, (qmin + qmax) // 2]
    q = rng.integers(qmin, qmax + 1, size=(3, 11))
    q[:, 0], q[:, 1] = qmin, qmax
    w = ((q - np.array(zps)[:, None]) * 0.125).astype(np.float32)
    qt, codes = fit_weights(w, "uniform", bits, signed=signed, granularity=PER_CHANNEL,
                            symmetric=False)
    assert qt.zero_point == tuple(zps)
    np.testing.assert_array_equal(codes, q)
    np.testing.assert_array_equal(dequantize(codes, qt), w)


def test_uniform_rounds_half_to_even():
    qt = activation_qtype(-4.0, 3.5, 4, True)  # scale 0.5, zp 0
    assert qt.scale == (0.5,) and qt.zero_point == (0,)
    np.testing.assert_array_equal(quantize([0.25, 0.75, -0.25, -0.75], qt), [0, 2, 0, -2])


def test_negative_zero_point_for_positive_only_data():
    w = np.linspace(0.5, 2.0, 24, dtype=np.float32).reshape(2, 12)
    qt, codes = fit_weights(w, "uniform", 8, signed=True, granularity=PER_CHANNEL,
                            symmetric=False)
    assert qt.zero_point == (-128, -128)
    assert qt.can_represent(codes)
    scale = _per_element(qt.scale, w.shape, qt.granularity)
    assert np.all(np.abs(dequantize(codes, qt) - w) <= scale / 2 * (1 + 1e-6) + 1e-6 * w)
    qt_u, _ = fit_weights(w, "uniform", 8, signed=False, granularity=PER_CHANNEL,
                          symmetric=False)
    assert qt_u.zero_point == (0, 0)


def test_per_group_partial_last_group():
    w = _weights((3, 13))
    qt, codes = fit_weights(w, "uniform", 4, granularity=PER_GROUP)
    assert len(qt.scale) == 9  # 3 rows x ceil(13 / 5)
    expected = [float(np.abs(w[r, c:c + 5]).max()) / 7 for r in range(3) for c in (0, 5, 10)]
    np.testing.assert_allclose(qt.scale, expected, rtol=1e-12)
    assert qt.scale[2] == pytest.approx(np.abs(w[0, 10:13]).max() / 7)
    tail = dequantize(codes, qt)[:, 10:]  # the partial groups use their own scales
    tail_scale = np.array(qt.scale[2::3])[:, None]
    assert np.all(np.abs(tail - w[:, 10:]) <= tail_scale / 2 * (1 + 1e-6))
    assert np.all(np.abs(codes[:, 10:]).max(axis=1) == 7)  # each partial group reaches qmax


def test_negative_axis_is_normalized():
    qt, _ = fit_weights(_weights(), "uniform", 4, granularity=Granularity(-1, 5))
    assert qt.granularity == Granularity(1, 5)


# -- zero-range channels -----------------------------------------------------------------------
def _degenerate_weights():
    w = _weights((4, 8))
    w[0] = 0.0
    w[1] = 0.5
    w[2] = -2.0
    return w


@pytest.mark.parametrize("kind,bits", ALL_FORMATS)
def test_zero_range_and_all_zero_channels(kind, bits):
    w = _degenerate_weights()
    qt, codes = fit_weights(w, kind, bits, granularity=PER_CHANNEL)
    deq = dequantize(codes, qt)
    assert np.all(np.isfinite(deq)) and np.all(np.isfinite(qt.scale))
    assert qt.can_represent(codes)
    np.testing.assert_array_equal(deq[0], 0.0)  # all-zero channel: exact zeros
    if kind in (QKind.UNIFORM, QKind.BINARY, QKind.POW2, QKind.CODEBOOK):
        np.testing.assert_allclose(deq[1:3], w[1:3], rtol=1e-6)  # constant channels exact
    if kind == QKind.UNIFORM:
        assert all(s > 0 for s in qt.scale)


@pytest.mark.parametrize("signed", [True, False])
def test_uniform_asymmetric_all_zero_tensor(signed):
    w = np.zeros((3, 4), np.float32)
    qt, codes = fit_weights(w, "uniform", 4, signed=signed, granularity=PER_TENSOR,
                            symmetric=False)
    assert qt.scale == (1.0,)
    np.testing.assert_array_equal(dequantize(codes, qt), w)


# -- every kind, every width -------------------------------------------------------------------
@pytest.mark.parametrize("gran", GRANULARITIES, ids=str)
@pytest.mark.parametrize("kind,bits", ALL_FORMATS)
def test_every_format_codes_legal_and_idempotent(kind, bits, gran):
    w = _weights()
    qt, codes = fit_weights(w, kind, bits, granularity=gran)
    assert qt.kind == kind and qt.bits == bits
    assert codes.shape == w.shape and codes.dtype == qt.storage.numpy
    assert qt.can_represent(codes)
    deq = dequantize(codes, qt)
    assert deq.dtype == np.float32 and np.all(np.isfinite(deq))
    np.testing.assert_array_equal(quantize(deq, qt), codes)  # grid values map to themselves
    assert np.mean((deq - w) ** 2) < np.mean(w ** 2)  # better than predicting zero
    wide = quantize(w * 50.0, qt)  # far out of range: still legal codes
    assert qt.can_represent(wide)


def test_binary_xnor_scale_and_sign_of_zero():
    w = np.array([[0.0, -1.0, 2.0, -3.0]], np.float32)
    qt, codes = fit_weights(w, "binary", 1, granularity=PER_CHANNEL)
    assert qt.scale == (1.5,)
    np.testing.assert_array_equal(codes, [[1, -1, 1, -1]])


def test_ternary_twn_threshold_and_scale():
    w = np.array([[0.1, -1.0, 2.0, 0.5]], np.float32)  # mean|w| = 0.9, delta = 0.63
    qt, codes = fit_weights(w, "ternary", 2, granularity=PER_CHANNEL)
    np.testing.assert_array_equal(codes, [[0, -1, 1, 0]])
    assert qt.scale[0] == pytest.approx(1.5)
    np.testing.assert_allclose(dequantize(codes, qt), [[0, -1.5, 1.5, 0]])


def test_ternary_exact_on_grid():
    w = np.array([[0.0, -0.75, 0.75, 0.75], [0.2, 0.0, 0.0, -0.2]], np.float32)
    qt, codes = fit_weights(w, "ternary", 2, granularity=PER_CHANNEL)
    np.testing.assert_array_equal(dequantize(codes, qt), w)


def test_pow2_code_layout_zero_free():
    # bits 3: E = 4 exponents; code = e - sign * 4
    w = np.array([1.0, 0.5, 0.25, 0.125, -1.0, -0.125, 0.01, -0.3], np.float32)
    qt, codes = fit_weights(w, "pow2", 3, granularity=PER_TENSOR, zero_free=True)
    assert qt.scale == (1.0,) and qt.zero_free
    np.testing.assert_array_equal(codes, [0, 1, 2, 3, -4, -1, 3, -2])
    np.testing.assert_array_equal(dequantize(codes, qt),
                                  [1, 0.5, 0.25, 0.125, -1, -0.125, 0.125, -0.25])


def test_pow2_code_layout_with_zero_code():
    w = np.array([1.0, 0.5, 0.25, 0.1, -0.1, -0.5, 0.0, 0.125], np.float32)
    qt, codes = fit_weights(w, "pow2", 3, granularity=PER_TENSOR)
    # levels 1, 1/2, 1/4 and 0 (code 3); 0.125 is the 0 / 0.25 midpoint: ties go to 0
    np.testing.assert_array_equal(codes, [0, 1, 2, 3, 3, -3, 3, 3])
    np.testing.assert_array_equal(dequantize(codes, qt), [1, 0.5, 0.25, 0, 0, -0.5, 0, 0])
    assert dequantize(np.array([-1], np.int8), qt)[0] == 0.0  # the "negative zero" word


@pytest.mark.parametrize("bits", WEIGHT_BITS[QKind.POW2])
@pytest.mark.parametrize("zero_free", [True, False])
def test_pow2_exact_on_grid(bits, zero_free):
    rng = np.random.default_rng(bits)
    n_exp = 2 ** (bits - 1)
    top_e = min(n_exp - 1 if zero_free else n_exp - 2, 20)
    e = rng.integers(0, top_e + 1, size=(3, 10))
    e[:, 0] = 0
    w = (rng.choice([-1.0, 1.0], size=e.shape) * 2.0 ** -e * 0.75).astype(np.float32)
    w[:, 0] = 0.75
    qt, codes = fit_weights(w, "pow2", bits, granularity=PER_CHANNEL, zero_free=zero_free)
    np.testing.assert_array_equal(dequantize(codes, qt), w)


# -- codebook ----------------------------------------------------------------------------------
def test_codebook_deterministic_per_seed():
    w = _weights((8, 40))
    a = fit_weights(w, "codebook", 3, granularity=PER_CHANNEL, seed=7)
    b = fit_weights(w, "codebook", 3, granularity=PER_CHANNEL, seed=7)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_codebook_is_a_lloyd_fixed_point_and_beats_uniform():
    w = _weights((4, 500))
    qt, codes = fit_weights(w, "codebook", 2, granularity=PER_CHANNEL)
    levels = np.asarray(qt.codebook)
    assert levels.shape == (4, 4) and np.all(np.diff(levels, axis=1) >= 0)
    unit = np.abs(levels).max(axis=1) / (2 ** (codebook_grid_bits(2) - 1) - 1)
    np.testing.assert_allclose(levels / unit[:, None], np.rint(levels / unit[:, None]),
                               atol=1e-9)  # on the integer grid
    for ch in range(4):
        for k in range(4):
            members = w[ch][codes[ch] == k].astype(np.float64)
            if members.size:  # the Lloyd level (members' mean) snapped onto the grid, which
                # may move a boundary member to the neighbour level: within one grid step
                assert abs(levels[ch, k] - members.mean()) <= unit[ch]
    qt_u, codes_u = fit_weights(w, "uniform", 2, granularity=PER_CHANNEL)
    mse_cb = np.mean((dequantize(codes, qt) - w) ** 2)
    mse_u = np.mean((dequantize(codes_u, qt_u) - w) ** 2)
    assert mse_cb < 0.5 * mse_u


def test_codebook_exact_with_few_distinct_values():
    """Each distinct value gets its own level, exact up to the integer grid (snap_codebook)."""
    w = np.array([[0.3, -1.0, 0.3, 2.0, 2.0, -1.0], [5.0] * 6], np.float32)
    qt, codes = fit_weights(w, "codebook", 2, granularity=PER_CHANNEL)
    np.testing.assert_array_equal(dequantize(codes, qt), snap_codebook(w, 2).astype(np.float32))
    assert len(np.unique(codes[0])) == 3 and len(np.unique(codes[1])) == 1
    w = np.array([[0.5, -1.0, 0.5, 2.0, 2.0, -1.0]], np.float32)  # on the 7-bit grid of 2/63
    w = snap_codebook(w, 2).astype(np.float32)
    qt, codes = fit_weights(w, "codebook", 2, granularity=PER_CHANNEL)
    np.testing.assert_array_equal(dequantize(codes, qt), w)


def test_snap_codebook_grid_and_duplicates():
    """Levels go onto ``max|level| / (2^(G-1) - 1)``: G = 7 up to 4 index bits, 12 above;
    levels that merge map every value to the first of them."""
    assert codebook_grid_bits(4) == 7 and codebook_grid_bits(5) == 12
    levels = np.array([[-1.0, 0.001, 0.002, 0.3]])
    snapped = snap_codebook(levels, 2)
    np.testing.assert_array_equal(snapped[0, :3], [-1.0, 0.0, 0.0])
    assert snapped[0, 3] == pytest.approx(19 / 63)
    np.testing.assert_array_equal(snap_codebook(np.zeros((1, 4)), 2), 0.0)
    qt = QType(QKind.CODEBOOK, 2, False, PER_CHANNEL, codebook=(tuple(snapped[0]),))
    x = np.array([[0.0, np.nextafter(0.0, 1.0), 0.0004, -1.0, 0.3]])
    np.testing.assert_array_equal(quantize(x, qt), [[1, 1, 1, 0, 3]])


# -- activations -------------------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi,signed", [(0.0, 6.0, False), (-3.0, 5.0, True),
                                          (1.0, 2.0, True), (-2.0, -0.5, True),
                                          (0.0, 0.0, False)])
@pytest.mark.parametrize("bits", ACTIVATION_BITS)
def test_activation_qtype_zero_exact_and_range_covered(bits, lo, hi, signed):
    if bits == 1 and signed:
        with pytest.raises(QuantizationError, match="1-bit"):
            activation_qtype(lo, hi, bits, signed)
        return
    qt = activation_qtype(lo, hi, bits, signed)
    assert qt.kind == QKind.UNIFORM and qt.scale[0] > 0 and qt.signed == signed
    assert qt.min <= qt.zero_point[0] <= qt.max
    assert dequantize(quantize([0.0], qt), qt)[0] == 0.0
    x = np.linspace(lo, hi, 101)
    err = np.abs(dequantize(quantize(x, qt), qt) - x)
    assert np.all(err <= qt.scale[0] / 2 * (1 + 1e-6) + 1e-6 * np.abs(x))
    if not signed and lo >= 0:
        assert qt.zero_point == (0,)


def test_activation_qtype_symmetric_and_errors():
    qt = activation_qtype(-3.0, 6.0, 8, True, symmetric=True)
    assert qt.zero_point == (0,) and qt.scale[0] == pytest.approx(6.0 / 127)
    with pytest.raises(QuantizationError, match="empty"):
        activation_qtype(2.0, 1.0, 8, False)
    with pytest.raises(QuantizationError, match="3 bits"):
        activation_qtype(0.0, 1.0, 3, False)


# -- sizes and errors --------------------------------------------------------------------------
def test_weight_bytes_two_bit_is_about_sixteen_times_smaller():
    w = _weights((256, 256))
    qt, codes = fit_weights(w, "uniform", 2, granularity=PER_CHANNEL)
    size = weight_bytes(codes, qt)
    assert size == 256 * 256 * 2 // 8 + 256 * 4
    assert w.nbytes / size > 15


def test_weight_bytes_counts_zero_points_and_codebooks():
    w = _weights((2, 5))
    qt, codes = fit_weights(w, "uniform", 3, granularity=PER_CHANNEL, symmetric=False)
    assert weight_bytes(codes, qt) == 4 + 2 * 4 + 2 * 4  # ceil(30 / 8) + scales + zps
    qt, codes = fit_weights(w, "codebook", 2, granularity=PER_CHANNEL)
    # per channel: 4 levels as 7-bit grid integers (ceil(28 / 8) = 4 B) + the grid unit (4 B)
    assert weight_bytes(codes, qt) == 3 + 2 * (4 + 4)
    qt, codes = fit_weights(_weights((2, 40)), "codebook", 5, granularity=PER_CHANNEL)
    assert weight_bytes(codes, qt) == 80 * 5 // 8 + 2 * (32 * 12 // 8 + 4)  # 12-bit grid


def test_fit_errors():
    w = _weights()
    with pytest.raises(QuantizationError, match="3 bits"):
        fit_weights(w, "ternary", 3, granularity=PER_TENSOR)
    with pytest.raises(QuantizationError, match="unknown quantization kind"):
        fit_weights(w, "float8", 8, granularity=PER_TENSOR)
    with pytest.raises(QuantizationError, match="NaN"):
        fit_weights(np.array([1.0, np.nan]), "uniform", 4, granularity=PER_TENSOR)
    with pytest.raises(QuantizationError, match="axis 2"):
        fit_weights(w, "uniform", 4, granularity=Granularity(2))
    with pytest.raises(QuantizationError, match="non-negative"):
        fit_weights(w, "uniform", 4, signed=False, granularity=PER_TENSOR)
    with pytest.raises(QuantizationError, match="zero_free"):
        fit_weights(w, "uniform", 4, granularity=PER_TENSOR, zero_free=True)
    qt, codes = fit_weights(w, "uniform", 4, granularity=PER_CHANNEL)
    with pytest.raises(QuantizationError, match="groups"):
        quantize(w.T, qt)
    with pytest.raises(QuantizationError, match="legal codes"):
        dequantize(codes + 100, qt)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 15, 16, 17, 256])
def test_nearest_level_equals_counting_midpoints(k):
    """The binary search of _nearest_level is the rule spelled out: the count of the group's
    midpoints below x, ties low, equal levels mapped to the first (with exact levels, exact
    midpoints, +-inf and NaN in the input)."""
    from lowbit.ir.qformats import _nearest_level

    rng = np.random.default_rng(k)
    groups, n = 7, 3000
    levels = np.sort(rng.standard_normal((groups, k)), axis=1)
    if k > 3:
        levels[:, 2] = levels[:, 1]  # a duplicated level
    gid = rng.integers(0, groups, n)
    x = rng.standard_normal(n) * 2
    mids = (levels[:, 1:] + levels[:, :-1]) / 2
    x[:groups] = levels[gid[:groups], 0]
    if k > 1:
        x[groups:2 * groups] = mids[gid[groups:2 * groups], k // 2 - 1]
    x[-3:] = [np.inf, -np.inf, np.nan]
    count = np.count_nonzero(x[:, None] > mids[gid], axis=1)
    first = np.array([[np.flatnonzero(row == row[j])[0] for j in range(k)] for row in levels])
    np.testing.assert_array_equal(_nearest_level(x, gid, levels), first[gid, count])
