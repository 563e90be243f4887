"""Number formats: what a quantized tensor's integers *mean*.

A :class:`QType` is attached to an IR value and states how to read its stored integers ``q``:

* ``uniform``   x = (q − zero_point) · scale,       q ∈ [qmin, qmax] of a ``bits``-bit int/uint
* ``binary``    x = α · q,  q ∈ {−1, +1}             (bipolar / XNOR-Net; stored as one bit)
* ``ternary``   x = α · q,  q ∈ {−1, 0, +1}
* ``pow2``      x = s · sign · 2^e                  (sign + (bits−1)-bit exponent; ``zero_free``
                                                     drops the zero code, DenseShift-style)
* ``codebook``  x = codebook[q]                     (2^bits non-uniform levels)

``scale`` (α, s) and ``zero_point`` follow the :class:`Granularity`: one value per tensor, one per
channel along ``axis``, or one per group of ``group_size`` elements along ``axis``. A requantized
value also carries its dyadic multiplier: ``x_out = (acc · m) >> shift`` (HAWQ-V3), stored as
per-channel integer tuples so no float is needed between integer layers.

Issue 3 fills in the quantizers that produce these; issue 2 only fixes the data structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .dtypes import DType
from .errors import IRError


class QKind(str, Enum):
    UNIFORM = "uniform"
    BINARY = "binary"
    TERNARY = "ternary"
    POW2 = "pow2"
    CODEBOOK = "codebook"


@dataclass(frozen=True, slots=True)
class Granularity:
    """``per_tensor`` (axis None), ``per_channel`` (axis) or ``per_group`` (axis, group_size)."""

    axis: int | None = None
    group_size: int | None = None

    @property
    def kind(self) -> str:
        if self.axis is None:
            return "per_tensor"
        return "per_channel" if self.group_size is None else "per_group"

    def __str__(self) -> str:
        if self.axis is None:
            return "per-tensor"
        if self.group_size is None:
            return f"per-channel(axis={self.axis})"
        return f"per-group(axis={self.axis}, g={self.group_size})"


PER_TENSOR = Granularity()


@dataclass(frozen=True, slots=True)
class QType:
    """A quantized number format (see module docstring for the meaning of each kind)."""

    kind: QKind
    bits: int
    signed: bool = True
    granularity: Granularity = PER_TENSOR
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    codebook: tuple[tuple[float, ...], ...] = ()
    zero_free: bool = False
    #: dyadic requantization: x_out = (acc * multiplier) >> shift, per channel
    multiplier: tuple[int, ...] = ()
    shift: tuple[int, ...] = ()
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self):
        if not 1 <= self.bits <= 32:
            raise IRError(f"QType bits must be 1..32, got {self.bits}")
        if self.kind == QKind.BINARY and self.bits != 1:
            raise IRError("binary QType has exactly 1 bit")
        if self.kind == QKind.TERNARY and self.bits != 2:
            raise IRError("ternary QType is stored in 2 bits")
        if self.kind == QKind.CODEBOOK and self.codebook:
            for levels in self.codebook:
                if len(levels) > (1 << self.bits):
                    raise IRError(f"codebook of {len(levels)} levels does not fit {self.bits} bits")
        if len(self.multiplier) != len(self.shift):
            raise IRError("dyadic multiplier and shift must have the same length")

    # -- integer range ------------------------------------------------------------------------
    @property
    def storage(self) -> DType:
        """The integer dtype that holds the codes."""
        if self.kind in (QKind.BINARY, QKind.TERNARY, QKind.POW2, QKind.CODEBOOK):
            return DType.int(self.bits) if self.kind != QKind.CODEBOOK else DType.uint(self.bits)
        return DType.int(self.bits) if self.signed else DType.uint(self.bits)

    @property
    def min(self) -> int:
        """Smallest code value."""
        if self.kind in (QKind.BINARY, QKind.TERNARY):
            return -1
        return int(self.storage.min)

    @property
    def max(self) -> int:
        """Largest code value."""
        if self.kind in (QKind.BINARY, QKind.TERNARY):
            return 1
        return int(self.storage.max)

    def can_represent(self, codes) -> bool:
        """True when every code is a legal code of this format."""
        arr = np.asarray(codes)
        if arr.size == 0:
            return True
        if self.kind == QKind.BINARY:
            return bool(np.all(np.isin(arr, (-1, 1))))
        if self.kind == QKind.TERNARY:
            return bool(np.all(np.isin(arr, (-1, 0, 1))))
        return bool(arr.min() >= self.min and arr.max() <= self.max)

    @property
    def has_dyadic(self) -> bool:
        return bool(self.multiplier)

    def __str__(self) -> str:
        head = {
            QKind.UNIFORM: f"{'s' if self.signed else 'u'}{self.bits}",
            QKind.BINARY: "bin",
            QKind.TERNARY: "tern",
            QKind.POW2: f"pow2{self.bits}{'nz' if self.zero_free else ''}",
            QKind.CODEBOOK: f"cb{self.bits}",
        }[self.kind]
        parts = [f"{head} {self.granularity}"]
        if self.scale:
            parts.append("scale=" + _fmt_range(self.scale))
        if self.zero_point and any(self.zero_point):
            parts.append("zp=" + _fmt_range(self.zero_point))
        if self.multiplier:
            parts.append(f"dyadic(m={_fmt_range(self.multiplier)}, shift={_fmt_range(self.shift)})")
        return "{" + " ".join(parts) + "}"


def _fmt_range(values) -> str:
    """One value as is; a per-channel tuple as ``[min..max]xN`` (``vxN`` when all equal).
    Integers (zero points, dyadic m / shift) print exactly."""
    vals = list(values)

    def one(v):
        return str(int(v)) if isinstance(v, (int, np.integer)) else f"{v:.4g}"

    if len(vals) == 1:
        return one(vals[0]) if isinstance(vals[0], (int, np.integer)) else f"{vals[0]:.6g}"
    lo, hi = min(vals), max(vals)
    if lo == hi:
        return f"{one(lo)}x{len(vals)}"
    return f"[{one(lo)}..{one(hi)}]x{len(vals)}"
