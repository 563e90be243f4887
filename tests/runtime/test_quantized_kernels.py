"""Quantized reference kernels (runtime/kernels/quantized.py) against independent oracles.

The oracles are written differently from the kernels on purpose: requant in Python integers
(arbitrary precision, so no int64 trick is shared), convolutions as explicit loops over output
pixels in int64, per-group sums by slicing. Every comparison is exact (``assert_array_equal``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from lowbit.ir import INT32, INT64, DType, ExecutionError, Graph, Op, ShapeError
from lowbit.ir.attrs import (
    FakeQuantAttrs,
    GroupRescale,
    QAddAttrs,
    QConvAttrs,
    QMatMulAttrs,
    Requant,
    RequantizeAttrs,
)
from lowbit.ir.dyadic import to_dyadic
from lowbit.ir.qformats import activation_qtype, dequantize, fit_weights, quantize
from lowbit.ir.qtype import Granularity, QKind, QType
from lowbit.runtime.reference import run_reference

RNG = np.random.default_rng(7)


def requant_oracle(acc, m, shift, zy, lo, hi):
    """clamp(zy + floor((acc·m + 2^(shift−1)) / 2^shift), lo, hi) in Python ints."""
    acc, m, shift = int(acc), int(m), int(shift)
    half = (1 << (shift - 1)) if shift > 0 else 0
    return min(max(zy + (acc * m + half) // (1 << shift), lo), hi)


def run_single(op, attrs, inputs, consts=()):
    """Build ``op(inputs..., consts...)`` (inputs fed, consts constant) and run it."""
    g = Graph("k")
    vals = []
    feeds = {}
    for i, arr in enumerate(inputs):
        v = g.add_input(f"x{i}", DType.from_numpy(arr.dtype), arr.shape)
        feeds[v.name] = arr
        vals.append(v)
    for i, arr in enumerate(consts):
        vals.append(None if arr is None else g.add_const(arr, f"c{i}"))
    out = g.make(op, *vals, attrs=attrs)
    g.outputs = [out]
    return run_reference(g, feeds)[out.name]


def acc_requant(zx, dtype=INT64):
    return Requant(zx, (), (), 0, dtype, int(dtype.min), int(dtype.max), None)


# -- FakeQuant --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,bits", [("uniform", 4), ("binary", 1), ("ternary", 2),
                                       ("pow2", 4), ("codebook", 3)])
def test_fake_quant_kernel_is_dequantize_of_quantize(kind, bits):
    w = RNG.standard_normal((6, 5)).astype(np.float32)
    q, _ = fit_weights(w, kind, bits, granularity=Granularity(0))
    got = run_single(Op.FAKE_QUANT, FakeQuantAttrs(q, "weight"), [w])
    np.testing.assert_array_equal(got, dequantize(quantize(w, q), q))
    assert got.dtype == np.float32


def test_fake_quant_activation_snaps_to_grid_and_saturates():
    q = activation_qtype(-1.0, 1.0, 4, True)
    x = np.array([-5.0, -1.0, 0.0, 0.01, 0.5, 5.0], dtype=np.float32)
    got = run_single(Op.FAKE_QUANT, FakeQuantAttrs(q), [x])
    codes = np.clip(np.rint(x.astype(np.float64) / q.scale[0]) + q.zero_point[0], -8, 7)
    np.testing.assert_allclose(got, (codes - q.zero_point[0]) * q.scale[0], rtol=1e-6)


def test_uncalibrated_fake_quant_refuses_to_run():
    q = QType(QKind.UNIFORM, 8, False)
    with pytest.raises(ExecutionError, match="uncalibrated.*calibrate"):
        run_single(Op.FAKE_QUANT, FakeQuantAttrs(q), [np.zeros(3, np.float32)])


# -- Requantize -------------------------------------------------------------------------------
@pytest.mark.parametrize("real", [1e-10, 3.7e-5, 0.3, 1.0, 17.25, 1e6])
@pytest.mark.parametrize("zy,dtype", [(0, DType.int(8)), (-100, DType.int(8)),
                                      (5, DType.uint(8)), (-3, DType.int(4))])
def test_requantize_matches_python_int_oracle_at_extreme_multipliers(real, zy, dtype):
    """Tiny (1e-10: shift capped at 62) and huge (1e6) multipliers, negative zero points:
    bit-exact against the Python-int formula."""
    m, s = (int(v) for v in to_dyadic(real))
    acc = RNG.integers(-(1 << 31) + 1, 1 << 31, size=64).astype(np.int32)
    acc[:6] = [0, 1, -1, (1 << 31) - 1, -(1 << 31) + 1, 12345]
    lo, hi = int(dtype.min), int(dtype.max)
    rq = Requant(7, (m,), (s,), zy, dtype, lo, hi)
    got = run_single(Op.REQUANTIZE, RequantizeAttrs(rq), [acc])
    want = [requant_oracle(a - 7, m, s, zy, lo, hi) for a in acc.tolist()]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == dtype.numpy


def test_requantize_per_channel_and_clamp():
    acc = RNG.integers(-5000, 5000, size=(2, 3, 4)).astype(np.int32)
    ms, ss = to_dyadic(np.array([0.01, 0.002, 0.5]))
    rq = Requant(0, tuple(int(v) for v in ms), tuple(int(v) for v in ss), -128,
                 DType.int(8), -128, 20, axis=1)
    got = run_single(Op.REQUANTIZE, RequantizeAttrs(rq), [acc])
    for idx in itertools.product(range(2), range(3), range(4)):
        c = idx[1]
        assert got[idx] == requant_oracle(acc[idx], ms[c], ss[c], -128, -128, 20)


def test_binary_requant_is_sign_with_sign_zero_positive():
    acc = np.array([-3, -1, 0, 1, 9], dtype=np.int32)
    rq = Requant(0, (), (), 0, DType.int(2), -1, 1, binary=True)
    got = run_single(Op.REQUANTIZE, RequantizeAttrs(rq), [acc])
    np.testing.assert_array_equal(got, [-1, -1, 1, 1, 1])
    relu_folded = Requant(0, (), (), 0, DType.int(2), 1, 1, binary=True)
    np.testing.assert_array_equal(
        run_single(Op.REQUANTIZE, RequantizeAttrs(relu_folded), [acc]), [1] * 5)


def test_binary_requant_of_a_float_input_is_the_binary_fake_quant():
    x = np.array([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0], dtype=np.float32)
    rq = Requant(0, (), (), 0, DType.int(2), -1, 1, binary=True)
    got = run_single(Op.REQUANTIZE, RequantizeAttrs(rq), [x])
    q = QType(QKind.BINARY, 1, True, scale=(1.0,))
    np.testing.assert_array_equal(got, quantize(x, q))
    with pytest.raises(ShapeError, match="takes integer codes"):  # refused when built
        uniform = Requant(0, (1,), (0,), 0, DType.int(8), -128, 127)
        run_single(Op.REQUANTIZE, RequantizeAttrs(uniform), [x])


# -- QMatMul ----------------------------------------------------------------------------------
WBITS = tuple(range(2, 9))
ABITS = ((1, False), (2, True), (4, False), (8, True), (8, False))


@pytest.mark.parametrize("wbits", WBITS)
@pytest.mark.parametrize("abits,signed", ABITS)
def test_qmatmul_bit_exact_every_bit_pair(wbits, abits, signed):
    """Odd shapes, batch dims, every (weight, activation) width: acc and requant exact."""
    adt = DType.int(abits) if signed else DType.uint(abits)
    wdt = DType.int(wbits)
    x = RNG.integers(adt.min, adt.max + 1, size=(3, 5, 13)).astype(adt.numpy)
    w = RNG.integers(wdt.min, wdt.max + 1, size=(13, 7)).astype(wdt.numpy)
    b = RNG.integers(-1000, 1000, size=7).astype(np.int32)
    zx = int(RNG.integers(adt.min, adt.max + 1))
    ms, ss = to_dyadic(RNG.uniform(1e-4, 0.1, size=7))
    rq = Requant(zx, tuple(int(v) for v in ms), tuple(int(v) for v in ss), 3, DType.int(8),
                 -128, 127, axis=2)
    got = run_single(Op.QMATMUL, QMatMulAttrs(rq, INT32), [x], [w, b])
    acc = (x.astype(np.int64) - zx) @ w.astype(np.int64) + b
    want = np.vectorize(lambda a, c: requant_oracle(a, ms[c], ss[c], 3, -128, 127))(
        acc, np.arange(7))
    np.testing.assert_array_equal(got, want)
    raw = run_single(Op.QMATMUL, QMatMulAttrs(acc_requant(zx, INT32), INT32), [x], [w, b])
    np.testing.assert_array_equal(raw, acc)


def test_qmatmul_int64_path_when_float64_is_not_exact():
    """Products beyond 2^53 take the int64 path and stay exact."""
    x = np.full((2, 3), 2**20, dtype=np.int32)
    w = np.array([[2**20 + 1], [3], [-(2**20)]], dtype=np.int32)
    got = run_single(Op.QMATMUL, QMatMulAttrs(acc_requant(0), INT64), [x], [w])
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64))


def test_qmatmul_accumulator_overflow_is_an_error_not_a_wrap():
    x = np.full((1, 4), 127, dtype=np.int8)
    w = np.full((4, 1), 2**29, dtype=np.int32)
    with pytest.raises(ExecutionError, match="overflows int32"):
        run_single(Op.QMATMUL, QMatMulAttrs(acc_requant(0, INT32), INT32), [x], [w])


def test_qmatmul_per_group_rescale():
    """acc[c] = Σ_r ((acc_r[c]·m[r,c] + half) >> s[r,c]) over groups of 4 rows of K=10."""
    x = RNG.integers(-8, 8, size=(3, 10)).astype(np.int8)
    w = RNG.integers(-7, 8, size=(10, 5)).astype(np.int8)
    n_groups = 3
    ms, ss = to_dyadic(RNG.uniform(0.1, 50.0, size=(n_groups, 5)))
    groups = GroupRescale(0, 4, tuple(int(v) for v in ms.ravel()),
                          tuple(int(v) for v in ss.ravel()))
    got = run_single(Op.QMATMUL, QMatMulAttrs(acc_requant(-2), INT64, groups), [x], [w])
    want = np.zeros((3, 5), dtype=object)
    for r in range(n_groups):
        rows = slice(4 * r, 4 * r + 4)
        part = (x[:, rows].astype(np.int64) + 2) @ w[rows].astype(np.int64)
        for i, c in itertools.product(range(3), range(5)):
            want[i, c] += requant_oracle(part[i, c], ms[r, c], ss[r, c], 0, -2**63, 2**63 - 1)
    np.testing.assert_array_equal(got, want.astype(np.int64))


# -- QConv ------------------------------------------------------------------------------------
def conv_oracle(x, w, zx, strides, pads, dilations, group):
    """Direct int64 convolution; padding holds the real value 0 (code zx)."""
    n, _c, _h, _wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - ((kh - 1) * dilations[0] + 1)) // strides[0] + 1
    ow = (xp.shape[3] - ((kw - 1) * dilations[1] + 1)) // strides[1] + 1
    out = np.zeros((n, m, oh, ow), dtype=np.int64)
    mg = m // group
    for o in range(m):
        g = o // mg
        for i, j in itertools.product(range(oh), range(ow)):
            patch = xp[:, g * cg:(g + 1) * cg,
                       i * strides[0]:i * strides[0] + (kh - 1) * dilations[0] + 1:dilations[0],
                       j * strides[1]:j * strides[1] + (kw - 1) * dilations[1] + 1:dilations[1]]
            out[:, o, i, j] = (patch * w[o].astype(np.int64)).sum(axis=(1, 2, 3))
    return out


@pytest.mark.parametrize("strides,pads,dilations,group", [
    ((1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((2, 1), (0, 2, 1, 0), (1, 2), 1),
    ((1, 2), (1, 0, 1, 1), (1, 1), 3),
])
@pytest.mark.parametrize("zx", [0, -5, 100])
def test_qconv_bit_exact_against_direct_loop(strides, pads, dilations, group, zx):
    x = RNG.integers(-128 if zx < 100 else 0, 128 if zx < 100 else 256,
                     size=(2, 6, 7, 5)).astype(np.int16)
    w = RNG.integers(-8, 8, size=(9, 6 // group, 3, 2)).astype(np.int8)
    b = RNG.integers(-300, 300, size=9).astype(np.int32)
    base = {"strides": strides, "pads": pads, "dilations": dilations, "group": group}
    raw = run_single(Op.QCONV, QConvAttrs(**base, requant=acc_requant(zx, INT32),
                                          acc_dtype=INT32), [x], [w, b])
    acc = conv_oracle(x, w, zx, strides, pads, dilations, group) + b.reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(raw, acc)
    ms, ss = to_dyadic(RNG.uniform(1e-3, 2e-2, size=9))
    rq = Requant(zx, tuple(int(v) for v in ms), tuple(int(v) for v in ss), -7, DType.int(8),
                 -128, 127, axis=1)
    got = run_single(Op.QCONV, QConvAttrs(**base, requant=rq, acc_dtype=INT32), [x], [w, b])
    want = np.vectorize(lambda a, c: requant_oracle(a, ms[c], ss[c], -7, -128, 127))(
        acc, np.arange(9).reshape(1, -1, 1, 1))
    np.testing.assert_array_equal(got, want)


def test_qconv_transposed_matches_float_conv_transpose_on_integers():
    """ConvTranspose on small integers is exact in float64: compare with the float kernel."""
    x = RNG.integers(0, 256, size=(1, 4, 3, 5)).astype(np.uint8)
    w = RNG.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    conv = {"strides": (2, 1), "pads": (1, 0, 0, 1), "dilations": (1, 1), "group": 1}
    got = run_single(Op.QCONV, QConvAttrs(**conv, requant=acc_requant(128, INT32),
                                          acc_dtype=INT32, transposed=True,
                                          output_padding=(1, 0)), [x], [w])
    from lowbit.ir.attrs import ConvTransposeAttrs
    ref = run_single(Op.CONV_TRANSPOSE, ConvTransposeAttrs(**{**conv, "output_padding": (1, 0)}),
                     [x.astype(np.float64) - 128], [w.astype(np.float64)])
    np.testing.assert_array_equal(got, ref.astype(np.int64))


# -- QAdd -------------------------------------------------------------------------------------
def test_qadd_single_rounding_per_channel_and_tensor():
    a = RNG.integers(-50000, 50000, size=(2, 3, 4)).astype(np.int32)  # accumulators
    b = RNG.integers(0, 256, size=(2, 3, 4)).astype(np.uint8)  # codes, zp 128
    shift = 40
    ma = tuple(int(v) for v in RNG.integers(1, 2**20, size=3))
    mb = (int(RNG.integers(1, 2**31)),)
    dt = DType.int(8)
    ra = Requant(0, ma, (shift,) * 3, -10, dt, -128, 127, axis=1)
    rb = Requant(128, mb, (shift,), -10, dt, -128, 127)
    got = run_single(Op.QADD, QAddAttrs(ra, rb), [a, b])
    for idx in itertools.product(range(2), range(3), range(4)):
        total = int(a[idx]) * ma[idx[1]] + (int(b[idx]) - 128) * mb[0]
        assert got[idx] == min(max(-10 + (total + (1 << 39)) // (1 << 40), -128), 127)


def test_qadd_rejects_mismatched_terms():
    dt = DType.int(8)
    ra = Requant(0, (3,), (4,), 0, dt, -128, 127)
    rb = Requant(0, (3,), (5,), 0, dt, -128, 127)
    with pytest.raises(Exception, match="share shift"):
        run_single(Op.QADD, QAddAttrs(ra, rb), [np.zeros(2, np.int8), np.zeros(2, np.int8)])


def test_integer_ops_reject_float_inputs():
    rq = acc_requant(0)
    with pytest.raises(Exception, match="QuantizeLinear"):
        run_single(Op.REQUANTIZE, RequantizeAttrs(rq), [np.zeros(2, np.float32)])
