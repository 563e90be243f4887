"""Bench: whole quantized models with the kernels ``codegen.select.select_kernels`` picks.

For each preset the digits CNN (``examples/digits_cnn.onnx``, batch ``--batch``) is quantized
(no reconstruction) and compiled three times: every QConv / QMatMul on the ``reference`` te
kernel, the static family order (``measure=False``), and measured selection
(``measure=True``, cache in a temporary folder). Each build runs through the Relax VM; the
figure is the median of ``--repeat`` rounds of TVM's ``time_evaluator`` (one thread:
``TVM_NUM_THREADS=1``), cache-hot. Baseline: onnxruntime fp32 on the float model, one thread
(``intra_op_num_threads=1``). The machine is shared: expect noise. Per-layer choices and their
measured µs are printed too.

Run: ``python bench/bench_select.py [--presets int8 w4a8 w2a2] [--batch 8]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TVM_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
CNN = ROOT / "examples" / "digits_cnn.onnx"
CALIB = ROOT / "examples" / "digits_calib.npz"


def vm_us(ex, x: np.ndarray, repeat: int) -> float:
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    xt = tvm.runtime.tensor(x, dev)
    vm["main"](xt)
    res = vm.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=20)(xt)
    return float(np.median(res.results)) * 1e6


def ort_us(x: np.ndarray, repeat: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(CNN), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    rounds = []
    for _ in range(repeat):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.02:
            sess.run(None, {name: x})
            n += 1
        rounds.append((time.perf_counter() - start) / n)
    return float(np.median(rounds)) * 1e6


def main() -> None:
    import lowbit
    from lowbit.codegen.build import build
    from lowbit.codegen.kernels.bitserial import set_num_threads
    from lowbit.codegen.select import select_kernels
    from lowbit.compiler.recipes import preset
    from lowbit.ir import Op

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+",
                        default=["int8", "w4a8", "w1a8", "w2a2", "ternary", "pow2"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    set_num_threads(1)
    x = np.load(CALIB)["input"][:args.batch].astype(np.float32)
    if len(x) < args.batch:
        x = np.resize(x, (args.batch, *x.shape[1:])).astype(np.float32)
    base = ort_us(x, args.repeat)
    print(f"digits CNN, batch {args.batch}, 1 thread; onnxruntime fp32: {base:8.1f} us")
    print(f"{'preset':<8} {'reference':>10} {'static':>10} {'measured':>10} {'ORT/measured':>13}"
          "  per-layer choice (us)")
    cache = tempfile.mkdtemp(prefix="lowbit-kernels-")
    for name in args.presets:
        recipe = preset(name)
        recipe = replace(recipe, ptq=replace(recipe.ptq, reconstruct=False))
        graph = lowbit.quantize(CNN, recipe=recipe, calib=str(CALIB),
                                input_shapes={"input": tuple(x.shape)})
        times = {"reference": vm_us(build(graph, "x86"), x, args.repeat)}
        g = graph.copy()
        select_kernels(g, "x86", measure=False)
        times["static"] = vm_us(build(g, "x86"), x, args.repeat)
        g = graph.copy()
        choices = select_kernels(g, "x86", measure=True, cache_dir=cache)
        times["measured"] = vm_us(build(g, "x86"), x, args.repeat)
        layers = " ".join(f"{c.family}({c.us:.0f})" for c in choices.values()
                          if g.node_by_name(c.node).op in (Op.QCONV, Op.QMATMUL))
        print(f"{name:<8} {times['reference']:10.1f} {times['static']:10.1f} "
              f"{times['measured']:10.1f} {base / times['measured']:12.2f}x  {layers}")


if __name__ == "__main__":
    main()
