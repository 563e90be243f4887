"""Per-layer quantization sensitivity: the damage when only one layer is quantized (issue 5).

Rule: for every *quantizable layer* ``l`` (the layers ``insert_fake_quant`` quantizes: Conv,
ConvTranspose, and MatMul whose second operand is a 2-D constant weight) and every
:class:`Candidate` ``c``, build the recipe "everything float except node ``l`` at ``c``"
(``preset("none")`` plus one ``nodes`` override, no PTQ), run ``lowbit.quantize(...,
fold=False)`` and the reference executor on every calibration batch, and compare the model
outputs ``q`` with the float outputs ``f``:

* ``metric="sqnr"``: the *noise power* ``sum (q - f)^2 / sum f^2`` over every output and batch,
  i.e. ``10^(-SQNR/10)`` with ``SQNR = 10 log10(sum f^2 / sum (q - f)^2)`` dB; lower is better
  and it adds up across layers to first order, which is what the allocator sums;
* ``metric="kl"``: the mean over samples of ``KL(softmax(f) || softmax(q))`` on the last axis
  of the first output (classifiers);
* a callable ``metric(float_out, quant_out) -> float`` gets the first model output of all
  batches concatenated along axis 0.

The same run gives the layer's packed weight bytes for the candidate exactly as
:func:`lowbit.compiler.quantize.weight_size` counts them (total packed minus the other, float,
layers at 4 bytes per element). The kernel of a candidate does not change the fake-quant
numerics, so candidates that differ only by kernel share one measurement. Results are cached in
memory per (model, layer, formats, metric, calibration data) and on disk; everything is
deterministic (fixed-order batches, seeded codebook fitting and reconstruction), also when the
layers are measured on worker processes (:mod:`lowbit.compiler.parallel`). A rich progress
bar shows on a terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ...compiler.recipes import (
    ActOverride,
    ActSpec,
    LayerOverride,
    WeightOverride,
    WeightSpec,
    preset,
)
from ...ir import Graph, Node, Op
from ...ir.errors import QuantizationError

METRICS = ("sqnr", "kl")

#: the ops insert_fake_quant quantizes (MatMul only with a 2-D constant weight)
_LAYER_OPS = frozenset({Op.CONV, Op.CONV_TRANSPOSE, Op.MATMUL})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One choice for a layer: weight and activation formats and a kernel family (None = let
    the selector choose). ``name`` is unique within a candidate set and used in tables."""

    name: str
    weights: WeightSpec
    activations: ActSpec = ActSpec()  # noqa: RUF009 (frozen, immutable)
    kernel: str | None = None

    @property
    def override(self) -> LayerOverride:
        """The recipe ``nodes`` override that puts a layer on this candidate."""
        w, a = self.weights, self.activations
        weights = WeightOverride(w.format, w.bits, w.granularity, symmetric=w.symmetric,
                                 zero_free=w.zero_free)
        if w.group_size is not None:  # left unset otherwise, as a recipe file spells it
            weights = replace(weights, group_size=w.group_size)
        return LayerOverride(weights, ActOverride(a.bits, a.signed, a.format),
                             kernel=self.kernel, exclude=False)

    @property
    def numerics(self) -> tuple[WeightSpec, ActSpec]:
        """What the fake-quant graph depends on (not the kernel)."""
        return self.weights, self.activations

    @property
    def reconstructs(self) -> bool:
        """True unless the weights are uniform 7- or 8-bit: every lower-bit or non-uniform
        format is refined by layer-wise reconstruction, in its sensitivity measurement and in
        a plan."""
        return reconstructs(self.weights)


def reconstructs(weights: WeightSpec) -> bool:
    """The reconstruction rule of ``--quant auto``: weights other than uniform >= 7 bits get
    layer-wise reconstruction (AdaRound/AdaQuant) -- without it a 2-bit layer's damage is
    misjudged (digits CNN, w2a8: 26.9% top-1 plain, 98.9% reconstructed)."""
    return weights.format != "uniform" or weights.bits < 7


def reduced_range(candidates) -> tuple[Candidate, ...]:
    """``candidates`` with uniform 8-bit weights at 7 bits (a recipe's ``reduce_range``) and
    ``w8`` in their names spelled ``w7``: the int8 candidates of a target whose fast int8
    kernel takes 7-bit weights (:func:`lowbit.codegen.kernels.int8.reduces_range`)."""
    out = []
    for cand in candidates:
        w = cand.weights
        if w.format == "uniform" and w.bits == 8:
            name = "w7" + cand.name[2:] if cand.name.startswith("w8") else f"{cand.name}@w7"
            cand = replace(cand, name=name, weights=replace(w, bits=7))
        out.append(cand)
    return tuple(out)


def _weight_choices() -> list[tuple[str, WeightSpec]]:
    return [
        ("w8", WeightSpec("uniform", 8)), ("w4", WeightSpec("uniform", 4)),
        ("w2", WeightSpec("uniform", 2)), ("ternary", WeightSpec("ternary", 2)),
        ("binary", WeightSpec("binary", 1)), ("pow2", WeightSpec("pow2", 4)),
        ("codebook4", WeightSpec("codebook", 4, symmetric=False)),
    ]


#: reconstruction steps per (layer, candidate) in a sensitivity measurement
PTQ_ITERS = 200

#: weights {uniform 8/4/2, ternary, binary, pow2 4, codebook 4} x activations {8, 4, 2} bits
DEFAULT_CANDIDATES: tuple[Candidate, ...] = tuple(
    Candidate(f"{wname}a{abits}", wspec, ActSpec(abits))
    for wname, wspec in _weight_choices() for abits in (8, 4, 2))


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """A quantizable layer: node ``name``, ``op`` type, weight ``params`` (element count) and
    ``fp32_bytes`` (4 per element)."""

    name: str
    op: str
    params: int

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.params


@dataclass(frozen=True)
class SensitivityTable:
    """``sensitivity[l, c]`` (damage, lower is better) and ``weight_bytes[l, c]`` (packed bytes
    of layer ``l`` at candidate ``c``) for ``layers`` x ``candidates`` under ``metric``.
    Arrays are read-only."""

    layers: tuple[LayerInfo, ...]
    candidates: tuple[Candidate, ...]
    sensitivity: np.ndarray
    weight_bytes: np.ndarray
    metric: str = "sqnr"

    def __post_init__(self):
        shape = (len(self.layers), len(self.candidates))
        for name in ("sensitivity", "weight_bytes"):
            array = np.array(getattr(self, name), dtype=np.float64)
            if array.shape != shape:
                raise QuantizationError(
                    f"SensitivityTable.{name} has shape {array.shape}; expected {shape} "
                    f"(layers x candidates)")
            array.flags.writeable = False
            object.__setattr__(self, name, array)
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise QuantizationError(f"candidate names must be unique, got {names}")

    def value(self, layer: str, candidate: str) -> float:
        """The sensitivity of ``layer`` at the candidate named ``candidate``."""
        return float(self.sensitivity[self.layer_index(layer), self.candidate_index(candidate)])

    def layer_index(self, layer: str) -> int:
        for i, info in enumerate(self.layers):
            if info.name == layer:
                return i
        raise QuantizationError(f"no quantizable layer {layer!r} in the sensitivity table")

    def candidate_index(self, candidate: str) -> int:
        for i, cand in enumerate(self.candidates):
            if cand.name == candidate:
                return i
        raise QuantizationError(
            f"no candidate {candidate!r}; candidates are "
            f"{', '.join(c.name for c in self.candidates)}")


def quantizable_layers(graph: Graph) -> list[Node]:
    """The layers insert_fake_quant quantizes, in graph order."""
    out = []
    for node in graph.nodes:
        if node.op not in _LAYER_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        weight = node.inputs[1]
        if not weight.is_const:
            continue
        if node.op == Op.MATMUL and weight.const.ndim != 2:
            continue
        out.append(node)
    return out


# (model digest, layer, numerics, metric, calib digest) -> (sensitivity, layer bytes)
_CACHE: dict[tuple, tuple[float, int]] = {}


def clear_cache() -> None:
    """Forget every cached measurement."""
    _CACHE.clear()


def _digest_graph(graph: Graph) -> str:
    from ...ir.printer import format_graph

    h = hashlib.sha256(format_graph(graph).encode())
    for node in quantizable_layers(graph):
        h.update(np.ascontiguousarray(node.inputs[1].const).tobytes())
    return h.hexdigest()


def _digest_calib(calib_set) -> str:
    h = hashlib.sha256()
    for name, array in calib_set.arrays.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(str(calib_set.batch_size).encode())
    return h.hexdigest()


def _damage(metric, float_outs: list[dict], quant_outs: list[dict]) -> float:
    if callable(metric):
        key = next(iter(float_outs[0]))
        f = np.concatenate([o[key] for o in float_outs])
        q = np.concatenate([o[key] for o in quant_outs])
        return float(metric(f, q))
    if metric == "sqnr":
        noise = signal = 0.0
        for fo, qo in zip(float_outs, quant_outs):
            for key in fo:
                f = fo[key].astype(np.float64)
                noise += float(np.sum((qo[key].astype(np.float64) - f) ** 2))
                signal += float(np.sum(f ** 2))
        return noise / signal if signal > 0 else noise
    key = next(iter(float_outs[0]))
    f = np.concatenate([o[key] for o in float_outs]).astype(np.float64)
    q = np.concatenate([o[key] for o in quant_outs]).astype(np.float64)
    logp = f - f.max(axis=-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    logq = q - q.max(axis=-1, keepdims=True)
    logq -= np.log(np.exp(logq).sum(axis=-1, keepdims=True))
    kl = np.sum(np.exp(logp) * (logp - logq), axis=-1)
    return float(np.mean(kl))


def _single_layer_recipe(layer: str, candidate: Candidate):
    base = preset("none")
    return replace(base, nodes={layer: candidate.override})


def layer_sensitivity(model, candidates: Sequence[Candidate] = DEFAULT_CANDIDATES, calib=None,
                      input_shapes=None, metric: str | Callable = "sqnr",
                      base: str = "none", ptq_iters: int = PTQ_ITERS,
                      cache_dir=None, disk_cache: bool = True, jobs: int | None = None,
                      share_reconstruction: bool = True) -> SensitivityTable:
    """Measure every (quantizable layer, candidate) pair of ``model`` (ONNX path / bytes /
    ModelProto or a lowbit Graph) on ``calib`` (as for :func:`lowbit.quantize`); the rule and
    the metrics are in the module docstring. ``base`` is what the other layers are during a
    measurement; only ``"none"`` (float) is supported. Candidates that
    :attr:`~Candidate.reconstructs` are measured after ``ptq_iters`` steps of layer-wise
    reconstruction of that one layer (0: plain rounding). With ``disk_cache`` (and a named
    metric) results also persist in ``sensitivity.json`` in ``cache_dir`` (default
    ``$XDG_CACHE_HOME/lowbit``), keyed by lowbit version, model and calibration digests, layer,
    formats, metric and reconstruction steps.

    ``share_reconstruction`` (default): a weight format is reconstructed once per layer,
    against the layer's 8-bit activations, and its 4- and 2-bit-activation candidates reuse
    those weights (with their own activation calibration) -- a third of the reconstructions;
    a compiled plan still reconstructs each layer against its own activation format.
    ``jobs``: worker processes (default :func:`lowbit.compiler.parallel.default_jobs`); layers
    are measured on workers when there are at least :data:`MIN_PARALLEL_MEASUREMENTS`
    reconstructing measurements to make and ``metric`` pickles. Results do not depend on
    ``jobs``."""
    from ...compiler.parallel import pmap, reaches_workers, resolve_jobs
    from ...compiler.quantize import _float_graph
    from ...passes.calibrate import as_calibration_set

    if base != "none":
        raise QuantizationError(
            f"layer_sensitivity base={base!r}: only 'none' (other layers float) is supported")
    if not callable(metric) and metric not in METRICS:
        raise QuantizationError(
            f"layer_sensitivity metric={metric!r}: use 'sqnr', 'kl' or a callable "
            f"(float_out, quant_out) -> float")
    candidates = tuple(candidates)
    if not candidates:
        raise QuantizationError("layer_sensitivity needs at least one candidate")
    if calib is None:
        raise QuantizationError(
            "layer_sensitivity needs calibration data: pass calib= a .npz path, a dict "
            "{input name: samples} or an iterable of feed dicts")
    graph = _float_graph(model, input_shapes)
    layers = quantizable_layers(graph)
    if not layers:
        raise QuantizationError(
            "the model has no quantizable layer (Conv / ConvTranspose / MatMul with a constant "
            "weight); there is nothing to allocate")
    infos = tuple(LayerInfo(n.name, n.op.value, int(n.inputs[1].numel)) for n in layers)
    calib_set = as_calibration_set(graph, calib)
    model_key = _digest_graph(graph)
    calib_key = _digest_calib(calib_set)
    # the callable itself (not its id, which a later function could reuse) keys the cache
    metric_key = metric
    disk = _disk_cache(cache_dir) if disk_cache and isinstance(metric, str) else None

    def key_of(li: int, ci: int) -> tuple:
        iters = ptq_iters if candidates[ci].reconstructs else 0
        ptq = f"{iters}+shared" if iters and share_reconstruction else iters
        return (model_key, infos[li].name, candidates[ci].numerics, metric_key, calib_key, ptq)

    # layer -> candidates still to measure: one task, so that its reconstructions train as
    # one batch; the costliest tasks (reconstructing, big layers) go first
    pending: dict[int, list[int]] = {}
    for li in range(len(infos)):
        for ci in range(len(candidates)):
            key = key_of(li, ci)
            if key not in _CACHE and disk is not None:
                stored = _disk_get(disk, key)
                if stored is not None:
                    _CACHE[key] = stored
            if key not in _CACHE:
                pending.setdefault(li, []).append(ci)
    tasks = sorted(pending.items(),
                   key=lambda task: (not any(candidates[ci].reconstructs for ci in task[1]),
                                     -infos[task[0]].params, task[0]))
    workers = resolve_jobs(jobs)
    if workers > 1 and not reaches_workers(metric):
        workers = 1  # a lambda, a local function or one from __main__ cannot reach a worker
    # the reconstructions to make: one per weight format when shared, else one per measurement
    n_slow = 0 if not ptq_iters else sum(
        len({candidates[ci].weights if share_reconstruction else ci
             for ci in cis if candidates[ci].reconstructs}) for _, cis in tasks)
    if n_slow < MIN_PARALLEL_MEASUREMENTS:
        workers = 1  # starting workers (imports) costs more than it saves
    last_save = [time.monotonic()]
    n_cached = len(infos) * len(candidates) - sum(len(cis) for _, cis in tasks)
    with ProgressBar(len(infos) * len(candidates)) as advance, _saved(disk):
        for _ in range(n_cached):
            advance()

        def done(index: int, results: list[tuple[float, int]]) -> None:
            li, cis = tasks[index]
            for ci, result in zip(cis, results):
                _CACHE[key_of(li, ci)] = result
                if disk is not None:
                    _disk_put(disk, key_of(li, ci), result)
                advance()
            if disk is not None and time.monotonic() - last_save[0] > SAVE_EVERY_S:
                disk.save()  # an interrupted run keeps most of its work
                last_save[0] = time.monotonic()

        pmap(_measure_task, [(infos[li], tuple(cis)) for li, cis in tasks], workers,
             initializer=_start_measurer,
             initargs=(graph, calib_set, candidates, metric, ptq_iters, share_reconstruction),
             on_done=done)

    sens = np.zeros((len(infos), len(candidates)))
    nbytes = np.zeros((len(infos), len(candidates)))
    for li in range(len(infos)):
        for ci in range(len(candidates)):
            sens[li, ci], nbytes[li, ci] = _CACHE[key_of(li, ci)]
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
    return SensitivityTable(infos, candidates, sens, nbytes, metric_name)


#: with fewer reconstructions than this to make, measurements stay in this process
MIN_PARALLEL_MEASUREMENTS = 12


class _Measurer:
    """Measures (layer, candidates) tasks of one model on one calibration set: the float
    prefix is computed once (on first use), then each candidate's one-layer fake-quant graph
    is calibrated, reconstructed and run from the quantized layer on."""

    def __init__(self, graph: Graph, calib_set, candidates, metric, ptq_iters: int,
                 share_reconstruction: bool):
        self.graph, self.calib_set = graph, calib_set
        self.candidates, self.metric, self.ptq_iters = candidates, metric, ptq_iters
        self.share = share_reconstruction
        self.total_fp32 = sum(4 * int(n.inputs[1].numel) for n in quantizable_layers(graph))
        self._prefix: _FloatPrefix | None = None

    @property
    def prefix(self) -> _FloatPrefix:
        if self._prefix is None:
            self._prefix = _FloatPrefix(self.graph, list(self.calib_set))
        return self._prefix

    def measure(self, info: LayerInfo, cis: Sequence[int]) -> list[tuple[float, int]]:
        """``[(damage, layer bytes)]`` of layer ``info`` at each candidate index of ``cis``
        (their reconstructions batched, :meth:`_FloatPrefix.quantize_many`)."""
        from ...compiler.quantize import weight_size

        prefix, out = self.prefix, []
        graphs = prefix.quantize_many(info.name, [self.candidates[ci] for ci in cis],
                                      self.calib_set, self.ptq_iters,
                                      {} if self.share else None)
        for qgraph in graphs:
            quant_outs = prefix.run(qgraph)
            layer_bytes = weight_size(qgraph).packed - (self.total_fp32 - info.fp32_bytes)
            out.append((_damage(self.metric, prefix.outputs, quant_outs), int(layer_bytes)))
        return out


_MEASURER: _Measurer | None = None


def _start_measurer(*args) -> None:
    """Pool initializer (and the in-process start): this process's :class:`_Measurer`."""
    global _MEASURER
    _MEASURER = _Measurer(*args)


def _measure_task(task: tuple[LayerInfo, tuple[int, ...]]) -> list[tuple[float, int]]:
    info, cis = task
    assert _MEASURER is not None, "the measurer is started by pmap's initializer"
    return _MEASURER.measure(info, cis)


#: the sensitivity file is rewritten at most this often during a run (and once at its end)
SAVE_EVERY_S = 30.0


@contextlib.contextmanager
def _saved(disk):
    """Save ``disk`` (if any) when the block ends, also on an error or an interrupt."""
    try:
        yield
    finally:
        if disk is not None:
            disk.save()


def _disk_cache(cache_dir):
    from pathlib import Path

    from ...compiler.disk_cache import JsonCache, cache_folder

    return JsonCache((Path(cache_dir) if cache_dir is not None else cache_folder())
                     / "sensitivity.json")


def _disk_key(key: tuple) -> str:
    from ... import __version__
    from ...compiler.disk_cache import numerics_revision

    model, layer, numerics, metric, calib, iters = key
    return (f"lowbit={__version__}|src={numerics_revision()}|model={model}|calib={calib}|"
            f"{layer}|{numerics!r}|metric={metric}|ptq={iters}")


def _disk_get(disk, key: tuple) -> tuple[float, int] | None:
    base = _disk_key(key)
    value, nbytes = disk.get(base + "|s"), disk.get(base + "|b")
    return None if value is None or nbytes is None else (value, int(nbytes))


def _disk_put(disk, key: tuple, result: tuple[float, int]) -> None:
    base = _disk_key(key)
    disk.put(base + "|s", float(result[0]))
    disk.put(base + "|b", float(result[1]))


#: above this many bytes of float intermediates, measurements re-run the whole graph
PREFIX_CACHE_BYTES = 2 << 30


class _FloatPrefix:
    """The float run of every calibration batch, kept so that a one-layer-quantized copy of
    the graph is calibrated and evaluated from the quantized layer on: the values upstream of
    every FakeQuant are the float ones (same names), so they are read, not recomputed
    (``Interpreter.run(initial_env=...)``), and the layer's input FakeQuant is calibrated from
    the float arrays it would observe (:func:`~lowbit.passes.calibrate.calibrate_node`) --
    the same numbers as quantize(...)'s calibrate pass, in a fraction of the time. When the
    intermediates would exceed :data:`PREFIX_CACHE_BYTES`, whole runs are used instead.

    Runs use :class:`~.fast_float.FastFakeQuantInterpreter` (float convs on torch, one
    thread). When the graph also runs at the stacked batch of all calibration batches -- its
    batch-``N`` copy (:func:`~.fast_float.rebatched`) gives every per-batch output -- all
    batches run as one (``self.parts`` of them); activation observers still see one array per
    calibration batch."""

    def __init__(self, graph: Graph, feeds: list):
        from .fast_float import one_torch_thread

        self.graph, self.feeds, self.parts = graph, feeds, 1
        self.calib = None  # the calibration set of the stacked batch, when batched
        with one_torch_thread():
            if not self._batched(graph, feeds):
                self._per_batch(graph, feeds)

    @staticmethod
    def _keep_run(graph: Graph, feed) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        from .fast_float import FastFakeQuantInterpreter

        values: dict[str, np.ndarray] = {}

        class _Keep(FastFakeQuantInterpreter):
            def run_node(self, node, inputs):
                results = super().run_node(node, inputs)
                for v, array in zip(node.outputs, results):
                    values[v.name] = np.asarray(array, dtype=v.dtype.numpy)
                return results

        return values, _Keep(graph).run(feed)

    def _per_batch(self, graph: Graph, feeds: list) -> None:
        from .fast_float import FastFakeQuantInterpreter

        self.values: list[dict[str, np.ndarray]] | None = []
        self.outputs: list[dict[str, np.ndarray]] = []
        size = 0
        for feed in feeds:
            values, outputs = self._keep_run(graph, feed)
            self.outputs.append(outputs)
            self.values.append(values)
            size += sum(a.nbytes for a in values.values())
            if size > PREFIX_CACHE_BYTES:
                self.values = None
                self.outputs = [FastFakeQuantInterpreter(graph).run(f) for f in feeds]
                break

    def _batched(self, graph: Graph, feeds: list) -> bool:
        from ...compiler.calib_data import CalibrationSet
        from .fast_float import (
            REBATCH_ERRORS,
            FastFakeQuantInterpreter,
            rebatched,
            same_outputs,
            stack_feeds,
        )

        stacked = stack_feeds(feeds)
        big = None if stacked is None else rebatched(graph, stacked)
        if big is None or _declared_bytes(big) > PREFIX_CACHE_BYTES:
            return False
        try:
            values, outputs = self._keep_run(big, stacked)
        except REBATCH_ERRORS:
            return False
        if sum(a.nbytes for a in values.values()) > PREFIX_CACHE_BYTES or not same_outputs(
                outputs, [FastFakeQuantInterpreter(graph).run(f) for f in feeds]):
            return False
        rows = next(iter(stacked.values())).shape[0]
        self.graph, self.feeds, self.parts = big, [stacked], len(feeds)
        self.values, self.outputs = [values], [outputs]
        self.calib = CalibrationSet(stacked, rows, rows)
        return True

    def _observed(self, source: str) -> list[np.ndarray]:
        """The arrays the FakeQuant reading float value ``source`` observes, one per
        calibration batch (a batched run's array split back into its batches)."""
        arrays = [values[source] if source in values else feed[source]
                  for values, feed in zip(self.values, self.feeds)]
        if self.parts == 1:
            return arrays
        (array,) = arrays
        if array.ndim == 0 or array.shape[0] % self.parts:
            return arrays
        return np.split(array, self.parts, axis=0)

    def quantize_one(self, layer: str, candidate: Candidate, calib_set,
                     iters: int = 0, shared: dict | None = None) -> Graph:
        """:meth:`quantize_many` of one candidate."""
        (qgraph,) = self.quantize_many(layer, [candidate], calib_set, iters, shared)
        return qgraph

    def quantize_many(self, layer: str, candidates: Sequence[Candidate], calib_set,
                      iters: int = 0, shared: dict | None = None) -> list[Graph]:
        """Per candidate, the calibrated fake-quant graph with only ``layer`` at that
        candidate; the weights of candidates that :attr:`~Candidate.reconstructs` are
        reconstructed for ``iters`` steps, all in one :meth:`Reconstruct.run_many
        <lowbit.passes.reconstruct.Reconstruct.run_many>` (formats of one layer on the same
        inputs train as one batch). With a ``shared`` dict (one per layer), a weight format
        is reconstructed once, against 8-bit activations, and reused by that format's
        lower-bit-activation candidates (see :func:`layer_sensitivity`)."""
        trains = [iters > 0 and c.reconstructs for c in candidates]
        if shared is None:
            graphs = [self._quantize_one(layer, c, calib_set) for c in candidates]
            self._reconstruct([g for g, t in zip(graphs, trains) if t], calib_set, iters)
            return graphs
        sources: dict[tuple, Candidate] = {}
        for cand, train in zip(candidates, trains):
            key = (cand.weights, cand.activations.signed)
            if train and key not in shared:
                sources.setdefault(key, replace(cand, activations=ActSpec(8, key[1])))
        done = {key: self._quantize_one(layer, src, calib_set) for key, src in sources.items()}
        self._reconstruct(list(done.values()), calib_set, iters)
        for key, qgraph in done.items():
            shared[key] = _layer_weights(qgraph, layer)
        out = []
        for cand, train in zip(candidates, trains):
            key = (cand.weights, cand.activations.signed)
            if train and key in done and sources[key].numerics == cand.numerics:
                out.append(done[key])
                continue
            qgraph = self._quantize_one(layer, cand, calib_set)
            if train:
                _set_layer_weights(qgraph, layer, shared[key])
            out.append(qgraph)
        return out

    def _quantize_one(self, layer: str, candidate: Candidate, calib_set) -> Graph:
        """The calibrated (not reconstructed) graph with only ``layer`` at ``candidate``."""
        from ...compiler.quantize import quantize
        from ...passes.calibrate import calibrate_node, is_calibrated
        from ...passes.insert_fake_quant import InsertFakeQuant

        recipe = _single_layer_recipe(layer, candidate)
        if self.values is None:
            return quantize(self.graph, recipe=recipe, calib=calib_set, fold=False)
        qgraph = self.graph.copy()
        InsertFakeQuant(recipe)(qgraph)
        fqs = [n for n in qgraph.nodes if n.op == Op.FAKE_QUANT]
        tainted = _downstream(fqs)
        for node in fqs:
            if node.attrs.role != "activation" or is_calibrated(node.attrs.qtype):
                continue
            source = node.inputs[0].name
            assert source not in tainted, "an activation FakeQuant reads a quantized value"
            calibrate_node(node, self._observed(source), recipe.calibration)
        return qgraph

    def _reconstruct(self, graphs: list[Graph], calib_set, iters: int) -> None:
        """Reconstruct the quantized layer of each of ``graphs`` (one batch where they share
        the layer's inputs), resumed from the float prefix."""
        from ...passes.reconstruct import Reconstruct

        if not graphs:
            return
        envs = None
        if self.values is not None:  # a value downstream of any graph's FakeQuant is recomputed
            envs = self._envs(set().union(*(_tainted(g) for g in graphs)))
        Reconstruct(self.calib or calib_set, iters=iters, seed=preset("none").ptq.seed,
                    initial_envs=envs).run_many(graphs)

    def _envs(self, tainted: set[str]) -> list[dict[str, np.ndarray]]:
        """Per batch, the float values not in ``tainted`` (upstream of every FakeQuant)."""
        return [{k: a for k, a in values.items() if k not in tainted}
                for values in self.values]

    def run(self, qgraph: Graph) -> list[dict[str, np.ndarray]]:
        """Outputs of the fake-quant ``qgraph`` per batch, resumed from the float prefix."""
        from .fast_float import FastFakeQuantInterpreter, one_torch_thread

        with one_torch_thread():
            if self.values is None:
                return [FastFakeQuantInterpreter(qgraph).run(f) for f in self.feeds]
            return [FastFakeQuantInterpreter(qgraph).run(feed, initial_env=env)
                    for env, feed in zip(self._envs(_tainted(qgraph)), self.feeds)]


def _tainted(qgraph: Graph) -> set[str]:
    """Names of the values of ``qgraph`` computed from a FakeQuant (not float-prefix values)."""
    return _downstream([n for n in qgraph.nodes if n.op == Op.FAKE_QUANT])


def _declared_bytes(graph: Graph) -> int:
    """Bytes of every node output of ``graph`` at its declared shape and dtype."""
    return sum(math.prod(v.shape) * np.dtype(v.dtype.numpy).itemsize
               for node in graph.nodes for v in node.outputs if v.shape is not None)


def _layer_weights(qgraph: Graph, layer: str):
    """``(weight array, weight QType, bias or None, meta)`` of ``layer``'s weight FakeQuant
    in a fake-quant graph (what reconstruction wrote)."""
    from ...passes.insert_fake_quant import quantized_layers

    (ql,) = [q for q in quantized_layers(qgraph) if q.node.name == layer]
    fq = ql.weight_fq
    return np.array(ql.weight.const), fq.attrs, ql.bias, fq.meta.get("ptq")


def _set_layer_weights(qgraph: Graph, layer: str, weights) -> None:
    """Give ``layer`` of ``qgraph`` the weights, weight QType and bias of :func:`_layer_weights`
    (as the reconstruct pass writes them)."""
    from ...passes.insert_fake_quant import quantized_layers

    array, attrs, bias, meta = weights
    (ql,) = [q for q in quantized_layers(qgraph) if q.node.name == layer]
    fq = ql.weight_fq
    fq.set_input(0, qgraph.add_const(array.astype(ql.weight.dtype.numpy), ql.weight.name))
    fq.attrs = attrs
    if bias is not None and ql.bias_site is not None:
        ql.set_bias(qgraph, bias)
    if meta is not None:
        fq.meta["ptq"] = f"{meta} (shared from 8-bit activations)"
    qgraph.forget_unused_constants()


def _downstream(nodes: list[Node]) -> set[str]:
    """Names of every value computed from the outputs of ``nodes`` (inclusive)."""
    seen: set[str] = set()
    stack = [v for n in nodes for v in n.outputs]
    while stack:
        value = stack.pop()
        if value.name in seen:
            continue
        seen.add(value.name)
        for user, _ in value.users:
            stack.extend(user.outputs)
    return seen


class ProgressBar:
    """``with ProgressBar(total, description) as advance: ... advance()``: a rich progress bar
    on a terminal (stderr), nothing otherwise."""

    def __init__(self, total: int, description: str = "layer sensitivity"):
        self.total = total
        self.description = description

    def __enter__(self):
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(transient=True, disable=not sys.stderr.isatty(),
                             console=Console(stderr=True))
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


__all__ = ["DEFAULT_CANDIDATES", "METRICS", "Candidate", "LayerInfo", "ProgressBar",
           "SensitivityTable",
           "clear_cache", "layer_sensitivity", "quantizable_layers"]
