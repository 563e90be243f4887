"""Fit, quantize and dequantize every lowbit number format (pure numpy).

Three entry points share one meaning of a :class:`~lowbit.ir.qtype.QType`:

* :func:`fit_weights` ``(w, kind, bits, granularity=...) -> (qtype, codes)`` chooses the
  parameters (scale, zero point, codebook) for a weight tensor and returns its codes;
* :func:`quantize` ``(x, qtype) -> codes`` maps any float tensor onto the format's codes;
* :func:`dequantize` ``(codes, qtype) -> float32`` reads codes back as real numbers.

**Groups.** Every parameter is stored once per group, flattened in C order:

* per-tensor: one group;
* per-channel(axis): ``w.shape[axis]`` groups (one per slice along ``axis``);
* per-group(axis, g): runs of ``g`` consecutive elements along ``axis`` (the reduction axis);
  the parameter array has ``w``'s shape with ``shape[axis]`` replaced by ``ceil(shape[axis] / g)``
  (the last group may be partial), the layout of ONNX blocked ``DequantizeLinear``.

**Formats** (``s`` the group's scale, ``q`` the code):

* uniform: ``x = (q - zp) * s``; quantize ``q = clamp(rint(x / s) + zp, qmin, qmax)`` with
  round half to even and ``[qmin, qmax]`` the storage range of a ``bits``-bit int / uint.
  Symmetric (signed): *restricted range*, ``zp = 0``, ``s = max|w| / (2^(b-1) - 1)`` so codes
  lie in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` and negation is exact. Symmetric unsigned:
  ``zp = 0``, ``s = max(w) / (2^b - 1)``, weights must be non-negative. Asymmetric:
  ``lo = min(min w, 0)``, ``hi = max(max w, 0)`` (zero always exact), ``s = (hi - lo) / (2^b - 1)``,
  ``zp = clamp(qmin - rint(lo / s), qmin, qmax)`` — for unsigned codes ``zp = rint(-lo / s)``;
  signed codes on non-negative data give the negative ``zp = qmin``. A group whose ``s`` would
  be 0 (all zeros) gets ``s = 1`` so every code stays exact and finite.
* binary: ``x = a * q``, ``q = +1 if x >= 0 else -1`` (sign(0) = +1), ``a = mean|w|`` per group
  (XNOR-Net). An all-zero group has ``a = 0``, the only ``a`` that reproduces it exactly.
* ternary: ``x = a * q``, ``q`` in {-1, 0, +1}. :func:`fit_weights` follows TWN: threshold
  ``delta = 0.7 * mean|w|``, ``q = sign(w) * [|w| > delta]``, ``a = mean(|w| : |w| > delta)``
  (``a = 1`` for an all-zero group). :func:`quantize` projects onto the nearest level given ``a``:
  ``q = sign(x) * [|x| > a / 2]`` (ties to 0), so it may differ from the TWN codes for
  ``|w|`` between ``delta`` and ``a / 2``; it reproduces them exactly on the grid.
* pow2: ``x = s * (-1)^sign * 2^-e`` with ``s = max|w|`` per group, ``E = 2^(bits-1)`` exponents
  ``e = 0 .. E-1`` (levels ``s, s/2, s/4, ...``). **Code layout:** the ``bits``-bit word is
  ``sign << (bits-1) | e`` and the stored code is that word read as two's complement,
  ``q = e - sign * E`` (so ``q >= 0`` is positive with ``e = q``, ``q < 0`` is negative with
  ``e = q + E``). ``zero_free`` (DenseShift): every weight maps to the nearest nonzero level.
  Otherwise the smallest level ``e = E-1`` reads as 0 instead of ``s * 2^-(E-1)``; zero is
  encoded ``q = E - 1`` (the word ``-1``, "negative zero", also reads 0). Nearest level in the
  linear domain, ties to the smaller magnitude. An all-zero group has ``s = 0`` when
  ``zero_free`` (exact zeros), ``s = 1`` otherwise.
* codebook: ``x = levels[q]``, ``2^bits`` levels per group sorted ascending (duplicates allowed
  when a group has fewer distinct values), codes uint; fitted by 1-D k-means: k-means++ init
  drawn from ``np.random.default_rng(seed)``, Lloyd iterations until the assignment is stable,
  then the levels are snapped onto the group's integer grid (:func:`snap_codebook`).
  Nearest level, ties to the lower level.

:func:`activation_qtype` builds the uniform format of an activation range and
:func:`weight_bytes` counts the packed size of a quantized weight.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import QuantizationError
from .qtype import Granularity, QKind, QType

#: legal ``bits`` per weight format
WEIGHT_BITS: dict[QKind, tuple[int, ...]] = {
    QKind.UNIFORM: (2, 3, 4, 5, 6, 7, 8),
    QKind.BINARY: (1,),
    QKind.TERNARY: (2,),
    QKind.POW2: (2, 3, 4, 5, 6, 7, 8),
    QKind.CODEBOOK: (1, 2, 3, 4, 5, 6, 7, 8),
}

#: legal ``bits`` for :func:`activation_qtype`
ACTIVATION_BITS = (1, 2, 4, 8)

#: TWN threshold factor: ``delta = TWN_DELTA * mean|w|``
TWN_DELTA = 0.7

#: signed bits of the integer grid ``passes/fold_scales`` rounds codebook levels onto, for
#: codebooks of at most :data:`SMALL_CODEBOOK_BITS` index bits (wider ones get
#: :data:`WIDE_CODEBOOK_GRID_BITS`); see :func:`codebook_grid_bits`
SMALL_CODEBOOK_GRID_BITS = 7
SMALL_CODEBOOK_BITS = 4
WIDE_CODEBOOK_GRID_BITS = 12

_KMEANS_MAX_ITERS = 100
_CHUNK = 1 << 20  # elements per chunk when comparing against per-group levels


# -- groups ------------------------------------------------------------------------------------
def normalize_granularity(shape: tuple[int, ...], granularity: Granularity) -> Granularity:
    """Check ``granularity`` against ``shape`` and return it with a non-negative axis."""
    if granularity.axis is None:
        if granularity.group_size is not None:
            raise QuantizationError(f"granularity {granularity}: group_size needs an axis")
        return granularity
    ndim = len(shape)
    if not -ndim <= granularity.axis < ndim:
        raise QuantizationError(
            f"granularity axis {granularity.axis} is out of range for a tensor of shape "
            f"{tuple(shape)}; use an axis in [{-ndim}, {ndim - 1}]")
    if granularity.group_size is not None and granularity.group_size < 1:
        raise QuantizationError(f"granularity {granularity}: group_size must be >= 1")
    return Granularity(granularity.axis % ndim, granularity.group_size)


def group_shape(shape: tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """Shape of the per-group parameter array (see module docstring; C-order flattened)."""
    gran = normalize_granularity(shape, granularity)
    if gran.axis is None:
        return ()
    if gran.group_size is None:
        return (shape[gran.axis],)
    out = list(shape)
    out[gran.axis] = -(-shape[gran.axis] // gran.group_size)
    return tuple(out)


def group_index(shape: tuple[int, ...], granularity: Granularity) -> tuple[np.ndarray, int]:
    """``(gid, n_groups)``: ``gid[i]`` (int64, same shape as the tensor) is the parameter index
    of element ``i``."""
    gran = normalize_granularity(shape, granularity)
    if gran.axis is None:
        return np.zeros(shape, dtype=np.int64), 1
    axis = gran.axis
    if gran.group_size is None:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        gid = np.broadcast_to(np.arange(shape[axis], dtype=np.int64).reshape(view), shape)
        return np.ascontiguousarray(gid), shape[axis]
    gshape = group_shape(shape, gran)
    n_groups = math.prod(gshape)
    blocks = np.arange(n_groups, dtype=np.int64).reshape(gshape)
    gid = np.repeat(blocks, gran.group_size, axis=axis)
    gid = np.take(gid, np.arange(shape[axis]), axis=axis)
    return np.ascontiguousarray(gid), n_groups


def _group_max(values: np.ndarray, gid: np.ndarray, n: int, init: float) -> np.ndarray:
    out = np.full(n, init, dtype=np.float64)
    np.maximum.at(out, gid.ravel(), values.ravel())
    return out


def _group_min(values: np.ndarray, gid: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf, dtype=np.float64)
    np.minimum.at(out, gid.ravel(), values.ravel())
    return out


def _group_mean(values: np.ndarray, gid: np.ndarray, n: int) -> np.ndarray:
    sums = np.bincount(gid.ravel(), weights=values.ravel(), minlength=n)
    counts = np.bincount(gid.ravel(), minlength=n)
    return sums / np.maximum(counts, 1)


# -- fitting -----------------------------------------------------------------------------------
def fit_weights(
    w,
    kind: QKind | str,
    bits: int,
    *,
    signed: bool = True,
    granularity: Granularity,
    symmetric: bool = True,
    zero_free: bool = False,
    seed: int = 0,
) -> tuple[QType, np.ndarray]:
    """Fit a ``kind``/``bits`` format to weights ``w`` and return ``(qtype, codes)``.

    The rules per kind are in the module docstring. ``codes`` has ``w``'s shape and the numpy
    dtype of ``qtype.storage``; ``dequantize(codes, qtype)`` is the quantized weight.
    ``symmetric`` applies to uniform only, ``zero_free`` to pow2 only, ``seed`` to codebook only;
    binary / ternary / pow2 are always signed, codebook codes are always unsigned indices.
    """
    kind = _parse_kind(kind)
    w = np.asarray(w, dtype=np.float64)
    _check_request(w, kind, bits, signed, symmetric, zero_free)
    gran = normalize_granularity(w.shape, granularity)
    gid, n_groups = group_index(w.shape, gran)
    absw = np.abs(w)

    if kind == QKind.UNIFORM:
        qtype = _fit_uniform(w, gid, n_groups, bits, signed, gran, symmetric)
    elif kind == QKind.BINARY:
        alpha = _group_mean(absw, gid, n_groups)
        qtype = QType(QKind.BINARY, 1, True, gran, scale=_floats(alpha))
    elif kind == QKind.TERNARY:
        delta = TWN_DELTA * _group_mean(absw, gid, n_groups)
        keep = absw > delta[gid]
        sums = np.bincount(gid.ravel(), weights=np.where(keep, absw, 0.0).ravel(),
                           minlength=n_groups)
        counts = np.bincount(gid.ravel(), weights=keep.ravel().astype(np.float64),
                             minlength=n_groups)
        alpha = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
        qtype = QType(QKind.TERNARY, 2, True, gran, scale=_floats(alpha))
        codes = (np.where(w < 0, -1, 1) * keep).astype(qtype.storage.numpy)
        return qtype, codes
    elif kind == QKind.POW2:
        s = _group_max(absw, gid, n_groups, 0.0)
        s = np.where(s > 0, s, 0.0 if zero_free else 1.0)
        qtype = QType(QKind.POW2, bits, True, gran, scale=_floats(s), zero_free=zero_free)
    else:
        levels = snap_codebook(_kmeans_1d(w.ravel(), gid.ravel(), n_groups, 1 << bits,
                                          np.random.default_rng(seed)), bits)
        qtype = QType(QKind.CODEBOOK, bits, False, gran,
                      codebook=tuple(tuple(float(v) for v in row) for row in levels))
    return qtype, quantize(w, qtype)


def codebook_grid_bits(bits: int) -> int:
    """Signed bits ``G`` of the integer grid a ``bits``-bit codebook's levels are rounded onto
    when scales are folded: the unit is ``max|level| / (2^(G−1) − 1)`` per group and each
    level becomes ``rint(level / unit)``, so the rounding moves a level by at most
    ``max|level| / (2^G − 2)``.

    ``G = 7`` for codebooks of at most 4 index bits: the integer weights then fit
    ``|w| <= 63`` and run on the int8 kernel's exact 7-bit paths (``vpmaddubsw`` on AVX2,
    ``vpdpbusd`` with VNNI). 16 levels spread over ``±max`` are ~``max/7.5`` apart, so the
    grid moves a level by at most 1/17 of that spacing (noise power +~1.5 % over the
    codebook's own rounding). Wider codebooks keep ``G = 12`` (a 7-bit grid would merge their
    levels) and run on the reference kernel."""
    return SMALL_CODEBOOK_GRID_BITS if bits <= SMALL_CODEBOOK_BITS else WIDE_CODEBOOK_GRID_BITS


def snap_codebook(levels, bits: int) -> np.ndarray:
    """Codebook levels ``(G, k)`` rounded onto their group's integer grid
    (:func:`codebook_grid_bits`): ``rint(level / unit) · unit`` with ``unit = max|level| /
    (2^(G−1) − 1)``. Rounding is monotone, so sorted rows stay sorted (neighbours may merge).
    The fitted and reconstructed codebooks are snapped, so the fake-quant weights *are* the
    integer weights ``passes/fold_scales`` computes with (its rounding is then exact)."""
    levels = np.asarray(levels, dtype=np.float64)
    steps = (1 << (codebook_grid_bits(bits) - 1)) - 1
    top = np.abs(levels).max(axis=-1, keepdims=True)
    unit = np.where(top > 0, top / steps, 1.0)
    return np.rint(levels / unit) * unit


def _parse_kind(kind: QKind | str) -> QKind:
    try:
        return QKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in QKind)
        raise QuantizationError(f"unknown quantization kind {kind!r}; use one of {names}") from None


def _check_request(w, kind, bits, signed, symmetric, zero_free) -> None:
    if bits not in WEIGHT_BITS[kind]:
        raise QuantizationError(
            f"{kind.value} weights cannot use {bits} bits; legal widths: {WEIGHT_BITS[kind]}")
    if w.size == 0:
        raise QuantizationError(f"cannot fit {kind.value} format to an empty tensor {w.shape}")
    if not np.all(np.isfinite(w)):
        raise QuantizationError(
            f"cannot fit {kind.value} format: weights of shape {w.shape} contain NaN or inf")
    if kind in (QKind.BINARY, QKind.TERNARY, QKind.POW2) and not signed:
        raise QuantizationError(f"{kind.value} weights are always signed; pass signed=True")
    if kind != QKind.UNIFORM and not symmetric:
        raise QuantizationError(
            f"symmetric=False applies to uniform weights only, not {kind.value}")
    if kind != QKind.POW2 and zero_free:
        raise QuantizationError(f"zero_free applies to pow2 weights only, not {kind.value}")
    if kind == QKind.UNIFORM and symmetric and not signed and np.any(w < 0):
        raise QuantizationError(
            "symmetric unsigned uniform weights must be non-negative; use signed=True or "
            "symmetric=False")


def _fit_uniform(w, gid, n_groups, bits, signed, gran, symmetric) -> QType:
    qmin, qmax = _int_range(bits, signed)
    if symmetric:
        # signed: qmax = 2^(b-1) - 1 leaves -2^(b-1) unused (restricted range)
        scale = _group_max(np.abs(w), gid, n_groups, 0.0) / qmax
        zp = np.zeros(n_groups, dtype=np.int64)
    else:
        lo = np.minimum(_group_min(w, gid, n_groups), 0.0)
        hi = np.maximum(_group_max(w, gid, n_groups, -np.inf), 0.0)
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(qmin - np.rint(lo / safe), qmin, qmax).astype(np.int64)
    scale = np.where((scale > 0) & np.isfinite(scale), scale, 1.0)
    return QType(QKind.UNIFORM, bits, signed, gran, scale=_floats(scale),
                 zero_point=tuple(int(z) for z in zp))


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())


# -- k-means -----------------------------------------------------------------------------------
def _kmeans_1d(x: np.ndarray, gid: np.ndarray, n_groups: int, k: int,
               rng: np.random.Generator) -> np.ndarray:
    """Per-group 1-D k-means: k-means++ seeding then Lloyd; returns sorted levels (G, k)."""
    order = np.argsort(gid, kind="stable")
    xs, gs = x[order], gid[order]
    counts = np.bincount(gs, minlength=n_groups)
    ends = np.cumsum(counts)
    starts = ends - counts

    centers = np.empty((n_groups, k), dtype=np.float64)
    first = starts + np.floor(rng.random(n_groups) * counts).astype(np.int64)
    centers[:, 0] = xs[np.minimum(first, ends - 1)]
    d2 = (xs - centers[gs, 0]) ** 2
    for j in range(1, k):
        # Sample one point per group with probability proportional to D^2 (k-means++).
        cum = np.cumsum(d2)
        base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
        total = cum[ends - 1] - base
        target = base + rng.random(n_groups) * total
        pick = np.clip(np.searchsorted(cum, target, side="right"), starts, ends - 1)
        pick = np.where(total > 0, pick, starts)  # every point already a center: duplicate
        centers[:, j] = xs[pick]
        d2 = np.minimum(d2, (xs - centers[gs, j]) ** 2)

    centers.sort(axis=1)
    codes = _nearest_level(xs, gs, centers)
    for _ in range(_KMEANS_MAX_ITERS):
        slot = gs * k + codes
        sums = np.bincount(slot, weights=xs, minlength=n_groups * k).reshape(n_groups, k)
        cnt = np.bincount(slot, minlength=n_groups * k).reshape(n_groups, k)
        centers = np.where(cnt > 0, sums / np.maximum(cnt, 1), centers)  # empty: keep
        centers.sort(axis=1)
        new_codes = _nearest_level(xs, gs, centers)
        if np.array_equal(new_codes, codes):
            break
        codes = new_codes
    return centers


def _nearest_level(x: np.ndarray, gid: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of each element's group levels (sorted ascending; ties go low, and
    of equal levels the first, so a level's value maps to one code whatever its rounding)."""
    mids = (levels[:, 1:] + levels[:, :-1]) / 2.0
    # the count of each group's midpoints below x, by a branch-free binary search over the
    # sorted midpoints padded with +inf to 2^m - 1 (m gathers per element, not k compares)
    width = (1 << mids.shape[1].bit_length()) - 1
    padded = np.full((mids.shape[0], width), np.inf)
    padded[:, :mids.shape[1]] = mids
    flat = padded.ravel()
    out = np.empty(x.shape, dtype=np.int64)
    for i in range(0, x.size, _CHUNK):
        sl = slice(i, i + _CHUNK)
        xs, row = x[sl], gid[sl].astype(np.int64) * width  # flat start of the group's row
        count = row.copy()
        bit = (width + 1) >> 1
        while bit:
            count += bit * (xs > flat[count + (bit - 1)])
            bit >>= 1
        out[sl] = count - row
    index = np.arange(levels.shape[1])
    starts = np.concatenate([np.ones((levels.shape[0], 1), bool),
                             levels[:, 1:] != levels[:, :-1]], axis=1)
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return first[gid, out]


# -- quantize / dequantize ---------------------------------------------------------------------
def quantize(x, qtype: QType) -> np.ndarray:
    """Map float ``x`` onto ``qtype``'s codes (rules in the module docstring).

    Returns codes of ``x``'s shape in ``qtype.storage.numpy``; always within
    ``qtype.min .. qtype.max``.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise QuantizationError(f"cannot quantize to {qtype}: input contains NaN or inf")
    gid, n_groups = group_index(x.shape, qtype.granularity)
    dtype = qtype.storage.numpy

    if qtype.kind == QKind.CODEBOOK:
        levels = _codebook_array(qtype, n_groups)
        codes = _nearest_level(x.ravel(), gid.ravel(), levels).reshape(x.shape)
        return codes.astype(dtype)

    scale = _param(qtype.scale, n_groups, qtype, "scale")[gid]
    if qtype.kind == QKind.UNIFORM:
        zp = _param(qtype.zero_point or (0,), n_groups, qtype, "zero_point")[gid]
        codes = np.clip(np.rint(x / scale) + zp, qtype.min, qtype.max)
        return codes.astype(dtype)
    if qtype.kind == QKind.BINARY:
        return np.where(x < 0, -1, 1).astype(dtype)
    if qtype.kind == QKind.TERNARY:
        return (np.where(x < 0, -1, 1) * (np.abs(x) > scale / 2)).astype(dtype)
    return _quantize_pow2(x, scale, qtype).astype(dtype)


def _quantize_pow2(x: np.ndarray, scale: np.ndarray, qtype: QType) -> np.ndarray:
    n_exp = 1 << (qtype.bits - 1)
    # Magnitude levels, ascending; index i <-> exponent e = n_exp - 1 - i in both variants.
    levels = 2.0 ** -np.arange(n_exp - 1, -1, -1, dtype=np.float64)
    if not qtype.zero_free:
        levels[0] = 0.0
    ratio = np.abs(x) / np.where(scale > 0, scale, 1.0)
    idx = np.searchsorted((levels[1:] + levels[:-1]) / 2.0, ratio, side="left")
    exponent = n_exp - 1 - idx
    negative = (x < 0) & (qtype.zero_free | (idx > 0))  # zero is always the positive code
    return exponent - negative * n_exp


def dequantize(codes, qtype: QType) -> np.ndarray:
    """Read ``codes`` as real numbers (float32) under ``qtype`` (formulas in module docstring).

    Raises :class:`QuantizationError` for codes outside the format.
    """
    codes = np.asarray(codes)
    if not qtype.can_represent(codes):
        raise QuantizationError(
            f"codes in [{codes.min()}, {codes.max()}] are not legal codes of {qtype}")
    q = codes.astype(np.int64)
    gid, n_groups = group_index(q.shape, qtype.granularity)
    if qtype.kind == QKind.CODEBOOK:
        levels = _codebook_array(qtype, n_groups)
        if np.any(q >= levels.shape[1]):
            raise QuantizationError(f"codes exceed the {levels.shape[1]} levels of {qtype}")
        return levels[gid, q].astype(np.float32)
    scale = _param(qtype.scale, n_groups, qtype, "scale")[gid]
    if qtype.kind == QKind.UNIFORM:
        zp = _param(qtype.zero_point or (0,), n_groups, qtype, "zero_point")[gid]
        return ((q - zp) * scale).astype(np.float32)
    if qtype.kind in (QKind.BINARY, QKind.TERNARY):
        return (q * scale).astype(np.float32)
    n_exp = 1 << (qtype.bits - 1)
    exponent = np.mod(q, n_exp)
    magnitude = 2.0 ** -exponent.astype(np.float64)
    if not qtype.zero_free:
        magnitude = np.where(exponent == n_exp - 1, 0.0, magnitude)
    return (np.where(q < 0, -1.0, 1.0) * magnitude * scale).astype(np.float32)


def _param(values, n_groups: int, qtype: QType, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64 if what == "scale" else np.int64)
    if arr.size == 1 and n_groups != 1:
        arr = np.broadcast_to(arr.ravel(), (n_groups,))
    if arr.size != n_groups:
        raise QuantizationError(
            f"{qtype} has {arr.size} {what} values but the tensor has {n_groups} groups "
            f"({qtype.granularity}); refit the format for this tensor's shape")
    return arr.ravel()


def rescale_groups(groups, w_shape: tuple[int, ...], w_channel_axis: int):
    """The reduction groups of a per-group weight rescale (``ir.attrs.GroupRescale``: axis,
    size, multiplier, shift): ``(red, m, s)`` with ``red`` the reduction-group index r of every
    weight element (C order over the non-channel parameter dims) and ``m`` / ``s`` the
    ``(R, C)`` dyadic multipliers / shifts. The integer simulator and the lowering both read
    the table from here, so they cannot disagree on the group order."""
    gran = Granularity(groups.axis, groups.size)
    pshape = group_shape(tuple(w_shape), gran)
    gid, _ = group_index(tuple(w_shape), gran)
    idx = np.unravel_index(gid, pshape)
    others = [d for d in range(len(pshape)) if d != w_channel_axis]
    red = np.ravel_multi_index([idx[d] for d in others], [pshape[d] for d in others])
    n_red, n_ch = int(np.prod([pshape[d] for d in others])), pshape[w_channel_axis]
    m = np.asarray(groups.multiplier, dtype=np.int64).reshape(n_red, n_ch)
    s = np.asarray(groups.shift, dtype=np.int64).reshape(n_red, n_ch)
    return red, m, s


def group_params(qtype: QType, shape: tuple[int, ...]) -> np.ndarray:
    """The per-group parameters of ``qtype`` for a tensor of ``shape`` as float64: the scales
    ``(G,)``, or for a codebook the levels ``(G, k)`` (a single scale / row is broadcast to every
    group). Raises QuantizationError when the count does not match the tensor's groups."""
    _, n_groups = group_index(tuple(shape), qtype.granularity)
    if qtype.kind == QKind.CODEBOOK:
        return _codebook_array(qtype, n_groups)
    return _param(qtype.scale, n_groups, qtype, "scale").astype(np.float64)


def _codebook_array(qtype: QType, n_groups: int) -> np.ndarray:
    rows = qtype.codebook
    if len(rows) == 1 and n_groups != 1:
        rows = rows * n_groups
    if len(rows) != n_groups or len({len(r) for r in rows}) != 1:
        raise QuantizationError(
            f"{qtype} has {len(qtype.codebook)} codebooks but the tensor has {n_groups} groups "
            f"({qtype.granularity}); give one equal-length codebook per group")
    return np.asarray(rows, dtype=np.float64)


# -- activations and sizes ---------------------------------------------------------------------
def activation_qtype(lo: float, hi: float, bits: int, signed: bool, *,
                     symmetric: bool = False) -> QType:
    """Per-tensor uniform format for activations observed in ``[lo, hi]``.

    The range is widened to contain 0 (``lo' = min(lo, 0)``, ``hi' = max(hi, 0)``) so zero (padding,
    ReLU) is exact: ``s = (hi' - lo') / (2^b - 1)``, ``zp = clamp(qmin - rint(lo' / s), qmin,
    qmax)`` with int(b) codes when ``signed`` else uint(b) (asymmetric; an unsigned range on
    uint codes gives ``zp = 0``). ``symmetric=True`` (signed only, >= 2 bits) gives ``zp = 0``,
    ``s = max(|lo|, |hi|) / (2^(b-1) - 1)``. A zero range gives ``s = 1``. 1-bit activations
    are unsigned ``{0, s}``.
    """
    if bits not in ACTIVATION_BITS:
        raise QuantizationError(
            f"activations cannot use {bits} bits; legal widths: {ACTIVATION_BITS}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise QuantizationError(f"activation range [{lo}, {hi}] is not finite; recalibrate")
    if lo > hi:
        raise QuantizationError(f"activation range [{lo}, {hi}] is empty (lo > hi)")
    if bits == 1 and signed:
        raise QuantizationError(
            "1-bit activations are unsigned {0, s}; pass signed=False or use a binary QType")
    qmin, qmax = _int_range(bits, signed)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        if not signed:
            raise QuantizationError("symmetric activations need signed=True")
        scale = max(-lo, hi) / ((1 << (bits - 1)) - 1)
        zp = 0
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = 0 if scale <= 0 else int(np.clip(qmin - np.rint(lo / scale), qmin, qmax))
    if not (scale > 0 and math.isfinite(scale)):
        scale = 1.0
    return QType(QKind.UNIFORM, bits, signed, Granularity(), scale=(scale,), zero_point=(zp,))


def weight_bytes(codes, qtype: QType) -> int:
    """Bytes of a weight packed at ``qtype.bits`` per element plus its parameters.

    ``ceil(n * bits / 8)`` for the codes + 4 bytes (float32) per scale + 4 per zero point (only
    when some zero point is nonzero; symmetric formats store none) + per codebook its levels
    as integers of its grid (:func:`codebook_grid_bits`, ``ceil(k * G / 8)`` bytes: 14 for 16
    levels of 7 bits) and 4 for the grid's float unit.
    """
    n = int(np.asarray(codes).size)
    total = -(-n * qtype.bits // 8)
    total += 4 * len(qtype.scale)
    if any(qtype.zero_point):
        total += 4 * len(qtype.zero_point)
    grid = codebook_grid_bits(qtype.bits)
    total += sum(-(-len(levels) * grid // 8) + 4 for levels in qtype.codebook)
    return total
