"""The binarized ResNet-18-shaped network (examples/binary_resnet.py) end to end: quantized with
w1a1 (and int8), built for the host, and bit-exact to the integer simulator.

Every node output is made a graph output, so each integer intermediate (QConv accumulators,
sign codes, residual QAdd codes, the FC accumulator) is compared exactly. Float values (the
dequantized residual stream, the pre-sign BatchNorm, the pooled features, the final logits) are
compared within 1e-5: they are computed in float32 by numpy in the simulator and by
LLVM-compiled TVM code here, which may order / contract the float operations differently
(e.g. BatchNorm as ``x·a + b`` vs ``(x − mean)/sqrt(var + eps)·γ + β``, FMA in the dequantize);
the integer codes they feed are still compared exactly, so a float difference that flipped a
sign or a rounding would fail the test. Built twice for w1a1: with lowbit's reference
kernels and with the kernel families ``select_kernels`` picks (bit-serial XNOR-popcount for
the 16 binary convs, int8 for the rest); once for int8 (families). Default run: 64x64, ~45 s
(more on a loaded machine); the arm64 cross-build is ``slow``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.ir import Graph, Op, QKind

tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")
from lowbit.codegen.build import build
from tvm import relax

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "binary_resnet.py"
RESOLUTION = 64
CLASSES = 10
_CACHE: dict = {}


def _example():
    if "module" not in _CACHE:
        spec = importlib.util.spec_from_file_location("binary_resnet", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _CACHE["module"] = module
    return _CACHE["module"]


def _onnx() -> bytes:
    if "onnx" not in _CACHE:
        br = _example()
        _CACHE["onnx"] = br.export_onnx(br.make_model(CLASSES, seed=0), resolution=RESOLUTION)
    return _CACHE["onnx"]


def _quantized(quant: str) -> Graph:
    """The network quantized with ``quant`` ("w1a1": the example's recipe, downsample int8)."""
    key = ("graph", quant)
    if key not in _CACHE:
        br = _example()
        calib = {"input": br.calibration_images(4, RESOLUTION, seed=0)}
        if quant == "w1a1":
            recipe = br.w1a1_recipe(_onnx())
            _CACHE[key] = lowbit.quantize(_onnx(), recipe=recipe, calib=calib)
        else:
            _CACHE[key] = lowbit.quantize(_onnx(), quant=quant, calib=calib)
    return _CACHE[key]


def _expose_intermediates(graph: Graph) -> Graph:
    """A copy whose outputs are every node output (integer intermediates included)."""
    g = graph.copy()
    outs = list(g.outputs)
    for node in g.nodes:
        outs.extend(v for v in node.outputs if v not in outs)
    g.outputs = outs
    return g


def _compiled(quant: str, select: bool):
    """(graph with every node output exposed, executable); ``select``: kernel families chosen
    by ``select_kernels(measure=False)`` (the static order), else the reference kernels."""
    key = ("built", quant, select)
    if key not in _CACHE:
        g = _expose_intermediates(_quantized(quant))
        choices = {}
        if select:
            from lowbit.codegen.select import select_kernels

            forced = ({n.name: "amx" for n in _binary_layers(g)} if select == "amx" else None)
            choices = select_kernels(g, "x86", measure=False, forced=forced)
        _CACHE[key] = (g, build(g, "x86"), choices)
    return _CACHE[key]


def _host_has_amx() -> bool:
    from lowbit.codegen.kernels import amx
    from lowbit.codegen.target import resolve_target

    return amx.available(resolve_target("x86"))


def _images() -> np.ndarray:
    """Two seeded test images, not the calibration ones."""
    return _example().calibration_images(2, RESOLUTION, seed=123)


def _binary_layers(graph: Graph) -> list:
    """QConvs whose weights and input are both binary codes."""
    return [n for n in graph.nodes if n.op == Op.QCONV
            and n.inputs[1].qtype is not None and n.inputs[1].qtype.kind == QKind.BINARY
            and n.inputs[0].qtype is not None and n.inputs[0].qtype.kind == QKind.BINARY]


def test_w1a1_binarizes_the_block_convs_only():
    br = _example()
    graph = _quantized("w1a1")
    binary = _binary_layers(graph)
    print(f"binarized layers (binary weights x sign activations): {len(binary)}")
    assert len(binary) == br.BINARY_CONVS == 16
    assert all(n.inputs[1].shape[2:] == (3, 3) for n in binary)
    # stem conv, the 3 downsample 1x1 convs and the FC are int8 x int8
    others = [n for n in graph.nodes if n.op in (Op.QCONV, Op.QMATMUL) and n not in binary]
    assert len(others) == 5
    for node in others:
        w, x = node.inputs[1].qtype, node.inputs[0].qtype
        assert (w.kind, w.bits, x.kind, x.bits) == (QKind.UNIFORM, 8, QKind.UNIFORM, 8), node.name
    # no binary weight is paired with an int8 activation (the w1a8 trap of a residual read)
    assert not [n for n in graph.nodes if n.op == Op.QCONV and n.inputs[1].qtype.kind
                == QKind.BINARY and n.inputs[0].qtype.kind != QKind.BINARY]


def test_sign_activations_carry_information():
    """The block convs see signed, centred inputs: inside the +1 border (the explicit one-pad)
    every sign-code tensor is about half +1 (measured 0.47..0.53); a sign of a post-ReLU tensor
    would be all +1."""
    graph = _expose_intermediates(_quantized("w1a1"))
    ref = lowbit.run_reference(graph, {"input": _images()[:1]})
    inputs = {n.inputs[0].name for n in _binary_layers(graph)}
    assert len(inputs) == 16
    for name in inputs:
        codes = np.asarray(ref[name])
        assert set(np.unique(codes).tolist()) == {-1, 1}, name
        assert np.all(codes[..., 0, :] == 1) and np.all(codes[..., :, -1] == 1), name
        share = float(np.mean(codes[..., 1:-1, 1:-1] > 0))
        assert 0.35 < share < 0.65, (name, share)


@pytest.mark.parametrize(("quant", "select"),
                         [("w1a1", False), ("w1a1", True), ("int8", True),
                          pytest.param("w1a1", "amx", marks=pytest.mark.skipif(
                              not _host_has_amx(), reason="host CPU has no AMX tiles"))],
                         ids=["w1a1-reference", "w1a1-families", "int8-families", "w1a1-amx"])
def test_compiled_equals_integer_simulator(quant, select):
    graph, ex, choices = _compiled(quant, select)
    if select:
        families = sorted(c.family for c in choices.values())
        print(f"{quant}: kernel families {families}")
        if select == "amx":  # the 16 binary convs forced onto AMX tiles
            assert families.count("amx") == 16, families
            assert families.count("int8") == 5, families
        elif quant == "w1a1":  # the one-padded binary convs go to bit-serial XNOR-popcount
            assert families.count("bitserial") == 16, families
            assert families.count("int8") == 5, families
        else:
            assert families.count("int8") == 21, families
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for image in _images():
        x = np.ascontiguousarray(image[None])
        outs = vm["main"](tvm.runtime.tensor(x))
        got = {v.name: o.numpy() for v, o in zip(graph.outputs, outs)}
        ref = lowbit.run_reference(graph, {"input": x})
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
        # 21 layers + 8 residual adds + requantize / quantize steps, all compared exactly
        assert n_int >= 21 + 8, n_int
        assert graph.outputs[0].name == "logits" and got["logits"].shape == (1, CLASSES)


@pytest.mark.slow
def test_arm64_build_uses_neon_popcount():
    """The whole w1a1 network cross-compiles for arm64 (~30 s): the binary convs go to the
    bit-serial family, whose aarch64 code counts bits with NEON ``cnt``."""
    from lowbit.codegen.select import select_kernels

    graph = _quantized("w1a1").copy()
    choices = select_kernels(graph, "arm64", measure=False)
    assert sorted(c.family for c in choices.values()).count("bitserial") == 16
    ex = build(graph, "arm64")

    def modules(mod):
        yield mod
        for child in mod.imports:
            yield from modules(child)

    asm = "\n".join(m.inspect_source("asm") for m in modules(ex.mod) if m.kind == "llvm")
    assert "\tcnt\tv" in asm  # aarch64 NEON popcount on vector registers
