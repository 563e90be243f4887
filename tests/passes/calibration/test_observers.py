"""Calibration observers against brute-force numpy references on synthetic distributions."""

import numpy as np
import pytest
from lowbit.ir.errors import CalibrationError
from lowbit.ir.qformats import activation_qtype, dequantize, quantize
from lowbit.passes.calibration import (
    OBSERVERS,
    EntropyObserver,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
)

BINS = 2048


def _gaussian_with_outliers(n=100_000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.choice(n, 20, replace=False)] = rng.uniform(-60, 60, size=20)
    x[0], x[1] = 60.0, -45.0
    return x


def _mse_4bit(x, lo, hi):
    qt = activation_qtype(lo, hi, 4, signed=lo < 0)
    return float(np.mean((dequantize(quantize(x, qt), qt).astype(np.float64) - x) ** 2))


def _batches(x, n=5):
    return np.array_split(x, n)


# -- reference implementations (straight loops, no cleverness) -----------------------------------
def _reference_kl_threshold_bin(hist, levels):
    """MXNet / TensorRT ``_get_optimal_threshold`` on a histogram of |x|, loop by loop."""
    def smooth(p, eps=1e-4):
        is_zero = (p == 0).astype(np.float64)
        n_zero = is_zero.sum()
        n_nonzero = p.size - n_zero
        if n_nonzero == 0:
            return None
        return p + eps * is_zero - eps * n_zero / n_nonzero * (1 - is_zero)

    best, best_kl = None, np.inf
    for i in range(levels, len(hist) + 1):
        sliced = hist[:i]
        p = sliced.astype(np.float64).copy()
        p[i - 1] += hist[i:].sum()
        nonzero = p != 0
        merged = i // levels
        q_levels = np.zeros(levels)
        for j in range(levels):
            stop = i if j == levels - 1 else (j + 1) * merged
            q_levels[j] = sliced[j * merged:stop].sum()
        q = np.zeros(i)
        for j in range(levels):
            start, stop = j * merged, (i if j == levels - 1 else (j + 1) * merged)
            norm = nonzero[start:stop].sum()
            if norm:
                q[start:stop] = q_levels[j] / norm
        q[p == 0] = 0
        ps, qs = smooth(p), smooth(q)
        if ps is None or qs is None:
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best, best_kl = i, kl
    return best


def _brute_force_mse_range(x, bits, steps):
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    errs = []
    for t in np.arange(1, steps + 1) / steps:
        qt = activation_qtype(lo * t, hi * t, bits, lo < 0)
        errs.append(np.mean((dequantize(quantize(x, qt), qt).astype(np.float64) - x) ** 2))
    return float(min(errs))


# -- minmax ------------------------------------------------------------------------------------
def test_minmax_exact_over_batches():
    x = _gaussian_with_outliers()
    obs = MinMaxObserver()
    for batch in _batches(x):
        obs.update(batch.reshape(-1, 4))
    assert obs.range() == (x.min(), x.max())


# -- percentile --------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy_single_batch(p):
    x = _gaussian_with_outliers()
    lo, hi = PercentileObserver(p, bins=BINS).update(x).range()
    width = (x.max() - x.min()) / BINS
    assert abs(lo - np.percentile(x, 100 - p)) <= width
    assert abs(hi - np.percentile(x, p)) <= width


def test_percentile_matches_numpy_over_growing_batches():
    x = _gaussian_with_outliers(seed=1)
    x = x[np.argsort(np.abs(x), kind="stable")]  # the range grows with every batch
    x = np.random.default_rng(0).permutation(x.reshape(10, -1).T).T.ravel()
    obs = PercentileObserver(99.9, bins=BINS)
    for batch in _batches(x, 10):
        obs.update(batch)
    lo, hi = obs.range()
    width = (x.max() - x.min()) / BINS
    assert abs(lo - np.percentile(x, 0.1)) <= 3 * width
    assert abs(hi - np.percentile(x, 99.9)) <= 3 * width
    assert obs.hist.counts.shape == (BINS,)  # memory stays bounded
    assert obs.hist.total == pytest.approx(x.size)


# -- mse ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_observer_near_brute_force_minimum(bits):
    x = _gaussian_with_outliers(20_000)
    obs = MSEObserver(bits=bits, bins=BINS, steps=100).update(x)
    lo, hi = obs.range()
    qt = activation_qtype(lo, hi, bits, True)
    got = np.mean((dequantize(quantize(x, qt), qt).astype(np.float64) - x) ** 2)
    best = _brute_force_mse_range(x, bits, 100)
    assert got <= best * 1.05


def test_mse_observer_unsigned_data_keeps_zero_lower_bound():
    x = np.abs(_gaussian_with_outliers())
    lo, hi = MSEObserver(bits=4).update(x).range()
    assert lo == 0.0 and 0 < hi < x.max() / 4


# -- entropy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_entropy_matches_reference_kl_loop(bits):
    x = _gaussian_with_outliers(20_000)
    hist, edges = np.histogram(np.abs(x), bins=256, range=(0, np.abs(x).max()))
    want_bin = _reference_kl_threshold_bin(hist, 2 ** (bits - 1))
    lo, hi = EntropyObserver(bits=bits, bins=256).update(x).range()
    assert hi == pytest.approx(edges[want_bin], rel=1e-12)
    assert lo == -hi


def test_entropy_unsigned_data():
    x = np.abs(_gaussian_with_outliers())
    lo, hi = EntropyObserver(bits=8).update(x).range()
    assert lo == 0.0 and 1.0 < hi < x.max()


# -- shared properties -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["percentile", "mse", "entropy"])
def test_clipping_observers_beat_minmax_at_4_bits(name):
    x = _gaussian_with_outliers()
    kwargs = {} if name == "percentile" else {"bits": 4}
    obs = OBSERVERS[name](**kwargs)
    ref = MinMaxObserver()
    for batch in _batches(x):
        obs.update(batch)
        ref.update(batch)
    lo, hi = obs.range()
    mlo, mhi = ref.range()
    assert mlo < lo < 0 < hi < mhi
    assert hi - lo < (mhi - mlo) / 4
    assert _mse_4bit(x, lo, hi) < 0.5 * _mse_4bit(x, mlo, mhi)


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_deterministic(name):
    x = _gaussian_with_outliers(10_000)
    ranges = []
    for _ in range(2):
        obs = OBSERVERS[name]()
        for batch in _batches(x):
            obs.update(batch)
        ranges.append(obs.range())
    assert ranges[0] == ranges[1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_non_finite_input_names_the_observer(name, bad):
    obs = OBSERVERS[name]()
    obs.update(np.ones(4))
    with pytest.raises(CalibrationError, match=type(obs).__name__):
        obs.update(np.array([1.0, bad, 2.0]))


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_no_data_is_an_error(name):
    obs = OBSERVERS[name]()
    obs.update(np.array([]))
    with pytest.raises(CalibrationError, match="no data"):
        obs.range()


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_constant_data_gives_a_finite_range(name):
    obs = OBSERVERS[name]()
    obs.update(np.full(100, 2.5)).update(np.full(10, 2.5))
    lo, hi = obs.range()
    assert np.isfinite([lo, hi]).all() and lo <= 2.5 <= hi + 1e-12


def test_registry_names():
    assert set(OBSERVERS) == {"minmax", "percentile", "mse", "entropy"}
    for name, cls in OBSERVERS.items():
        assert cls.name == name


def test_bad_parameters():
    with pytest.raises(CalibrationError, match="p must be"):
        PercentileObserver(p=120)
    with pytest.raises(CalibrationError, match="bins"):
        PercentileObserver(bins=1)
    with pytest.raises(CalibrationError, match="MSEObserver: bits"):
        MSEObserver(bits=3)
    with pytest.raises(CalibrationError, match="EntropyObserver: bits"):
        EntropyObserver(bits=12, bins=2048)
