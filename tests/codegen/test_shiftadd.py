"""Shift-add kernels (pow2 weights): bit-exact vs the integer simulator's formula, both variants.

Reference: acc = (x - z_x) @ w + bias in int64, then ``lowbit.ir.dyadic.requantize``. Weights are
the pow2 integers of ``passes/fold_scales.integer_weights``. Compiled kernels are cached per
(spec, target) by ``shiftadd.build``; shapes are few and small.
"""

import re

import numpy as np
import pytest
from lowbit.codegen import kernels
from lowbit.codegen.kernels import shiftadd as sa
from lowbit.codegen.target import resolve_target
from lowbit.ir.dtypes import DType
from lowbit.ir.dyadic import requantize
from lowbit.ir.errors import LoweringError
from lowbit.ir.qformats import activation_qtype, fit_weights
from lowbit.ir.qtype import Granularity, QKind
from lowbit.passes.fold_scales import integer_weights

HOST = resolve_target("x86")
HAS_VNNI = "avx512_vnni" in HOST.features
OUT = sa.OutputRange(zero_point=3, lo=-20, hi=100)
#: (variant, bits, zero_free) for every format each variant supports
FORMATS = ([("shift", b, zf) for b in (2, 3, 4, 5) for zf in (False, True)]
           + [("int8", 2, False), ("int8", 2, True), ("int8", 3, False), ("int8", 3, True),
              ("int8", 4, False)])
#: odd shapes: K not a multiple of 4/8/16/64, N not a multiple of the 64-channel block
SHAPES = [(1, 37, 19), (3, 131, 77), (8, 70, 130)]


def _needs(variant):
    if variant == "int8" and not HAS_VNNI:
        pytest.skip("int8 variant needs an AVX-512 VNNI host")


def _reference(x, w, zx, bias, mult, shift, out):
    acc = (x.astype(np.int64) - zx) @ w.astype(np.int64) + bias
    if out is None:
        return acc
    return requantize(acc, mult, shift, out.zero_point, out.lo, out.hi, axis=1)


def _check(spec, x, w, zx, bias, rng, target=HOST, kernel=None):
    """Pack for ``target``, run ``kernel`` (default ``sa.build(spec, target)``), compare."""
    mult = rng.integers(1 << 20, 1 << 31, spec.N)
    shift = rng.integers(0, 45, spec.N)
    shift[0] = 0  # no rounding term
    packed = sa.pack_weights(spec, target, w, bias=bias, a_zero_point=zx, mult=mult, shift=shift)
    got = (kernel or sa.build(spec, target))(x, packed)
    want = _reference(x, w, zx, bias, mult, shift, spec.requant)
    assert got.dtype == np.dtype(spec.out_dtype)
    np.testing.assert_array_equal(got, want)


def _random_case(spec, rng):
    lo, hi = (-128, 127) if spec.a_signed else (0, 255)
    x = rng.integers(lo, hi + 1, (spec.M, spec.K)).astype(spec.a_dtype)
    w = rng.choice(sa.pow2_values(spec.w_bits, spec.zero_free), size=(spec.K, spec.N))
    zx = int(rng.integers(lo, hi + 1)) if spec.w_bits < 5 else int(rng.integers(-3, 4))
    return x, w, zx, rng.integers(-300, 300, spec.N)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-pow2{f[1]}{'nz' if f[2] else ''}")
def test_every_format_is_bit_exact_on_odd_shapes_both_modes(fmt):
    variant, bits, zero_free = fmt
    _needs(variant)
    rng = np.random.default_rng(bits * 10 + zero_free + 100 * (variant == "int8"))
    for i, (M, K, N) in enumerate(SHAPES):
        out = OUT if i != 1 else None  # the middle shape in accumulator-out mode
        spec = sa.ShiftAddSpec(M, K, N, bits, zero_free, variant, a_signed=bool(i % 2),
                               requant=out)
        _check(spec, *_random_case(spec, rng), rng)


@pytest.mark.parametrize(("variant", "bits", "zero_free"),
                         [("shift", 5, True), ("shift", 4, False), ("int8", 4, False)])
@pytest.mark.parametrize("sign", (1, -1))
def test_extreme_codes_and_weights_reach_int32_without_overflow(variant, bits, zero_free, sign):
    """All-max activations x all-max weights at the largest K the int32 bound allows (capped);
    pow2 4 in the shift variant sums 2 * 255 * 2^6 = 32640 per int16 chunk, the int16 edge."""
    _needs(variant)
    top = sa.pow2_top(bits, zero_free)
    K = ((1 << 31) - 1) // (255 << top)  # pow2 5nz: 257 (acc 2147450880); else capped
    K = min(K, 4099)
    spec = sa.ShiftAddSpec(3, K, 67, bits, zero_free, variant)
    x = np.full((3, K), 255, np.uint8)
    x[1] = 0
    w = np.full((K, 67), sign << top, np.int64)
    packed = sa.pack_weights(spec, HOST, w)
    got = sa.build(spec, HOST)(x, packed)
    np.testing.assert_array_equal(got, _reference(x, w, 0, 0, None, None, None))
    assert abs(int(got[0, 0])) == K * 255 << top
    if K < 4099:  # one more k and the bound no longer fits int32
        over = sa.ShiftAddSpec(3, K + 1, 67, bits, zero_free, variant)
        with pytest.raises(LoweringError, match="overflow the int32 accumulator"):
            sa.pack_weights(over, HOST, np.full((K + 1, 67), 1 << top))


def test_signed_activations_extremes_int8_variant():
    _needs("int8")
    spec = sa.ShiftAddSpec(3, 517, 33, 4, False, "int8", a_signed=True, requant=OUT)
    rng = np.random.default_rng(7)
    x = np.full((3, 517), -128, np.int8)
    x[1] = 127
    w = rng.choice(np.array([-64, 64, 0]), size=(517, 33))
    _check(spec, x, w, -128, rng.integers(-9, 9, 33), rng)


@pytest.mark.parametrize("variant", sa.VARIANTS)
def test_fold_scales_pow2_integers_are_the_kernel_weights(variant):
    """The integer weights ``passes/fold_scales`` writes for pow2 QTypes pack and run exactly."""
    _needs(variant)
    rng = np.random.default_rng(3)
    w_float = rng.normal(size=(45, 21)).astype(np.float32)
    for zero_free in (False, True):
        qtype, _ = fit_weights(w_float, QKind.POW2, 3, granularity=Granularity(axis=1),
                               zero_free=zero_free)
        values = integer_weights(w_float, qtype).values
        spec = sa.ShiftAddSpec(1, 45, 21, 3, zero_free, variant, requant=OUT)
        x = rng.integers(0, 256, (1, 45)).astype(np.uint8)
        _check(spec, x, values, 11, rng.integers(-50, 50, 21), rng)


@pytest.mark.parametrize(("variant", "bits", "zero_free", "match"), [
    ("int8", 4, True, r"2\^7.*int8 holds.*use the 'shift' variant"),
    ("int8", 5, False, r"2\^14"),
    ("shift", 6, False, r"2\^30.*use fewer pow2 bits"),
])
def test_formats_outside_a_variants_exponent_range_are_refused(variant, bits, zero_free, match):
    with pytest.raises(LoweringError, match=match):
        sa.ShiftAddSpec(1, 16, 16, bits, zero_free, variant)


def test_bad_weights_and_dyadic_values_are_refused():
    spec = sa.ShiftAddSpec(1, 8, 4, 3, True, "shift", requant=OUT)
    w = np.ones((8, 4), np.int64)
    with pytest.raises(LoweringError, match="weight 3 is not a 3-bit pow2 zero_free"):
        sa.pack_weights(spec, HOST, np.where(np.eye(8, 4) > 0, 3, w))
    with pytest.raises(LoweringError, match="weight 0 is not"):  # zero_free has no zero
        sa.pack_weights(spec, HOST, np.zeros((8, 4), np.int64))
    with pytest.raises(LoweringError, match="needs mult and shift"):
        sa.pack_weights(spec, HOST, w)
    with pytest.raises(LoweringError, match="shift in"):
        sa.pack_weights(spec, HOST, w, mult=1, shift=63)
    with pytest.raises(LoweringError, match="variant"):
        sa.ShiftAddSpec(1, 8, 4, 3, True, "lut")


def test_int8_variant_needs_vnni_on_cpus():
    spec = sa.ShiftAddSpec(1, 8, 4, 3, True, "int8")
    with pytest.raises(LoweringError, match="VNNI"):
        sa.lower(spec, resolve_target("arm64"))
    sa.lower(spec, resolve_target("cuda"))  # CUDA: the shift-add compute over its layout


# -- CUDA (code generation here; the formula runs on this CPU) --------------------------------
CUDA = resolve_target("cuda")


def _gpu_formula_on_cpu(spec):
    """``gpu_func`` unscheduled (the TE compute the CUDA kernel binds to threads), built for
    this CPU."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": sa.gpu_func(spec, bind_threads=False)}),
                      target=HOST.tvm_dict())
    return sa.ShiftAddKernel(spec, HOST, lib)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f[0]}-pow2{f[1]}{'nz' if f[2] else ''}")
def test_cuda_formula_every_format_on_odd_shapes(fmt):
    """Both variants (each over its own packed layout), every format, both activation signs
    and output modes, the odd SHAPES."""
    variant, bits, zero_free = fmt
    rng = np.random.default_rng(bits * 10 + zero_free + 100 * (variant == "int8"))
    for i, (M, K, N) in enumerate(SHAPES):
        spec = sa.ShiftAddSpec(M, K, N, bits, zero_free, variant, a_signed=bool(i % 2),
                               requant=OUT if i != 1 else None)
        _check(spec, *_random_case(spec, rng), rng, CUDA, kernel=_gpu_formula_on_cpu(spec))


@pytest.mark.parametrize(("variant", "bits", "zero_free"),
                         [("shift", 5, True), ("shift", 4, False), ("int8", 4, False)])
def test_cuda_formula_extremes(variant, bits, zero_free):
    """All-max codes x all-max weights at the largest K the int32 bound allows (capped)."""
    top = sa.pow2_top(bits, zero_free)
    K = min(((1 << 31) - 1) // (255 << top), 4099)
    spec = sa.ShiftAddSpec(2, K, 3, bits, zero_free, variant)
    x = np.full((2, K), 255, np.uint8)
    x[1] = 0
    w = np.full((K, 3), -1 << top, np.int64)
    got = _gpu_formula_on_cpu(spec)(x, sa.pack_weights(spec, CUDA, w))
    np.testing.assert_array_equal(got, _reference(x, w, 0, 0, None, None, None))
    assert got[0, 0] == -K * 255 << top


@pytest.mark.parametrize("target", ["cuda", "cuda:sm_90"])
@pytest.mark.parametrize(("variant", "bits", "zero_free", "a_signed", "requant"),
                         [("shift", 3, False, False, OUT), ("shift", 5, True, True, None),
                          ("int8", 4, False, True, OUT)])
def test_cuda_source_shifts_not_multiplies(target, variant, bits, zero_free, a_signed, requant):
    """CUDA source (no GPU needed): threads over outputs; the activation is shifted by the
    weight's exponent field and never multiplied (the only ``*`` left: the int64 requant and
    index arithmetic)."""
    spec = sa.ShiftAddSpec(3, 131, 77, bits, zero_free, variant, a_signed=a_signed,
                           requant=requant)
    source = sa.build(spec, resolve_target(target)).lib.mod.imports[0].inspect_source("cuda")
    assert source.count("__global__") == 4  # (declaration + definition) x (xpad, dot)
    assert "threadIdx.x" in source and f"__launch_bounds__({sa.GPU_THREADS})" in source
    with pytest.raises(LoweringError, match="cannot run on this host's CPU"):
        sa.build(spec, resolve_target(target)).bind(
            sa.pack_weights(spec, CUDA, np.ones((131, 77), np.int64), mult=1, shift=0))
    assert re.search(r"xpad_ptr\[[^\]]*\] << ", source)
    assert not re.search(r"xpad_ptr\[[^\]]*\] \*", source)


def test_shift_variant_cross_compiles_for_arm64_without_multiplies():
    """The shift variant lowers to NEON variable shifts (``ushl``/``sshl``) on aarch64; the
    only multiplies left are the scalar int64 requant ones (none here: accumulator-out)."""
    import tvm

    spec = sa.ShiftAddSpec(1, 64, 64, 4, False, "shift")
    target = resolve_target("arm64")
    lib = tvm.compile(sa.lower(spec, target), target=target.tvm_dict())
    asm = lib.mod.inspect_source("asm")
    assert re.search(r"\t[us]shl\tv\d+\.8h", asm)  # variable shifts on 16-bit lanes
    assert not re.search(r"\t(mul|mla|smull|umull|smlal|umlal)2?\tv", asm)  # no vector mul


def test_int8_variant_uses_vnni_and_vpshufb():
    _needs("int8")
    spec = sa.ShiftAddSpec(1, 64, 64, 3, False, "int8")
    asm = sa.build(spec, HOST).lib.mod.inspect_source("asm")
    assert "vpdpbusd" in asm and "vpshufb" in asm


@pytest.mark.parametrize("variant,bits,zero_free", [("shift", 5, True), ("int8", 4, False)])
def test_cuda_source_compiles_to_shifts(variant, bits, zero_free, nvcc_ptx):
    """nvcc accepts the source; the activations are shifted (``shl.b32``) by the fields."""
    spec = sa.ShiftAddSpec(3, 131, 77, bits, zero_free, variant, a_signed=True, requant=OUT)
    source = sa.build(spec, resolve_target("cuda:sm_90")).lib.mod.imports[0].inspect_source("cuda")
    assert "shl.b32" in nvcc_ptx(source, "sm_90")


def test_registry_offers_each_variant_only_within_its_range():
    act = activation_qtype(0.0, 4.0, 8, signed=False)
    for bits, zero_free, want in [(3, True, {"shiftadd", "shiftadd_int8"}),
                                  (4, False, {"shiftadd", "shiftadd_int8"}),
                                  (4, True, {"shiftadd"}), (5, False, {"shiftadd"})]:
        w_qtype, _ = fit_weights(np.linspace(-1, 1, 64).reshape(8, 8), QKind.POW2, bits,
                                 granularity=Granularity(axis=1), zero_free=zero_free)
        names = {f.name for f in kernels.families_for(w_qtype, act)}
        assert names & {"shiftadd", "shiftadd_int8"} == want, (bits, zero_free)
    family = kernels.get_family("shiftadd")
    pow2_4, _ = fit_weights(np.ones((4, 4)), QKind.POW2, 4, granularity=Granularity(axis=1))
    assert family.accumulator_dtype(4096, pow2_4, act) == DType.int(32)  # 4096*255*2^6 fits
    with pytest.raises(LoweringError, match="K=4096.*overflows int32"):
        family.accumulator_dtype(4096, w_qtype, act)  # 5-bit: 4096*255*2^14 does not
    assert "acc[m, n]" in family.formula


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "bits", "zero_free"),
                         [("shift", 3, False), ("shift", 4, True), ("int8", 4, False)])
def test_bench_shape_is_bit_exact(variant, bits, zero_free):
    """The benchmark's 16 x 4096 x 4096 layer, requantized, threads as configured."""
    _needs(variant)
    rng = np.random.default_rng(5)
    spec = sa.ShiftAddSpec(16, 4096, 4096, bits, zero_free, variant, requant=OUT)
    x, w, zx, bias = _random_case(spec, rng)
    _check(spec, x, w, zx, bias, rng)
