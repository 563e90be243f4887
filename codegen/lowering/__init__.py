"""The legalize registry: one Relax lowering per IR op (and per kernel family).

A lowering is ``fn(ctx, node) -> relax.Expr | tuple[relax.Expr, ...]``: it reads the node's
frozen attrs, takes its inputs from ``ctx`` (:class:`LoweringContext`) and returns one Relax
expression per node output (a single expression for one output; a tuple-typed expression or a
tuple of expressions for several). The driver (:mod:`lowbit.codegen.lower`) emits and binds
them. Register with ``@register_lowering(Op.X)`` (the generic lowering of ``X``) or
``@register_lowering(Op.QMATMUL, kernel="bitserial")`` (the lowering used when a node carries
``node.meta["kernel"] == "bitserial"``). Quantized lowerings state their exact integer formula
in their docstrings.

Families: ``float_ops`` (``relax.op.*`` on float tensors, and the data-movement ops on any
dtype), ``quantized`` (``relax.call_tir`` of ``tvm.te`` PrimFuncs computing the integer
simulator's formulas: the generic "reference" kernel family) and ``families`` (QMatMul / QConv
on the scheduled kernels of ``lowbit.codegen.kernels``). All are imported at the bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...ir import Node, Op
from ...ir.errors import LoweringError

#: the kernel name of the generic lowerings (``node.meta["kernel"]`` absent or equal to it)
REFERENCE = "reference"

#: integer kernel weights from this size on are stored outside the library (per-channel
#: offsets and multipliers stay inside: they are small and do not shrink)
STORED_MIN_BYTES = 1024

LoweringFn = Callable[["LoweringContext", Node], object]
_LOWERINGS: dict[tuple[Op, str], LoweringFn] = {}


def register_lowering(*ops: Op, kernel: str = REFERENCE):
    """Register the decorated function as the lowering of ``ops`` for kernel ``kernel``."""

    def deco(fn: LoweringFn) -> LoweringFn:
        for op in ops:
            key = (Op(op), kernel)
            assert key not in _LOWERINGS, f"two lowerings for {op.value} / {kernel}"
            _LOWERINGS[key] = fn
        return fn

    return deco


def registered_ops(kernel: str = REFERENCE) -> frozenset[Op]:
    """Every op with a lowering for ``kernel``."""
    return frozenset(op for op, k in _LOWERINGS if k == kernel)


def has_lowering(op: Op, kernel: str) -> bool:
    """True when ``op`` has a lowering for kernel family ``kernel``."""
    return (Op(op), kernel) in _LOWERINGS


def kernel_of(node: Node) -> str:
    """The kernel family a node asks for (``node.meta["kernel"]``), default ``reference``."""
    name = node.meta.get("kernel") if node.meta else None
    return str(name) if name else REFERENCE


def get_lowering(node: Node) -> LoweringFn:
    """The lowering of ``node``: its kernel family's, else :class:`LoweringError`.

    A node naming a family (``node.meta["kernel"]``) must get that family's lowering — no
    silent fallback to the reference kernel. A family known to ``codegen.kernels`` but without
    a Relax lowering for this op is reported as such."""
    kernel = kernel_of(node)
    fn = _LOWERINGS.get((node.op, kernel))
    if fn is not None:
        return fn
    where = f"{node.op.value} node '{node.name}'"
    if kernel != REFERENCE:
        from ..kernels import get_family

        get_family(kernel)  # raises LoweringError for an unknown family name
        raise LoweringError(
            f"{where}: kernel family '{kernel}' has no Relax lowering for {node.op.value}; "
            f"register one with @register_lowering(Op.{node.op.name}, kernel='{kernel}') or "
            f"drop node.meta['kernel'] to use the reference kernel")
    raise LoweringError(
        f"{where}: no TVM lowering for op {node.op.value}; add one with "
        f"@register_lowering(Op.{node.op.name}) in lowbit/codegen/lowering/")


def fail(node: Node, message: str) -> LoweringError:
    """A LoweringError naming the node and its op."""
    return LoweringError(f"{node.op.value} node '{node.name}': {message}")


@dataclass
class LoweringContext:
    """What a lowering sees: the Relax ``BlockBuilder``, the target, and the Relax expression
    bound to every IR value lowered so far (graph inputs, constants, node outputs)."""

    bb: object
    target: object
    values: dict = field(default_factory=dict)
    #: ``[(name, relax.Var, ndarray)]`` when the kernels' weights are stored outside the library
    #: (:meth:`weight`), None to bind every constant inside it
    stored: list | None = None
    #: consumer node name -> the producers its lowering computes fused into one kernel
    #: (:mod:`.fused_sign`, :mod:`.fused_pool`); those producers are not lowered themselves
    fused: dict = field(default_factory=dict)

    def input(self, node: Node, index: int):
        """The Relax expression of input ``index`` of ``node`` (None for an absent input)."""
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        value = node.inputs[index]
        if value.name not in self.values:
            if value.const is None:
                raise fail(node, f"input {index} '{value.name}' has no producer, is no graph "
                                 "input and no constant; run the verifier")
            self.values[value.name] = self.constant(value.const)
        return self.values[value.name]

    def const_array(self, node: Node, index: int) -> np.ndarray | None:
        """The constant ndarray of input ``index`` (None if absent or not a constant)."""
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        return node.inputs[index].const

    def require_const(self, node: Node, index: int, what: str) -> np.ndarray:
        """The constant ndarray of input ``index``; LoweringError if it is not constant."""
        arr = self.const_array(node, index)
        if arr is None:
            raise fail(node, f"{what} (input {index}) must be a constant for codegen; "
                             "run constant folding first")
        return arr

    @staticmethod
    def constant(array) -> object:
        """A Relax constant of ``array`` (its numpy dtype kept)."""
        from tvm import relax

        arr = np.ascontiguousarray(array)
        return relax.const(arr, str(arr.dtype))

    def weight(self, array, name: str) -> object:
        """A kernel's weight array: a Relax constant, or -- when this lowering stores weights
        outside the library (``stored`` is a list) and ``array`` is an integer array of at
        least :data:`STORED_MIN_BYTES` -- a new parameter of ``main`` (appended to ``stored``
        with its value; the artifact keeps it at its information content,
        :mod:`lowbit.runtime.weights`) called ``name`` (``<node>:w<i>``: unique per graph).
        Use it only for arrays a ``call_tir`` reads as they are: a parameter is not
        constant-folded."""
        from tvm import relax

        arr = np.ascontiguousarray(array)
        if self.stored is None or arr.dtype.kind not in "iu" or arr.nbytes < STORED_MIN_BYTES:
            return self.constant(arr)
        var = relax.Var(name, relax.TensorType([int(d) for d in arr.shape], str(arr.dtype)))
        self.stored.append((name, var, arr))
        return var

    def emit_te(self, fn, *args, name: str = "kernel", **kwargs):
        """Emit ``relax.call_tir`` of the PrimFunc that ``te.create_prim_func`` makes from
        ``fn(*args)`` (args become ``te`` placeholders)."""
        return self.bb.emit_te(fn, *args, primfunc_name_hint=_identifier(name), **kwargs)


def out_dtype(node: Node, index: int = 0) -> str:
    """The numpy storage dtype name of output ``index`` (int4 -> ``int8``, float32 ...)."""
    return str(node.outputs[index].dtype.numpy)


def out_shape(node: Node, index: int = 0) -> tuple[int, ...]:
    return tuple(int(d) for d in node.outputs[index].shape)


def _identifier(name: str) -> str:
    text = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return text or "kernel"


# Importing the family modules registers their lowerings.
from . import families, float_ops, quantized  # noqa: F401
