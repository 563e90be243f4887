"""decompose_batchnorm: rewrite a (standalone) BatchNormalization into Mul + Add (opt-in)."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Op
from .base import Pass, PassResult
from .rewrite import position, replace_node


class DecomposeBatchNorm(Pass):
    """y = BatchNormalization(x, γ, β, μ, var; ε) with constant parameters becomes

        y = x · s + t,   s = γ / sqrt(var + ε),   t = β − μ · s

    with s and t constant per-channel vectors of shape (C, 1, ..., 1) (broadcast over axis 1).
    Useful after ``fold_batchnorm`` for the BNs it could not fold (after an Add, a Concat, an
    input...): Mul and Add are plain elementwise ops that quantization scales and the kernels
    handle, whereas BN would need its own kernel. Not in the default pipeline: run it
    explicitly (it changes the op set, which a float user may not want)."""

    name = "decompose_batchnorm"
    in_place = True

    def run(self, graph: Graph) -> PassResult:
        changed = False
        for node in list(graph.nodes):
            if node.op != Op.BATCHNORM or not all(v.is_const for v in node.inputs[1:5]):
                continue
            x = node.inputs[0]
            gamma, beta, mean, var = (v.const.astype(np.float64) for v in node.inputs[1:5])
            s = gamma / np.sqrt(var + node.attrs.epsilon)
            shape = (-1,) + (1,) * (len(x.shape) - 2)
            scale = graph.add_const(s.reshape(shape), f"{node.name}_scale", dtype=x.dtype)
            shift = graph.add_const((beta - mean * s).reshape(shape), f"{node.name}_shift",
                                    dtype=x.dtype)
            at = position(graph, node)
            y = graph.add_node(Op.MUL, [x, scale], name=f"{node.name}_mul", index=at).output
            z = graph.add_node(Op.ADD, [y, shift], name=f"{node.name}_add",
                               index=at + 1).output
            replace_node(graph, node, [z], take_names=True)
            changed = True
        return PassResult(graph, changed)
