"""Bias correction (Nagel et al. 2019, "Data-Free Quantization"; Banner et al. 2019).

Quantizing ``W`` to ``W_q`` shifts a layer's expected output by ``(W_q - W) · E[x]``; adding the
opposite shift to the bias makes the quantized layer's output mean equal the float one:

    b' = b + (W - W_q) · E[x]

* linear, ``W`` of shape ``(C_out, K)`` (``y = W x + b``):
  ``b'_o = b_o + sum_k (W - W_q)[o, k] · E[x_k]``.
* conv, ``W`` of shape ``(C_out, C_in / group, k...)``: every input patch element of channel
  ``ci`` is taken to have mean ``E[x_ci]`` (the per-channel mean), so the kernel window sums out:
  ``b'_o = b_o + sum_{c, k...} (W - W_q)[o, c, k...] · E[x_{g(o) · C_in/group + c}]`` with
  ``g(o) = o // (C_out / group)`` the group of output channel ``o``. Zero padding and strided
  windows make the true patch mean differ slightly near the borders; the correction ignores that.
"""

from __future__ import annotations

import numpy as np

from ...ir.errors import QuantizationError, ShapeError

LAYER_KINDS = ("conv", "linear")


def corrected_bias(w, w_q, bias, x_mean_per_in_channel, kind: str = "conv",
                   groups: int = 1) -> np.ndarray:
    """Return ``b' = b + (W - W_q) · E[x]`` (module docstring) as float32 of shape ``(C_out,)``.

    ``w`` / ``w_q``: float and quantized (dequantized) weights of the same shape; ``bias``:
    ``(C_out,)`` or None (zero); ``x_mean_per_in_channel``: ``E[x]`` per input channel ``(C_in,)``
    (for linear, per input feature ``(K,)``); ``groups``: the conv group count.
    """
    if kind not in LAYER_KINDS:
        raise QuantizationError(f"bias correction: layer kind {kind!r} is not one of {LAYER_KINDS}")
    w = np.asarray(w, dtype=np.float64)
    w_q = np.asarray(w_q, dtype=np.float64)
    mean = np.asarray(x_mean_per_in_channel, dtype=np.float64)
    if w.shape != w_q.shape:
        raise ShapeError(
            f"bias correction: float weight {w.shape} and quantized weight {w_q.shape} differ; "
            "pass the dequantized weight of the same tensor")
    if kind == "linear" and (w.ndim != 2 or groups != 1):
        raise ShapeError(
            f"bias correction: linear weight must be (C_out, K) with groups=1, got {w.shape}, "
            f"groups={groups}")
    if kind == "conv" and w.ndim < 3:
        raise ShapeError(f"bias correction: conv weight must be (C_out, C_in/group, k...), "
                         f"got {w.shape}")
    c_out, c_in_group = w.shape[0], w.shape[1]
    if groups < 1 or c_out % groups:
        raise ShapeError(
            f"bias correction: {c_out} output channels do not split into {groups} groups")
    if mean.shape != (c_in_group * groups,):
        raise ShapeError(
            f"bias correction: input mean has shape {mean.shape}, expected "
            f"({c_in_group * groups},) = C_in/group {c_in_group} x group {groups}")
    b = np.zeros(c_out) if bias is None else np.asarray(bias, dtype=np.float64)
    if b.shape != (c_out,):
        raise ShapeError(f"bias correction: bias has shape {b.shape}, expected ({c_out},)")

    # Sum the error over the kernel window, then contract with the mean of the group's inputs.
    error = (w - w_q).reshape(c_out, c_in_group, -1).sum(axis=2)
    error = error.reshape(groups, c_out // groups, c_in_group)
    shift = np.einsum("goc,gc->go", error, mean.reshape(groups, c_in_group)).reshape(c_out)
    return (b + shift).astype(np.float32)
