"""Post-training quantization improvements: bias correction and layer-wise reconstruction.

Math over arrays only; the graph passes that collect a layer's calibration inputs and call these
functions live elsewhere. Reconstruction (AdaQuant / AdaRound) optimises in torch with
straight-through fake quantization on exactly the grid of :mod:`lowbit.ir.qformats`.
"""

from .bias_correction import corrected_bias
from .fake_quant_torch import (
    fake_quant,
    fake_quant_learnable,
    fake_quant_scales,
    quant_params,
    with_params,
)
from .reconstruct import ReconstructionResult, reconstruct_layer, reconstruct_layers

__all__ = [
    "ReconstructionResult",
    "corrected_bias",
    "fake_quant",
    "fake_quant_learnable",
    "fake_quant_scales",
    "quant_params",
    "reconstruct_layer",
    "reconstruct_layers",
    "with_params",
]
