"""``lowbit tune``: Pareto frontiers of ``--quant auto`` plans against the uniform presets.

Given a :class:`~lowbit.compiler.planner.Planner` (one model, target, calibration data and
candidate set), :func:`tune`

1. *sweeps* budgets (:func:`sweep`): ``points`` latency budgets in ms, evenly spaced from the
   smallest feasible predicted latency ``sum_l min_c T'[l, c]`` (kernel plus share of the
   rest, :attr:`~lowbit.compiler.planner.Planner.latency_matrix`) to the predicted
   latency of the least damaging plan (``planner.allocate(None)``), and ``points`` size
   budgets in bytes, evenly spaced from the smallest feasible size ``ceil(sum_l min_c
   B[l, c])`` to that plan's bytes (size budgets rounded up to whole bytes). Infeasible
   budgets are skipped; plans with the same ``choice`` are kept once (the first budget that
   gave it names it). Without measured latencies (``measure=False`` or a target this host
   cannot run) only the size sweep runs.
2. *measures* every distinct plan and every preset of ``presets`` on the compiled artifact:
   ``accuracy`` -- top-1 % on the eval data when given, otherwise the output SQNR in dB of the
   compiled integer model against the float model (reference executor) over the calibration
   batches, ``SQNR = 10 log10(sum f^2 / sum (q - f)^2)`` over every output; ``ms`` -- measured
   whole-model latency (one thread, median);
   ``predicted_ms`` (plans only); packed weight ``bytes`` of the compiled graph; ``mean_bits``
   -- parameter-weighted mean weight bits (a float layer counts 32). A preset that fails to
   quantize or compile is recorded with its one-line reason, not raised. The target must
   be one this machine runs (else QuantizationError before any work).
3. computes the frontiers (:func:`pareto`) of the *auto plans* over measured ms and over
   bytes; presets are comparison markers, not frontier members.

:func:`write_report` writes ``pareto.md``, ``pareto.json``, ``pareto_latency.png`` and
``pareto_size.png`` (each atomically); :func:`render` is the rich table for a terminal.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir.errors import LowbitError, QuantizationError
from .allocate import Budget, Plan
from .recipes import PRESETS

#: presets measured by default for comparison (the ones with 8-bit activations, plus int8)
DEFAULT_PRESETS: tuple[str, ...] = ("int8", "w4a8", "w2a8", "ternary", "pow2", "codebook4",
                                    "w1a8")

#: the two frontier axes: TunePoint attribute -> axis label
AXES = {"ms": "measured latency (ms, 1 thread)", "bytes": "packed weight size (bytes)"}

METRICS = {"top1": "top-1 accuracy (%)", "sqnr": "output SQNR vs float (dB)"}


class TuneOutputError(LowbitError):
    """The report folder of ``lowbit tune`` cannot be written."""

    label = "output error"


@dataclass(frozen=True)
class TunePoint:
    """One measured configuration. ``kind``: ``auto`` (a plan) or ``preset``; ``name``: the
    budget that produced the plan (``latency=0.21ms``) or the preset name; ``accuracy`` in the
    report's metric (higher is better); ``ms`` measured (None: not runnable here);
    ``predicted_ms`` (None for presets); packed weight ``bytes``; ``mean_bits``; for plans the
    ``choice`` (candidate index per layer), ``candidates`` ((layer, candidate name), ...) and
    every budget that gave the same plan."""

    kind: str
    name: str
    accuracy: float
    ms: float | None
    predicted_ms: float | None
    bytes: int
    mean_bits: float
    choice: tuple[int, ...] | None = None
    candidates: tuple[tuple[str, str], ...] = ()
    budgets: tuple[str, ...] = ()


@dataclass(frozen=True)
class PresetFailure:
    """A preset that could not be quantized or compiled for the model, with the one-line
    reason (the error's label and message)."""

    name: str
    reason: str


@dataclass(frozen=True)
class TuneReport:
    """Everything :func:`tune` measured. ``metric``: ``top1`` or ``sqnr`` (see
    :data:`METRICS`); ``float_accuracy``: the float model's top-1 (None with ``sqnr``);
    ``fp32_bytes``: the quantizable layers' weights at 4 bytes each; ``points``: the auto
    plans in sweep order, then the presets in the order asked; frontiers as :func:`pareto`."""

    model: str
    target: str
    metric: str
    float_accuracy: float | None
    fp32_bytes: int
    points: tuple[TunePoint, ...]
    failures: tuple[PresetFailure, ...]
    latency_frontier: tuple[TunePoint, ...]
    size_frontier: tuple[TunePoint, ...]

    @property
    def auto(self) -> tuple[TunePoint, ...]:
        return tuple(p for p in self.points if p.kind == "auto")

    @property
    def presets(self) -> tuple[TunePoint, ...]:
        return tuple(p for p in self.points if p.kind == "preset")

    def frontier(self, x: str) -> tuple[TunePoint, ...]:
        """The frontier over ``x`` (``ms`` or ``bytes``)."""
        return self.latency_frontier if _axis(x) == "ms" else self.size_frontier

    def on_frontier(self, point: TunePoint, x: str) -> bool:
        return any(point is p for p in self.frontier(x))


def _axis(x: str) -> str:
    if x not in AXES:
        raise QuantizationError(f"pareto axis {x!r}: use one of {', '.join(AXES)}")
    return x


def pareto(points: Sequence, x: str = "ms") -> tuple:
    """The non-dominated subset of ``points`` over (``x`` lower is better, ``accuracy`` higher
    is better), sorted by ``x`` then by descending accuracy (ties keep their input order).
    ``p`` is dominated when some ``q`` has ``q.x <= p.x`` and ``q.accuracy >= p.accuracy``
    with at least one strict; equal points do not dominate each other, so both stay. Points
    whose ``x`` is None (not measured) are left out."""
    _axis(x)
    have = [p for p in points if getattr(p, x) is not None]

    def dominates(q, p) -> bool:
        qx, px = getattr(q, x), getattr(p, x)
        return qx <= px and q.accuracy >= p.accuracy and (qx < px or q.accuracy > p.accuracy)

    kept = [p for p in have if not any(dominates(q, p) for q in have if q is not p)]
    return tuple(sorted(kept, key=lambda p: (getattr(p, x), -p.accuracy)))


# -- the sweep ---------------------------------------------------------------------------------
def _allowed(planner) -> np.ndarray:
    """Which (layer, candidate) pairs the allocator may choose (NaN latency: no kernel)."""
    costs = planner.costs
    shape = np.shape(planner.table.sensitivity)
    return ~np.isnan(costs.ms) if costs.measured else np.ones(shape, dtype=bool)


def _latency_budgets(planner, best: Plan, points: int) -> list[Budget]:
    costs = planner.costs
    if not costs.measured or best.predicted_ms is None or \
            not math.isfinite(best.predicted_ms):
        return []
    allowed = _allowed(planner)
    lo = float(np.where(allowed, planner.latency_matrix, np.inf).min(axis=1).sum())
    hi = max(lo, best.predicted_ms)
    return [Budget(latency=_printed_ceil(float(v)), latency_unit="ms")
            for v in np.linspace(lo, hi, points)]


def _printed_ceil(value: float) -> float:
    """``value`` rounded *up* to the 6 significant digits a budget prints with (``:g``), so
    the label of a point (``latency=1.57336ms``) is exactly the budget its plan was solved
    under (rounded down, a plan could exceed its own label); never below ``value``, so the
    sweep's lowest budget stays feasible."""
    if not value > 0:
        return value
    out = float(f"{value:.6g}")
    if out < value:
        out = float(f"{out + 10.0 ** (math.floor(math.log10(value)) - 5):.6g}")
    return out


def _size_budgets(planner, best: Plan, points: int) -> list[Budget]:
    allowed = _allowed(planner)
    table_bytes = np.asarray(planner.table.weight_bytes, dtype=np.float64)
    lo = math.ceil(float(np.where(allowed, table_bytes, np.inf).min(axis=1).sum()) - 1e-9)
    hi = max(lo, best.weight_bytes)
    return [Budget(size=float(math.ceil(v - 1e-9)), size_unit="bytes")
            for v in np.linspace(lo, hi, points)]


def sweep(planner, points: int = 8) -> tuple[tuple[tuple[str, ...], Plan], ...]:
    """The distinct plans of the budget sweep (module docstring, step 1), in order: latency
    budgets ascending, then size budgets ascending; each as ``(budgets that gave it, plan)``.
    Deterministic for the same planner inputs and latency cache."""
    _check_points(points)
    best = planner.allocate(None)
    budgets = _latency_budgets(planner, best, points) + _size_budgets(planner, best, points)
    found: dict[tuple[int, ...], tuple[list[str], Plan]] = {}
    for budget in budgets:
        try:
            plan = planner.allocate(budget)
        except QuantizationError:
            continue  # infeasible (a rounding edge at the low end): skip it
        entry = found.setdefault(tuple(plan.choice), ([], plan))
        entry[0].append(str(budget))
    if not found:  # every budget infeasible: still report the least damaging plan
        found[tuple(best.choice)] = (["(no budget)"], best)
    return tuple((tuple(labels), plan) for labels, plan in found.values())


def _check_points(points) -> None:
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise QuantizationError(
            f"tune points={points!r}: give an integer >= 2 (budgets per sweep, from the "
            f"smallest feasible to the least damaging plan), e.g. --points 8")


# -- measuring ---------------------------------------------------------------------------------
def _mean_bits(graph) -> float:
    """Parameter-weighted mean weight bits of a compiled graph's weight layers (float: 32)."""
    from .quantize import _WEIGHT_OPS

    bits = params = 0
    for node in graph.nodes:
        if node.op not in _WEIGHT_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        w = node.inputs[1]
        if not w.is_const:
            continue
        n = int(np.prod(w.shape))
        params += n
        bits += n * (32 if w.qtype is None else w.qtype.bits)
    return bits / params if params else 32.0


class _Scorer:
    """The accuracy of a compiled artifact: top-1 on the eval set, or the output SQNR (dB) on
    the calibration batches against the float model (float outputs computed once)."""

    def __init__(self, planner, eval_data):
        self.planner = planner
        self.metric = "sqnr" if eval_data is None else "top1"
        self.data = None if eval_data is None else planner.eval_set(eval_data)
        self._float: list[list[np.ndarray]] | None = None

    def float_outputs(self) -> list[list[np.ndarray]]:
        from ..runtime.reference import run_reference

        if self._float is None:
            names = [v.name for v in self.planner.graph.outputs]
            self._float = []
            for feed in self.planner.calib:
                out = run_reference(self.planner.graph, feed)
                self._float.append([np.asarray(out[n], dtype=np.float64) for n in names])
        return self._float

    def __call__(self, artifact) -> float:
        if self.metric == "top1":
            return self.planner.accuracy(artifact, self.data)
        from ..runtime.session import Session

        reference = self.float_outputs()
        noise = signal = 0.0
        with tempfile.TemporaryDirectory(prefix="lowbit-tune-") as tmp:
            session = Session(artifact.save(Path(tmp) / "plan.lbx"), threads=1)
            for feed, floats in zip(self.planner.calib, reference):
                quant = session.run(None, feed)
                for f, q in zip(floats, quant):
                    noise += float(np.sum((np.asarray(q, dtype=np.float64) - f) ** 2))
                    signal += float(np.sum(f ** 2))
        if noise == 0.0:
            return math.inf
        return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _measure_plan(planner, score: _Scorer, labels: tuple[str, ...], plan: Plan) -> TunePoint:
    measured = planner.evaluate(plan)
    accuracy = score(planner.compile(plan).artifact)
    return TunePoint("auto", labels[0], accuracy, measured.ms, plan.predicted_ms,
                     int(measured.bytes), plan.mean_bits, tuple(plan.choice),
                     tuple(plan.candidates.items()), labels)


def _measure_preset(planner, score: _Scorer, name: str) -> TunePoint:
    from ..codegen.latency import artifact_ms
    from .driver import compile_model
    from .quantize import weight_size

    result = compile_model(planner.model, planner.target, quant=name, calib=planner.calib,
                           input_shapes=planner.input_shapes)
    ms = artifact_ms(result.artifact) if planner.target.runs_on_host() else None
    return TunePoint("preset", name, score(result.artifact), ms, None,
                     int(weight_size(result.graph).packed), _mean_bits(result.graph))


def _model_name(planner) -> str:
    model = planner.model
    if isinstance(model, (str, os.PathLike)):
        return Path(model).name
    return getattr(planner.graph, "name", None) or "model"


def tune(planner, eval_data=None, *, points: int = 8, presets: Sequence[str] = DEFAULT_PRESETS,
         log: Callable[[str], object] | None = None) -> TuneReport:
    """Sweep budgets, compile and measure every distinct plan and every preset, and compute
    the frontiers (module docstring). ``eval_data``: labelled eval set (EvalSet, ``.npz``
    path or dict) for top-1; None: output SQNR on the calibration data. ``points``: budgets
    per sweep (>= 2). ``log``: called with one progress line per measurement (e.g.
    ``console.log``); None: silent."""
    _check_points(points)
    if not planner.target.runs_on_host():
        raise QuantizationError(
            f"lowbit tune compiles and runs every plan and preset, which needs a target this "
            f"machine runs; {planner.target.name!r} does not: tune on a "
            f"{planner.target.name} machine")
    presets = tuple(presets)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise QuantizationError(f"tune presets {unknown}: unknown; presets are "
                                f"{', '.join(PRESETS)}")
    say = log if log is not None else (lambda _line: None)
    score = _Scorer(planner, eval_data)
    plans = sweep(planner, points)
    measured: list[TunePoint] = []
    for i, (labels, plan) in enumerate(plans, 1):
        say(f"plan {i}/{len(plans)} ({labels[0]}): compiling and measuring")
        measured.append(_measure_plan(planner, score, labels, plan))
    failures = []
    for i, name in enumerate(presets, 1):
        say(f"preset {i}/{len(presets)} ({name}): compiling and measuring")
        try:
            measured.append(_measure_preset(planner, score, name))
        except LowbitError as err:
            failures.append(PresetFailure(name, f"{err.label}: {err}"))
            say(f"preset {name} failed: {err}")
    auto = [p for p in measured if p.kind == "auto"]
    return TuneReport(
        model=_model_name(planner), target=planner.target.name, metric=score.metric,
        float_accuracy=None if eval_data is None else planner.float_accuracy(score.data),
        fp32_bytes=int(sum(info.fp32_bytes for info in planner.table.layers)),
        points=tuple(measured), failures=tuple(failures),
        latency_frontier=pareto(auto, "ms"), size_frontier=pareto(auto, "bytes"))


# -- output ------------------------------------------------------------------------------------
def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _row(report: TuneReport, p: TunePoint) -> list[str]:
    return [p.kind, p.name, _num(p.accuracy, 2), _num(p.ms, 4), _num(p.predicted_ms, 4),
            f"{p.bytes:,}", _num(p.bytes / report.fp32_bytes if report.fp32_bytes else None, 3),
            _num(p.mean_bits, 2), "yes" if report.on_frontier(p, "ms") else "",
            "yes" if report.on_frontier(p, "bytes") else ""]


_HEADER = ["kind", "name / budget", "accuracy", "measured ms", "predicted ms", "bytes",
           "vs fp32", "mean bits", "latency frontier", "size frontier"]


def _metric_line(report: TuneReport) -> str:
    if report.metric == "top1":
        return (f"accuracy = top-1 % on the eval data (float model: "
                f"{_num(report.float_accuracy, 2)} %)")
    return ("accuracy = output SQNR in dB of the compiled model vs the float model on the "
            "calibration data (no eval data given; higher is better)")


def to_markdown(report: TuneReport) -> str:
    """``pareto.md``: a header, one table row per point, the auto plans' layer choices and the
    preset failures."""
    lines = [f"# lowbit tune: {report.model} on {report.target}", "",
             f"* {_metric_line(report)}",
             f"* fp32 weight bytes of the quantizable layers: {report.fp32_bytes:,}",
             ("* ms: measured whole model, one thread, median; predicted ms: the allocator's "
              "model (remainder + per-layer kernels)"), "",
             "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(_row(report, p)) + " |" for p in report.points]
    lines += ["", "## Auto plans", ""]
    for p in report.auto:
        lines.append(f"* `{p.name}` (budgets: {', '.join(p.budgets)}): "
                     + ", ".join(f"{layer} = {cand}" for layer, cand in p.candidates))
    lines += ["", "## Preset failures", ""]
    lines += [f"* {f.name}: {f.reason}" for f in report.failures] or ["none"]
    return "\n".join(lines) + "\n"


def _json_number(value):
    return value if value is None or math.isfinite(value) else None


def to_json(report: TuneReport) -> str:
    """``pareto.json``: the same data as :func:`to_markdown` (non-finite numbers as null)."""
    points = []
    for p in report.points:
        points.append({
            "kind": p.kind, "name": p.name, "accuracy": _json_number(p.accuracy),
            "ms": _json_number(p.ms), "predicted_ms": _json_number(p.predicted_ms),
            "bytes": p.bytes,
            "ratio_fp32": p.bytes / report.fp32_bytes if report.fp32_bytes else None,
            "mean_bits": p.mean_bits, "budgets": list(p.budgets),
            "choice": None if p.choice is None else list(p.choice),
            "candidates": dict(p.candidates) if p.kind == "auto" else None,
            "on_latency_frontier": report.on_frontier(p, "ms"),
            "on_size_frontier": report.on_frontier(p, "bytes")})
    data = {"model": report.model, "target": report.target, "metric": report.metric,
            "metric_description": _metric_line(report),
            "float_accuracy": report.float_accuracy, "fp32_bytes": report.fp32_bytes,
            "points": points,
            "latency_frontier": [p.name for p in report.latency_frontier],
            "size_frontier": [p.name for p in report.size_frontier],
            "preset_failures": [{"name": f.name, "reason": f.reason}
                                for f in report.failures]}
    return json.dumps(data, indent=2) + "\n"


#: label offsets (points) tried in turn so that preset labels do not overlap
_LABEL_OFFSETS = ((5, 4), (5, -11), (5, 15), (5, -22), (5, 26), (5, -33), (-5, 4), (-5, -11))


def _label_offsets(xs: list[float], ys: list[float], names: list[str],
                   size: tuple[float, float]) -> list[tuple[int, int]]:
    """Per name, the first offset of :data:`_LABEL_OFFSETS` whose text box (about 5 x 10
    points per character at fontsize 8, axes of ``size`` points) overlaps no label placed
    before and stays inside the axes; else the first offset. ``xs`` / ``ys``: the labelled
    points first (one per name), then the other plotted points (they only widen the span)."""
    def span(values):
        lo, hi = min(values), max(values)
        return lo, (hi - lo) or 1.0

    (x0, xr), (y0, yr) = span(xs), span(ys)
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for x, y, name in zip(xs, ys, names):
        px, py = (x - x0) / xr * size[0], (y - y0) / yr * size[1]
        width = 5.0 * len(name)
        for dx, dy in _LABEL_OFFSETS:
            left = px + dx if dx >= 0 else px + dx - width
            box = (left, py + dy, left + width, py + dy + 10.0)
            inside = box[1] >= -4.0 and box[3] <= size[1] + 4.0
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3]
                                  and b[1] < box[3] for b in placed):
                break
        else:
            dx, dy = _LABEL_OFFSETS[0]
            left = px + dx
            box = (left, py + dy, left + width, py + dy + 10.0)
        placed.append(box)
        out.append((dx, dy))
    return out


def plot(report: TuneReport, x: str) -> bytes:
    """A PNG of accuracy over ``x`` (``ms`` | ``bytes``): auto plans as dots, their frontier
    as a step line (the best accuracy reachable at or below each x, drawn on to the largest
    x shown), presets as labelled crosses, the float model's top-1 as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    _axis(x)
    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    ax = fig.subplots()
    auto = [p for p in report.auto if getattr(p, x) is not None and math.isfinite(p.accuracy)]
    presets = [p for p in report.presets
               if getattr(p, x) is not None and math.isfinite(p.accuracy)]
    ax.scatter([getattr(p, x) for p in auto], [p.accuracy for p in auto], s=28,
               color="tab:blue", label="auto plans", zorder=3)
    front = [p for p in report.frontier(x) if math.isfinite(p.accuracy)]
    if front:
        right = max(getattr(p, x) for p in auto + presets)
        ax.step([getattr(p, x) for p in front] + [right],
                [p.accuracy for p in front] + [front[-1].accuracy], where="post",
                color="tab:blue", linewidth=1.5, label="auto frontier", zorder=2)
    if presets:
        xs, ys = [getattr(p, x) for p in presets], [p.accuracy for p in presets]
        ax.scatter(xs, ys, marker="x", s=60, color="tab:red", label="uniform presets",
                   zorder=4)
        every = auto + presets
        offsets = _label_offsets(xs + [getattr(p, x) for p in every],
                                 ys + [p.accuracy for p in every],
                                 [p.name for p in presets], (430.0, 250.0))
        for p, (dx, dy) in zip(presets, offsets):
            ax.annotate(p.name, (getattr(p, x), p.accuracy), textcoords="offset points",
                        xytext=(dx, dy), fontsize=8, color="tab:red",
                        ha="left" if dx >= 0 else "right")
    if report.float_accuracy is not None:
        ax.axhline(report.float_accuracy, color="gray", linestyle="--", linewidth=1,
                   label="float model")
    ax.set_xlabel(AXES[x])
    ax.set_ylabel(METRICS[report.metric])
    what = "latency" if x == "ms" else "size"
    ax.set_title(f"{report.model} on {report.target}: accuracy vs {what}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` via a temp file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: TuneReport, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``pareto.md``, ``pareto.json``, ``pareto_latency.png`` and ``pareto_size.png``
    into ``out_dir`` (created with its parents), each atomically; returns the paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TuneOutputError(f"tune output {str(out)!r} is a file; give a folder (-o pareto/)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TuneOutputError(f"cannot create the tune output folder {str(out)!r}: "
                              f"{err.strerror}; give a writable folder with -o") from None
    files = {"pareto.md": to_markdown(report).encode(), "pareto.json": to_json(report).encode(),
             "pareto_latency.png": plot(report, "ms"), "pareto_size.png": plot(report, "bytes")}
    paths = []
    for name, data in files.items():
        _write_atomic(out / name, data)
        paths.append(out / name)
    return paths


def render(report: TuneReport):
    """A :class:`rich.table.Table` of every point (frontier members marked), the metric in the
    title and the preset failures in the caption."""
    from rich.table import Table

    table = Table(title=f"lowbit tune: {report.model} on {report.target} -- "
                        f"{_metric_line(report)}", title_justify="left")
    for i, head in enumerate(_HEADER):
        table.add_column(head, justify="left" if i < 2 else "right")
    for p in report.points:
        on_front = report.on_frontier(p, "ms") or report.on_frontier(p, "bytes")
        table.add_row(*_row(report, p), style="bold" if on_front else None)
    if report.failures:
        table.caption = "failed presets: " + "; ".join(f"{f.name} ({f.reason})"
                                                       for f in report.failures)
    return table


__all__ = ["AXES", "DEFAULT_PRESETS", "METRICS", "PresetFailure", "TuneOutputError",
           "TunePoint", "TuneReport", "pareto", "plot", "render", "sweep", "to_json",
           "to_markdown", "tune", "write_report"]
