"""DType ranges for arbitrary-bit integers and QType code ranges."""

import numpy as np
import pytest
from lowbit.ir import DType, Granularity, IRError, QKind, QType


@pytest.mark.parametrize("bits", range(1, 9))
def test_int_ranges(bits):
    s, u = DType.int(bits), DType.uint(bits)
    assert (s.min, s.max) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert (u.min, u.max) == (0, 2**bits - 1)
    assert s.numpy == np.int8 and u.numpy == np.uint8
    assert DType.parse(s.name) == s and DType.parse(u.name) == u
    assert s.can_represent([s.min, s.max]) and not s.can_represent([s.max + 1])


def test_parse_errors():
    with pytest.raises(IRError, match="unknown dtype"):
        DType.parse("int")
    with pytest.raises(IRError, match="float8"):
        DType("float", 8)


def test_qtype_codes():
    b = QType(QKind.BINARY, 1, scale=(0.5,) * 4, granularity=Granularity(0))
    assert (b.min, b.max) == (-1, 1) and b.can_represent([-1, 1]) and not b.can_represent([0])
    t = QType(QKind.TERNARY, 2)
    assert t.can_represent([-1, 0, 1]) and not t.can_represent([2])
    u = QType(QKind.UNIFORM, 4, signed=False, scale=(0.1,), zero_point=(3,))
    assert (u.min, u.max) == (0, 15)
    assert "u4 per-tensor" in str(u) and "zp=3" in str(u)
    g = QType(QKind.UNIFORM, 4, granularity=Granularity(1, 32), scale=(0.1, 0.2))
    assert str(g.granularity) == "per-group(axis=1, g=32)"
    with pytest.raises(IRError, match="binary"):
        QType(QKind.BINARY, 2)
    with pytest.raises(IRError, match="same length"):
        QType(QKind.UNIFORM, 8, multiplier=(1, 2), shift=(3,))
    c = QType(QKind.CODEBOOK, 2, codebook=((0.0, 1.0, 2.0, 3.0),))
    assert (c.min, c.max) == (0, 3)
    with pytest.raises(IRError, match="does not fit"):
        QType(QKind.CODEBOOK, 1, codebook=((0.0, 1.0, 2.0),))
