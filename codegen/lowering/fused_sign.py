"""Sign codes written by the binary conv that computes them (a binarized ResNet block's conv1
-> BN -> sign -> conv2).

Rule: a binary conv (bitserial / amx direct conv, accumulators out) whose only reader chain
is ``DequantizeLinear -> monotone per-channel float ops -> Pad -> binary Requantize`` into a
direct conv that signs the unpadded tensor itself (``families._padded_sign``) writes the sign
codes in its own epilogue: the chain is per-channel thresholds on the layer's output
(:mod:`.thresholds`), and the layer's output is ``v = (D << acc_shift) + bias[c]`` of the
kernel's accumulator ``D``, so ``v >= t[c]`` is ``D >= ceil((t[c] - bias[c]) / 2^acc_shift)``.
The kernel stores int8 codes instead of int32 accumulators, and the separate epilogue +
threshold pass (which read them back) is gone. The chain's nodes are not lowered (the
consumer's lowering emits the fused call); the graph and the simulator are unchanged, the
codes equal bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...ir import Graph, Node, Op
from ...ir.errors import LoweringError

_INT32 = (-(1 << 31), (1 << 31) - 1)
#: the kernel families whose direct binary conv has the threshold output
FAMILIES = ("bitserial", "amx")


@dataclass(frozen=True)
class FusedSign:
    """The layer ``conv`` whose kernel writes the codes its consumer reads: per output
    channel ``D >= t ? above : below`` (int32 ``t``, int8 codes), and every node the fusion
    replaces (the layer, the float chain, the Pad, the Requantize)."""

    conv: Node
    plan: object  # the layer's LayerPlan (bitconv, accumulators out), packed once in find()
    t: np.ndarray
    above: np.ndarray
    below: np.ndarray
    absorbed: frozenset[str]


def _only_reader(value, node: Node, graph: Graph) -> bool:
    return [u for u, _ in value.users] == [node] and value not in graph.outputs


def find(graph: Graph, target) -> dict[str, FusedSign]:
    """``{consumer conv name: FusedSign}`` for every fusable pair of ``graph`` (module
    docstring)."""
    from .families import _padded_sign, plan_layer
    from .thresholds import sign_thresholds

    out = {}
    for node in graph.nodes:
        if node.op != Op.QCONV or node.meta.get("kernel") not in FAMILIES:
            continue
        found = _padded_sign(node)
        if found is None:
            continue
        pad, requant = found
        th = sign_thresholds(pad.inputs[0])
        conv = th.source.producer if th is not None else None
        if (conv is None or conv.op != Op.QCONV or conv.meta.get("kernel") not in FAMILIES
                or not conv.attrs.requant.accumulates):
            continue
        chain = [conv, *th.nodes, pad, requant]
        if not all(_only_reader(a.outputs[0], b, graph) for a, b in zip(chain, chain[1:]
                                                                          + [node])):
            continue
        try:
            if plan_layer(node, node.meta["kernel"], target).layout != "bitconv":
                continue
            plan = plan_layer(conv, conv.meta["kernel"], target)
        except LoweringError:
            continue
        if plan.layout != "bitconv" or plan.fused or plan.border is not None:
            continue
        rq = requant.attrs.requant
        t, above, below = _accumulator_thresholds(conv, th)
        out[node.name] = FusedSign(conv, plan, t, np.clip(above, rq.lo, rq.hi).astype(np.int8),
                                   np.clip(below, rq.lo, rq.hi).astype(np.int8),
                                   frozenset(n.name for n in chain))
    return out


def _accumulator_thresholds(conv: Node, th) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The thresholds ``th`` on the layer's output ``v = (D << s) + bias`` moved onto ``D``
    (exact integer ceil), clipped to int32: a channel whose threshold lies above every D
    always writes ``below``, below every D always ``above``."""
    from .families import _bias_array

    bias = _bias_array(conv, len(th.t))
    s = int(conv.attrs.acc_shift)
    t, above, below = [], [], []
    for c in range(len(th.t)):
        d = -((int(bias[c]) - int(th.t[c])) >> s)  # ceil((t - bias) / 2^s)
        hi, lo = int(th.above[c]), int(th.below[c])
        if d > _INT32[1]:
            d, hi = _INT32[1], lo
        elif d < _INT32[0]:
            d, lo = _INT32[0], hi
        t.append(d)
        above.append(hi)
        below.append(lo)
    return np.array(t, np.int32), np.array(above), np.array(below)


def emit(ctx, fused: FusedSign):
    """The fused call: the layer's kernel with the threshold output, on the layer's own
    (absorbed-pad) input; int8 codes of the layer's output shape."""
    from tvm import relax

    from . import out_shape
    from .families import _absorb_pad, _add_scheduled, _kernels

    conv = fused.conv
    family = conv.meta["kernel"]
    plan, x = _absorb_pad(ctx, conv, fused.plan)
    spec = replace(plan.spec, threshold=True)
    prim = _kernels("bitserial_conv").lower(spec, ctx.target)["main"]
    gv = _add_scheduled(ctx, prim, f"{family}_{conv.name}_sign")
    if str(x.ty.dtype) != spec.a_dtype and spec.in_threshold is None:
        x = ctx.bb.emit(relax.op.astype(x, spec.a_dtype))
    params = [ctx.weight(p, f"{conv.name}:w{i}") for i, p in enumerate(plan.params)]
    params += [ctx.constant(a) for a in (fused.t, fused.above, fused.below, *plan.extra)]
    return ctx.bb.emit(relax.call_tir(gv, relax.Tuple([x, *params]),
                                      out_ty=relax.TensorType(out_shape(conv), "int8")))
