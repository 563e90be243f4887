"""Measured latency for ``--quant auto`` (issue 5): per-layer kernel times and whole models.

The allocator's latency of a plan is predicted as::

    T(plan) = sum_l T[l, c_l] · (1 + remainder_{c_l} / sum_k T[k, c_l])

(:attr:`lowbit.compiler.planner.Planner.latency_matrix`): each layer's kernel scaled by its
candidate's in-model factor, so a uniform plan predicts exactly its measured time.

* ``T[l, c]`` (:func:`layer_costs`): layer ``l`` computed by the kernel family that
  selection would choose at candidate ``c`` (``select._fastest``) -- the same one-node
  compile and timing as kernel selection
  (:func:`lowbit.codegen.select.measure_layer`: one thread, median, cache-hot), read from or
  added to the same disk cache (key: lowbit version and codegen revision, target, op, shapes,
  formats, epilogue, family). The node is taken from the integer graph in which *every* layer
  is at ``c``, so its epilogue (requantize to the next layer's codes) is the one a quantized
  plan has.
* ``remainder_c`` = the measured whole-model time of the plan with every layer at ``c`` minus
  the sum of its layers' ``T`` (everything that is not a quantized layer: quantize / dequantize
  boundaries, pools, activations, residual adds, VM calls; and the kernels running slower in
  the model than alone, cache-hot); negative when the layers timed alone cost more than the
  model runs them in (:func:`remainder_ms`).

:func:`graph_ms` compiles and times a whole integer graph; :func:`artifact_ms` times a compiled
artifact; both one thread, median of :data:`~lowbit.codegen.select.WHOLE_REPEATS` rounds
(:func:`~lowbit.codegen.select.time_executables`: the graphs timed together take turns, round
by round), cache-hot, random inputs (timing does not depend on the values). Whole-graph
times are cached on disk too, keyed by a digest of the graph (text and constants) and the
target.

Compiling is the slow part (a one-node kernel ~0.2 s, a whole model seconds), timing is not,
and a timing must not share the CPU with a compile: :func:`layer_costs` and :func:`graphs_ms`
first compile every uncached kernel / graph on ``jobs`` worker processes
(:func:`lowbit.compiler.parallel.pmap`), then time them in this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..ir import Graph
from ..ir.errors import LowbitError, LoweringError
from .select import (
    LAYER_OPS,
    REFERENCE,
    candidates,
    open_cache,
    time_executables,
)

#: worker processes compile the uncached one-node kernels of :func:`layer_costs` only when
#: there are at least this many (a worker takes ~2-3 s to start, a kernel ~0.2 s to compile)
MIN_PARALLEL_LAYERS = 32
#: ... and the uncached whole graphs of :func:`graphs_ms` only when they hold at least this
#: many nodes in all (~40 ms of compiling per node)
MIN_PARALLEL_NODES = 200


@dataclass(frozen=True)
class LayerCosts:
    """``ms[l, c]`` (NaN: no kernel takes that layer at that candidate, or not measurable) and
    ``family[l][c]`` (the fastest family; the static choice when ``measured`` is False)."""

    ms: np.ndarray
    family: tuple[tuple[str, ...], ...]
    measured: bool


def _layer_nodes(graph: Graph) -> dict:
    return {n.name: n for n in graph.nodes if n.op in LAYER_OPS}


def _workers(jobs, work: int, threshold: int) -> int:
    """``jobs`` worker processes when ``work >= threshold``, else 1 (here): a worker takes
    ~2-3 s to start, so a little work is faster without one."""
    from ..compiler.parallel import resolve_jobs

    return resolve_jobs(jobs) if work >= threshold else 1


def layer_costs(graphs: Sequence[Graph], layers: Sequence[str], target, *,
                kernels: Sequence[str | None] | None = None, cache_dir=None,
                measure: bool = True, progress=None, jobs: int | None = 1) -> LayerCosts:
    """Per-layer latency of every candidate (module docstring). ``graphs[c]``: the integer
    graph with every layer of ``layers`` at candidate ``c``; ``kernels[c]``: the family that
    candidate forces (None: the fastest accepted). ``measure=False`` or a target that cannot
    run here (arm64, cuda) gives NaN times and the static family order. ``progress()`` is
    called once per (layer, candidate), as its time is known.

    The (layer, family) kernels not in the cache (deduplicated by
    :func:`~lowbit.codegen.select.layer_key`) are first compiled on ``jobs`` worker processes
    (None: :func:`~lowbit.compiler.parallel.default_jobs`; workers only for at least
    :data:`MIN_PARALLEL_LAYERS` kernels), then timed one by one in this process, with no
    compile running beside them; results do not depend on ``jobs``."""
    from .select import _fastest, _static_choice, compile_layers, layer_key, time_layer
    from .target import resolve_target

    if isinstance(target, str):
        target = resolve_target(target)
    timing = measure and target.runs_on_host()
    kernels = list(kernels) if kernels is not None else [None] * len(graphs)
    # every (candidate, layer): its node and the families to compare (None: NaN, the forced
    # kernel cannot take the layer)
    pairs = []
    for c, graph in enumerate(graphs):
        nodes = _layer_nodes(graph)
        for l, name in enumerate(layers):
            node = nodes.get(name)
            if node is None:
                raise LoweringError(
                    f"layer '{name}' is not a QConv / QMatMul in the integer graph of "
                    f"candidate {c}; the candidate did not quantize it")
            pool, _ = candidates(node, target)
            if kernels[c] is not None:
                pool = [kernels[c]] if kernels[c] in pool else None
            pairs.append((c, l, node, pool))
    ms = np.full((len(layers), len(graphs)), np.nan)
    family = [[REFERENCE] * len(graphs) for _ in layers]
    cache = open_cache(cache_dir) if timing else None
    todo: dict[str, tuple] = {}  # uncached key -> (node, family), first use first
    for _, _, node, pool in pairs if timing else ():
        for fam in pool or ():
            key = layer_key(node, target, fam)
            if key not in todo and cache.get(key) is None:
                todo[key] = (node, fam)
    with contextlib.ExitStack() as stack:
        compiled = {}
        if todo:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="lowbit-layers-"))
            workers = _workers(jobs, len(todo), MIN_PARALLEL_LAYERS)
            compiled = dict(zip(todo, compile_layers(list(todo.values()), target, folder,
                                                     workers)))
        try:
            for c, l, node, pool in pairs:
                if pool is None:
                    if progress:
                        progress()
                    continue
                if timing:
                    times = {}
                    for fam in pool:
                        key = layer_key(node, target, fam)
                        if key in compiled:  # compiled above, timed on its first use
                            outcome = compiled.pop(key)
                            if isinstance(outcome, LowbitError):
                                raise outcome
                            cache.put(key, time_layer(todo[key][0], outcome))
                        times[fam] = cache.get(key)
                    best = _fastest(node, pool, times, target)  # select_kernels' rule
                    ms[l, c] = times[best] / 1000.0
                else:
                    best = pool[0] if kernels[c] is not None else _static_choice(pool)
                family[l][c] = best
                if progress:
                    progress()
        finally:
            if cache is not None:
                cache.save()
    return LayerCosts(ms, tuple(tuple(row) for row in family), timing)


def _random_inputs(values) -> list[np.ndarray]:
    from .select import _codes

    rng = np.random.default_rng(0)
    out = []
    for v in values:
        if v.dtype.is_integer or v.qtype is not None:
            out.append(_codes(v, rng))
        else:
            out.append(rng.standard_normal(v.shape).astype(v.dtype.numpy))
    return out


def graph_digest(graph: Graph) -> str:
    """SHA-256 of the graph text (ops, attrs, types, per-node kernel) and every constant."""
    from ..ir.printer import format_graph

    h = hashlib.sha256(format_graph(graph).encode())
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None and v.is_const:
                h.update(np.ascontiguousarray(v.const).tobytes())
    return h.hexdigest()


def _graph_key(graph: Graph, target) -> str:
    from .. import __version__
    from .revision import revision

    return (f"lowbit={__version__}+{revision()}|target={target.name}:{dict(target.tvm_items)}"
            f"|graph|{graph_digest(graph)}")


def graphs_ms(graphs: Sequence[Graph], target, *, cache_dir=None,
              jobs: int | None = 1) -> list[float]:
    """Median ms of each whole graph of ``graphs`` compiled for ``target`` (host only), one
    thread; cached on disk by :func:`graph_digest` and target. The uncached graphs are
    compiled first, on ``jobs`` worker processes (None: the default; workers only when they
    hold at least :data:`MIN_PARALLEL_NODES` nodes in all), then timed one by one in this
    process with no compile running beside them."""
    from .select import compile_graphs, load_executable
    from .target import resolve_target

    if isinstance(target, str):
        target = resolve_target(target)
    if not target.runs_on_host():
        raise LoweringError(f"cannot time a model for target {target.name!r} on this host; "
                            f"latency budgets need a target this machine runs (x86)")
    cache = open_cache(cache_dir)
    keys = [_graph_key(graph, target) for graph in graphs]
    todo = {}  # uncached key -> graph
    for key, graph in zip(keys, graphs):
        if key not in todo and cache.get(key) is None:
            todo[key] = graph
    if todo:
        workers = _workers(jobs, sum(len(g.nodes) for g in todo.values()), MIN_PARALLEL_NODES)
        with tempfile.TemporaryDirectory(prefix="lowbit-graphs-") as folder:
            compiled = compile_graphs(list(todo.values()), target, folder, workers)
            timed = []
            for (key, graph), outcome in zip(todo.items(), compiled):
                if isinstance(outcome, LowbitError):
                    raise outcome
                if isinstance(outcome, str):
                    raise LoweringError(
                        f"graph '{graph.name}' failed to compile for timing: {outcome}; "
                        f"compile it alone (lowbit.codegen.build.build) for the full error")
                timed.append((load_executable(outcome), _random_inputs(graph.inputs)))
            for key, us in zip(todo, time_executables(timed)):
                cache.put(key, us)
            cache.save()
    return [cache.get(key) / 1000.0 for key in keys]


def graph_ms(graph: Graph, target, *, cache_dir=None) -> float:
    """:func:`graphs_ms` of one graph, in this process."""
    return graphs_ms([graph], target, cache_dir=cache_dir, jobs=1)[0]


def artifact_ms(artifact) -> float:
    """Median ms of a compiled :class:`~lowbit.runtime.artifact.Artifact` on this CPU, one
    thread, random inputs of its manifest shapes and dtypes."""
    return artifacts_ms([artifact])[0]


def artifacts_ms(artifacts) -> list[float]:
    """:func:`artifact_ms` of several artifacts timed side by side: interleaved rounds
    (:func:`~lowbit.codegen.select.time_executables`), so their ratios do not carry the
    1-3 % drift between two timings of one artifact taken minutes apart."""
    from ..runtime.session import load_payload

    items = []
    for artifact in artifacts:
        rng = np.random.default_rng(0)
        inputs = []
        for spec in artifact.inputs:
            dt = np.dtype(spec.dtype)
            if np.issubdtype(dt, np.integer):
                info = np.iinfo(dt)
                inputs.append(rng.integers(max(info.min, -8), min(info.max, 8) + 1,
                                           spec.shape).astype(dt))
            else:
                inputs.append(rng.standard_normal(spec.shape).astype(dt))
        inputs += [array for _, array in artifact.weights]
        items.append((load_payload(artifact.payload), inputs))
    return [us / 1000.0 for us in time_executables(items)]


def remainder_ms(whole_ms: float, layer_ms: Sequence[float]) -> float:
    """``whole - sum(layers)``; NaN when any layer time is unknown. Negative when the layers
    timed alone add up to more than the whole model: each alone pays a call and its own
    quantize / epilogue passes that the compiled model fuses (the digits CNN's int8 plan on
    Zen 3, after the fused epilogues got faster). Clamping it at 0 made every plan of such a
    model predict above its uniform preset's measured time, so a latency budget equal to
    that time was infeasible."""
    total = float(np.sum(layer_ms))
    if not math.isfinite(total):
        return math.nan
    return whole_ms - total


__all__ = ["MIN_PARALLEL_LAYERS", "MIN_PARALLEL_NODES", "LayerCosts", "artifact_ms",
           "artifacts_ms",
           "graph_digest", "graph_ms", "graphs_ms", "layer_costs", "remainder_ms"]
