"""The lowbit error hierarchy.

Defined in the lowest layer so every stage (importer, passes, codegen, runtime) can raise them
without importing upward. Every message says *what* failed, *where* (node, op, input name, opset)
and *how to fix it*, on one line: the CLI prints ``str(error)`` and exits with code 2.
"""

from __future__ import annotations


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""

    #: short label the CLI prints before the message
    label = "error"

    def __init__(self, message: str):
        # One line, always: the CLI contract is a single line on stderr.
        super().__init__(" ".join(str(message).split()))


class InvalidModelError(LowbitError):
    """The model file is unreadable, malformed, truncated, of the wrong type, or unsafe."""

    label = "invalid model"


class UnsupportedOpError(LowbitError):
    """One or more ops (or op variants / attribute values) have no lowbit converter."""

    label = "unsupported op"


class NonConstantInputError(UnsupportedOpError):
    """An input that lowbit needs as a compile-time constant (a shape, axes, pads...) is computed
    at run time. ``value_name`` names the ONNX value so callers (e.g. the onnx backend) can bind
    it."""

    label = "non-constant input"

    def __init__(self, message: str, value_name: str):
        super().__init__(message)
        self.value_name = value_name


class ShapeError(LowbitError):
    """Shapes or dtypes do not line up, or a dynamic dimension was left unbound."""

    label = "shape error"


class IRError(LowbitError):
    """The IR broke an invariant (raised by the verifier or by IR mutation helpers)."""

    label = "IR error"


class PassError(LowbitError):
    """A pass failed; the message names the pass and the ones that ran before it."""

    label = "pass error"


class CalibrationError(LowbitError):
    """Calibration data is missing, misnamed, misshaped, non-finite or too small."""

    label = "calibration error"


class QuantizationError(LowbitError):
    """A quantization request is invalid (unknown preset, impossible format...)."""

    label = "quantization error"


class LoweringError(LowbitError):
    """A node could not be lowered to a kernel for the requested target."""

    label = "lowering error"


class ArtifactError(LowbitError):
    """A compiled artifact is truncated, tampered with, foreign or of another version."""

    label = "artifact error"


class ExecutionError(LowbitError):
    """Running a graph failed: wrong feed names, shapes or dtypes, or a kernel error."""

    label = "execution error"
