"""lowbit.passes: graph rewrites with declared contracts, a Pipeline and a registry.

The quantization passes (``insert_fake_quant``, ``calibrate``, ``bias_correction``,
``reconstruct``, ``fold_scales``) take a recipe / calibration data and are sequenced by
:func:`lowbit.quantize`; they are registered here by name too, but imported lazily (the PTQ ones
need torch).

Default pipeline, in order::

    infer_shapes, constant_fold, canonicalize, fold_batchnorm, constant_fold, dead_code

infer_shapes first so every rule sees exact shapes; constant_fold before canonicalize so
parameter subgraphs are constants when Gemm/BN rewrites look for constant weights; the second
constant_fold folds what the rewrites exposed (e.g. a Transpose of a constant); dead_code last
removes what the rewrites orphaned and drops unused constants.
"""

from __future__ import annotations

from pathlib import Path

from .base import FixedPoint, Pass, PassResult, Pipeline
from .canonicalize import Canonicalize
from .constant_fold import ConstantFold
from .dead_code import DeadCode
from .decompose_batchnorm import DecomposeBatchNorm
from .fold_batchnorm import FoldBatchNorm
from .infer_shapes import InferShapes

#: pass name -> pass class
PASSES: dict[str, type[Pass]] = {
    cls.name: cls
    for cls in (InferShapes, ConstantFold, Canonicalize, FoldBatchNorm, DeadCode,
                DecomposeBatchNorm)
}

#: quantization passes: name -> "module:Class" (imported on demand by :func:`get_pass`)
QUANT_PASSES: dict[str, str] = {
    "insert_fake_quant": "insert_fake_quant:InsertFakeQuant",
    "calibrate": "calibrate:Calibrate",
    "bias_correction": "bias_correction:BiasCorrection",
    "reconstruct": "reconstruct:Reconstruct",
    "fold_scales": "fold_scales:FoldScales",
}


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under ``name`` (cleanup or quantization pass)."""
    if name in PASSES:
        return PASSES[name]
    if name in QUANT_PASSES:
        import importlib

        module, cls = QUANT_PASSES[name].split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    raise KeyError(f"unknown pass {name!r}; known: {sorted(PASSES) + sorted(QUANT_PASSES)}")


DEFAULT_PASSES = ("infer_shapes", "constant_fold", "canonicalize", "fold_batchnorm",
                  "constant_fold", "dead_code")


def default_pipeline(dump_dir: str | Path | None = None, verify: bool = True) -> Pipeline:
    """The default cleanup pipeline (order above), verifying after every pass."""
    return Pipeline([PASSES[name]() for name in DEFAULT_PASSES], verify=verify,
                    dump_dir=dump_dir)


__all__ = [
    "DEFAULT_PASSES",
    "PASSES",
    "QUANT_PASSES",
    "Canonicalize",
    "ConstantFold",
    "DeadCode",
    "DecomposeBatchNorm",
    "FixedPoint",
    "FoldBatchNorm",
    "InferShapes",
    "Pass",
    "PassResult",
    "Pipeline",
    "default_pipeline",
    "get_pass",
]
