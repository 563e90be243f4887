"""``lowbit.quantize``: a float model in, an integer (or calibrated fake-quant) graph out.

Pipeline (each step a pass; ``dump_ir`` writes the IR after each one)::

    import (ONNX) -> default passes (BN folded, Gemm -> MatMul + Add)
      -> insert_fake_quant(recipe) -> calibrate(calib, method)
      -> [bias_correction] -> [reconstruct]          (recipe.ptq; on by default for ternary,
                                                      pow2, codebook4, w2a8, w2a2)
      -> fold_scales                                  (skipped with fold=False)

The recipe is ``recipe`` when given (a :class:`~lowbit.compiler.recipes.Recipe`, a ``.toml`` /
``.json`` path, or a dict in the file schema), else ``preset(quant)``. ``calibration`` (minmax |
percentile | mse | entropy) picks the observer; the default, "minmax", defers to a recipe that
names another method (so a recipe's ``calibration = "mse"`` is not silently overridden).
``preset("none")`` (or any recipe that quantizes nothing) returns the float graph after the
default passes and needs no calibration data; every other recipe needs ``calib``.

:func:`weight_size` counts model weight bytes before (fp32) and after (packed at the format's
bits plus scales / zero points / codebooks, :func:`lowbit.ir.qformats.weight_bytes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from ..ir import Graph, Op
from ..ir.errors import QuantizationError
from ..ir.qformats import quantize as quantize_codes
from ..ir.qformats import weight_bytes
from .recipes import PRESETS, Recipe, load_recipe, preset

#: ops whose input 1 is a weight counted by :func:`weight_size`
_WEIGHT_OPS = frozenset({Op.CONV, Op.CONV_TRANSPOSE, Op.MATMUL, Op.QCONV, Op.QMATMUL})


def resolve_recipe(quant: str = "w4a8", recipe=None) -> Recipe:
    """``recipe`` (Recipe / path / dict) when given, else the preset ``quant``."""
    if recipe is None:
        if not isinstance(quant, str):
            raise QuantizationError(
                f"quant={quant!r}: expected a preset name, one of {', '.join(PRESETS)}")
        return preset(quant)
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(recipe)
    if isinstance(recipe, Mapping):
        return Recipe.from_dict(recipe)
    raise QuantizationError(
        f"recipe of type {type(recipe).__name__}: pass a Recipe, a .toml/.json path or a dict")


def _float_graph(model_or_graph, input_shapes) -> Graph:
    from ..passes import default_pipeline
    from .onnx_import import import_onnx

    if isinstance(model_or_graph, Graph):
        if input_shapes is not None:
            raise QuantizationError(
                "input_shapes applies to ONNX models only; a lowbit Graph has its shapes bound")
        graph = model_or_graph.copy()  # never mutate the caller's graph
    else:
        graph = import_onnx(model_or_graph, input_shapes=input_shapes)
    return default_pipeline()(graph).graph


def quantize(model_or_graph, quant: str = "w4a8", calib=None, recipe=None,
             calibration: str = "minmax", input_shapes=None, *, fold: bool = True,
             dump_ir: str | os.PathLike | None = None) -> Graph:
    """Quantize a model (ONNX path / bytes / ModelProto, or a lowbit Graph) and return the
    integer graph (``fold=False``: the calibrated fake-quant graph). Steps and arguments: see
    the module docstring. Raises :class:`QuantizationError` for an unknown preset or a missing
    ``calib``, :class:`CalibrationError` for bad calibration data."""
    from ..passes import Pipeline
    from ..passes.bias_correction import BiasCorrection
    from ..passes.calibrate import Calibrate, as_calibration_set
    from ..passes.insert_fake_quant import InsertFakeQuant
    from ..passes.reconstruct import Reconstruct

    plan = resolve_recipe(quant, recipe)
    if calibration != "minmax" or recipe is None:
        # "minmax" is the default: it defers to a recipe that names another method.
        plan = replace(plan, calibration=calibration)
    graph = _float_graph(model_or_graph, input_shapes)
    name = plan.preset or "custom recipe"
    if plan.quantizes_nothing:
        graph.meta["quant"] = name
        return graph
    if calib is None:
        raise QuantizationError(
            f"quantizing with {name!r} needs calibration data: pass calib= a .npz path, a dict "
            f"{{input name: samples}} or an iterable of feed dicts (CLI: --calib FILE.npz); "
            f"only preset 'none' runs without it")
    calib_set = as_calibration_set(graph, calib)
    passes = [InsertFakeQuant(plan), Calibrate(calib_set, plan.calibration)]
    if plan.ptq.bias_correction:
        passes.append(BiasCorrection(calib_set))
    if plan.ptq.reconstruct:
        passes.append(Reconstruct(calib_set, iters=plan.ptq.iters, seed=plan.ptq.seed))
    if fold:
        passes.append(_fold_scales())
    graph = Pipeline(passes, dump_dir=dump_ir)(graph).graph
    graph.meta["quant"] = name
    return graph


def _fold_scales():
    from ..passes.fold_scales import FoldScales

    return FoldScales()


@dataclass(frozen=True, slots=True)
class WeightSize:
    """Model weight bytes: ``fp32`` (4 bytes per element) and ``packed`` (quantized weights at
    their format's bits plus parameters; float weights at 4 bytes), over ``layers`` layers of
    which ``quantized`` are quantized. Biases are not counted (they stay float / int32)."""

    fp32: int
    packed: int
    layers: int
    quantized: int

    @property
    def ratio(self) -> float:
        """fp32 / packed (how many times smaller)."""
        return self.fp32 / self.packed if self.packed else 1.0

    def __str__(self) -> str:
        return (f"weights: fp32 {self.fp32:,} B -> packed {self.packed:,} B "
                f"({self.ratio:.1f}x smaller; {self.quantized}/{self.layers} layers quantized)")


def weight_size(graph: Graph) -> WeightSize:
    """Count weight bytes of every Conv / ConvTranspose / MatMul / QConv / QMatMul whose
    input 1 is a constant (integer graph: its ``.qtype`` gives the format) or a weight
    FakeQuant of a constant (fake-quant graph: the FakeQuant's QType)."""
    fp32 = packed = layers = quantized = 0
    for node in graph.nodes:
        if node.op not in _WEIGHT_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        w = node.inputs[1]
        producer = w.producer
        if producer is not None and producer.op == Op.FAKE_QUANT and producer.inputs[0].is_const:
            const, qtype = producer.inputs[0], producer.attrs.qtype
            codes = quantize_codes(const.const, qtype)
        elif w.is_const:
            const, qtype, codes = w, w.qtype, w.const
        else:
            continue
        layers += 1
        fp32 += 4 * const.numel
        if qtype is None:
            packed += 4 * const.numel
        else:
            quantized += 1
            packed += weight_bytes(np.asarray(codes), qtype)
    return WeightSize(fp32, packed, layers, quantized)


__all__ = ["WeightSize", "quantize", "resolve_recipe", "weight_size"]
