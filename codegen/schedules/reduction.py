"""Schedule rules for row reductions: softmax, log-softmax, layer norm, reduce_{sum,mean,max},
global pools, and any PrimFunc whose reduction blocks reduce the innermost (contiguous) axes.

Rule ``row_reduction``: the blocks must be ``S…S R…R`` reductions and spatial blocks sharing
leading spatial axes, the last block spatial (dlight's CPU ``Reduction`` pattern); the shared
spatial axes run in parallel and every block is computed at that loop. Float reductions over
contiguous rows become lane-split vector reductions (:class:`LaneSplitRows`); other PrimFuncs
of the pattern (integer reductions, rows with no 4-lane split) get dlight's
``tvm.s_tir.dlight.cpu.Reduction`` schedule: spatial blocks vectorized, reduction loops split
by the SIMD width and unrolled, each sum in its original order. A PrimFunc ending in a
reduction block (a bare ``reduce_sum``, a GEMV) goes to dlight's ``GEMV`` rule, then to a
plain rule: the spatial loops but the innermost run in parallel, the rest left in order
(strided pooling windows land here too; sums keep their order).

Summation order: a lane-split float reduction adds row element ``k`` into partial
accumulator ``k mod P`` (P partials, each in element order), then adds the P partials in
lane order. That is a different float summation order from the unscheduled kernel (and from
onnxruntime's, which is different again): results differ in the last bits, relative error
bounded like any float sum (tested: softmax / layer norm within 1e-5 of onnxruntime). Max /
min reductions and integer kernels are unaffected (exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import register_rule
from .analysis import blocks_of


class BareReduction:
    """A single ``S…S R…R`` block: fuse the spatial loops but the last and run them in
    parallel; the last spatial loop and the reduction loops stay as they are (LLVM's loop
    vectorizer handles strided windows better than explicit gathers)."""

    def apply(self, func, target, _tunable):
        from tvm import s_tir

        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        facts = blocks_of(sch)
        if not facts or not all(f.simple for f in facts) or not facts[-1].reduction:
            return None
        from tvm.s_tir.schedule import ScheduleError

        from .injective import inline_all

        try:
            facts = inline_all(sch, facts)
            if len(facts) != 1:
                return None
            fact = facts[0]
            n_s = len(fact.kinds) - len(fact.kinds.lstrip("S"))
            if not n_s or fact.kinds != "S" * n_s + "R" * (len(fact.kinds) - n_s):
                return None
            loops = sch.get_loops(fact.block)
            outer = loops[:max(n_s - 1, 1)]
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        except ScheduleError:
            return None  # leave the PrimFunc as it is
        return sch


class _Guarded:
    """dlight's reduction rule behind our structural check (every block simple)."""

    def __init__(self, inner):
        self.inner = inner

    def apply(self, func, target, tunable):
        from tvm import s_tir

        if target.kind.name != "llvm":
            return None
        from tvm.s_tir.schedule import ScheduleError

        facts = blocks_of(s_tir.Schedule(func))
        if not facts or not all(f.simple for f in facts):
            return None
        try:
            return self.inner.apply(func, target, tunable)
        except ScheduleError:
            return None  # leave the PrimFunc as it is


class LaneSplitRows:
    """Row reductions (softmax, layer norm, reduce over the trailing axes) with every float
    reduction a lane-split vector reduction; None when the pattern or the row length does not
    fit.

    Pattern: every block simple, each block's iterators ``S…S`` or ``S…S R…R`` (reductions
    last), all blocks sharing ``n`` >= 1 leading spatial axes, the last block spatial, every
    reduction block writing a float dtype and reading its rows contiguously (the reduction
    iterators index the last dimensions, whole, in order, the innermost with unit stride),
    and a power-of-two ``w`` >= 4 (<= SIMD lanes) dividing every reduction length
    (:func:`_row_plan`).

    Schedule: each reduction's loops are fused, split ``[outer, P]`` and factorized on the
    ``P`` loop (``rfactor``; ``P`` a multiple of ``w``): ``P`` partial accumulators updated
    as vectors, lane ``l`` taking elements ``l, l + P, l + 2P, …`` in order, then one loop
    adding (or maxing) the ``P`` partials. The ``n`` shared spatial loops of the last block
    are fused and run in parallel, every other block is computed at that loop, and spatial
    rows are vectorized by the SIMD width (:func:`_vectorize_row`).
    """

    def apply(self, func, target, _tunable):
        from tvm import s_tir
        from tvm.s_tir.schedule import ScheduleError

        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        facts = blocks_of(sch)
        plan = _lane_plan(sch, facts, target)
        if plan is None:
            return None
        try:
            _lane_split_schedule(sch, facts, plan)
        except ScheduleError:
            return None
        return sch


@dataclass(frozen=True, slots=True)
class RowPlan:
    """How :class:`LaneSplitRows` cuts the rows: ``lanes`` per vector of a spatial row,
    ``partials`` accumulators per reduction (a multiple of ``lanes``), ``shared`` leading
    spatial axes run in parallel."""

    lanes: int
    partials: int
    shared: int


#: at most this many SIMD vectors of partial accumulators (independent add chains)
MAX_PARTIAL_VECTORS = 4


def _lane_plan(sch, facts, target) -> RowPlan | None:
    """The :class:`RowPlan` when ``facts`` fit :class:`LaneSplitRows`, else None."""
    from .analysis import row_lanes, vector_lanes
    from .injective import written_bits

    if not facts or len(facts) < 2 or not all(f.simple for f in facts):
        return None
    if not facts[-1].injective or not any(f.reduction for f in facts):
        return None
    n_shared, lengths = None, []
    for fact in facts:
        n_s = len(fact.kinds) - len(fact.kinds.lstrip("S"))
        if not n_s or fact.kinds != "S" * n_s + "R" * (len(fact.kinds) - n_s):
            return None
        if None in fact.extents:
            return None
        n_shared = n_s if n_shared is None else min(n_shared, n_s)
        if fact.reduction:
            if not _writes_float(sch, fact) or not _reads_rows(sch, fact, n_s):
                return None
            lengths.append(_product(fact.extents[n_s:]))
    simd = row_lanes(target, written_bits(sch, facts[-1].block))
    acc_bits = max(written_bits(sch, f.block) for f in facts if f.reduction)
    common = 0
    for n in lengths:
        common = math.gcd(common, n)
    return _row_plan(common, simd, n_shared, vector_lanes(target, acc_bits))


def _writes_float(sch, fact) -> bool:
    writes = sch.get(fact.block).writes
    return bool(writes) and all(str(w.source.dtype).startswith("float") for w in writes)


def _row_plan(length: int, simd: int, shared: int, acc_lanes: int | None = None
              ) -> RowPlan | None:
    """Lanes for rows of ``length`` (the gcd of every reduction length): spatial rows
    are cut into ``simd``-lane vectors (a last, partial vector is split off by loop
    partitioning: a full-width main loop plus a short tail). Partial accumulators: let ``w``
    be the largest power of two <= ``acc_lanes`` (the SIMD lanes of the accumulator dtype;
    default ``simd``) dividing ``length`` (None when ``w`` < 4); ``P`` is the multiple of
    ``w`` dividing ``length`` (``rfactor`` needs an exact split), at most
    ``MAX_PARTIAL_VECTORS · acc_lanes``, that minimises ``length / P + P`` (ties: the larger):
    the vector adds of one partial's chain plus the serial adds of the P partials, both one
    add latency each. 1000 at 16 lanes -> 40 partials; 32 at 8 lanes -> 8 (measured on Zen 3,
    layer norm 480×32: 7.9 µs at 8 partials, 21.5 µs at 32)."""
    acc = acc_lanes or simd
    width = acc
    while width >= 4 and length % width:
        width //= 2
    if width < 4:
        return None
    fits = [k * width for k in range(1, MAX_PARTIAL_VECTORS * acc // width + 1)
            if length % (k * width) == 0]
    partials = min(fits, key=lambda p: (length // p + p, -p))
    return RowPlan(simd, partials, shared)


def _product(extents) -> int:
    n = 1
    for e in extents:
        n *= e
    return n


def _reads_rows(sch, fact, n_s: int) -> bool:
    """True when every read of the reduction block that uses a reduction iterator walks the
    fused reduction loops contiguously: the reduction iterators index the last dimensions, in
    order, and the innermost one with unit stride."""
    from .analysis import buffer_index_vars, unit_stride

    stmt = sch.get(fact.block)
    red = [iv.var for iv in stmt.iter_vars[n_s:]]
    for region in stmt.reads:
        dims = [buffer_index_vars(region, v) for v in red]
        if not any(dims):
            continue
        rank = len(region.region)
        if dims != [[rank - len(red) + i] for i in range(len(red))]:
            return False
        if not unit_stride(region.region[-1].min, red[-1]):
            return False
        for i in range(len(red) - 1):
            if fact.extents[n_s + i + 1] != int(region.source.shape[rank - len(red) + i + 1]):
                return False  # a window inside a larger row: not one contiguous run
    return True


def _lane_split_schedule(sch, facts, plan: RowPlan) -> None:
    """Apply :class:`LaneSplitRows`'s schedule (rfactor each reduction, then compute-at)."""
    from .analysis import blocks_of

    partials = []
    for fact in facts:
        if not fact.reduction:
            continue
        n_s = fact.kinds.count("S")
        red = sch.get_loops(fact.block)[n_s:]
        fused = sch.fuse(*red) if len(red) > 1 else red[0]
        _, lane = sch.split(fused, factors=[None, plan.partials])
        partials.append(sch.rfactor(lane, factor_axis=n_s))
    blocks = [f.block for f in blocks_of(sch)]
    loops = sch.get_loops(blocks[-1])
    spatial = sch.fuse(*loops[:plan.shared]) if plan.shared > 1 else loops[0]
    sch.parallel(spatial)
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, spatial, preserve_unit_loops=True)
    for block in partials:
        _vectorize_partials(sch, block)
    for block in blocks:
        if all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars):
            _vectorize_row(sch, block, plan.lanes)


def _vectorize_partials(sch, block) -> None:
    """The rfactor block writes ``partial[…, lane]``: move its lane loop innermost, split off
    the initialization and vectorize both over the lanes."""
    stmt = sch.get(block)
    lane_var = stmt.writes[0].region[-1].min
    bound = dict(zip((iv.var for iv in stmt.iter_vars), _bindings_of(sch, block)))
    lane, reduction = None, None
    for loop in sch.get_loops(block):
        loop_var = sch.get(loop).loop_var
        for iv in stmt.iter_vars:
            value = bound.get(iv.var)
            if value is None or not value.same_as(loop_var):
                continue
            if iv.var.same_as(lane_var):
                lane = loop
            elif int(iv.iter_type) == 2:
                reduction = loop
    assert lane is not None and reduction is not None, "rfactor block without lane loop"
    sch.reorder(reduction, lane)
    sch.vectorize(lane)  # before decompose_reduction: the primitive needs the block's init
    init = sch.decompose_reduction(block, reduction)
    sch.vectorize(sch.get_loops(init)[-1])


def _bindings_of(sch, block) -> list:
    """The block's iterator bindings (the values its realize binds, in iterator order)."""
    from tvm import s_tir

    body = sch.get(sch.get_loops(block)[-1]).body
    return list(body.iter_values) if isinstance(body, s_tir.SBlockRealize) else []


def _vectorize_row(sch, block, lanes: int) -> None:
    """Split a spatial block's innermost loop by ``lanes`` and vectorize. When ``lanes`` does
    not divide the row, the loop is first partitioned (``loop_partition``) into a part that it
    divides and a tail vectorized whole: no predicate in the main loop (TVM scalarizes a
    predicated vector loop; measured on exp rows of 1000: 16-lane main loop + tail 0.022 ms,
    predicated 16-lane 0.031 ms, 8 lanes 0.045 ms).
    """
    loop = sch.get_loops(block)[-1]
    extent = int(sch.get(loop).extent)
    if extent > lanes:
        tail = extent % lanes
        if tail:
            loop, rest = sch.loop_partition(loop, factors=[extent - tail, None])
            if tail > 1:
                sch.vectorize(rest)
        _, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)
    elif extent > 1:
        sch.vectorize(loop)


class RowReduction:
    """:class:`LaneSplitRows` when it fits, else dlight's CPU reduction rule (guarded)."""

    def __init__(self):
        from tvm.s_tir import dlight as dl

        self.fallback = _Guarded(dl.cpu.Reduction())

    def apply(self, func, target, tunable):
        sch = LaneSplitRows().apply(func, target, tunable)
        return sch if sch is not None else self.fallback.apply(func, target, tunable)


@register_rule("row_reduction", priority=20)
def _rule():
    from tvm.s_tir import dlight as dl

    return type("RowReductionRule", (RowReduction, dl.ScheduleRule), {})()


@register_rule("gemv", priority=25)
def _gemv():
    from tvm.s_tir import dlight as dl

    return dl.cpu.GEMV()


@register_rule("bare_reduction", priority=30)
def _bare():
    from tvm.s_tir import dlight as dl

    return type("BareReductionRule", (BareReduction, dl.ScheduleRule), {})()
