"""Layer-wise reconstruction of quantized weights on calibration data (AdaQuant / AdaRound).

For one conv or linear layer ``f(x; W, b)`` (followed by ``a`` = identity or ReLU) and its
calibration inputs ``x``, find quantized weights ``W_q`` on a format's grid and a bias ``b'`` that
minimise the mean squared output error

    L(W_q, b') = mean over samples, positions, channels of (a(f(x; W, b)) - a(f(x; W_q, b')))²

Both layers are treated as a linear map of input *rows* (a conv's im2col patches, a linear
layer's feature vectors): ``y = W_g r + b`` per group ``g``. Without an activation the loss is
the exact quadratic form ``Δwᵀ H Δw + 2 Δb μ·Δw + Δb²`` with ``H = E[r rᵀ]``, ``μ = E[r]``
(accumulated once over all rows, so each step costs ``C_out · K²``); with ReLU it is evaluated on
random mini-batches of stored rows.

Methods (Nagel et al. 2020 "AdaRound"; Hubara et al. 2021 "AdaQuant"):

* ``adaround`` (default, every kind): keep the (searched) scale and learn, per weight, whether
  to take the grid value just below or just above it — AdaRound generalised from the uniform
  grid to any sorted grid (ternary, pow2, codebook levels...): ``W_q = lo + h(V) · (hi - lo)``
  with the rectified sigmoid ``h(V) = clamp(σ(V)·(ζ - γ) + γ, 0, 1)``, ``ζ = 1.1``, ``γ = -0.1``,
  ``V`` initialised so that ``h(V) = (W - lo) / (hi - lo)``, and the regulariser
  ``λ · mean(1 - |2h - 1|^β)`` switched on after 20 % of the steps with ``β`` annealed from 20 to
  2; the codes take ``hi`` where ``h >= 1/2``. On the uniform grid this is exactly AdaRound's
  ``s · (clamp(floor(W/s) + h(V) + zp, qmin, qmax) - zp)``.
* ``adaquant``: optimise a latent float ``W'`` (``W_q = Q(W')`` with the STE fake-quant of
  :mod:`.fake_quant_torch`), the per-group scales (LSQ gradient, parametrised
  ``s = s0 · exp(t)``) or codebook levels, and the bias; codes are ``quantize(W', qtype')``.
  With few steps it gains less than ``adaround`` (Adam moves every latent weight at the same
  speed, so weights with tiny gradients flip too).

Both start from a scale grid search (per group, the multiplier of the format's scale that
minimises the input-power-weighted weight error ``sum E[r_k²] (W - Q(W))²``) and the bias
correction ``b' = b - (W_q - W)·μ``. Without an activation the learned codes' scales (or
codebook levels) are then refitted in closed form (:func:`_refit_params`). The result is checked
on all calibration rows: when it is not better than plain rounding (``init_codes`` or
``quantize(W, qtype)`` with the original bias) the plain rounding is returned, so reconstruction
never raises the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...ir.attrs import ConvAttrs
from ...ir.errors import CalibrationError, QuantizationError, ShapeError
from ...ir.qformats import dequantize, group_index, quantize
from ...ir.qtype import QKind, QType
from ..analysis.fast_float import one_torch_thread
from .fake_quant_torch import (
    fake_quant_learnable,
    fake_quant_scales,
    quant_params,
    with_params,
)

METHODS = ("adaround", "adaquant")
#: default relative Adam step per method (AdaQuant's STE moves every weight, so it needs less)
DEFAULT_LR = {"adaround": 1e-2, "adaquant": 1e-3}
ACTIVATIONS = (None, "relu")

#: scale multipliers tried by the initial grid search (1.0 included: never worse than the fit)
SCALE_GRID = tuple(float(m) for m in np.round(np.linspace(0.2, 1.3, 45), 4)) + (1.0,)
#: AdaRound constants: stretch of the rectified sigmoid, regulariser weight and β schedule
ADAROUND_ZETA, ADAROUND_GAMMA = 1.1, -0.1
ADAROUND_LAMBDA = 50.0  # the reconstruction term is normalised to 1 at plain rounding
ADAROUND_BETA = (20.0, 2.0)
ADAROUND_WARMUP = 0.2
#: exact evaluations of the running solution during optimisation (the best one is kept)
CHECKPOINTS = 5

_CHUNK_ELEMENTS = 1 << 22  # rows x columns per im2col chunk
#: float64 numbers per scale-search chunk: its temporaries stay near the cache, and below the
#: size that the allocator maps fresh from the OS (and faults in again) for every one
_SEARCH_ELEMENTS = 1 << 18


@dataclass(frozen=True, eq=False)
class ReconstructionResult:
    """Quantized layer and its output MSE on the calibration rows before and after.

    Unpacks as ``codes, qtype, bias = result``. ``bias`` is None when the layer had none.
    ``method`` is the method that produced the codes, or ``"round"`` when plain rounding was kept.
    """

    codes: np.ndarray
    qtype: QType
    bias: np.ndarray | None
    loss_before: float
    loss_after: float
    method: str

    def __iter__(self):
        return iter((self.codes, self.qtype, self.bias))


def reconstruct_layer(
    w,
    bias,
    x,
    qtype: QType,
    *,
    kind: str = "conv",
    conv_attrs: ConvAttrs | None = None,
    act_fn: str | None = None,
    method: str = "adaround",
    iters: int = 500,
    lr: float | None = None,
    seed: int = 0,
    init_codes=None,
    max_samples: int = 512,
    max_rows: int = 16384,
    batch_rows: int = 1024,
) -> ReconstructionResult:
    """Reconstruct one layer's quantized weights (module docstring) and return the result.

    ``w``: conv ``(C_out, C_in/group, k...)`` (1-D or 2-D conv) or linear ``(C_out, K)``;
    ``bias``: ``(C_out,)`` or None; ``x``: float calibration inputs ``(N, C_in, spatial...)`` or
    ``(N, K)``; ``qtype``: the weight's fitted format (its kind, bits, granularity and zero
    points are kept, its scales / codebook are refined); ``conv_attrs``: strides, ONNX pads
    ``(begins..., ends...)``, dilations, group (conv only); ``act_fn``: None or ``"relu"``
    (applied before the loss); ``method``: ``"adaround"`` or ``"adaquant"``; ``lr``: relative
    Adam step (default :data:`DEFAULT_LR`; AdaRound's ``V`` moves by ``10 · lr``, AdaQuant's
    weights by ~``lr · mean|W_o|`` and scales by ~``lr`` of themselves, the bias by ``lr`` of the
    output RMS); ``init_codes``: the codes used without reconstruction (default
    ``quantize(w, qtype)``; pass ``fit_weights``' codes so the baseline is the same). At most
    ``max_samples`` samples and, with an activation, ``max_rows`` rows are used. Runs on one
    torch thread (restored after) and is deterministic for a given ``seed``.
    """
    (result,) = reconstruct_layers(
        w, bias, x, [qtype], kind=kind, conv_attrs=conv_attrs, act_fn=act_fn, method=method,
        iters=iters, lr=lr, seed=seed, init_codes=None if init_codes is None else [init_codes],
        max_samples=max_samples, max_rows=max_rows, batch_rows=batch_rows)
    return result


#: AdaRound trains at most this many weights (formats x weights per layer) in one batch
MAX_BATCH_WEIGHTS = 1 << 23


def reconstruct_layers(
    w,
    bias,
    x,
    qtypes: Sequence[QType],
    *,
    kind: str = "conv",
    conv_attrs: ConvAttrs | None = None,
    act_fn: str | None = None,
    method: str = "adaround",
    iters: int = 500,
    lr: float | None = None,
    seed: int = 0,
    init_codes: Sequence | None = None,
    max_samples: int = 512,
    max_rows: int = 16384,
    batch_rows: int = 1024,
) -> list[ReconstructionResult]:
    """One layer reconstructed at several weight formats (``qtypes``; ``init_codes`` one per
    format or None), arguments as :func:`reconstruct_layer`: result ``i`` is the same
    optimisation as ``reconstruct_layer(..., qtypes[i])`` -- the objective (rows, targets,
    ``H``) is built once, and every format trains on the same seeded mini-batches. AdaRound
    trains the formats as one batch (one matmul per step for all of them, at most
    :data:`MAX_BATCH_WEIGHTS` weights at a time); the formats' losses are summed, each scaled by
    its own plain-rounding loss, so the gradients do not mix. Results agree with one-format runs
    up to float32 summation order."""
    qtypes = list(qtypes)
    for qtype in qtypes:
        _check_options(qtype, kind, act_fn, method, iters, max_samples, max_rows, batch_rows)
    inits = [None] * len(qtypes) if init_codes is None else list(init_codes)
    if len(inits) != len(qtypes):
        raise QuantizationError(f"reconstruction: {len(inits)} init_codes for "
                                f"{len(qtypes)} formats")
    w = np.asarray(w, dtype=np.float32)
    x = _check_calibration(np.asarray(x), w, kind)
    layer = _Layer.make(w.shape, kind, conv_attrs)
    b_ref = None if bias is None else _check_bias(bias, w.shape[0])
    base_codes = [_baseline_codes(w, q, codes) for q, codes in zip(qtypes, inits)]

    rng = np.random.default_rng(seed)
    if x.shape[0] > max_samples:
        x = x[np.sort(rng.choice(x.shape[0], max_samples, replace=False))]
    with one_torch_thread():
        w_ref = torch.from_numpy(w).to(torch.float64)
        b_ref_t = torch.zeros(w.shape[0], dtype=torch.float64) if b_ref is None else \
            torch.from_numpy(b_ref).to(torch.float64)
        if act_fn is None:
            objective = _QuadraticObjective(layer, x, w_ref, b_ref_t)
        else:
            objective = _RowObjective(layer, x, w_ref, b_ref_t, rng, max_rows, batch_rows, seed)
        results = []
        for qtype, codes in zip(qtypes, base_codes):
            before = objective.exact(torch.from_numpy(dequantize(codes, qtype)), b_ref_t)
            results.append(ReconstructionResult(codes, qtype, b_ref, before, before, "round"))
        todo = [i for i, r in enumerate(results) if iters > 0 and r.loss_before > 0.0]
        if not todo:
            return results
        importance = objective.importance(w.shape)
        starts = {i: _search_scale(w_ref, qtypes[i], importance) for i in todo}
        step = DEFAULT_LR[method] if lr is None else lr
        chunk = 1 if method == "adaquant" else max(1, MAX_BATCH_WEIGHTS // w.size)
        for first in range(0, len(todo), chunk):
            part = todo[first:first + chunk]
            objective.restart()  # every format sees the same mini-batches
            if method == "adaquant":
                outs = [_adaquant(w_ref, b_ref is not None, starts[part[0]], objective,
                                  results[part[0]].loss_before, iters, step)]
            else:
                outs = _adaround(w_ref, b_ref is not None, [starts[i] for i in part], objective,
                                 [results[i].loss_before for i in part], iters, step)
            for i, (codes, new_qtype, new_bias, loss_after) in zip(part, outs):
                refit = _refit_params(codes, new_qtype, objective, b_ref is not None)
                if refit is not None and refit[0] < loss_after:
                    loss_after, codes, new_qtype, new_bias = refit
                if loss_after < results[i].loss_before:
                    bias_out = None if b_ref is None else new_bias.numpy().astype(np.float32)
                    results[i] = ReconstructionResult(codes, new_qtype, bias_out,
                                                      results[i].loss_before, loss_after, method)
    return results


# -- validation --------------------------------------------------------------------------------
def _check_options(qtype: QType, kind: str, act_fn, method: str, iters: int, max_samples: int,
                   max_rows: int, batch_rows: int) -> None:
    if kind not in ("conv", "linear"):
        raise QuantizationError(f"reconstruction: layer kind {kind!r} is not 'conv' or 'linear'")
    if act_fn not in ACTIVATIONS:
        raise QuantizationError(
            f"reconstruction: act_fn {act_fn!r} is not supported; use one of {ACTIVATIONS}")
    if method not in METHODS:
        raise QuantizationError(f"reconstruction: method {method!r} is not one of {METHODS}")
    if iters < 0:
        raise QuantizationError(f"reconstruction: iters must be >= 0, got {iters}")
    if min(max_samples, max_rows, batch_rows) < 1:
        raise QuantizationError(
            f"reconstruction: max_samples, max_rows and batch_rows must be >= 1, got "
            f"{max_samples}, {max_rows}, {batch_rows}")


def _check_calibration(x: np.ndarray, w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        if w.ndim != 2:
            raise ShapeError(f"reconstruction: linear weight must be (C_out, K), got {w.shape}")
        expected = f"(N, {w.shape[1]})"
        ok = x.ndim == 2 and x.shape[1] == w.shape[1]
    else:
        if w.ndim not in (3, 4):
            raise ShapeError(
                f"reconstruction: conv weight must be (C_out, C_in/group, k...) of a 1-D or 2-D "
                f"conv, got {w.shape}")
        expected = f"(N, C_in, {', '.join('...' for _ in w.shape[2:])})"
        ok = x.ndim == w.ndim
    if not ok or x.shape[0] == 0:
        raise CalibrationError(
            f"reconstruction: calibration input has shape {x.shape}, expected {expected} with "
            f"N >= 1 for a {kind} weight {w.shape}")
    if not np.all(np.isfinite(x)):
        raise CalibrationError("reconstruction: calibration input contains NaN or inf; "
                               "recollect the layer's inputs")
    return x.astype(np.float32, copy=False)


def _check_bias(bias, c_out: int) -> np.ndarray:
    b = np.asarray(bias, dtype=np.float32)
    if b.shape != (c_out,):
        raise ShapeError(f"reconstruction: bias has shape {b.shape}, expected ({c_out},)")
    return b


def _baseline_codes(w: np.ndarray, qtype: QType, init_codes) -> np.ndarray:
    if init_codes is None:
        return quantize(w, qtype)
    codes = np.asarray(init_codes)
    if codes.shape != w.shape or not qtype.can_represent(codes):
        raise QuantizationError(
            f"reconstruction: init_codes of shape {codes.shape} are not legal {qtype} codes "
            f"for a weight of shape {w.shape}")
    return codes.astype(qtype.storage.numpy)


# -- the layer as a linear map of rows ---------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    """``y[m, g, o] = sum_k rows[m, g, k] · W[g, o, k] + b[g, o]``."""

    kind: str
    weight_shape: tuple[int, ...]
    groups: int
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # F.pad order: left, right, top, bottom

    @staticmethod
    def make(shape: tuple[int, ...], kind: str, attrs: ConvAttrs | None) -> _Layer:
        if kind == "linear":
            return _Layer(kind, tuple(shape), 1)
        if attrs is None:
            raise QuantizationError("reconstruction: a conv layer needs conv_attrs")
        spatial = len(shape) - 2
        if not (len(attrs.strides) == len(attrs.dilations) == spatial
                and len(attrs.pads) == 2 * spatial):
            raise ShapeError(f"reconstruction: {attrs} does not match a {spatial}-D conv weight "
                             f"{tuple(shape)}")
        if attrs.group < 1 or shape[0] % attrs.group:
            raise ShapeError(f"reconstruction: {shape[0]} output channels do not split into "
                             f"group={attrs.group}")
        if spatial == 1:
            return _Layer(kind, tuple(shape), attrs.group, (1, shape[2]), (1, attrs.strides[0]),
                          (1, attrs.dilations[0]), (attrs.pads[0], attrs.pads[1], 0, 0))
        return _Layer(kind, tuple(shape), attrs.group, tuple(shape[2:]), tuple(attrs.strides),
                      tuple(attrs.dilations),
                      (attrs.pads[1], attrs.pads[3], attrs.pads[0], attrs.pads[2]))

    @property
    def c_out(self) -> int:
        return self.weight_shape[0]

    @property
    def k_group(self) -> int:
        return math.prod(self.weight_shape[1:])

    def check_input(self, x: np.ndarray) -> None:
        c_in = self.weight_shape[1] * self.groups
        if x.shape[1] != c_in:
            raise CalibrationError(
                f"reconstruction: calibration input has {x.shape[1]} channels, the {self.kind} "
                f"weight {self.weight_shape} with group={self.groups} needs {c_in}")

    def grouped(self, w: torch.Tensor) -> torch.Tensor:
        """(C_out, ...) weight -> (G, C_out/G, K_g)."""
        return w.reshape(self.groups, self.c_out // self.groups, self.k_group)

    def chunk_samples(self, x: np.ndarray) -> int:
        """Samples per chunk so that a chunk's rows hold about ``_CHUNK_ELEMENTS`` numbers."""
        positions = 1 if self.kind == "linear" else math.prod(x.shape[2:])
        return max(1, _CHUNK_ELEMENTS // max(1, positions * self.k_group * self.groups))

    def row_chunks(self, x: np.ndarray):
        """Yield the rows ``(M_chunk, G, K_g)`` (float32) of consecutive sample chunks."""
        self.check_input(x)
        step = self.chunk_samples(x)
        for start in range(0, x.shape[0], step):
            part = torch.from_numpy(np.ascontiguousarray(x[start:start + step]))
            yield self._rows(part)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return x.reshape(x.shape[0], 1, -1)
        if x.ndim == 3:
            x = x.unsqueeze(2)
        x = F.pad(x, self.pads)
        cols = F.unfold(x, self.kernel, dilation=self.dilations, stride=self.strides)
        rows = cols.transpose(1, 2).reshape(-1, self.groups, self.k_group)
        return rows


class _QuadraticObjective:
    """Activation-free output MSE as a quadratic form in ``(ΔW, Δb)`` (module docstring).

    :meth:`exact` evaluates it in float64 with ``H``. The training :meth:`loss` runs in
    float32 on the cheaper of two equal forms: ``Δwᵀ H Δw`` (``K²`` per output channel) or,
    when there are fewer rows ``M`` than columns ``K``, ``|R Δw|² / M`` with the stored rows
    ``R`` (``H = RᵀR / M``; ``M·K`` per output channel)."""

    def __init__(self, layer: _Layer, x: np.ndarray, w_ref: torch.Tensor, b_ref: torch.Tensor):
        self.layer = layer
        g, k = layer.groups, layer.k_group
        second = torch.zeros(g, k, k, dtype=torch.float64)
        total = torch.zeros(g, k, dtype=torch.float64)
        count = 0
        kept = []
        for rows in layer.row_chunks(x):
            rows64 = rows.to(torch.float64)
            second += torch.einsum("mgk,mgl->gkl", rows64, rows64)
            total += rows64.sum(dim=0)
            count += rows.shape[0]
            if count < k:
                kept.append(rows)
        self.second = second / count
        self.mean = total / count
        self.w_ref = layer.grouped(w_ref)
        self.b_ref = b_ref.reshape(g, -1)
        # float32 copies for the training steps: (G, M, K) rows / sqrt(M), or H
        self._rows32 = None
        if count < k:
            rows = torch.cat(kept).to(torch.float64) / math.sqrt(count)
            self._rows32 = rows.permute(1, 2, 0).contiguous().float()  # (G, K, M)
        self._second32 = self.second.float() if self._rows32 is None else None
        self._mean32, self._w_ref32 = self.mean.float(), self.w_ref.float()
        self._b_ref32 = self.b_ref.float()

    def importance(self, shape) -> torch.Tensor:
        return _broadcast_columns(self.layer, torch.diagonal(self.second, dim1=1, dim2=2), shape)

    def restart(self) -> None:
        """Nothing to rewind: the quadratic form uses every row each step."""

    def loss(self, w: torch.Tensor, b: torch.Tensor, step: int) -> torch.Tensor:
        """The training loss (float32, see the class docstring)."""
        return self.losses(w[None], b[None], step)[0]

    def losses(self, w: torch.Tensor, b: torch.Tensor, step: int) -> torch.Tensor:
        """:meth:`loss` of ``F`` stacked weight/bias pairs, ``(F, C_out, ...)`` and
        ``(F, C_out)``, in one matmul: shape ``(F,)``."""
        g, o = self._b_ref32.shape
        count, k = w.shape[0], self._w_ref32.shape[2]
        dw = w.float().reshape(count, g, o, k) - self._w_ref32
        db = b.float().reshape(count, g, o) - self._b_ref32
        if self._rows32 is not None:  # (G, F·O, K) @ (G, K, M) -> (G, F·O, M)
            stacked = dw.transpose(0, 1).reshape(g, count * o, k)
            product = torch.matmul(stacked, self._rows32)
            quad = (product * product).sum(dim=2).reshape(g, count, o).transpose(0, 1)
        else:
            quad = (torch.matmul(dw, self._second32) * dw).sum(dim=3)
        cross = 2.0 * db * torch.einsum("fgok,gk->fgo", dw, self._mean32)
        return (quad + cross + db * db).mean(dim=(1, 2))

    def exact(self, w: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            dw = self.layer.grouped(w.to(torch.float64)) - self.w_ref
            db = b.to(torch.float64).reshape(self.b_ref.shape) - self.b_ref
            quad = (torch.matmul(dw, self.second) * dw).sum(dim=2)
            cross = 2.0 * db * torch.einsum("gok,gk->go", dw, self.mean)
            return max(0.0, float((quad + cross + db * db).mean()))


class _RowObjective:
    """Output MSE after the activation on stored rows; mini-batches for training. Rows are
    kept group-major, ``(G, M, K)``, reshuffled once per epoch: a step's mini-batch is a
    contiguous window and one batched matmul per group."""

    def __init__(self, layer, x, w_ref, b_ref, rng, max_rows, batch_rows, seed):
        self.layer = layer
        kept, offset, keep = [], 0, None
        for rows in layer.row_chunks(x):
            if keep is None:  # every sample has the same number of rows (output positions)
                total = rows.shape[0] // min(x.shape[0], layer.chunk_samples(x)) * x.shape[0]
                keep = torch.from_numpy(np.sort(rng.choice(total, max_rows, replace=False))) \
                    if total > max_rows else torch.arange(total)
            inside = keep[(keep >= offset) & (keep < offset + rows.shape[0])]
            kept.append(rows[inside - offset])
            offset += rows.shape[0]
        self.rows = torch.cat(kept).permute(1, 0, 2).contiguous()  # (G, M, K)
        self.mean = self.rows.to(torch.float64).mean(dim=1)
        self.w_ref = layer.grouped(w_ref)
        self.b_ref = b_ref.reshape(layer.groups, -1)
        self.batch = min(batch_rows, self.rows.shape[1])
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.target = self._forward(self.rows, self.w_ref.float(), self.b_ref.float())
        self._epoch_rows = self._epoch_target = None

    @staticmethod
    def _forward(rows, w, b):
        """relu(rows · Wᵀ + b) per group: (G, M, K), (G, O, K), (G, O) -> (G, M, O)."""
        return torch.relu(torch.baddbmm(b[:, None, :], rows, w.transpose(1, 2)))

    def importance(self, shape) -> torch.Tensor:
        power = (self.rows.to(torch.float64) ** 2).mean(dim=1)
        return _broadcast_columns(self.layer, power, shape)

    def restart(self) -> None:
        """Rewind the mini-batch sequence to its seeded start (a new optimisation)."""
        self.generator.manual_seed(self.seed)
        self._epoch_rows = self._epoch_target = None

    def loss(self, w: torch.Tensor, b: torch.Tensor, step: int) -> torch.Tensor:
        """Epochs of shuffled rows: each epoch draws a fresh permutation (one gather), and
        step ``step`` trains on the next contiguous window of ``batch`` rows. When one batch
        holds every row, each step trains on all of them, unshuffled (the order changes only
        the float summation)."""
        return self.losses(w[None], b[None], step)[0]

    def losses(self, w: torch.Tensor, b: torch.Tensor, step: int) -> torch.Tensor:
        """:meth:`loss` of ``F`` stacked weight/bias pairs, ``(F, C_out, ...)`` and
        ``(F, C_out)``, on the same window in one matmul: shape ``(F,)``. The product is
        formed transposed, ``W · rowsᵀ`` (``(G, F·O, B)``), so that the weights' gradient
        comes out contiguous in their own layout (``rows · Wᵀ`` gives it transposed, and
        every elementwise pass of the soft rounding then ran strided, 3x slower)."""
        windows = max(1, self.rows.shape[1] // self.batch)
        if windows == 1 and self._epoch_rows is None:  # every step sees all rows, in order
            self._epoch_rows = self.rows.transpose(1, 2).contiguous()  # (G, K, M)
            self._epoch_target = self.target.transpose(1, 2)  # (G, O, M)
        elif windows > 1 and (step % windows == 0 or self._epoch_rows is None):
            order = torch.randperm(self.rows.shape[1], generator=self.generator)
            self._epoch_rows = self.rows[:, order].transpose(1, 2).contiguous()
            self._epoch_target = self.target[:, order].transpose(1, 2)
        part = slice((step % windows) * self.batch, (step % windows + 1) * self.batch)
        g, o = self.b_ref.shape
        count, k = w.shape[0], self.rows.shape[2]
        stacked = w.float().reshape(count, g, o, k).transpose(0, 1).reshape(g, count * o, k)
        bias = b.float().reshape(count, g, o).transpose(0, 1).reshape(g, count * o, 1)
        pred = torch.relu(torch.baddbmm(bias, stacked, self._epoch_rows[:, :, part]))
        diff = pred.reshape(g, count, o, -1) - self._epoch_target[:, None, :, part]
        return (diff * diff).mean(dim=(0, 2, 3))

    def exact(self, w: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            wg = self.layer.grouped(w.to(torch.float64))
            bg = b.to(torch.float64).reshape(self.b_ref.shape)
            total = 0.0
            m = self.rows.shape[1]
            step = max(1, _CHUNK_ELEMENTS // max(1, self.rows.shape[0] * self.rows.shape[2]))
            for start in range(0, m, step):
                part = slice(start, start + step)
                diff = self._forward(self.rows[:, part].to(torch.float64), wg, bg) \
                    - self.target[:, part].to(torch.float64)
                total += float((diff * diff).sum())
            return total / (m * self.layer.c_out)


def _broadcast_columns(layer: _Layer, per_column: torch.Tensor, shape) -> torch.Tensor:
    """(G, K_g) per-column statistic -> weight-shaped tensor (row o reads its group's columns)."""
    per_out = per_column.repeat_interleave(layer.c_out // layer.groups, dim=0)
    return per_out.reshape(shape).to(torch.float64)


# -- initial scale search ----------------------------------------------------------------------
def _search_scale(w: torch.Tensor, qtype: QType, importance: torch.Tensor) -> QType:
    """Per group, the multiplier in :data:`SCALE_GRID` of the format's scale with the least
    ``sum importance · (W - Q(W))²`` (first one on ties). Codebooks are returned unchanged.
    The multipliers are evaluated a chunk at a time (:func:`fake_quant_scales`)."""
    if qtype.kind == QKind.CODEBOOK:
        return qtype
    gid_np, n_groups = group_index(tuple(w.shape), qtype.granularity)
    gid = torch.from_numpy(gid_np).reshape(-1)
    base = quant_params(qtype, tuple(w.shape))
    best_err = torch.full((n_groups,), math.inf, dtype=torch.float64)
    best = base.clone()
    multipliers = torch.tensor(SCALE_GRID, dtype=torch.float64)
    chunk = max(1, _SEARCH_ELEMENTS // max(1, w.numel()))
    with torch.no_grad():
        for first in range(0, len(SCALE_GRID), chunk):
            scales = base[None, :] * multipliers[first:first + chunk, None]
            err = fake_quant_scales(w, qtype, scales).sub_(w)
            err = err.mul_(err).mul_(importance)
            per_group = torch.zeros(scales.shape, dtype=torch.float64).index_add_(
                1, gid, err.reshape(scales.shape[0], -1))
            for row in range(scales.shape[0]):
                better = per_group[row] < best_err
                best_err = torch.where(better, per_group[row], best_err)
                best = torch.where(better, scales[row], best)
    return with_params(qtype, best)


# -- optimisers --------------------------------------------------------------------------------
def _per_channel_radius(w: torch.Tensor) -> torch.Tensor:
    """mean |W| of each output channel (broadcast to W's shape), the unit of weight updates."""
    dims = tuple(range(1, w.ndim))
    radius = w.abs().mean(dim=dims, keepdim=True)
    return torch.where(radius > 0, radius, torch.ones_like(radius)).expand_as(w)


def _start_bias(objective, layer: _Layer, w_q: torch.Tensor, b_ref: torch.Tensor):
    """Bias correction with the exact row mean: b' = b - (W_q - W)·μ."""
    dw = layer.grouped(w_q) - objective.w_ref
    return b_ref - torch.einsum("gok,gk->go", dw, objective.mean).reshape(-1)


def _emit(w_latent: torch.Tensor, qtype: QType, params: torch.Tensor):
    new_qtype = with_params(qtype, params)
    codes = quantize(w_latent.detach().numpy(), new_qtype)
    return codes, new_qtype


def _adaquant(w_ref, has_bias, start: QType, objective, loss_before, iters, lr):
    """AdaQuant: Adam on a latent ``W' = W + r ⊙ U`` (``r`` = mean|W| per output channel),
    ``log s`` (or codebook level shifts) and the bias, cosine-decayed; best checkpoint wins."""
    layer = objective.layer
    b_ref = objective.b_ref.reshape(-1)
    radius = _per_channel_radius(w_ref)
    latent = torch.zeros_like(w_ref, requires_grad=True)
    params0 = quant_params(start, tuple(w_ref.shape))
    if start.kind == QKind.CODEBOOK:
        spread = _group_spread(w_ref, start)
        level_shift = torch.zeros_like(params0, requires_grad=True)
        param_fn = lambda: params0 + spread * level_shift
        learned = [latent, level_shift]
    else:
        log_scale = torch.zeros_like(params0, requires_grad=True)
        param_fn = lambda: params0 * torch.exp(log_scale)
        learned = [latent, log_scale]
    with torch.no_grad():
        b0 = _start_bias(objective, layer, fake_quant_learnable(w_ref, start, params0), b_ref)
    bias_scale = math.sqrt(max(objective.exact(torch.zeros_like(w_ref), torch.zeros_like(b_ref)),
                               1e-30))
    bias_shift = torch.zeros_like(b0, requires_grad=has_bias)
    if has_bias:
        learned.append(bias_shift)
    bias_fn = (lambda: b0 + bias_scale * bias_shift) if has_bias else (lambda: b_ref)

    def snapshot():
        with torch.no_grad():
            w_latent = w_ref + radius * latent
            codes, qtype = _emit(w_latent, start, param_fn())
            bias = bias_fn().detach().clone()
        return objective.exact(torch.from_numpy(dequantize(codes, qtype)), bias), codes, qtype, \
            bias

    optimizer = torch.optim.Adam(learned, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters)
    best = snapshot()
    every = max(1, iters // CHECKPOINTS)
    for step in range(iters):
        optimizer.zero_grad()
        w_q = fake_quant_learnable(w_ref + radius * latent, start, param_fn())
        loss = objective.loss(w_q, bias_fn(), step) / loss_before
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % every == 0 or step + 1 == iters:
            best = min(best, snapshot(), key=lambda entry: entry[0])
    loss_after, codes, qtype, bias = best
    return codes, qtype, bias, loss_after


def _group_spread(w: torch.Tensor, qtype: QType) -> torch.Tensor:
    """mean |W| of each codebook group, shape (G, 1): the unit of level updates."""
    gid_np, n_groups = group_index(tuple(w.shape), qtype.granularity)
    gid = torch.from_numpy(gid_np).reshape(-1)
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, w.abs().reshape(-1))
    counts = torch.bincount(gid, minlength=n_groups).to(torch.float64)
    spread = sums / counts.clamp_min(1)
    return torch.where(spread > 0, spread, torch.ones_like(spread)).reshape(-1, 1)


def _level_table(w: torch.Tensor, qtype: QType) -> torch.Tensor:
    """Every value of the format per group, sorted ascending: ``(G, L)`` float64, computed as
    the same float64 products ``level * s`` as :func:`~lowbit.ir.qformats.dequantize`."""
    params = quant_params(qtype, tuple(w.shape))
    if qtype.kind == QKind.CODEBOOK:
        return torch.sort(params, dim=1).values
    if qtype.kind == QKind.UNIFORM:
        zero_point = torch.tensor(qtype.zero_point or (0,), dtype=torch.float64)
        zero_point = zero_point.expand(params.shape[0]) if zero_point.numel() == 1 else zero_point
        codes = torch.arange(qtype.min, qtype.max + 1, dtype=torch.float64)
        unit = codes[None, :] - zero_point[:, None]
    elif qtype.kind == QKind.BINARY:
        unit = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    elif qtype.kind == QKind.TERNARY:
        unit = torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64)
    else:
        n_exp = 1 << (qtype.bits - 1)
        magnitudes = 2.0 ** -torch.arange(n_exp - 1, -1, -1, dtype=torch.float64)
        if not qtype.zero_free:
            magnitudes = magnitudes[1:]
            unit = torch.cat([-magnitudes.flip(0), torch.zeros(1, dtype=torch.float64),
                              magnitudes])[None, :]
        else:
            unit = torch.cat([-magnitudes.flip(0), magnitudes])[None, :]
    table = unit * params[:, None]
    return torch.sort(table, dim=1).values


def _neighbours(w: torch.Tensor, gid: torch.Tensor, table: torch.Tensor):
    """The grid values just below-or-at and just above each weight (equal at the grid ends)."""
    flat_w, flat_gid = w.reshape(-1), gid.reshape(-1)
    above = torch.empty(flat_w.shape, dtype=torch.int64)
    step = max(1, _CHUNK_ELEMENTS // (16 * table.shape[1]))
    for start in range(0, flat_w.numel(), step):
        part = slice(start, start + step)
        above[part] = (table[flat_gid[part]] <= flat_w[part, None]).sum(dim=1)
    last = table.shape[1] - 1
    lower = table[flat_gid, (above - 1).clamp(0, last)]
    upper = table[flat_gid, above.clamp(0, last)]
    return lower.reshape(w.shape), upper.reshape(w.shape)


class _SoftRound(torch.autograd.Function):
    """AdaRound's soft weights and regulariser in one autograd node, float32, for ``count``
    formats stacked along axis 0: ``h = clamp(σ(V)·(ζ - γ) + γ, 0, 1)``, ``W = lo + h · gap``
    and ``R = λ · Σ_formats (1 - mean |2h - 1|^β)`` (``R = 0`` when ``beta`` is None, the
    warm-up); ``dgap`` is ``(ζ - γ) · gap``, made once per optimisation. The backward pass is
    written out: with ``u = 2h - 1``, ``∂R/∂h = -2λβ/n · sign(u) |u|^(β-1)`` (``n`` weights
    per format; ``β >= 2``, so 0 at ``u = 0``) and ``∂h/∂V = (ζ - γ) σ(V)(1 - σ(V))`` where
    ``0 < σ(V)·(ζ - γ) + γ < 1``, else 0 (ATen's ``hardtanh_backward`` and
    ``sigmoid_backward``). Every op is one vectorised pass. Measured on 885k float32 weights,
    one thread: ``pow`` with a float exponent 3.6 ms, ``exp((β-1) log|u|)`` 1.0 ms; a
    float-by-bool multiply 2.1 ms and ``where`` 3.2 ms, a float multiply 0.38 ms -- so no
    ``pow`` and no bool masks."""

    @staticmethod
    def forward(ctx, logits, lower, gap, dgap, beta, lam, count):
        s = torch.sigmoid(logits)
        h_raw = torch.add(_GAMMA32, s, alpha=ADAROUND_ZETA - ADAROUND_GAMMA)
        h = h_raw.clamp(0.0, 1.0)
        w = torch.addcmul(lower, h, gap)
        if beta is None:
            ctx.save_for_backward(s, h_raw, dgap)
            ctx.beta = None
            return w, torch.zeros((), dtype=w.dtype)
        u = torch.add(_MINUS_ONE32, h, alpha=2.0, out=h)
        magnitude = u.abs()
        slope = torch.log(magnitude).mul_(beta - 1.0).exp_()  # |u|^(β-1), 0 at u = 0
        per_format = u.numel() // count
        reg = (count - torch.dot(slope.reshape(-1), magnitude.reshape(-1)) / per_format) * lam
        ctx.save_for_backward(s, h_raw, dgap, slope.copysign_(u))
        ctx.beta, ctx.scale = beta, -2.0 * lam * beta / per_format
        return w, reg

    @staticmethod
    def backward(ctx, grad_w, grad_reg):
        if ctx.beta is None:
            s, h_raw, dgap = ctx.saved_tensors
            grad = grad_w * dgap
        else:
            s, h_raw, dgap, slope = ctx.saved_tensors
            grad = grad_w * dgap
            alpha = ctx.scale * float(grad_reg) * (ADAROUND_ZETA - ADAROUND_GAMMA)
            grad.add_(slope, alpha=alpha)
        grad = torch.ops.aten.hardtanh_backward(grad, h_raw, 0.0, 1.0)
        return torch.ops.aten.sigmoid_backward(grad, s), None, None, None, None, None, None


_GAMMA32 = torch.tensor(ADAROUND_GAMMA, dtype=torch.float32)
_MINUS_ONE32 = torch.tensor(-1.0, dtype=torch.float32)


def _adam(groups):
    """Adam, fused into one kernel per step where this torch has it (CPU: torch >= 2.4)."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups)


def _adaround(w_ref, has_bias, starts: Sequence[QType], objective, losses_before, iters, lr):
    """AdaRound generalised to any sorted grid, for ``F`` formats at once: each weight picks
    its lower or upper grid neighbour, ``W_q = lo + h(V) · (hi - lo)`` while training (float32,
    :class:`_SoftRound`), ``hi`` where ``h >= 1/2`` (``V >= 0``) after, from the float64 grid
    values. The loss is ``Σ_f L_f / L_f(round) + R``; each format keeps its best checkpoint.
    Returns one ``(codes, qtype, bias, loss)`` per format."""
    layer = objective.layer
    b_ref = objective.b_ref.reshape(-1)
    count = len(starts)
    bounds = [_neighbours(w_ref, torch.from_numpy(group_index(
        tuple(w_ref.shape), start.granularity)[0]), _level_table(w_ref, start))
        for start in starts]
    lower = torch.stack([lo for lo, _ in bounds])
    upper = torch.stack([hi for _, hi in bounds])
    gap = upper - lower
    rest = torch.where(gap > 0, (w_ref - lower) / torch.where(gap > 0, gap, 1.0), 0.0)
    zeta, gamma = ADAROUND_ZETA, ADAROUND_GAMMA
    p = ((rest.clamp(0.0, 1.0) - gamma) / (zeta - gamma)).clamp(1e-6, 1 - 1e-6)
    logits = torch.log(p / (1 - p)).float().requires_grad_(True)
    lower32, gap32 = lower.float(), gap.float()
    dgap32 = gap32 * (ADAROUND_ZETA - ADAROUND_GAMMA)

    def hard_weights(f=slice(None)):
        return torch.where(logits.detach()[f] >= 0, upper[f], lower[f])

    with torch.no_grad():
        hard = hard_weights()
        b0 = torch.stack([_start_bias(objective, layer, hard[f], b_ref) for f in range(count)])
    bias_scale = math.sqrt(max(objective.exact(torch.zeros_like(w_ref), torch.zeros_like(b_ref)),
                               1e-30))
    bias_shift = torch.zeros_like(b0, requires_grad=has_bias)
    bias_fn = (lambda: b0 + bias_scale * bias_shift) if has_bias else \
        (lambda: b_ref.expand(count, -1))
    learned = [{"params": [logits], "lr": lr * 10}]
    if has_bias:
        learned.append({"params": [bias_shift], "lr": lr})
    norm = torch.tensor(list(losses_before), dtype=torch.float32)

    def snapshot(f: int):
        with torch.no_grad():
            codes = quantize(hard_weights(f).numpy(), starts[f])
            bias = bias_fn()[f].detach().clone()
        w_q = torch.from_numpy(dequantize(codes, starts[f]))
        return objective.exact(w_q, bias), codes, starts[f], bias

    optimizer = _adam(learned)
    warmup = int(ADAROUND_WARMUP * iters)
    best = [snapshot(f) for f in range(count)]
    every = max(1, iters // CHECKPOINTS)
    for step in range(iters):
        optimizer.zero_grad()
        beta = None
        if step >= warmup:
            progress = (step - warmup) / max(1, iters - warmup)
            beta = ADAROUND_BETA[1] + (ADAROUND_BETA[0] - ADAROUND_BETA[1]) * (1 - progress)
        w_soft, reg = _SoftRound.apply(logits, lower32, gap32, dgap32, beta,
                                         ADAROUND_LAMBDA, count)
        loss = (objective.losses(w_soft, bias_fn(), step) / norm).sum() + reg
        loss.backward()
        optimizer.step()
        if (step + 1) % every == 0 or step + 1 == iters:
            for f in range(count):
                entry = snapshot(f)
                if entry[0] < best[f][0]:
                    best[f] = entry
    return [(codes, qtype, bias, loss) for loss, codes, qtype, bias in best]


# -- closed-form parameter refit ---------------------------------------------------------------
def _refit_params(codes: np.ndarray, qtype: QType, objective, has_bias: bool):
    """With the codes fixed, ``W_q`` is linear in the format's parameters, so the quadratic
    loss has a closed-form optimum: per group ``s* = ℓᵀ C w / ℓᵀ C ℓ`` for scaled kinds (``ℓ``
    the codes' unit levels) and ``L* = (Aᵀ C A)⁻¹ Aᵀ C w`` for codebooks (``A`` the one-hot
    assignment), with ``C = H - μ μᵀ`` when the bias absorbs the mean shift (it is then set by
    bias correction) and ``C = H`` otherwise. Only for the activation-free objective and
    per-tensor or per-output-channel formats; returns ``(loss, codes, qtype, bias)`` or None."""
    gran = qtype.granularity
    if not isinstance(objective, _QuadraticObjective) or gran.group_size is not None \
            or gran.axis not in (None, 0):
        return None
    layer = objective.layer
    moment = objective.second
    if has_bias:
        moment = moment - objective.mean[:, :, None] * objective.mean[:, None, :]
    w = objective.w_ref  # (G, O, K)
    if qtype.kind == QKind.CODEBOOK:
        codes, params = _refit_codebook(codes, qtype, layer, moment, w, gran.axis is None)
    else:
        unit_qtype = with_params(qtype, torch.ones(len(quant_params(qtype, codes.shape))))
        unit = layer.grouped(torch.from_numpy(dequantize(codes, unit_qtype)).to(torch.float64))
        moment_w = torch.matmul(w, moment)  # (G, O, K): (C w_o) per output channel
        numerator = (moment_w * unit).sum(dim=2).reshape(-1)
        denominator = (torch.matmul(unit, moment) * unit).sum(dim=2).reshape(-1)
        if gran.axis is None:
            numerator, denominator = numerator.sum()[None], denominator.sum()[None]
        old = quant_params(qtype, codes.shape)
        params = torch.where((denominator > 0) & (numerator > 0),
                             numerator / torch.where(denominator > 0, denominator, 1.0), old)
    new_qtype = with_params(qtype, params)
    w_q = torch.from_numpy(dequantize(codes, new_qtype)).to(torch.float64)
    b_ref = objective.b_ref.reshape(-1)
    bias = _start_bias(objective, layer, w_q, b_ref) if has_bias else b_ref
    return objective.exact(w_q, bias), codes, new_qtype, bias


def _refit_codebook(codes, qtype, layer, moment, w, per_tensor: bool):
    levels = quant_params(qtype, codes.shape)
    k = levels.shape[1]
    onehot = F.one_hot(torch.from_numpy(codes.astype(np.int64)), k).to(torch.float64)
    onehot = onehot.reshape(layer.groups, layer.c_out // layer.groups, layer.k_group, k)
    moment_a = torch.einsum("gkl,goln->gokn", moment, onehot)
    gram = torch.einsum("gokm,gokn->gomn", onehot, moment_a).reshape(-1, k, k)
    rhs = torch.einsum("gok,gokn->gon", w, moment_a).reshape(-1, k)
    if per_tensor:
        gram, rhs = gram.sum(dim=0, keepdim=True), rhs.sum(dim=0, keepdim=True)
    # A level no weight uses has an empty row: the ridge pins it to its old value.
    ridge = 1e-9 * gram.diagonal(dim1=1, dim2=2).sum(dim=1).clamp_min(1e-30)[:, None, None]
    eye = torch.eye(k, dtype=torch.float64)
    solved = torch.linalg.solve(gram + ridge * eye, rhs + ridge[:, :, 0] * levels)
    # Keep each group's levels sorted (qformats' nearest-level rule needs it): renumber codes.
    order = torch.argsort(solved, dim=1)
    rank = torch.argsort(order, dim=1).numpy()
    gid, _ = group_index(codes.shape, qtype.granularity)
    new_codes = rank[gid, codes.astype(np.int64)].astype(codes.dtype)
    return new_codes, torch.gather(solved, 1, order)
