"""Bench: pow2 shift-add layers (both variants) vs onnxruntime fp32 MatMul and int8 MatMulInteger.

Whole layer, single thread (``TVM_NUM_THREADS=1`` via ``set_num_threads``, ORT
``intra_op_num_threads=1``), cache-hot (the same weights every call), one process:

* lowbit ``shift``: 4-bit pow2 nibbles, ``acc += +-(x << s)`` (vpsllvd), + offset + requant;
* lowbit ``int8``:  the same nibbles through a vpshufb table to int8, vpdpbusd, + requant;
* onnxruntime fp32 ``MatMul`` (M x K) @ (K x N);
* onnxruntime int8 ``MatMulInteger`` (uint8 x int8 -> int32, activation zero point), built with
  ``onnx.helper`` (the integer GEMM alone: no quantize / rescale ops around it).

Each figure is the median over ``--repeat`` rounds; a round times ``--number`` back-to-back
calls of each contender, interleaved, so a shared machine's noise hits all alike. Ratios are
``baseline time / lowbit time`` (> 1: lowbit faster). Weights: 4-bit pow2 with a zero code
(``+-2^0..2^6, 0``), the widest format both variants run.
Run: ``python bench/bench_shiftadd.py [--m 1 16 --k 4096 --n 4096]``.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from _common import batch_seconds, matmul_integer_model, matmul_model, ort_session


def bench_shape(M: int, K: int, N: int, bits: int, number: int, repeat: int,
                target) -> dict[str, float]:
    """Median seconds per contender for one (M, K, N); checks lowbit against numpy first."""
    from lowbit.codegen.kernels import shiftadd as sa
    from lowbit.ir.dyadic import requantize

    rng = np.random.default_rng(0)
    w = rng.choice(sa.pow2_values(bits, False), size=(K, N))
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    zx, bias = 7, rng.integers(-50, 50, N)
    mult, shift = rng.integers(1 << 29, 1 << 30, N), np.full(N, 40)
    out = sa.OutputRange(0, 0, 255)
    want = requantize((x.astype(np.int64) - zx) @ w + bias, mult, shift, 0, 0, 255, axis=1)
    layers = {}
    for variant in sa.VARIANTS:
        spec = sa.ShiftAddSpec(M, K, N, bits, False, variant, requant=out)
        packed = sa.pack_weights(spec, target, w, bias=bias, a_zero_point=zx, mult=mult,
                                 shift=shift)
        layer = sa.build(spec, target).bind(packed)
        np.testing.assert_array_equal(layer(x), want)
        layers[variant] = layer
    fp32 = ort_session(matmul_model(w, M))
    int8 = ort_session(matmul_integer_model(w, M, zx))
    feeds32, feeds8 = {"x": x.astype(np.float32)}, {"x": x}
    np.testing.assert_array_equal(int8.run(None, feeds8)[0], (x.astype(np.int64) - zx) @ w)
    contenders = {
        "ort fp32": lambda: fp32.run(None, feeds32),
        "ort int8": lambda: int8.run(None, feeds8),
    }
    for variant, layer in layers.items():
        timer = layer.timer(x, number=number)
        contenders[f"lowbit {variant}"] = lambda t=timer: t()
    samples = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            if name.startswith("lowbit"):  # TVM's evaluator times `number` calls itself
                samples[name].append(fn().mean)
            else:
                samples[name].append(batch_seconds(fn, number))
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--bits", type=int, default=4, choices=(2, 3, 4),
                        help="pow2 bits (with a zero code); 4 is the widest both variants run")
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--target", default="x86")
    args = parser.parse_args(argv)

    from lowbit.codegen.kernels import shiftadd as sa
    from lowbit.codegen.target import resolve_target

    sa.set_num_threads(1)
    target = resolve_target(args.target)
    print(f"target {target.name} {dict(target.tvm_items)}; 1 thread; cache-hot; "
          f"median of {args.repeat} rounds x {args.number} calls")
    for M in args.m:
        times = bench_shape(M, args.k, args.n, args.bits, args.number, args.repeat, target)
        print(f"\n{M}x{args.k}x{args.n}, pow2 {args.bits}-bit weights")
        for name, sec in times.items():
            ratios = "" if not name.startswith("lowbit") else (
                f"   vs ort int8 {times['ort int8'] / sec:5.2f}x"
                f"   vs ort fp32 {times['ort fp32'] / sec:5.2f}x")
            print(f"  {name:14s} {sec * 1e3:8.3f} ms{ratios}")


if __name__ == "__main__":
    main()
