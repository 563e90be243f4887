"""LUT kernels: bit-exact vs the integer formula, every weight format, odd shapes, extremes.

Reference: acc = (x - z_x) @ w + bias in int64, then ``lowbit.ir.dyadic.requantize``.
Compiled kernels are cached per (kernel key, target) by ``lut.build``; shapes are few.
"""

import numpy as np
import pytest
from lowbit.codegen import kernels
from lowbit.codegen.kernels import lut
from lowbit.codegen.kernels.bitserial import OutputRange
from lowbit.codegen.target import resolve_target
from lowbit.ir.dtypes import DType
from lowbit.ir.dyadic import requantize
from lowbit.ir.errors import LoweringError
from lowbit.ir.qtype import Granularity, QKind, QType

HOST = resolve_target("x86")
OUT = OutputRange(zero_point=3, lo=-20, hi=100)
CB2 = (-7, -1, 2, 5)
CB2_UINT5 = (0, 3, 17, 31)  # 5 planes: no plane count divisible by 2 or 3 (one plane per block)
CB4 = (-128, -90, -51, -23, -9, -2, 0, 1, 4, 10, 19, 33, 52, 77, 101, 127)
#: (format, bits, levels): every weight format the family computes
FORMATS = [("uint", 1, ()), ("uint", 2, ()), ("uint", 3, ()), ("uint", 4, ()),
           ("int", 2, ()), ("int", 3, ()), ("int", 4, ()), ("ternary", 2, ()),
           ("bipolar", 1, ()), ("codebook", 2, CB2), ("codebook", 2, CB2_UINT5),
           ("codebook", 4, CB4)]


def _fmt_id(fmt) -> str:
    return f"{fmt[0]}{fmt[1]}" + (f"_max{max(fmt[2])}" if fmt[2] else "")


needs_avx2 = pytest.mark.skipif("avx2" not in HOST.features, reason="host has no AVX2")


def _weights(rng, spec, shape):
    if spec.w_format == "codebook":
        return lut.codebook_values(rng.integers(0, len(spec.levels), shape), spec.levels)
    if spec.w_format == "bipolar":
        return rng.choice(np.array([-1, 1]), size=shape)
    lo, hi = spec.value_range()
    return rng.integers(lo, hi + 1, shape)


def _check(spec, rng, target=HOST, x=None, w=None, zx=None, bias=None, run=None):
    """Run the compiled layer (``run(x, packed)``, default ``lut.build(spec, target)``) and
    compare with the integer formula; returns the output."""
    a_lo, a_hi = (-128, 127) if spec.a_signed else (0, 255)
    if x is None:
        x = rng.integers(a_lo, a_hi + 1, (spec.M, spec.K)).astype(spec.a_dtype)
    w = _weights(rng, spec, (spec.K, spec.N)) if w is None else w
    zx = int(rng.integers(a_lo, a_hi + 1)) if zx is None else zx
    bias = rng.integers(-3000, 3000, spec.N) if bias is None else bias
    mult = rng.integers(1 << 20, 1 << 31, spec.N)
    shift = rng.integers(0, 45, spec.N)
    shift[0] = 0  # no rounding term
    packed = lut.pack_weights(spec, target, w, bias=bias, a_zero_point=zx, mult=mult,
                              shift=shift)
    got = (run or lut.build(spec, target))(x, packed)
    acc = (x.astype(np.int64) - zx) @ np.asarray(w, np.int64) + bias
    want = acc if spec.requant is None else requantize(
        acc, mult, shift, spec.requant.zero_point, spec.requant.lo, spec.requant.hi, axis=1)
    assert got.dtype == np.dtype(spec.out_dtype)
    np.testing.assert_array_equal(got, want)
    return got


@needs_avx2
@pytest.mark.parametrize("fmt", FORMATS, ids=_fmt_id)
@pytest.mark.parametrize("a_signed", [False, True], ids=["a_u8", "a_s8"])
def test_every_weight_format_is_bit_exact_both_modes(fmt, a_signed):
    rng = np.random.default_rng(abs(hash((fmt, a_signed))) % 2**32)
    for out in (OUT, None):
        _check(lut.LutSpec(3, 131, 19, fmt[0], fmt[1], a_signed, out, fmt[2]), rng)


@needs_avx2
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 15, 64), (8, 17, 65), (3, 200, 130),
                                   (1, 4096 + 3 * 16 + 5, 7)])
@pytest.mark.parametrize("fmt", [("uint", 2, ()), ("codebook", 4, CB4)], ids=["w2", "cb4"])
def test_odd_shapes(M, K, N, fmt):
    """K not a multiple of 4/16 (nor of a 4096-activation chunk: the last case crosses the
    uint16 widening boundary), N not a multiple of the 64-channel tile, M in {1, 3, 8}."""
    _check(lut.LutSpec(M, K, N, fmt[0], fmt[1], False, OUT, fmt[2]),
           np.random.default_rng(K * N + M))


@needs_avx2
@pytest.mark.parametrize("fmt,w_val", [("uint", 15), ("int", -8), ("codebook", -128),
                                       ("bipolar", -1), ("ternary", 1)])
def test_extreme_values_do_not_overflow(fmt, w_val):
    """All-max activations (255: every nibble table entry at its maximum 60) times the
    largest-magnitude weight over two uint16 chunks plus a tail: exact, no wraparound."""
    K, N = 2 * 4096 + 37, 70
    bits = {"uint": 4, "int": 4, "codebook": 4, "bipolar": 1, "ternary": 2}[fmt]
    levels = CB4 if fmt == "codebook" else ()
    spec = lut.LutSpec(1, K, N, fmt, bits, False, None, levels)
    x = np.full((1, K), 255, np.uint8)
    w = np.full((K, N), w_val, np.int64)
    got = _check(spec, np.random.default_rng(1), x=x, w=w, zx=0, bias=np.zeros(N, np.int64))
    assert got[0, 0] == 255 * w_val * K


@needs_avx2
def test_signed_activation_extremes():
    """int8 codes at -128 / 127 with zero points at both ends of the range."""
    K, N = 300, 33
    spec = lut.LutSpec(2, K, N, "int", 4, True, None)
    x = np.stack([np.full(K, -128), np.full(K, 127)]).astype(np.int8)
    w = np.full((K, N), -8, np.int64)
    rng = np.random.default_rng(2)
    for zx in (-128, 127):
        got = _check(spec, rng, x=x, w=w, zx=zx, bias=np.zeros(N, np.int64))
        assert got[:, 0].tolist() == [(-128 - zx) * -8 * K, (127 - zx) * -8 * K]


@needs_avx2
def test_avx2_lanes_match():
    """The 32-lane AVX2 path (``x86-avx2``: haswell) runs on this host and agrees."""
    avx2 = resolve_target("x86-avx2")
    assert lut.isa_for(avx2).lanes == 32
    rng = np.random.default_rng(3)
    for fmt in (("uint", 3, ()), ("bipolar", 1, ())):
        _check(lut.LutSpec(3, 97, 45, fmt[0], fmt[1], False, OUT, fmt[2]), rng, target=avx2)


def test_arm64_path_compiles_to_neon_tbl():
    """Cross code generation only (no aarch64 execution here): the lookups are NEON ``tbl``."""
    arm = resolve_target("arm64")
    assert lut.isa_for(arm) == lut.Isa(16, "llvm.aarch64.neon.tbl1")
    asm = lut.build(lut.LutSpec(1, 64, 32, "uint", 2), arm).lib.mod.inspect_source("asm")
    assert "tbl\tv" in asm


# -- CUDA (code generation here; the formula runs on this CPU) --------------------------------
CUDA = resolve_target("cuda")


def _gpu_formula_on_cpu(spec):
    """``gpu_func`` unscheduled (the TE compute the CUDA kernel binds to threads), built for
    this CPU; returns ``run(x, packed)``."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": lut.gpu_func(spec, bind_threads=False)}),
                      target=HOST.tvm_dict())

    def run(x, packed):
        mult, shift = packed.mult, packed.shift
        if spec.requant is None:
            mult = shift = np.zeros(spec.N, np.int64)
        args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in
                (x, packed.wq, packed.offset, mult, shift, np.empty((spec.M, spec.N),
                                                                    spec.out_dtype))]
        lib["main"](*args)
        return args[-1].numpy()
    return run


@pytest.mark.parametrize("fmt", FORMATS, ids=_fmt_id)
def test_cuda_formula_every_weight_format(fmt):
    """Every weight format, both activation signs, both output modes, odd shapes (K not a
    multiple of 4/16, N not a multiple of the 64-channel tile, M in {1, 3})."""
    rng = np.random.default_rng(abs(hash(fmt)) % 2**32)
    for M, K, N, a_signed, out in ((3, 131, 19, False, OUT), (1, 37, 70, True, None)):
        spec = lut.LutSpec(M, K, N, fmt[0], fmt[1], a_signed, out, fmt[2])
        _check(spec, rng, CUDA, run=_gpu_formula_on_cpu(spec))


@pytest.mark.parametrize("fmt,w_val", [("int", -8), ("codebook", -128), ("bipolar", -1)])
def test_cuda_formula_extremes(fmt, w_val):
    """All-max codes times the largest-magnitude weight over 2 CPU uint16 chunks plus a tail:
    the GPU's int32 sums are exact too."""
    K, N = 2 * 4096 + 37, 3
    bits = {"int": 4, "codebook": 4, "bipolar": 1}[fmt]
    spec = lut.LutSpec(1, K, N, fmt, bits, False, None, CB4 if fmt == "codebook" else ())
    got = _check(spec, np.random.default_rng(1), CUDA, x=np.full((1, K), 255, np.uint8),
                 w=np.full((K, N), w_val, np.int64), zx=0, bias=np.zeros(N, np.int64),
                 run=_gpu_formula_on_cpu(spec))
    assert got[0, 0] == 255 * w_val * K


def test_cuda_shares_the_avx512_weight_layout():
    spec = lut.LutSpec(2, 70, 90, "int", 3)
    w = _weights(np.random.default_rng(5), spec, (70, 90))
    cuda = lut.pack_weights(spec, CUDA, w, a_zero_point=9)
    avx512 = lut.pack_weights(spec, resolve_target("x86-avx512"), w, a_zero_point=9)
    assert lut.isa_for(CUDA).lanes == lut.GPU_LANES == 64
    np.testing.assert_array_equal(cuda.wq, avx512.wq)
    np.testing.assert_array_equal(cuda.offset, avx512.offset)


@pytest.mark.parametrize("target", ["cuda", "cuda:sm_90"])
@pytest.mark.parametrize("fmt,a_signed,out", [(("uint", 2, ()), False, OUT),
                                              (("bipolar", 1, ()), True, None),
                                              (("codebook", 4, CB4), False, OUT)],
                         ids=["uint2", "bipolar", "cb4"])
def test_cuda_source_has_tables_and_threads(target, fmt, a_signed, out):
    """CUDA source (no GPU needed): a table kernel, the lookup kernel (bipolar weights: plus
    the row sums U[m] and a separate epilogue kernel), threads over outputs."""
    spec = lut.LutSpec(3, 131, 70, fmt[0], fmt[1], a_signed, out, fmt[2])
    source = lut.build(spec, resolve_target(target)).lib.mod.imports[0].inspect_source("cuda")
    kernels = 4 if fmt[0] == "bipolar" else 2
    assert source.count("__global__") == 2 * kernels  # declaration + definition
    assert "table_ptr[" in source and "wq_ptr[" in source and "threadIdx.x" in source
    assert f"__launch_bounds__({lut.GPU_THREADS})" in source
    kernel = lut.build(spec, resolve_target(target))
    with pytest.raises(LoweringError, match="cannot run on this host's CPU"):
        kernel.bind(lut.pack_weights(spec, kernel.target, _weights(np.random.default_rng(0),
                                                                   spec, (131, 70)),
                                     mult=1, shift=0))


@pytest.mark.parametrize("fmt", [("bipolar", 1, ()), ("codebook", 4, CB4)], ids=["bipolar", "cb4"])
def test_cuda_source_compiles(fmt, nvcc_ptx):
    """nvcc accepts the source (TVM only JIT-compiles it when a GPU loads the module)."""
    spec = lut.LutSpec(3, 131, 70, fmt[0], fmt[1], True, OUT, fmt[2])
    source = lut.build(spec, resolve_target("cuda")).lib.mod.imports[0].inspect_source("cuda")
    assert ".entry" in nvcc_ptx(source, "sm_80")


@pytest.mark.parametrize("fmt", FORMATS, ids=_fmt_id)
def test_decompositions_are_exact(fmt):
    spec = lut.LutSpec(1, 40, 30, fmt[0], fmt[1], levels=fmt[2])
    w = _weights(np.random.default_rng(4), spec, (40, 30))
    dec = spec.decomposition
    planes = dec.planes(w)
    assert set(np.unique(planes)) <= {0, 1}
    np.testing.assert_array_equal(dec.values(planes), w)


def test_decomposition_choices():
    assert lut.decomposition("int", 3) == lut.Decomposition((1, 2, -4))
    assert lut.decomposition("ternary", 2).coeffs == (1, -1)
    assert lut.decomposition("bipolar", 1) == lut.Decomposition((2,), -1, "sign")
    assert len(lut.decomposition("codebook", 4, CB4).coeffs) == 8  # spans int8
    assert lut.decomposition("codebook", 2, (0, 1, 5, 7)).coeffs == (1, 2, 4)  # uint3


def test_pack_layout_puts_even_lanes_first():
    """Byte lane l holds channel l/2 (even l) or L/2 + l/2 (odd l); nibble pairs hold groups
    2p (low) and 2p+1 (high); bit i of a nibble is activation 4t + i."""
    assert lut.lane_channels(16).tolist() == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14,
                                              7, 15]
    planes = np.zeros((1, 20, 3), np.uint8)
    planes[0, 0, 1] = 1  # group 0 bit 0, channel 1 -> lane 2, low nibble
    planes[0, 6, 1] = 1  # group 1 bit 2, channel 1 -> high nibble bit 2
    planes[0, 17, 2] = 1  # quad 1 (group 4 = pair 2, low nibble) bit 1, channel 2 -> lane 4
    wq = lut.pack_planes(planes, 16)
    assert wq.shape == (1, 1, 4, 16)  # (tiles, planes, pairs, lanes)
    assert wq[0, 0, 0, 2] == 0b0100_0001 and wq[0, 0, 2, 4] == 0b0010
    assert np.count_nonzero(wq) == 2


def test_registry_lists_lut_for_low_bit_weights():
    fam = kernels.get_family("lut")
    a = QType(QKind.UNIFORM, 8, signed=False, zero_point=(3,))
    for w in (QType(QKind.UNIFORM, 2, signed=False), QType(QKind.TERNARY, 2),
              QType(QKind.BINARY, 1), QType(QKind.CODEBOOK, 4, codebook=((0.1,) * 16,)),
              QType(QKind.UNIFORM, 4, signed=True)):
        assert fam in kernels.families_for(w, a)
    assert not fam.accepts(QType(QKind.UNIFORM, 8), a)  # 8-bit weights: int8 family
    assert not fam.accepts(QType(QKind.UNIFORM, 2, signed=False, zero_point=(1,)), a)
    per_channel_a = QType(QKind.UNIFORM, 8, False, Granularity(axis=1), zero_point=(1, 2))
    assert not fam.accepts(QType(QKind.UNIFORM, 2, signed=False), per_channel_a)
    assert fam.accumulator_dtype(4096, QType(QKind.UNIFORM, 2, False), a) == DType.int(32)
    with pytest.raises(LoweringError, match="overflows int32"):
        fam.accumulator_dtype(1 << 21, QType(QKind.UNIFORM, 4, True), a)


def test_pack_weights_errors():
    spec = lut.LutSpec(1, 8, 4, "uint", 2)
    with pytest.raises(LoweringError, match="not uint2 values"):
        lut.pack_weights(spec, HOST, np.full((8, 4), 4))
    with pytest.raises(LoweringError, match=r"must be integer \(8, 4\)"):
        lut.pack_weights(spec, HOST, np.zeros((4, 8), np.int64))
    with pytest.raises(LoweringError, match="not bipolar1"):
        lut.pack_weights(lut.LutSpec(1, 8, 4, "bipolar", 1), HOST, np.zeros((8, 4), np.int64))
    with pytest.raises(LoweringError, match="of the codebook"):
        lut.pack_weights(lut.LutSpec(1, 8, 4, "codebook", 2, levels=CB2), HOST,
                         np.full((8, 4), 3))
    with pytest.raises(LoweringError, match="zero point 300"):
        lut.pack_weights(spec, HOST, np.zeros((8, 4), np.int64), a_zero_point=300)
    with pytest.raises(LoweringError, match="needs mult and shift"):
        lut.pack_weights(lut.LutSpec(1, 8, 4, "uint", 2, requant=OUT), HOST,
                         np.zeros((8, 4), np.int64))
    with pytest.raises(LoweringError, match="overflow the int32 accumulator"):
        lut.pack_weights(spec, HOST, np.zeros((8, 4), np.int64), bias=np.full(4, 2**31 - 10))


@pytest.mark.parametrize("kwargs,match", [
    ({"w_format": "uint", "w_bits": 5}, "bits must be 1..4"),
    ({"w_format": "int", "w_bits": 1}, r"int: 2\.\.4"),
    ({"w_format": "ternary", "w_bits": 3}, "ternary weights have 2 bits"),
    ({"w_format": "pow2", "w_bits": 3}, "unsupported"),
    ({"w_format": "codebook", "w_bits": 2, "levels": (1, 2, 3, 4, 5)}, "1..4 integer levels"),
    ({"w_format": "codebook", "w_bits": 2, "levels": (0.5, 1)}, "must be integers"),
    ({"w_format": "uint", "w_bits": 2, "levels": (1, 2)}, "only for codebook"),
])
def test_spec_errors(kwargs, match):
    with pytest.raises(LoweringError, match=match):
        lut.LutSpec(1, 8, 8, **kwargs)
