"""Calibration observers: running statistics of a tensor that choose its quantization range.

An observer is fed batches (``update(array)``) and answers ``range() -> (lo, hi)``; it is an
analysis only (no graph rewriting). All are deterministic and, except :class:`MinMaxObserver`,
keep a fixed-size histogram so memory does not grow with the data:

* ``minmax``     ``(min x, max x)`` over everything seen.
* ``percentile`` ``(P_{100-p}, P_p)``: the two-sided ``p``-th percentiles, read off the histogram
  with linear interpolation inside a bin.
* ``mse``        scans clipping ranges ``(t * lo, t * hi)``, ``t = 1/steps, 2/steps, ..., 1``
  (``[lo, hi]`` the data range widened to contain 0) and keeps the one whose ``bits``-bit
  :func:`~lowbit.ir.qformats.activation_qtype` grid gives the least squared error
  ``sum_j n_j (c_j - deq(quant(c_j)))^2`` over histogram bin centres ``c_j`` with counts
  ``n_j`` (first minimum, i.e. the tightest, on ties).
* ``entropy``    TensorRT KL calibration on the histogram of ``|x|`` over ``[0, max|x|]``: for
  every candidate ``i`` bins (threshold ``T = i * width``) the reference ``P`` is the first
  ``i`` bins with the outlier mass added to the last one, ``Q`` merges those ``i`` bins into
  ``L`` levels (``L = 2^(bits-1)`` for signed data, ``2^bits`` for non-negative data) and
  spreads each level back evenly over its nonzero bins; both are smoothed (zeros get
  ``1e-4``, taken evenly from the nonzeros) and the ``T`` minimising ``KL(P || Q)`` wins.
  The range is ``(-T, T)``, or ``(0, T)`` for non-negative data.

The histogram covers ``[min, max]`` of the data seen so far in ``bins`` equal bins; when a new
batch widens the range, old counts are re-binned by linear interpolation of their cumulative
counts (mass assumed uniform inside a bin), so results after several batches are approximate
to about one bin width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ...ir.errors import CalibrationError
from ...ir.qformats import ACTIVATION_BITS, activation_qtype

_SMOOTH_EPS = 1e-4


class Observer(ABC):
    """Base class: ``update(array)`` accumulates statistics, ``range()`` returns ``(lo, hi)``."""

    #: registry name (see :data:`OBSERVERS`)
    name = "observer"

    def update(self, array) -> Observer:
        """Add a batch; raises :class:`CalibrationError` on NaN / inf. Returns ``self``."""
        x = np.asarray(array, dtype=np.float64)
        if x.size == 0:
            return self
        if not np.all(np.isfinite(x)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise CalibrationError(
                f"{type(self).__name__} ({self.name!r}): calibration batch of shape {x.shape} has "
                f"{bad} NaN/inf values; fix the model or the calibration data")
        self._update(x.ravel())
        return self

    def range(self) -> tuple[float, float]:
        """The chosen ``(lo, hi)``; raises :class:`CalibrationError` before any data."""
        if not self._seen():
            raise CalibrationError(
                f"{type(self).__name__} ({self.name!r}) has seen no data; run calibration "
                f"batches through the model first")
        lo, hi = self._range()
        return float(lo), float(hi)

    # -- subclass hooks -----------------------------------------------------------------------
    @abstractmethod
    def _update(self, x: np.ndarray) -> None:
        """Fold a flattened batch into the statistics."""

    @abstractmethod
    def _seen(self) -> bool:
        """True once any data was folded in."""

    @abstractmethod
    def _range(self) -> tuple[float, float]:
        """The chosen ``(lo, hi)`` from the statistics."""


class MinMaxObserver(Observer):
    """``(min x, max x)`` over every batch."""

    name = "minmax"

    def __init__(self):
        self.lo: float | None = None
        self.hi: float | None = None

    def _update(self, x):
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def _seen(self):
        return self.lo is not None

    def _range(self):
        return self.lo, self.hi


class Histogram:
    """Float counts of the data in ``bins`` equal bins over ``[lo, hi]`` (the range seen so
    far, widened to contain 0 when ``include_zero``); widening re-bins by interpolating the
    cumulative counts."""

    def __init__(self, bins: int = 2048, include_zero: bool = False):
        if bins < 2:
            raise CalibrationError(f"a calibration histogram needs >= 2 bins, got {bins}")
        self.bins = bins
        self.include_zero = include_zero
        self.counts = np.zeros(bins, dtype=np.float64)
        self.lo: float | None = None
        self.hi: float | None = None

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges."""
        return np.linspace(self.lo, self.hi, self.bins + 1)

    @property
    def total(self) -> float:
        """Total count (fractional after re-binning only through rounding)."""
        return float(self.counts.sum())

    def add(self, x: np.ndarray) -> None:
        """Count ``x`` (finite, non-empty), widening the range first if needed."""
        lo, hi = float(x.min()), float(x.max())
        if self.include_zero:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        elif lo < self.lo or hi > self.hi:
            self._rebin(min(lo, self.lo), max(hi, self.hi))
        if self.hi == self.lo:
            self.counts[0] += x.size  # a single point: all mass in bin 0
            return
        counts, _ = np.histogram(x, bins=self.bins, range=(self.lo, self.hi))
        self.counts += counts

    def _rebin(self, lo: float, hi: float) -> None:
        new_edges = np.linspace(lo, hi, self.bins + 1)
        if self.hi == self.lo:
            counts = np.zeros(self.bins)
            idx = min(int(np.searchsorted(new_edges, self.lo, side="right")) - 1, self.bins - 1)
            counts[max(idx, 0)] = self.total
        else:
            cdf = np.concatenate(([0.0], np.cumsum(self.counts)))
            counts = np.diff(np.interp(new_edges, self.edges, cdf))
        self.counts, self.lo, self.hi = counts, lo, hi

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the mass lies (linear inside a bin)."""
        if self.hi == self.lo:
            return self.lo
        cdf = np.concatenate(([0.0], np.cumsum(self.counts)))
        target = q * cdf[-1]
        if target <= 0:
            return self.lo
        i = int(np.clip(np.searchsorted(cdf, target, side="left"), 1, self.bins))
        frac = (target - cdf[i - 1]) / self.counts[i - 1]
        width = (self.hi - self.lo) / self.bins
        return self.lo + (i - 1 + frac) * width


class _HistogramObserver(Observer):
    def __init__(self, bins: int = 2048, include_zero: bool = False):
        self.hist = Histogram(bins, include_zero)

    def _update(self, x):
        self.hist.add(x)

    def _seen(self):
        return self.hist.lo is not None


class PercentileObserver(_HistogramObserver):
    """``(P_{100-p}, P_p)`` of everything seen, from a ``bins``-bin histogram."""

    name = "percentile"

    def __init__(self, p: float = 99.99, bins: int = 2048):
        if not 50.0 <= p <= 100.0:
            raise CalibrationError(f"PercentileObserver: p must be in [50, 100], got {p}")
        super().__init__(bins)
        self.p = p

    def _range(self):
        return self.hist.quantile(1.0 - self.p / 100.0), self.hist.quantile(self.p / 100.0)


class MSEObserver(_HistogramObserver):
    """Clipping range ``(t·lo, t·hi)`` minimising the ``bits``-bit quantization MSE."""

    name = "mse"

    def __init__(self, bits: int = 8, bins: int = 2048, steps: int = 200):
        if bits not in ACTIVATION_BITS or steps < 1:
            raise CalibrationError(
                f"MSEObserver: bits must be one of {ACTIVATION_BITS} and steps >= 1, got "
                f"bits={bits}, steps={steps}")
        super().__init__(bins, include_zero=True)
        self.bits = bits
        self.steps = steps

    def _range(self):
        h = self.hist
        if h.hi == h.lo:
            return h.lo, h.hi
        edges = h.edges
        centres = (edges[:-1] + edges[1:]) / 2.0
        signed = h.lo < 0
        best, best_err = (h.lo, h.hi), np.inf
        for t in np.arange(1, self.steps + 1) / self.steps:
            lo, hi = h.lo * t, h.hi * t
            err = float(np.dot(h.counts, (centres - _fake_quant(centres, lo, hi, self.bits,
                                                                 signed)) ** 2))
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


def _fake_quant(x: np.ndarray, lo: float, hi: float, bits: int, signed: bool) -> np.ndarray:
    """dequantize(quantize(x)) on the :func:`activation_qtype` grid of ``[lo, hi]``."""
    qt = activation_qtype(lo, hi, bits, signed)
    scale, zp = qt.scale[0], qt.zero_point[0]
    return (np.clip(np.rint(x / scale) + zp, qt.min, qt.max) - zp) * scale


class EntropyObserver(_HistogramObserver):
    """TensorRT-style KL-divergence threshold at ``bits`` bits (see module docstring)."""

    name = "entropy"

    def __init__(self, bits: int = 8, bins: int = 2048):
        super().__init__(bins, include_zero=True)  # a histogram of |x|
        levels = 1 << bits
        if not 1 <= bits <= 16 or levels > bins:
            raise CalibrationError(
                f"EntropyObserver: bits must be 1..16 with 2^bits <= bins ({bins}), got {bits}")
        self.bits = bits
        self.data_min: float | None = None  # its sign decides signed / unsigned levels

    def _update(self, x):
        self.hist.add(np.abs(x))
        lo = float(x.min())
        self.data_min = lo if self.data_min is None else min(self.data_min, lo)

    def _range(self):
        signed = self.data_min < 0
        h = self.hist
        if h.hi == h.lo:
            return (-h.hi if signed else 0.0), h.hi
        levels = 1 << (self.bits - 1) if signed else 1 << self.bits
        threshold = kl_threshold_bin(h.counts, levels) * (h.hi - h.lo) / h.bins
        return (-threshold if signed else 0.0), threshold


def kl_threshold_bin(hist: np.ndarray, levels: int) -> int:
    """Number of leading bins ``i`` (``levels <= i <= len(hist)``) minimising ``KL(P || Q)``
    (TensorRT / MXNet calibration, see module docstring); first minimum on ties."""
    best_i, best_kl = len(hist), np.inf
    for i in range(levels, len(hist) + 1):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += hist[i:].sum()
        nonzero = (p != 0).astype(np.float64)
        starts = np.arange(levels) * (i // levels)  # last level also takes the remainder
        merged = np.add.reduceat(sliced, starts)
        norm = np.add.reduceat(nonzero, starts)
        per_bin = np.divide(merged, norm, out=np.zeros_like(merged), where=norm != 0)
        q = np.repeat(per_bin, np.diff(np.append(starts, i)))
        q[p == 0] = 0.0
        p_s, q_s = _smooth(p), _smooth(q)
        if p_s is None or q_s is None:
            continue
        p_s, q_s = p_s / p_s.sum(), q_s / q_s.sum()
        kl = float(np.sum(p_s * np.log(p_s / q_s)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def _smooth(dist: np.ndarray) -> np.ndarray | None:
    """Give zero bins ``eps`` mass taken evenly from the nonzero ones (MXNet); when a nonzero
    bin is too small to give its share (fractional re-binned counts), take it in proportion to
    mass instead. None when the distribution is all zero."""
    zeros = dist == 0
    n_zero = int(zeros.sum())
    n_nonzero = dist.size - n_zero
    if n_nonzero == 0:
        return None
    out = dist + _SMOOTH_EPS * zeros - (_SMOOTH_EPS * n_zero / n_nonzero) * ~zeros
    if np.all(out > 0):
        return out
    total = dist.sum()
    return dist * (1.0 - _SMOOTH_EPS * n_zero / total) + _SMOOTH_EPS * zeros


#: observer classes by name, as the calibrate pass and the CLI spell them
OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}
