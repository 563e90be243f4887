"""Bench: the ``amx`` family's convs against the vector kernels that compute the same layer.

Per shape, one thread, cache-hot, whole layer (prologue that lays out the activations, the
tiles, the epilogue), each contender checked equal to the other before it is timed:

* binary x binary 3x3 convs (the ResNet-18 block shapes, accumulator out as in the binarized
  ResNet): ``bitserial`` popcount direct conv vs ``amx`` (XNOR on byte tiles);
* int8 convs (3x3 blocks, 1x1 downsamples, the 7x7/2 stem, requant to u8): the int8 family's
  ``vpdpbusd`` kernel vs ``amx``;
* int8 GEMMs (M in 16, 128): the same, through the family's GEMM entry.

Rounds interleave the two contenders; medians. Needs a CPU with AMX (``amx_tile``,
``amx_int8``); exits with a message elsewhere. Run: ``python bench/bench_amx.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace

import numpy as np

os.environ.setdefault("TVM_NUM_THREADS", "1")

XNOR = [  # (C, H, N, stride)
    (64, 56, 64, 1), (64, 56, 128, 2), (128, 28, 128, 1), (128, 28, 256, 2),
    (256, 14, 256, 1), (256, 14, 512, 2), (512, 7, 512, 1)]
GEMM = [(16, 4096, 4096), (128, 768, 3072), (128, 4096, 4096), (16, 768, 3072)]
INT8 = [  # (C, H, N, k, stride, pad)
    (3, 224, 64, 7, 2, 3), (64, 56, 64, 3, 1, 1), (128, 28, 128, 3, 1, 1),
    (256, 14, 256, 3, 1, 1), (512, 7, 512, 3, 1, 1), (64, 56, 128, 1, 2, 0),
    (256, 14, 512, 1, 2, 0)]


def interleaved(fns: list, rounds: int = 15, calls: int = 20) -> list[float]:
    """Median µs per call of each of ``fns``, rounds interleaved."""
    for fn in fns:
        for _ in range(3):
            fn()
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[i].append((time.perf_counter() - start) / calls * 1e6)
    return [statistics.median(s) for s in samples]


def xnor_row(C, H, N, stride, target, rng):
    import tvm
    from lowbit.codegen.kernels import bitserial_conv as bc

    spec = bc.BitConvSpec(1, C, H, H, N, 3, 3, (stride, stride), (1,) * 4, "bipolar", 1,
                          "bipolar", 1, None, 1)
    w = rng.choice(np.array([-1, 1], np.int8), (N, C, 3, 3))
    x = tvm.runtime.tensor(rng.choice(np.array([-1, 1], np.int8), (1, C, H, H)))
    fns, outs = [], []
    for engine in ("popcount", "amx"):
        s = replace(spec, engine=engine)
        packed = bc.pack_conv_weights(s, target, w, bias=np.zeros(N, np.int64))
        params = [tvm.runtime.tensor(p) for p in
                  ((packed.wt if engine == "amx" else packed.planes), packed.offset)]
        y = tvm.runtime.tensor(np.zeros(s.out_shape, s.out_dtype))
        fn = bc.build(s, target)["main"]
        fn(x, *params, y)
        outs.append(y.numpy())
        fns.append(lambda fn=fn, params=params, y=y: fn(x, *params, y))
    if not np.array_equal(*outs):
        raise SystemExit(f"xnor {C}->{N} at {H}²: amx differs from popcount")
    return interleaved(fns)


def _vector_vs_tiles(spec, build, pack, x, what: str, calls: int = 20) -> list[float]:
    """Median µs of the int8 layer ``spec`` on the vector kernel and on tiles (``engine``
    "simd" / "amx"), called on resident tensors as in a compiled model (no numpy conversion
    per call), after checking the two outputs equal."""
    import tvm

    fns, outs = [], []
    for engine in ("simd", "amx"):
        s = replace(spec, engine=engine)
        kernel = build(s)
        layer = kernel.bind(pack(s))
        outs.append(layer(x))
        x_t = tvm.runtime.tensor(x)
        y_t = tvm.runtime.tensor(np.empty(s.out_shape, s.out_dtype))
        fns.append(lambda fn=kernel.lib["main"], p=layer.params, x_t=x_t, y_t=y_t:
                   fn(x_t, *p, y_t))
    if not np.array_equal(*outs):
        raise SystemExit(f"{what}: amx differs from vpdpbusd")
    return interleaved(fns, calls=calls)


def int8_row(C, H, N, k, stride, pad, target, rng):
    from lowbit.codegen.kernels import int8 as k8
    from lowbit.codegen.kernels.common import OutputRange

    spec = k8.ConvSpec(1, C, H, H, N, k, k, (stride, stride), (pad,) * 4,
                       requant=OutputRange(0, 0, 255))
    w = rng.integers(-128, 128, (N, C, k, k))
    x = rng.integers(0, 256, spec.in_shape).astype(np.uint8)
    kw = {"bias": rng.integers(-999, 999, N), "a_zero_point": 3,
          "mult": np.full(N, 1 << 29), "shift": np.full(N, 40)}
    return _vector_vs_tiles(spec, lambda s: k8.build_conv(s, target, 3),
                            lambda s: k8.pack_conv_weights(s, target, w, **kw), x,
                            f"int8 {C}->{N} {k}x{k} at {H}²")


def gemm_row(M, K, N, target, rng):
    from lowbit.codegen.kernels import int8 as k8
    from lowbit.codegen.kernels.common import OutputRange

    spec = k8.Int8Spec(M, K, N, requant=OutputRange(0, 0, 255))
    w = rng.integers(-128, 128, (K, N))
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    kw = {"bias": rng.integers(-999, 999, N), "a_zero_point": 3,
          "mult": np.full(N, 1 << 29), "shift": np.full(N, 40)}
    return _vector_vs_tiles(spec, lambda s: k8.build(s, target),
                            lambda s: k8.pack_weights(s, target, w, **kw), x,
                            f"int8 GEMM {M}x{K}x{N}", calls=5)


def main() -> int:
    import tvm
    from lowbit.codegen.kernels import amx
    from lowbit.codegen.target import resolve_target

    target = resolve_target("x86")
    if not amx.available(target):
        print(f"this CPU has no AMX tiles ({sorted(target.features)}); nothing to compare")
        return 0
    rng = np.random.default_rng(0)
    print(f"host {tvm.get_global_func('target.llvm_get_system_cpu')()}, one thread, "
          f"median µs per call, interleaved rounds\n")
    print("| binary x binary 3x3 conv | popcount (bitserial) | amx | popcount / amx |")
    print("|---|---:|---:|---:|")
    for C, H, N, s in XNOR:
        pop, tiles = xnor_row(C, H, N, s, target, rng)
        print(f"| {C}->{N} at {H}², stride {s} | {pop:.1f} | {tiles:.1f} | {pop / tiles:.2f}x |",
              flush=True)
    print("\n| int8 conv, requant to u8 | vpdpbusd (int8) | amx | int8 / amx |")
    print("|---|---:|---:|---:|")
    for C, H, N, k, s, p in INT8:
        simd, tiles = int8_row(C, H, N, k, s, p, target, rng)
        print(f"| {C}->{N} {k}x{k}/{s} at {H}² | {simd:.1f} | {tiles:.1f} | "
              f"{simd / tiles:.2f}x |", flush=True)
    print("\n| int8 GEMM, requant to u8 | vpdpbusd (int8) | amx | int8 / amx |")
    print("|---|---:|---:|---:|")
    for M, K, N in GEMM:
        simd, tiles = gemm_row(M, K, N, target, rng)
        print(f"| {M}x{K}x{N} | {simd:.1f} | {tiles:.1f} | {simd / tiles:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
