"""Import benchmark: a ~100 MB fp32 VGG-style ONNX model through import + default passes.

Builds (in a temporary directory) VGG-16's 13 conv layers, each followed by
BatchNormalization and ReLU, five max-pools, then a 512 -> 3072 -> 3072 -> 10 MLP head on a
32x32 input: about 25.7 M parameters (~103 MB of fp32 weights). Reports the median wall time of
``onnx.load``, ``import_onnx`` and ``default_pipeline()`` over ``--repeat`` runs, as a markdown
snippet on stdout. Target: import + passes under 10 s on the 2-core CI machine.

Usage::

    python bench/bench_import.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: VGG-16 conv widths; "M" is a 2x2 max-pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
HEAD = (3072, 3072, 10)
TARGET_SECONDS = 10.0


def build_model(seed: int = 0) -> onnx.ModelProto:
    """The VGG-style model described in the module docstring, with random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    x, channels = "x", 3
    for i, layer in enumerate(VGG16):
        if layer == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"pool{i}"
            continue
        std = np.sqrt(2.0 / (channels * 9))
        w = const(f"conv{i}.w", rng.standard_normal((layer, channels, 3, 3)) * std)
        b = const(f"conv{i}.b", rng.standard_normal(layer) * 0.01)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], pads=[1, 1, 1, 1]))
        bn = [const(f"bn{i}.{p}", v) for p, v in (
            ("scale", rng.uniform(0.5, 1.5, layer)), ("bias", rng.uniform(-0.1, 0.1, layer)),
            ("mean", rng.uniform(-0.1, 0.1, layer)), ("var", rng.uniform(0.5, 2.0, layer)))]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *bn], [f"bn{i}"]))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"]))
        x, channels = f"relu{i}", layer
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x, width = "flat", channels
    for j, out in enumerate(HEAD):
        w = const(f"fc{j}.w", rng.standard_normal((out, width)) * np.sqrt(2.0 / width))
        b = const(f"fc{j}.b", np.zeros(out))
        y = "y" if j == len(HEAD) - 1 else f"fc{j}"
        nodes.append(helper.make_node("Gemm", [x, w, b], [y], transB=1))
        if j < len(HEAD) - 1:
            nodes.append(helper.make_node("Relu", [y], [f"fc_relu{j}"]))
            y = f"fc_relu{j}"
        x, width = y, out
    graph = helper.make_graph(
        nodes, "vgg_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", HEAD[-1]])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    args = parser.parse_args(argv)

    from lowbit.compiler.onnx_import import import_onnx
    from lowbit.ir import Op
    from lowbit.passes import default_pipeline

    model = build_model()
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    times: dict[str, list[float]] = {"onnx.load": [], "import_onnx": [], "default passes": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vgg_bench.onnx")
        onnx.save(model, path)
        size_mb = os.path.getsize(path) / 1e6
        del model
        for _ in range(args.repeat):
            proto, t_load = _timed(onnx.load, path)
            graph, t_import = _timed(import_onnx, proto, input_shapes={"x": (1, 3, 32, 32)})
            nodes_before = len(graph)
            result, t_passes = _timed(default_pipeline(), graph)
            times["onnx.load"].append(t_load)
            times["import_onnx"].append(t_import)
            times["default passes"].append(t_passes)
            del proto
    optimized = result.graph
    medians = {k: statistics.median(v) for k, v in times.items()}
    total = medians["import_onnx"] + medians["default passes"]
    verdict = "meets" if total < TARGET_SECONDS else "MISSES"
    bns = sum(n.op == Op.BATCHNORM for n in optimized.nodes)
    print("### Import benchmark (`python bench/bench_import.py`)\n")
    print(f"VGG-16-style conv net + BN + 3-layer MLP head, {params / 1e6:.1f} M fp32 parameters, "
          f"{size_mb:.0f} MB file; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; "
          f"median of {args.repeat} runs.\n")
    print("| stage | seconds |")
    print("|---|---:|")
    for stage, seconds in medians.items():
        print(f"| {stage} | {seconds:.2f} |")
    print(f"| **import + passes** | **{total:.2f}** |\n")
    print(f"Nodes: {nodes_before} imported -> {len(optimized)} after passes "
          f"({bns} BatchNormalization left). Target < {TARGET_SECONDS:.0f} s: {verdict}.")
    return 0 if total < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
