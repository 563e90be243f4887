"""reconstruct: layer-wise reconstruction of quantized weights (AdaRound-style, sequential).

Rule: for every quantized layer of a calibrated fake-quant graph, in graph order,

1. collect the layer's input activations on the calibration data by running the *partially
   quantized* model (the fake-quant simulator, with every earlier layer already
   reconstructed), i.e. exactly what the layer will see after quantization;
2. call :func:`lowbit.passes.ptq.reconstruct_layer` (``reconstruct_layers`` for several
   graphs, :meth:`Reconstruct.run_many`) on the float weight ``W``, the float bias, those
   inputs and the weight's fitted QType (``kind="conv"`` for Conv, ``"linear"`` for MatMul
   with ``W`` transposed to ``(N, K)`` and inputs flattened to ``(rows, K)``;
   ``act_fn="relu"`` when the layer's output feeds only a Relu; ``method="adaround"`` by
   default, ``"adaquant"`` on request). It minimises the output MSE
   ``|a(f(x; W, b)) - a(f(x; W_q, b'))|²`` and never returns a result worse than plain rounding;
3. write back: the weight FakeQuant gets the refined QType (scales / codebook) and its input
   becomes the constant ``W' = dequantize(codes, qtype')``, so ``quantize(W', qtype') = codes``
   (the reconstructed codes; fold_scales reads them from there); the bias constant becomes
   ``b'``.

Layers skipped (with ``meta["ptq"]`` saying why): ConvTranspose (int8 only) and convs with more
than 2 spatial dims. ``node.meta["ptq"]`` of the weight FakeQuant records the method and the
loss before / after. Deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Op
from ..ir.attrs import ConvAttrs, FakeQuantAttrs
from ..ir.qformats import dequantize, group_index
from ..ir.qtype import Granularity, QType
from .base import Pass, PassResult
from .calibrate import as_calibration_set, capture_values
from .insert_fake_quant import QuantizedLayer, quantized_layers
from .ptq import reconstruct_layers


def transpose_qtype(qtype: QType, shape: tuple[int, ...]) -> QType:
    """The QType of a 2-D weight of ``shape`` after ``w.T``: axis 0 <-> 1 and the per-group
    parameters (scale, zero point, codebook) reordered to the transposed group layout."""
    gran = qtype.granularity
    if gran.axis is None:
        return qtype
    new_gran = Granularity(1 - gran.axis, gran.group_size)
    old_gid, n_groups = group_index(shape, gran)
    new_gid, _ = group_index(shape[::-1], new_gran)
    order = np.empty(n_groups, dtype=np.int64)
    order[new_gid.ravel()] = old_gid.T.ravel()  # new group j holds old group order[j]

    def pick(values):
        values = tuple(values)
        if len(values) != n_groups:
            return values
        return tuple(values[i] for i in order)

    return QType(qtype.kind, qtype.bits, qtype.signed, new_gran, scale=pick(qtype.scale),
                 zero_point=pick(qtype.zero_point), codebook=pick(qtype.codebook),
                 zero_free=qtype.zero_free, multiplier=qtype.multiplier, shift=qtype.shift,
                 extra=qtype.extra)


class Reconstruct(Pass):
    """Sequential layer-wise reconstruction of every quantized layer on calibration data
    (rule in the module docstring). ``iters`` optimisation steps per layer, ``seed``,
    ``method`` (``"adaround"``, the default: on the digits CNN / transformer / ResNet it kept
    w2a8 and ternary within 0.1-0.7 points of float where ``"adaquant"`` lost up to 2.8; or
    ``"adaquant"``)."""

    name = "reconstruct"
    in_place = True

    def __init__(self, calib, iters: int = 1000, seed: int = 0, method: str = "adaround",
                 initial_envs=None):
        self.calib = calib
        self.iters = iters
        self.seed = seed
        self.method = method
        #: per calibration batch, known values to resume the input capture from (or None)
        self.initial_envs = initial_envs

    def run(self, graph: Graph) -> PassResult:
        return self.run_many([graph])[0]

    def run_many(self, graphs: Sequence[Graph]) -> list[PassResult]:
        """The pass on several graphs at once, each left as :meth:`run` leaves it. Graphs that
        are copies of one model differing in a layer's weight format (a sensitivity
        measurement at each format) share the work: layer by layer, in graph order, the graphs
        whose layer has the same weights, bias, inputs and activation are reconstructed by one
        batched optimisation (:func:`~lowbit.passes.ptq.reconstruct_layers`). Graphs whose
        quantized layers differ are run one by one."""
        pending = [[layer for layer in quantized_layers(graph)
                    if "ptq" not in layer.weight_fq.meta] for graph in graphs]
        names = {tuple(layer.node.name for layer in layers) for layers in pending}
        if len(names) > 1:
            return [self.run_many([graph])[0] for graph in graphs]
        if not names or not next(iter(names)):
            return [PassResult(graph, False) for graph in graphs]
        calibs = [as_calibration_set(graph, self.calib) if layers else None
                  for graph, layers in zip(graphs, pending)]
        changed = [False] * len(graphs)
        for index in range(len(next(iter(names)))):
            jobs = {}
            for g, (graph, layers) in enumerate(zip(graphs, pending)):
                job = self._job(graph, layers[index], calibs[g])
                if job is None:
                    continue
                same = next((key for key, group in jobs.items() if group[0][1].same_data(job)),
                            None)
                jobs.setdefault(same if same is not None else g, []).append((g, job))
            for group in jobs.values():
                first = group[0][1]
                results = reconstruct_layers(
                    first.w, first.bias, first.x, [job.qtype for _, job in group],
                    kind=first.kind, conv_attrs=first.conv_attrs, act_fn=first.act_fn,
                    method=self.method, iters=self.iters, seed=self.seed)
                for (g, job), result in zip(group, results):
                    _write_back(graphs[g], pending[g][index], job, result)
                    changed[g] = True
        for graph in graphs:
            graph.forget_unused_constants()
        return [PassResult(graph, flag) for graph, flag in zip(graphs, changed)]

    def _job(self, graph: Graph, layer: QuantizedLayer, calib) -> _Job | None:
        """What :func:`reconstruct_layers` needs for ``layer``, or None (``meta["ptq"]`` says
        why) for a layer it does not handle."""
        node, fq = layer.node, layer.weight_fq
        w = np.array(layer.weight.const, dtype=np.float32)  # writable copy for torch
        qtype = fq.attrs.qtype
        if node.op == Op.CONV_TRANSPOSE or (node.op == Op.CONV and w.ndim > 4):
            fq.meta["ptq"] = f"skipped: {node.op.value} with weight {list(w.shape)}"
            return None
        x_value = node.inputs[0]
        x = capture_values(graph, calib, [x_value], f"reconstruct {node.name}",
                           self.initial_envs)[x_value.name]
        bias = None if layer.bias is None else np.asarray(layer.bias, dtype=np.float32)
        if node.op == Op.MATMUL:
            return _Job(np.ascontiguousarray(w.T), bias, x.reshape(-1, w.shape[0]),
                        transpose_qtype(qtype, w.shape), "linear", None, layer.act_fn, True)
        return _Job(w, bias, x, qtype, "conv", node.attrs, layer.act_fn, False)


@dataclass(frozen=True, eq=False)
class _Job:
    """One layer's reconstruction inputs (a MatMul's weight transposed to ``(N, K)``)."""

    w: np.ndarray
    bias: np.ndarray | None
    x: np.ndarray
    qtype: QType
    kind: str
    conv_attrs: ConvAttrs | None
    act_fn: str | None
    transposed: bool

    def same_data(self, other: _Job) -> bool:
        """True when both reconstruct the same layer on the same data (formats may differ)."""
        return (self.kind == other.kind and self.act_fn == other.act_fn
                and self.conv_attrs == other.conv_attrs and self.transposed == other.transposed
                and _same(self.w, other.w) and _same(self.bias, other.bias)
                and _same(self.x, other.x))


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def _write_back(graph: Graph, layer: QuantizedLayer, job: _Job, result) -> None:
    """Rule step 3: the weight FakeQuant reads ``dequantize(codes, qtype')`` and gets the
    refined QType; the bias constant becomes ``b'``; ``meta["ptq"]`` records the losses."""
    fq = layer.weight_fq
    fq.meta["ptq"] = f"{result.method} loss {result.loss_before:.4g} -> {result.loss_after:.4g}"
    if result.method == "round":
        return  # meta changed; weights stay as fitted
    w_new = dequantize(result.codes, result.qtype)
    q_new = result.qtype
    if job.transposed:
        w_new, q_new = w_new.T, transpose_qtype(result.qtype, job.w.shape)
    const = graph.add_const(np.ascontiguousarray(w_new).astype(layer.weight.dtype.numpy),
                            layer.weight.name)
    fq.set_input(0, const)
    fq.attrs = FakeQuantAttrs(q_new, "weight")
    if result.bias is not None and layer.bias_site is not None:
        layer.set_bias(graph, result.bias)
