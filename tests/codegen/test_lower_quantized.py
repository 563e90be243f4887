"""Integer graphs lowered to TVM: bit-exact to the integer simulator (lowbit.run_reference).

Every integer intermediate is made a graph output, so each QConv / QMatMul / Requantize /
QuantizeLinear result is compared exactly; float outputs within 1e-5. Compiled executables are
cached per (model, preset) in a module dict.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.codegen.build import build
from lowbit.codegen.lower import lower
from lowbit.compiler.recipes import Recipe, preset
from lowbit.ir import FLOAT32, DType, Graph, LoweringError, Op, QKind, QType
from lowbit.ir.attrs import QAddAttrs, QConvAttrs, QMatMulAttrs, Requant, RequantizeAttrs
from lowbit.ir.dyadic import requantize

tvm = pytest.importorskip("tvm")
from tvm import relax

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CNN = EXAMPLES / "digits_cnn.onnx"
CALIB = EXAMPLES / "digits_calib.npz"
_GRAPHS: dict = {}
_BUILT: dict = {}


def _quantized_cnn(quant: str) -> Graph:
    """digits_cnn quantized with preset ``quant`` (no reconstruction: fast, deterministic)."""
    if quant not in _GRAPHS:
        recipe = preset(quant)
        recipe = replace(recipe, ptq=replace(recipe.ptq, reconstruct=False))
        _GRAPHS[quant] = lowbit.quantize(CNN, recipe=recipe, calib=str(CALIB),
                                         input_shapes={"input": (8, 1, 8, 8)})
    return _GRAPHS[quant]


def _expose_intermediates(graph: Graph) -> Graph:
    """A copy whose outputs are every node output (integer intermediates included)."""
    g = graph.copy()
    outs = list(g.outputs)
    for node in g.nodes:
        for v in node.outputs:
            if v not in outs:
                outs.append(v)
    g.outputs = outs
    return g


def run_tvm(ex, graph: Graph, feeds: dict) -> dict:
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[v.name])) for v in graph.inputs]
    out = vm["main"](*args)
    outs = [out] if len(graph.outputs) == 1 else list(out)
    return {v.name: o.numpy() for v, o in zip(graph.outputs, outs)}


def assert_matches(graph: Graph, got: dict, ref: dict) -> int:
    """Integer outputs bit-exact, float outputs within 1e-5; returns the integer count."""
    n_int = 0
    for v in graph.outputs:
        want, have = np.asarray(ref[v.name]), got[v.name]
        assert have.shape == want.shape, v.name
        if v.dtype.is_integer:
            n_int += 1
            assert have.dtype == v.dtype.numpy, v.name
            np.testing.assert_array_equal(have.astype(np.int64), want.astype(np.int64),
                                          err_msg=v.name)
        else:
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5, err_msg=v.name)
    return n_int


def _calib_batch() -> np.ndarray:
    return np.load(CALIB)["input"][:8].astype(np.float32)


@pytest.mark.parametrize("quant", ["int8", "w4a8", "ternary", "w2a2", "w1a1", "codebook4"])
def test_quantized_cnn_bit_exact(quant):
    graph = _expose_intermediates(_quantized_cnn(quant))
    assert any(n.op == Op.QCONV for n in graph.nodes)
    ex = _BUILT.setdefault(("cnn", quant), build(graph, "x86"))
    feeds = {"input": _calib_batch()}
    n_int = assert_matches(graph, run_tvm(ex, graph, feeds), lowbit.run_reference(graph, feeds))
    assert n_int >= 5  # quantize, 3 QConv, MaxPool, Requantize, QMatMul ... compared exactly


@pytest.mark.parametrize("target", ["x86", "x86-avx2", "cuda"])
def test_codebook4_layers_take_the_int8_kernel(target):
    """<= 4-bit codebook levels sit on a 7-bit integer grid (ir.qformats.codebook_grid_bits),
    so the int8 family computes them (its exact 7-bit path on AVX2), not the reference kernel."""
    from lowbit.codegen.select import select_kernels

    graph = _quantized_cnn("codebook4").copy()
    codebook = [n.name for n in graph.nodes if n.op == Op.QCONV
                and n.inputs[1].qtype is not None and n.inputs[1].qtype.kind.value == "codebook"]
    choices = select_kernels(graph, target, measure=False)
    assert len(codebook) == 2
    assert {choices[name].family for name in codebook} == {"int8"}


def test_per_group_weights_bit_exact():
    """w4a8 with per-group (g=8) weight scales: QConv's GroupRescale partial sums."""
    recipe = Recipe.from_dict(
        {"default": {"weights": {"granularity": "per_group", "group_size": 8}}}, base="w4a8")
    recipe = replace(recipe, ptq=replace(recipe.ptq, reconstruct=False))
    graph = lowbit.quantize(CNN, recipe=recipe, calib=str(CALIB),
                            input_shapes={"input": (8, 1, 8, 8)})
    assert any(n.op == Op.QCONV and n.attrs.groups is not None for n in graph.nodes)
    graph = _expose_intermediates(graph)
    feeds = {"input": _calib_batch()}
    assert_matches(graph, run_tvm(build(graph, "x86"), graph, feeds),
                   lowbit.run_reference(graph, feeds))


def test_quantized_cnn_edge_inputs():
    """Saturating inputs (all-max, all-min, out-of-range) stay bit-exact."""
    graph = _expose_intermediates(_quantized_cnn("int8"))
    ex = _BUILT.setdefault(("cnn", "int8"), build(graph, "x86"))
    x = np.zeros((8, 1, 8, 8), np.float32)
    x[0] = 1.0
    x[1] = 50.0
    x[2] = -50.0
    x[3] = np.linspace(-2, 2, 64).reshape(1, 8, 8)
    feeds = {"input": x}
    assert_matches(graph, run_tvm(ex, graph, feeds), lowbit.run_reference(graph, feeds))


def _qmatmul_graph(M, K, N, x_dtype, zx, w, bias, rq, acc_shift=0, rank3=False,
                   acc_dtype=DType.int(32)):
    g = Graph("qmm")
    shape = (2, M, K) if rank3 else (M, K)
    x = g.add_input("x", x_dtype, shape)
    wv = g.add_const(w, "w")
    bv = g.add_const(bias.astype(np.int32), "b") if bias is not None else None
    attrs = QMatMulAttrs(requant=rq, acc_dtype=acc_dtype, acc_shift=acc_shift)
    out_shape = shape[:-1] + (N,)
    node = g.add_node(Op.QMATMUL, [x, wv, bv] if bv is not None else [x, wv], attrs,
                      name="qmm", outputs=["y"], out_types=[(rq.out_dtype, out_shape)])
    g.outputs = list(node.outputs)
    return g


def _numpy_qmatmul(x, zx, w, bias, rq, acc_shift):
    acc = ((x.astype(np.int64) - zx) @ w.astype(np.int64)) << acc_shift
    if bias is not None:
        acc = acc + bias
    if rq.accumulates:
        return acc
    m = np.asarray(rq.multiplier)
    axis = -1 if m.size > 1 else None
    return requantize(acc, rq.multiplier if m.size > 1 else m[0],
                      rq.shift if m.size > 1 else rq.shift[0], rq.out_zero_point, rq.lo, rq.hi,
                      axis)


@pytest.mark.parametrize("M,K,N,signed,acc_out", [
    (1, 37, 19, False, False), (3, 70, 33, True, False), (8, 13, 5, False, True),
])
def test_qmatmul_odd_shapes(M, K, N, signed, acc_out):
    """QMatMul vs a numpy reference calling lowbit.ir.dyadic.requantize (odd K/N, M in 1/3/8,
    per-channel multipliers, zero points, acc_shift)."""
    rng = np.random.default_rng(M * 1000 + K)
    x_dtype = DType.int(8) if signed else DType.uint(8)
    zx = -3 if signed else 121
    x = rng.integers(x_dtype.min, x_dtype.max + 1, size=(M, K)).astype(x_dtype.numpy)
    w = rng.integers(-8, 8, size=(K, N)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=N)
    if acc_out:
        rq = Requant(zx, (), (), 0, DType.int(32), -(1 << 31), (1 << 31) - 1)
    else:
        mult = tuple(int(v) for v in rng.integers(1 << 30, 1 << 31, size=N))
        shift = tuple(int(v) for v in rng.integers(0, 40, size=N))
        rq = Requant(zx, mult, shift, 5, DType.uint(8), 0, 255, axis=1)
    g = _qmatmul_graph(M, K, N, x_dtype, zx, w, bias, rq, acc_shift=2)
    ex = build(g, "x86")
    got = run_tvm(ex, g, {"x": x})["y"]
    want = _numpy_qmatmul(x, zx, w, bias, rq, 2)
    np.testing.assert_array_equal(got.astype(np.int64), want)
    np.testing.assert_array_equal(got.astype(np.int64),
                                  lowbit.run_reference(g, {"x": x})["y"].astype(np.int64))


def test_qmatmul_extremes_no_overflow():
    """All-max codes and weights: Σ x·w alone overflows int32 (so the folded sum runs in
    int64) while the true accumulator Σ (x − zx)·w fits; the result is still exact."""
    K, N = 70000, 3
    x = np.full((1, K), 255, np.uint8)
    w = np.full((K, N), 127, np.int8)
    zx = 200
    rq = Requant(zx, (), (), 0, DType.int(32), -(1 << 31), (1 << 31) - 1)
    g = _qmatmul_graph(1, K, N, DType.uint(8), zx, w, None, rq)
    got = run_tvm(build(g, "x86"), g, {"x": x})["y"]
    np.testing.assert_array_equal(got, np.full((1, N), 55 * 127 * K, np.int64))


@pytest.mark.parametrize("transposed", [False, True])
def test_qconv_groups_strides_zero_point(transposed):
    """QConv with group 2, stride 2, dilation, asymmetric pads, a non-zero zx and per-channel
    requant (transposed: output_padding too), bit-exact to the integer simulator."""
    rng = np.random.default_rng(3 + transposed)
    g = Graph("qconv")
    x = g.add_input("x", DType.uint(8), (2, 4, 7, 6))
    c_out = 6
    w_shape = (4, c_out // 2, 3, 2) if transposed else (c_out, 2, 3, 2)
    w = g.add_const(rng.integers(-8, 8, w_shape).astype(np.int8), "w")
    b = g.add_const(rng.integers(-3000, 3000, c_out).astype(np.int32), "b")
    mult = tuple(int(v) for v in rng.integers(1 << 30, 1 << 31, c_out))
    rq = Requant(37, mult, (40,) * c_out, -5, DType.int(8), -128, 127, axis=1)
    attrs = QConvAttrs((2, 2), (1, 0, 2, 1), (1, 2) if not transposed else (2, 1), 2, rq,
                       DType.int(32), transposed=transposed,
                       output_padding=(1, 0) if transposed else (), acc_shift=1)
    y = g.add_node(Op.QCONV, [x, w, b], attrs, name="qconv").outputs[0]
    g.outputs = [y]
    feeds = {"x": rng.integers(0, 256, (2, 4, 7, 6)).astype(np.uint8)}
    want = lowbit.run_reference(g, feeds)
    assert len(np.unique(want[y.name])) > 20
    assert_matches(g, run_tvm(build(g, "x86"), g, feeds), want)


def test_export_library_roundtrip(tmp_path):
    """The executable exports to one shared library that carries the weights."""
    graph = _quantized_cnn("w2a2")
    ex = build(graph, "x86", threads=1)
    path = tmp_path / "model.so"
    ex.export_library(str(path))
    loaded = tvm.runtime.load_module(str(path))
    feeds = {"input": _calib_batch()}
    vm = relax.VirtualMachine(loaded, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(feeds["input"])).numpy()
    want = lowbit.run_reference(graph, feeds)[graph.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_qadd_and_requantize_single_ops():
    """QAdd (per-channel m on b, broadcast) and a binary Requantize of a float input."""
    g = Graph("qadd")
    a = g.add_input("a", DType.uint(8), (2, 4, 3))
    b = g.add_input("b", DType.int(8), (4, 1))
    ra = Requant(7, (1 << 20,), (22,), 3, DType.uint(8), 0, 255)
    rb = Requant(-2, (1 << 19, 3 << 18, 1 << 21, 5 << 17), (22,) * 4, 3, DType.uint(8), 0, 255,
                 axis=1)
    y = g.add_node(Op.QADD, [a, b], QAddAttrs(ra, rb), name="qadd", outputs=["y"],
                   out_types=[(DType.uint(8), (2, 4, 3))]).outputs[0]
    f = g.add_input("f", FLOAT32, (5,))
    rs = Requant(0, (), (), 0, DType.int(2), -1, 1, binary=True)
    s = g.add_node(Op.REQUANTIZE, [f], RequantizeAttrs(rs), name="sign", outputs=["s"],
                   out_types=[(DType.int(2), (5,))]).outputs[0]
    g.outputs = [y, s]
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 256, (2, 4, 3)).astype(np.uint8),
             "b": rng.integers(-128, 128, (4, 1)).astype(np.int8),
             "f": np.array([-1.5, 0.0, 2.0, -0.0, 1e-9], np.float32)}
    assert_matches(g, run_tvm(build(g, "x86"), g, feeds), lowbit.run_reference(g, feeds))


@pytest.mark.parametrize("kernel,x_bits,w_bits,shift", [("bitserial", 2, 2, 34),
                                                        ("int8", 8, 4, 42)])
def test_qmatmul_kernel_family_seam(kernel, x_bits, w_bits, shift):
    """A QMatMul carrying node.meta["kernel"] runs that family's scheduled PrimFunc through
    relax.call_tir, bit-exact to the integer simulator (odd K and N)."""
    M, K, N = 3, 70, 33
    rng = np.random.default_rng(7)
    x_dtype = DType.uint(x_bits)
    zx = 1
    x_q = QType(QKind.UNIFORM, x_bits, False, scale=(0.1,), zero_point=(zx,))
    w_q = QType(QKind.UNIFORM, w_bits, True, scale=(0.1,), zero_point=(0,))
    w = rng.integers(-(1 << (w_bits - 1)), 1 << (w_bits - 1), (K, N)).astype(np.int8)
    bias = rng.integers(-50, 50, N)
    mult = tuple(int(v) for v in rng.integers(1 << 30, 1 << 31, N))
    rq = Requant(zx, mult, (shift,) * N, 2, DType.uint(4), 0, 15, axis=1)
    g = _qmatmul_graph(M, K, N, x_dtype, zx, w, bias, rq)
    g.inputs[0].qtype = x_q
    node = g.nodes[0]
    node.inputs[1].qtype = w_q
    node.meta["kernel"] = kernel
    mod = lower(g, "x86")
    assert any(f"{kernel}_qmm" in str(gv) for gv in mod.get_global_vars())
    x = rng.integers(0, 1 << x_bits, (M, K)).astype(np.uint8)
    got = run_tvm(build(g, "x86"), g, {"x": x})["y"]
    want = lowbit.run_reference(g, {"x": x})["y"]
    assert len(np.unique(want)) > 3
    np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))


def test_unknown_kernel_family_is_an_error():
    graph = _quantized_cnn("int8").copy()
    node = next(n for n in graph.nodes if n.op == Op.QMATMUL)
    node.meta["kernel"] = "no_such_family"
    with pytest.raises(LoweringError, match="no_such_family"):
        lower(graph, "x86")


def test_arm64_object_for_quantized_graph():
    """The w4a8 CNN compiles for aarch64: the kernels' assembly is AArch64 NEON (``smlal`` /
    ``.4s`` vector registers), not x86."""
    graph = _quantized_cnn("w4a8")
    ex = build(graph, "arm64")
    llvm = [m for m in ex.mod.imports if m.kind == "llvm"]
    assert llvm, "no compiled kernel module"
    asm = llvm[0].inspect_source("asm")
    assert ".4s" in asm and ("smlal" in asm or "mla" in asm or "mul" in asm)
    assert "%rax" not in asm and "vpmovzx" not in asm


def test_cuda_codegen_for_quantized_graph():
    """The int8 CNN lowers and compiles for CUDA (no GPU needed: TVM keeps CUDA source);
    dlight's GPU rules schedule every kernel (reference integer kernels included)."""
    src = _cuda_source(build(_quantized_cnn("int8"), "cuda"))
    assert src.count("__global__") >= 6 and "threadIdx.x" in src


def _cuda_source(ex) -> str:
    modules, stack = [], [ex.mod]
    while stack:
        m = stack.pop()
        modules.append(m)
        stack.extend(m.imports)
    cuda = [m for m in modules if m.kind == "cuda"]
    assert cuda
    return cuda[0].inspect_source("cuda")


@pytest.mark.parametrize("quant", ["int8", "w2a8", "pow2", "codebook4"])
def test_cuda_static_selection_matches_the_cpu(quant):
    """select_kernels(..., "cuda", measure=False) picks the same families as on x86: no family
    is refused because the target is a GPU."""
    from lowbit.codegen.select import select_kernels

    cuda = select_kernels(_quantized_cnn(quant).copy(), "cuda", measure=False)
    host = select_kernels(_quantized_cnn(quant).copy(), "x86", measure=False)
    assert {k: c.family for k, c in cuda.items()} == {k: c.family for k, c in host.items()}
    assert any(c.family != "reference" for c in cuda.values())


@pytest.mark.parametrize("quant,family", [("int8", "int8"), ("w2a8", "lut"),
                                          ("pow2", "shiftadd"), ("pow2", "shiftadd_int8"),
                                          ("w2a2", "bitserial")])
def test_cuda_codegen_with_each_kernel_family(quant, family):
    """The quantized CNN compiles for CUDA with ``family`` on every layer it takes there (at
    least the layers it takes on x86; convs through im2col + the family's GEMM): the source
    holds that family's kernels, bound to threads (int8: ``__dp4a``)."""
    from lowbit.codegen.lowering import _identifier
    from lowbit.codegen.select import candidates, select_kernels
    from lowbit.codegen.target import resolve_target

    graph = _quantized_cnn(quant).copy()
    layers = [n for n in graph.nodes if n.op in (Op.QCONV, Op.QMATMUL)]
    takes = {n.name for n in layers if family in candidates(n, resolve_target("cuda"))[0]}
    on_host = {n.name for n in layers if family in candidates(n, resolve_target("x86"))[0]}
    assert takes and takes >= on_host
    choices = select_kernels(graph, "cuda", forced=dict.fromkeys(takes, family), measure=False)
    assert {k for k, c in choices.items() if c.family == family} == takes
    src = _cuda_source(build(graph, "cuda"))
    for name in takes:
        assert f"{_identifier(f'{family}_{name}')}_kernel(" in src
    assert "threadIdx.x" in src
    if family == "int8":
        assert "__dp4a(" in src


def test_transformer_int8_bit_exact():
    calib = EXAMPLES / "digits_transformer_calib.npz"
    x = np.load(calib)["input"][:4].astype(np.float32)
    graph = lowbit.quantize(EXAMPLES / "digits_transformer.onnx", quant="int8",
                            calib=str(calib), input_shapes={"input": (4, 8, 8)})
    graph = _expose_intermediates(graph)
    feeds = {"input": x}
    assert_matches(graph, run_tvm(build(graph, "x86"), graph, feeds),
                   lowbit.run_reference(graph, feeds))


@pytest.mark.parametrize("m,s,zp,dtype,lo,hi", [
    (1 << 30, 30, 0, DType.int(32), 0, (1 << 31) - 1),   # the int32 rescale before a max-pool
    (1 << 4, 9, 3, DType.int(8), -128, 127),             # (acc + 2^4) >> 5
    (1, 0, -2, DType.uint(8), 0, 255),                   # m = 1, no rounding term
    (3 << 3, 9, 0, DType.int(8), -128, 127),             # not a power of two: the general form
])
def test_requantize_power_of_two_multipliers(m, s, zp, dtype, lo, hi):
    """Requantize with a uniform ``m = 2^k`` lowers without the int64 multiply
    (``_Requant._pow2_shift``) and stays bit-exact to ``ir.dyadic.requantize`` at the int32
    extremes and on every rounding tie."""
    from lowbit.codegen.lowering.quantized import _Requant

    rq = Requant(0, (m,), (s,), zp, dtype, lo, hi)
    k = m.bit_length() - 1
    assert _Requant(rq, 1)._pow2_shift() == (None if m & (m - 1) else s - k)
    g = Graph("rq")
    x = g.add_input("x", DType.int(32), (64,))
    y = g.add_node(Op.REQUANTIZE, [x], RequantizeAttrs(rq), name="rq", outputs=["y"],
                   out_types=[(dtype, (64,))]).outputs[0]
    g.outputs = [y]
    xs = np.concatenate([[np.iinfo(np.int32).min, np.iinfo(np.int32).max, 0, -1, 1],
                         np.arange(-16, 17) * 16 + 16,                      # ties of >> 5
                         np.random.default_rng(3).integers(-(1 << 31), 1 << 31, 26)])
    feeds = {"x": xs.astype(np.int32)}
    got = run_tvm(build(g, "x86"), g, feeds)["y"]
    want = requantize(xs.astype(np.int64), m, s, zp, lo, hi)
    np.testing.assert_array_equal(got.astype(np.int64), want)
    assert_matches(g, {"y": got}, lowbit.run_reference(g, feeds))


@pytest.mark.parametrize("dtype,zp,wide", [
    (DType.uint(8), 255, "int32"), (DType.int(8), -128, "int32"),
    (DType.int(16), -32768, "int32"), (DType.uint(16), 65535, "int32"),
    (DType.int(32), 0, "int32"), (DType.int(32), 5, "int64"),
])
def test_dequantize_integer_width(dtype, zp, wide):
    """DequantizeLinear subtracts the zero point in int32 when that is exact (vector
    int -> float conversion on AVX2), in int64 otherwise; float results equal the reference's
    int64 subtraction at the dtype's extremes."""
    from lowbit.codegen.lowering.quantized import _dequant_int_type
    from lowbit.ir.attrs import DequantizeAttrs

    np_dtype = dtype.numpy
    assert _dequant_int_type(np.dtype(np_dtype).name, np.array(zp)) == wide
    g = Graph("dq")
    x = g.add_input("x", dtype, (40,))
    scale = g.add_const(np.array(0.37, np.float32), "scale")
    zero = g.add_const(np.array(zp, np_dtype), "zp")
    y = g.add_node(Op.DEQUANTIZE, [x, scale, zero], DequantizeAttrs(), name="dq",
                   outputs=["y"], out_types=[(FLOAT32, (40,))]).outputs[0]
    g.outputs = [y]
    info = np.iinfo(np_dtype)
    xs = np.concatenate([[info.min, info.max, 0], np.random.default_rng(5).integers(
        info.min, int(info.max) + 1, 37)]).astype(np_dtype)
    feeds = {"x": xs}
    got = run_tvm(build(g, "x86"), g, feeds)["y"]
    np.testing.assert_array_equal(got, lowbit.run_reference(g, feeds)["y"])


@pytest.mark.parametrize("kernel,x_bits,w_bits,shift,wide", [
    ("int8", 8, 7, 11, "int32"), ("bitserial", 2, 2, 11, "int32"),
    ("bitserial", 2, 2, 26, "int64")])
def test_family_epilogue_width(kernel, x_bits, w_bits, shift, wide):
    """The split epilogue of a kernel family, ``(D << acc_shift) + bias``, runs in int32 when
    ``max|x − zx| · max Σ|w| · 2^shift + max|bias|`` fits int32 (then it vectorizes with the
    float ops after it on AVX2), in int64 otherwise; bit-exact to the simulator both ways
    (int8: accumulator out; bitserial: a dyadic requant to uint4)."""
    M, K, N = 5, 37, 21
    rng = np.random.default_rng(shift)
    zx = 1 << (x_bits - 1)
    lim = 1 << (w_bits - 1)
    w = rng.integers(-lim + (w_bits > 2), lim, (K, N)).astype(np.int8)
    bound = (zx * int(np.abs(w.astype(np.int64)).sum(axis=0).max())) << shift
    assert (bound + 5000 <= (1 << 31) - 1) == (wide == "int32")
    bias = rng.integers(-5000, 5000, N)
    if kernel == "int8":
        rq = Requant(zx, (), (), 0, DType.int(32), -(1 << 31), (1 << 31) - 1)
    else:
        mult = tuple(int(v) for v in rng.integers(1 << 24, 1 << 25, N))
        rq = Requant(zx, mult, (26 + shift,) * N, 2, DType.uint(4), 0, 15, axis=1)
    g = _qmatmul_graph(M, K, N, DType.uint(x_bits), zx, w, bias, rq, acc_shift=shift,
                       acc_dtype=DType.int(64 if wide == "int64" else 32))
    g.inputs[0].qtype = QType(QKind.UNIFORM, x_bits, False, scale=(0.1,), zero_point=(zx,))
    g.nodes[0].inputs[1].qtype = QType(QKind.UNIFORM, w_bits, True, scale=(0.1,),
                                       zero_point=(0,))
    g.nodes[0].meta["kernel"] = kernel
    mod = lower(g, "x86")
    (epilogue,) = [f for gv, f in mod.functions_items() if "epilogue" in gv.name_hint]
    assert (f"<< T.int64({shift})" in epilogue.script()) == (wide == "int64")
    x_max = (1 << x_bits) - 1
    x = np.concatenate([np.full((1, K), x_max), np.zeros((1, K)),
                        rng.integers(0, x_max + 1, (M - 2, K))]).astype(np.uint8)
    got = run_tvm(build(g, "x86"), g, {"x": x})["y"]
    want = lowbit.run_reference(g, {"x": x})["y"]
    assert len(np.unique(want)) > 3
    np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))


@pytest.mark.parametrize("dtype,zp", [(DType.uint(8), 128), (DType.int(8), -3),
                                      (DType.uint(16), 65535), (DType.int(32), 7)])
def test_quantize_extremes(dtype, zp):
    """QuantizeLinear equals the reference (float64 zero-point add) at and beyond the clamp
    bounds, near 2^23 and 2^24 quotients and on halves; 8/16-bit dtypes add in float32."""
    from lowbit.ir.attrs import QuantizeAttrs

    g = Graph("q")
    n = 64
    x = g.add_input("x", FLOAT32, (n,))
    scale = g.add_const(np.array(0.25, np.float32), "scale")
    zero = g.add_const(np.array(zp, dtype.numpy), "zp")
    y = g.add_node(Op.QUANTIZE, [x, scale, zero], QuantizeAttrs(dtype), name="q",
                   outputs=["y"], out_types=[(dtype, (n,))]).outputs[0]
    g.outputs = [y]
    special = [1e30, -1e30, 2.0 ** 21, -(2.0 ** 21), 2.0 ** 22 + 0.25, -(2.0 ** 22) - 0.5,
               0.125, -0.125, 0.375, 3.4e38, -3.4e38, 0.0, -0.0, 16383.875, -16384.125]
    rest = np.random.default_rng(3).standard_normal(n - len(special)) * 40
    feeds = {"x": np.concatenate([special, rest]).astype(np.float32)}
    got = run_tvm(build(g, "x86"), g, feeds)["y"]
    np.testing.assert_array_equal(got, lowbit.run_reference(g, feeds)["y"])
