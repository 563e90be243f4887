"""bias_correction: shift each quantized layer's bias by its expected quantization error.

Rule (Nagel et al. 2019; math in :func:`lowbit.passes.ptq.corrected_bias`): for every
quantized layer of a calibrated fake-quant graph, in graph order,

    b' = b + (W - W_q) · E[x]

with ``W`` the float weight, ``W_q = dequantize(quantize(W, qtype))`` its fake-quantized value
and ``E[x]`` the per-input-channel mean of the layer's input, collected on the calibration data
from the *partially corrected* model (sequential: earlier layers already corrected). Conv:
``E[x]`` averages over batch and spatial positions (channel axis 1); MatMul: over every row of
the ``(..., K)`` input, with ``W`` taken as ``(N, K)``. Only the bias constant changes (Conv
input 2, or the constant of the bias ``Add`` after a MatMul); a layer without a bias, or a
ConvTranspose, is skipped and ``meta["bias_correction"]`` on the weight FakeQuant says why.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Op
from ..ir.qformats import dequantize, quantize
from .base import Pass, PassResult
from .calibrate import as_calibration_set, capture_values
from .insert_fake_quant import QuantizedLayer, quantized_layers
from .ptq import corrected_bias


class BiasCorrection(Pass):
    """Sequential bias correction of every quantized layer (rule in the module docstring)."""

    name = "bias_correction"
    in_place = True

    def __init__(self, calib):
        self.calib = calib

    def run(self, graph: Graph) -> PassResult:
        layers = [layer for layer in quantized_layers(graph)
                  if "bias_correction" not in layer.weight_fq.meta]
        if not layers:
            return PassResult(graph, False)
        calib = as_calibration_set(graph, self.calib)
        for layer in layers:
            self._correct(graph, layer, calib)
        graph.forget_unused_constants()
        return PassResult(graph, True)

    def _correct(self, graph: Graph, layer: QuantizedLayer, calib) -> None:
        node, fq = layer.node, layer.weight_fq
        if node.op == Op.CONV_TRANSPOSE or layer.bias_site is None:
            fq.meta["bias_correction"] = ("skipped: no bias" if layer.bias_site is None
                                          else "skipped: ConvTranspose")
            return
        w = np.asarray(layer.weight.const, dtype=np.float64)
        w_q = dequantize(quantize(w, fq.attrs.qtype), fq.attrs.qtype).astype(np.float64)
        x_value = node.inputs[0]
        x = capture_values(graph, calib, [x_value], f"bias correction {node.name}")[x_value.name]
        if node.op == Op.MATMUL:
            mean = x.reshape(-1, w.shape[0]).mean(axis=0, dtype=np.float64)
            bias = corrected_bias(w.T, w_q.T, layer.bias, mean, kind="linear")
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            mean = x.mean(axis=axes, dtype=np.float64)
            bias = corrected_bias(w, w_q, layer.bias, mean, kind="conv", groups=node.attrs.group)
        shift = float(np.abs(bias - layer.bias).max())
        layer.set_bias(graph, bias)
        fq.meta["bias_correction"] = f"max |b' - b| = {shift:.4g}"
