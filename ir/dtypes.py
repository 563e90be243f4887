"""Element types, including arbitrary-bit integers (int1..int8, uint1..uint8).

A :class:`DType` is a small frozen value: ``DType.int(4)`` is a signed 4-bit integer whose values
live in ``[-8, 7]`` and are *stored* (in numpy, in the simulator) in the smallest numpy integer
that holds them (``int8``). Packing several sub-byte values per byte is the job of codegen; the
IR states the arithmetic range only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import IRError

_KINDS = ("float", "int", "uint", "bool")


@dataclass(frozen=True, slots=True)
class DType:
    """An element type: ``kind`` in float | int | uint | bool and a bit width."""

    kind: str
    bits: int

    _NAMED: ClassVar[dict[str, DType]] = {}

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise IRError(f"unknown dtype kind {self.kind!r}; expected one of {_KINDS}")
        if self.kind == "float" and self.bits not in (16, 32, 64):
            raise IRError(f"float{self.bits} is not supported; use float16, float32 or float64")
        if self.kind in ("int", "uint") and not (1 <= self.bits <= 64):
            raise IRError(f"{self.kind}{self.bits}: integer widths must be 1..64 bits")
        if self.kind == "bool" and self.bits != 8:
            raise IRError("bool is stored as 8 bits")

    # -- constructors -------------------------------------------------------------------------
    @staticmethod
    def int(bits: int) -> DType:
        """Signed ``bits``-bit integer (two's complement range)."""
        return DType("int", bits)

    @staticmethod
    def uint(bits: int) -> DType:
        """Unsigned ``bits``-bit integer."""
        return DType("uint", bits)

    @staticmethod
    def parse(name: str) -> DType:
        """``"float32"`` / ``"int4"`` / ``"uint1"`` / ``"bool"`` -> DType."""
        if name == "bool":
            return BOOL
        for kind in ("float", "uint", "int"):
            if name.startswith(kind) and name[len(kind):].isdigit():
                return DType(kind, int(name[len(kind):]))
        raise IRError(f"unknown dtype name {name!r}; expected e.g. float32, int8, int4, uint2, bool")

    @staticmethod
    def from_numpy(dt) -> DType:
        """numpy dtype -> DType (only the standard widths)."""
        dt = np.dtype(dt)
        if dt == np.bool_:
            return BOOL
        kind = {"f": "float", "i": "int", "u": "uint"}.get(dt.kind)
        if kind is None:
            raise IRError(f"numpy dtype {dt} has no lowbit equivalent")
        return DType(kind, dt.itemsize * 8)

    # -- properties ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return "bool" if self.kind == "bool" else f"{self.kind}{self.bits}"

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def signed(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def storage_bits(self) -> int:
        """Bits of the numpy type that stores one element (8/16/32/64)."""
        if self.kind == "bool":
            return 8
        for width in (8, 16, 32, 64):
            if self.bits <= width:
                return width
        raise AssertionError(self.bits)

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype used to hold values of this type."""
        if self.kind == "bool":
            return np.dtype(np.bool_)
        prefix = {"float": "float", "int": "int", "uint": "uint"}[self.kind]
        return np.dtype(f"{prefix}{self.storage_bits}")

    @property
    def min(self) -> int | float:
        """Smallest representable value."""
        if self.kind == "int":
            return -(1 << (self.bits - 1))
        if self.kind in ("uint", "bool"):
            return 0
        return float(np.finfo(self.numpy).min)

    @property
    def max(self) -> int | float:
        """Largest representable value."""
        if self.kind == "int":
            return (1 << (self.bits - 1)) - 1
        if self.kind == "uint":
            return (1 << self.bits) - 1
        if self.kind == "bool":
            return 1
        return float(np.finfo(self.numpy).max)

    def can_represent(self, values) -> bool:
        """True when every value in ``values`` is exactly representable (integers in range)."""
        arr = np.asarray(values)
        if self.is_float:
            return True
        if arr.size == 0:
            return True
        if arr.dtype.kind == "f" and not np.all(np.equal(np.floor(arr), arr)):
            return False
        return bool(arr.min() >= self.min and arr.max() <= self.max)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.name})"


FLOAT16 = DType("float", 16)
FLOAT32 = DType("float", 32)
FLOAT64 = DType("float", 64)
INT8 = DType("int", 8)
INT16 = DType("int", 16)
INT32 = DType("int", 32)
INT64 = DType("int", 64)
UINT8 = DType("uint", 8)
UINT16 = DType("uint", 16)
UINT32 = DType("uint", 32)
UINT64 = DType("uint", 64)
BOOL = DType("bool", 8)
