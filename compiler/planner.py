"""``--quant auto``: per-layer format, bits and kernel under a budget, end to end (issue 5).

A :class:`Planner` holds one float model and measures, once each (cached in memory, the
latencies also on disk):

1. ``table``: the per-layer sensitivity of every candidate
   (:func:`lowbit.passes.analysis.layer_sensitivity`: damage at the model outputs when only
   that layer is quantized, on the calibration data; packed weight bytes);
2. ``costs``: every candidate's layer latency on the target, by the fastest kernel family that
   takes it (:func:`lowbit.codegen.latency.layer_costs`, on the integer graph with every layer
   at that candidate), and per candidate the *remainder*: the measured whole-model time of the
   plan with every layer at that candidate minus its layers
   (:func:`lowbit.codegen.latency.remainder_ms`). A plan's predicted latency is the sum over
   its layers of ``T[l, c] · (1 + remainder_c / Σ_k T[k, c])`` (:attr:`Planner.latency_matrix`).

:meth:`Planner.allocate` then solves the ILP of :func:`lowbit.compiler.allocate.allocate`
(milliseconds, so a tuner can sweep many budgets); :meth:`Planner.search` is the
accuracy-aware mode: with labelled eval data and ``max_drop`` points, it compiles plans and
measures their top-1 accuracy (the compiled artifact, run by :class:`lowbit.Session`) while it
bisects a latency budget, and returns the fastest *measured* plan within the drop.
:func:`plan` is the one-call form (``lowbit.plan``). Same model, data, candidates and cached
latencies -> same plan.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ..ir import Graph
from ..ir.errors import QuantizationError
from .allocate import Budget, Plan, allocate, int8_candidates, parse_budget
from .parallel import resolve_jobs

#: bisection steps of the accuracy-aware search (each compiles and evaluates one plan)
SEARCH_STEPS = 5
#: the uniform plans are quantized on worker processes only when candidates x layers is at
#: least this (quantizing costs ~30 ms per layer, a worker ~2-3 s to start)
MIN_PARALLEL_QUANTIZED_LAYERS = 200


@dataclass(frozen=True)
class Measured:
    """A compiled plan's measured figures: top-1 ``accuracy`` (%, None without eval data),
    whole-model latency ``ms`` (one thread, median; None when the target cannot run here) and
    packed weight ``bytes`` of the compiled graph."""

    accuracy: float | None
    ms: float | None
    bytes: int


def uniform_recipe(layers: Sequence[str], candidate):
    """Every layer of ``layers`` at ``candidate`` (base ``preset("none")``): the integer graph
    whose layer nodes the latency of that candidate is measured on."""
    from .recipes import preset

    return replace(preset("none"), nodes={name: candidate.override for name in layers})


class Planner:
    """Measure once, allocate many times (module docstring).

    ``model``: ONNX path / bytes / ModelProto (or a lowbit Graph); ``target``: a target name;
    ``calib``: calibration data as for :func:`lowbit.quantize`; ``candidates``: the
    :class:`~lowbit.passes.analysis.Candidate` set (default
    :data:`~lowbit.passes.analysis.DEFAULT_CANDIDATES`, its uniform 8-bit weights at 7 bits on
    a target that reduces the range, like the int8 preset there); ``metric``: ``"sqnr"`` |
    ``"kl"`` | a callable ``(float_out, quant_out) -> float``; ``cache_dir``: folder of the
    latency and sensitivity caches (default ``$XDG_CACHE_HOME/lowbit``; ``sensitivity_cache=False`` keeps
    sensitivities in memory only); ``measure=False`` skips timing (no latency budgets);
    ``jobs``: worker processes for sensitivity, quantizing and compiling (None:
    :func:`~lowbit.compiler.parallel.default_jobs`; 1: none), timings always run here."""

    def __init__(self, model, target="x86", calib=None, *, input_shapes=None,
                 candidates=None, metric="sqnr", cache_dir=None, measure: bool = True,
                 sensitivity_cache: bool = True, jobs: int | None = None):
        from ..codegen.target import resolve_target
        from ..passes.analysis import DEFAULT_CANDIDATES
        from ..passes.calibrate import as_calibration_set
        from .quantize import _float_graph

        if calib is None:
            raise QuantizationError(
                "--quant auto needs calibration data to measure layer sensitivity: pass "
                "calib= a .npz path or a dict {input name: samples} (CLI: --calib FILE.npz)")
        self.model = model
        self.input_shapes = input_shapes
        self.target = resolve_target(target) if isinstance(target, str) else target
        self.graph: Graph = _float_graph(model, input_shapes)
        self.calib = as_calibration_set(self.graph, calib)
        self.candidates = tuple(DEFAULT_CANDIDATES if candidates is None else candidates)
        if candidates is None:
            from ..codegen.kernels.int8 import reduces_range
            from ..passes.analysis import reduced_range

            if reduces_range(self.target):  # the int8 preset's own weights on this target
                self.candidates = reduced_range(self.candidates)
        self.metric = metric
        self.cache_dir = cache_dir
        self.measure = measure
        self.sensitivity_cache = sensitivity_cache
        self.jobs = resolve_jobs(jobs)
        self._compiled: dict[tuple[int, ...], tuple] = {}

    # -- measurements ------------------------------------------------------------------------
    @cached_property
    def table(self):
        """The :class:`~lowbit.passes.analysis.SensitivityTable` of every layer x candidate."""
        from ..passes.analysis import layer_sensitivity

        return layer_sensitivity(self.graph, self.candidates, self.calib, metric=self.metric,
                                 cache_dir=self.cache_dir, disk_cache=self.sensitivity_cache,
                                 jobs=self.jobs)

    @cached_property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.table.layers)

    @property
    def costs(self):
        """:class:`~lowbit.codegen.latency.LayerCosts` of every layer x candidate."""
        return self._measured[0]

    @property
    def remainders(self) -> np.ndarray | None:
        """Per candidate ``c``: the measured whole-model ms of the plan with every layer at
        ``c`` minus its layers' kernels (>= 0); None when not measured. A candidate whose
        uniform plan cannot be built (its kernel refuses a layer) gets the int8 plan's."""
        return self._measured[1]

    @cached_property
    def _measured(self):
        """``(LayerCosts, remainders)``, read from the costs cache (``costs/<key>.json`` in
        the cache folder, keyed by lowbit version, target, model, calibration data and
        candidates) or measured and written there."""
        from ..codegen.latency import LayerCosts

        path = self._costs_path()
        cached = _read_costs(path, len(self.layer_names), len(self.candidates))
        if cached is not None:
            return cached
        graphs, costs = self._measure_costs()
        rem = self._measure_remainders(graphs, costs)
        if costs.measured:
            _write_costs(path, costs, rem)
        return LayerCosts(costs.ms, costs.family, costs.measured), rem

    def _costs_path(self) -> Path:
        import hashlib

        from .. import __version__
        from ..codegen.revision import revision
        from ..passes.analysis.sensitivity import _digest_calib, _digest_graph
        from .disk_cache import cache_folder, numerics_revision

        h = hashlib.sha256()
        # the codegen and numerics revisions: an edited kernel or pass invalidates the costs
        for part in (__version__, revision(), numerics_revision(), self.target.name,
                     repr(dict(self.target.tvm_items)),
                     _digest_graph(self.graph), _digest_calib(self.calib),
                     repr(self.candidates), str(self.measure)):
            h.update(part.encode())
            h.update(b"|")
        folder = Path(self.cache_dir) if self.cache_dir is not None else cache_folder()
        return folder / "costs" / f"{h.hexdigest()[:32]}.json"

    def _measure_costs(self):
        """``(uniform integer graph per candidate, LayerCosts)``. The uniform graphs are
        quantized on ``self.jobs`` workers when there is enough work
        (:data:`MIN_PARALLEL_QUANTIZED_LAYERS`), the kernels compiled on them
        (:func:`~lowbit.codegen.latency.layer_costs`)."""
        from ..codegen.latency import layer_costs
        from ..passes.analysis.sensitivity import ProgressBar
        from .parallel import pmap
        from .quantize import quantize

        recipes = [uniform_recipe(self.layer_names, c) for c in self.candidates]
        if self.jobs > 1 and len(recipes) * len(self.layer_names) >= MIN_PARALLEL_QUANTIZED_LAYERS:
            graphs = pmap(_quantize_task, recipes, self.jobs, initializer=_quantize_worker_init,
                          initargs=(self.graph, self.calib))
        else:
            graphs = [quantize(self.graph, recipe=r, calib=self.calib) for r in recipes]
        total = len(graphs) * len(self.layer_names)
        with ProgressBar(total, f"kernel latency ({self.target.name})") as advance:
            return graphs, layer_costs(graphs, self.layer_names, self.target,
                                       kernels=[c.kernel for c in self.candidates],
                                       cache_dir=self.cache_dir, measure=self.measure,
                                       progress=advance, jobs=self.jobs)

    def _measure_remainders(self, graphs, costs) -> np.ndarray | None:
        from ..codegen.latency import graphs_ms, remainder_ms

        if not costs.measured:
            return None
        names = set(self.layer_names)
        out = np.full(len(self.candidates), np.nan)
        timed, wholes = [], []
        for c, base in enumerate(graphs):
            if np.isnan(costs.ms[:, c]).any():
                continue
            graph = base.copy()
            layers = {n.name: n for n in graph.nodes if n.name in names}
            for l, name in enumerate(self.layer_names):
                layers[name].meta["kernel"] = costs.family[l][c]
            timed.append(c)
            wholes.append(graph)
        for c, whole in zip(timed, graphs_ms(wholes, self.target, cache_dir=self.cache_dir,
                                             jobs=self.jobs)):
            out[c] = remainder_ms(whole, costs.ms[:, c])
        ref = (int8_candidates(self.table) or [0])[0]
        fallback = out[ref] if np.isfinite(out[ref]) else float(np.nanmean(out))
        return np.where(np.isfinite(out), out, fallback)

    @property
    def remainder_ms(self) -> float | None:
        """The int8 plan's remainder (ms): its whole-model time minus its layers."""
        rem = self.remainders
        return None if rem is None else float(rem[(int8_candidates(self.table) or [0])[0]])

    @property
    def latency_matrix(self) -> np.ndarray | None:
        """``T[l, c] · (1 + remainder_c / Σ_k T[k, c])``: a layer's kernel scaled by its
        candidate's in-model factor (whole uniform plan / sum of its kernels), so a uniform plan
        predicts exactly its measured whole-model time and a mixed plan carries each layer's
        share of its candidate's rest in proportion to the layer's time. (An equal share per
        layer, ``T + remainder_c / L``, was the rule before: on the digits ResNet on Zen 3 it
        predicted three mixed plans 2.6-6.2 % high, this rule 0.1-2.7 %, against interleaved
        medians; most of a ResNet's rest is its int8 kernels running ~20 % slower in the model
        than alone, cache-hot.) A candidate whose kernels sum to 0 keeps the equal share."""
        costs = self.costs
        if not costs.measured:
            return None
        rem = self.remainders
        total = np.nansum(costs.ms, axis=0)
        safe = np.where(total > 0, total, 1.0)
        scaled = costs.ms * (1.0 + rem / safe)[None, :]
        equal = costs.ms + rem[None, :] / len(self.layer_names)
        return np.where((total > 0)[None, :], scaled, equal)

    # -- allocation --------------------------------------------------------------------------
    def allocate(self, budget=None) -> Plan:
        """The least damaging plan within ``budget`` (string, dict, Budget or None)."""
        budget = Budget() if budget is None else parse_budget(budget)
        needs_latency = budget.latency is not None
        if needs_latency and not self.measure:
            raise QuantizationError("a latency budget needs measured kernels; drop "
                                    "measure=False")
        if needs_latency and not self.target.runs_on_host():
            raise QuantizationError(
                f"latency budget: kernels for target {self.target.name!r} cannot be timed on "
                f"this host; budget size= or bits= instead, or plan on a {self.target.name} "
                f"machine")
        costs = self.costs
        return allocate(self.table, self.latency_matrix, budget, kernels=costs.family,
                        kernel_ms=costs.ms if costs.measured else None)

    # -- compiling and measuring a plan -------------------------------------------------------
    def compile(self, plan: Plan):
        """:func:`lowbit.compiler.driver.compile_model` of ``plan.to_recipe()`` (cached per
        choice); returns the :class:`~lowbit.compiler.driver.CompileResult`."""
        from .driver import compile_model

        key = tuple(plan.choice)
        if key not in self._compiled:
            result = compile_model(self.model, self.target, calib=self.calib,
                                   input_shapes=self.input_shapes, auto_plan=plan,
                                   kernel_cache=self.cache_dir)
            self._compiled[key] = (result, None)
        return self._compiled[key][0]

    def evaluate(self, plan: Plan, eval_data=None) -> Measured:
        """Compile ``plan`` and measure it: top-1 on ``eval_data`` (an EvalSet, path or dict;
        None: no accuracy), whole-model ms, packed weight bytes."""
        from ..codegen.latency import artifact_ms
        from .quantize import weight_size

        result = self.compile(plan)
        accuracy = None
        if eval_data is not None:
            accuracy = self.accuracy(result.artifact, self.eval_set(eval_data))
        ms = artifact_ms(result.artifact) if self.target.runs_on_host() else None
        return Measured(accuracy, ms, weight_size(result.graph).packed)

    def eval_set(self, eval_data):
        """``eval_data`` as a checked :class:`~lowbit.compiler.eval_data.EvalSet`."""
        from ..passes.calibrate import graph_input_types
        from .eval_data import EvalSet, load_eval

        if isinstance(eval_data, EvalSet):
            return eval_data
        return load_eval(eval_data, graph_input_types(self.graph))

    def accuracy(self, artifact, data) -> float:
        """Top-1 (%) of a compiled artifact over ``data`` (run by :class:`lowbit.Session`)."""
        from ..runtime.session import Session
        from .eval_data import top1

        with tempfile.TemporaryDirectory(prefix="lowbit-plan-") as tmp:
            session = Session(artifact.save(Path(tmp) / "plan.lbx"), threads=1)
            return top1(lambda feed: session.run(None, feed)[0], data, self._batch)

    def float_accuracy(self, eval_data) -> float:
        """Top-1 (%) of the float model (the reference executor) over ``eval_data``."""
        from ..runtime.reference import run_reference
        from .eval_data import top1

        data = self.eval_set(eval_data)
        first = self.graph.outputs[0].name
        return top1(lambda feed: run_reference(self.graph, feed)[first], data, self._batch)

    @property
    def _batch(self) -> int:
        return int(self.graph.inputs[0].shape[0])

    # -- the accuracy-aware mode -------------------------------------------------------------
    def search(self, eval_data, max_drop: float, budget=None,
               steps: int = SEARCH_STEPS) -> tuple[Plan, Measured]:
        """The fastest plan whose *compiled* top-1 on ``eval_data`` is within ``max_drop``
        points of the float model's, also within ``budget``: bisect the predicted-latency
        budget between the fastest feasible plan and the least damaging one, compiling and
        measuring every probe; ``(plan, its Measured)``. QuantizationError when even the least
        damaging plan drops more than ``max_drop``."""
        if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop)
                and max_drop >= 0):
            raise QuantizationError(f"max_drop={max_drop!r}: give a number of accuracy points "
                                    f">= 0 (e.g. --max-drop 1.0)")
        if not self.measure or not self.target.runs_on_host():
            raise QuantizationError(
                f"--max-drop compiles and runs candidate plans, which needs a target this "
                f"machine runs; {self.target.name!r} does not")
        data = self.eval_set(eval_data)
        floor = self.float_accuracy(data) - max_drop
        budget = Budget() if budget is None else parse_budget(budget)
        best = self.allocate(budget)
        best_m = self.evaluate(best, data)
        if best_m.accuracy < floor - 1e-9:
            raise QuantizationError(
                f"no plan within --max-drop {max_drop:g}: the least damaging plan under "
                f"{budget} measures {best_m.accuracy:.2f}% top-1 against "
                f"{floor + max_drop:.2f}% in float; raise --max-drop, relax the budget or "
                f"add gentler candidates")
        latency = self.latency_matrix
        lo = float(np.where(np.isnan(latency), np.inf, latency).min(axis=1).sum())
        hi = best.predicted_ms
        for _ in range(steps):
            if hi - lo <= 0.01 * hi:
                break
            mid = (lo + hi) / 2
            probe = self.allocate(replace(budget, latency=mid, latency_unit="ms"))
            measured = self.evaluate(probe, data)
            if measured.accuracy >= floor - 1e-9:
                if measured.ms is not None and best_m.ms is not None and \
                        measured.ms <= best_m.ms:
                    best, best_m = probe, measured
                hi = probe.predicted_ms
            else:
                lo = mid
        return best, best_m


_WORKER_FLOAT: dict = {}  # in a quantizing worker: the float graph and calibration set


def _quantize_worker_init(graph: Graph, calib) -> None:
    """Worker initializer: keep the float graph and calibration set for the tasks."""
    _WORKER_FLOAT["graph"], _WORKER_FLOAT["calib"] = graph, calib


def _quantize_task(recipe) -> Graph:
    """Worker task: ``quantize(float graph, recipe)``."""
    from .quantize import quantize

    return quantize(_WORKER_FLOAT["graph"], recipe=recipe, calib=_WORKER_FLOAT["calib"])


def _read_costs(path: Path, layers: int, candidates: int):
    """``(LayerCosts, remainders)`` from a costs file, or None (missing, unreadable, or of
    another shape)."""
    import json

    from ..codegen.latency import LayerCosts

    try:
        data = json.loads(path.read_text())
        ms = np.array([[np.nan if v is None else float(v) for v in row] for row in data["ms"]])
        family = tuple(tuple(str(f) for f in row) for row in data["family"])
        rem = np.array([float(v) for v in data["remainders"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if ms.shape != (layers, candidates) or rem.shape != (candidates,) or \
            len(family) != layers or any(len(row) != candidates for row in family):
        return None
    return LayerCosts(ms, family, True), rem


def _write_costs(path: Path, costs, remainders) -> None:
    """Write a costs file atomically (:func:`lowbit.compiler.cli.write_atomic`)."""
    import json

    from .cli import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"ms": [[None if np.isnan(v) else float(v) for v in row] for row in costs.ms],
            "family": [list(row) for row in costs.family],
            "remainders": [float(v) for v in remainders]}
    write_atomic(path, json.dumps(data))


def plan(model, target="x86", calib=None, budget=None, max_drop=None, eval=None, *,
         input_shapes=None, candidates=None, metric="sqnr", cache_dir=None,
         jobs=None) -> Plan:
    """One call: a :class:`~lowbit.compiler.allocate.Plan` for ``model`` on ``target``.
    ``budget``: ``"size=0.25,latency=0.6x"`` / dict / None; with ``max_drop`` and ``eval`` (a
    labelled ``.npz``) the accuracy-aware search (:meth:`Planner.search`). ``plan.save(path)``
    writes it as a recipe for ``--recipe``."""
    if (max_drop is None) != (eval is None):
        raise QuantizationError(
            "max_drop and eval go together: the accuracy-aware mode measures top-1 on eval "
            "(CLI: --max-drop PTS --eval FILE.npz)")
    planner = Planner(model, target, calib, input_shapes=input_shapes, candidates=candidates,
                      metric=metric, cache_dir=cache_dir, jobs=jobs)
    if max_drop is None:
        return planner.allocate(budget)
    return planner.search(eval, max_drop, budget)[0]


def format_plan(plan: Plan, measured_ms: float | None = None) -> str:
    """The plan as a plain-text table: one row per layer (format, bits, kernel, sensitivity,
    measured kernel latency, packed bytes), then the totals against the budget: weight bytes
    and ratio of fp32, mean weight bits, predicted latency (and the measured one, with the
    prediction error, when ``measured_ms`` is given)."""
    rows = plan.rows()
    width = max([len("layer")] + [len(r.layer) for r in rows])
    head = (f"{'layer':<{width}}  {'format':<9} {'bits':<6} {'kernel':<13} "
            f"{'sensitivity':>11} {'latency ms':>10} {'bytes':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ms = "-" if r.latency_ms is None else f"{r.latency_ms:.4f}"
        lines.append(f"{r.layer:<{width}}  {r.format:<9} {r.bits:<6} {r.kernel:<13} "
                     f"{r.sensitivity:>11.3e} {ms:>10} {r.bytes:>9,}")
    fp32 = sum(i.fp32_bytes for i in plan.table.layers)
    total = (f"budget {plan.budget}: weights {plan.weight_bytes:,} B "
             f"({plan.weight_bytes / fp32:.4f} of fp32 {fp32:,} B), mean {plan.mean_bits:.2f} "
             f"weight bits, summed sensitivity {plan.sensitivity:.3e}")
    if plan.predicted_ms is not None:
        total += (f"; latency predicted {plan.predicted_ms:.4f} ms (kernels "
                  f"{plan.kernels_ms:.4f} + rest {plan.predicted_ms - plan.kernels_ms:.4f})")
        if measured_ms is not None:
            error = 100.0 * (plan.predicted_ms - measured_ms) / measured_ms
            total += f", measured {measured_ms:.4f} ms ({error:+.1f}% error)"
    lines.append(total)
    return "\n".join(lines) + "\n"


def default_cache_dir() -> Path:
    """The folder of the latency cache (``$XDG_CACHE_HOME/lowbit``)."""
    from ..codegen.select import default_cache_path

    return default_cache_path().parent


__all__ = ["SEARCH_STEPS", "Measured", "Planner", "default_cache_dir", "format_plan", "plan",
           "uniform_recipe"]
