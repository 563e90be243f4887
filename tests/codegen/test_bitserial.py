"""Bit-serial kernels: bit-exact vs the integer simulator's formula, registry, cross targets.

Reference: acc = (x - z_x) @ w + bias in int64, then ``lowbit.ir.dyadic.requantize``.
Compiled kernels are cached per (spec, target) by ``bitserial.build``; shapes are few.
"""

import zlib

import numpy as np
import pytest
from lowbit.codegen import kernels
from lowbit.codegen.kernels import bitserial as bs
from lowbit.codegen.target import host_x86_target, resolve_target
from lowbit.ir.dtypes import DType
from lowbit.ir.dyadic import requantize
from lowbit.ir.errors import LoweringError
from lowbit.ir.qtype import QKind, QType

HOST = resolve_target("x86")
W_FORMATS = [("bipolar", 1)] + [("uint", b) for b in range(1, 5)] + [("int", b) for b in (2, 3, 4)]
A_FORMATS = [("bipolar", 1)] + [("uint", b) for b in range(1, 5)]
OUT = bs.OutputRange(zero_point=3, lo=-20, hi=100)


def _codes(rng, fmt, bits, shape):
    lo, hi = bs._value_range(fmt, bits)
    if fmt == "bipolar":
        return rng.choice(np.array([-1, 1], np.int8), size=shape)
    return rng.integers(lo, hi + 1, shape).astype(np.int8 if fmt == "int" else np.uint8)


def _reference(x, w, zx, bias, mult, shift, out):
    acc = (x.astype(np.int64) - zx) @ w.astype(np.int64) + bias
    if out is None:
        return acc
    return requantize(acc, mult, shift, out.zero_point, out.lo, out.hi, axis=1)


def _check(spec, rng, target=HOST, x=None, w=None, zx=None, bias=None):
    x = _codes(rng, spec.a_format, spec.a_bits, (spec.M, spec.K)) if x is None else x
    w = _codes(rng, spec.w_format, spec.w_bits, (spec.K, spec.N)) if w is None else w
    if zx is None:
        zx = 0 if spec.a_format == "bipolar" else int(rng.integers(0, 1 << spec.a_bits))
    bias = rng.integers(-300, 300, spec.N) if bias is None else bias
    mult = rng.integers(1 << 20, 1 << 31, spec.N)
    shift = rng.integers(0, 45, spec.N)
    shift[0] = 0  # no rounding term
    packed = bs.pack_weights(spec, target, w, bias=bias, a_zero_point=zx, mult=mult, shift=shift)
    got = bs.build(spec, target)(x, packed)
    want = _reference(x, w, zx, bias, mult, shift, spec.requant)
    assert got.dtype == np.dtype(spec.out_dtype)
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("w_fmt", W_FORMATS, ids=lambda f: f"w{f[0]}{f[1]}")
@pytest.mark.parametrize("a_fmt", A_FORMATS, ids=lambda f: f"a{f[0]}{f[1]}")
def test_every_bit_pair_is_bit_exact(w_fmt, a_fmt):
    """Requant mode for every pair; accumulator-out mode (same GEMM, other epilogue) for every
    weight format against bipolar and 3-bit activations."""
    rng = np.random.default_rng(zlib.crc32(repr((w_fmt, a_fmt)).encode()))
    _check(bs.BitserialSpec(3, 131, 19, *w_fmt, *a_fmt, OUT), rng)
    if a_fmt in (("bipolar", 1), ("uint", 3)):
        _check(bs.BitserialSpec(3, 131, 19, *w_fmt, *a_fmt, None), rng)


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 63, 9), (8, 65, 8), (3, 200, 17),
                                   (1, 257, 33)])
@pytest.mark.parametrize("pair", [("bipolar", 1, "bipolar", 1), ("int", 4, "uint", 3)],
                         ids=["w1a1", "w4a3"])
def test_odd_shapes(M, K, N, pair):
    """K not a multiple of 8/32/64, N not a multiple of the 8-channel tile, M in {1, 3, 8}."""
    _check(bs.BitserialSpec(M, K, N, *pair, OUT), np.random.default_rng(K * N + M))


def test_xnor_padding_bits_do_not_count():
    """All -1 activations against all -1 weights: every real bit agrees, acc = K exactly."""
    spec = bs.BitserialSpec(1, 70, 3, "bipolar", 1, "bipolar", 1, None)
    x, w = -np.ones((1, 70), np.int8), -np.ones((70, 3), np.int8)
    got = _check(spec, np.random.default_rng(0), x=x, w=w, bias=np.zeros(3, np.int64))
    assert got.tolist() == [[70, 70, 70]]


@pytest.mark.parametrize("w_fmt,w_val", [("int", -8), ("uint", 15), ("bipolar", -1)])
def test_extreme_values_do_not_overflow(w_fmt, w_val):
    """All-max activations (15, z_x = 0) times the largest-magnitude weight over a long K."""
    K = 9000
    bits = 1 if w_fmt == "bipolar" else 4
    spec = bs.BitserialSpec(1, K, 9, w_fmt, bits, "uint", 4, None)
    x = np.full((1, K), 15, np.uint8)
    w = np.full((K, 9), w_val, np.int8 if w_fmt != "uint" else np.uint8)
    got = _check(spec, np.random.default_rng(1), x=x, w=w, zx=0, bias=np.zeros(9, np.int64))
    assert got[0, 0] == 15 * w_val * K


def test_word_size_32_matches_64():
    """Targets without a 64-bit popcount pack uint32 words (16-channel tiles); same results."""
    narrow = host_x86_target(flags=(), cpu=None)
    assert narrow.popcount_bits == 32
    rng = np.random.default_rng(5)
    for pair in (("bipolar", 1, "bipolar", 1), ("int", 2, "uint", 4)):
        spec = bs.BitserialSpec(3, 97, 21, *pair, OUT)
        packed = bs.pack_weights(spec, narrow, _codes(rng, *pair[:2], (97, 21)),
                                 mult=1 << 20, shift=24)
        assert packed.planes.dtype == np.uint32 and packed.planes.shape[3] == 16
        _check(spec, rng, target=narrow)


def test_pack_bits_layout():
    bits = np.zeros((2, 70), np.uint8)
    bits[0, [0, 63, 64, 69]] = 1
    bits[1, 1] = 1
    words = bs.pack_bits(bits, 64)
    assert words.dtype == np.uint64
    assert words.tolist() == [[1 | (1 << 63), 1 | (1 << 5)], [2, 0]]
    assert bs.pack_bits(bits, 32).tolist() == [[1, 1 << 31, 1 | (1 << 5)], [2, 0, 0]]


def test_weight_planes_use_twos_complement():
    planes = bs.weight_planes(np.array([[-4], [3], [-1]]), "int", 3)
    # -4 = 100b, 3 = 011b, -1 = 111b; planes (bits, N, K)
    assert planes[:, 0, :].tolist() == [[0, 1, 1], [0, 1, 1], [1, 0, 1]]


# -- cross targets ------------------------------------------------------------------------------
def test_arm64_object_code_uses_cnt():
    spec = bs.BitserialSpec(1, 200, 20, "bipolar", 1, "bipolar", 1, OUT)
    asm = bs.build(spec, resolve_target("arm64")).lib.mod.inspect_source("asm")
    assert "\tcnt\tv" in asm and "\teor\t" in asm  # NEON byte popcount of the XOR


def test_avx512_popcounts_accumulate_without_narrowing():
    """x86-avx512 (built on any host): ``vpopcntq`` on the XOR, summed in 64-bit lanes. int32
    lanes put a ``vpmovqd`` next to each popcount, both on Intel's port 5 (41 -> 36 us on the
    1x4096x4096 layer)."""
    spec = bs.BitserialSpec(1, 4096, 64, "bipolar", 1, "bipolar", 1, OUT)
    asm = bs.build(spec, resolve_target("x86-avx512")).lib.mod.inspect_source("asm")
    assert "vpopcntq\t%zmm" in asm and "vpaddq\t%zmm" in asm
    assert "vpmovqd" not in asm


def test_cuda_source_uses_popc():
    spec = bs.BitserialSpec(3, 100, 20, "int", 3, "uint", 2, OUT)
    kernel = bs.build(spec, resolve_target("cuda:sm_90"))
    source = kernel.lib.mod.imports[0].inspect_source("cuda")
    assert "__global__" in source and "__popc" in source


# -- registry ------------------------------------------------------------------------------------
def _u(bits, signed=False, zp=()):
    return QType(QKind.UNIFORM, bits, signed, zero_point=zp)


BIN = QType(QKind.BINARY, 1)


def test_registry_discovers_the_family():
    fam = kernels.get_family("bitserial")
    assert fam in kernels.families() and fam is bs.FAMILY
    assert "popcount" in fam.formula
    assert kernels.families_for(BIN, BIN) == (fam,) or fam in kernels.families_for(BIN, BIN)
    with pytest.raises(LoweringError, match="unknown kernel family 'nope'; known: .*bitserial"):
        kernels.get_family("nope")
    with pytest.raises(LoweringError, match="registered twice"):
        kernels.register_family(kernels.KernelFamily("bitserial", *[None] * 4, formula=""))


@pytest.mark.parametrize("w,a,ok", [
    (BIN, BIN, True), (_u(4, True), _u(4), True), (_u(2), BIN, True), (BIN, _u(3), True),
    (_u(8, True), _u(8), False), (_u(4, True), _u(4, True), False),
    (_u(4, True, zp=(1,)), _u(4), False), (_u(1, True), _u(2), False),
    (QType(QKind.TERNARY, 2), BIN, False), (_u(4), _u(4, zp=(1, 2)), False),
])
def test_accepts(w, a, ok):
    assert bs.accepts(w, a) is ok
    assert (kernels.get_family("bitserial") in kernels.families_for(w, a)) is ok


def test_accumulator_rule():
    assert bs.accumulator_dtype(4096, _u(4, True), _u(4)) == DType.int(32)
    with pytest.raises(LoweringError, match="overflows int32"):
        bs.accumulator_dtype(20_000_000, _u(4, True), _u(4))


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,match", [
    ((1, 8, 8, "int", 1, "uint", 2), "int1 unsupported"),
    ((1, 8, 8, "uint", 5, "uint", 2), "bits must be 1..4"),
    ((1, 8, 8, "ternary", 2, "uint", 2), "format 'ternary' unsupported"),
    ((1, 8, 8, "uint", 2, "int", 2), "activation format 'int'"),
    ((1, 8, 8, "bipolar", 2, "uint", 2), "bipolar weight has 1 bit"),
    ((0, 8, 8, "uint", 2, "uint", 2), "must be >= 1"),
])
def test_bad_specs(args, match):
    with pytest.raises(LoweringError, match=match):
        bs.BitserialSpec(*args)


def test_pack_weights_errors():
    spec = bs.BitserialSpec(1, 4, 2, "int", 2, "uint", 2, OUT)
    ok = np.zeros((4, 2), np.int8)
    with pytest.raises(LoweringError, match="do not fit int2"):
        bs.pack_weights(spec, HOST, np.full((4, 2), 2), mult=1, shift=0)
    with pytest.raises(LoweringError, match=r"must be integer \(4, 2\)"):
        bs.pack_weights(spec, HOST, np.zeros((2, 4), np.int8), mult=1, shift=0)
    with pytest.raises(LoweringError, match="needs mult and shift"):
        bs.pack_weights(spec, HOST, ok)
    with pytest.raises(LoweringError, match="shift in"):
        bs.pack_weights(spec, HOST, ok, mult=1, shift=63)
    with pytest.raises(LoweringError, match="overflow the int32 accumulator"):
        bs.pack_weights(spec, HOST, ok, bias=np.full(2, 2**31 - 10), mult=1, shift=0)
    bip = bs.BitserialSpec(1, 4, 2, "bipolar", 1, "bipolar", 1, None)
    with pytest.raises(LoweringError, match="do not fit bipolar1"):
        bs.pack_weights(bip, HOST, np.zeros((4, 2), np.int8))
    with pytest.raises(LoweringError, match="no zero point"):
        bs.pack_weights(bip, HOST, np.ones((4, 2), np.int8), a_zero_point=1)


def test_bind_and_call_errors():
    spec = bs.BitserialSpec(1, 4, 2, "bipolar", 1, "bipolar", 1, None)
    kernel = bs.build(spec, HOST)
    narrow = bs.pack_weights(spec, host_x86_target(flags=(), cpu=None), np.ones((4, 2), np.int8))
    with pytest.raises(LoweringError, match="repack for this target"):
        kernel.bind(narrow)
    layer = kernel.bind(bs.pack_weights(spec, HOST, np.ones((4, 2), np.int8)))
    with pytest.raises(LoweringError, match=r"input shape \(1, 5\)"):
        layer(np.ones((1, 5), np.int8))
    with pytest.raises(LoweringError, match="not bipolar1 codes"):
        layer(np.array([[1, 0, -1, 1]], np.int8))
    with pytest.raises(LoweringError, match="not bipolar1 codes"):
        layer(np.ones((1, 4), np.float32))
    cross = bs.build(bs.BitserialSpec(3, 100, 20, "int", 3, "uint", 2, OUT),
                     resolve_target("cuda:sm_90"))
    with pytest.raises(LoweringError, match="cannot run on this host"):
        cross.bind(bs.pack_weights(cross.spec, cross.target, np.zeros((100, 20), np.int8),
                                   mult=1, shift=0))
    with pytest.raises(LoweringError, match=">= 1 thread"):
        bs.set_num_threads(0)


def test_output_range_dtype():
    assert bs.OutputRange(0, -128, 127).dtype == "int8"
    assert bs.OutputRange(0, 0, 255).dtype == "uint8"
    assert bs.OutputRange(0, -1, 255).dtype == "int16"
    assert bs.OutputRange(0, -1, 1 << 20).dtype == "int32"
    with pytest.raises(LoweringError, match="empty or non-int32"):
        bs.OutputRange(0, 5, 4)
