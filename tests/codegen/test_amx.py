"""The AMX XNOR conv (codegen/kernels/amx.py): the bit-serial conv's layer on AMX byte tiles.

Oracle: the popcount direct conv of ``bitserial_conv.py`` (itself checked against numpy and the
integer simulator), on the same spec and weights: outputs must be equal, element for element.
The run tests need a CPU with AMX (``amx_tile`` + ``amx_int8``) and skip elsewhere; the code
generation tests build for an AMX target on any host (LLVM only, nothing runs).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from lowbit.codegen.kernels import amx
from lowbit.codegen.kernels import bitserial_conv as bc
from lowbit.codegen.kernels.common import OutputRange
from lowbit.codegen.target import host_x86_target, resolve_target
from lowbit.ir.errors import LoweringError

HOST = resolve_target("x86")
needs_amx = pytest.mark.skipif(not amx.available(HOST), reason="host CPU has no AMX tiles")
AMX_TARGET = host_x86_target(flags=("popcnt", "avx2", "avx512f", "amx_tile", "amx_int8"),
                             cpu="sapphirerapids")


def _spec(B=1, C=64, H=8, W=8, N=32, k=3, s=1, pad=1, requant=None, pad_code=1,
          engine="popcount"):
    return bc.BitConvSpec(B, C, H, W, N, k, k, (s, s), (pad,) * 4, "bipolar", 1, "bipolar", 1,
                          requant, pad_code, engine)


def _run(spec, w, x, bias, mult=None, shift=None):
    """``y`` of ``spec`` on the host (popcount or AMX engine)."""
    kw = {} if spec.requant is None else {"mult": mult, "shift": shift}
    packed = bc.pack_conv_weights(spec, HOST, w, bias=bias, **kw)
    fn = bc.build(spec, HOST)["main"]
    params = ([packed.wt, packed.offset] if spec.engine == "amx"
              else [packed.planes, packed.offset])
    if spec.requant is not None:
        params += [packed.mult, packed.shift]
    y = tvm.runtime.tensor(np.zeros(spec.out_shape, spec.out_dtype))
    fn(tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in params], y)
    return y.numpy()


@pytest.mark.parametrize("engine", ["popcount", pytest.param("amx", marks=needs_amx)])
def test_xnor_conv_threshold_output(engine):
    """``threshold=True``: the accumulator's per-channel compare written as int8 codes,
    equal to the accumulator-out kernel's values compared in numpy (rising, falling and
    constant channels)."""
    spec = _spec(B=2, C=64, H=9, W=10, N=32, s=1, pad=1, engine=engine)
    rng = np.random.default_rng(5)
    w = rng.choice([-1, 1], (32, 64, 3, 3))
    x = rng.choice(np.array([-1, 1], np.int8), (2, 64, 9, 10))
    acc = _run(spec, w, x, np.zeros(32, np.int64))
    t = rng.integers(-40, 40, 32).astype(np.int32)
    above = rng.choice(np.array([-1, 1], np.int8), 32)
    below = -above
    below[:4] = above[:4]  # constant channels
    one = replace(spec, threshold=True)
    packed = bc.pack_conv_weights(one, HOST, w, bias=np.zeros(32, np.int64))
    params = ([packed.wt, packed.offset] if engine == "amx" else [packed.planes, packed.offset])
    y = tvm.runtime.tensor(np.zeros(one.out_shape, "int8"))
    bc.build(one, HOST)["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in
                                                          params + [t, above, below]], y)
    c = (1, -1, 1, 1)
    want = np.where(acc >= t.reshape(c), above.reshape(c), below.reshape(c))
    np.testing.assert_array_equal(y.numpy(), want)
    assert (want == 1).mean() > 0.2 and (want == -1).mean() > 0.2


def _check(spec, w=None, x=None, seed=0):
    rng = np.random.default_rng(seed)
    if w is None:
        w = rng.choice(np.array([-1, 1], np.int8), (spec.N, spec.C, spec.KH, spec.KW))
    if x is None:
        x = rng.choice(np.array([-1, 1], np.int8), (spec.B, spec.C, spec.H, spec.W))
    bias = rng.integers(-100, 100, spec.N)
    mult = rng.integers(1 << 20, 1 << 22, spec.N)
    shift = np.full(spec.N, 23)
    want = _run(spec, w, x, bias, mult, shift)
    got = _run(replace(spec, engine="amx"), w, x, bias, mult, shift)
    np.testing.assert_array_equal(got, want)
    return got


def test_geometry_takes_the_pitch_with_fewer_tiles():
    g = amx.geometry(_spec(H=56, W=56, N=64))  # stride 1: rows run on across the padded width
    assert g.flat and g.pitch == 58 and g.MT == 2 * -(-(56 * 58) // 32)
    g = amx.geometry(_spec(H=56, W=56, N=128, s=2))  # stride 2: rows of 16-pixel tiles
    assert not g.flat and g.pitch == 32 and g.s_w == 2
    g = amx.geometry(_spec(C=70, N=40))  # channels padded to 64, output channels to 32
    assert (g.CP, g.NP, g.KC) == (128, 64, 2)


def test_object_code_uses_tiles_on_any_host():
    spec = _spec(C=64, H=9, W=9, N=64, engine="amx")
    lib = tvm.compile(amx.lower(spec, AMX_TARGET), target=AMX_TARGET.tvm_dict())
    asm = lib.mod.inspect_source("asm")
    for op in ("ldtilecfg", "tileloadd", "tdpbsud", "tilestored", "tilerelease"):
        assert op in asm, op
    assert "syscall" in asm  # the arch_prctl request for the tile state


def test_refuses_what_it_cannot_compute():
    with pytest.raises(LoweringError, match="no AMX"):
        amx.lower(_spec(engine="amx"), resolve_target("x86-avx512"))
    uint = bc.BitConvSpec(1, 64, 8, 8, 32, 3, 3, (1, 1), (1,) * 4, "int", 2, "uint", 2,
                          engine="amx")
    with pytest.raises(LoweringError, match="bipolar x bipolar"):
        amx.xnor_conv_source(uint)
    with pytest.raises(LoweringError, match="engine"):
        _spec(engine="tiles")


@needs_amx
@pytest.mark.parametrize("shape", [
    dict(),  # one 16-pixel tile pair short of a full band
    dict(C=70, H=9, W=11, N=40),  # channels and output channels padded
    dict(B=3, C=64, H=9, W=9, N=64, s=2),  # batch, stride 2 (rowwise tiles)
    dict(C=128, H=7, W=7, N=64, k=1, pad=0),  # 1x1, no padding
    dict(B=8, C=64, H=5, W=5, N=32),  # batch 8, fewer pixels than a tile
    dict(C=64, H=10, W=10, N=48, pad_code=-1),  # -1 border code
    dict(C=128, H=28, W=28, N=128),  # several bands
], ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()) or "base")
def test_bit_exact_to_the_popcount_conv(shape):
    _check(_spec(**shape))


@needs_amx
def test_requant_output_stage():
    _check(_spec(C=64, H=12, W=12, N=32, requant=OutputRange(0, -1, 1)))
    _check(_spec(C=64, H=12, W=12, N=32, requant=OutputRange(3, -128, 127)))


@needs_amx
@pytest.mark.parametrize(("wv", "xv"), [(1, 1), (-1, 1), (1, -1), (-1, -1)])
def test_extreme_values(wv, xv):
    """All-equal codes and weights: every dot product at +-K (no overflow, exact)."""
    spec = _spec(C=512, H=6, W=6, N=32)
    w = np.full((spec.N, spec.C, 3, 3), wv, np.int8)
    x = np.full((1, spec.C, 6, 6), xv, np.int8)
    y = _check(spec, w, x)
    # interior outputs: the bias-free offset plus +-K, K = 512 * 9
    assert y.shape == (1, 32, 6, 6)


# -- the int8 family's conv on tiles --------------------------------------------------------------
from lowbit.codegen.kernels import int8 as k8  # noqa: E402


def _int8_case(spec, zx, seed=0, w=None, x=None, bias=None):
    """(simd output, amx output) of the int8 conv ``spec`` with random codes."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (spec.w_bits - 1)), (1 << (spec.w_bits - 1)) - 1
    if w is None:
        w = rng.integers(lo, hi + 1, (spec.OC, spec.C, spec.KH, spec.KW))
    a_lo, a_hi = (0, 255) if spec.a_dtype == "uint8" else (-128, 127)
    if x is None:
        x = rng.integers(a_lo, a_hi + 1, spec.in_shape).astype(spec.a_dtype)
    bias = rng.integers(-5000, 5000, spec.OC) if bias is None else bias
    kw = {"bias": bias, "a_zero_point": zx}
    if spec.requant is not None:
        kw.update(mult=rng.integers(1 << 29, 1 << 30, spec.OC), shift=np.full(spec.OC, 38))
    outs = []
    for engine in ("simd", "amx"):
        s = replace(spec, engine=engine)
        packed = k8.pack_conv_weights(s, HOST, w, **kw)
        outs.append(k8.build_conv(s, HOST, zx)(x, packed))
    return outs


@needs_amx
@pytest.mark.parametrize("args", [
    dict(C=64, H=14, W=14, OC=64),  # 3x3 same
    dict(C=16, H=8, W=8, OC=32, a_dtype="int8", zx=-3),  # int8 codes, channels padded
    dict(C=37, H=9, W=11, OC=40, stride=(2, 2), pads=(0, 1, 2, 1)),  # odd, asymmetric pads
    dict(C=128, H=7, W=7, OC=48, k=1, pads=(0, 0, 0, 0), stride=(2, 2)),  # 1x1 stride 2
    dict(B=3, C=32, H=6, W=6, OC=16, w_bits=4),  # batch, 4-bit weights
    dict(C=64, H=10, W=10, OC=32, acc_shift=3),  # shifted accumulator + bias
    dict(C=64, H=10, W=10, OC=32, requant=None),  # accumulator-out
    # few channels: the taps layout (K-groups of 4 taps of a kernel row)
    dict(C=3, H=30, W=27, OC=64, k=7, stride=(2, 2), pads=(3, 3, 3, 3)),  # a 7x7/2 stem
    dict(B=2, C=1, H=8, W=8, OC=16, a_dtype="int8", zx=0),  # 1 channel 3x3
    dict(C=5, H=9, W=13, OC=40, k=5, pads=(2, 1, 0, 2)),  # 5x5, asymmetric pads
], ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_int8_conv_on_tiles_equals_the_vector_kernel(args):
    args = dict(args)
    zx, k = args.pop("zx", 7), args.pop("k", 3)
    base = dict(B=1, stride=(1, 1), pads=(1, 1, 1, 1), requant=OutputRange(2, 0, 255))
    base.update(args)
    spec = k8.ConvSpec(base.pop("B"), base.pop("C"), base.pop("H"), base.pop("W"),
                       base.pop("OC"), k, k, **base)
    simd, tiles = _int8_case(spec, zx)
    np.testing.assert_array_equal(tiles, simd)
    assert len(np.unique(simd)) > 2


@needs_amx
def test_int8_conv_on_tiles_extremes():
    """All-max codes x all-min weights over K = 512 * 9: the int32 bound, exactly."""
    spec = k8.ConvSpec(1, 512, 5, 5, 32, 3, 3, pads=(1, 1, 1, 1), requant=None)
    w = np.full((32, 512, 3, 3), -128)
    x = np.full(spec.in_shape, 255, np.uint8)
    simd, tiles = _int8_case(spec, 0, w=w, x=x, bias=np.zeros(32, np.int64))
    np.testing.assert_array_equal(tiles, simd)
    assert simd.min() == -128 * 255 * 512 * 9  # the centre pixels: every tap inside


def _max_pool(y: np.ndarray, win) -> np.ndarray:
    """numpy max-pool of NCHW codes, padding with the dtype minimum."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = win.kernel, win.strides, win.pads
    B, C, H, W = y.shape
    low = np.iinfo(y.dtype).min
    yp = np.full((B, C, H + pt + pb, W + pl + pr), low, y.dtype)
    yp[:, :, pt:pt + H, pl:pl + W] = y
    PH, PW = win.out_shape(H, W)
    out = np.full((B, C, PH, PW), low, y.dtype)
    for di in range(kh):
        for dj in range(kw):
            out = np.maximum(out, yp[:, :, di:di + sh * (PH - 1) + 1:sh,
                                     dj:dj + sw * (PW - 1) + 1:sw])
    return out


@needs_amx
@pytest.mark.parametrize("conv,pool,acc_shift", [
    ((3, 224, 224, 64, 7, 2, 3), ((3, 3), (2, 2), (1, 1, 1, 1)), 6),  # the ResNet stem
    ((3, 37, 40, 64, 7, 2, 3), ((3, 3), (2, 2), (1, 1, 1, 1)), 0),  # odd sizes
    ((16, 19, 19, 32, 3, 1, 1), ((2, 3), (2, 1), (0, 1, 1, 2)), 0),  # channels layout
    ((64, 14, 14, 48, 3, 1, 1), ((3, 3), (3, 3), (0, 0, 0, 0)), 2),  # no pool padding
    ((3, 31, 33, 32, 5, 1, 2), ((3, 4), (2, 3), (1, 2, 0, 1)), 0),  # 3 column residues
    ((3, 20, 21, 32, 3, 1, 1), ((3, 3), (1, 1), (1, 1, 1, 1)), 0),  # stride 1: natural order
], ids=["stem224", "odd", "channels", "nopad", "residues3", "stride1"])
def test_int8_conv_with_fused_max_pool(conv, pool, acc_shift):
    """A max-pool fused behind the requant equals the unfused conv's codes max-pooled."""
    from lowbit.codegen.kernels.common import MaxPoolWindow

    C, H, W, N, k, s, p = conv
    spec = k8.ConvSpec(2 if H < 100 else 1, C, H, W, N, k, k, (s, s), (p,) * 4,
                       a_dtype="int8", requant=OutputRange(-3, -100, 120),
                       acc_shift=acc_shift, engine="amx")
    win = MaxPoolWindow(*pool)
    rng = np.random.default_rng(H)
    w = rng.integers(-128, 128, (N, C, k, k))
    x = rng.integers(-128, 128, spec.in_shape).astype(np.int8)
    kw = {"bias": rng.integers(-9999, 9999, N), "a_zero_point": 3,
          "mult": rng.integers(1 << 28, 1 << 30, N) >> acc_shift, "shift": np.full(N, 38)}
    outs = []
    for one in (spec, replace(spec, pool=win)):
        kernel = k8.build_conv(one, HOST, 3)
        outs.append(kernel.bind(k8.pack_conv_weights(one, HOST, w, **kw))(x))
    assert outs[1].shape == replace(spec, pool=win).out_shape
    np.testing.assert_array_equal(outs[1], _max_pool(outs[0], win))
    assert len(np.unique(outs[1])) > 10


def test_fused_max_pool_needs_tiles_and_codes():
    from lowbit.codegen.kernels.common import MaxPoolWindow

    win = MaxPoolWindow((3, 3), (2, 2), (1, 1, 1, 1))
    with pytest.raises(LoweringError, match="needs engine 'amx'"):
        k8.ConvSpec(1, 3, 16, 16, 32, 3, 3, requant=OutputRange(0, 0, 255), pool=win)
    with pytest.raises(LoweringError, match="needs engine 'amx'"):
        k8.ConvSpec(1, 3, 16, 16, 32, 3, 3, engine="amx", pool=win)
    with pytest.raises(LoweringError, match="smaller than its kernel side"):
        MaxPoolWindow((3, 3), (2, 2), (1, 3, 1, 1))
    assert win.out_shape(112, 111) == (56, 56)


def test_taps_layout_for_few_channels():
    stem = k8.ConvSpec(1, 3, 224, 224, 64, 7, 7, (2, 2), (3, 3, 3, 3), engine="amx")
    g = amx.geometry(stem)
    assert (g.layout, g.Q, g.R, g.pitch) == ("taps", 2, 14, 112)
    assert amx.weight_shape(stem) == (4, 3, 16, 56)
    assert amx.geometry(replace(stem, C=16, KH=3, KW=3)).layout == "channels"


def test_int8_object_code_uses_tiles_on_any_host():
    spec = k8.ConvSpec(1, 64, 8, 8, 32, 3, 3, pads=(1, 1, 1, 1), engine="amx")
    lib = tvm.compile(k8.lower_conv(spec, AMX_TARGET, 5), target=AMX_TARGET.tvm_dict())
    asm = lib.mod.inspect_source("asm")
    assert "tdpbsud" in asm and "tileloadd" in asm


def test_padding_rule():
    """Whole tiles only where they cost little: the XNOR conv takes no padding at all (a
    padded binary layer would store 2 bits a weight), the int8 conv up to 1.25x."""
    amx.check_padding(_spec(C=64, N=32))
    with pytest.raises(LoweringError, match="pad to 128 -> 64"):
        amx.check_padding(_spec(C=70, N=40))
    amx.check_padding(k8.ConvSpec(1, 3, 32, 32, 64, 7, 7, (2, 2), (3, 3, 3, 3)))  # 8/7 taps
    amx.check_padding(k8.ConvSpec(1, 60, 8, 8, 64, 3, 3))  # 64/60 channels
    with pytest.raises(LoweringError, match="whole tiles"):
        amx.check_padding(k8.ConvSpec(1, 32, 8, 8, 32, 3, 3))  # 64/32 channels


RUNTIME_ONLY = """
import sys
import numpy as np
import tvm
from lowbit.runtime.session import Session
assert tvm.base._RUNTIME_ONLY, "not in runtime-only mode"
(y,) = Session(sys.argv[1], threads=2).run(None, {"x": np.load(sys.argv[2])})
np.save(sys.argv[3], y)
"""


@needs_amx
def test_artifact_runs_under_runtime_only_tvm(tmp_path):
    """A compiled model whose conv runs on tiles (forced by the recipe) saved as .lbx, loaded
    with TVM's runtime alone in a fresh process (the tile permission is the kernel's own
    request) on two threads: equal to the integer simulator."""
    import os
    import subprocess
    import sys

    import lowbit
    from lowbit.compiler.recipes import LayerOverride, preset
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (64, 64, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 64, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [1, 64, 12, 12])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = {"x": rng.normal(0, 1, (4, 64, 12, 12)).astype(np.float32)}
    recipe = replace(preset("int8"), nodes={"conv": LayerOverride(kernel="amx")})
    onnx_bytes = model.SerializeToString()
    art = lowbit.compile(onnx_bytes, target="x86", recipe=recipe, calib=calib)
    assert [row.kernel for row in art.plan] == ["amx"]
    path = art.save(tmp_path / "m.lbx")
    x = calib["x"][:1]
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, env=env, capture_output=True)
    graph_q = lowbit.quantize(onnx_bytes, quant="int8", calib=calib)
    want = lowbit.run_reference(graph_q, {"x": x})["y"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-6, atol=1e-6)


# -- the int8 family's GEMM on tiles --------------------------------------------------------------
@needs_amx
@pytest.mark.parametrize("args", [
    dict(M=16, K=64, N=32),
    dict(M=37, K=100, N=45, a_dtype="int8", zx=-5),  # every dimension padded, int8 codes
    dict(M=128, K=768, N=96, w_bits=4),
    dict(M=70, K=256, N=64, acc_shift=2),
    dict(M=33, K=192, N=32, requant=None),
], ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_int8_gemm_on_tiles_equals_the_vector_kernel(args):
    args = dict(args)
    zx = args.pop("zx", 9)
    base = dict(requant=OutputRange(-3, -128, 127))
    base.update(args)
    spec = k8.Int8Spec(**base)
    rng = np.random.default_rng(1)
    lo, hi = -(1 << (spec.w_bits - 1)), (1 << (spec.w_bits - 1)) - 1
    w = rng.integers(lo, hi + 1, (spec.K, spec.N))
    a_lo, a_hi = (0, 255) if spec.a_dtype == "uint8" else (-128, 127)
    x = rng.integers(a_lo, a_hi + 1, (spec.M, spec.K)).astype(spec.a_dtype)
    kw = {"bias": rng.integers(-5000, 5000, spec.N), "a_zero_point": zx}
    if spec.requant is not None:
        kw.update(mult=rng.integers(1 << 29, 1 << 30, spec.N), shift=np.full(spec.N, 37))
    outs = []
    for engine in ("simd", "amx"):
        s = replace(spec, engine=engine)
        outs.append(k8.build(s, HOST)(x, k8.pack_weights(s, HOST, w, **kw)))
    np.testing.assert_array_equal(outs[1], outs[0])
    assert len(np.unique(outs[0])) > 2


def test_gemm_padding_rule():
    amx.check_gemm_padding(k8.Int8Spec(16, 768, 3072))
    with pytest.raises(LoweringError, match="fewer than one 16-row tile|fill less"):
        amx.check_gemm_padding(k8.Int8Spec(1, 4096, 4096))
    with pytest.raises(LoweringError, match="whole tiles"):
        amx.check_gemm_padding(k8.Int8Spec(16, 100, 45))
    spec = k8.Int8Spec(64, 128, 64, engine="amx")
    asm = tvm.compile(k8.lower(spec, AMX_TARGET),
                      target=AMX_TARGET.tvm_dict()).mod.inspect_source("asm")
    assert "tdpbusd" in asm
