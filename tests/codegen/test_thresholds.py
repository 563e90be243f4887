"""codegen/lowering/thresholds.py: the sign of a monotone float chain on integer codes as
per-channel thresholds, checked against the reference kernels (the simulator's float
semantics) on every code, and compiled bit-exact."""

from __future__ import annotations

import lowbit
import numpy as np
import pytest
import tvm
from lowbit.codegen.build import build
from lowbit.codegen.lowering.thresholds import sign_thresholds
from lowbit.ir import FLOAT32, DType, Graph, Op
from lowbit.ir.attrs import (
    BatchNormAttrs,
    ClipAttrs,
    DequantizeAttrs,
    Requant,
    RequantizeAttrs,
)
from tvm import relax

C = 6


def _bn_params(rng):
    gamma = (0.5 + np.abs(rng.standard_normal(C))).astype(np.float32)
    gamma[1] = -gamma[1]  # decreasing channel
    gamma[2] = 0.0  # constant channel: sign(beta)
    beta = rng.standard_normal(C).astype(np.float32)
    mean = rng.standard_normal(C).astype(np.float32)
    var = (rng.random(C) + 0.1).astype(np.float32)
    return gamma, beta, mean, var


def chain_graph(dtype: DType, scale, zero_point, shape=(2, C, 3, 5), extra=(), seed=0):
    """x (integer) -> DequantizeLinear -> BatchNormalization -> extra ops -> sign."""
    rng = np.random.default_rng(seed)
    g = Graph("thresholds")
    x = g.add_input("x", dtype, shape)
    scale = np.asarray(scale, np.float32)
    consts = [g.add_const(scale, "s")]
    if zero_point is not None:
        consts.append(g.add_const(np.asarray(zero_point, dtype.numpy), "z"))
    axis = 1 if scale.size > 1 else None
    v = g.add_node(Op.DEQUANTIZE, [x, *consts], DequantizeAttrs(axis=axis), name="dq",
                   outputs=["f"], out_types=[(FLOAT32, shape)]).outputs[0]
    params = [g.add_const(p, f"bn{i}") for i, p in enumerate(_bn_params(rng))]
    v = g.add_node(Op.BATCHNORM, [v, *params], BatchNormAttrs(1e-5), name="bn",
                   outputs=["b"], out_types=[(FLOAT32, shape)]).outputs[0]
    for i, (op, attrs, const) in enumerate(extra):
        ins = [v] if const is None else [v, g.add_const(np.asarray(const, np.float32),
                                                        f"c{i}")]
        v = g.add_node(op, ins, attrs, name=f"op{i}", outputs=[f"e{i}"],
                       out_types=[(FLOAT32, shape)]).outputs[0]
    sign = Requant(0, (), (), 0, DType.int(8), -1, 1, binary=True)
    y = g.add_node(Op.REQUANTIZE, [v], RequantizeAttrs(sign), name="sign", outputs=["y"],
                   out_types=[(DType.int(8), shape)]).outputs[0]
    g.outputs = [y]
    return g


def _apply(found, q: np.ndarray) -> np.ndarray:
    c = (1, -1) + (1,) * (q.ndim - 2)
    return np.where(q >= found.t.reshape(c), found.above.reshape(c), found.below.reshape(c))


def _every_code(dtype: DType, shape=(1, C, 1, 1)) -> np.ndarray:
    info = np.iinfo(dtype.numpy)
    codes = np.arange(info.min, info.max + 1)
    return np.broadcast_to(codes[:, None, None, None], (len(codes), *shape[1:])).astype(
        dtype.numpy)


@pytest.mark.parametrize("dtype,zp", [(DType.int(8), -7), (DType.uint(8), 130)])
def test_narrow_codes_match_the_reference_on_every_code(dtype, zp):
    g = chain_graph(dtype, 0.1, zp, shape=(256, C, 1, 1))
    found = sign_thresholds(g.outputs[0].producer.inputs[0])
    assert found is not None and found.source is g.inputs[0]
    q = _every_code(dtype)
    want = lowbit.run_reference(g, {"x": q})["y"]
    np.testing.assert_array_equal(_apply(found, q), want)
    assert (found.above != found.below).sum() == C - 1
    assert found.above[0] == 1 and found.below[0] == -1  # positive gamma: rising
    assert found.above[1] == -1 and found.below[1] == 1  # negative gamma: decreasing
    assert found.above[2] == found.below[2]  # gamma 0: one code for the whole channel


def test_wide_accumulators_bisected_per_channel_scale():
    """int32 accumulators with per-channel scales: the bisected threshold is exact at the
    switch (t - 1 and t) and on random accumulators."""
    rng = np.random.default_rng(3)
    scales = (rng.random(C) * 1e-5 + 1e-7).astype(np.float32)
    g = chain_graph(DType.int(32), scales, None, shape=(68, C, 1, 1),
                    extra=[(Op.ADD, None, 0.1)])
    found = sign_thresholds(g.outputs[0].producer.inputs[0])
    assert found is not None and (found.above != found.below).sum() == C - 1
    rand = rng.integers(-(1 << 31), 1 << 31, (64, C, 1, 1))
    near = np.concatenate([found.t.astype(np.int64) + d for d in (-2, -1, 0, 1)])
    near = np.clip(near, -(1 << 31), (1 << 31) - 1).reshape(4, C)[:, :, None, None]
    q = np.concatenate([rand, near]).astype(np.int32)
    want = lowbit.run_reference(g, {"x": q})["y"]
    np.testing.assert_array_equal(_apply(found, q), want)


@pytest.mark.parametrize("extra", [
    [(Op.DIV, None, -0.5)],
    [(Op.SUB, None, np.full((1, C, 1, 1), 0.3)), (Op.CLIP, ClipAttrs(-0.2, 0.4), None)],
    [(Op.MUL, None, np.linspace(-2, 2, C).reshape(C, 1, 1))],
])
def test_monotone_ops_in_the_chain(extra):
    g = chain_graph(DType.int(8), 0.05, 3, shape=(256, C, 1, 1), extra=extra)
    found = sign_thresholds(g.outputs[0].producer.inputs[0])
    assert found is not None
    q = _every_code(DType.int(8))
    np.testing.assert_array_equal(_apply(found, q), lowbit.run_reference(g, {"x": q})["y"])


def test_chains_that_are_not_per_channel_stay_float():
    spatial = np.random.default_rng(1).standard_normal((1, 1, 3, 5))
    g = chain_graph(DType.int(8), 0.05, 0, extra=[(Op.ADD, None, spatial)])
    assert sign_thresholds(g.outputs[0].producer.inputs[0]) is None
    g = chain_graph(DType.int(8), 0.05, 0, extra=[(Op.SIGMOID, None, None)])
    assert sign_thresholds(g.outputs[0].producer.inputs[0]) is None


def test_compiled_thresholds_bit_exact_and_without_float():
    """The lowered graph reads the codes directly (no dequantize / BatchNorm kernel left)
    and equals the integer simulator on every code."""
    g = chain_graph(DType.int(8), 0.05, -7, shape=(256, C, 2, 3))
    q = np.broadcast_to(np.arange(-128, 128, dtype=np.int8)[:, None, None, None],
                        (256, C, 2, 3)).copy()
    ex = build(g, "x86")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(q)).numpy()
    np.testing.assert_array_equal(got, lowbit.run_reference(g, {"x": q})["y"])
    from lowbit.codegen.build import relax_pipeline
    from lowbit.codegen.lower import lower
    from lowbit.codegen.target import resolve_target

    target = resolve_target("x86")
    with target.tvm_target():
        mod = relax_pipeline(target)(lower(g, target))
    names = [gv.name_hint for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)]
    assert names == ["sign"], names


def test_a_runtime_scale_stays_float():
    """A DequantizeLinear whose scale is a graph input: no compile-time thresholds."""
    g = chain_graph(DType.int(8), 0.1, 0, shape=(4, C, 1, 1))
    dq = next(n for n in g.nodes if n.op == Op.DEQUANTIZE)
    dq.set_input(1, g.add_input("runtime_scale", FLOAT32, ()))
    assert sign_thresholds(g.outputs[0].producer.inputs[0]) is None
