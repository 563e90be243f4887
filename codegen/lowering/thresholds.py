"""Binary activations of integer codes through a monotone float chain, as channel thresholds.

Rule: a binary ``Requantize`` (sign) of a float tensor ``v`` computed from integer codes ``q``
(codes or accumulators) by ``DequantizeLinear`` and then only elementwise ops that are monotone
per channel (:data:`MONOTONE`: BatchNormalization; Add, Sub, Mul by a constant; Div of the
chain by a constant; Relu, Clip, LeakyRelu with α ≥ 0, Identity) is, per channel c,
``y = clamp(f_c(q) < 0 ? −1 : +1, lo, hi)`` with ``f_c`` monotone: every step of ``f_c`` is
monotone in exact arithmetic and IEEE rounding is monotone, so the predicate
``f_c(q) ≥ 0`` switches at most once over q's integer range. The layer is then::

    y[.., c, ..] = q[.., c, ..] >= t[c] ? hi_code[c] : lo_code[c]

one compare and one select per element on the codes (one byte each for int8 codes), instead
of converting to float and running the chain. ``t``, ``hi_code``, ``lo_code`` are found at
compile time by running the chain's own reference kernels (lowbit's float semantics, the
simulator's) on probe tensors: every code of a dtype of at most 16 bits, checking the single
switch per channel (else the chain stays float); bisection over wider accumulator dtypes. So
the compiled layer equals the integer simulator bit for bit (Larq / Riptide fold BatchNorm +
sign into thresholds the same way, in float).

Constant operands must not vary along any axis but the channel axis 1 (probe tensors put the
codes along axis 0), and every op in the chain keeps the source's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir import Node, Op, Value
from ...runtime.kernels import get_kernel

#: ops that are monotone in their one non-constant input, per channel; Sub and Div are
#: checked for which operand the chain is (``c / x`` is not monotone)
MONOTONE = frozenset({Op.BATCHNORM, Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.RELU, Op.CLIP,
                      Op.LEAKY_RELU, Op.IDENTITY})
#: source dtypes of at most this many bits are probed exhaustively (every code)
EXHAUSTIVE_BITS = 16


@dataclass(frozen=True)
class Thresholds:
    """``y = q >= t[c] ? above[c] : below[c]`` on the integer ``source`` (channel axis 1);
    ``nodes`` the float chain it replaces, the DequantizeLinear first."""

    source: Value
    t: np.ndarray
    above: np.ndarray
    below: np.ndarray
    nodes: tuple[Node, ...] = ()


def _chain(value: Value) -> list[Node] | None:
    """The float ops from a DequantizeLinear of integer codes to ``value``, in order (the
    DequantizeLinear first), or None when ``value`` is not such a chain."""
    chain: list[Node] = []
    shape = value.shape
    while True:
        node = value.producer
        if node is None or len(node.outputs) != 1 or node.outputs[0].shape != shape:
            return None
        chain.append(node)
        if node.op == Op.DEQUANTIZE:
            src = node.inputs[0]
            if (src is None or src.is_const or src.dtype.is_float or src.shape != shape
                    or any(v is not None and not v.is_const for v in node.inputs[1:])):
                return None
            return chain[::-1]
        if node.op not in MONOTONE or not node.outputs[0].dtype.is_float:
            return None
        live = [i for i, v in enumerate(node.inputs) if v is not None and not v.is_const]
        if len(live) != 1 or (node.op == Op.DIV and live[0] != 0):
            return None
        if node.op == Op.LEAKY_RELU and not node.attrs.alpha >= 0:
            return None
        value = node.inputs[live[0]]


def _per_channel(node: Node, rank: int) -> bool:
    """True when no constant operand of ``node`` varies along an axis other than 1."""
    if node.op == Op.DEQUANTIZE:
        axis = node.attrs.axis
        sizes = [v.const.size for v in node.inputs[1:] if v is not None]
        return not node.attrs.block_size and (
            all(s == 1 for s in sizes) or axis is not None and axis % rank == 1)
    if node.op == Op.BATCHNORM:
        return True
    for v in node.inputs:
        if v is None or not v.is_const:
            continue
        shape = v.const.shape
        if len(shape) > rank:
            return False
        full = (1,) * (rank - len(shape)) + tuple(shape)
        if any(d != 1 for i, d in enumerate(full) if i != 1):
            return False
    return True


def _run(chain: list[Node], q: np.ndarray) -> np.ndarray:
    """The chain's reference kernels on probe codes ``q`` -> True where ``f(q) >= 0`` (the
    binary Requantize's +1: ``not f < 0``, so NaN reads +1 as there)."""
    value = q
    for node in chain:
        inputs = [value if (v is not None and not v.is_const) else
                  (None if v is None else v.const) for v in node.inputs]
        with np.errstate(all="ignore"):
            (value,) = get_kernel(node.op)(node, inputs)[:1]
        value = np.asarray(value).astype(node.outputs[0].dtype.numpy, copy=False)
    return ~(value < 0)


def _probe(codes: np.ndarray, channels: int, rank: int, dtype) -> np.ndarray:
    """Probe tensor: ``codes`` (L,) along axis 0, or (L, C) per channel, the channels along
    axis 1, size 1 elsewhere."""
    codes = np.asarray(codes, dtype=np.int64)
    grid = np.broadcast_to(codes.reshape(len(codes), -1), (len(codes), channels))
    return grid.reshape(grid.shape + (1,) * (rank - 2)).astype(dtype)


def sign_thresholds(value: Value) -> Thresholds | None:
    """:class:`Thresholds` computing ``sign(value)`` (the module docstring's rule) from the
    integer codes behind ``value``, or None when ``value`` is no such chain (or a narrow
    source's predicate switches more than once: not monotone after all)."""
    chain = _chain(value)
    if chain is None:
        return None
    source = chain[0].inputs[0]
    rank = len(source.shape or ())
    if rank < 2 or not all(_per_channel(node, rank) for node in chain):
        return None
    channels = int(source.shape[1])
    info = np.iinfo(source.dtype.numpy)
    lo, hi = int(info.min), int(info.max)
    if source.dtype.bits <= EXHAUSTIVE_BITS:
        codes = np.arange(lo, hi + 1, dtype=np.int64)
        ok = _run(chain, _probe(codes, channels, rank, source.dtype.numpy))
        ok = ok.reshape(len(codes), channels)
        changes = ok[1:] != ok[:-1]
        if (changes.sum(axis=0) > 1).any():
            return None
        start, end = ok[0], ok[-1]
        t = codes[changes.argmax(axis=0) + 1]
    else:
        ends = _run(chain, _probe(np.array([lo, hi]), channels, rank, source.dtype.numpy))
        start, end = ends.reshape(2, channels)
        t = _bisect(chain, channels, rank, source.dtype.numpy, lo, hi, start, end)
    t = np.where(start == end, lo, t)  # a constant channel: always "above" (= below)
    return Thresholds(source, t.astype(source.dtype.numpy),
                      np.where(end, 1, -1).astype(np.int64),
                      np.where(start, 1, -1).astype(np.int64), tuple(chain))


def _bisect(chain, channels, rank, dtype, lo, hi, start, end) -> np.ndarray:
    """Per channel, the smallest q in (lo, hi] whose predicate differs from ``start`` (the
    predicate at ``lo``), for the channels where ``end`` differs; invariant: the predicate at
    ``a`` is ``start``, at ``b`` it is not."""
    a = [lo] * channels
    b = [hi] * channels
    open_ = [bool(start[c] != end[c]) for c in range(channels)]
    while any(open_):
        mid = [(a[c] + b[c]) // 2 for c in range(channels)]
        got = _run(chain, _probe(np.array([mid], dtype=np.int64), channels, rank, dtype))
        got = got.reshape(channels)
        for c in range(channels):
            if open_[c]:
                if got[c] == start[c]:
                    a[c] = mid[c]
                else:
                    b[c] = mid[c]
                open_[c] = b[c] - a[c] > 1
    return np.array(b, dtype=np.int64)
