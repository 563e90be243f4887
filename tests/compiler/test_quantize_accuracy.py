"""Accuracy of every quantization preset on the digits examples (the acceptance of issue 3).

Each model is quantized with :func:`lowbit.quantize` (default passes, insert_fake_quant,
calibrate on ``examples/digits_calib.npz``, the preset's PTQ, fold_scales) at a bound batch of
``BATCH`` and evaluated on the whole test split ``examples/digits_eval.npz`` (540 images) with

* the **integer simulator**: ``lowbit.run_reference`` on the folded integer graph, and
* the **fake-quant simulator**: ``lowbit.run_reference`` on the calibrated fake-quant graph
  (``quantize(..., fold=False)``).

The thresholds (drop in percentage points vs fp32, integer simulator) are the issue's: int8 <=
0.5, w4a8 <= 1.5, ternary / pow2 / codebook4 <= 3 (with reconstruction); the transformer's int8
and w4a8 (Softmax / LayerNorm float) <= 1.5. w2a8 / w1a8 / w2a2 / w1a1 are reported, not
enforced (``docs/quantization.md`` has the numbers). ``python
tests/compiler/test_quantize_accuracy.py`` prints the full tables.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import lowbit
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: bound batch: 540 eval images = 9 batches; 256 calibration images -> 4 batches (16 dropped)
BATCH = 60
#: model file -> file prefix of its calib/eval npz pair (each holds ``input``; eval adds labels)
MODELS = {"digits_cnn.onnx": "digits", "digits_transformer.onnx": "digits_transformer"}
CNN_THRESHOLDS = {"int8": 0.5, "w4a8": 1.5, "ternary": 3.0, "pow2": 3.0, "codebook4": 3.0}
TRANSFORMER_THRESHOLDS = {"int8": 1.5, "w4a8": 1.5}
REPORTED = ("w2a8", "w1a8", "w2a2", "w1a1")


@functools.cache
def _data(prefix: str):
    calib = np.load(EXAMPLES / f"{prefix}_calib.npz")["input"]
    evaluation = np.load(EXAMPLES / f"{prefix}_eval.npz")
    return calib, evaluation["input"], evaluation["labels"]


def _shape(model: str) -> tuple[int, ...]:
    return (BATCH, *_data(MODELS[model])[0].shape[1:])


def accuracy(graph, model: str) -> float:
    """Top-1 accuracy (%) of ``graph`` on the eval split, batch by batch."""
    _, images, labels = _data(MODELS[model])
    correct = 0
    for start in range(0, len(images), BATCH):
        logits = lowbit.run_reference(graph, {"input": images[start:start + BATCH]})["logits"]
        correct += int((logits.argmax(axis=1) == labels[start:start + BATCH]).sum())
    return 100.0 * correct / len(images)


@functools.cache
def fp32_accuracy(model: str) -> float:
    """Accuracy of the float graph (after the default passes)."""
    graph = lowbit.quantize(str(EXAMPLES / model), quant="none",
                            input_shapes={"input": _shape(model)})
    return accuracy(graph, model)


@functools.cache
def quantized_accuracy(model: str, preset: str, fold: bool = True) -> float:
    """Accuracy with ``preset``: integer simulator (fold) or fake-quant simulator."""
    calib, _, _ = _data(MODELS[model])
    graph = lowbit.quantize(str(EXAMPLES / model), quant=preset, calib={"input": calib},
                            input_shapes={"input": _shape(model)}, fold=fold)
    return accuracy(graph, model)


@pytest.mark.parametrize("preset", ["int8", "w4a8"])
def test_cnn_uniform_presets_within_threshold(preset):
    drop = fp32_accuracy("digits_cnn.onnx") - quantized_accuracy("digits_cnn.onnx", preset)
    assert drop <= CNN_THRESHOLDS[preset], f"{preset}: {drop:.2f} pt drop"


@pytest.mark.parametrize("preset", ["ternary", "pow2", "codebook4"])
def test_cnn_nonuniform_presets_with_reconstruction_within_threshold(preset):
    """These presets turn layer-wise reconstruction on (about 10 s each on one core); without
    it ternary loses ~28 pt."""
    drop = fp32_accuracy("digits_cnn.onnx") - quantized_accuracy("digits_cnn.onnx", preset)
    assert drop <= CNN_THRESHOLDS[preset], f"{preset}: {drop:.2f} pt drop"


@pytest.mark.parametrize("preset", ["int8", "w4a8"])
def test_transformer_keeps_softmax_layernorm_float_within_threshold(preset):
    model = "digits_transformer.onnx"
    calib, _, _ = _data(MODELS[model])
    graph = lowbit.quantize(str(EXAMPLES / model), quant=preset, calib={"input": calib},
                            input_shapes={"input": _shape(model)})
    ops = {node.op for node in graph.nodes}
    assert lowbit.Op.SOFTMAX in ops and lowbit.Op.LAYERNORM in ops
    drop = fp32_accuracy(model) - accuracy(graph, model)
    assert drop <= TRANSFORMER_THRESHOLDS[preset], f"{preset}: {drop:.2f} pt drop"


def test_integer_and_fake_quant_simulators_agree_on_int8_cnn():
    """The integer graph reproduces the fake-quant graph up to requant rounding: accuracies
    within one image (0.19 pt) of each other."""
    model = "digits_cnn.onnx"
    gap = abs(quantized_accuracy(model, "int8") - quantized_accuracy(model, "int8", fold=False))
    assert gap <= 100.0 / 540 + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("preset", REPORTED)
def test_reported_presets_run_and_two_bit_weights_stay_usable(preset):
    """Not thresholds of the issue: w2a8 (with reconstruction) stays within 2 pt; the others
    only have to run (w1a1 is at chance level, see docs/quantization.md)."""
    acc = quantized_accuracy("digits_cnn.onnx", preset)
    assert 0.0 <= acc <= 100.0
    if preset == "w2a8":
        assert fp32_accuracy("digits_cnn.onnx") - acc <= 2.0


def _table(model: str, presets) -> list[str]:
    lines = ["| preset | integer sim (%) | drop (pt) | fake-quant sim (%) | time (s) |",
             "|---|---:|---:|---:|---:|"]
    base = fp32_accuracy(model)
    lines.append(f"| fp32 | {base:.2f} | - | - | - |")
    for preset in presets:
        start = time.perf_counter()
        acc = quantized_accuracy(model, preset)
        seconds = time.perf_counter() - start
        fake = quantized_accuracy(model, preset, fold=False)
        lines.append(f"| {preset} | {acc:.2f} | {base - acc:+.2f} | {fake:.2f} | {seconds:.1f} |")
    return lines


#: (label, recipe, calibration) variants of the CNN shown in docs/quantization.md
ABLATIONS = (
    ("ternary, no reconstruction", {"preset": "ternary", "ptq": {"reconstruct": False}}, None),
    ("w2a8, no reconstruction", {"preset": "w2a8", "ptq": {"reconstruct": False}}, None),
    ("w4a8 + bias correction", {"preset": "w4a8", "ptq": {"bias_correction": True}}, None),
    ("w4a8 + reconstruction", {"preset": "w4a8", "ptq": {"reconstruct": True}}, None),
    ("w1a8, no reconstruction", {"preset": "w1a8", "ptq": {"reconstruct": False}}, None),
    ("w2a2, mse calibration", {"preset": "w2a2"}, "mse"),
    ("w2a2, percentile calibration", {"preset": "w2a2"}, "percentile"),
)


def _ablations() -> list[str]:
    model = "digits_cnn.onnx"
    calib, _, _ = _data(MODELS[model])
    lines = ["| variant | integer sim (%) | drop (pt) |", "|---|---:|---:|"]
    for label, recipe, method in ABLATIONS:
        graph = lowbit.quantize(str(EXAMPLES / model), recipe=recipe, calib={"input": calib},
                                input_shapes={"input": _shape(model)},
                                calibration=method or "minmax")
        acc = accuracy(graph, model)
        lines.append(f"| {label} | {acc:.2f} | {fp32_accuracy(model) - acc:+.2f} |")
    return lines


if __name__ == "__main__":  # pragma: no cover - prints the tables of docs/quantization.md
    cnn = ("int8", "w4a8", "ternary", "pow2", "codebook4") + REPORTED
    print("digits_cnn\n" + "\n".join(_table("digits_cnn.onnx", cnn)), flush=True)
    print("\ndigits_transformer\n" + "\n".join(_table("digits_transformer.onnx",
                                                       ("int8", "w4a8"))), flush=True)
    print("\ndigits_cnn variants\n" + "\n".join(_ablations()), flush=True)
