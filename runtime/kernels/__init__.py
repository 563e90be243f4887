"""Reference kernel registry: one numpy function per op, exact ONNX semantics.

A kernel is ``fn(node, inputs) -> list[np.ndarray]``: ``inputs`` holds one array per node input
(``None`` for an absent optional input), the result one array per node output. Kernels read
their parameters from ``node.attrs`` (the frozen dataclasses of :mod:`lowbit.ir.attrs`) and may
read the declared output dtypes from ``node.outputs``; they never mutate their inputs.

Register with ``@kernel(Op.X, ...)``; look up with :func:`get_kernel`. The families live one per
file (``linear``, ``conv``, ``elementwise``, ``normalization``, ``reduce``, ``pool``,
``movement``, ``resize``, ``quant``, ``quantized``) and are imported at the bottom of this module.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...ir import Node, Op
from ...ir.errors import ExecutionError

KernelFn = Callable[[Node, list], list[np.ndarray]]
_KERNELS: dict[Op, KernelFn] = {}


def kernel(*ops: Op):
    """Register the decorated function as the reference kernel of ``ops``."""

    def deco(fn: KernelFn) -> KernelFn:
        for op in ops:
            assert op not in _KERNELS, f"two reference kernels for {op.value}"
            _KERNELS[op] = fn
        return fn

    return deco


def get_kernel(op: Op) -> KernelFn:
    """The reference kernel of ``op``; :class:`ExecutionError` when there is none."""
    fn = _KERNELS.get(Op(op))
    if fn is None:
        raise ExecutionError(f"no reference kernel for op {Op(op).value}; add one with "
                             f"@kernel(Op.{Op(op).name}) in lowbit/runtime/kernels/")
    return fn


def registered_ops() -> frozenset[Op]:
    """Every op that has a reference kernel."""
    return frozenset(_KERNELS)


def fail(node: Node, message: str) -> ExecutionError:
    """An ExecutionError naming the node and its op."""
    return ExecutionError(f"{node.op.value} node '{node.name}': {message}")


# Importing the family modules registers their kernels.
from . import (  # noqa: F401
    conv,
    elementwise,
    linear,
    movement,
    normalization,
    pool,
    quant,
    quantized,
    reduce,
    resize,
)
