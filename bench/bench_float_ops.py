"""Bench: single float ops, TVM default vs lowbit-scheduled vs onnxruntime fp32.

Each case is a one-op ONNX model (the same file for every contender): imported with
``lowbit.compiler.onnx_import.import_onnx``, lowered with ``lowbit.codegen.lower`` and compiled
twice for the ``x86`` host target: ``default`` (TVM 0.27's CPU pipeline, PrimFuncs left
unscheduled, libm ``exp``) and ``lowbit`` (:func:`lowbit.codegen.build.relax_pipeline`, i.e.
with ``lowbit.codegen.schedules`` and the fast float32 exp / sigmoid / softmax / erf / GELU
of ``lowbit.codegen.schedules.fastmath``). Both share lowbit's lowering, so a float32 conv
with constant weights is the output-channel-blocked ``packed_conv2d`` in both columns.
onnxruntime runs the same model. Same process, same thread count (``--threads``, default 1:
ORT ``intra_op_num_threads``, ``TVM_NUM_THREADS``), cache-hot (same input every call), inputs
resident. A round times ``--number`` back-to-back calls of each contender in turn
(interleaved, so noise on a shared machine hits all alike); figures are medians over
``--repeat`` rounds. Outputs are checked against onnxruntime first.

Run: ``python bench/bench_float_ops.py [--threads 1] [--only conv3x3 softmax]`` (``--only``
takes substrings of the case names: conv3x3, depthwise3x3, maxpool, avgpool, hard-swish,
sigmoid, softmax, layernorm, gelu, resize, elementwise).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _model(nodes, x_shape, y_shape, inits=(), opset: int = 17):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _const(name, array):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def cases() -> dict[str, tuple[object, tuple[int, ...]]]:
    """name -> (ONNX model, input shape)."""
    from onnx import helper

    rng = np.random.default_rng(0)
    n = helper.make_node
    out = {}
    w = rng.standard_normal((64, 64, 3, 3)) * 0.05
    out["conv3x3 56²·64"] = (_model(
        [n("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], (1, 64, 56, 56),
        (1, 64, 56, 56), [_const("w", w), _const("b", rng.standard_normal(64))]),
        (1, 64, 56, 56))
    dw = rng.standard_normal((32, 1, 3, 3))
    out["depthwise3x3 112²·32"] = (_model(
        [n("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=32)], (1, 32, 112, 112),
        (1, 32, 112, 112), [_const("w", dw), _const("b", rng.standard_normal(32))]),
        (1, 32, 112, 112))
    out["maxpool3x3/2 112²·64"] = (_model(
        [n("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        (1, 64, 112, 112), (1, 64, 56, 56)), (1, 64, 112, 112))
    out["global avgpool 7²·1280"] = (_model(
        [n("GlobalAveragePool", ["x"], ["y"])], (1, 1280, 7, 7), (1, 1280, 1, 1)),
        (1, 1280, 7, 7))
    out["hard-swish 112²·64"] = (_model(
        [n("HardSwish", ["x"], ["y"])], (1, 64, 112, 112), (1, 64, 112, 112)),
        (1, 64, 112, 112))
    out["sigmoid 112²·64"] = (_model(
        [n("Sigmoid", ["x"], ["y"])], (1, 64, 112, 112), (1, 64, 112, 112)),
        (1, 64, 112, 112))
    out["softmax 128×1000"] = (_model(
        [n("Softmax", ["x"], ["y"], axis=-1)], (128, 1000), (128, 1000)), (128, 1000))
    out["layernorm 128×768"] = (_model(
        [n("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)],
        (128, 768), (128, 768),
        [_const("s", rng.standard_normal(768)), _const("b", rng.standard_normal(768))]),
        (128, 768))
    out["layernorm 480×32 (short rows)"] = (_model(
        [n("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)],
        (480, 32), (480, 32),
        [_const("s", rng.standard_normal(32)), _const("b", rng.standard_normal(32))]),
        (480, 32))
    # GELU as PyTorch exports it (Div, Erf, Add, Mul, Mul): the digits transformer's MLP
    out["gelu-erf 60·8·256"] = (_model(
        [n("Div", ["x", "r2"], ["t0"]), n("Erf", ["t0"], ["t1"]), n("Add", ["t1", "one"], ["t2"]),
         n("Mul", ["x", "t2"], ["t3"]), n("Mul", ["t3", "half"], ["y"])],
        (60, 8, 256), (60, 8, 256),
        [_const("r2", 1.4142135), _const("one", 1.0), _const("half", 0.5)]), (60, 8, 256))
    out["resize nearest 2× 56²·64"] = (_model(
        [n("Resize", ["x", "", "scales"], ["y"], mode="nearest")], (1, 64, 56, 56),
        (1, 64, 112, 112), [_const("scales", [1, 1, 2, 2])]), (1, 64, 56, 56))
    out["elementwise chain 56²·64"] = (_model(
        [n("Mul", ["x", "a"], ["t0"]), n("Add", ["t0", "c"], ["t1"]), n("Relu", ["t1"], ["t2"]),
         n("Mul", ["t2", "x"], ["y"])], (1, 64, 56, 56), (1, 64, 56, 56),
        [_const("a", rng.standard_normal((1, 64, 1, 1))),
         _const("c", rng.standard_normal((1, 64, 1, 1)))]), (1, 64, 56, 56))
    return out


def compile_lowbit(model, schedule: bool):
    """The model compiled for the host by lowbit, with or without lowbit's schedules."""
    import tvm
    from lowbit.codegen.build import relax_pipeline
    from lowbit.codegen.lower import lower
    from lowbit.codegen.target import resolve_target
    from lowbit.compiler.onnx_import import import_onnx
    from tvm import relax

    target = resolve_target("x86")
    mod = lower(import_onnx(model), target)
    ex = tvm.compile(mod, target=target.tvm_target(),
                     relax_pipeline=relax_pipeline(target, schedule=schedule))
    return relax.VirtualMachine(ex, tvm.cpu())["main"]


def batch_seconds(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def _caller(main, xt):
    return lambda: main(xt)


def run_case(name, model, shape, threads, number, repeat):
    import onnxruntime as ort
    import tvm

    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    xt = tvm.runtime.tensor(x, tvm.cpu())
    fns = {"ort": lambda: sess.run(None, {"x": x})}
    for label, schedule in (("default", False), ("lowbit", True)):
        main = compile_lowbit(model, schedule)
        got = main(xt).numpy()
        err = float(np.max(np.abs(got - ref)))
        if err > 1e-3 * max(1.0, float(np.max(np.abs(ref)))):
            raise SystemExit(f"{name}: {label} differs from onnxruntime by {err}")
        fns[label] = _caller(main, xt)
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            samples[k].append(batch_seconds(fn, number))
    return {k: 1e3 * float(np.median(v)) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", nargs="*", help="substrings of case names to run")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    print(f"threads={args.threads}; median ms over {args.repeat} rounds of {args.number} calls;"
          " ratio = time / onnxruntime fp32 (lower is better)")
    print(f"{'op':28s} {'ORT fp32':>9s} {'TVM dflt':>9s} {'lowbit':>9s} {'dflt/ORT':>9s} "
          f"{'lowbit/ORT':>10s}")
    for name, (model, shape) in cases().items():
        if args.only and not any(s in name for s in args.only):
            continue
        t = run_case(name, model, shape, args.threads, args.number, args.repeat)
        print(f"{name:28s} {t['ort']:9.3f} {t['default']:9.3f} {t['lowbit']:9.3f} "
              f"{t['default'] / t['ort']:9.2f} {t['lowbit'] / t['ort']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
