"""Measured latency for ``--quant auto`` (issue 5): per-layer kernel times and whole models.

The allocator's latency of a plan is predicted as::

    T(plan) = remainder + sum_l T[l, c_l]

* ``T[l, c]`` (:func:`layer_costs`): layer ``l`` computed by the fastest kernel family that
  takes it at candidate ``c`` -- the same one-node compile and timing as kernel selection
  (:func:`lowbit.codegen.select.measure_layer`: one thread, median, cache-hot), read from or
  added to the same disk cache (key: lowbit version, target, op, shapes, formats, epilogue,
  family). The node is taken from the integer graph in which *every* layer is at ``c``, so its
  epilogue (requantize to the next layer's codes) is the one a quantized plan has.
* ``remainder`` = the measured whole-model time of one reference plan minus the sum of its
  layers' ``T`` (everything that is not a quantized layer: quantize / dequantize boundaries,
  pools, activations, residual adds, VM calls), clamped at 0.

:func:`graph_ms` compiles and times a whole integer graph; :func:`artifact_ms` times a compiled
artifact; both one thread, median of :data:`~lowbit.codegen.select.REPEATS` repeats, cache-hot,
random inputs (timing does not depend on the values). Whole-graph times are cached on disk too,
keyed by a digest of the graph (text and constants) and the target.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..ir import Graph
from ..ir.errors import LoweringError
from .select import (
    LAYER_OPS,
    REFERENCE,
    candidates,
    measure_pool,
    open_cache,
    time_executable,
)


@dataclass(frozen=True)
class LayerCosts:
    """``ms[l, c]`` (NaN: no kernel takes that layer at that candidate, or not measurable) and
    ``family[l][c]`` (the fastest family; the static choice when ``measured`` is False)."""

    ms: np.ndarray
    family: tuple[tuple[str, ...], ...]
    measured: bool


def _layer_nodes(graph: Graph) -> dict:
    return {n.name: n for n in graph.nodes if n.op in LAYER_OPS}


def layer_costs(graphs: Sequence[Graph], layers: Sequence[str], target, *,
                kernels: Sequence[str | None] | None = None, cache_dir=None,
                measure: bool = True, progress=None) -> LayerCosts:
    """Per-layer latency of every candidate (module docstring). ``graphs[c]``: the integer
    graph with every layer of ``layers`` at candidate ``c``; ``kernels[c]``: the family that
    candidate forces (None: the fastest accepted). ``measure=False`` or a target that cannot
    run here (arm64, cuda) gives NaN times and the static family order. ``progress()`` is
    called once per (layer, candidate)."""
    from .select import _static_choice
    from .target import resolve_target

    if isinstance(target, str):
        target = resolve_target(target)
    timing = measure and target.runs_on_host()
    cache = open_cache(cache_dir) if timing else None
    kernels = list(kernels) if kernels is not None else [None] * len(graphs)
    ms = np.full((len(layers), len(graphs)), np.nan)
    family = [[REFERENCE] * len(graphs) for _ in layers]
    try:
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
                    if kernels[c] not in pool:
                        if progress:
                            progress()
                        continue  # this candidate's kernel cannot take the layer: NaN
                    pool = [kernels[c]]
                if timing:
                    times, _ = measure_pool(node, pool, target, cache)
                    best = min(pool, key=lambda f: (times[f], f))
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


def graph_ms(graph: Graph, target, *, cache_dir=None) -> float:
    """Median ms of the whole ``graph`` compiled for ``target`` (host only), one thread;
    cached on disk by :func:`graph_digest` and target."""
    from .. import __version__
    from .build import build
    from .target import resolve_target

    if isinstance(target, str):
        target = resolve_target(target)
    if not target.runs_on_host():
        raise LoweringError(f"cannot time a model for target {target.name!r} on this host; "
                            f"latency budgets need a target this machine runs (x86)")
    cache = open_cache(cache_dir)
    key = (f"lowbit={__version__}|target={target.name}:{dict(target.tvm_items)}|graph|"
           f"{graph_digest(graph)}")
    us = cache.get(key)
    if us is None:
        us = time_executable(build(graph, target), _random_inputs(graph.inputs))
        cache.put(key, us)
        cache.save()
    return us / 1000.0


def artifact_ms(artifact) -> float:
    """Median ms of a compiled :class:`~lowbit.runtime.artifact.Artifact` on this CPU, one
    thread, random inputs of its manifest shapes and dtypes."""
    from ..runtime.session import load_payload

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
    return time_executable(load_payload(artifact.payload), inputs) / 1000.0


def remainder_ms(whole_ms: float, layer_ms: Sequence[float]) -> float:
    """``max(0, whole - sum(layers))``; NaN when any layer time is unknown."""
    total = float(np.sum(layer_ms))
    if not math.isfinite(total):
        return math.nan
    return max(0.0, whole_ms - total)


__all__ = ["LayerCosts", "artifact_ms", "graph_digest", "graph_ms", "layer_costs",
           "remainder_ms"]
