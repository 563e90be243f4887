"""Typed, frozen attributes: one dataclass per op that has any (``OP_ATTRS`` maps op -> class).

ONNX attribute spellings and opset differences live only in the importer; here every field is
already resolved and normalized (axes non-negative, pads explicit, shapes explicit).

Conventions
-----------
* ``pads`` of an N-d spatial op are ``(begin_0, ..., begin_{N-1}, end_0, ..., end_{N-1})`` (ONNX
  order); for :class:`PadAttrs` they cover every axis of the input.
* Axes are non-negative, relative to the rank stated in each docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .dtypes import DType
from .ops import Op
from .qtype import QType


@dataclass(frozen=True, slots=True)
class ConvAttrs:
    """y = conv(x, w) + b over N spatial dims; w is (C_out, C_in/group, k...)."""

    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int = 1


@dataclass(frozen=True, slots=True)
class ConvTransposeAttrs:
    """Transposed conv; w is (C_in, C_out/group, k...). Output spatial size per axis i:
    stride·(in−1) + output_padding + ((k−1)·dilation + 1) − pad_begin − pad_end."""

    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    output_padding: tuple[int, ...]
    group: int = 1


@dataclass(frozen=True, slots=True)
class GemmAttrs:
    """Y = alpha · op(A) · op(B) + beta · C, op = transpose when the flag is set."""

    alpha: float = 1.0
    beta: float = 1.0
    trans_a: bool = False
    trans_b: bool = False


@dataclass(frozen=True, slots=True)
class BatchNormAttrs:
    """y = (x − mean) / sqrt(var + epsilon) · scale + bias, over channel axis 1 (inference)."""

    epsilon: float = 1e-5


@dataclass(frozen=True, slots=True)
class LayerNormAttrs:
    """y = (x − mean) / sqrt(var + epsilon) · scale (+ bias), statistics over axes [axis, rank)."""

    axis: int
    epsilon: float = 1e-5


@dataclass(frozen=True, slots=True)
class LRNAttrs:
    """Local response normalization across channels (axis 1):
    y = x / (bias + alpha / size · Σ_{c' in window(c)} x_{c'}²) ** beta."""

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    bias: float = 1.0


@dataclass(frozen=True, slots=True)
class SoftmaxAttrs:
    """softmax / log-softmax along one (non-negative) axis."""

    axis: int


@dataclass(frozen=True, slots=True)
class GeluAttrs:
    """approximate = "none" (erf form) or "tanh"."""

    approximate: str = "none"


@dataclass(frozen=True, slots=True)
class LeakyReluAttrs:
    """y = x if x >= 0 else alpha · x."""

    alpha: float = 0.01


@dataclass(frozen=True, slots=True)
class HardSigmoidAttrs:
    """y = max(0, min(1, alpha · x + beta))."""

    alpha: float = 0.2
    beta: float = 0.5


@dataclass(frozen=True, slots=True)
class ClipAttrs:
    """y = min(max(x, min), max); a missing bound is None."""

    min: float | int | None = None
    max: float | int | None = None


@dataclass(frozen=True, slots=True)
class CastAttrs:
    """Element type conversion (ONNX Cast semantics: float -> int truncates toward zero)."""

    to: DType


@dataclass(frozen=True, slots=True)
class ReduceAttrs:
    """Reduce over ``axes`` (non-negative; None = all axes); keep reduced dims as 1 if keepdims."""

    axes: tuple[int, ...] | None
    keepdims: bool = True


@dataclass(frozen=True, slots=True)
class PoolAttrs:
    """Max/average pooling window over the spatial dims (2 .. rank)."""

    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    ceil_mode: bool = False
    count_include_pad: bool = False


@dataclass(frozen=True, slots=True)
class FlattenAttrs:
    """Output is 2-D: (prod(shape[:axis]), prod(shape[axis:]))."""

    axis: int = 1


@dataclass(frozen=True, slots=True)
class ReshapeAttrs:
    """Explicit output shape (no 0 / −1 placeholders: the importer resolves them)."""

    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TransposeAttrs:
    """Output axis i is input axis perm[i]."""

    perm: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ConcatAttrs:
    axis: int


@dataclass(frozen=True, slots=True)
class SplitAttrs:
    """Split along ``axis`` into pieces of the given ``sizes`` (one output per size)."""

    axis: int
    sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SliceAttrs:
    """ONNX Slice semantics (clamping, negative indices and steps), one entry per sliced axis;
    ``axes`` are non-negative, ``steps`` non-zero."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    axes: tuple[int, ...]
    steps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AxesAttrs:
    """Squeeze: axes of the input (non-negative). Unsqueeze: axes of the *output*."""

    axes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GatherAttrs:
    """numpy.take(data, indices, axis) with ONNX negative-index wrap."""

    axis: int = 0


@dataclass(frozen=True, slots=True)
class ExpandAttrs:
    """Broadcast input to the explicit output ``shape``."""

    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PadAttrs:
    """mode = constant | reflect | edge | wrap; pads cover every input axis (begins then ends;
    negative = crop)."""

    pads: tuple[int, ...]
    mode: str = "constant"
    value: float | int = 0


@dataclass(frozen=True, slots=True)
class ResizeAttrs:
    """ONNX Resize (opset 11+ semantics) with the output ``sizes`` resolved. ``scales`` are the
    per-axis scale factors used by the coordinate transform (output/input when only sizes were
    given); ``roi`` only matters for tf_crop_and_resize."""

    sizes: tuple[int, ...]
    scales: tuple[float, ...]
    mode: str = "nearest"
    coordinate_transformation_mode: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False
    extrapolation_value: float = 0.0
    roi: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class QuantizeAttrs:
    """y = saturate(round_half_even(x / scale) + zero_point) into ``dtype``; ``axis`` for
    per-channel scale (None = per tensor), ``block_size`` > 0 for blocked scales."""

    dtype: DType
    axis: int | None = None
    saturate: bool = True
    block_size: int = 0


@dataclass(frozen=True, slots=True)
class DequantizeAttrs:
    """y = (x − zero_point) · scale; ``axis``/``block_size`` as for QuantizeAttrs."""

    axis: int | None = None
    block_size: int = 0


@dataclass(frozen=True, slots=True)
class FakeQuantAttrs:
    """y = dequantize(quantize(x, qtype), qtype): float in, float out, values snapped to the
    format's grid (see ``lowbit.ir.qtype``). ``role`` is "weight" or "activation"; an activation
    FakeQuant whose qtype has no scale yet is *uncalibrated* (the calibrate pass fills it)."""

    qtype: QType
    role: str = "activation"


@dataclass(frozen=True, slots=True)
class Requant:
    """Integer requantization of an accumulator onto an output format (shared by the integer
    ops; formulas in ``lowbit.passes.fold_scales``).

    The integer op first subtracts ``in_zero_point`` from its (activation) input and
    accumulates ``acc`` exactly. With a non-empty ``multiplier`` (one per channel along
    ``axis`` of the output, or one per tensor when ``axis`` is None):
    ``y = clamp(out_zero_point + ((acc·m[c] + 2^(shift[c]−1)) >> shift[c]), lo, hi)``
    (arithmetic shift, half-up rounding, no rounding term when shift = 0), or for ``binary``
    outputs ``y = clamp(+1 if acc >= 0 else −1, lo, hi)`` (sign of the real value, sign(0)=+1).
    An empty ``multiplier`` means *no requant*: the op outputs ``acc`` itself in
    ``out_dtype`` (int32 / int64); then ``lo``/``hi`` are that dtype's range.
    ``lo``/``hi`` include any folded ReLU / Clip."""

    in_zero_point: int
    multiplier: tuple[int, ...]
    shift: tuple[int, ...]
    out_zero_point: int
    out_dtype: DType
    lo: int
    hi: int
    axis: int | None = None
    binary: bool = False

    @property
    def accumulates(self) -> bool:
        """True when the op outputs raw accumulators (no requant)."""
        return not self.multiplier and not self.binary

    def __str__(self) -> str:
        head = f"zx={self.in_zero_point}"
        if self.accumulates:
            return f"acc({head} -> {self.out_dtype})"
        if self.binary:
            return f"sign({head} -> {self.out_dtype} [{self.lo},{self.hi}])"
        m, s = self.multiplier, self.shift
        rng = (lambda v: str(v[0]) if len(set(v)) == 1 else f"[{min(v)}..{max(v)}]")
        per = "" if self.axis is None else f" axis={self.axis} x{len(m)}"
        return (f"requant({head} m={rng(m)} shift={rng(s)} zy={self.out_zero_point} "
                f"-> {self.out_dtype} [{self.lo},{self.hi}]{per})")


@dataclass(frozen=True, slots=True)
class GroupRescale:
    """Per-group weight scales of an integer layer: the weight's groups (``qformats`` layout:
    runs of ``size`` elements along weight axis ``axis``) accumulate separately, and each
    channel c's group partial sums are rescaled onto the channel's common scale:
    ``acc[c] = Σ_r ((acc_r[c]·m[r, c] + 2^(shift[r, c]−1)) >> shift[r, c])`` with ``r`` the
    reduction-group index (C-order over the parameter dims other than the channel axis) and
    ``multiplier``/``shift`` flattened in (r, c) order."""

    axis: int
    size: int
    multiplier: tuple[int, ...]
    shift: tuple[int, ...]

    def __str__(self) -> str:
        return (f"groups(axis={self.axis}, g={self.size}, m=[{min(self.multiplier)}.."
                f"{max(self.multiplier)}]x{len(self.multiplier)})")


@dataclass(frozen=True, slots=True)
class QConvAttrs:
    """Integer Conv (``transposed``: ConvTranspose, w is (C_in, C_out/group, k...)):
    ``acc = (conv(x − zx, w) << acc_shift) + bias`` in ``acc_dtype`` (zero padding = real 0),
    then ``requant`` (see :class:`Requant`). Inputs: x codes, integer weight const, int bias
    (optional, at scale s_x·s_w[c] / 2^acc_shift: the shift spends spare accumulator bits on
    bias precision)."""

    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int
    requant: Requant
    acc_dtype: DType
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    groups: GroupRescale | None = None
    acc_shift: int = 0


@dataclass(frozen=True, slots=True)
class QMatMulAttrs:
    """Integer MatMul with a constant (K, N) weight: ``acc = (((x − zx) @ w) << acc_shift) +
    bias`` in ``acc_dtype``, then ``requant`` (channel axis = last output axis)."""

    requant: Requant
    acc_dtype: DType
    groups: GroupRescale | None = None
    acc_shift: int = 0


@dataclass(frozen=True, slots=True)
class QAddAttrs:
    """Integer residual add onto one output scale, one rounding:
    ``y = clamp(zy + ((Σ_i (x_i − z_i)·m_i[c] + 2^(S−1)) >> S), lo, hi)`` with ``z_i``,
    ``m_i`` (per tensor or per channel along ``axis``) from ``a`` / ``b`` and the common shift
    ``S``, ``zy``, out dtype, ``lo``, ``hi`` taken from ``a`` (``b`` must agree)."""

    a: Requant
    b: Requant


@dataclass(frozen=True, slots=True)
class RequantizeAttrs:
    """``y = requant(x − zx)``: integer codes / accumulators onto another format. A binary
    requant also takes a float input: ``y = clamp(sign(x), lo, hi)`` (sign(0) = +1), the
    float->binary boundary that QuantizeLinear cannot express."""

    requant: Requant


#: op -> its attribute class (None: the op takes no attributes)
OP_ATTRS: dict[Op, type | None] = {op: None for op in Op}
OP_ATTRS.update({
    Op.CONV: ConvAttrs,
    Op.CONV_TRANSPOSE: ConvTransposeAttrs,
    Op.GEMM: GemmAttrs,
    Op.BATCHNORM: BatchNormAttrs,
    Op.LAYERNORM: LayerNormAttrs,
    Op.LRN: LRNAttrs,
    Op.SOFTMAX: SoftmaxAttrs,
    Op.LOG_SOFTMAX: SoftmaxAttrs,
    Op.GELU: GeluAttrs,
    Op.LEAKY_RELU: LeakyReluAttrs,
    Op.HARD_SIGMOID: HardSigmoidAttrs,
    Op.CLIP: ClipAttrs,
    Op.CAST: CastAttrs,
    Op.REDUCE_MEAN: ReduceAttrs,
    Op.REDUCE_SUM: ReduceAttrs,
    Op.REDUCE_MAX: ReduceAttrs,
    Op.MAXPOOL: PoolAttrs,
    Op.AVGPOOL: PoolAttrs,
    Op.FLATTEN: FlattenAttrs,
    Op.RESHAPE: ReshapeAttrs,
    Op.TRANSPOSE: TransposeAttrs,
    Op.CONCAT: ConcatAttrs,
    Op.SPLIT: SplitAttrs,
    Op.SLICE: SliceAttrs,
    Op.SQUEEZE: AxesAttrs,
    Op.UNSQUEEZE: AxesAttrs,
    Op.GATHER: GatherAttrs,
    Op.EXPAND: ExpandAttrs,
    Op.PAD: PadAttrs,
    Op.RESIZE: ResizeAttrs,
    Op.QUANTIZE: QuantizeAttrs,
    Op.DEQUANTIZE: DequantizeAttrs,
    Op.FAKE_QUANT: FakeQuantAttrs,
    Op.QCONV: QConvAttrs,
    Op.QMATMUL: QMatMulAttrs,
    Op.QADD: QAddAttrs,
    Op.REQUANTIZE: RequantizeAttrs,
})

ATTR_CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in OP_ATTRS.values() if cls is not None
}
#: frozen dataclasses nested inside attrs (serialized by class name)
NESTED_ATTR_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (Requant, GroupRescale)}


def format_attrs(attrs) -> str:
    """``{strides=(1, 1), pads=(0, 0, 0, 0)}`` — stable text form used by the printer."""
    if attrs is None:
        return ""
    items = []
    for f in fields(attrs):
        value = getattr(attrs, f.name)
        if isinstance(value, float):
            value = f"{value:.6g}"
        items.append(f"{f.name}={value}")
    return "{" + ", ".join(items) + "}"
