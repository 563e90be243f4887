"""int8 kernels: bit-exact vs the integer simulator's formula on every path, conv, registry.

Reference: acc = (x - z_x) @ w + bias in int64, then ``lowbit.ir.dyadic.requantize``.
Compiled kernels are cached per (spec, target) by ``int8.build``; shapes are few and small.
The ``avx2``, ``avx2w8`` and ``generic`` paths are built for targets whose code runs on this
host (haswell, a featureless x86-64), so every CPU path is executed, not only compiled.
"""

import numpy as np
import pytest
from lowbit.codegen import kernels
from lowbit.codegen.kernels import int8 as k8
from lowbit.codegen.target import host_x86_target, resolve_target
from lowbit.ir.dtypes import DType
from lowbit.ir.dyadic import requantize
from lowbit.ir.errors import LoweringError
from lowbit.ir.qtype import QKind, QType

HOST = resolve_target("x86")
AVX2 = resolve_target("x86-avx2")
PLAIN = host_x86_target(flags=(), cpu=None)
OUT = k8.OutputRange(zero_point=3, lo=-20, hi=100)
U8 = k8.OutputRange(zero_point=0, lo=0, hi=255)
needs_vnni = pytest.mark.skipif("avx512_vnni" not in HOST.features,
                                reason="host CPU has no AVX-512 VNNI")


def _codes(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def _weights(rng, bits, shape):
    return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), shape).astype(np.int8)


def _requant(acc, mult, shift, out, axis):
    if out is None:
        return acc
    return requantize(acc, mult, shift, out.zero_point, out.lo, out.hi, axis=axis)


def _params(rng, n):
    mult = rng.integers(1 << 20, 1 << 31, n)
    shift = rng.integers(0, 45, n)
    shift[0] = 0  # no rounding term
    return rng.integers(-3000, 3000, n), mult, shift


def _check(spec, rng, target=HOST, x=None, w=None, zx=None, bias=None, kernel=None):
    """Pack for ``target``, run ``kernel`` (default: ``k8.build(spec, target)``), compare."""
    x = _codes(rng, spec.a_dtype, (spec.M, spec.K)) if x is None else x
    w = _weights(rng, spec.w_bits, (spec.K, spec.N)) if w is None else w
    zx = int(_codes(rng, spec.a_dtype, ())) if zx is None else zx
    b, mult, shift = _params(rng, spec.N)
    bias = b if bias is None else bias
    packed = k8.pack_weights(spec, target, w, bias=bias, a_zero_point=zx, mult=mult,
                             shift=shift)
    got = (kernel or k8.build(spec, target))(x, packed)
    acc = ((x.astype(np.int64) - zx) @ w.astype(np.int64) << spec.acc_shift) + bias
    assert got.dtype == np.dtype(spec.out_dtype)
    np.testing.assert_array_equal(got, _requant(acc, mult, shift, spec.requant, 1))
    return got


@needs_vnni
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 63, 9), (3, 131, 19), (8, 65, 40),
                                   (3, 200, 129)])
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
def test_vnni_odd_shapes(M, K, N, a_dtype):
    """K not a multiple of 4/16/64, N not a multiple of the 16-lane tile, M in {1, 3, 8}."""
    spec = k8.Int8Spec(M, K, N, 8, a_dtype, OUT)
    assert k8.kernel_path(HOST, 8) == "vnni"
    _check(spec, np.random.default_rng(K * N + M))


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 63, 9), (3, 131, 19), (8, 65, 40),
                                   (3, 200, 129), (1, 300, 70)])
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
def test_avx2_8bit_odd_shapes(M, K, N, a_dtype):
    """avx2w8 (vpmaddwd on 16-bit operands, two partial sums per lane): K not a multiple of
    4/16/64, N not a multiple of the tile or of the 3-tile GEMV block, M in {1, 3, 8}."""
    assert k8.kernel_path(AVX2, 8) == "avx2w8"
    _check(k8.Int8Spec(M, K, N, 8, a_dtype, OUT), np.random.default_rng(K * N + M + 1), AVX2)


@pytest.mark.parametrize("target,bits,path", [(AVX2, 7, "avx2"), (AVX2, 8, "avx2w8"),
                                              (PLAIN, 8, "generic"), (HOST, 4, None)])
def test_every_path_both_modes(target, bits, path):
    if path is not None:
        assert k8.kernel_path(target, bits) == path
    rng = np.random.default_rng(bits)
    for out in (OUT, None):
        _check(k8.Int8Spec(3, 70, 35, bits, "uint8", out), rng, target)
        _check(k8.Int8Spec(1, 37, 16, bits, "int8", out), rng, target)


@pytest.mark.parametrize("target", [HOST, AVX2, PLAIN], ids=["host", "avx2", "generic"])
def test_acc_shift_in_the_epilogue(target):
    """acc = (D << acc_shift) + bias in int64, then requant, inside the kernel (the bias is
    not folded into the int32 offset); accumulator-out cannot shift (int32 out)."""
    rng = np.random.default_rng(4)
    for a_dtype in ("uint8", "int8"):
        spec = k8.Int8Spec(5, 70, 35, 7, a_dtype, OUT, acc_shift=9)
        _check(spec, rng, target, bias=rng.integers(-(1 << 29), 1 << 29, 35))
    with pytest.raises(LoweringError, match="acc_shift needs the requant"):
        k8.Int8Spec(5, 70, 35, 7, "uint8", None, acc_shift=9)


@pytest.mark.parametrize("target", [HOST, AVX2], ids=["host", "avx2"])
def test_register_block_choices_agree(target):
    rng = np.random.default_rng(3)
    for mb, nb in ((1, 1), (2, 3), (8, 1), (0, 0)):
        _check(k8.Int8Spec(5, 90, 50, 8, "uint8", OUT, mb, nb), rng, target)


def test_auto_register_blocks_fit_the_register_file():
    """AVX-512: 16 accumulators of 32 zmm; AVX2 (16 ymm): 2 (avx2) or 4 (avx2w8) per tile,
    at most 12 in all."""
    spec = k8.Int8Spec(64, 256, 256)
    assert spec.block_for("vnni") == spec.block == (4, 4)
    for path, per_tile in (("avx2", 2), ("avx2w8", 4)):
        for m in (1, 64):
            mb, nb = k8.Int8Spec(m, 256, 256).block_for(path)
            assert mb * nb * per_tile <= 12, (path, m)


@pytest.mark.parametrize("target,bits", [(HOST, 8), (AVX2, 7), (AVX2, 8)],
                         ids=["host", "avx2", "avx2w8"])
def test_extreme_values_do_not_overflow(target, bits):
    """All-max codes (255, z_x = 0) against the most negative weight over K = 60000: every
    int32 lane sum stays exact (vpmaddubsw pairs at 255 * -64 * 2 = -32640 on AVX2; avx2w8's
    two partial sums per lane each stay in int32)."""
    K = 60000
    spec = k8.Int8Spec(1, K, 17, bits, "uint8", None)
    w_min = -(1 << (bits - 1))
    x = np.full((1, K), 255, np.uint8)
    w = np.full((K, 17), w_min, np.int8)
    got = _check(spec, np.random.default_rng(1), target, x=x, w=w, zx=0,
                 bias=np.zeros(17, np.int64))
    assert got[0, 0] == 255 * w_min * K


def test_raw_sum_wraps_but_acc_stays_exact():
    """sum_k u*w = 255 * -128 * 65800 < -2^31 wraps in the int32 lanes, but the true acc
    (255 - 128) * -128 * 65800 fits, and wrapping arithmetic lands exactly on it."""
    K = 65800
    spec = k8.Int8Spec(1, K, 3, 8, "uint8", None)
    x = np.full((1, K), 255, np.uint8)
    w = np.full((K, 3), -128, np.int8)
    assert 255 * -128 * K < -(1 << 31)
    got = _check(spec, np.random.default_rng(2), x=x, w=w, zx=128, bias=np.array([5, -5, 0]))
    assert got.tolist() == [[127 * -128 * K + 5, 127 * -128 * K - 5, 127 * -128 * K]]


# -- conv -----------------------------------------------------------------------------------------
def _conv_reference(x, w, zx, bias, stride, pads, groups):
    import torch

    xf = torch.from_numpy(x.astype(np.float64) - zx)
    pt, pl, pb, pr = pads
    xf = torch.nn.functional.pad(xf, (pl, pr, pt, pb))  # zero = the zero point's real value
    acc = torch.nn.functional.conv2d(xf, torch.from_numpy(w.astype(np.float64)),
                                     stride=stride, groups=groups)
    return np.rint(acc.numpy()).astype(np.int64) + np.asarray(bias).reshape(1, -1, 1, 1)


@pytest.mark.parametrize("a_dtype,stride,pads,out,k,oc,direct", [
    ("uint8", (1, 1), (1, 1, 1, 1), OUT, 3, 19, True), ("int8", (2, 2), (0, 1, 2, 0), None, 3,
                                                       19, True),
    ("uint8", (2, 1), (0, 0, 0, 0), U8, 3, 19, True),
    ("int8", (2, 2), (3, 3, 2, 3), OUT, 7, 19, True),  # a 7x7/2 stem: taps padded to 8
    ("uint8", (1, 1), (1, 1, 1, 1), None, 3, 200, False),  # wide: the padded taps cost more
    ("int8", (1, 2), (0, 0, 0, 0), OUT, 1, 19, False),  # 1x1: 4-tap groups would be 3/4 waste
    ("uint8", (1, 1), (2, 1, 2, 2), U8, 5, 19, False)])
def test_conv_is_bit_exact(a_dtype, stride, pads, out, k, oc, direct):
    """Dense conv, direct (implicit GEMM) or im2col, against torch's conv2d."""
    rng = np.random.default_rng(sum(pads) + stride[0] + k)
    spec = k8.ConvSpec(2, 5, 9, 7, oc, k, k, stride, pads, 8, a_dtype, out)
    assert spec.direct == direct
    x = _codes(rng, a_dtype, spec.in_shape)
    w = _weights(rng, 8, (oc, 5, k, k))
    zx = int(_codes(rng, a_dtype, ()))
    bias, mult, shift = _params(rng, oc)
    packed = k8.pack_conv_weights(spec, HOST, w, bias=bias, a_zero_point=zx, mult=mult,
                                  shift=shift)
    got = k8.build_conv(spec, HOST, zx)(x, packed)
    acc = _conv_reference(x, w, zx, bias, stride, pads, 1)
    assert got.shape == spec.out_shape == acc.shape
    np.testing.assert_array_equal(got, _requant(acc, mult, shift, out, 1))


@pytest.mark.parametrize("target,bits", [(AVX2, 7), (AVX2, 8), (PLAIN, 8)],
                         ids=["avx2", "avx2w8", "generic"])
def test_direct_conv_on_every_path(target, bits):
    """The direct conv's 4-byte groups feed vpmaddubsw (avx2), vpmaddwd on widened bytes
    (avx2w8) and the plain widening path."""
    rng = np.random.default_rng(bits)
    spec = k8.ConvSpec(1, 3, 11, 10, 21, 7, 7, (2, 2), (3, 3, 3, 3), bits, "int8", OUT)
    assert spec.direct
    x = _codes(rng, "int8", spec.in_shape)
    w = _weights(rng, bits, (21, 3, 7, 7))
    bias, mult, shift = _params(rng, 21)
    packed = k8.pack_conv_weights(spec, target, w, bias=bias, a_zero_point=-3, mult=mult,
                                  shift=shift)
    got = k8.build_conv(spec, target, -3)(x, packed)
    acc = _conv_reference(x, w, -3, bias, (2, 2), (3, 3, 3, 3), 1)
    np.testing.assert_array_equal(got, _requant(acc, mult, shift, OUT, 1))


@pytest.mark.parametrize("target,bits", [(HOST, 8), (AVX2, 7), (AVX2, 8), (PLAIN, 8)],
                         ids=["host", "avx2", "avx2w8", "generic"])
@pytest.mark.parametrize("c,k,stride,pads,a_dtype,out", [
    (8, 3, (1, 1), (1, 1, 1, 1), "uint8", U8), (12, 3, (2, 2), (0, 1, 2, 0), "int8", OUT),
    (4, 7, (2, 2), (3, 3, 3, 3), "uint8", None), (16, 5, (1, 2), (2, 0, 1, 2), "int8", OUT)])
def test_channel_packed_direct_conv_is_bit_exact(target, bits, c, k, stride, pads, a_dtype,
                                                 out):
    """C % 4 == 0: the direct conv reads a channels-last image, 4 channels per group, and
    the weights are packed (kh, kw, c) -- no padded taps."""
    rng = np.random.default_rng(c * k + bits)
    spec = k8.ConvSpec(2, c, 9, 10, 21, k, k, stride, pads, bits, a_dtype, out)
    assert spec.channels_packed and spec.direct and spec.KQ == k
    assert spec.gemm.K == c * k * k
    hp, wp = 9 + pads[0] + pads[2], 10 + pads[1] + pads[3]  # channels last
    assert f"xpad = T.alloc_buffer(({spec.B}, {hp}, {wp}, {c})" in k8.conv_source(spec, target, 1)
    x = _codes(rng, a_dtype, spec.in_shape)
    w = _weights(rng, bits, (21, c, k, k))
    zx = int(_codes(rng, a_dtype, ()))
    bias, mult, shift = _params(rng, 21)
    packed = k8.pack_conv_weights(spec, target, w, bias=bias, a_zero_point=zx, mult=mult,
                                  shift=shift)
    got = k8.build_conv(spec, target, zx)(x, packed)
    acc = _conv_reference(x, w, zx, bias, stride, pads, 1)
    np.testing.assert_array_equal(got, _requant(acc, mult, shift, out, 1))


@pytest.mark.parametrize("target,bits", [(HOST, 8), (AVX2, 7), (AVX2, 8), (PLAIN, 8)],
                         ids=["host", "avx2", "avx2w8", "generic"])
@pytest.mark.parametrize("batch,hw,oc,out,acc_shift,rows", [
    (3, (8, 8), 16, U8, 0, 32),      # R = 32 output pixels per channel store, 2 per image
    (2, (4, 6), 19, OUT, 2, 8),      # 24 pixels: R = 8; 19 channels: the last tile guarded
    (1, (2, 2), 40, None, 0, 4),     # int32 accumulators out, R = one whole image
    (2, (3, 3), 16, U8, 0, 0)])      # 9 pixels: no R divides them, per-block stores
def test_grouped_conv_epilogue_is_bit_exact(target, bits, batch, hw, oc, out, acc_shift, rows):
    """Channel-major convs whose R-pixel row groups stay inside one image store each
    channel's R pixels as one vector from an L1 tile (``_GROUPED_TEMPLATE``); the rest keep
    the per-block stores."""
    rng = np.random.default_rng(oc + bits)
    spec = k8.ConvSpec(batch, 6, *hw, oc, 3, 3, (1, 1), (1, 1, 1, 1), bits, "uint8", out,
                       acc_shift)
    g = spec.gemm
    block = k8._Gemm(g.M, g.K, g.N, *g.block_for(k8.kernel_path(target, bits)))
    want_rows = rows if rows % block.MB == 0 else 0
    assert k8._store_rows(block, spec.OH * spec.OW) == want_rows
    assert ("tile = T.alloc_buffer" in k8.conv_source(spec, target, 5)) == bool(want_rows)
    x = _codes(rng, "uint8", spec.in_shape)
    w = _weights(rng, bits, (oc, 6, 3, 3))
    bias, mult, shift = _params(rng, oc)
    packed = k8.pack_conv_weights(spec, target, w, bias=bias, a_zero_point=5, mult=mult,
                                  shift=shift)
    got = k8.build_conv(spec, target, 5)(x, packed)
    acc = (_conv_reference(x, w, 5, 0, (1, 1), (1, 1, 1, 1), 1) << acc_shift) + \
        np.asarray(bias).reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(got, _requant(acc, mult, shift, out, 1))


@pytest.mark.parametrize("k,stride,pads", [(3, (1, 1), (1, 1, 1, 1)), (3, (2, 2), (1, 0, 1, 1)),
                                           (5, (1, 1), (2, 2, 2, 2)), (5, (2, 2), (0, 0, 0, 0)),
                                           (3, (1, 1), (0, 0, 0, 0)), (3, (1, 1), (0, 2, 1, 0))])
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
def test_depthwise_is_bit_exact(k, stride, pads, a_dtype):
    rng = np.random.default_rng(k * 10 + stride[0])
    spec = k8.DepthwiseSpec(2, 6, 11, 13, k, k, stride, pads, 8, a_dtype, OUT)
    x = _codes(rng, a_dtype, spec.in_shape)
    w = _weights(rng, 8, (6, 1, k, k))
    zx = int(_codes(rng, a_dtype, ()))
    bias, mult, shift = _params(rng, 6)
    packed = k8.pack_depthwise_weights(spec, w, bias=bias, a_zero_point=zx, mult=mult,
                                       shift=shift)
    got = k8.build_depthwise(spec, HOST, zx)(x, packed)
    acc = _conv_reference(x, w, zx, bias, stride, pads, 6)
    np.testing.assert_array_equal(got, _requant(acc, mult, shift, OUT, 1))


@pytest.mark.parametrize("a_dtype,x_code,zx", [("uint8", 255, 0), ("uint8", 0, 255),
                                               ("int8", -128, 127)])
def test_depthwise_extremes_are_exact(a_dtype, x_code, zx):
    """The largest accumulators a depthwise layer can reach (5x5 taps, |x - zx| = 255, w =
    -128: 816,000) come out exact; int32 accumulators out."""
    spec = k8.DepthwiseSpec(1, 3, 9, 10, 5, 5, (1, 1), (2, 2, 2, 2), 8, a_dtype, None)
    x = np.full(spec.in_shape, x_code, dtype=a_dtype)
    w = np.full((3, 1, 5, 5), -128, dtype=np.int8)
    w[1] = 127
    bias = np.array([7, -3, 0])
    packed = k8.pack_depthwise_weights(spec, w, bias=bias, a_zero_point=zx)
    got = k8.build_depthwise(spec, HOST, zx)(x, packed)
    want = _conv_reference(x, w, zx, bias, (1, 1), (2, 2, 2, 2), 3)
    assert abs(int(want[0, 0, 4, 4] - 7)) == 25 * 255 * 128
    np.testing.assert_array_equal(got, want)


# -- cross targets / instructions -----------------------------------------------------------------
@needs_vnni
def test_vnni_path_emits_vpdpbusd():
    asm = k8.build(k8.Int8Spec(1, 64, 32), HOST).lib.mod.inspect_source("asm")
    assert "vpdpbusd" in asm


def test_avx2_path_emits_vpmaddubsw():
    asm = k8.build(k8.Int8Spec(1, 64, 32, 7), AVX2).lib.mod.inspect_source("asm")
    assert "vpmaddubsw" in asm and "vpmaddwd" in asm and "zmm" not in asm
    # 8-bit weights on AVX2: no saturating vpmaddubsw; bytes widened (vpmovsxbw) for vpmaddwd
    asm = k8.build(k8.Int8Spec(1, 64, 32, 8), AVX2).lib.mod.inspect_source("asm")
    assert "vpmaddubsw" not in asm and "vpmaddwd" in asm and "vpmovsxbw" in asm


def test_arm64_object_code():
    """arm64 takes the generic path: NEON widening multiply-accumulate (no sdot/udot)."""
    kernel = k8.build(k8.Int8Spec(1, 64, 32, 8, "uint8", OUT), resolve_target("arm64"))
    assert kernel.path == "generic"
    asm = kernel.lib.mod.inspect_source("asm")
    assert "\tsmlal" in asm and "sdot" not in asm
    spec = k8.DepthwiseSpec(1, 4, 9, 9, 3, 3, (2, 2), (1, 1, 1, 1), requant=OUT)
    dw_asm = k8.build_depthwise(spec, resolve_target("arm64"), 0).lib.mod.inspect_source("asm")
    assert "\tsmlal" in dw_asm or "\tmla\t" in dw_asm or "\tmul\t" in dw_asm


# -- CUDA (code generation here; the formula runs on this CPU) -------------------------------------
CUDA = resolve_target("cuda")


def _gpu_formula_on_cpu(spec):
    """``gpu_func`` with its threads unbound and ``__dp4a`` written out over the same int32
    words, built for this CPU: what the CUDA kernel computes, runnable here."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": k8.gpu_func(spec, bind_threads=False)}),
                      target=HOST.tvm_dict())
    return k8.Int8Kernel(spec, HOST, "dp4a", lib)


@pytest.mark.parametrize("M,K,N,bits,a_dtype,out,acc_shift", [
    (1, 1, 1, 8, "uint8", OUT, 0), (1, 37, 19, 8, "uint8", OUT, 0),
    (3, 70, 33, 4, "int8", None, 0), (3, 131, 129, 8, "int8", U8, 5),
    (1, 63, 17, 2, "uint8", None, 0), (8, 65, 40, 7, "int8", OUT, 0)])
def test_cuda_formula_is_bit_exact(M, K, N, bits, a_dtype, out, acc_shift):
    """The CUDA GEMM (s8 x s8 dp4a words, z_s = z_u - 128 folded by pack_weights for cuda) on
    odd shapes: K not a multiple of 4/16, N not a multiple of the 16-lane tile, M in {1, 3, 8}."""
    spec = k8.Int8Spec(M, K, N, bits, a_dtype, out, acc_shift=acc_shift)
    rng = np.random.default_rng(M * K * N + bits)
    bias = rng.integers(-(1 << 29), 1 << 29, N) if acc_shift else None
    _check(spec, rng, CUDA, bias=bias, kernel=_gpu_formula_on_cpu(spec))


@pytest.mark.parametrize("a_dtype,x_val,zx,w_val", [
    ("uint8", 255, 0, -128), ("uint8", 0, 255, -128), ("int8", -128, 127, -128),
    ("int8", 127, -128, 127)])
def test_cuda_formula_extremes(a_dtype, x_val, zx, w_val):
    """Codes and weights at the ends of their ranges over a K where |acc| nears 2^31: the
    signed-byte operand and the folded offset stay exact (no wrap anywhere)."""
    K = ((1 << 31) - 1) // (255 * 128)
    spec = k8.Int8Spec(1, K, 17, 8, a_dtype, None)
    x = np.full((1, K), x_val, a_dtype)
    w = np.full((K, 17), w_val, np.int8)
    got = _check(spec, np.random.default_rng(0), CUDA, x=x, w=w, zx=zx,
                 bias=np.zeros(17, np.int64), kernel=_gpu_formula_on_cpu(spec))
    assert got[0, 0] == (x_val - zx) * w_val * K


def test_cuda_offset_folds_the_signed_operand():
    """Same packed weights on CPU and CUDA; the CUDA offset is bias - (z_u - 128) colsum(w)."""
    spec = k8.Int8Spec(2, 9, 5, 8, "uint8", None)
    w = _weights(np.random.default_rng(1), 8, (9, 5))
    cpu = k8.pack_weights(spec, HOST, w, bias=np.arange(5), a_zero_point=7)
    gpu = k8.pack_weights(spec, CUDA, w, bias=np.arange(5), a_zero_point=7)
    np.testing.assert_array_equal(cpu.w, gpu.w)
    np.testing.assert_array_equal(gpu.offset, np.arange(5) - (7 - 128) * w.astype(np.int64).sum(0))


@pytest.mark.parametrize("target", ["cuda", "cuda:sm_90"])
@pytest.mark.parametrize("M,K,N,bits,a_dtype,out,acc_shift", [
    (1, 64, 32, 8, "uint8", OUT, 0), (3, 70, 33, 4, "int8", None, 0),
    (5, 131, 19, 7, "int8", U8, 3)])
def test_cuda_source_uses_dp4a(target, M, K, N, bits, a_dtype, out, acc_shift):
    """The GEMM compiles to CUDA source (no GPU needed): threads over outputs, ``__dp4a``."""
    kernel = k8.build(k8.Int8Spec(M, K, N, bits, a_dtype, out, acc_shift=acc_shift),
                      resolve_target(target))
    assert kernel.path == "dp4a" == k8.kernel_path(resolve_target(target), bits)
    source = kernel.lib.mod.imports[0].inspect_source("cuda")
    assert source.count("__global__") == 4  # (declaration + definition) x (pack, GEMM)
    assert "__dp4a(" in source and "threadIdx.x" in source
    assert f"__launch_bounds__({k8.GPU_THREADS})" in source
    with pytest.raises(LoweringError, match="cannot run on this host's CPU"):
        kernel.bind(k8.pack_weights(kernel.spec, kernel.target, np.zeros((K, N), np.int8),
                                    mult=1, shift=0))


def test_cuda_source_compiles_to_dp4a_ptx(nvcc_ptx):
    """nvcc accepts the source and the GEMM's inner loop is the s8 x s8 ``dp4a`` instruction."""
    spec = k8.Int8Spec(3, 131, 129, 8, "int8", OUT, acc_shift=5)
    source = k8.build(spec, resolve_target("cuda:sm_90")).lib.mod.imports[0].inspect_source("cuda")
    assert "dp4a.s32.s32" in nvcc_ptx(source, "sm_90")


def test_cuda_conv_entries_are_refused():
    """Dense / depthwise conv entries have CPU schedules only (graphs use im2col on GPUs)."""
    with pytest.raises(LoweringError, match="int8 conv: no cuda:sm_80 schedule"):
        k8.build_conv(k8.ConvSpec(1, 3, 8, 8, 4, 3, 3), CUDA, 0)
    with pytest.raises(LoweringError, match="int8 depthwise: no cuda:sm_80 schedule"):
        k8.build_depthwise(k8.DepthwiseSpec(1, 4, 8, 8), CUDA, 0)


def test_two_threads_agree_with_one():
    """Parallel over channel blocks (GEMM) and over row blocks (conv, one channel block)."""
    rng = np.random.default_rng(9)
    try:
        k8.set_num_threads(2)
        _check(k8.Int8Spec(9, 100, 150, 8, "uint8", OUT), rng)
        spec = k8.ConvSpec(1, 3, 12, 12, 8, 3, 3, (1, 1), (1, 1, 1, 1), requant=OUT)
        x, w = _codes(rng, "uint8", spec.in_shape), _weights(rng, 8, (8, 3, 3, 3))
        packed = k8.pack_conv_weights(spec, HOST, w, a_zero_point=7, mult=1 << 30, shift=40)
        got = k8.build_conv(spec, HOST, 7)(x, packed)
        acc = _conv_reference(x, w, 7, np.zeros(8, np.int64), (1, 1), (1, 1, 1, 1), 1)
        np.testing.assert_array_equal(got, _requant(acc, 1 << 30, 40, OUT, 1))
    finally:
        k8.set_num_threads(1)


# -- registry ------------------------------------------------------------------------------------
def _u(bits, signed=False, zp=()):
    return QType(QKind.UNIFORM, bits, signed, zero_point=zp)


def test_registry_discovers_the_family():
    fam = kernels.get_family("int8")
    assert fam is k8.FAMILY and fam in kernels.families_for(_u(8, True), _u(8))
    assert "acc[m, n]" in fam.formula


@pytest.mark.parametrize("w,a,ok", [
    (_u(8, True), _u(8), True), (_u(4, True), _u(8, True, zp=(3,)), True),
    (_u(2, True), _u(8), True), (_u(8), _u(8), False), (_u(8, True, zp=(1,)), _u(8), False),
    (_u(1, True), _u(8), False), (_u(8, True), _u(16), False),
    (_u(8, True), _u(8, zp=(1, 2)), False), (QType(QKind.BINARY, 1), _u(8), True),
    (QType(QKind.TERNARY, 2), _u(8), True), (QType(QKind.POW2, 4), _u(8), True),
    (QType(QKind.POW2, 4, zero_free=True), _u(8), False),  # ±2^7 does not fit a byte
    (QType(QKind.POW2, 3, zero_free=True), _u(8), True), (QType(QKind.CODEBOOK, 4), _u(8), True),
    (QType(QKind.CODEBOOK, 5), _u(8), False),  # 12-bit level grid: reference kernel
    (QType(QKind.BINARY, 1), QType(QKind.BINARY, 1), False),  # sign activations: bitserial
])
def test_accepts(w, a, ok):
    assert k8.accepts(w, a) is ok


@pytest.mark.parametrize("kind,bits,zero_free,int_bits", [
    (QKind.BINARY, 1, False, 2), (QKind.TERNARY, 2, False, 2), (QKind.POW2, 4, False, 8),
    (QKind.POW2, 3, False, 4), (QKind.POW2, 3, True, 5), (QKind.CODEBOOK, 4, False, 7),
    (QKind.CODEBOOK, 2, False, 7)])
def test_non_uniform_weights_fit_their_int_width(kind, bits, zero_free, int_bits):
    """The integer weight values fold_scales stores for the format fit int<int_bits>, the
    width the family computes them with."""
    from lowbit.ir.qformats import fit_weights
    from lowbit.ir.qtype import Granularity
    from lowbit.passes.fold_scales import integer_weights

    w = np.random.default_rng(0).standard_normal((16, 64)) * np.geomspace(1e-3, 1, 64)
    qtype, _ = fit_weights(w, kind, bits, granularity=Granularity(0), zero_free=zero_free)
    assert k8.operand_bits(qtype, "weight") == int_bits
    values = np.asarray(integer_weights(w, qtype).values)
    assert values.min() >= -(1 << (int_bits - 1)) and values.max() < (1 << (int_bits - 1))


def test_accumulator_rule():
    assert k8.accumulator_dtype(4096, _u(8, True), _u(8)) == DType.int(32)
    with pytest.raises(LoweringError, match="overflows int32"):
        k8.accumulator_dtype(100_000, _u(8, True), _u(8))


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"M": 0, "K": 4, "N": 4}, "must be >= 1"),
    ({"M": 1, "K": 4, "N": 4, "w_bits": 1}, "bitserial"),
    ({"M": 1, "K": 4, "N": 4, "a_dtype": "int16"}, "activation dtype"),
])
def test_bad_specs(kwargs, match):
    with pytest.raises(LoweringError, match=match):
        k8.Int8Spec(**kwargs)


def test_bad_conv_specs():
    with pytest.raises(LoweringError, match="only 3x3 and 5x5"):
        k8.DepthwiseSpec(1, 4, 8, 8, 7, 7)
    with pytest.raises(LoweringError, match="only 1 and 2"):
        k8.DepthwiseSpec(1, 4, 8, 8, stride=(3, 3))
    with pytest.raises(LoweringError, match="empty output"):
        k8.ConvSpec(1, 1, 2, 2, 1, 3, 3)


def test_pack_weights_errors():
    spec = k8.Int8Spec(1, 4, 2, 4, "uint8", OUT)
    ok = np.zeros((4, 2), np.int8)
    with pytest.raises(LoweringError, match="do not fit int4"):
        k8.pack_weights(spec, HOST, np.full((4, 2), 8), mult=1, shift=0)
    with pytest.raises(LoweringError, match=r"must be integer \(4, 2\)"):
        k8.pack_weights(spec, HOST, np.zeros((2, 4), np.int8), mult=1, shift=0)
    with pytest.raises(LoweringError, match="needs mult and shift"):
        k8.pack_weights(spec, HOST, ok)
    with pytest.raises(LoweringError, match="shift in"):
        k8.pack_weights(spec, HOST, ok, mult=1, shift=63)
    with pytest.raises(LoweringError, match="zero point 300"):
        k8.pack_weights(spec, HOST, ok, a_zero_point=300, mult=1, shift=0)
    with pytest.raises(LoweringError, match="overflow the int32 accumulator"):
        k8.pack_weights(spec, HOST, ok, bias=np.full(2, 2**31 - 10), mult=1, shift=0)


def test_tile_layout():
    """Channel n = (o*NB + t)*16 + l and k = 4*kb + i sit at [o, kb, t, l, i]; padding 0."""
    w = np.arange(5 * 40).reshape(5, 40).astype(np.int8)
    tiled = k8.tile_weights(w, 2)
    assert tiled.shape == (2, 2, 2, 16, 4)
    assert tiled[1, 1, 0, 3, 0] == w[4, 35] and tiled[0, 0, 1, 2, 3] == w[3, 18]
    assert tiled[1, 1, 0, 3, 1] == 0 and tiled[1, 0, 1, 15, 0] == 0
