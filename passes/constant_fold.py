"""constant_fold: evaluate nodes whose inputs are all constants and replace them by constants."""

from __future__ import annotations

from ..ir import Graph, Op, ShapeError
from .base import Pass, PassResult
from .rewrite import can_replace, replace_node

#: default cap on the elements a folded node may produce (64 Mi elements = 256 MiB of float32)
MAX_FOLD_ELEMENTS = 64 * 1024 * 1024


class ConstantFold(Pass):
    """A node whose inputs are all constants (absent optional inputs allowed; at least one
    input) is evaluated once with the numpy reference kernel
    (:func:`lowbit.runtime.reference.evaluate_node`) and each output ``y`` is replaced by a
    constant holding the result, named like ``y`` and keeping its dtype and QType.

    Not folded: nodes producing more than ``max_elements`` elements in total (default 64 Mi,
    so an Expand of a scalar does not blow up the model file), and ops in ``skip_ops``
    (default: DequantizeLinear, so int weights + scale stay visible to the quantizer instead of
    being expanded back to float). FakeQuant is never folded, whatever ``skip_ops`` says: a
    weight FakeQuant on a constant weight must stay for fold_scales to turn into integer
    weights. Folding runs in graph order, so chains fold in one run."""

    name = "constant_fold"
    in_place = True

    def __init__(self, max_elements: int = MAX_FOLD_ELEMENTS,
                 skip_ops: frozenset[Op] = frozenset({Op.DEQUANTIZE})):
        self.max_elements = max_elements
        self.skip_ops = frozenset(skip_ops) | {Op.FAKE_QUANT}

    def foldable(self, graph: Graph, node) -> bool:
        """Pattern + checks: all-constant inputs, small enough output, op not skipped, and no
        graph output that would lose its name."""
        inputs = [v for v in node.inputs if v is not None]
        if not inputs or not all(v.is_const for v in inputs) or node.op in self.skip_ops:
            return False
        if sum(v.numel for v in node.outputs) > self.max_elements:
            return False
        return all(out.shape is not None for out in node.outputs)

    def run(self, graph: Graph) -> PassResult:
        from ..runtime.reference import evaluate_node

        changed = False
        for node in list(graph.nodes):
            if not self.foldable(graph, node):
                continue
            arrays = evaluate_node(node, [None if v is None else v.const for v in node.inputs])
            consts = []
            for out, array in zip(node.outputs, arrays):
                if array.shape != out.shape:
                    raise ShapeError(f"{node.op.value} node '{node.name}': folding gave shape "
                                     f"{list(array.shape)} but the IR declares "
                                     f"{list(out.shape)} for %{out.name}")
                const = graph.add_const(array, out.name + "_folded", dtype=out.dtype)
                const.qtype = out.qtype
                const.meta.update(out.meta)
                assert can_replace(graph, out, const)
                consts.append(const)
            replace_node(graph, node, consts, take_names=True)
            changed = True
        return PassResult(graph, changed)
