"""lowbit.compiler.onnx_import — ONNX model -> lowbit IR.

``import_onnx(model, input_shapes=None, constants=None) -> Graph``. Converters are grouped by
op family (``conv``, ``linear``, ``elementwise``, ``activation``, ``normalization``, ``reduce``,
``pool``, ``tensor``, ``resize``, ``quant``, ``constant``) and register themselves in
:mod:`.registry` when :func:`.registry.load_converters` imports them.
"""

from __future__ import annotations

from .importer import import_onnx
from .registry import load_converters, supported_ops

__all__ = ["import_onnx", "load_converters", "supported_ops"]
