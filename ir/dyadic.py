"""Integer-only requantization with dyadic multipliers (HAWQ-V3 / gemmlowp style).

An integer layer produces an accumulator ``acc = sum_k (w_k - zw)(a_k - za)`` whose real value is
``acc * s_w * s_a``. The next layer wants codes of scale ``s_out``, so the *real multiplier*
``M = s_w * s_a / s_out`` is applied in integers as a dyadic number ``M ~= m / 2^shift``:

    out = clamp(((acc * m + 2^(shift-1)) >> shift) + zp, qmin, qmax)

``>>`` is an arithmetic (floor) shift, so adding ``2^(shift-1)`` rounds **half up** (towards
+inf); for ``shift = 0`` nothing is added. Everything is computed in int64; see
:func:`requantize` for the overflow bound. ReLU / Clip fold into a tighter ``(qmin, qmax)``
(:func:`fold_clamp`), and :func:`accumulator_bound` says whether a K-long dot product fits the
accumulator.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import QuantizationError
from .qtype import QKind, QType

#: largest shift :func:`to_dyadic` produces: keeps ``1 << shift`` and the rounding term in int64
MAX_SHIFT = 62

_INT64_MAX = (1 << 63) - 1


def to_dyadic(real_multiplier, mult_bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """``real ~= m / 2^shift`` elementwise; returns int64 arrays ``(m, shift)`` of real's shape.

    Normal values: ``real = f * 2^E`` with ``f`` in [0.5, 1) (``frexp``), ``m = rint(f *
    2^mult_bits)`` in ``[2^(mult_bits-1), 2^mult_bits)`` (a carry to ``2^mult_bits`` halves m
    and bumps E) and ``shift = mult_bits - E``; relative error <= ``2^-mult_bits``.

    * zero: ``m = 0, shift = 0``;
    * tiny (``shift`` would exceed :data:`MAX_SHIFT` = 62, i.e. ``real < 2^-32`` for
      ``mult_bits = 31``): the shift is capped at 62 and ``m = rint(real * 2^62)`` (absolute
      error <= 2^-63, m below the normal range); ``real <= 2^-63`` underflows to
      ``m = 0, shift = 0``;
    * huge: multipliers above 1 are fine while ``shift >= 0``, i.e. ``real < 2^mult_bits``
      (after rounding); a larger one would need a negative shift, which lowbit refuses with
      :class:`QuantizationError` (no real scale chain needs it).

    Negative or non-finite multipliers raise :class:`QuantizationError`.
    """
    if not 1 <= mult_bits <= 31:
        raise QuantizationError(f"mult_bits must be 1..31 (int32 multiplier), got {mult_bits}")
    real = np.asarray(real_multiplier, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise QuantizationError(
            f"dyadic multipliers must be finite and >= 0, got values in "
            f"[{real.min()}, {real.max()}]; check the scales that produced them")
    frac, exp = np.frexp(real)
    m = np.rint(np.ldexp(frac, mult_bits)).astype(np.int64)
    carry = m == (1 << mult_bits)
    m = np.where(carry, m >> 1, m)
    shift = mult_bits - (exp.astype(np.int64) + carry)
    if np.any((shift < 0) & (m > 0)):
        raise QuantizationError(
            f"dyadic multiplier {real.max():.6g} needs a negative shift (>= 2^{mult_bits}); "
            f"the output scale is implausibly small, check calibration")
    # Tiny: cap the shift and round real * 2^62 once (exact ldexp, no double rounding).
    tiny = shift > MAX_SHIFT
    m = np.where(tiny, np.rint(np.ldexp(np.where(tiny, real, 0.0), MAX_SHIFT)).astype(np.int64), m)
    shift = np.minimum(shift, MAX_SHIFT)
    zero = m == 0
    return np.where(zero, 0, m).astype(np.int64), np.where(zero, 0, shift).astype(np.int64)


def from_dyadic(m, shift) -> np.ndarray:
    """The real value ``m / 2^shift`` (float64) of a dyadic pair."""
    return np.ldexp(np.asarray(m, dtype=np.float64), -np.asarray(shift, dtype=np.int64))


def requantize(acc, m, shift, zero_point, qmin: int, qmax: int, axis: int | None = None
               ) -> np.ndarray:
    """``clamp(((acc * m + 2^(shift-1)) >> shift) + zero_point, qmin, qmax)`` in int64.

    Rounding is half up (``>>`` floors; no term for ``shift = 0``). ``m``, ``shift`` and
    ``zero_point`` are scalars or, with ``axis``, one per channel of ``acc`` along ``axis``.

    Overflow bound: with ``A = max|acc|``, ``Mx = max m`` and ``S = max shift`` the only
    intermediate that can leave int64 is ``|acc * m + 2^(S-1)| <= A * Mx + 2^(S-1)``; this is
    checked exactly in Python ints before computing and must be ``<= 2^63 - 1``. For the
    usual case (int32 acc, ``m < 2^31`` from :func:`to_dyadic`, ``shift <= 62``) it holds:
    ``2^31 * (2^31 - 1) + 2^61 < 2^62 + 2^61 < 2^63``. After the shift the value only shrinks,
    and adding ``zero_point`` (|zp| < 2^32 is enforced) cannot overflow either.
    Returns int64 codes of ``acc``'s shape.
    """
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iu":
        raise QuantizationError(f"requantize needs an integer accumulator, got {acc.dtype}")
    acc = acc.astype(np.int64)
    m_b, shift_b, zp_b = (_per_channel(np.asarray(v), acc, axis, name)
                          for v, name in ((m, "m"), (shift, "shift"), (zero_point, "zero_point")))
    if np.any(m_b < 0) or np.any(shift_b < 0) or np.any(shift_b > MAX_SHIFT):
        raise QuantizationError(
            f"requantize needs m >= 0 and 0 <= shift <= {MAX_SHIFT}; use to_dyadic to build them")
    if np.any(np.abs(zp_b) >= (1 << 32)) or qmin > qmax:
        raise QuantizationError(f"requantize: bad zero point or empty range [{qmin}, {qmax}]")
    if acc.size:
        a_max = max(abs(int(acc.min())), abs(int(acc.max())))
        s_max = int(shift_b.max())
        bound = a_max * int(m_b.max()) + ((1 << (s_max - 1)) if s_max > 0 else 0)
        if bound > _INT64_MAX:
            raise QuantizationError(
                f"requantize would overflow int64: max|acc| = {a_max}, max m = {int(m_b.max())}, "
                f"shift {s_max}; use mult_bits <= 31 and an int32-range accumulator")
    half = np.where(shift_b > 0, np.left_shift(np.int64(1), np.maximum(shift_b - 1, 0)), 0)
    out = np.right_shift(acc * m_b + half, shift_b) + zp_b
    return np.clip(out, qmin, qmax)


def _per_channel(value: np.ndarray, acc: np.ndarray, axis: int | None, name: str) -> np.ndarray:
    value = value.astype(np.int64)
    if axis is None or value.size == 1:
        if value.size != 1:
            raise QuantizationError(
                f"requantize: {name} has {value.size} values but no channel axis was given")
        return value.reshape(())
    if not -acc.ndim <= axis < acc.ndim or value.size != acc.shape[axis]:
        raise QuantizationError(
            f"requantize: {value.size} {name} values do not match axis {axis} of an "
            f"accumulator of shape {acc.shape}")
    view = [1] * acc.ndim
    view[axis] = value.size
    return value.reshape(view)


def fold_clamp(lo: float | None, hi: float | None, scale: float, zp: int, qmin: int, qmax: int
               ) -> tuple[int, int]:
    """Fold a real clamp ``[lo, hi]`` (ReLU: ``lo = 0, hi = None``; ReLU6 / Clip: both) that
    follows a requantize into its integer range.

    Rounding is monotone, so ``round(clamp(x, lo, hi) / s) = clamp(round(x / s), round(lo / s),
    round(hi / s))``; the new range is ``[clamp(floor(lo / s + 1/2) + zp), clamp(floor(hi / s +
    1/2) + zp)]`` clamped into ``[qmin, qmax]`` (half up, the rounding of :func:`requantize`).
    ``None`` means unbounded on that side. Always returns ``qmin' <= qmax'``.
    """
    if not scale > 0:
        raise QuantizationError(f"fold_clamp needs a positive scale, got {scale}")
    if lo is not None and hi is not None and lo > hi:
        raise QuantizationError(f"fold_clamp: empty clamp range [{lo}, {hi}]")

    def code(v: float | None, default: int) -> int:
        if v is None or math.isinf(v):
            return default if v is None else (qmin if v < 0 else qmax)
        return min(max(math.floor(v / scale + 0.5) + zp, qmin), qmax)

    return code(lo, qmin), code(hi, qmax)


def _max_magnitude(qtype: QType, which: str) -> int:
    """Largest |integer operand| a code of ``qtype`` contributes to a dot product."""
    kind = qtype.kind
    if kind in (QKind.BINARY, QKind.TERNARY):
        return 1
    if kind == QKind.POW2:
        # Shift-add: a code enters as sign * 2^(e_max - e) (units of the smallest level).
        n_exp = 1 << (qtype.bits - 1)
        return 1 << (n_exp - 1 if qtype.zero_free else n_exp - 2)
    if kind == QKind.UNIFORM:
        zps = qtype.zero_point or (0,)
        return max(max(abs(qtype.min - z), abs(qtype.max - z)) for z in zps)
    if kind == QKind.CODEBOOK and which == "weight":
        # levels on the integer grid of passes/fold_scales: |w| <= 2^(G-1) - 1
        from .qformats import codebook_grid_bits

        return (1 << (codebook_grid_bits(qtype.bits) - 1)) - 1
    raise QuantizationError(
        f"{which} format {qtype} has no integer accumulator (codebook codes index levels; "
        f"only codebook weights, on their integer level grid, enter a dot product)")


def accumulator_bound(K: int, w_qtype: QType, a_qtype: QType) -> int:
    """Max ``|sum_{k<K} (w_k - zw)(a_k - za)|`` over all legal codes (exact, attained).

    Each term is bounded by ``Wmax * Amax`` with ``Wmax = max |q - zp|`` over the format's code
    range (worst channel's zero point; binary / ternary: 1; pow2: ``2^(e_max)`` as a shift-add
    integer; codebook weights: the largest level of their integer grid), and the worst-case
    vectors (every term at that corner) attain ``K * Wmax * Amax``.
    """
    if K < 0:
        raise QuantizationError(f"accumulator_bound: K must be >= 0, got {K}")
    return K * _max_magnitude(w_qtype, "weight") * _max_magnitude(a_qtype, "activation")


def fits_accumulator(K: int, w_qtype: QType, a_qtype: QType, acc_bits: int = 32) -> bool:
    """True when :func:`accumulator_bound` fits a signed ``acc_bits`` accumulator."""
    return accumulator_bound(K, w_qtype, a_qtype) <= (1 << (acc_bits - 1)) - 1
