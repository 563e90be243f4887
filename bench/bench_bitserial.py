"""Bench: one w1a1 (XNOR-popcount) layer vs onnxruntime fp32 MatMul and dynamic int8.

Whole layer, single thread, cache-hot (the same weights every run), in one process:

* lowbit bitserial: activation packing + popcount GEMM + bias + requant (one TVM function);
* onnxruntime fp32 ``MatMul`` (1 x K) @ (K x N);
* onnxruntime dynamic int8: ``quantize_dynamic`` of the same model (``DynamicQuantizeLinear`` +
  ``MatMulInteger`` + rescale).

Each figure is the median over ``--repeat`` rounds; a round times a batch of ``--number`` calls
of each contender back to back (interleaved, so a shared machine's noise hits all three alike).
Run: ``python bench/bench_bitserial.py [--m 1 --k 4096 --n 4096 --threads 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import batch_seconds, matmul_model, ort_session


def ort_sessions(w: np.ndarray, M: int, workdir: Path, threads: int):
    """(fp32 session, dynamic-int8 session) for y = x @ w with ``threads`` intra-op threads."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = workdir / "fp32.onnx", workdir / "int8.onnx"
    onnx.save(matmul_model(w, M), fp32_path)
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    return ort_session(fp32_path, threads), ort_session(int8_path, threads)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--target", default="x86")
    parser.add_argument("--threads", type=int, default=1, help="lowbit and onnxruntime threads")
    args = parser.parse_args(argv)

    from lowbit.codegen.kernels import bitserial
    from lowbit.codegen.target import resolve_target
    from lowbit.ir.dyadic import requantize

    M, K, N = args.m, args.k, args.n
    rng = np.random.default_rng(0)
    w = rng.choice(np.array([-1, 1], np.int8), size=(K, N))
    x = rng.choice(np.array([-1, 1], np.int8), size=(M, K))
    bias = rng.integers(-50, 50, N)
    mult, shift = rng.integers(1 << 29, 1 << 30, N), np.full(N, 36)

    target = resolve_target(args.target)
    bitserial.set_num_threads(args.threads)
    spec = bitserial.BitserialSpec(M, K, N, "bipolar", 1, "bipolar", 1,
                                   bitserial.OutputRange(0, -128, 127))
    start = time.perf_counter()
    kernel = bitserial.build(spec, target)
    build_s = time.perf_counter() - start
    layer = kernel.bind(bitserial.pack_weights(spec, target, w, bias=bias, mult=mult,
                                               shift=shift))
    expected = requantize(x.astype(np.int64) @ w.astype(np.int64) + bias, mult, shift, 0,
                          -128, 127, axis=1)
    assert np.array_equal(layer(x), expected), "bitserial layer is not bit-exact"

    timer = layer.timer(x, number=args.number, repeat=1)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = ort_sessions(w, M, Path(tmp), args.threads)
        feed = {"x": x.astype(np.float32)}
        fp32_number = max(1, args.number // 20)  # fp32 is ~100x slower: fewer calls per batch
        # Interleave the three in every round so machine noise hits them alike.
        rounds = [(float(timer().mean),
                   batch_seconds(lambda: fp32.run(None, feed), fp32_number),
                   batch_seconds(lambda: int8.run(None, feed), args.number))
                  for _ in range(args.repeat)]
    lowbit_s, fp32_s, int8_s = np.median(np.array(rounds), axis=0)

    print(f"layer {M}x{K}x{N} w1a1 (bipolar), target {target.name} "
          f"{dict(target.tvm_items)}, {args.threads} thread(s), cache-hot; build {build_s:.2f} s")
    print(f"  lowbit bitserial (pack+popcount+requant): {lowbit_s * 1e6:9.1f} us")
    print(f"  onnxruntime fp32 MatMul:                  {fp32_s * 1e6:9.1f} us  "
          f"ratio {fp32_s / lowbit_s:6.1f}x")
    print(f"  onnxruntime dynamic int8 (MatMulInteger): {int8_s * 1e6:9.1f} us  "
          f"ratio {int8_s / lowbit_s:6.1f}x")


if __name__ == "__main__":
    main()
