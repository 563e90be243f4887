"""Compile-time benchmark: ``lowbit.compile`` of a 60-conv ResNet-style net, per stage, cold.

The model (built with ``onnx.helper``, random weights, input 1x3x64x64): four stages of 15
3x3 convs each (60 convs), every conv followed by BatchNormalization and ReLU. A stage opens
with a transition conv (3 -> 16 channels at stride 1, then 16 -> 32 -> 64 -> 128 at stride 2)
and continues with 7 residual blocks ``relu(x + bn(conv(relu(bn(conv(x))))))``; then
GlobalAveragePool, Flatten and a 128 -> 10 Gemm head. 2.85 M parameters.

For each preset (``none``, ``int8``, ``w4a8`` -- w4a8 runs no reconstruction) a *fresh Python
process* runs ``lowbit.compiler.driver.compile_model(model, target="x86", quant=P,
calib=...)`` once (cold: nothing compiled before in that process; the ``import lowbit, tvm``
time is reported apart) and reports the driver's stage times (import, passes, quantize,
lower, compile) and the artifact's sizes: the compiled library, the stored kernel weights
(:mod:`lowbit.runtime.weights`) and the whole ``.lbx``. Calibration: ``--calib-samples`` (default 8) uniform [0, 1) images.
Issue 4 goal: the whole compile <= 60 s on the 2-core machine. Prints a markdown table and
the load average before / after (the machine is shared: a high load inflates the figures).
Run: ``python bench/bench_compile_time.py [--presets none int8 w4a8] [--calib-samples 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PRESETS = ("none", "int8", "w4a8")
STAGE_NAMES = ("import", "passes", "quantize", "lower", "compile")
STAGE_CHANNELS = (16, 32, 64, 128)
BLOCKS_PER_STAGE = 7
INPUT_SHAPE = (1, 3, 64, 64)
GOAL_SECONDS = 60.0


def build_model(seed: int = 0):
    """The 60-conv model of the module docstring (an ``onnx.ModelProto``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = {"conv": 0, "t": 0}

    def fresh(prefix: str) -> str:
        counter["t"] += 1
        return f"{prefix}_{counter['t']}"

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(x: str, cin: int, cout: int, stride: int, relu: bool) -> str:
        counter["conv"] += 1
        i = counter["conv"]
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))
        y = fresh("conv")
        nodes.append(helper.make_node("Conv", [x, const(f"w{i}", w)], [y], name=f"conv_{i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[stride, stride]))
        bn = fresh("bn")
        nodes.append(helper.make_node(
            "BatchNormalization",
            [y, const(f"g{i}", rng.uniform(0.5, 1.5, cout)),
             const(f"b{i}", rng.normal(0, .1, cout)), const(f"m{i}", rng.normal(0, .1, cout)),
             const(f"v{i}", rng.uniform(.5, 1.5, cout))],
            [bn], name=f"bn_{i}", epsilon=1e-5))
        if not relu:
            return bn
        out = fresh("relu")
        nodes.append(helper.make_node("Relu", [bn], [out]))
        return out

    x, cin = "input", INPUT_SHAPE[1]
    for s, cout in enumerate(STAGE_CHANNELS):
        x = conv_bn(x, cin, cout, 1 if s == 0 else 2, relu=True)
        cin = cout
        for _ in range(BLOCKS_PER_STAGE):
            h = conv_bn(x, cout, cout, 1, relu=True)
            h = conv_bn(h, cout, cout, 1, relu=False)
            added, out = fresh("add"), fresh("relu")
            nodes.append(helper.make_node("Add", [x, h], [added]))
            nodes.append(helper.make_node("Relu", [added], [out]))
            x = out
    assert counter["conv"] == 60, counter
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    nodes.append(helper.make_node(
        "Gemm", ["flat", const("fc_w", rng.standard_normal((10, cin)) * 0.1),
                 const("fc_b", np.zeros(10))], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet60", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                          list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def run_one(model_path: str, preset: str, calib_samples: int) -> dict:
    """Compile once in this (fresh) process; the driver's stage times and the wall total."""
    start = time.perf_counter()
    import tvm  # noqa: F401  (timed apart: every compile pays it once per process)
    from lowbit.compiler.driver import compile_model

    import_s = time.perf_counter() - start
    calib = None
    if preset != "none":
        rng = np.random.default_rng(1)
        calib = {"input": rng.random((calib_samples, *INPUT_SHAPE[1:]), dtype=np.float32)}
    start = time.perf_counter()
    result = compile_model(model_path, target="x86", quant=preset, calib=calib)
    total = time.perf_counter() - start
    kernels: dict[str, int] = {}
    for row in result.artifact.plan:
        kernels[row.kernel] = kernels.get(row.kernel, 0) + 1
    return {"preset": preset, "python_import_s": import_s, "total_s": total,
            "stages": dict(result.times), "payload_bytes": len(result.artifact.payload),
            "stored_bytes": result.artifact.stored_weight_bytes,
            "file_bytes": len(result.artifact.to_bytes()), "kernels": kernels}


def loadavg() -> str:
    """The 1/5/15-minute load averages from /proc/loadavg."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # child process: one cold compile, JSON on the last stdout line
        print(json.dumps(run_one(args.one[0], args.one[1], args.calib_samples)))
        return

    import onnx

    load_before = loadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet60.onnx")
        model = build_model()
        onnx.save(model, path)
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        print(f"model: 60 3x3 conv + BN + ReLU, residual, input {INPUT_SHAPE}, "
              f"{params / 1e6:.2f} M parameters, {os.path.getsize(path) / 1e6:.1f} MB; "
              f"{os.cpu_count()} CPUs; load average before: {load_before}", flush=True)
        for preset in args.presets:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--one", path, preset,
                 "--calib-samples", str(args.calib_samples)],
                capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                print(f"  {preset}: FAILED ({tail})", flush=True)
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {preset}: {results[-1]['total_s']:.1f} s", flush=True)
    load_after = loadavg()

    print("\n| preset | " + " | ".join(STAGE_NAMES) + " | **total** | import lowbit+tvm | "
          "kernels (plan) | library | stored weights | .lbx |")
    print("|---|" + "---:|" * (len(STAGE_NAMES) + 2) + "---|---:|---:|---:|")
    for r in results:
        cells = [f"{r['stages'].get(s, 0.0):.2f}" for s in STAGE_NAMES]
        kernels = ", ".join(f"{k} x{n}" for k, n in sorted(r["kernels"].items())) or "-"
        print(f"| {r['preset']} | " + " | ".join(cells) + f" | **{r['total_s']:.2f}** | "
              f"{r['python_import_s']:.2f} | {kernels} | {r['payload_bytes'] / 1e6:.2f} MB | "
              f"{r['stored_bytes'] / 1e6:.2f} MB | {r['file_bytes'] / 1e6:.2f} MB |")
    worst = max((r["total_s"] for r in results), default=float("nan"))
    verdict = "met" if worst <= GOAL_SECONDS else "NOT met"
    busy = max(_one_minute(load_before), _one_minute(load_after)) > (os.cpu_count() or 1) - 0.5
    print(f"\nseconds, one cold compile each (fresh process); goal <= {GOAL_SECONDS:.0f} s: "
          f"{verdict} (slowest {worst:.1f} s). Load average before: {load_before}, "
          f"after: {load_after}" + (" -- the machine was busy: figures are inflated"
                                   if busy else ""))


def _one_minute(load: str) -> float:
    try:
        return float(load.split()[0])
    except (ValueError, IndexError):
        return 0.0


if __name__ == "__main__":
    main()
