"""Kernel selection: which kernel family computes each QConv / QMatMul, by measured speed.

``select_kernels(graph, target)`` walks the graph's QConv / QMatMul nodes. A layer's candidates
are the registered families (:func:`lowbit.codegen.kernels.families`) that have a graph
lowering for the op and whose plan succeeds (:func:`lowbit.codegen.lowering.families.
plan_layer`: ``accepts(w_qtype, a_qtype)``, layout, target ISA, int32 accumulator bound),
plus ``"reference"`` (the generic exact te kernel, always possible).

* ``measure=True``: each candidate's layer is compiled alone (a one-node graph through
  :func:`lowbit.codegen.build.build`, the same lowering the whole graph gets) and timed with
  TVM's ``time_evaluator`` on one thread (median of :data:`REPEATS` repeats of at least
  :data:`MIN_REPEAT_MS` ms each, cache-hot); the fastest wins. Within :data:`TIE_TOLERANCE`
  of it the family storing the fewest weight bytes wins (:func:`_fastest`), then by name.
  Measurements are cached on disk (:class:`MeasurementCache`), so a second selection of the
  same layers does no timing. Compiling and timing are separate steps for callers that
  compile many layers at once (:func:`lowbit.codegen.latency.layer_costs`):
  :func:`compile_layers` builds and exports libraries on worker processes, :func:`time_layer`
  times one here (a loaded library skips the LLVM JIT of an in-memory executable). A target
  that cannot run on this host (arm64, cuda) is not measured: the static order applies.
* ``measure=False``: the first candidate in :data:`STATIC_PREFERENCE` (then any other family
  by name, then ``reference``). The order reflects the kernels' design: bit-serial popcount
  for <= 4-bit activations, then the int8 VNNI GEMM, the pow2 -> int8 VNNI variant, table
  lookup, true shift-add.
* ``forced`` (node name -> family, from a recipe's per-layer ``kernel``): that family wins (and
  is measured alone when ``measure``), but it must take the layer, else :class:`LoweringError`
  naming the node, the family and why.

Results: ``node.meta["kernel"]`` (the printer shows ``# kernel=...``), ``node.meta
["kernel_us"]`` (the chosen kernel's measured µs; absent when not measured), and the returned
``{node_name: KernelChoice}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..compiler.disk_cache import JsonCache as MeasurementCache
from ..compiler.disk_cache import cache_folder
from ..ir import Graph, Node, Op
from ..ir.errors import LowbitError, LoweringError

REFERENCE = "reference"
#: static order (``measure=False``); families not listed follow by name, then ``reference``
STATIC_PREFERENCE = ("bitserial", "int8", "shiftadd_int8", "lut", "shiftadd")
#: the ops selection applies to
LAYER_OPS = (Op.QCONV, Op.QMATMUL)
REPEATS = 5
MIN_REPEAT_MS = 10
#: rounds of a whole-model timing (:func:`time_executables`): a whole model is one or a few
#: calls per repeat, and a 20 ms ResNet measured 25.2, 25.2 and 33.5 ms in three back-to-back
#: 5-repeat timings on the shared Zen 3 host
WHOLE_REPEATS = 21


@dataclass(frozen=True, slots=True)
class KernelChoice:
    """The kernel chosen for one layer: ``family``, its measured ``us`` (None: not measured),
    ``source`` (``measured`` / ``cached`` / ``static`` / ``forced``), every candidate with its
    µs (None: not measured) and the families that were rejected with the reason."""

    node: str
    op: str
    family: str
    us: float | None
    source: str
    candidates: tuple[tuple[str, float | None], ...]
    rejected: tuple[tuple[str, str], ...]


# -- the measurement cache (compiler/disk_cache.py) -------------------------------------------
def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/lowbit/kernels.json`` (``~/.cache`` when the variable is unset)."""
    return cache_folder() / "kernels.json"


def _qtype_key(q) -> str:
    if q is None:
        return "none"
    return f"{q.kind.value}{q.bits}{'s' if q.signed else 'u'}{'nz' if q.zero_free else ''}"


def layer_key(node: Node, target, family: str) -> str:
    """The cache key of one (layer, family) measurement: what the timing depends on (scales
    and weight values do not change the kernel's speed; shapes, formats and the epilogue do)."""
    from .. import __version__
    from .revision import revision

    a = node.attrs
    rq = a.requant
    geo = ""
    if node.op == Op.QCONV:
        geo = f"s{a.strides}p{a.pads}d{a.dilations}g{a.group}t{int(a.transposed)}"
    epi = (f"sh{int(a.acc_shift > 0)}{'b' if rq.binary else 'a' if rq.accumulates else 'r'}"
           f"{node.outputs[0].dtype}{'G' if a.groups is not None else ''}")
    parts = [f"lowbit={__version__}+{revision()}", f"target={target.name}:{dict(target.tvm_items)}",
             node.op.value, f"x{tuple(node.inputs[0].shape)}{node.inputs[0].dtype}",
             f"w{tuple(node.inputs[1].shape)}", geo,
             f"{_qtype_key(node.inputs[1].qtype)}x{_qtype_key(node.inputs[0].qtype)}", epi,
             f"bias{int(len(node.inputs) > 2 and node.inputs[2] is not None)}", family]
    return "|".join(parts)


# -- measuring one layer -----------------------------------------------------------------------
def layer_graph(node: Node, family: str) -> Graph:
    """A one-node graph computing ``node`` on ``family`` (its x as the only input)."""
    g = Graph(f"layer_{node.name}")
    x = g.add_input("x", node.inputs[0].dtype, node.inputs[0].shape)
    x.qtype = node.inputs[0].qtype
    ins = [x]
    for i, v in enumerate(node.inputs[1:], start=1):
        if v is None:
            ins.append(None)
            continue
        c = g.add_const(v.const, f"in{i}", dtype=v.dtype)
        c.qtype = v.qtype
        ins.append(c)
    out = node.outputs[0]
    new = g.add_node(node.op, ins, node.attrs, name=node.name, outputs=["y"],
                     out_types=[(out.dtype, out.shape)])
    if family != REFERENCE:
        new.meta["kernel"] = family
    g.outputs = [new.outputs[0]]
    return g


def _codes(value, rng) -> np.ndarray:
    """Random legal codes of ``value``'s QType (binary: +-1) in its storage dtype."""
    q, dt = value.qtype, value.dtype
    shape = tuple(value.shape)
    if q is not None and q.kind.value == "binary":
        arr = rng.choice(np.array([-1, 1]), shape)
    else:
        lo, hi = (q.min, q.max) if q is not None else (int(dt.min), int(dt.max))
        arr = rng.integers(lo, hi + 1, shape)
    return arr.astype(dt.numpy)


def _on_single_thread(fn):
    """``fn()`` run on a fresh Python thread whose TVM pool has one thread (parallel loops run
    inline), so the caller's own pool is never touched: TVM caps a thread's pool at the
    ``TVM_NUM_THREADS`` it was created under, and a caller whose first TVM call was a
    one-thread measurement could never run on more threads after (measured: a 2-thread
    binarized ResNet-18 ran at its 1-thread speed, 16 ms instead of 9, after selection).
    ``TVM_NUM_THREADS`` is set to 1 while the thread creates its pool and restored after; the
    pinning that configuring a pool does stays on that thread."""
    import threading

    import tvm

    result: list = []

    def body():
        try:
            tvm.get_global_func("runtime.config_threadpool")(0, 1)
            result.append((True, fn()))
        except BaseException as err:  # handed to the caller
            result.append((False, err))

    before = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = "1"
    try:
        worker = threading.Thread(target=body, name="lowbit-measure")
        worker.start()
        worker.join()
    finally:
        if before is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = before
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _describe(err: BaseException) -> str:
    """``TypeName: first line of the message`` (compile failures, one line)."""
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _layer_failure(node: Node, family: str, why: str) -> LoweringError:
    return LoweringError(
        f"{node.op.value} node '{node.name}': kernel family '{family}' failed to compile "
        f"for timing: {why}; force another kernel for this layer in the recipe")


def measure_layer(node: Node, family: str, target) -> float:
    """Median µs of ``node`` compiled alone on ``family`` for ``target`` (host only), one
    thread, cache-hot (module docstring)."""
    from .build import build

    graph = layer_graph(node, family)
    try:
        ex = build(graph, target)
    except LoweringError:
        raise
    except Exception as err:
        raise _layer_failure(node, family, _describe(err)) from err
    return time_executable(ex, [_codes(graph.inputs[0], np.random.default_rng(0))])


# -- compiling on worker processes, timing here ------------------------------------------------
def _compile_task(item) -> LowbitError | str | None:
    """Worker task: build ``graph`` for ``target`` and export it to ``path``. Returns None, the
    :class:`LowbitError` the build raised, or ``TypeName: message`` of any other failure
    (returned, not raised: the caller raises it when it reaches that item, in its order)."""
    from .build import build

    graph, target, path = item
    try:
        build(graph, target).export_library(str(path))
    except LowbitError as err:
        return err
    except Exception as err:  # noqa: BLE001 -- TVM / LLVM errors, whose types may not pickle
        return _describe(err)
    return None


def compile_graphs(graphs, target, folder, jobs: int = 1, *, on_done=None) -> list:
    """Compile each graph of ``graphs`` for ``target`` into ``folder/<i>.so`` on ``jobs``
    worker processes (:func:`lowbit.compiler.parallel.pmap`; 1: here). Per graph, in order:
    the library path, the :class:`LowbitError` its build raised, or ``TypeName: message`` of
    another failure. ``on_done(i, result)`` is called here as each compile ends."""
    from ..compiler.parallel import pmap

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = [(g, target, folder / f"{i}.so") for i, g in enumerate(graphs)]
    results = pmap(_compile_task, items, jobs, on_done=on_done)
    return [item[2] if result is None else result for item, result in zip(items, results)]


def compile_layers(layers, target, folder, jobs: int = 1, *, on_done=None) -> list:
    """:func:`compile_graphs` of the one-node graph (:func:`layer_graph`) of every ``(node,
    family)`` of ``layers``: per layer the library path or the :class:`LoweringError` that
    :func:`measure_layer` would raise for it."""
    results = compile_graphs([layer_graph(node, family) for node, family in layers], target,
                             folder, jobs, on_done=on_done)
    out = []
    for (node, family), result in zip(layers, results):
        if isinstance(result, LowbitError) and not isinstance(result, LoweringError):
            result = _describe(result)  # as measure_layer words it
        if isinstance(result, str):
            result = _layer_failure(node, family, result)
        out.append(result)
    return out


def load_executable(path):
    """The compiled module exported to ``path`` (what ``relax.VirtualMachine`` takes;
    loading skips the LLVM JIT an in-memory executable costs at VM creation)."""
    import tvm

    return tvm.runtime.load_module(str(path))


def time_layer(node: Node, compiled) -> float:
    """Median µs of ``node`` on ``compiled`` (a library path from :func:`compile_layers`, or
    an executable) with the inputs :func:`measure_layer` uses."""
    if isinstance(compiled, (str, Path)):
        compiled = load_executable(compiled)
    return time_executable(compiled, [_codes(node.inputs[0], np.random.default_rng(0))])


def time_executable(ex, inputs) -> float:
    """Median µs of ``main(*inputs)`` of a compiled Relax executable on this CPU: one thread,
    one warm-up call (first-touching the weights), then :data:`REPEATS` repeats of at least
    :data:`MIN_REPEAT_MS` ms each (cache-hot)."""
    return time_executables([(ex, inputs)], REPEATS)[0]


def time_executables(items, repeats: int = WHOLE_REPEATS) -> list[float]:
    """Median µs of ``main(*inputs)`` for each ``(executable, inputs)`` of ``items``: one
    thread, one warm-up call each, then ``repeats`` rounds; a round times every executable
    once, for at least :data:`MIN_REPEAT_MS` ms (calls repeated within). Interleaved rounds
    spread a burst of outside load over every item instead of landing on one item's whole
    measurement (the remainders of ``--quant auto`` are differences of such timings)."""
    import tvm
    from tvm import relax

    def measure():
        dev = tvm.cpu()
        timers = []
        for ex, inputs in items:
            vm = relax.VirtualMachine(ex, dev)
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
            vm["main"](*args)
            timers.append((vm.time_evaluator("main", dev, number=1, repeat=1,
                                             min_repeat_ms=MIN_REPEAT_MS), args))
        results = [[] for _ in timers]
        for _ in range(repeats):
            for out, (timer, args) in zip(results, timers):
                out.extend(timer(*args).results)
        return results

    return [float(np.median(r)) * 1e6 for r in _on_single_thread(measure)]


def measure_pool(node: Node, pool, target, cache: MeasurementCache
                 ) -> tuple[dict[str, float], int]:
    """``({family: µs}, how many came from cache)`` for every family of ``pool`` on ``node``:
    the cached figure (:func:`layer_key`) or a new :func:`measure_layer`, put in ``cache``
    (the caller saves it)."""
    times, n_cached = {}, 0
    for family in pool:
        key = layer_key(node, target, family)
        us = cache.get(key)
        if us is None:
            us = measure_layer(node, family, target)
            cache.put(key, us)
        else:
            n_cached += 1
        times[family] = us
    return times, n_cached


def open_cache(cache_dir=None) -> MeasurementCache:
    """The measurement cache in ``cache_dir`` (default :func:`default_cache_path`)."""
    return MeasurementCache(Path(cache_dir) / "kernels.json" if cache_dir is not None
                            else default_cache_path())


# -- selection ---------------------------------------------------------------------------------
def candidates(node: Node, target) -> tuple[list[str], list[tuple[str, str]]]:
    """``(families that can take node, [(family, why not)])``; ``reference`` always last."""
    from .kernels import families
    from .lowering import has_lowering
    from .lowering.families import plan_layer

    ok, rejected = [], []
    for fam in families():
        if not has_lowering(node.op, fam.name):
            rejected.append((fam.name, f"no {node.op.value} lowering"))
            continue
        try:
            plan_layer(node, fam.name, target)
        except LoweringError as err:
            rejected.append((fam.name, str(err).split("cannot take this layer: ")[-1]))
            continue
        ok.append(fam.name)
    return ok + [REFERENCE], rejected


#: measured times within this fraction of the fastest count as a tie (run-to-run noise of
#: one layer timed alone is about this size on the shared 2-core hosts)
TIE_TOLERANCE = 0.05


def _weight_bytes(node: Node, family: str, target) -> int:
    """Bytes of ``node``'s weights as kernel family ``family`` stores them (its packed weight
    array, padding included: what the kernel streams)."""
    from .lowering.families import plan_layer

    return int(np.asarray(plan_layer(node, family, target).params[0]).nbytes)


def _fastest(node: Node, pool: list[str], times: dict, target) -> str:
    """The fastest family; among those within :data:`TIE_TOLERANCE` of it, the one storing
    the fewest weight bytes (its packed array; the generic ``reference`` kernel last), then
    the fastest, then by name. A layer timed alone keeps its
    weights in cache; in a network the other layers evict them, so at equal alone speed the
    smaller weights win (the binarized ResNet-18's 7²·512 layers: AMX byte tiles 143.7 µs
    and 2.4 MB, popcount bit planes 145.9 µs and 295 KB; in the network after an
    onnxruntime call, ~167 against ~135 µs)."""
    best = min(times[f] for f in pool)
    near = sorted(f for f in pool if times[f] <= best * (1 + TIE_TOLERANCE))
    if len(near) == 1:
        return near[0]
    return min(near, key=lambda f: (f == REFERENCE, f != REFERENCE and _weight_bytes(
        node, f, target), times[f], f))


def _static_choice(pool: list[str]) -> str:
    order = {name: i for i, name in enumerate(STATIC_PREFERENCE)}
    return min(pool, key=lambda f: (f == REFERENCE, order.get(f, len(order)), f))


def select_kernels(graph: Graph, target, *, forced: dict[str, str] | None = None,
                   cache_dir=None, measure: bool = True) -> dict[str, KernelChoice]:
    """Choose a kernel family for every QConv / QMatMul of ``graph`` (module docstring);
    sets ``node.meta["kernel"]`` / ``["kernel_us"]`` and returns ``{node: KernelChoice}``.

    ``target``: a :class:`~lowbit.codegen.target.Target` or a name; ``forced``: node name ->
    family (or ``reference``); ``cache_dir``: folder of ``kernels.json`` (default
    :func:`default_cache_path`)."""
    from .kernels import get_family
    from .lowering.families import plan_layer
    from .target import resolve_target

    if isinstance(target, str):
        target = resolve_target(target)
    forced = dict(forced or {})
    layers = [n for n in graph.nodes if n.op in LAYER_OPS]
    names = {n.name for n in layers}
    unknown = sorted(set(forced) - names)
    if unknown:
        raise LoweringError(
            f"forced kernel for {', '.join(repr(u) for u in unknown)}: no QConv / QMatMul of "
            f"that name in graph '{graph.name}'; layers: {', '.join(sorted(names)) or 'none'}")
    timing = measure and target.runs_on_host()
    cache = None
    if timing:
        cache = open_cache(cache_dir)
    choices: dict[str, KernelChoice] = {}
    try:
        for node in layers:
            pool, rejected = candidates(node, target)
            source = "measured" if timing else "static"
            if node.name in forced:
                family = forced[node.name]
                if family != REFERENCE:
                    get_family(family)  # unknown family: LoweringError listing the known ones
                    if family not in pool:
                        plan_layer(node, family, target)  # raises with the reason
                pool, source = [family], "forced"
            times: dict[str, float | None] = dict.fromkeys(pool)
            if timing:
                measured, n_cached = measure_pool(node, pool, target, cache)
                times.update(measured)
                if source == "measured" and n_cached == len(pool):
                    source = "cached"
                choice = _fastest(node, pool, times, target)
            else:
                choice = pool[0] if source == "forced" else _static_choice(pool)
            node.meta["kernel"] = choice
            if times[choice] is not None:
                node.meta["kernel_us"] = round(times[choice], 3)
            else:
                node.meta.pop("kernel_us", None)
            choices[node.name] = KernelChoice(node.name, node.op.value, choice, times[choice],
                                              source, tuple(times.items()), tuple(rejected))
    finally:
        if cache is not None:
            cache.save()
    return choices
