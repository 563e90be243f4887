"""fold_scales: a calibrated fake-quant graph -> an integer graph (issue 3).

Notation: ``s_x, z_x`` the scale / zero point of a layer's input activation codes ``x``
(per tensor), ``s_w[c]`` the weight unit of output channel ``c``, ``s_y, z_y`` the output
format, ``[qmin, qmax]`` its code range.

**Integer weights** (constants holding the values used in arithmetic, weight QType attached):

* uniform: ``w = q − zp_w`` (codes shifted once, so the kernel never subtracts a weight zero
  point), unit ``s``; stored in the smallest signed width that holds it (QType with
  ``zero_point = 0`` and that width);
* binary ``w = ±1`` / ternary ``w ∈ {−1, 0, 1}``, unit ``α``;
* pow2 (``E = 2^(bits−1)`` exponents): ``w = ±2^(t − e)``, unit ``s·2^−t`` with ``t = E−1``
  (zero_free) or ``t = E−2`` (the smallest level reads 0, so ``w = 0`` there); refused when
  ``t > 30`` (pow2 wider than 6 bits does not fit int32 shift-add weights);
* codebook: levels rounded onto a per-group grid of ``2^(G−1) − 1`` steps, ``G`` =
  :func:`~lowbit.ir.qformats.codebook_grid_bits` (7 for codebooks of ≤ 4 index bits, so the
  integer weights fit the int8 kernel; 12 for wider ones): unit ``max|level| / (2^(G−1) − 1)``,
  ``w = rint(level / unit)``. Exact for codebooks that ``fit_weights`` or the reconstruction
  made (their levels are snapped onto this grid, :func:`~lowbit.ir.qformats.snap_codebook`);
  a codebook given by hand moves by ≤ unit / 2 per weight, the one place the integer weights
  can differ from the fake-quant weights;
* a group whose unit is 0 (binary ``α = 0``, zero-free pow2 ``s = 0``: all-zero weights) gets
  ``w = 0`` and the tensor's largest positive unit (any positive unit is exact for zeros).

**Layers** (Conv, ConvTranspose, MatMul with a constant 2-D weight):

    acc[c] = (Σ_k (x_k − z_x)·w[k, c]) · 2^p + bias[c],   bias[c] = rint(b[c] / s_acc[c]),
    s_acc[c] = s_x·s_w[c] / 2^p

exactly, in int32. ``p`` (``acc_shift``) is 0 without a bias; with one it spends spare
accumulator bits on bias precision: rounding the bias onto the plain ``s_x·s_w`` grid could
move the output by several output steps when ``s_x·s_w > s_y`` (low-bit inputs). ``p`` is
the headroom ``min(16, 30 − bitlength(K·max|w|·max|x − z_x|))`` (≥ 0), and for a layer
requantized onto ``s_y`` at most ``⌈log2(s_x·max_c s_w[c] / s_y)⌉ + 8`` (≥ 0), which keeps
the bias rounding below 2^−9 output steps. The bound is checked statically:
``bound = K·max|w|·max|x − z_x|·2^p + max|bias|`` (``K`` the reduction length,
``max|x − z_x|`` over the activation's code range) must be ≤ 2^31 − 1,
else the accumulator is widened to int64 (``widen_accumulators=True``, the default; the
requant product ``bound·max m + 2^(shift−1)`` must still fit int64) or the pass raises
:class:`QuantizationError` naming the node, K and the bit widths.

*Per-group weights* (groups of ``g`` along the reduction axis; ``p = 0``, the headroom ``u``
below plays its role): each reduction group ``r``
accumulates ``acc_r[c]`` separately; the partial sums are rescaled onto the channel's common
unit ``s_c[c] = max_r s_w[r, c] / 2^u`` with dyadic ``(m, shift) = to_dyadic(s_w[r, c] /
s_c[c])``: ``acc[c] = Σ_r ((acc_r[c]·m + 2^(shift−1)) >> shift) + bias[c]``. The headroom
``u = min(16, 30 − bitlength(K·max|w|·max|x − z_x|))`` (≥ 0) keeps the rounding of each
partial sum ≤ 2^−u of the largest group unit while the sum still fits int32.

**Requant** onto the next activation FakeQuant (the layer's only consumer, possibly through a
chain of Relu / Clip and scale-preserving ops): ``M[c] = s_acc[c] / s_y``,
``(m[c], shift[c]) = to_dyadic(M[c])`` and

    y = clamp(z_y + ((acc·m[c] + 2^(shift[c]−1)) >> shift[c]), lo, hi)

``[lo, hi]`` is ``[qmin, qmax]`` narrowed by the folded Relu / Clip (``fold_clamp``: Relu is
``lo = z_y``). Binary outputs are ``clamp(sign(acc), lo, hi)`` (sign(0) = +1: the sign of the
real value ``s_x·s_w[c]·acc``; a folded Relu, or Clip with min ≥ 0, forces +1). MaxPool,
Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Identity and Pad (constant fill 0 ->
fill ``z_y``) in the chain run on the codes: requant is monotone per channel, so it commutes
with them. A layer with any other consumer outputs raw int32/int64 accumulators (QType scale
``s_acc[c]``) and its float users read them through ``DequantizeLinear`` (per-channel scale
``s_acc[c]``, zero point 0).

**Residual Add** (two integer inputs, output FakeQuant): ``QAdd`` with one rounding:
``M_i = s_i / s_y`` (per channel for accumulator inputs), a common shift ``S`` (the largest
``to_dyadic`` shift of the ``M_i``, at most 62, lowered until ``Σ_i max|x_i − z_i|·m_i +
2^(S−1)`` fits int64), ``m_i = rint(M_i·2^S)``. The multipliers may exceed int32 (QAdd is
int64 arithmetic, bounded statically): with one int32-range shift for both terms an
accumulator input, whose ``M`` is tiny, would keep only ~13 bits and drift by a fraction of
a step. Then
``y = clamp(z_y + ((Σ_i (x_i − z_i)·m_i + 2^(S−1)) >> S), lo, hi)``.
**Concat** (all inputs integer, output FakeQuant): each input that is not already in the output
format goes through ``Requantize`` (``y = clamp(z_y + (((x − z_x)·m + 2^(shift−1)) >> shift),
lo, hi)``, ``M = s_x / s_y``), then an integer Concat.

**Boundaries**: a FakeQuant whose input is float becomes ``QuantizeLinear`` (scale ``s_y``,
zero point ``z_y``), or for binary activations a binary ``Requantize`` of the float input
(``y = sign(x)``, sign(0) = +1: exactly the binary FakeQuant's codes);
one whose input is integer (another FakeQuant's codes, accumulators) becomes ``Requantize``
(or nothing, when the format is already the same); integer values read by float ops go
through ``DequantizeLinear``. Weight FakeQuants with non-layer users become float constants
(the fake-quantized weight).

**Integer pass-through** (values with several users, outside a fused chain): Relu / Clip on an
integer value become a clamping identity ``Requantize`` (``m = 2^30, shift = 30``, ``[lo,
hi]`` from ``fold_clamp``; per-channel accumulators take Relu only: ``lo = 0``), and the
scale-preserving ops above run on per-tensor codes (MaxPool / Identity also on per-channel
accumulators), so a shared skip connection stays integer up to its QAdd.

**Why the simulators differ** (fake-quant = ``run_reference`` on the input graph, integer =
on the output): requant rounds half up with a dyadic ``M`` (relative error ≤ 2^−31) where
FakeQuant rounds ``x / s_y`` half to even in float64 on float32 data; the integer bias is
rounded to the accumulator grid; QuantizeLinear divides in float32; float ops of the
fake-quant graph (float32 matmuls of grid values) round where the integer ones are exact. Each
gives at most one code step at a requant boundary; with ``M`` a power of two ≥ 1, no bias and
exact float products the results are equal bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..ir import Graph, Node, Op, Value
from ..ir.attrs import (
    DequantizeAttrs,
    GroupRescale,
    PadAttrs,
    QAddAttrs,
    QConvAttrs,
    QMatMulAttrs,
    QuantizeAttrs,
    Requant,
    RequantizeAttrs,
)
from ..ir.dtypes import FLOAT32, INT32, INT64, DType
from ..ir.dyadic import fold_clamp, to_dyadic
from ..ir.errors import QuantizationError
from ..ir.qformats import codebook_grid_bits, dequantize, group_index, group_shape, quantize
from ..ir.qtype import Granularity, QKind, QType
from .base import Pass, PassResult

#: most extra bits per-group rescaling keeps below the common channel unit
GROUP_HEADROOM_BITS = 16
#: most bits a layer with a bias shifts its dot product left to give the bias finer precision
BIAS_HEADROOM_BITS = 16

_INT32_MAX = (1 << 31) - 1
_INT64_MAX = (1 << 63) - 1

#: ops between a layer and its output FakeQuant that run on integer codes unchanged
CODE_PRESERVING = frozenset({
    Op.MAXPOOL, Op.GLOBAL_MAXPOOL, Op.RESHAPE, Op.FLATTEN, Op.TRANSPOSE, Op.SQUEEZE,
    Op.UNSQUEEZE, Op.SLICE, Op.IDENTITY, Op.PAD,
})
#: real-valued clamps folded into the requant range
CLAMPS = frozenset({Op.RELU, Op.CLIP})

#: node.meta keys a quantized layer carries over to its QConv / QMatMul (the recipe rule that
#: chose its format, and a kernel family forced by the recipe)
_LAYER_META = ("quant_rule", "quant_spec", "kernel_forced")


# -- integer weights ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IntegerWeight:
    """A weight as integers: ``real = values · unit[group]`` (groups of ``qtype``)."""

    values: np.ndarray  # int64, the weight's shape
    unit: np.ndarray  # float64, the qformats parameter shape (() per tensor)
    dtype: DType  # smallest signed width holding values
    qtype: QType  # attached to the integer constant

    @property
    def max_abs(self) -> int:
        return int(np.abs(self.values).max()) if self.values.size else 0


def _params(values, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return np.broadcast_to(arr, (n,)) if arr.size == 1 else arr


def integer_weights(w: np.ndarray, qtype: QType) -> IntegerWeight:
    """The integer weight values of float weights ``w`` under ``qtype`` (module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    codes = quantize(w, qtype).astype(np.int64)
    gid, n = group_index(w.shape, qtype.granularity)
    kind = qtype.kind
    if kind == QKind.UNIFORM:
        zp = np.asarray(qtype.zero_point or (0,), dtype=np.int64).ravel()
        zp = np.broadcast_to(zp, (n,)) if zp.size == 1 else zp
        values, unit = codes - zp[gid], _params(qtype.scale, n).copy()
    elif kind in (QKind.BINARY, QKind.TERNARY):
        values, unit = codes, _params(qtype.scale, n).copy()
    elif kind == QKind.POW2:
        n_exp = 1 << (qtype.bits - 1)
        top = n_exp - 1 if qtype.zero_free else n_exp - 2
        if top > 30:
            raise QuantizationError(
                f"pow2 weights of {qtype.bits} bits span 2^{top} as shift-add integers, beyond "
                "int32; use pow2 with <= 6 bits (5 when zero_free)")
        exponent = np.mod(codes, n_exp)
        magnitude = np.left_shift(np.int64(1), np.maximum(top - exponent, 0))
        if not qtype.zero_free:
            magnitude = np.where(exponent == n_exp - 1, 0, magnitude)
        values = np.where(codes < 0, -magnitude, magnitude)
        unit = _params(qtype.scale, n) * 2.0 ** -top
    elif kind == QKind.CODEBOOK:
        rows = qtype.codebook * (n if len(qtype.codebook) == 1 else 1)
        levels = np.asarray(rows, dtype=np.float64)
        real = levels[gid, codes]
        steps = (1 << (codebook_grid_bits(qtype.bits) - 1)) - 1
        unit = np.abs(levels).max(axis=1) / steps
        safe = np.where(unit > 0, unit, 1.0)
        values = np.rint(real / safe[gid]).astype(np.int64)
    else:  # pragma: no cover - QKind is closed
        raise QuantizationError(f"unknown weight format {qtype}")
    zero = ~(unit > 0)
    if zero.any():
        values = np.where(zero[gid], 0, values)
        positive = unit[~zero]
        unit = np.where(zero, positive.max() if positive.size else 1.0, unit)
    lo = int(values.min()) if values.size else 0
    hi = int(values.max()) if values.size else 0
    # the smallest signed width holding [lo, hi]: -2^(b-1) <= lo and hi <= 2^(b-1) - 1
    dtype = DType.int(max(2, (-lo - 1).bit_length() + 1 if lo < 0 else 2, hi.bit_length() + 1))
    attached = qtype
    if kind == QKind.UNIFORM:
        attached = replace(qtype, bits=dtype.bits, signed=True,
                           zero_point=(0,) * len(qtype.zero_point))
    pshape = group_shape(w.shape, qtype.granularity)
    return IntegerWeight(values.astype(np.int64), np.asarray(unit).reshape(pshape), dtype,
                         attached)


def _acc_qtype(dtype: DType, granularity: Granularity, scale) -> QType:
    """The QType of an accumulator (QType widths stop at 32 bits; an int64 accumulator says so
    in ``extra``)."""
    extra = (("accumulator", dtype.name),) if dtype.bits > 32 else ()
    return QType(QKind.UNIFORM, min(dtype.bits, 32), True, granularity, scale=scale,
                 extra=extra)


def code_dtype(qtype: QType) -> DType:
    """Storage of activation codes: int(b) / uint(b); binary codes ±1 in int2."""
    if qtype.kind == QKind.BINARY:
        return DType.int(2)
    return DType.int(qtype.bits) if qtype.signed else DType.uint(qtype.bits)


def code_magnitude(qtype: QType) -> int:
    """``max |q − z|`` over an activation format's code range."""
    if qtype.kind == QKind.BINARY:
        return 1
    z = qtype.zero_point[0] if qtype.zero_point else 0
    return max(abs(qtype.min - z), abs(qtype.max - z))


# -- integer values during the rewrite -----------------------------------------------------------
@dataclass
class IntRep:
    """An integer tensor of the new graph and how to read it: ``real = (v − zp)·scale[c]``."""

    value: Value
    scale: np.ndarray  # () per tensor, (C,) per channel along axis
    zero_point: int
    axis: int | None
    magnitude: int  # static bound on |v − zp|
    binary: bool = False

    def same_format(self, qtype: QType) -> bool:
        return (self.axis is None and self.scale.size == 1 and not self.binary
                and qtype.kind == QKind.UNIFORM
                and float(self.scale) == qtype.scale[0]
                and self.zero_point == (qtype.zero_point[0] if qtype.zero_point else 0)
                and self.value.dtype == code_dtype(qtype))


@dataclass
class _Plan:
    """A source node whose output reaches activation FakeQuant ``target`` through ``chain``."""

    target: Node
    chain: list[Node]


class FoldScales(Pass):
    """Fold a calibrated fake-quant graph into the integer graph: quantized layers become
    QConv / QMatMul with integer weights, int32 bias and a dyadic requant onto the next
    activation format (Relu / Clip folded into the clamp), residual Add / Concat become QAdd /
    Requantize + Concat, and QuantizeLinear / DequantizeLinear mark the float boundaries. Every
    formula is in the module docstring. Not in place; ``changed`` is False (and the graph is
    copied unchanged) when the graph has no FakeQuant."""

    name = "fold_scales"
    in_place = False

    def __init__(self, widen_accumulators: bool = True):
        self.widen_accumulators = widen_accumulators

    def run(self, graph: Graph) -> PassResult:
        if not any(n.op == Op.FAKE_QUANT for n in graph.nodes):
            return PassResult(graph.copy(), False)
        return PassResult(_Folder(graph, self.widen_accumulators).build(), True)


def fold_scales(graph: Graph, widen_accumulators: bool = True) -> Graph:
    """Functional form of :class:`FoldScales`: the integer graph of ``graph``."""
    return FoldScales(widen_accumulators).run(graph).graph


# -- the rewrite -------------------------------------------------------------------------------
def _is_fq(node: Node | None, role: str) -> bool:
    return node is not None and node.op == Op.FAKE_QUANT and node.attrs.role == role


def _where(node: Node) -> str:
    return f"{node.op.value} node '{node.name}'"


class _Folder:
    """Builds the integer graph in one topological walk over the fake-quant graph."""

    def __init__(self, src: Graph, widen: bool):
        self.src = src
        self.widen = widen
        self.g = Graph(src.name, src.opset)
        self.floats: dict[int, Value] = {}
        self.ints: dict[int, IntRep] = {}
        self.skip: set[int] = set()
        self.bias_add: dict[int, Node] = {}  # layer -> the MatMul bias Add folded into it
        self.plans: dict[int, _Plan] = {}
        self.layers: set[int] = set()

    # -- planning ---------------------------------------------------------------------------
    def _find_layers(self) -> None:
        for node in self.src.nodes:
            if node.op not in (Op.CONV, Op.CONV_TRANSPOSE, Op.MATMUL) or len(node.inputs) < 2:
                continue
            x, w = node.inputs[0], node.inputs[1]
            if not (x is not None and _is_fq(x.producer, "activation")
                    and w is not None and _is_fq(w.producer, "weight")
                    and w.producer.inputs[0].is_const):
                continue
            if node.op == Op.MATMUL:
                if w.rank != 2:
                    continue
                self._find_bias(node)
            self.layers.add(id(node))

    def _find_bias(self, node: Node) -> None:
        out = node.output
        if len(out.users) != 1 or self._is_output(out):
            return
        add, _ = out.users[0]
        if add.op != Op.ADD:
            return
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        n = node.inputs[1].shape[1]
        if other is not None and other.is_const and other.const.size == n and (
                other.shape in ((n,), (1, n))) and add.output.shape == out.shape:
            self.bias_add[id(node)] = add

    def layer_output(self, node: Node) -> Value:
        """The value a layer's integer form replaces (its bias Add's output for MatMul)."""
        add = self.bias_add.get(id(node))
        return add.output if add is not None else node.output

    def _is_output(self, v: Value) -> bool:
        return any(o is v for o in self.src.outputs)

    def _plan_targets(self) -> None:
        by_output = {id(self.layer_output(n)): n for n in self.src.nodes if id(n) in self.layers}
        for fq in self.src.nodes:
            if not _is_fq(fq, "activation"):
                continue
            chain: list[Node] = []
            v = fq.inputs[0]
            while v is not None and len(v.users) == 1 and not self._is_output(v):
                p = v.producer
                if p is None:
                    break
                if id(v) in by_output:
                    self.plans[id(by_output[id(v)])] = _Plan(fq, chain)
                    break
                if p.op in (Op.ADD, Op.CONCAT):
                    self.plans[id(p)] = _Plan(fq, chain)
                    break
                if (p.op in CLAMPS or p.op in CODE_PRESERVING) and len(p.outputs) == 1 \
                        and self._chain_ok(p):
                    chain.insert(0, p)
                    v = p.inputs[0]
                    continue
                break

    @staticmethod
    def _chain_ok(node: Node) -> bool:
        if node.op == Op.PAD:
            return node.attrs.mode != "constant" or node.attrs.value == 0
        return all(v is None or v.is_const for v in node.inputs[1:])

    # -- values -----------------------------------------------------------------------------
    def float_of(self, v: Value) -> Value:
        """The float value of the new graph standing for old value ``v``."""
        if id(v) in self.floats:
            return self.floats[id(v)]
        if v.is_const:
            new = self.g.add_const(v.const, v.name, dtype=v.dtype)
            new.qtype = v.qtype
        elif id(v) in self.ints:
            new = self.dequantize(self.ints[id(v)], v.name)
        else:
            raise AssertionError(f"value %{v.name} used before it is defined")
        self.floats[id(v)] = new
        return new

    def const(self, array, name: str, dtype: DType) -> Value:
        return self.g.add_const(np.asarray(array), name, dtype=dtype)

    def dequantize(self, rep: IntRep, name: str) -> Value:
        scale = np.asarray(rep.scale, dtype=np.float32)
        zp = np.full(scale.shape, rep.zero_point, dtype=rep.value.dtype.numpy)
        node = self.g.add_node(
            Op.DEQUANTIZE,
            [rep.value, self.const(scale, name + "_scale", FLOAT32),
             self.const(zp, name + "_zp", rep.value.dtype)],
            DequantizeAttrs(axis=rep.axis if scale.size > 1 else None),
            name=self._free(name + "_dequant"), outputs=[name])
        return node.output

    def _free(self, base: str) -> str:
        names = self.g.meta.get("_node_names", set())
        name, i = base, 0
        while name in names:
            i += 1
            name = f"{base}_{i}"
        return name

    # -- driver -----------------------------------------------------------------------------
    def build(self) -> Graph:
        self._find_layers()
        self._plan_targets()
        for v in self.src.inputs:
            self.floats[id(v)] = self.g.add_input(v.name, v.dtype, v.shape)
        for node in self.src.nodes:
            if id(node) in self.skip:
                continue
            if node.op == Op.FAKE_QUANT:
                self.fake_quant(node)
            elif id(node) in self.layers:
                self.layer(node)
            elif node.op == Op.ADD and id(node) in self.plans and self._all_int(node):
                self.qadd(node, self.plans[id(node)])
            elif node.op == Op.CONCAT and id(node) in self.plans and self._all_int(node):
                self.concat(node, self.plans[id(node)])
            elif not self.passthrough(node):
                self.copy(node)
        self.g.outputs = [self.float_of(v) for v in self.src.outputs]
        return self.g

    def _all_int(self, node: Node) -> bool:
        target = self.plans[id(node)].target.attrs.qtype
        return target.kind == QKind.UNIFORM and len(target.scale) == 1 and all(
            v is not None and id(v) in self.ints and not self.ints[id(v)].binary
            for v in node.inputs)

    def passthrough(self, node: Node) -> bool:
        """Keep an op on an integer value integer when it has an exact integer form: Relu /
        Clip as a clamping identity Requantize (m = 2^30, shift 30), code-preserving ops on
        the codes (per-tensor values; MaxPool / Identity also per channel). Returns False
        (the op stays float) otherwise."""
        if len(node.outputs) != 1 or not node.inputs or node.inputs[0] is None:
            return False
        rep = self.ints.get(id(node.inputs[0]))
        if rep is None or rep.binary or any(v is not None and not v.is_const
                                            for v in node.inputs[1:]):
            return False
        old = node.output
        dtype = rep.value.dtype
        if node.op in CLAMPS:
            lo_real, hi_real = (0.0, None) if node.op == Op.RELU else (node.attrs.min,
                                                                       node.attrs.max)
            if rep.axis is not None:
                if hi_real is not None or lo_real not in (None, 0, 0.0):
                    return False  # a per-channel clamp would need per-channel bounds
                lo, hi = (rep.zero_point if lo_real is not None else int(dtype.min)), \
                    int(dtype.max)
            else:
                lo, hi = fold_clamp(lo_real, hi_real, float(rep.scale), rep.zero_point,
                                    int(dtype.min), int(dtype.max))
            rq = Requant(rep.zero_point, (1 << 30,), (30,), rep.zero_point, dtype, lo, hi)
            value = self.g.add_node(Op.REQUANTIZE, [rep.value], RequantizeAttrs(rq),
                                    name=node.name, outputs=[old.name + "_q"]).output
        elif node.op in CODE_PRESERVING and (rep.axis is None or node.op in (
                Op.MAXPOOL, Op.GLOBAL_MAXPOOL, Op.IDENTITY)):
            attrs = node.attrs
            if node.op == Op.PAD and attrs.mode == "constant":
                if attrs.value != 0:
                    return False
                attrs = PadAttrs(attrs.pads, attrs.mode, rep.zero_point)
            ins = [rep.value] + [None if v is None else self.float_of(v)
                                 for v in node.inputs[1:]]
            value = self.g.add_node(node.op, ins, attrs, name=node.name,
                                    outputs=[old.name + "_q"]).output
        else:
            return False
        qtype = rep.value.qtype
        if qtype is not None:
            dyadic = rq if node.op in CLAMPS else None
            qtype = replace(qtype, multiplier=dyadic.multiplier if dyadic else (),
                            shift=dyadic.shift if dyadic else ())
        value.qtype = qtype
        self.ints[id(old)] = replace(rep, value=value)
        return True

    def copy(self, node: Node) -> None:
        ins = [None if v is None else self.float_of(v) for v in node.inputs]
        new = self.g.add_node(node.op, ins, node.attrs, name=node.name,
                              outputs=[v.name for v in node.outputs])
        for old, v in zip(node.outputs, new.outputs):
            v.qtype = old.qtype
            self.floats[id(old)] = v

    # -- FakeQuant --------------------------------------------------------------------------
    def fake_quant(self, node: Node) -> None:
        q = node.attrs.qtype
        x = node.inputs[0]
        if node.attrs.role == "weight":
            if any(id(u) not in self.layers or i != 1 for u, i in node.output.users) or \
                    self._is_output(node.output):
                w = dequantize(quantize(x.const, q), q) if x.is_const else None
                if w is None:
                    self.copy(node)  # a runtime weight: left as a float FakeQuant
                else:
                    self.floats[id(node.output)] = self.const(w, node.output.name, x.dtype)
            return
        self._check_activation(node)
        if id(x) in self.ints:
            rep = self.ints[id(x)]
            self.ints[id(node.output)] = (rep if rep.same_format(q) else
                                          self.requantize(rep, q, node, None, None))
            return
        if q.kind == QKind.BINARY:
            rq = self._requant(node, None, q, [], 0, None)
            out = self.g.add_node(Op.REQUANTIZE, [self.float_of(x)], RequantizeAttrs(rq),
                                  name=node.name, outputs=[node.output.name + "_q"]).output
            out.qtype = q
            self.ints[id(node.output)] = self._codes(out, q)
            return
        dtype = code_dtype(q)
        scale = self.const(np.float32(q.scale[0]), node.output.name + "_scale", FLOAT32)
        zp = self.const(q.zero_point[0] if q.zero_point else 0, node.output.name + "_zp", dtype)
        out = self.g.add_node(Op.QUANTIZE, [self.float_of(x), scale, zp],
                              QuantizeAttrs(dtype=dtype), name=node.name,
                              outputs=[node.output.name + "_q"]).output
        out.qtype = q
        self.ints[id(node.output)] = self._codes(out, q)

    def _check_activation(self, node: Node) -> None:
        q = node.attrs.qtype
        if q.kind not in (QKind.UNIFORM, QKind.BINARY):
            raise QuantizationError(f"{_where(node)}: activation format {q} is not supported; "
                                    "use uniform or binary activations")
        if len(q.scale) != 1:
            raise QuantizationError(
                f"{_where(node)}: activation FakeQuant is uncalibrated or not per-tensor "
                f"({q}); run the calibrate pass before fold_scales")

    def _codes(self, value: Value, q: QType) -> IntRep:
        return IntRep(value, np.asarray(q.scale[0], dtype=np.float64),
                      q.zero_point[0] if q.zero_point else 0, None, code_magnitude(q),
                      binary=q.kind == QKind.BINARY)

    def _range(self, q: QType, chain: list[Node]) -> tuple[int, int]:
        """``[lo, hi]`` of ``q``'s codes narrowed by the Relu / Clip nodes in ``chain``."""
        lo_real, hi_real = None, None
        for node in chain:
            if node.op == Op.RELU:
                lo, hi = 0.0, None
            elif node.op == Op.CLIP:
                lo, hi = node.attrs.min, node.attrs.max
            else:
                continue
            if lo is not None:
                lo_real = lo if lo_real is None else max(lo_real, lo)
            if hi is not None:
                hi_real = hi if hi_real is None else min(hi_real, hi)
        if q.kind == QKind.BINARY:
            return (1 if lo_real is not None and lo_real >= 0 else -1,
                    -1 if hi_real is not None and hi_real < 0 else 1)
        zp = q.zero_point[0] if q.zero_point else 0
        return fold_clamp(lo_real, hi_real, q.scale[0], zp, q.min, q.max)

    def _requant(self, node: Node, real_multiplier, q: QType, chain: list[Node],
                 in_zero_point: int, axis: int | None) -> Requant:
        lo, hi = self._range(q, chain)
        dtype = code_dtype(q)
        if q.kind == QKind.BINARY:
            return Requant(in_zero_point, (), (), 0, dtype, lo, hi, None, binary=True)
        try:
            m, shift = to_dyadic(np.atleast_1d(real_multiplier))
        except QuantizationError as err:
            raise QuantizationError(f"{_where(node)}: {err}") from None
        per_channel = m.size > 1
        return Requant(in_zero_point, tuple(int(v) for v in m), tuple(int(v) for v in shift),
                       q.zero_point[0] if q.zero_point else 0, dtype, lo, hi,
                       axis if per_channel else None)

    def _out_qtype(self, q: QType, rq: Requant) -> QType:
        if rq.binary:
            return q
        return replace(q, multiplier=rq.multiplier, shift=rq.shift)

    def requantize(self, rep: IntRep, q: QType, node: Node, chain, name) -> IntRep:
        """Integer ``rep`` onto format ``q`` with a Requantize node (named after ``node``)."""
        if rep.binary and q.kind != QKind.BINARY:
            raise QuantizationError(f"{_where(node)}: cannot requantize binary codes onto {q}")
        rq = self._requant(node, np.atleast_1d(rep.scale) / q.scale[0], q, chain or [],
                           rep.zero_point, rep.axis)
        out = self.g.add_node(Op.REQUANTIZE, [rep.value], RequantizeAttrs(rq),
                              name=self._free(name or node.name),
                              outputs=[(name or node.output.name) + "_q"]).output
        out.qtype = self._out_qtype(q, rq)
        return self._codes(out, q)

    # -- layers -----------------------------------------------------------------------------
    def layer(self, node: Node) -> None:
        x_fq, w_fq = node.inputs[0].producer, node.inputs[1].producer
        xrep = self.ints[id(node.inputs[0])]
        if xrep.axis is not None:
            raise QuantizationError(f"{_where(node)}: input codes must be per tensor")
        weight = w_fq.inputs[0].const
        iw = integer_weights(weight, w_fq.attrs.qtype)
        s_w, groups, headroom = self._weight_units(node, iw)
        k = self._reduction_length(node)
        dot = k * iw.max_abs * xrep.magnitude * (1 << headroom)
        bias_value = self._bias(node)
        plan = self.plans.get(id(node))
        acc_shift = 0
        if bias_value is not None and groups is None:
            acc_shift = max(0, min(BIAS_HEADROOM_BITS, 30 - dot.bit_length()))
            if plan is not None and plan.target.attrs.qtype.scale:
                ratio = float(xrep.scale) * float(s_w.max()) / plan.target.attrs.qtype.scale[0]
                acc_shift = min(acc_shift, max(0, math.ceil(math.log2(ratio)) + 8))
        s_acc = float(xrep.scale) * s_w / (1 << acc_shift)
        bias = None
        if bias_value is not None:
            bias = np.rint(bias_value.astype(np.float64).ravel() / s_acc).astype(np.int64)
        bound = (dot << acc_shift) + (int(np.abs(bias).max()) if bias is not None else 0)
        out_rank = len(self.layer_output(node).shape)
        ch_axis = 1 if node.op != Op.MATMUL else out_rank - 1
        if plan is not None:
            q = plan.target.attrs.qtype
            self._check_activation(plan.target)
            rq = self._requant(node, s_acc / q.scale[0], q, plan.chain, xrep.zero_point,
                               ch_axis)
        else:
            rq = None
        acc_dtype = self._acc_dtype(node, k, iw, x_fq.attrs.qtype, bound, rq)
        if rq is None:
            rq = Requant(xrep.zero_point, (), (), 0, acc_dtype, int(acc_dtype.min),
                         int(acc_dtype.max), ch_axis)
        w_const = self.const(iw.values, node.inputs[1].name + "_int", iw.dtype)
        w_const.qtype = iw.qtype
        ins = [xrep.value, w_const]
        if bias is not None:
            b_const = self.const(bias, self._bias_name(node) + "_int", acc_dtype)
            b_const.qtype = _acc_qtype(acc_dtype, Granularity(0),
                                  scale=tuple(float(s) for s in s_acc))
            ins.append(b_const)
        old_out = self.layer_output(node)
        if node.op == Op.MATMUL:
            attrs = QMatMulAttrs(rq, acc_dtype, groups, acc_shift)
            op = Op.QMATMUL
        else:
            a = node.attrs
            transposed = node.op == Op.CONV_TRANSPOSE
            attrs = QConvAttrs(a.strides, a.pads, a.dilations, a.group, rq, acc_dtype,
                               transposed, a.output_padding if transposed else (), groups,
                               acc_shift)
            op = Op.QCONV
        if plan is None:
            new = self.g.add_node(op, ins, attrs, name=node.name,
                                  outputs=[old_out.name + "_acc"]).output
            new.qtype = _acc_qtype(acc_dtype, Granularity(ch_axis),
                              scale=tuple(float(s) for s in s_acc))
            self.ints[id(old_out)] = IntRep(new, s_acc, 0, ch_axis, bound)
        else:
            q = plan.target.attrs.qtype
            new = self.g.add_node(op, ins, attrs, name=node.name,
                                  outputs=[old_out.name + "_q"]).output
            new.qtype = self._out_qtype(q, rq)
            self._finish_chain(new, plan, q)
        for key in _LAYER_META:
            if key in node.meta:
                new.producer.meta[key] = node.meta[key]
        if id(node) in self.bias_add:
            self.skip.add(id(self.bias_add[id(node)]))

    def _finish_chain(self, value: Value, plan: _Plan, q: QType) -> None:
        """Re-emit the code-preserving ops of ``plan.chain`` on ``value``; the target
        FakeQuant's output becomes the result."""
        for node in plan.chain:
            self.skip.add(id(node))
            if node.op in CLAMPS:
                continue
            attrs = node.attrs
            if node.op == Op.PAD and attrs.mode == "constant":
                attrs = PadAttrs(attrs.pads, attrs.mode, q.zero_point[0] if q.zero_point else 0)
            ins = [value] + [None if v is None else self.float_of(v) for v in node.inputs[1:]]
            value = self.g.add_node(node.op, ins, attrs, name=node.name,
                                    outputs=[node.output.name + "_q"]).output
            value.qtype = q
        self.skip.add(id(plan.target))
        self.ints[id(plan.target.output)] = self._codes(value, q)

    def _bias(self, node: Node) -> np.ndarray | None:
        if node.op in (Op.CONV, Op.CONV_TRANSPOSE):
            b = node.inputs[2] if len(node.inputs) > 2 else None
            if b is None:
                return None
            if not b.is_const:
                raise QuantizationError(f"{_where(node)}: bias %{b.name} must be a constant")
            return b.const
        add = self.bias_add.get(id(node))
        if add is None:
            return None
        other = add.inputs[1] if add.inputs[0] is node.output else add.inputs[0]
        return other.const

    def _bias_name(self, node: Node) -> str:
        if node.op != Op.MATMUL:
            return node.inputs[2].name
        add = self.bias_add[id(node)]
        return (add.inputs[1] if add.inputs[0] is node.output else add.inputs[0]).name

    @staticmethod
    def _reduction_length(node: Node) -> int:
        w = node.inputs[1].shape
        if node.op == Op.MATMUL:
            return w[0]
        taps = math.prod(w[2:])
        if node.op == Op.CONV:
            return w[1] * taps
        return (w[0] // node.attrs.group) * taps

    def _weight_units(self, node: Node, iw: IntegerWeight):
        """Per-output-channel units ``s_w[c]``, the GroupRescale (per-group) and its headroom."""
        gran = iw.qtype.granularity
        w_shape = node.inputs[1].shape
        out_channels = self.layer_output(node).shape[1 if node.op != Op.MATMUL else -1]
        ch = {Op.CONV: 0, Op.CONV_TRANSPOSE: 1, Op.MATMUL: 1}[node.op]
        red = {Op.CONV: 1, Op.CONV_TRANSPOSE: 0, Op.MATMUL: 0}[node.op]
        unit = iw.unit
        if gran.axis is None:
            return np.full(out_channels, float(unit)), None, 0
        axis = gran.axis % len(w_shape)
        if gran.group_size is None:
            if axis != ch:
                raise QuantizationError(
                    f"{_where(node)}: per-channel weight scales along axis {axis}; integer "
                    f"layers need the output-channel axis {ch}")
            return np.tile(unit.ravel(), out_channels // unit.size), None, 0
        if axis != red or node.op == Op.CONV_TRANSPOSE:
            raise QuantizationError(
                f"{_where(node)}: per-group weight scales along axis {axis}; integer layers "
                f"need groups along the reduction axis {red} (Conv / MatMul only)")
        per = np.moveaxis(unit, ch, -1).reshape(-1, unit.shape[ch])
        raw = self._reduction_length(node) * iw.max_abs * code_magnitude(
            node.inputs[0].producer.attrs.qtype)
        headroom = max(0, min(GROUP_HEADROOM_BITS, 30 - raw.bit_length()))
        common = per.max(axis=0) / (1 << headroom)
        m, shift = to_dyadic(per / common)
        groups = GroupRescale(axis, gran.group_size, tuple(int(v) for v in m.ravel()),
                              tuple(int(v) for v in shift.ravel()))
        return common, groups, headroom

    def _acc_dtype(self, node: Node, k: int, iw: IntegerWeight, aq: QType, bound: int,
                   rq: Requant | None) -> DType:
        if bound <= _INT32_MAX:
            return INT32
        what = (f"{_where(node)}: accumulator bound K·max|w|·max|a| (+bias) = {k}·{iw.max_abs}"
                f"·{code_magnitude(aq)} = {bound} with K={k}, {iw.qtype.bits}-bit "
                f"{iw.qtype.kind.value} weights and {aq.bits}-bit activations")
        if not self.widen:
            raise QuantizationError(f"{what} overflows the int32 accumulator; use fewer bits or "
                                    "allow widening (widen_accumulators=True)")
        m_max = max(rq.multiplier) if rq is not None and rq.multiplier else 1
        s_max = max(rq.shift) if rq is not None and rq.shift else 0
        if bound * m_max + ((1 << (s_max - 1)) if s_max else 0) > _INT64_MAX:
            raise QuantizationError(f"{what} overflows even an int64 accumulator's requant; use "
                                    "fewer bits or smaller scales ratios")
        return INT64

    # -- residual Add / Concat ---------------------------------------------------------------
    def qadd(self, node: Node, plan: _Plan) -> None:
        q = plan.target.attrs.qtype
        self._check_activation(plan.target)
        reps = [self.ints[id(v)] for v in node.inputs]
        out_rank = len(node.output.shape)
        ratios = [np.atleast_1d(r.scale) / q.scale[0] for r in reps]
        try:
            shifts = [to_dyadic(r)[1] for r in ratios]
        except QuantizationError as err:
            raise QuantizationError(f"{_where(node)}: {err}") from None
        shift = min(62, max(int(s.max()) for s in shifts))
        while True:
            ms = [np.rint(np.ldexp(r, shift)).astype(np.int64) for r in ratios]
            bound = sum(rep.magnitude * int(m.max()) for rep, m in zip(reps, ms))
            bound += (1 << (shift - 1)) if shift > 0 else 0
            if bound <= _INT64_MAX or shift == 0:
                break
            shift -= 1
        if bound > _INT64_MAX:
            raise QuantizationError(f"{_where(node)}: residual sum overflows int64")
        lo, hi = self._range(q, plan.chain)
        zy = q.zero_point[0] if q.zero_point else 0
        terms = []
        for rep, m, v in zip(reps, ms, node.inputs):
            per = m.size > 1
            axis = rep.axis + out_rank - len(v.shape) if per else None
            terms.append(Requant(rep.zero_point, tuple(int(x) for x in m), (shift,) * m.size,
                                 zy, code_dtype(q), lo, hi, axis))
        out = self.g.add_node(Op.QADD, [r.value for r in reps], QAddAttrs(*terms),
                              name=node.name, outputs=[node.output.name + "_q"]).output
        out.qtype = replace(q, multiplier=terms[0].multiplier + terms[1].multiplier,
                            shift=terms[0].shift + terms[1].shift)
        self._finish_chain(out, plan, q)

    def concat(self, node: Node, plan: _Plan) -> None:
        q = plan.target.attrs.qtype
        self._check_activation(plan.target)
        clamps = [n for n in plan.chain if n.op in CLAMPS]
        full = (q.min, q.max)
        ins = []
        for i, v in enumerate(node.inputs):
            rep = self.ints[id(v)]
            if rep.same_format(q) and (not clamps or self._range(q, clamps) == full):
                ins.append(rep.value)
            else:
                ins.append(self.requantize(rep, q, node, clamps, f"{node.name}_in{i}").value)
        out = self.g.add_node(Op.CONCAT, ins, node.attrs, name=node.name,
                              outputs=[node.output.name + "_q"]).output
        out.qtype = q
        self._finish_chain(out, plan, q)
