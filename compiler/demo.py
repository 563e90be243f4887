"""``lowbit demo``: the digits CNN compiled for this host in several presets, against onnxruntime.

The model and data ship inside the package (``<lowbit>/examples``): ``digits_cnn.onnx``,
``digits_calib.npz`` (256 training images, the calibration set) and ``digits_eval.npz`` (the
540-image test split with ``labels``). Each lowbit row compiles the model for the ``x86`` host
target with input ``(BATCH, 1, 8, 8)``, saves the artifact, loads it with
:class:`lowbit.Session` and classifies the whole test split in batches of :data:`BATCH` (the
last batch zero-padded, padded rows ignored). Rows:

* ``lowbit none / int8 / w4a8``  the presets as they are;
* ``lowbit ternary``             the ternary preset, with its layer-wise reconstruction (~18 s
  of the demo's ~35 s on 2 cores); ``fast=True`` (``lowbit demo --fast``) turns
  reconstruction off (~15 s in all, and a much worse accuracy: ~71 % against ~99 %), and the
  table says so;
* ``ORT fp32`` / ``ORT int8``    onnxruntime on the original model / on its ``quantize_static``
  QDQ model calibrated on the same 256 images (:func:`lowbit.compiler.bench.ort_int8_model`).

Columns: test accuracy (top-1 over the 540 images), weight bytes (as in ``lowbit bench``),
latency (median ms per batch of :data:`BATCH`, same thread count for all, every row timed in
the same interleaved rounds: :func:`lowbit.compiler.bench.measure_interleaved`) and the compile
time.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..ir.errors import InvalidModelError

BATCH = 60
MODEL = "digits_cnn.onnx"
CALIB = "digits_calib.npz"
EVAL = "digits_eval.npz"


def examples_dir() -> Path:
    """``<installed lowbit package>/examples`` (the repo root is the package)."""
    import lowbit

    return Path(lowbit.__file__).parent / "examples"


def _recipes(fast: bool):
    """``(row name, preset, recipe or None, note)`` of the lowbit rows."""
    from .recipes import preset

    import importlib.util

    ternary, ternary_note = None, "layer-wise reconstruction"
    if fast or importlib.util.find_spec("torch") is None:
        # Reconstruction optimizes in torch (the optional [ptq] extra); without it the demo says
        # so in the table instead of failing.
        ternary = preset("ternary")
        ternary = replace(ternary, ptq=replace(ternary.ptq, reconstruct=False))
        ternary_note = ("no reconstruction (--fast)" if fast else
                        "no reconstruction: torch not installed (pip install 'lowbit[ptq]')")
    return (
        ("lowbit none", "none", None, "fp32 compiled by TVM"),
        ("lowbit int8", "int8", None, "w8a8 per-channel"),
        ("lowbit w4a8", "w4a8", None, "first/last layer int8"),
        ("lowbit ternary", "ternary", ternary, ternary_note),
    )


def _reduced_range(graph) -> bool:
    """Whether every quantized layer of the int8 ``graph`` has 7-bit weights (the compile
    target turned ``reduce_range`` on)."""
    from ..ir import Op

    bits = {n.inputs[1].qtype.bits for n in graph.nodes
            if n.op in (Op.QCONV, Op.QMATMUL) and n.inputs[1].qtype is not None}
    return bits == {7}


@dataclass(frozen=True, slots=True)
class DemoRow:
    """One row of the demo table (``compile_s`` 0 for onnxruntime rows: no compile step)."""

    name: str
    accuracy: float
    weight_bytes: int
    latency_ms: float
    compile_s: float
    note: str


@dataclass(frozen=True, slots=True)
class DemoReport:
    rows: tuple[DemoRow, ...]
    threads: int
    samples: int
    caption: str


def demo(threads: int | None = None, repeat: int = 50, fast: bool = False,
         log=None) -> DemoReport:
    """Build and measure every row (module docstring); ``log`` is a driver StageLog."""
    from ..runtime.session import Session
    from .bench import measure_interleaved, ort_int8_model, ort_session, qdq_weight_bytes
    from .driver import StageLog, compile_model
    from .eval_data import padded_batches
    from .quantize import weight_size

    root = examples_dir()
    model, calib_path, eval_path = root / MODEL, root / CALIB, root / EVAL
    for path in (model, calib_path, eval_path):
        if not path.is_file():
            raise InvalidModelError(f"demo file {str(path)!r} is missing; reinstall lowbit or "
                                    f"regenerate it with examples/train_digits.py")
    threads = threads or os.cpu_count() or 1
    with np.load(eval_path) as data:
        images, labels = data["input"], data["labels"]
    with np.load(calib_path) as data:
        calib = {"input": data["input"]}
    shapes = {"input": (BATCH, *images.shape[1:])}
    first = np.ascontiguousarray(next(padded_batches(images, BATCH))[0])

    rows = []
    fp32_bytes = 0
    with tempfile.TemporaryDirectory(prefix="lowbit-demo-") as tmp:
        for name, quant, recipe, note in _recipes(fast):
            stage_log = StageLog() if log is None else log
            result = compile_model(model, "x86", quant, None if quant == "none" else calib,
                                   recipe, shapes, log=stage_log)
            compile_s = sum(s for _, s in result.times)
            path = result.artifact.save(Path(tmp) / f"{quant}.lbx")
            session = Session(path, threads=threads)
            sizes = weight_size(result.graph)
            fp32_bytes = sizes.fp32
            predict = _runner(session)
            if quant == "int8" and _reduced_range(result.graph):
                note = "w7a8 per-channel (reduce_range: AVX2, no VNNI)"
            rows.append((DemoRow(name, _top1(predict, images, labels), sizes.packed, 0.0,
                                 compile_s, note), predict))
    fp32 = ort_session(model, threads)
    int8_bytes = ort_int8_model(model, calib, BATCH)
    int8 = ort_session(int8_bytes, threads)
    for name, session, nbytes, note in (
            ("ORT fp32", fp32, fp32_bytes, "onnxruntime CPU"),
            ("ORT int8", int8, qdq_weight_bytes(int8_bytes), "quantize_static QDQ")):
        predict = _runner(session)
        rows.append((DemoRow(name, _top1(predict, images, labels), nbytes, 0.0, 0.0, note),
                     predict))
    # every contender timed side by side, in interleaved rounds
    timings = measure_interleaved([lambda p=predict: p(first) for _, predict in rows], repeat)
    rows = [replace(row, latency_ms=t.median) for (row, _), t in zip(rows, timings)]
    caption = (f"digits test split: {len(labels)} images, batches of {BATCH}; latency: median "
               f"of {repeat} interleaved rounds of one batch, {threads} thread(s) each; "
               f"compile: import .. "
               f"link" + ("; --fast: ternary without reconstruction" if fast else ""))
    return DemoReport(tuple(rows), threads, len(labels), caption)


def _runner(session):
    """``x -> logits`` for a lowbit Session or an onnxruntime InferenceSession (same call)."""
    return lambda x: session.run(None, {"input": x})[0]


def _top1(predict, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``predict`` over ``images`` in padded batches of :data:`BATCH`."""
    from .eval_data import padded_batches

    correct = 0
    done = 0
    for chunk, real in padded_batches(images, BATCH):
        predicted = np.argmax(predict(chunk)[:real], axis=-1)
        correct += int(np.sum(predicted == labels[done:done + real]))
        done += real
    return correct / len(labels)


def render(report: DemoReport):
    """The report as a rich ``Table``."""
    from rich.table import Table

    table = Table(title="lowbit demo: digits CNN on this host", caption=report.caption)
    for header in ("model", "test accuracy", "weight bytes", "latency ms", "compile s", "notes"):
        table.add_column(header, justify="left" if header in ("model", "notes") else "right")
    for row in report.rows:
        table.add_row(row.name, f"{100 * row.accuracy:.2f}%", f"{row.weight_bytes:,}",
                      f"{row.latency_ms:.3f}", f"{row.compile_s:.1f}" if row.compile_s else "-",
                      row.note)
    return table


__all__ = ["BATCH", "DemoReport", "DemoRow", "demo", "examples_dir", "render"]
