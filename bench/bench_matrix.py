"""Issue-4 benchmark matrix: lowbit's kernel families side by side with numpy, ORT and TVM.

One process, every contender on the same shapes, thread counts and cache modes:

GEMV / GEMM ``y = x @ w``, x (M, K), w (K, N), for M in {1, 16, 128} and (N x K) in
{4096 x 4096, 11008 x 4096, 768 x 3072}:

* ``numpy fp32``      ``np.matmul(x, w, out=y)`` (BLAS threads set with threadpoolctl);
* ``ORT fp32``        onnxruntime ``MatMul`` with constant weights;
* ``ORT int8``        onnxruntime ``MatMulInteger`` (uint8 x with a zero point, constant int8
                      w, int32 out: *no* requant, a lighter layer than lowbit's);
* ``TVM fp32``        the fp32 ONNX model through ``tvm.relax.frontend.onnx.from_onnx`` +
                      ``tvm.compile`` with ``{"kind": "llvm", "mcpu": <host cpu>}`` (TVM's
                      default pipeline, no tuning). It runs at ~30 MFLOP/s, so it is timed
                      cache-hot only, within a time budget, and only where the estimate
                      ``M x t(M=1)`` is under 2 s; elsewhere the table shows that estimate, a
                      lower bound (measured 10.8 s against an estimated 4.1 s at 16x4096x4096);
* lowbit families, whole layer (activation repack / tables, kernel, zero-point offset,
  per-channel dyadic requant to 8-bit codes, one TVM function called through TVM's FFI with
  resident tensors): ``int8 w8a8`` (``vpdpbusd``), ``LUT w2a8`` (T-MAC style ``vpshufb``
  tables), ``bitserial w1a1`` (XNOR-popcount), ``shift-add pow2 4b`` (true shift-add,
  ``vpsllvw``) and ``pow2->int8 4b`` (the same pow2 nibbles mapped to int8 for ``vpdpbusd``).

ResNet-18 3x3 convs (stride 1, pad 1, batch 1): 56^2 64->64, 28^2 128->128, 14^2 256->256,
7^2 512->512 for ``ORT fp32`` (``Conv``), ``ORT int8`` (``ConvInteger``, uint8 x and w with
zero points, int32 out) and ``lowbit int8 conv`` (im2col + the int8 GEMM + requant). Convs run
cache-hot only: their weights (37 KB .. 2.4 MB int8) are read ~OH*OW times per call, so the
layer is compute-bound, and a DRAM rotation would need up to ~1,800 ORT sessions.

Threads: 1 and 2 (ORT ``intra_op_num_threads``, TVM's pool via the families'
``set_num_threads``, numpy via threadpoolctl). Cache modes: ``hot`` (one weight copy, the same
every call) and ``dram`` (calls rotate over ``ceil(2 x LLC / weight bytes)`` copies of each
contender's weights, so together they exceed twice the last-level cache read from
``/sys/devices/system/cpu/cpu0/cache``; a weight bigger than that is one copy: hot = dram).

Timing: a batch is ``number`` back-to-back calls after one untimed call (``number`` sized so a
batch takes ~``--batch-ms``); each round times one batch of every contender in turn
(interleaved, so a shared machine's noise hits all alike); figures are the median over
``--rounds`` rounds. Every call goes through Python (ORT through IOBinding with pre-bound
input / output, TVM through its FFI), so ~1-5 us of call overhead is in every figure.
Each lowbit layer is checked bit-exact against ``lowbit.ir.dyadic.requantize`` (M = 1).
The load average (/proc/loadavg) is printed before and after; when it exceeds the core
count the run says it is noisy.

Run: ``python bench/bench_matrix.py [--quick]`` (``--quick``: 1 x 4096 x 4096 and the
56^2 conv, 1 thread, < 2 min; the full matrix is bounded to ~10 min).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("TVM_NUM_THREADS", "2")  # the pool's first size caps later resizes

import numpy as np
from _common import batch_seconds

GEMM_M = (1, 16, 128)
GEMM_NK = ((4096, 4096), (11008, 4096), (768, 3072))
#: ResNet-18 3x3 convs: (C = OC, H = W)
RESNET_CONVS = ((64, 56), (128, 28), (256, 14), (512, 7))
THREADS = (1, 2)
MODES = ("hot", "dram")
#: contenders whose time the ratio columns divide by
BASE_FP32, BASE_INT8 = "ORT fp32", "ORT int8"
X_ZERO_POINT = 128
#: TVM fp32 (unscheduled, ~30 MFLOP/s): run when the estimated call is under MAX_CALL_S, timed
#: in rounds within BUDGET_S, or from one call when a call exceeds ONE_CALL_S
TVM_FP32_MAX_CALL_S, TVM_FP32_BUDGET_S, TVM_FP32_ONE_CALL_S = 2.0, 3.0, 0.5


# -- machine facts ------------------------------------------------------------------------------
def last_level_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size of the highest-level data/unified cache of cpu0 (32 MiB if unreadable)."""
    best = (0, 32 << 20)
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            path = os.path.join(root, entry)
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(path, "level")) as f:
                level = int(f.read())
            with open(os.path.join(path, "size")) as f:
                text = f.read().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            size = int(text.rstrip("KMG")) * scale
            best = max(best, (level, size))
    except OSError:
        pass
    return best[1]


def loadavg() -> float:
    """The 1-minute load average (nan if unreadable)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return float("nan")


# -- timing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Contender:
    """One column of a table: ``calls`` are per-weight-copy zero-argument callables (one for
    cache-hot); ``weight_bytes`` the bytes of one copy; ``note`` replaces the timing (not
    timed); ``max_rounds`` caps the rounds of a slow contender (0: no cap)."""

    name: str
    calls: list[Callable[[], object]]
    weight_bytes: int
    note: str = ""
    max_rounds: int = 0

    def runner(self) -> Callable[[], object]:
        """One call per invocation, rotating over the weight copies."""
        if len(self.calls) == 1:
            return self.calls[0]
        cycle = itertools.cycle(self.calls)
        return lambda: next(cycle)()


def copies_for(weight_bytes: int, llc: int) -> int:
    """Weight copies whose total exceeds twice the last-level cache (at least one)."""
    return max(1, -(-2 * llc // max(1, weight_bytes)))


def batch_number(fn, batch_s: float) -> int:
    """Calls per batch so that a batch takes about ``batch_s`` (after two warm-up calls)."""
    fn()
    start = time.perf_counter()
    fn()
    one = time.perf_counter() - start
    return int(min(500, max(1, round(batch_s / max(one, 1e-7)))))


def interleaved_medians(contenders: list[Contender], rounds: int, batch_s: float) -> dict:
    """Median seconds per call of every timed contender over interleaved rounds."""
    timed = [(c, c.runner()) for c in contenders if not c.note]
    numbers = {c.name: batch_number(fn, batch_s) for c, fn in timed}
    samples: dict[str, list[float]] = {c.name: [] for c, _ in timed}
    for r in range(rounds):
        for c, fn in timed:
            if c.max_rounds and r >= c.max_rounds:
                continue
            samples[c.name].append(batch_seconds(fn, numbers[c.name]))
    return {name: float(np.median(v)) for name, v in samples.items()}


# -- onnxruntime --------------------------------------------------------------------------------
def ort_call(node, inputs, output, inits, feed: np.ndarray, out: np.ndarray, threads: int):
    """A zero-argument call of a one-node ORT model through IOBinding (input and output bound
    once to numpy buffers), ``threads`` intra-op threads."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph([node], "layer", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    binding.bind_cpu_input(inputs[0].name, feed)
    binding.bind_ortvalue_output(output.name, ort.OrtValue.ortvalue_from_numpy(out))
    return lambda: session.run_with_iobinding(binding)


def ort_matmul_calls(x32, x8, weights32, weights8, threads: int):
    """(fp32 MatMul calls, int8 MatMulInteger calls), one per weight copy."""
    from onnx import TensorProto, helper, numpy_helper

    (M, K), N = x32.shape, weights32[0].shape[1]
    y32, y8 = np.empty((M, N), np.float32), np.empty((M, N), np.int32)
    out32 = helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])
    out8 = helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])
    in32 = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])]
    in8 = [helper.make_tensor_value_info("x", TensorProto.UINT8, [M, K])]
    fp32 = [ort_call(helper.make_node("MatMul", ["x", "w"], ["y"]), in32, out32,
                     [numpy_helper.from_array(w, "w")], x32, y32, threads) for w in weights32]
    zx = numpy_helper.from_array(np.array(X_ZERO_POINT, np.uint8), "zx")
    int8 = [ort_call(helper.make_node("MatMulInteger", ["x", "w", "zx"], ["y"]), in8, out8,
                     [numpy_helper.from_array(w, "w"), zx], x8, y8, threads) for w in weights8]
    return fp32, int8


# -- TVM fp32 (relax, default pipeline) ---------------------------------------------------------
def tvm_fp32_call(x32: np.ndarray, w32: np.ndarray):
    """The fp32 MatMul through ``from_onnx`` + ``tvm.compile`` for the host CPU (weights passed
    as a graph input, resident)."""
    import tvm
    from onnx import TensorProto, helper
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    (M, K), N = x32.shape, w32.shape[1]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [K, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    cpu = tvm.get_global_func("target.llvm_get_system_cpu")()
    target = tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    vm = relax.VirtualMachine(tvm.compile(from_onnx(model), target=target), tvm.cpu())
    main, x_t, w_t = vm["main"], tvm.runtime.tensor(x32), tvm.runtime.tensor(w32)
    return lambda: main(x_t, w_t)


# -- lowbit families ----------------------------------------------------------------------------
def ffi_calls(kernel, packed, x: np.ndarray, copies: int, a_dtype: str, out_shape, out_dtype):
    """Zero-argument calls of a compiled family kernel, one per bound weight copy (``bind``
    uploads a fresh copy of the packed parameters each time)."""
    import tvm

    dev = tvm.cpu()
    x_t = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=a_dtype), dev)
    y_t = tvm.runtime.tensor(np.empty(out_shape, out_dtype), dev)
    fn = kernel.lib["main"]
    calls = []
    for _ in range(copies):
        params = kernel.bind(packed).params
        calls.append(lambda p=params: fn(x_t, *p, y_t))
    return calls, y_t


@dataclass(frozen=True)
class GemmLayer:
    """A lowbit layer ready to time: compiled kernel, packed weights, input codes, and what the
    bit-exactness check needs (integer weight values, zero point, bias, dyadic mult)."""

    name: str
    kernel: object
    packed: object
    x: np.ndarray
    w: np.ndarray
    a_zero_point: int
    bias: np.ndarray
    mult: np.ndarray
    weight_bytes: int


#: the dyadic shift of every benchmarked layer (mult in [2^29, 2^30): a ~2^-10..2^-11 scale)
SHIFT = 40


def lowbit_gemm_layers(M: int, K: int, N: int, target, rng) -> list[GemmLayer]:
    """The lowbit family layers of the matrix for one shape (requant to 8-bit codes)."""
    from lowbit.codegen.kernels import bitserial, lut, shiftadd
    from lowbit.codegen.kernels import int8 as k8

    mult = rng.integers(1 << 29, 1 << 30, N)
    bias = rng.integers(-500, 500, N)
    x8 = rng.integers(0, 256, (M, K)).astype(np.uint8)
    layers = []

    def add(name, spec, module, w, x, zx, weights_attr):
        extra = {} if zx is None else {"a_zero_point": zx}
        packed = module.pack_weights(spec, target, w, bias=bias, mult=mult, shift=SHIFT, **extra)
        layers.append(GemmLayer(name, module.build(spec, target), packed, x, w, zx or 0, bias,
                                mult, getattr(packed, weights_attr).nbytes))

    add("lowbit int8 w8a8", k8.Int8Spec(M, K, N, 8, "uint8", k8.OutputRange(0, 0, 255)), k8,
        rng.integers(-128, 128, (K, N)).astype(np.int8), x8, X_ZERO_POINT, "w")
    add("lowbit LUT w2a8", lut.LutSpec(M, K, N, "uint", 2, False, lut.OutputRange(0, -128, 127)),
        lut, rng.integers(0, 4, (K, N)).astype(np.int8), x8, X_ZERO_POINT, "wq")
    add("lowbit bitserial w1a1",
        bitserial.BitserialSpec(M, K, N, "bipolar", 1, "bipolar", 1,
                                bitserial.OutputRange(0, -128, 127)),
        bitserial, rng.choice(np.array([-1, 1], np.int8), size=(K, N)),
        rng.choice(np.array([-1, 1], np.int8), size=(M, K)), None, "planes")
    wp = rng.choice(shiftadd.pow2_values(4, False), size=(K, N)).astype(np.int8)
    for variant, label in (("shift", "lowbit shift-add pow2 4b"),
                           ("int8", "lowbit pow2->int8 4b")):
        spec = shiftadd.ShiftAddSpec(M, K, N, 4, False, variant,
                                     requant=shiftadd.OutputRange(0, 0, 255))
        add(label, spec, shiftadd, wp, x8, X_ZERO_POINT, "weights")
    return layers


def verify_layers(layers: list[GemmLayer]) -> None:
    """Every layer's output equals the integer simulator's ``requantize`` (raises otherwise)."""
    from lowbit.ir.dyadic import requantize

    for layer in layers:
        spec = layer.kernel.spec
        acc = (layer.x.astype(np.int64) - layer.a_zero_point) @ layer.w.astype(np.int64)
        out = spec.requant
        want = requantize(acc + layer.bias, layer.mult, np.full(spec.N, SHIFT), out.zero_point,
                          out.lo, out.hi, axis=1)
        got = layer.kernel.bind(layer.packed)(layer.x)
        if not np.array_equal(got, want):
            raise AssertionError(f"{layer.name} {spec.M}x{spec.K}x{spec.N} is not bit-exact")


# -- contenders of one table cell group ---------------------------------------------------------
def gemm_contenders(M, K, N, threads, mode, llc, state) -> list[Contender]:
    """Every contender of one (shape, threads, mode); ``state`` holds the shape's weights."""
    hot = mode == "hot"
    x32, w32, w8 = state["x32"], state["w32"], state["w8"]
    n32, n8 = (1, 1) if hot else (copies_for(w32.nbytes, llc), copies_for(w8.nbytes, llc))
    w32_copies = [w32] + [w32.copy() for _ in range(n32 - 1)]
    w8_copies = [w8] + [w8.copy() for _ in range(n8 - 1)]
    y = np.empty((M, N), np.float32)

    out = [Contender("numpy fp32", [lambda w=w: np.matmul(x32, w, out=y) for w in w32_copies],
                     w32.nbytes)]
    fp32, int8 = ort_matmul_calls(x32, state["x8"], w32_copies, w8_copies, threads)
    out += [Contender(BASE_FP32, fp32, w32.nbytes), Contender(BASE_INT8, int8, w8.nbytes),
            tvm_fp32_contender(M, K, N, threads, mode, state)]
    for layer in state["layers"]:
        spec = layer.kernel.spec
        calls, _ = ffi_calls(layer.kernel, layer.packed, layer.x,
                             1 if hot else copies_for(layer.weight_bytes, llc), spec.a_dtype,
                             (M, N), spec.out_dtype)
        out.append(Contender(layer.name, calls, layer.weight_bytes))
    return out


def tvm_fp32_contender(M, K, N, threads, mode, state) -> Contender:
    """TVM fp32, cache-hot: compiled and timed when ``M = 1`` or when the estimate
    ``M x t(M = 1)`` is at most :data:`TVM_FP32_MAX_CALL_S` (the estimate is a lower bound:
    10.8 s measured against 4.1 s estimated at 16 x 4096 x 4096); a call over
    :data:`TVM_FP32_ONE_CALL_S` is reported from one timed call; otherwise the estimate."""
    name = "TVM fp32"
    if mode != "hot":
        return Contender(name, [], 0, note="= hot")
    per_row = state["tvm_fp32_row_s"].get((K, N, threads))
    if M > 1 and (per_row is None or M * per_row > TVM_FP32_MAX_CALL_S):
        return Contender(name, [], 0, note=f"est. > {M * per_row:.0f} s" if per_row else "skip")
    call = tvm_fp32_call(state["x32"], state["w32"])
    call()
    start = time.perf_counter()
    call()
    one = time.perf_counter() - start
    if M == 1:
        state["tvm_fp32_row_s"][(K, N, threads)] = one
    if one > TVM_FP32_ONE_CALL_S:
        return Contender(name, [], 0, note=f"{format_time(one)} (1 call)")
    return Contender(name, [call], state["w32"].nbytes,
                     max_rounds=max(1, int(TVM_FP32_BUDGET_S / max(one, 1e-6))))


def conv_contenders(C: int, HW: int, threads: int, target, rng) -> list[Contender]:
    """ORT fp32 Conv, ORT ConvInteger and lowbit int8 conv for one ResNet-18 3x3 conv."""
    from lowbit.codegen.kernels import int8 as k8
    from onnx import TensorProto, helper, numpy_helper

    spec = k8.ConvSpec(1, C, HW, HW, C, 3, 3, (1, 1), (1, 1, 1, 1),
                       requant=k8.OutputRange(0, 0, 255))
    x8 = rng.integers(0, 256, spec.in_shape).astype(np.uint8)
    w8 = rng.integers(-128, 128, (C, C, 3, 3)).astype(np.int8)
    x32 = (x8.astype(np.float32) - X_ZERO_POINT) / 64
    w32 = w8.astype(np.float32) / 64
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    out_shape = list(spec.out_shape)
    fp32 = ort_call(helper.make_node("Conv", ["x", "w"], ["y"], **attrs),
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x32.shape))],
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape),
                    [numpy_helper.from_array(w32, "w")], x32,
                    np.empty(out_shape, np.float32), threads)
    # ORT's CPU ConvInteger takes uint8 weights: w + 128 with weight zero point 128
    int8 = ort_call(helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], **attrs),
                    [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x8.shape))],
                    helper.make_tensor_value_info("y", TensorProto.INT32, out_shape),
                    [numpy_helper.from_array((w8.astype(np.int16) + 128).astype(np.uint8), "w"),
                     numpy_helper.from_array(np.array(X_ZERO_POINT, np.uint8), "zx"),
                     numpy_helper.from_array(np.array(128, np.uint8), "zw")],
                    x8, np.empty(out_shape, np.int32), threads)
    packed = k8.pack_conv_weights(spec, target, w8, a_zero_point=X_ZERO_POINT,
                                  mult=rng.integers(1 << 29, 1 << 30, C), shift=SHIFT)
    kernel = k8.build_conv(spec, target, X_ZERO_POINT)
    calls, _ = ffi_calls(kernel, packed, x8, 1, "uint8", spec.out_shape, spec.out_dtype)
    return [Contender(BASE_FP32, [fp32], w32.nbytes), Contender(BASE_INT8, [int8], w8.nbytes),
            Contender("lowbit int8 conv", calls, packed.w.nbytes)]


# -- tables -------------------------------------------------------------------------------------
def format_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def cell(name: str, med: dict, notes: dict) -> str:
    """``time (x vs ORT fp32 / x vs ORT int8)``; the note when not timed."""
    if name in notes:
        return notes[name]
    t = med[name]
    ratios = ""
    if name not in (BASE_FP32, BASE_INT8):
        parts = [f"{med[b] / t:.2f}x" for b in (BASE_FP32, BASE_INT8) if b in med]
        ratios = " (" + " / ".join(parts) + ")"
    return f"{format_time(t)}{ratios}"


def print_table(title: str, columns: list[str], rows: list[tuple[str, dict, dict]],
                shape_header: str = "M x K x N") -> None:
    """One markdown table: a row per shape, a column per contender."""
    print(f"\n**{title}** -- cells: time (speed-up vs {BASE_FP32} / vs {BASE_INT8})\n")
    print(f"| {shape_header} | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for label, med, notes in rows:
        print(f"| {label} | " + " | ".join(cell(c, med, notes) if (c in med or c in notes)
                                            else "-" for c in columns) + " |")


# -- driver -------------------------------------------------------------------------------------
def set_threads(n: int) -> None:
    """``n`` threads for TVM's pool (the families' ``set_num_threads``) and for numpy's BLAS
    (threadpoolctl, left in place until the next call); ORT sessions take it per session."""
    from lowbit.codegen.kernels.common import set_num_threads
    from threadpoolctl import threadpool_limits

    set_num_threads(n)
    threadpool_limits(n)


def run_gemms(args, target, llc: int) -> None:
    results: dict[tuple[int, str], list] = {(t, m): [] for t in args.threads for m in args.modes}
    columns: list[str] = []
    tvm_rows: dict = {}
    for N, K in args.nk:
        for M in sorted(args.m):
            start = time.perf_counter()
            rng = np.random.default_rng(M * 7 + N)
            state = {"x32": rng.standard_normal((M, K), np.float32),
                     "w32": rng.standard_normal((K, N), np.float32),
                     "x8": rng.integers(0, 256, (M, K)).astype(np.uint8),
                     "w8": rng.integers(-128, 128, (K, N)).astype(np.int8),
                     "layers": lowbit_gemm_layers(M, K, N, target, rng),
                     "tvm_fp32_row_s": tvm_rows}
            if M == 1:
                verify_layers(state["layers"])
            for threads in args.threads:
                set_threads(threads)
                for mode in args.modes:
                    contenders = gemm_contenders(M, K, N, threads, mode, llc, state)
                    med = interleaved_medians(contenders, args.rounds, args.batch_ms / 1e3)
                    notes = {c.name: c.note for c in contenders if c.note}
                    columns += [c.name for c in contenders if c.name not in columns]
                    label = f"{M}x{K}x{N}"
                    results[(threads, mode)].append((label, med, notes))
                    del contenders
                    gc.collect()
            print(f"  {M}x{K}x{N} done in {time.perf_counter() - start:.1f} s", flush=True)
            del state
            gc.collect()
    for (threads, mode), rows in results.items():
        print_table(f"GEMM/GEMV, {threads} thread(s), {mode}", columns, rows)


def run_convs(args, target) -> None:
    columns = [BASE_FP32, BASE_INT8, "lowbit int8 conv"]
    for threads in args.threads:
        set_threads(threads)
        rows = []
        for C, HW in args.convs:
            rng = np.random.default_rng(C)
            contenders = conv_contenders(C, HW, threads, target, rng)
            rows.append((f"{HW}x{HW}x{C}->{C}", interleaved_medians(
                contenders, args.rounds, args.batch_ms / 1e3), {}))
        print_table(f"ResNet-18 3x3 conv, {threads} thread(s), hot", columns, rows,
                    "H x W x C -> OC")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1x4096x4096 and the 56^2 conv, 1 thread, hot + dram (< 2 min)")
    parser.add_argument("--m", type=int, nargs="+", default=list(GEMM_M))
    parser.add_argument("--nk", nargs="+", default=[f"{n}x{k}" for n, k in GEMM_NK],
                        help="N x K weight shapes")
    parser.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--no-conv", action="store_true")
    parser.add_argument("--no-gemm", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-ms", type=float, default=15.0)
    parser.add_argument("--target", default="x86")
    args = parser.parse_args(argv)
    args.nk = [tuple(int(v) for v in s.split("x")) for s in args.nk]
    args.convs = list(RESNET_CONVS)
    if args.quick:
        args.m, args.nk, args.threads, args.convs = [1], [(4096, 4096)], [1], [RESNET_CONVS[0]]
        args.rounds = min(args.rounds, 5)
    if max(args.threads) > int(os.environ["TVM_NUM_THREADS"]):
        os.environ["TVM_NUM_THREADS"] = str(max(args.threads))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from lowbit.codegen.target import resolve_target

    target = resolve_target(args.target)
    llc = last_level_cache_bytes()
    cores = os.cpu_count() or 1
    load_before = loadavg()
    start = time.perf_counter()
    print(f"target {target.name} {target.tvm_dict()}; {cores} CPUs; last-level cache "
          f"{llc >> 20} MiB (dram mode: weight copies > {2 * llc >> 20} MiB); median of "
          f"{args.rounds} interleaved rounds of ~{args.batch_ms:g} ms batches; "
          f"load average before: {load_before:.2f}", flush=True)
    if not args.no_gemm:
        run_gemms(args, target, llc)
    if not args.no_conv:
        run_convs(args, target)
    load_after = loadavg()
    noisy = max(load_before, load_after) > cores
    print(f"\nwall {time.perf_counter() - start:.0f} s; load average before {load_before:.2f}, "
          f"after {load_after:.2f} on {cores} CPUs"
          + (" -- NOISY: the machine was busy with other work, treat ratios as approximate"
             if noisy else ""))
    print("Notes: ORT int8 returns int32 with no requant (a lighter layer than lowbit's); "
          "TVM fp32 is TVM's default pipeline (untuned); 'est. > X s': M x t(M=1), a lower bound; "
          "'= hot' / a missing dram figure: compute-bound or a single copy already exceeds "
          "2 x LLC.")


if __name__ == "__main__":
    main()
