"""Bench: int8 GEMM / conv layers vs onnxruntime fp32 and onnxruntime int8.

Whole layer, cache-hot (the same weights every call), in one process, ``--threads`` threads
(default 1: ORT ``intra_op_num_threads=1``, TVM ``TVM_NUM_THREADS=1``):

* lowbit int8: activation repack + GEMM (``vpdpbusd`` on AVX-512 VNNI) + offset + per-channel
  requant to uint8 codes (one TVM function; tensors resident, called through TVM's FFI);
* onnxruntime fp32 ``MatMul`` (M x K) @ (K x N);
* onnxruntime int8 ``MatMulInteger`` (uint8 x, int8 constant w, x zero point; int32 out, i.e.
  *without* a requant -- a lighter layer than lowbit's);
* conv shapes: ORT fp32 ``Conv`` and ``ConvInteger`` vs lowbit's direct (implicit GEMM) or im2col
  conv / direct depthwise.

Each figure is the median over ``--repeat`` rounds; a round times ``--number`` back-to-back
calls of each contender in turn (interleaved, so a shared machine's noise hits all alike).
Run: ``python bench/bench_int8.py [--shapes 1x4096x4096 16x4096x4096 128x768x3072] [--conv]``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _common import batch_seconds, layer_model, matmul_integer_model, matmul_model, ort_session


def _session(nodes, inputs, outputs, inits, threads: int):
    return ort_session(layer_model(nodes, inputs, outputs, inits), threads)


def ort_matmul(x: np.ndarray, w: np.ndarray, zx: int, threads: int):
    """(fp32 MatMul runner, int8 MatMulInteger runner) for y = x @ w."""
    M = x.shape[0]
    fp32 = ort_session(matmul_model(w, M), threads)
    int8 = ort_session(matmul_integer_model(w, M, zx), threads)
    xf = (x.astype(np.float32) - zx)
    return (lambda: fp32.run(None, {"x": xf}), lambda: int8.run(None, {"x": x}),
            int8.run(None, {"x": x})[0])


def ort_conv(x, w, zx, stride, pads, group, threads):
    """(fp32 Conv runner, ConvInteger runner or None for depthwise) for an NCHW conv."""
    from onnx import TensorProto, helper, numpy_helper

    attrs = {"strides": list(stride), "pads": [pads[0], pads[1], pads[2], pads[3]],
             "group": group}
    fp32 = _session([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                    [numpy_helper.from_array(w.astype(np.float32), "w")], threads)
    xf = x.astype(np.float32) - zx
    runners = [lambda: fp32.run(None, {"x": xf})]
    if group == 1:
        int8 = _session([helper.make_node("ConvInteger", ["x", "w", "zx"], ["y"], **attrs)],
                        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
                        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                        [numpy_helper.from_array(w.astype(np.uint8), "w"),
                         numpy_helper.from_array(np.array(zx, np.uint8), "zx")], threads)
        # ConvInteger wants uint8 weights in ORT's CPU kernel; the timing is what matters
        runners.append(lambda: int8.run(None, {"x": x}))
    return runners


def _lowbit_runner(kernel, packed, x):
    """A zero-copy callable of the compiled layer (resident tensors, no numpy conversion)."""
    import tvm

    layer = kernel.bind(packed)
    dev = tvm.cpu()
    x_t = tvm.runtime.tensor(np.ascontiguousarray(x), dev)
    y_t = tvm.runtime.tensor(np.empty(kernel.spec.out_shape, kernel.spec.out_dtype), dev)
    fn = kernel.lib["main"]
    return lambda: fn(x_t, *layer.params, y_t)


def _rounds(runners: dict, number: int, repeat: int) -> dict:
    times = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            times[name].append(batch_seconds(fn, number))
    return {name: float(np.median(t)) for name, t in times.items()}


def _report(title: str, med: dict) -> None:
    """Each contender's median; every other row with the ratio against each lowbit row
    (``lowbit int8`` and, on AMX CPUs, ``lowbit int8 amx``)."""
    ours = [name for name in med if name.startswith("lowbit")]
    print(title)
    for name, t in med.items():
        ratio = "" if name in ours else "".join(
            f"   {o.removeprefix('lowbit ')} is {t / med[o]:5.2f}x faster" for o in ours)
        print(f"  {name:22s} {t * 1e3:8.3f} ms{ratio}")


def _amx_runner(spec, target, build, pack, x, want):
    """The layer on the ``amx`` family's tiles (same spec, ``engine="amx"``), checked equal
    to ``want``; None where the CPU has no AMX or the family refuses the shape."""
    from dataclasses import replace

    from lowbit.codegen.kernels import amx
    from lowbit.ir.errors import LoweringError

    if not amx.available(target):
        return None
    spec = replace(spec, engine="amx")
    try:
        (amx.check_gemm_padding if hasattr(spec, "M") else amx.check_padding)(spec)
    except LoweringError as err:
        print(f"  (amx: {err})")
        return None
    kernel, packed = build(spec), pack(spec)
    if not np.array_equal(kernel(x, packed), want):
        raise SystemExit(f"amx differs from the vector kernel on {spec}")
    return _lowbit_runner(kernel, packed, x)


def bench_gemm(M, K, N, target, args) -> None:
    from lowbit.codegen.kernels import int8 as k8

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    lim = 1 << (args.bits - 1)
    w = rng.integers(-lim + 1, lim, (K, N)).astype(np.int8)
    zx = 128
    spec = k8.Int8Spec(M, K, N, args.bits, "uint8", k8.OutputRange(0, 0, 255))
    mult = rng.integers(1 << 30, 1 << 31, N)
    rng2 = np.random.default_rng(7)
    packed = k8.pack_weights(spec, target, w, bias=np.random.default_rng(7).integers(
        -999, 999, N), a_zero_point=zx, mult=mult, shift=45)
    kernel = k8.build(spec, target)
    fp32, int8, ref = ort_matmul(x, w, zx, args.threads)
    acc_spec = k8.Int8Spec(M, K, N, args.bits)
    got = k8.build(acc_spec, target)(x, k8.pack_weights(acc_spec, target, w, a_zero_point=zx))
    exact = (x.astype(np.int64) - zx) @ w.astype(np.int64)
    assert np.array_equal(got, exact), "lowbit accumulator != numpy int64 GEMM"
    if not np.array_equal(ref, exact):  # MLAS's AVX2 u8s8 kernel saturates in vpmaddubsw
        print(f"  note: ORT MatMulInteger is not exact on this CPU (max |error| "
              f"{int(np.abs(ref - exact).max())}); lowbit is")
    runners = {"lowbit int8": _lowbit_runner(kernel, packed, x)}
    tiles = _amx_runner(spec, target, lambda s: k8.build(s, target),
                        lambda s: k8.pack_weights(s, target, w, bias=rng2.integers(-999, 999, N),
                                                  a_zero_point=zx, mult=mult, shift=45),
                        x, kernel(x, packed))
    if tiles is not None:
        runners["lowbit int8 amx"] = tiles
    runners.update({"ORT int8 MatMulInteger": int8, "ORT fp32 MatMul": fp32})
    med = _rounds(runners, args.number, args.repeat)
    _report(f"{M}x{K}x{N}  path={kernel.path}  block={spec.block_for(kernel.path)}  "
            f"threads={args.threads}",
            med)


def bench_conv(target, args) -> None:
    from lowbit.codegen.kernels import int8 as k8

    rng = np.random.default_rng(1)
    zx = 128
    out = k8.OutputRange(0, 0, 255)
    dense = k8.ConvSpec(1, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1, 1, 1), args.bits, requant=out)
    dw = k8.DepthwiseSpec(1, 128, 56, 56, 3, 3, (1, 1), (1, 1, 1, 1), requant=out)
    for spec, group in ((dense, 1), (dw, dw.C)):
        x = rng.integers(0, 256, spec.in_shape).astype(np.uint8)
        if group == 1:
            lim = 1 << (args.bits - 1)
            w = rng.integers(-lim + 1, lim, (spec.OC, spec.C, spec.KH, spec.KW)).astype(np.int8)
            packed = k8.pack_conv_weights(spec, target, w, a_zero_point=zx, mult=1 << 30,
                                          shift=45)
            kernel = k8.build_conv(spec, target, zx)
        else:
            w = rng.integers(-128, 128, (spec.C, 1, spec.KH, spec.KW)).astype(np.int8)
            packed = k8.pack_depthwise_weights(spec, w, a_zero_point=zx, mult=1 << 30,
                                               shift=45)
            kernel = k8.build_depthwise(spec, target, zx)
        runners = {"lowbit int8": _lowbit_runner(kernel, packed, x)}
        if group == 1:
            tiles = _amx_runner(spec, target, lambda s: k8.build_conv(s, target, zx),
                                lambda s: k8.pack_conv_weights(s, target, w, a_zero_point=zx,
                                                               mult=1 << 30, shift=45),
                                x, kernel(x, packed))
            if tiles is not None:
                runners["lowbit int8 amx"] = tiles
        ort = ort_conv(x, w, zx, spec.stride, spec.pads, group, args.threads)
        runners["ORT fp32 Conv"] = ort[0]
        if len(ort) > 1:
            runners["ORT ConvInteger"] = ort[1]
        kind = ("direct depthwise" if group != 1 else
                "direct (implicit GEMM)" if spec.direct else "im2col GEMM")
        _report(f"conv {spec.in_shape} k{spec.KH} group={group} ({kind}, path={kernel.path})",
                _rounds(runners, max(1, args.number // 10), args.repeat))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*",
                        default=["1x4096x4096", "16x4096x4096", "128x768x3072"])
    parser.add_argument("--conv", action="store_true", help="also bench conv layers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--target", default="x86")
    parser.add_argument("--bits", type=int, default=8,
                        help="weight bits of the dense layers (7: reduce_range's weights)")
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before the pool starts

    from lowbit.codegen.kernels import int8 as k8
    from lowbit.codegen.target import resolve_target

    k8.set_num_threads(args.threads)
    target = resolve_target(args.target)
    print(f"target {target.name}: {target.tvm_dict()}  (cache-hot, median of {args.repeat} "
          f"rounds x {args.number} calls)")
    for shape in args.shapes:
        bench_gemm(*(int(v) for v in shape.split("x")), target, args)
    if args.conv:
        bench_conv(target, args)


if __name__ == "__main__":
    main()
