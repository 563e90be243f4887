"""insert_fake_quant: wrap every quantized layer in FakeQuants as a recipe says (issue 3).

The output is the *fake-quant graph* of the quantization contract (``docs/quantization.md``):

* a **quantized layer** is a Conv, a ConvTranspose, or a MatMul whose second operand is a 2-D
  constant weight ``(K, N)``; MatMul between two activations stays float;
* ``layer.inputs[1]`` becomes ``FakeQuant(role="weight")`` of the float constant, its QType
  fitted now by :func:`lowbit.ir.qformats.fit_weights` (per-channel along the output-channel
  axis: Conv 0, ConvTranspose 1, MatMul 1; per-group along the reduction axis: Conv 1,
  ConvTranspose 0, MatMul 0);
* ``layer.inputs[0]`` becomes ``FakeQuant(role="activation")`` of the data input, its QType
  *uncalibrated* (kind / bits / signed, empty scale: the calibrate pass fills it). Layers that
  read the same value with the same activation format share one FakeQuant;
* a residual ``Add`` (two non-constant inputs) or a ``Concat`` whose inputs are all on integer
  paths gets an 8-bit ``FakeQuant(role="activation")`` on its output, so the residual region
  can stay integer. A value is *on an integer path* when it is an activation FakeQuant's
  output, a quantized layer's output, or reaches one through a bias ``Add`` with a constant,
  ``Relu`` / ``Clip``, or a scale-preserving op (MaxPool, Reshape, Flatten, Transpose, Squeeze,
  Unsqueeze, Slice, Split, Pad, Identity). A residual output that is a graph output is left
  alone (it leaves the integer region anyway). A layer reading a residual output reads that
  8-bit FakeQuant (no second activation FakeQuant on the same value);
* a residual ``Add`` input that comes from a layer's accumulators and that a float op also
  reads (the skip's source in a binarized ResNet: the stem's ``Relu -> MaxPool`` feeding the
  first block's BN -> sign path and its shortcut) gets the same 8-bit FakeQuant: the skip
  then carries 8-bit codes, not int32 accumulators. An input that already is a FakeQuant's
  codes, or that only integer ops read, is left as it is.

Which format each layer gets: ``recipe.spec_for(node.name, node.op, is_first, is_last)`` where
first / last are the first and last quantized-layer candidates in graph order (so the
``first_last_int8`` rule keeps them int8). ``None`` (excluded) leaves the layer float.
ConvTranspose layers are int8 only: any other weight format is replaced by int8 (recorded).
``node.meta["quant_rule"]`` records the rule that chose the spec (``nodes["name"]``,
``ops.Conv``, ``first_last_int8``, ``default``; ``excluded by ...`` when the layer stays float)
and ``node.meta["quant_spec"]`` a one-line summary. Ops with no integer form (Softmax,
LayerNorm, Sigmoid, HardSwish, Resize, GlobalAveragePool, ...) are untouched: they stay float
and the activation FakeQuant of the next layer is the explicit float->int boundary.

Activation signedness: ``ActSpec.signed`` when the recipe fixes it; ``None`` ("auto") is
recorded as ``node.meta["signed_auto"] = 1`` on the FakeQuant and resolved by calibrate from
the observed range (unsigned when the minimum is >= 0). Until then the QType is unsigned when
the data comes from a ReLU-like producer, signed otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import numpy as np

from ..compiler.recipes import INT8_ACTIVATIONS, INT8_WEIGHTS, LayerSpec, Recipe
from ..ir import Graph, Node, Op, Value
from ..ir.attrs import FakeQuantAttrs
from ..ir.qformats import fit_weights
from ..ir.qtype import PER_TENSOR, Granularity, QKind, QType
from .base import Pass, PassResult

#: ops that pass integer codes through unchanged (same scale / zero point)
SCALE_PRESERVING = frozenset({
    Op.MAXPOOL, Op.RESHAPE, Op.FLATTEN, Op.TRANSPOSE, Op.SQUEEZE, Op.UNSQUEEZE, Op.SLICE,
    Op.SPLIT, Op.PAD, Op.IDENTITY,
})
#: ops folded into the producing layer's requant clamp
CLAMPS = frozenset({Op.RELU, Op.CLIP})
#: bits of the FakeQuant on a residual Add / Concat output
RESIDUAL_BITS = 8
#: ops that read a skip source's integer codes / accumulators as they are (besides layers)
_INTEGER_READERS = frozenset({Op.ADD, Op.CONCAT}) | SCALE_PRESERVING | CLAMPS

#: (output-channel axis, reduction axis) of each layer's weight
_WEIGHT_AXES = {Op.CONV: (0, 1), Op.CONV_TRANSPOSE: (1, 0), Op.MATMUL: (1, 0)}


def is_quantizable_layer(node: Node) -> bool:
    """Conv, ConvTranspose, or MatMul with a constant 2-D second operand (rule 1)."""
    if node.op in (Op.CONV, Op.CONV_TRANSPOSE):
        return len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].is_const
    if node.op == Op.MATMUL:
        w = node.inputs[1]
        return w is not None and w.is_const and w.const.ndim == 2
    return False


#: the last fits, keyed by the weight array's identity (constants are immutable and shared by
#: graph copies): a sensitivity measurement quantizes one layer's weights once per candidate
_FITS: OrderedDict[tuple, tuple[np.ndarray, QType, np.ndarray]] = OrderedDict()
_FIT_CACHE_SIZE = 16


def weight_qtype(weight: np.ndarray, op: Op, spec) -> tuple[QType, np.ndarray]:
    """Fit ``spec`` (a :class:`~lowbit.compiler.recipes.WeightSpec`) to a layer weight:
    ``(qtype, codes)`` with the granularity axis of ``op`` (module docstring). Fits are
    deterministic; the last :data:`_FIT_CACHE_SIZE` are remembered for the same array object."""
    key = (id(weight), op, spec)
    hit = _FITS.get(key)
    if hit is not None and hit[0] is weight:
        _FITS.move_to_end(key)
        return hit[1], hit[2].copy()
    qtype, codes = _fit(weight, op, spec)
    _FITS[key] = (weight, qtype, codes.copy())
    while len(_FITS) > _FIT_CACHE_SIZE:
        _FITS.popitem(last=False)
    return qtype, codes


def _fit(weight: np.ndarray, op: Op, spec) -> tuple[QType, np.ndarray]:
    out_axis, red_axis = _WEIGHT_AXES[op]
    if spec.granularity == "per_tensor":
        gran = PER_TENSOR
    elif spec.granularity == "per_channel":
        gran = Granularity(out_axis)
    else:
        gran = Granularity(red_axis, spec.group_size)
    kind = QKind(spec.format)
    return fit_weights(weight, kind, spec.bits, signed=True, granularity=gran,
                       symmetric=spec.symmetric if kind == QKind.UNIFORM else True,
                       zero_free=spec.zero_free)


def activation_placeholder(spec, relu_like: bool) -> QType:
    """The uncalibrated activation QType of an ActSpec (no scale yet)."""
    if spec.format == "binary":
        return QType(QKind.BINARY, 1, True)
    signed = (not relu_like) if spec.signed is None else spec.signed
    return QType(QKind.UNIFORM, spec.bits, signed)


def _relu_like(value: Value) -> bool:
    """True when ``value`` is non-negative by construction (ReLU / Clip(min >= 0) upstream,
    possibly through scale-preserving ops)."""
    node = value.producer
    while node is not None:
        if node.op == Op.RELU:
            return True
        if node.op == Op.CLIP:
            return node.attrs.min is not None and node.attrs.min >= 0
        if node.op not in SCALE_PRESERVING or node.op == Op.PAD:
            return False
        node = node.inputs[0].producer
    return False


def _rule_name(recipe: Recipe, node: Node, is_first: bool, is_last: bool) -> str:
    if node.name in recipe.nodes:
        return f'nodes["{node.name}"]'
    if node.op.value in recipe.ops:
        return f"ops.{node.op.value}"
    if recipe.first_last_int8 and (is_first or is_last):
        return "first_last_int8"
    return "default"


def _describe(spec: LayerSpec) -> str:
    w, a = spec.weights, spec.activations
    wtext = f"{w.format}{w.bits} {w.granularity}" + (f"(g={w.group_size})" if w.group_size else "")
    return f"w={wtext} a={a.format}{a.bits}"


class InsertFakeQuant(Pass):
    """Wrap quantized layers in weight / activation FakeQuants per ``recipe`` and put a
    FakeQuant on all-integer residual Add / Concat outputs (rules in the module docstring).
    Layers that already read a weight FakeQuant are left as they are, so a second run changes
    nothing."""

    name = "insert_fake_quant"
    in_place = True

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def run(self, graph: Graph) -> PassResult:
        candidates = [n for n in graph.nodes if is_quantizable_layer(n)
                      and not _is_fake_quant(n.inputs[1].producer)]
        already = [n for n in graph.nodes if n.op in _WEIGHT_AXES and len(n.inputs) > 1
                   and n.inputs[1] is not None and _is_fake_quant(n.inputs[1].producer)]
        if not candidates:
            return PassResult(graph, False)
        plan: list[tuple[Node, LayerSpec]] = []
        for i, node in enumerate(candidates):
            is_first, is_last = i == 0 and not already, i == len(candidates) - 1
            rule = _rule_name(self.recipe, node, is_first, is_last)
            spec = self.recipe.spec_for(node.name, node.op, is_first, is_last)
            if spec is None:
                node.meta["quant_rule"] = f"excluded by {rule}"
                continue
            if node.op == Op.CONV_TRANSPOSE and (spec.weights != INT8_WEIGHTS
                                                 or spec.activations != INT8_ACTIVATIONS):
                spec = replace(spec, weights=INT8_WEIGHTS, activations=INT8_ACTIVATIONS)
                rule += " (ConvTranspose: int8 only)"
            node.meta["quant_rule"] = rule
            node.meta["quant_spec"] = _describe(spec)
            if spec.kernel is not None:
                node.meta["kernel_forced"] = spec.kernel  # honoured by codegen.select_kernels
            plan.append((node, spec))
        if not plan:
            return PassResult(graph, False)
        # Residual FakeQuants first, so a layer reading a residual output reuses its FakeQuant.
        self._residuals(graph, {id(node): spec for node, spec in plan})
        shared: dict[tuple, Value] = {}
        for node, spec in plan:
            self._wrap(graph, node, spec, shared)
        return PassResult(graph, True)

    # -- the layer ----------------------------------------------------------------------------
    def _wrap(self, graph: Graph, node: Node, spec: LayerSpec, shared: dict) -> None:
        w = node.inputs[1]
        qtype, _ = weight_qtype(w.const, node.op, spec.weights)
        at = graph.nodes.index(node)
        fq = graph.add_node(Op.FAKE_QUANT, [w], FakeQuantAttrs(qtype, "weight"),
                            name=f"{node.name}/weight_fq", index=at)
        node.set_input(1, fq.output)

        x = node.inputs[0]
        if _is_fake_quant(x.producer) and x.producer.attrs.role == "activation":
            return  # already quantized (a residual output, or shared by an earlier layer)
        act = activation_placeholder(spec.activations, _relu_like(x))
        key = (id(x), act.kind, act.bits, spec.activations.signed)
        if key not in shared:
            at = graph.nodes.index(node)
            if x.producer is not None:
                at = min(at, graph.nodes.index(x.producer) + 1)
            else:
                at = min(at, _first_user_position(graph, x))
            afq = graph.add_node(Op.FAKE_QUANT, [x], FakeQuantAttrs(act, "activation"),
                                 name=f"{node.name}/input_fq", index=at)
            if spec.activations.signed is None and act.kind == QKind.UNIFORM:
                afq.meta["signed_auto"] = 1
            shared[key] = afq.output
        node.set_input(0, shared[key])

    # -- residual Add / Concat ----------------------------------------------------------------
    def _residuals(self, graph: Graph, layers: dict[int, LayerSpec]) -> None:
        """``layers``: ids of the nodes about to be quantized (their outputs are integer) ->
        their specs."""
        integer: set[int] = set()
        outputs = {id(v) for v in graph.outputs}
        for node in list(graph.nodes):
            data = [v for v in node.inputs if v is not None and not v.is_const]
            if _is_integer_source(node, layers, data, integer):
                integer.add(id(node.output))
            elif (node.op in CLAMPS or node.op in SCALE_PRESERVING) and node.inputs[0] is not None \
                    and id(node.inputs[0]) in integer:
                integer.update(id(v) for v in node.outputs)
            elif node.op in (Op.ADD, Op.CONCAT) and len(data) >= 2 \
                    and all(id(v) in integer for v in data):
                if node.op == Op.ADD:
                    for v in data:
                        self._skip_source(graph, v, outputs, integer, layers)
                out = node.output
                if id(out) in outputs:
                    continue
                users = out.users
                if len(users) == 1 and _is_fake_quant(users[0][0]):
                    integer.add(id(users[0][0].output))
                    continue
                qtype = QType(QKind.UNIFORM, RESIDUAL_BITS, True)
                fq = graph.add_node(Op.FAKE_QUANT, [out], FakeQuantAttrs(qtype, "activation"),
                                    name=f"{node.name}/output_fq",
                                    index=graph.nodes.index(node) + 1)
                fq.meta["signed_auto"] = 1
                for user, i in users:
                    user.set_input(i, fq.output)
                integer.add(id(fq.output))

    @staticmethod
    def _skip_source(graph: Graph, v: Value, outputs: set[int], integer: set[int],
                     layers: dict[int, LayerSpec]) -> None:
        """An 8-bit activation FakeQuant on a residual Add input that other ops read too (the
        skip connection's source, e.g. a ResNet stem's Relu -> MaxPool), unless it already is
        one's output: the producing layer then requantizes straight to 8-bit codes (Relu
        folded, MaxPool on codes), and the skip and its other readers move 1 byte per element
        instead of a 4-byte accumulator. Only for a layer's accumulators (possibly through
        Relu / Clip / scale-preserving ops, :func:`_accumulator_path`): a value that already is
        an activation FakeQuant's codes would only be rounded once more. Only when a float op
        reads ``v`` too (a binarized net's BN -> sign path): with quantized layers and the Add
        as its only readers the accumulator tensor is the exact shortcut, and an 8-bit
        FakeQuant there cost 0-12 of 540 digits images across the presets of the digits
        ResNet. Not when a quantized layer reading ``v`` wants other activations than 8-bit
        uniform (it would read the 8-bit codes instead of its own)."""
        if len(v.users) < 2 or id(v) in outputs or not _accumulator_path(v):
            return
        if not any(id(user) not in layers and user.op not in _INTEGER_READERS
                   for user, _ in v.users):
            return  # only integer readers: the shortcut keeps the exact accumulators
        if any(id(user) in layers and i == 0 and not _is_a8(layers[id(user)].activations)
               for user, i in v.users):
            return
        users = list(v.users)
        qtype = QType(QKind.UNIFORM, RESIDUAL_BITS, True)
        fq = graph.add_node(Op.FAKE_QUANT, [v], FakeQuantAttrs(qtype, "activation"),
                            name=f"{v.producer.name}/skip_fq",
                            index=graph.nodes.index(v.producer) + 1)
        fq.meta["signed_auto"] = 1
        for user, i in users:
            user.set_input(i, fq.output)
        integer.add(id(fq.output))


def _accumulator_path(v: Value) -> bool:
    """True when ``v`` comes from a layer (not from an activation FakeQuant's codes) through
    Relu / Clip / scale-preserving ops only."""
    node = v.producer
    while node is not None and (node.op in CLAMPS or node.op in SCALE_PRESERVING):
        node = node.inputs[0].producer
    return node is not None and not _is_fake_quant(node)


def _is_a8(act) -> bool:
    """8-bit uniform activations of any signedness (what a residual FakeQuant holds)."""
    return act.format == "uniform" and act.bits == RESIDUAL_BITS


def _is_integer_source(node: Node, layers: dict[int, LayerSpec], data: list[Value],
                       integer: set[int]) -> bool:
    """An activation FakeQuant, a (to be) quantized layer, or the bias Add after one."""
    if _is_fake_quant(node):
        return node.attrs.role == "activation"
    if id(node) in layers:
        return True
    if node.op in _WEIGHT_AXES and len(node.inputs) > 1 and node.inputs[1] is not None:
        return _is_fake_quant(node.inputs[1].producer)
    return (node.op == Op.ADD and len(data) == 1 and id(data[0]) in integer
            and _is_bias_add(node, data[0]))


def _is_bias_add(node: Node, data: Value) -> bool:
    """``Add(MatMul(x, W), b)`` (either order) with a constant vector b of the MatMul's N."""
    layer = data.producer
    const = next(v for v in node.inputs if v is not data)
    if layer is None or layer.op != Op.MATMUL or not const.is_const:
        return False
    n = layer.inputs[1].shape[-1]
    return const.const.size == n and const.shape[-1:] == (n,) and node.output.shape == data.shape


def _is_fake_quant(node: Node | None) -> bool:
    return node is not None and node.op == Op.FAKE_QUANT


def _first_user_position(graph: Graph, value: Value) -> int:
    return min(graph.nodes.index(user) for user, _ in value.users)


# -- the quantized layers of a fake-quant graph (used by the PTQ passes) ----------------------
class QuantizedLayer:
    """One layer of a fake-quant graph: ``node`` (Conv / ConvTranspose / MatMul), its weight
    FakeQuant ``weight_fq`` (input: the float weight constant), its bias (Conv input 2, or the
    constant of a following bias ``Add`` as ``(add_node, input_index)``) and ``act_fn``
    ("relu" when the layer's (bias-added) output feeds only a Relu, else None)."""

    __slots__ = ("act_fn", "bias_site", "node", "weight_fq")

    def __init__(self, node: Node):
        self.node = node
        self.weight_fq = node.inputs[1].producer
        self.bias_site: tuple[Node, int] | None = None
        out = node.output
        if node.op in (Op.CONV, Op.CONV_TRANSPOSE):
            if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].is_const:
                self.bias_site = (node, 2)
        elif len(out.users) == 1 and out.users[0][0].op == Op.ADD:
            add = out.users[0][0]
            other = 1 - out.users[0][1]
            if add.inputs[other].is_const and _is_bias_add(add, out):
                self.bias_site = (add, other)
                out = add.output
        users = out.users
        self.act_fn = "relu" if len(users) == 1 and users[0][0].op == Op.RELU else None

    @property
    def weight(self) -> Value:
        """The float weight constant."""
        return self.weight_fq.inputs[0]

    @property
    def bias(self) -> np.ndarray | None:
        """The bias as a float ``(C_out,)`` vector, or None."""
        if self.bias_site is None:
            return None
        node, index = self.bias_site
        return np.array(node.inputs[index].const, dtype=np.float32).reshape(-1)

    def set_bias(self, graph: Graph, bias: np.ndarray) -> None:
        """Replace the bias constant (same shape and dtype as before)."""
        node, index = self.bias_site
        old = node.inputs[index]
        new = graph.add_const(np.asarray(bias).reshape(old.shape).astype(old.dtype.numpy),
                              old.name)
        node.set_input(index, new)


def quantized_layers(graph: Graph) -> list[QuantizedLayer]:
    """Every layer whose weight input is a weight FakeQuant, in graph order."""
    return [QuantizedLayer(n) for n in graph.nodes
            if n.op in _WEIGHT_AXES and len(n.inputs) > 1 and n.inputs[1] is not None
            and _is_fake_quant(n.inputs[1].producer) and n.inputs[1].producer.attrs.role
            == "weight"]
