"""``import lowbit.onnx_backend``: the ONNX backend (see :mod:`lowbit.compiler.onnx_backend`)."""
from .compiler.onnx_backend import *
from .compiler.onnx_backend import __all__  # noqa: F401
