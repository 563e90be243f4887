"""The compile driver: ``lowbit.compile(model, target, quant, ...) -> Artifact``.

Stages (each timed, in this order; the CLI shows them as a progress display)::

    plan      --quant auto only: sensitivity, measured kernel  compiler.planner.Planner
              latencies and the ILP under ``budget`` (or the
              accuracy-aware search); its recipe drives the rest
    import    ONNX -> lowbit IR (input shapes bound)          compiler.onnx_import
    passes    the default cleanup pipeline (BN folded, ...)   passes.default_pipeline
    quantize  insert fake-quant, calibrate, [PTQ], fold       compiler.quantize (skipped: "none")
    select    each QConv/QMatMul's kernel family, by speed    codegen.select.select_kernels
              measured at its shape (disk-cached; a recipe's per-layer ``kernel`` wins)
    lower     integer/float IR -> Relax ``main``              codegen.lower.lower
    compile   TVM's Relax pipeline + LLVM, then link the .so  tvm.compile + export_library
    save      the single-file artifact (``Artifact.save``)    CLI only; lowbit.compile returns

``lower`` + ``compile`` are the two halves of :func:`lowbit.codegen.build.build` (same target,
same ``relax_pipeline``), run apart so each is timed and the Relax module can be dumped.

The artifact's manifest holds the graph inputs / outputs (name, static shape, numpy dtype), the
target spec (:meth:`TargetSpec.for_build_host` for ``"x86"``, whose ``mcpu`` names this CPU and
may use any of its ISA extensions; the fixed feature list otherwise) and the per-layer plan: one
:class:`PlanRow` per quantized layer (QConv / QMatMul) with its kernel family
(``node.meta["kernel"]``, default ``reference``) and details ``format`` (weight number format),
``w_bits``, ``a_bits``, ``granularity``, ``acc`` (accumulator dtype).

Cheap checks run before any stage (unknown preset, a quantizing recipe without ``calib``,
unknown target), so a bad request fails in milliseconds with one
:class:`~lowbit.ir.errors.LowbitError` line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..ir import Graph, Op
from ..ir.errors import QuantizationError
from ..runtime.artifact import Artifact, PlanRow, TargetSpec, TensorSpec, host_arch
from .recipes import Recipe

STAGES = ("import", "passes", "quantize", "select", "lower", "compile", "save")
#: the stage --quant auto runs before ``import``
PLAN_STAGE = "plan"
#: the IR ops that are "quantized layers" in the plan
PLANNED_OPS = frozenset({Op.QCONV, Op.QMATMUL})


# -- stage reporting ----------------------------------------------------------------------------
class StageLog:
    """Times named stages; subclasses show them. ``with log.stage("import"): ...`` records the
    wall time in :attr:`times` (in order); :meth:`skip` records a stage that did no work."""

    def __init__(self):
        self.times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        self._start(name, detail)
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.perf_counter() - start
            if ok:
                self.times.append((name, seconds))
            self._end(name, detail, seconds, ok)

    def skip(self, name: str, why: str) -> None:
        """A stage with nothing to do (``quantize`` for preset none)."""
        self.times.append((name, 0.0))
        self._skipped(name, why)

    def _start(self, name: str, detail: str) -> None:
        pass

    def _end(self, name: str, detail: str, seconds: float, ok: bool) -> None:
        pass

    def _skipped(self, name: str, why: str) -> None:
        pass

    def close(self) -> None:
        """Stop any live display."""


class PlainStageLog(StageLog):
    """One line per finished stage on ``stream`` (``lowbit: compile   1.23 s``): for logs and
    pipes. A failed stage prints nothing; the error line says what happened."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = sys.stderr if stream is None else stream

    def _end(self, name, detail, seconds, ok):
        if ok:
            extra = f"  ({detail})" if detail else ""
            print(f"lowbit: {name:<9}{seconds:8.2f} s{extra}", file=self.stream, flush=True)

    def _skipped(self, name, why):
        print(f"lowbit: {name:<9}  skipped ({why})", file=self.stream, flush=True)


class RichStageLog(StageLog):
    """A rich progress display on stderr: a spinner on the running stage, its time once done."""

    def __init__(self, console=None):
        super().__init__()
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(SpinnerColumn(finished_text="[green]✓"),
                                 TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=self.console, transient=False)
        self.progress.start()
        self._tasks: dict[str, int] = {}

    def _start(self, name, detail):
        label = f"{name:<9}" + (f" [dim]{detail}" if detail else "")
        self._tasks[name] = self.progress.add_task(label, total=1)

    def _end(self, name, detail, seconds, ok):
        task = self._tasks[name]
        if ok:
            label = f"{name:<9} {seconds:6.2f} s" + (f" [dim]{detail}" if detail else "")
            self.progress.update(task, description=label, completed=1)
        else:
            self.progress.update(task, description=f"[red]{name:<9} failed")
            self.progress.stop_task(task)

    def _skipped(self, name, why):
        task = self.progress.add_task(f"{name:<9} [dim]skipped ({why})", total=1)
        self.progress.update(task, completed=1)  # update() marks it finished (a ✓, no spinner)

    def close(self):
        self.progress.stop()


def stage_log_for(stream=None, quiet: bool = False) -> StageLog:
    """The display for a CLI run: silent with ``quiet``, rich on a terminal, plain lines
    otherwise."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return StageLog()
    if hasattr(stream, "isatty") and stream.isatty():
        return RichStageLog()
    return PlainStageLog(stream)


# -- manifest pieces ----------------------------------------------------------------------------
def tensor_specs(values) -> tuple[TensorSpec, ...]:
    """Graph inputs / outputs as manifest specs (numpy storage dtype: int4 travels as int8)."""
    return tuple(TensorSpec(v.name, tuple(int(d) for d in v.shape), str(v.dtype.numpy))
                 for v in values)


def target_spec(target) -> TargetSpec:
    """The manifest target of a :class:`lowbit.codegen.target.Target`: the host's ISA flags
    for ``x86`` (built with ``mcpu`` = this CPU), the target's own feature list otherwise."""
    if target.name == "x86":
        return TargetSpec.for_build_host(target.name, target.tvm_dict(), target.features)
    return TargetSpec.from_tvm(target.name, target.tvm_dict(), target.features)


def plan_rows(graph: Graph, auto=None) -> tuple[PlanRow, ...]:
    """One :class:`PlanRow` per quantized layer (QConv / QMatMul), in graph order; with an
    ``--quant auto`` plan ``auto``, each row also holds the layer's ``sensitivity`` and
    measured kernel ``latency_ms``."""
    extra = {} if auto is None else {
        r.layer: (("sensitivity", float(r.sensitivity)),) + (
            () if r.latency_ms is None else (("latency_ms", round(float(r.latency_ms), 6)),))
        for r in auto.rows()}
    rows = []
    for node in graph.nodes:
        if node.op not in PLANNED_OPS:
            continue
        kernel = str(node.meta.get("kernel") or "reference") if node.meta else "reference"
        x, w = node.inputs[0], node.inputs[1]
        wq = w.qtype
        details: list[tuple[str, object]] = []
        if wq is not None:
            details += [("format", wq.kind.value), ("w_bits", int(wq.bits)),
                        ("granularity", wq.granularity.kind)]
        else:
            details += [("format", "int"), ("w_bits", int(w.dtype.bits))]
        details += [("a_bits", int(x.qtype.bits if x.qtype is not None else x.dtype.bits)),
                    ("acc", str(getattr(node.attrs, "acc_dtype", "")))]
        details += list(extra.get(node.name, ()))
        rows.append(PlanRow(node.name, node.op.value, kernel, tuple(details)))
    return tuple(rows)


# -- the driver ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompileResult:
    """What :func:`compile_model` made: the artifact, the IR graph that was lowered, the Relax
    module as TVMScript text, the stage times ``((stage, seconds), ...)`` and, for ``--quant
    auto``, the :class:`~lowbit.compiler.allocate.Plan` it compiled."""

    artifact: Artifact
    graph: Graph
    relax_script: str
    times: tuple[tuple[str, float], ...]
    plan: object = None


AUTO = "auto"


def check_auto(quant: str, calib, recipe, budget, max_drop, eval) -> None:
    """The cheap checks of the ``--quant auto`` options (module docstring)."""
    from .allocate import parse_budget

    if quant != AUTO:
        given = [name for name, v in (("--budget", budget), ("--max-drop", max_drop),
                                      ("--eval", eval)) if v is not None]
        if given:
            raise QuantizationError(f"{' / '.join(given)} apply to --quant auto only; add "
                                    f"--quant auto or drop them")
        return
    if recipe is not None:
        raise QuantizationError("--quant auto chooses every layer's recipe itself; drop "
                                "--recipe (a saved plan is a recipe: compile it with --recipe "
                                "and no --quant auto)")
    if calib is None:
        raise QuantizationError("--quant auto needs calibration data to measure layer "
                                "sensitivity: pass calib= a .npz path (CLI: --calib FILE.npz)")
    if (max_drop is None) != (eval is None):
        raise QuantizationError("--max-drop and --eval go together: the accuracy-aware mode "
                                "measures top-1 on the labelled eval data")
    if budget is None and max_drop is None:
        raise QuantizationError("--quant auto needs a budget (e.g. --budget size=0.25, "
                                "latency=0.6x, latency=2.5ms, bits=3.0) or --max-drop PTS "
                                "--eval FILE.npz")
    if budget is not None:
        parse_budget(budget)


def check_request(quant: str = "w4a8", calib=None, recipe=None, target="x86", *,
                  budget=None, max_drop=None, eval=None):
    """The cheap checks (see the module docstring); returns ``(recipe, Target)`` (recipe None
    for ``--quant auto``: the planner makes it)."""
    from ..codegen.target import resolve_target
    from .quantize import resolve_recipe

    check_auto(quant, calib, recipe, budget, max_drop, eval)
    if quant == AUTO:
        return None, (resolve_target(target) if isinstance(target, str) else target)
    plan = resolve_recipe(quant, recipe)
    if not plan.quantizes_nothing and calib is None:
        name = plan.preset or "custom recipe"
        raise QuantizationError(
            f"quantizing with {name!r} needs calibration data: pass calib= a .npz path or a "
            f"dict {{input name: samples}} (CLI: --calib FILE.npz); only --quant none compiles "
            f"without it")
    return plan, (resolve_target(target) if isinstance(target, str) else target)


def _write_text(path: Path, text: str) -> None:
    from .cli import write_atomic

    write_atomic(path, text)


def compile_model(model, target="x86", quant: str = "w4a8", calib=None, recipe=None,
                  input_shapes=None, *, threads: int | None = None,
                  dump_ir: str | os.PathLike | None = None,
                  log: StageLog | None = None, budget=None, max_drop: float | None = None,
                  eval=None, planner=None, auto_plan=None,
                  kernel_cache=None, jobs: int | None = None) -> CompileResult:
    """Run the stages plan .. compile (module docstring) and return a :class:`CompileResult`.

    ``model``: ONNX path / bytes / ModelProto. ``threads`` sizes TVM's thread pool of this
    process (:func:`lowbit.codegen.build.build`). ``dump_ir`` writes ``passes/NN-*.txt`` (default
    passes), ``quantize/NN-*.txt`` (quantization passes), ``final.txt`` (the lowered IR) and
    ``relax.py`` (the Relax module, ``mod.script()``) into that folder. ``quant="auto"``:
    ``budget`` (``"size=0.25,latency=0.6x"`` or a dict) and/or ``max_drop`` points with
    labelled ``eval`` data choose the plan (:mod:`lowbit.compiler.planner`; ``planner`` reuses
    an existing :class:`~lowbit.compiler.planner.Planner` and its measurements;
    ``auto_plan`` compiles an already chosen :class:`~lowbit.compiler.allocate.Plan`).
    ``kernel_cache``: folder of the kernel measurement cache (default
    ``$XDG_CACHE_HOME/lowbit``). ``jobs``: worker processes of the planning (default
    ``$LOWBIT_JOBS`` or one per CPU; :mod:`lowbit.compiler.parallel`)."""
    from ..passes import default_pipeline
    from .onnx_import import import_onnx
    from .quantize import quantize, resolve_recipe

    log = StageLog() if log is None else log
    first_stage = len(log.times)  # a shared log (bench, demo) holds earlier compiles' stages
    if auto_plan is not None:
        quant, recipe = "auto-plan", auto_plan.to_recipe()
    _, tgt = check_request(quant, calib, recipe, target, budget=budget, max_drop=max_drop,
                           eval=eval)
    dump = None if dump_ir is None else Path(dump_ir)
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
    chosen = auto_plan
    if quant == AUTO:
        with log.stage(PLAN_STAGE, str(budget or f"max-drop {max_drop}")):
            chosen = _plan(model, tgt, calib, input_shapes, budget, max_drop, eval, planner,
                           jobs)
        recipe = chosen.to_recipe()
    with log.stage("import"):
        graph = import_onnx(model, input_shapes=input_shapes)
    with log.stage("passes"):
        graph = default_pipeline(dump_dir=None if dump is None else dump / "passes")(graph).graph
    if quant == "none" and recipe is None:
        log.skip("quantize", "--quant none")
    else:
        label = recipe and "recipe" or quant
        recipe = target_recipe(resolve_recipe(quant, recipe), tgt)
        if recipe.reduce_range:
            label += " (reduce_range)"
        with log.stage("quantize", label):
            graph = quantize(graph, quant=quant, calib=calib, recipe=recipe,
                             dump_ir=None if dump is None else dump / "quantize")
    if any(n.op in PLANNED_OPS for n in graph.nodes):
        with log.stage("select", "kernels by measured speed"):
            _select(graph, tgt, kernel_cache)
    else:
        log.skip("select", "no quantized layers")
    if dump is not None:
        _write_text(dump / "final.txt", str(graph))
    with log.stage("lower", tgt.name):
        mod, weights = _lower(graph, tgt)
    script = mod.script()
    if dump is not None:
        _write_text(dump / "relax.py", script)
    with log.stage("compile"):
        payload = _compile(mod, tgt, threads)
    artifact = Artifact(target=target_spec(tgt), inputs=tensor_specs(graph.inputs),
                        outputs=tensor_specs(graph.outputs), payload=payload,
                        plan=plan_rows(graph, chosen), weights=tuple(weights))
    return CompileResult(artifact, graph, script, tuple(log.times[first_stage:]), chosen)


def target_recipe(recipe: Recipe, target) -> Recipe:
    """``recipe`` with ``reduce_range = "auto"`` (None) decided for ``target``
    (:func:`lowbit.codegen.kernels.int8.reduces_range`: on for x86 AVX2 without VNNI, where
    exact 8-bit weights run at half rate); an explicit true / false is kept."""
    if recipe.reduce_range is not None:
        return recipe
    from ..codegen.kernels.int8 import reduces_range

    return replace(recipe, reduce_range=reduces_range(target))


def _plan(model, target, calib, input_shapes, budget, max_drop, eval, planner=None,
          jobs=None):
    """The ``--quant auto`` plan (:func:`lowbit.compiler.planner.plan`)."""
    from .planner import Planner

    if planner is None:
        planner = Planner(model, target, calib, input_shapes=input_shapes, jobs=jobs)
    if max_drop is None:
        return planner.allocate(budget)
    return planner.search(eval, max_drop, budget)[0]


def _select(graph: Graph, target, cache_dir=None) -> None:
    """Pick each QConv / QMatMul's kernel family by measured speed at its shape on ``target``
    (cached on disk; :func:`lowbit.codegen.select.select_kernels`); a recipe's per-layer
    ``kernel`` (carried as ``node.meta["kernel_forced"]``) wins."""
    from ..codegen.select import select_kernels

    forced = {n.name: n.meta["kernel_forced"] for n in graph.nodes
              if "kernel_forced" in n.meta}
    select_kernels(graph, target, forced=forced or None, cache_dir=cache_dir)


def _lower(graph: Graph, target):
    """The Relax module and the kernel weights the artifact stores beside the library
    (:func:`lowbit.codegen.lower.lower_stored`)."""
    from ..codegen.lower import lower_stored

    return lower_stored(graph, target)


def _compile(mod, target, threads: int | None) -> bytes:
    """:func:`lowbit.codegen.build.compile_lowered` (TVM with lowbit's pipelines), then the
    linked library's bytes (:func:`~lowbit.runtime.artifact.export_payload`)."""
    from ..codegen.build import compile_lowered
    from ..ir.errors import LoweringError
    from ..runtime.artifact import CROSS_LINKERS, export_payload

    if threads is not None:
        from ..codegen.kernels.bitserial import set_num_threads

        set_num_threads(threads)
    try:
        executable = compile_lowered(mod, target)
    except (RuntimeError, ValueError, TypeError) as exc:  # TVM's errors derive from these
        raise LoweringError(f"TVM failed to compile for target {target.name!r}: "
                            f"{_first_error_line(exc)}") from exc
    spec = target_spec(target)
    try:  # a missing cross linker is already a one-line LoweringError from export_payload
        return export_payload(executable, spec)
    except (RuntimeError, OSError) as exc:  # the (cross) linker (g++ -shared) failed
        cross = spec.arch not in (host_arch(), "cuda")
        hint = (f"; check that the cross linker ({' / '.join(CROSS_LINKERS[spec.arch])}) "
                f"works, or compile on an {spec.arch} host" if cross
                else "; check that g++ is installed")
        raise LoweringError(f"linking the compiled library for target {target.name!r} failed: "
                            f"{_first_error_line(exc)}{hint}") from exc


def _first_error_line(exc: BaseException) -> str:
    """The most telling line of a long TVM / linker message (the first naming an error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((ln for ln in lines if "error" in ln.lower() and not ln.endswith(":")),
                lines[0] if lines else "")
    return f"{type(exc).__name__}: {line[:300]}"


def compile(model, target="x86", quant: str = "w4a8", calib=None, recipe=None,
            input_shapes=None, *, threads: int | None = None,
            dump_ir: str | os.PathLike | None = None, budget=None,
            max_drop: float | None = None, eval=None, jobs: int | None = None) -> Artifact:
    """Quantize (unless ``quant == "none"``), lower and compile ``model`` for ``target``;
    returns the :class:`Artifact` (``.save(path)`` it, run it with ``lowbit.Session``).
    ``quant="auto"`` plans per layer under ``budget`` / ``max_drop`` + ``eval``. Arguments:
    see :func:`compile_model` and :func:`lowbit.quantize`."""
    return compile_model(model, target, quant, calib, recipe, input_shapes, threads=threads,
                         dump_ir=dump_ir, budget=budget, max_drop=max_drop,
                         eval=eval, jobs=jobs).artifact


__all__ = [
    "AUTO",
    "PLAN_STAGE",
    "STAGES",
    "CompileResult",
    "PlainStageLog",
    "RichStageLog",
    "StageLog",
    "check_auto",
    "check_request",
    "compile",
    "compile_model",
    "plan_rows",
    "stage_log_for",
    "target_spec",
    "tensor_specs",
]
