"""``lowbit bench``: a compiled model side by side with onnxruntime fp32 and int8, in one process.

Rows (every one run on the same input batch with the same thread count):

* ``lowbit <preset>``  the model compiled by :func:`lowbit.compiler.driver.compile_model`,
  saved and run through :class:`lowbit.Session`;
* ``ORT fp32``         onnxruntime's CPU provider on the original model;
* ``ORT int8``         onnxruntime on a static int8 QDQ model from
  ``onnxruntime.quantization.quantize_static`` (after ``quant_pre_process``, which folds
  BatchNorm; per-channel int8 weights, uint8 activations, MinMax calibration) on the *same*
  calibration samples lowbit used.

Columns: latency (median of ``repeat`` timed runs after ``warmup`` untimed ones; ms per batch),
weight bytes (Conv / MatMul / Gemm weights with their scales and zero points: lowbit's
:func:`~lowbit.compiler.quantize.weight_size` ``packed``; ORT fp32: ``4 × elements``; ORT int8:
the initializers behind the QDQ model's weight ``DequantizeLinear`` nodes), and agreement with
ORT fp32 on the first output: max |difference| and argmax agreement (the fraction of rows,
over the last axis, with the same argmax).

The input batch is the first ``batch`` samples of ``calib`` (tiled when there are fewer); with no
``calib`` (preset none) it is uniform [0, 1) noise from a fixed seed, and ORT int8 is
calibrated on that noise (the table says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir.errors import CalibrationError, ExecutionError, InvalidModelError

#: seed of the noise inputs used when no calibration data is given
NOISE_SEED = 0


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall-clock statistics of ``repeat`` runs, in milliseconds (``std``: population)."""

    mean: float
    median: float
    min: float
    max: float
    std: float
    repeat: int

    @staticmethod
    def from_seconds(samples) -> Timing:
        ms = [1e3 * s for s in samples]
        if not ms:
            raise ExecutionError("timing needs at least one run; pass --repeat N with N >= 1")
        return Timing(statistics.fmean(ms), statistics.median(ms), min(ms), max(ms),
                      statistics.pstdev(ms), len(ms))

    def __str__(self) -> str:
        return (f"mean {self.mean:.3f} ms  median {self.median:.3f} ms  min {self.min:.3f} ms  "
                f"max {self.max:.3f} ms  std {self.std:.3f} ms  ({self.repeat} runs)")


def measure(fn: Callable[[], object], repeat: int, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing.from_seconds(samples)


def measure_interleaved(fns: list[Callable[[], object]], repeat: int, warmup: int = 1
                        ) -> list[Timing]:
    """One :class:`Timing` per function of ``fns``: each called ``warmup`` times untimed,
    then ``repeat`` rounds that call every function once, in turn. Side by side like this,
    a burst of load from another process slows every contender alike instead of whichever
    ran during it (measured on a shared 2-core machine: ORT fp32 on the digits CNN read
    0.65 and 1.12 ms in two back-to-back sequential runs)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, times in zip(fns, samples):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return [Timing.from_seconds(times) for times in samples]


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One runtime's result (agreement fields None where they do not apply)."""

    name: str
    latency: Timing
    weight_bytes: int
    max_abs_diff: float | None
    argmax_agreement: float | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class BenchReport:
    """The table :func:`render` prints."""

    model: str
    threads: int
    batch: tuple[tuple[str, tuple[int, ...]], ...]
    rows: tuple[BenchRow, ...]
    caption: str


# -- onnxruntime helpers (shared with the demo) -------------------------------------------------
def ort_session(model: str | os.PathLike | bytes, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads (inter-op 1) whose pool
    threads do not busy-wait after a run (``session.intra_op.allow_spinning = 0``): timed in
    interleaved rounds, spinning ORT threads take the cores the next contender's workers need
    (measured on 2 cores, the digits demo: lowbit fp32 1.2 ms alone, 55 ms right after a
    spinning ORT session)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice on the root logger; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ort_int8_model(model: str | os.PathLike, calib: Mapping[str, np.ndarray],
                   batch: int) -> bytes:
    """Serialized QDQ int8 model: ``quant_pre_process`` then ``quantize_static`` (module
    docstring) calibrated on ``calib`` (stacked samples) in batches of ``batch``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = list(calib)
    count = len(next(iter(calib.values())))
    feeds = [{n: np.ascontiguousarray(calib[n][i:i + batch]) for n in names}
             for i in range(0, count, batch)]

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(prefix="lowbit-ort-") as tmp, _quiet_root_logger():
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(model), str(pre))
            quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises assorted types
            raise ExecutionError(f"onnxruntime quantize_static failed on {str(model)!r}: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                                 ) from None
        return out.read_bytes()


def qdq_weight_bytes(model_bytes: bytes) -> int:
    """Bytes of the initializers behind weight ``DequantizeLinear`` nodes (x of rank >= 2,
    plus its scale and zero point) of a QDQ model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(model_bytes)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        if inits[node.input[0]].ndim < 2:
            continue  # biases (int32, rank 1)
        total += sum(inits[name].nbytes for name in node.input if name in inits)
    return total


def agreement(reference: np.ndarray, output: np.ndarray) -> tuple[float, float]:
    """``(max |output − reference|, fraction of rows whose argmax over the last axis agrees)``."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise ExecutionError(f"outputs differ in shape: {out.shape} vs the reference "
                             f"{ref.shape}")
    diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    if ref.ndim == 0 or ref.shape[-1] == 0:
        return diff, 1.0
    same = np.argmax(ref, axis=-1) == np.argmax(out, axis=-1)
    return diff, float(np.mean(same))


def load_samples(calib, names: list[str]) -> dict[str, np.ndarray]:
    """``{input name: stacked samples}`` from a ``.npz`` path or a dict."""
    if isinstance(calib, (str, os.PathLike)):
        path = Path(calib)
        if not path.is_file():
            raise CalibrationError(f"calib file {str(path)!r} does not exist; check the path")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    else:
        arrays = dict(calib)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationError(f"calibration data has no array {missing[0]!r}; it holds "
                               f"{', '.join(sorted(arrays)) or 'nothing'} and the model's "
                               f"inputs are {', '.join(names)}")
    return {n: arrays[n] for n in names}


def batch_feed(samples: Mapping[str, np.ndarray], specs) -> dict[str, np.ndarray]:
    """The first batch of ``samples`` shaped to the artifact's inputs (tiled when short)."""
    feed = {}
    for spec in specs:
        array = np.asarray(samples[spec.name])
        batch = spec.shape[0] if spec.shape else 1
        if array.shape[1:] != spec.shape[1:]:
            raise CalibrationError(f"samples of input {spec.name!r} have per-sample shape "
                                   f"{array.shape[1:]}, the model takes {spec.shape[1:]}")
        reps = -(-batch // len(array))
        feed[spec.name] = np.ascontiguousarray(
            np.concatenate([array] * reps)[:batch].astype(spec.dtype))
    return feed


def noise_feed(specs) -> dict[str, np.ndarray]:
    """Uniform [0, 1) inputs of the artifact's shapes (:data:`NOISE_SEED`)."""
    rng = np.random.default_rng(NOISE_SEED)
    return {s.name: rng.random(s.shape).astype(s.dtype) for s in specs}


# -- the benchmark ------------------------------------------------------------------------------
def bench(model: str | os.PathLike, quant: str = "w4a8", calib=None, recipe=None,
          input_shapes=None, target: str = "x86", threads: int | None = None,
          repeat: int = 50, warmup: int = 5, log=None) -> BenchReport:
    """Compile ``model`` and time it beside ORT fp32 / int8 (module docstring)."""
    from ..runtime.session import Session
    from .driver import compile_model
    from .quantize import weight_size

    if not isinstance(model, (str, os.PathLike)) or not Path(model).is_file():
        raise InvalidModelError(f"model file {str(model)!r} does not exist; check the path")
    if repeat < 1 or warmup < 0:
        raise ExecutionError(f"repeat must be >= 1 and warmup >= 0, got {repeat} / {warmup}")
    threads = threads or os.cpu_count() or 1
    result = compile_model(model, target, quant, calib, recipe, input_shapes, log=log)
    specs = result.artifact.inputs
    names = [s.name for s in specs]
    if calib is not None:
        samples = load_samples(calib, names)
        feed = batch_feed(samples, specs)
        source = f"first batch of {calib if isinstance(calib, (str, os.PathLike)) else 'calib'}"
    else:
        feed = noise_feed(specs)
        samples = feed
        source = f"uniform [0,1) noise (seed {NOISE_SEED}); ORT int8 calibrated on it"
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as tmp:
        path = result.artifact.save(Path(tmp) / "model.lbx")
        session = Session(path, threads=threads)
    fp32 = ort_session(model, threads)
    int8_bytes = ort_int8_model(model, samples, specs[0].shape[0] if specs[0].shape else 1)
    int8 = ort_session(int8_bytes, threads)

    reference = fp32.run(None, feed)[0]
    sizes = weight_size(result.graph)
    rows = []
    runs = [
        (f"lowbit {quant if recipe is None else 'recipe'}", lambda: session.run(None, feed)[0],
         sizes.packed, result.artifact.target.name),
        ("ORT fp32", lambda: fp32.run(None, feed)[0], sizes.fp32, "onnxruntime CPU"),
        ("ORT int8", lambda: int8.run(None, feed)[0], qdq_weight_bytes(int8_bytes),
         "quantize_static QDQ"),
    ]
    agreements = [agreement(reference, fn()) for _, fn, _, _ in runs]
    timings = measure_interleaved([fn for _, fn, _, _ in runs], repeat, warmup)
    for (name, _, nbytes, note), (diff, agree), timing in zip(runs, agreements, timings):
        rows.append(BenchRow(name, timing, nbytes, diff, agree, note))
    batch = tuple((s.name, s.shape) for s in specs)
    caption = (f"{threads} thread(s) each; median of {repeat} interleaved rounds after "
               f"{warmup} warm-up; input: {source}")
    return BenchReport(str(model), threads, batch, tuple(rows), caption)


def render(report: BenchReport):
    """The report as a rich ``Table``."""
    from rich.table import Table

    shapes = ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in report.batch)
    table = Table(title=f"lowbit bench: {Path(report.model).name} ({shapes})",
                  caption=report.caption)
    for header in ("runtime", "latency ms (median)", "min", "std", "weight bytes",
                   "max |diff| vs ORT fp32", "argmax agree", "notes"):
        table.add_column(header, justify="left" if header in ("runtime", "notes") else "right")
    for row in report.rows:
        t = row.latency
        table.add_row(row.name, f"{t.median:.3f}", f"{t.min:.3f}", f"{t.std:.3f}",
                      f"{row.weight_bytes:,}",
                      "-" if row.max_abs_diff is None else f"{row.max_abs_diff:.3g}",
                      "-" if row.argmax_agreement is None else f"{100 * row.argmax_agreement:.1f}%",
                      row.note)
    return table


__all__ = ["BenchReport", "BenchRow", "Timing", "agreement", "batch_feed", "bench", "load_samples",
           "measure", "measure_interleaved", "noise_feed", "ort_int8_model", "ort_session", "qdq_weight_bytes", "render"]
