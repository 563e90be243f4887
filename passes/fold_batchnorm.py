"""fold_batchnorm: fold an inference BatchNormalization into the weights of its producer."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op, Value
from .base import Pass, PassResult
from .rewrite import is_graph_output, position, replace_node


class FoldBatchNorm(Pass):
    """Pattern: y = BatchNormalization(z, γ, β, μ, var; ε) with γ, β, μ, var constant, where z is
    produced by

    * Conv(x, W[, b]) or ConvTranspose(x, W[, b]) with constant W (and b), or
    * MatMul(x, W) with a constant 2-D W, optionally followed by Add(·, b) with a constant
      bias b of shape (N,) / (1, N) / scalar, when the BN channel axis (axis 1) is the MatMul's
      output feature axis, i.e. the MatMul output is 2-D (N, C) — for a 3-D (B, T, C) output
      axis 1 is T and nothing is folded,

    and z (and the MatMul output feeding the Add) is used only by this chain and is not a graph
    output. Rewrite, with σ = sqrt(var + ε) and s = γ/σ per output channel c:

        W'[c] = W[c] · s[c]            b' = (b − μ) · s + β      (b = 0 when absent)

    The output channel of W is axis 0 for Conv (C_out, C_in/g, k...), axis 1 *within each
    group* for ConvTranspose (C_in, C_out/g, k...; channel c = group·C_out/g + j), and the last
    axis for MatMul (K, N). The result is Conv/ConvTranspose(x, W', b') or
    Add(MatMul(x, W'), b'). Arithmetic runs in float64, stored in W's dtype.

    A BatchNormalization that does not match stays exactly as it is (see
    ``decompose_batchnorm`` for the explicit Mul + Add rewrite of a standalone BN)."""

    name = "fold_batchnorm"
    in_place = True

    def __init__(self):
        #: BN node name -> why it was not folded (filled by :meth:`run`, for diagnostics)
        self.not_folded: dict[str, str] = {}

    def run(self, graph: Graph) -> PassResult:
        changed = False
        self.not_folded = {}
        for node in list(graph.nodes):
            if node.graph is graph and node.op == Op.BATCHNORM:
                reason = self.fold(graph, node)
                if reason is None:
                    changed = True
                else:
                    self.not_folded[node.name] = reason
        return PassResult(graph, changed)

    def fold(self, graph: Graph, bn: Node) -> str | None:
        """Fold ``bn`` into its producer; returns None on success, else why it does not apply."""
        z = bn.inputs[0]
        params = bn.inputs[1:5]
        if not all(v is not None and v.is_const for v in params):
            return "scale/bias/mean/var are not all constant"
        if not _single_use(graph, z):
            return f"%{z.name} has other users or is a graph output"
        gamma, beta, mean, var = (v.const.astype(np.float64) for v in params)
        if np.any(var + bn.attrs.epsilon <= 0):
            return "var + epsilon is not positive"
        s = gamma / np.sqrt(var + bn.attrs.epsilon)
        producer = z.producer
        if producer is None:
            return "input is not produced by a node"
        if producer.op in (Op.CONV, Op.CONV_TRANSPOSE):
            return self._fold_conv(graph, bn, producer, s, beta, mean)
        if producer.op == Op.MATMUL:
            return self._fold_matmul(graph, bn, producer, None, s, beta, mean)
        if producer.op == Op.ADD:
            for i in (0, 1):
                mm, bias = producer.inputs[i], producer.inputs[1 - i]
                if mm.producer is not None and mm.producer.op == Op.MATMUL:
                    if not _single_use(graph, mm):
                        return f"%{mm.name} has other users or is a graph output"
                    return self._fold_matmul(graph, bn, mm.producer, producer, s, beta, mean,
                                             bias)
        return f"producer {producer.op.value} '{producer.name}' is not Conv/ConvTranspose/MatMul"

    # -- conv -----------------------------------------------------------------------------------
    def _fold_conv(self, graph, bn, conv, s, beta, mean) -> str | None:
        w = conv.inputs[1]
        b = conv.inputs[2] if len(conv.inputs) > 2 else None
        if not w.is_const or (b is not None and not b.is_const):
            return "weight or bias of the conv is not constant"
        weight = w.const.astype(np.float64)
        if conv.op == Op.CONV:
            folded = weight * s.reshape((-1,) + (1,) * (weight.ndim - 1))
        else:
            groups = conv.attrs.group
            c_in, c_out_g = weight.shape[:2]
            grouped = weight.reshape((groups, c_in // groups, c_out_g) + weight.shape[2:])
            scale = s.reshape((groups, 1, c_out_g) + (1,) * (weight.ndim - 2))
            folded = (grouped * scale).reshape(weight.shape)
        bias = np.zeros_like(s) if b is None else b.const.astype(np.float64)
        new_w = graph.add_const(folded, f"{w.name}_bnfold", dtype=w.dtype)
        new_b = graph.add_const((bias - mean) * s + beta, f"{conv.name}_bias_bnfold",
                                dtype=w.dtype)
        new = graph.add_node(conv.op, [conv.inputs[0], new_w, new_b], conv.attrs,
                             name=conv.name, index=position(graph, conv))
        replace_node(graph, bn, [new.output], take_names=True)
        graph.remove_node(conv)
        return None

    # -- matmul ---------------------------------------------------------------------------------
    def _fold_matmul(self, graph, bn, matmul, add: Node | None, s, beta, mean,
                     bias: Value | None = None) -> str | None:
        x, w = matmul.inputs
        out = matmul.output
        if not w.is_const or len(w.shape) != 2:
            return "MatMul weight is not a constant 2-D matrix"
        if len(out.shape) != 2:
            return (f"BN channel axis 1 of the rank-{len(out.shape)} MatMul output is not its "
                    "feature axis")
        n = w.shape[1]
        if bias is not None and (not bias.is_const or bias.numel not in (1, n)
                                 or bias.shape not in ((), (1,), (n,), (1, n))):
            return "the Add after the MatMul is not a constant per-feature bias"
        b = np.zeros(n) if bias is None else np.broadcast_to(
            bias.const.astype(np.float64).reshape(-1), (n,))
        new_w = graph.add_const(w.const.astype(np.float64) * s, f"{w.name}_bnfold", dtype=w.dtype)
        new_b = graph.add_const((b - mean) * s + beta, f"{matmul.name}_bias_bnfold",
                                dtype=w.dtype)
        at = position(graph, matmul)
        mm = graph.add_node(Op.MATMUL, [x, new_w], name=matmul.name, index=at).output
        y = graph.add_node(Op.ADD, [mm, new_b], name=f"{matmul.name}_bias", index=at + 1).output
        replace_node(graph, bn, [y], take_names=True)
        if add is not None:
            graph.remove_node(add)
        graph.remove_node(matmul)
        return None


def _single_use(graph: Graph, value: Value) -> bool:
    return len(value.users) == 1 and not is_graph_output(graph, value)
