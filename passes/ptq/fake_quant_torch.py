"""Differentiable fake quantization in torch, on exactly the grid of :mod:`lowbit.ir.qformats`.

**Forward.** ``fake_quant(w, qtype)`` equals ``dequantize(quantize(w, qtype), qtype)`` bit for bit
(float32 in, float32 out): the code of every element is decided in float64 with the same
comparisons as :mod:`~lowbit.ir.qformats` (round half to even, ternary ``|w| > a/2``, pow2
nearest level with ties to the smaller magnitude, codebook nearest level with ties to the lower
one) and the value is the same float64 product ``level * s`` rounded once to ``w.dtype``.

**Backward** (straight-through estimator; ``s`` the element's group scale, ``v = w / s``):

* ``dy/dw = 1`` while ``w`` lies inside the format's range, else 0. Range: uniform — the
  unclamped code ``rint(v) + zp`` lies in ``[qmin, qmax]``; binary / ternary / pow2 — ``|v| <= 1``;
  codebook — ``levels[0] <= w <= levels[-1]`` of its group.
* learnable scale (LSQ, Esser et al. 2020): ``y = s * l(v)`` with ``l`` the level, so
  ``dy/ds = l - v`` inside the range and ``l`` outside it (saturated). Gradients of the per-element
  scales sum into the per-group parameters.
* learnable codebook: ``y = levels[idx]``, so ``dy/dlevels[g, j] = 1`` for the elements of group
  ``g`` assigned to level ``j`` (assignment is re-decided every call, on the sorted levels).

Parameters are the format's per-group values (see :func:`quant_params`): ``scale`` of shape
``(G,)`` for uniform / binary / ternary / pow2, ``codebook`` levels of shape ``(G, k)``.
:func:`with_params` writes learned parameters back into a :class:`QType`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...ir.errors import QuantizationError
from ...ir.qformats import group_index, group_params, snap_codebook
from ...ir.qtype import QKind, QType

try:
    import torch
except ImportError as exc:  # pragma: no cover - torch is a dependency of the ptq extras
    raise QuantizationError(
        "post-training reconstruction needs torch; install it with `pip install torch`") from exc

_CHUNK = 1 << 18  # elements per chunk in the codebook nearest-level search


def quant_params(qtype: QType, shape: tuple[int, ...]) -> torch.Tensor:
    """The per-group parameters of ``qtype`` for a tensor of ``shape`` as a float64 tensor:
    the scales ``(G,)``, or for a codebook the levels ``(G, k)`` (see
    :func:`lowbit.ir.qformats.group_params`)."""
    return torch.from_numpy(np.array(group_params(qtype, tuple(shape)), dtype=np.float64))


def with_params(qtype: QType, params: torch.Tensor) -> QType:
    """``qtype`` with its scales (or codebook levels, each row sorted ascending and snapped onto
    its integer grid, :func:`~lowbit.ir.qformats.snap_codebook`) set to ``params``; every other
    field (kind, bits, granularity, zero points) is kept."""
    arr = params.detach().to(torch.float64).cpu().numpy()
    if qtype.kind == QKind.CODEBOOK:
        rows = snap_codebook(np.sort(arr.reshape(arr.shape[0], -1), axis=1), qtype.bits)
        return dataclasses.replace(
            qtype, codebook=tuple(tuple(float(v) for v in row) for row in rows))
    return dataclasses.replace(qtype, scale=tuple(float(v) for v in arr.ravel()))


def fake_quant(w: torch.Tensor, qtype: QType) -> torch.Tensor:
    """Quantize-dequantize ``w`` on ``qtype``'s grid with a straight-through gradient to ``w``.

    Bit-exact with ``dequantize(quantize(w, qtype), qtype)``; the result has ``w``'s dtype.
    """
    return fake_quant_learnable(w, qtype, quant_params(qtype, tuple(w.shape)))


def fake_quant_learnable(w: torch.Tensor, qtype: QType, params: torch.Tensor) -> torch.Tensor:
    """Like :func:`fake_quant` but with the format's parameters taken from ``params`` (scales
    ``(G,)`` or codebook levels ``(G, k)``, float64, may require grad), differentiable in both
    ``w`` (STE) and ``params`` (LSQ scale gradient / codebook level gradient).

    The forward value equals ``dequantize(quantize(w, q), q)`` for ``q = with_params(qtype,
    params)``.
    """
    gid_np, n_groups = group_index(tuple(w.shape), qtype.granularity)
    gid = torch.from_numpy(gid_np)
    w64 = w.to(torch.float64)
    expected = (n_groups, ) if qtype.kind != QKind.CODEBOOK else (n_groups, params.shape[-1])
    if tuple(params.shape) != expected or params.dtype != torch.float64:
        raise QuantizationError(
            f"{qtype.kind.value} parameters for a tensor of shape {tuple(w.shape)} must be a "
            f"float64 tensor of shape {expected}, got {params.dtype} {tuple(params.shape)}")
    if qtype.kind == QKind.CODEBOOK:
        levels = torch.sort(params, dim=1).values
        with torch.no_grad():
            idx = _nearest_level(w64.detach(), gid, levels.detach())
            inside = (w64 >= levels[gid, 0]) & (w64 <= levels[gid, -1])
        out = _PassThrough.apply(w64, levels[gid, idx], inside)
    else:
        scale = params[gid]
        with torch.no_grad():
            zero_point = _zero_points(qtype, n_groups)[gid]
            level, inside = _LEVELS[qtype.kind](w64.detach(), scale.detach(), zero_point, qtype)
        out = _ScaledPassThrough.apply(w64, scale, level, inside)
    return out.to(w.dtype)


def fake_quant_scales(w: torch.Tensor, qtype: QType, scales: torch.Tensor) -> torch.Tensor:
    """``fake_quant_learnable(w, qtype, scales[m])`` for every row of ``scales`` (``(M, G)``
    float64 scales of a scaled kind: uniform, binary, ternary, pow2), stacked as
    ``(M, *w.shape)`` float64, without gradients: one broadcast pass for a scale search."""
    if qtype.kind == QKind.CODEBOOK:
        raise QuantizationError("fake_quant_scales: a codebook has levels, not scales")
    gid_np, n_groups = group_index(tuple(w.shape), qtype.granularity)
    if scales.ndim != 2 or scales.shape[1] != n_groups or scales.dtype != torch.float64:
        raise QuantizationError(
            f"{qtype.kind.value} scales for a tensor of shape {tuple(w.shape)} must be a "
            f"float64 tensor of shape (M, {n_groups}), got {scales.dtype} "
            f"{tuple(scales.shape)}")
    view = _leading_groups(gid_np, n_groups)
    with torch.no_grad():
        zero_point = _zero_points(qtype, n_groups)
        if view is not None:  # broadcast the (M, G) scales, no (M, *w.shape) gather
            scale, zero_point = scales.reshape(-1, *view), zero_point.reshape(view)
        else:
            gid = torch.from_numpy(gid_np)
            scale, zero_point = scales[:, gid], zero_point[gid]
        level, _ = _LEVELS[qtype.kind](w.detach().to(torch.float64), scale, zero_point, qtype,
                                       False)
        return level.mul_(scale)


def _leading_groups(gid: np.ndarray, n_groups: int) -> tuple[int, ...] | None:
    """The shape that broadcasts a per-group vector over a tensor whose group index is
    ``gid``, when its groups are whole slices of the leading axis (per tensor: ``(1,)*ndim``;
    per output channel: ``(C, 1, ...)``); None for other layouts (blocks, other axes)."""
    if n_groups == 1:
        return (1,) * gid.ndim
    if gid.ndim == 0 or gid.shape[0] != n_groups:
        return None
    view = (n_groups,) + (1,) * (gid.ndim - 1)
    return view if np.array_equal(gid, np.broadcast_to(
        np.arange(n_groups, dtype=gid.dtype).reshape(view), gid.shape)) else None


# -- levels (float64, no grad): the code decision of each kind, as in qformats.quantize --------
def _zero_points(qtype: QType, n_groups: int) -> torch.Tensor:
    values = qtype.zero_point or (0,)
    if len(values) == 1:
        values = values * n_groups
    if len(values) != n_groups:
        raise QuantizationError(
            f"{qtype} has {len(qtype.zero_point)} zero points but the tensor has {n_groups} "
            f"groups ({qtype.granularity}); refit the format for this tensor")
    return torch.tensor(values, dtype=torch.float64)


# Each returns ``(level, inside)``: the code's level (value / scale) and where ``w`` lies within
# the grid's range (the STE mask); with ``need_inside=False`` the mask is None.
def _uniform_level(w, scale, zp, qtype, need_inside=True):
    unclamped = torch.round(w / scale).add_(zp)
    inside = (unclamped >= qtype.min) & (unclamped <= qtype.max) if need_inside else None
    return unclamped.clamp_(qtype.min, qtype.max).sub_(zp), inside


def _binary_level(w, scale, zp, qtype, need_inside=True):
    level = torch.where(w < 0, -1.0, 1.0).to(torch.float64)
    if level.shape != scale.shape:
        level = level.expand(torch.broadcast_shapes(level.shape, scale.shape)).clone()
    return level, w.abs() <= scale if need_inside else None


def _ternary_level(w, scale, zp, qtype, need_inside=True):
    sign = torch.where(w < 0, -1.0, 1.0).to(torch.float64)
    level = torch.where(w.abs() > scale / 2, sign, torch.zeros_like(sign))
    return level, w.abs() <= scale if need_inside else None


def _pow2_level(w, scale, zp, qtype, need_inside=True):
    n_exp = 1 << (qtype.bits - 1)
    magnitudes = 2.0 ** -torch.arange(n_exp - 1, -1, -1, dtype=torch.float64)
    if not qtype.zero_free:
        magnitudes[0] = 0.0
    ratio = w.abs() / torch.where(scale > 0, scale, torch.ones_like(scale))
    mids = (magnitudes[1:] + magnitudes[:-1]) / 2.0
    idx = torch.searchsorted(mids, ratio.contiguous(), right=False)
    magnitude = magnitudes[idx]
    negative = (w < 0) & (qtype.zero_free | (idx > 0))
    return torch.where(negative, -magnitude, magnitude), ratio <= 1.0 if need_inside else None


_LEVELS = {
    QKind.UNIFORM: _uniform_level,
    QKind.BINARY: _binary_level,
    QKind.TERNARY: _ternary_level,
    QKind.POW2: _pow2_level,
}


def _nearest_level(w: torch.Tensor, gid: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of each element's nearest group level (levels sorted; ties go to the lower)."""
    mids = (levels[:, 1:] + levels[:, :-1]) / 2.0
    flat_w, flat_gid = w.reshape(-1), gid.reshape(-1)
    out = torch.empty(flat_w.shape, dtype=torch.int64)
    step = max(1, _CHUNK // max(1, mids.shape[1]))
    for start in range(0, flat_w.numel(), step):
        part = slice(start, start + step)
        out[part] = (flat_w[part, None] > mids[flat_gid[part]]).sum(dim=1)
    return out.reshape(w.shape)


# -- autograd: exact forward value, straight-through backward ---------------------------------
class _ScaledPassThrough(torch.autograd.Function):
    """y = level * s; dy/dw = inside; dy/ds = level - w/s inside, level outside (LSQ)."""

    @staticmethod
    def forward(ctx, w, scale, level, inside):
        ctx.save_for_backward(w, scale, level, inside)
        return level * scale

    @staticmethod
    def backward(ctx, grad):
        w, scale, level, inside = ctx.saved_tensors
        grad_w = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_w = grad * inside
        if ctx.needs_input_grad[1]:
            safe = torch.where(scale != 0, scale, torch.ones_like(scale))
            grad_scale = grad * torch.where(inside, level - w / safe, level)
        return grad_w, grad_scale, None, None


class _PassThrough(torch.autograd.Function):
    """y = value; dy/dw = inside (STE); dy/dvalue = 1 (reaches the codebook levels)."""

    @staticmethod
    def forward(ctx, w, value, inside):
        ctx.save_for_backward(inside)
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        grad_w = grad * inside if ctx.needs_input_grad[0] else None
        return grad_w, grad, None
