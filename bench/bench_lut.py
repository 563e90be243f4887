"""Bench: LUT (T-MAC style) layers vs onnxruntime fp32 MatMul and int8 MatMulInteger.

Whole layer, single thread (TVM ``TVM_NUM_THREADS=1``, ORT ``intra_op_num_threads=1``),
cache-hot (the same weights every call: a 4096 x 4096 w2 layer's 4 MiB sit in L3), one process:

* lowbit lut: table build + lookups + zero-point/bias + dyadic requant to int8 (one TVM
  function), for w2 (the issue 4 goal: >= 4x ORT int8), w1, w3, w4, ternary, codebook4 (levels
  on the int8 grid: 8 planes);
* onnxruntime fp32 ``MatMul`` (1 x K) @ (K x N);
* onnxruntime int8 ``MatMulInteger`` (uint8 activations with a zero point, int8 weights; int32
  out, no requant), a model built with ``onnx.helper``.

Measurements are interleaved round by round (the machine is shared with other engineers, so
timings are noisy): each figure is the median over ``--rounds`` of the mean of ``--number``
calls, each batch preceded by :data:`WARM_CALLS` untimed calls (the layers of one round
together exceed L3, so without them every batch would start from DRAM). ``--profile``
splits the w2 layer into table build, lookups and epilogue from extra shapes (see
:func:`profile`). Run:
``python bench/bench_lut.py [--m 1 --k 4096 --n 4096 --rounds 30 --profile]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import matmul_integer_model, matmul_model, ort_session

os.environ.setdefault("TVM_NUM_THREADS", "1")

CB4_INT8 = (-127, -88, -67, -50, -36, -23, -11, 0, 10, 20, 31, 43, 56, 71, 92, 127)
#: (label, format, bits, levels)
LAYERS = [("w2", "uint", 2, ()), ("w1", "uint", 1, ()), ("w3", "uint", 3, ()),
          ("w4", "int", 4, ()), ("ternary", "ternary", 2, ()),
          ("codebook4", "codebook", 4, CB4_INT8)]


def ort_sessions(K: int, N: int, rng):
    """(fp32 MatMul session, int8 MatMulInteger session), one intra-op thread each."""
    w32 = rng.standard_normal((K, N)).astype(np.float32)
    w8 = rng.integers(-127, 128, (K, N)).astype(np.int8)
    return ort_session(matmul_model(w32, 1)), ort_session(matmul_integer_model(w8, 1, 3))


def lut_layer(M: int, K: int, N: int, fmt: str, bits: int, levels, target, rng):
    """A bound, compiled LUT layer (int8 requant output) and its uint8 input."""
    from lowbit.codegen.kernels import lut
    from lowbit.codegen.kernels.common import OutputRange

    spec = lut.LutSpec(M, K, N, fmt, bits, False, OutputRange(0, -128, 127), tuple(levels))
    if fmt == "codebook":
        w = lut.codebook_values(rng.integers(0, len(levels), (K, N)), levels)
    elif fmt == "ternary":
        w = rng.integers(-1, 2, (K, N))
    else:
        lo, hi = spec.value_range()
        w = rng.integers(lo, hi + 1, (K, N))
    packed = lut.pack_weights(spec, target, w, bias=rng.integers(-500, 500, N), a_zero_point=3,
                              mult=rng.integers(1 << 29, 1 << 30, N), shift=40)
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    return lut.build(spec, target).bind(packed), x


#: calls before each timed batch, so the layer's weights are back in cache after the other
#: layers of the round evicted them (all layers together exceed L3)
WARM_CALLS = 5


def ort_timer(session, feed, number: int):
    def run() -> float:
        for _ in range(WARM_CALLS):
            session.run(None, feed)
        start = time.perf_counter()
        for _ in range(number):
            session.run(None, feed)
        return (time.perf_counter() - start) / number
    return run


def tvm_timer(layer, x, number: int):
    evaluator = layer.timer(x, number=number, repeat=1)
    warm = layer.timer(x, number=WARM_CALLS, repeat=1)

    def run() -> float:
        warm()
        return evaluator().mean
    return run


def interleaved_medians(timers: dict, rounds: int) -> dict:
    """Median seconds per call of each timer, measured round-robin ``rounds`` times."""
    for t in timers.values():
        t()  # warm up
    samples = {name: [] for name in timers}
    for _ in range(rounds):
        for name, t in timers.items():
            samples[name].append(t())
    return {name: float(np.median(v)) for name, v in samples.items()}


def profile(M: int, K: int, N: int, target, rng, number: int, rounds: int) -> dict:
    """Split the w2 layer into table build, lookups and epilogue from extra shapes:
    ``one_tile`` (M, K, 64) = table + one tile of lookups; ``two_tiles`` (M, K, 128) adds one
    more tile; ``epilogue`` (M, 16, N) = one quad of lookups per tile, i.e. mostly requant and
    call overhead. Then table = 2 one_tile - two_tiles, lookups = full - table - epilogue
    (the extra tiles' weights sit in L2, the full layer's in L3: lookups include streaming)."""
    timers = {}
    shapes = {"full": (K, N), "epilogue": (16, N), "one_tile": (K, 64), "two_tiles": (K, 128)}
    for name, (k, n) in shapes.items():
        layer, x = lut_layer(M, k, n, "uint", 2, (), target, rng)
        timers[name] = tvm_timer(layer, x, number)
    t = interleaved_medians(timers, rounds)
    table = 2 * t["one_tile"] - t["two_tiles"]
    return {"table build": table, "lookups": t["full"] - table - t["epilogue"],
            "epilogue + call": t["epilogue"], "total": t["full"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--target", default="x86")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    from lowbit.codegen.kernels.common import set_num_threads
    from lowbit.codegen.target import resolve_target

    set_num_threads(1)
    target = resolve_target(args.target)
    M, K, N = args.m, args.k, args.n
    rng = np.random.default_rng(0)
    fp32, int8 = ort_sessions(K, N, rng)
    x8 = rng.integers(0, 256, (M, K)).astype(np.uint8)
    x32 = rng.standard_normal((M, K)).astype(np.float32)
    timers = {"ort fp32 MatMul": ort_timer(fp32, {"x": x32}, args.number),
              "ort int8 MatMulInteger": ort_timer(int8, {"x": x8}, args.number)}
    for label, fmt, bits, levels in LAYERS:
        layer, x = lut_layer(M, K, N, fmt, bits, levels, target, rng)
        timers[f"lut {label}"] = tvm_timer(layer, x, args.number)
    medians = interleaved_medians(timers, args.rounds)
    base8, base32 = medians["ort int8 MatMulInteger"], medians["ort fp32 MatMul"]
    print(f"{M}x{K}x{N}, 1 thread, cache-hot, target {target.name} {target.tvm_dict()}; "
          f"median of {args.rounds} interleaved rounds x {args.number} calls")
    print(f"{'layer':26s} {'ms':>8s} {'vs ORT int8':>12s} {'vs ORT fp32':>12s}")
    for name, sec in medians.items():
        print(f"{name:26s} {sec * 1e3:8.3f} {base8 / sec:11.2f}x {base32 / sec:11.2f}x")
    if args.profile:
        print("w2 profile (us):", {k: round(v * 1e6, 1) for k, v in
                                   profile(M, K, N, target, rng, args.number,
                                           args.rounds).items()})


if __name__ == "__main__":
    main()
