"""MatMul, Gemm and MatMulInteger reference kernels."""

from __future__ import annotations

import numpy as np

from ...ir import Op
from . import kernel


@kernel(Op.MATMUL)
def matmul(node, inputs):
    """y = a @ b with numpy.matmul semantics (1-D operands promoted, batch dims broadcast)."""
    a, b = inputs
    return [np.matmul(a, b)]


@kernel(Op.GEMM)
def gemm(node, inputs):
    """Y = alpha · op(A) · op(B) + beta · C; C is optional and broadcasts to (M, N)."""
    attrs = node.attrs
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if attrs.trans_a:
        a = a.T
    if attrs.trans_b:
        b = b.T
    y = a @ b
    dtype = y.dtype
    if attrs.alpha != 1.0:
        y = (y * np.float64(attrs.alpha)).astype(dtype) if dtype.kind != "f" \
            else y * dtype.type(attrs.alpha)
    if c is not None and attrs.beta != 0.0:
        if attrs.beta != 1.0:
            c = (c * np.float64(attrs.beta)).astype(dtype) if dtype.kind != "f" \
                else c * dtype.type(attrs.beta)
        y = y + c.astype(dtype, copy=False)
    return [y]


def _zero_point(zp, rows: bool):
    """A MatMulInteger zero point as a broadcastable int64 array: 1-D A zero points are per row
    (shape (M, 1)), 1-D B zero points per column (shape (N,))."""
    if zp is None:
        return np.int64(0)
    zp = zp.astype(np.int64)
    if rows and zp.ndim == 1:
        return zp.reshape(-1, 1)
    return zp


@kernel(Op.MATMUL_INTEGER)
def matmul_integer(node, inputs):
    """Y = (A − a_zero_point) @ (B − b_zero_point), accumulated exactly, int32 result."""
    a, b = inputs[0], inputs[1]
    a_zp = _zero_point(inputs[2] if len(inputs) > 2 else None, rows=True)
    b_zp = _zero_point(inputs[3] if len(inputs) > 3 else None, rows=False)
    lhs, rhs = a.astype(np.int64) - a_zp, b.astype(np.int64) - b_zp
    if a.dtype.itemsize == 1 and b.dtype.itemsize == 1:
        # |products| <= 2^16 and K < 2^37 keep float64 sums exact, and BLAS is far faster
        y = np.matmul(lhs.astype(np.float64), rhs.astype(np.float64)).astype(np.int64)
    else:
        y = np.matmul(lhs, rhs)
    return [y.astype(np.int32)]
