"""Schedule rule for PrimFuncs built around one reduction block that contracts an input along
its innermost, contiguous spatial axis: float conv2d NCHW (incl. depthwise and grouped), the
output-channel-blocked float conv (``packed_conv2d`` of :mod:`lowbit.codegen.lowering.float_ops`),
dense / matmul with a (K, N) right operand, stride-1 pooling windows, and the generic integer
QConv / QMatMul te kernels (int32 or int64 accumulators).

Pattern (checked on the block structure): the PrimFunc's root blocks are spatial blocks, then
exactly one block with iterators ``S…S R…R``, then spatial blocks (bias, activation, requantize
epilogues). Let ``v`` be the spatial iterator indexing the output's last dimension; some input
must also be indexed by ``v`` in its last dimension with unit stride (a vector of outputs
reads a vector of that input: strided windows are left to LLVM), and ``v`` must have extent
>= 2. Indices are simplified with the iterators' ranges first (a grouped conv's
``c // 32 * 16 + ci`` with ``c < 32`` does not use ``c``). Anything else is left to the other
rules.

Schedule (register tiling, no change to any output's arithmetic):

* inline the pre-blocks that keep their input's shape (casts, zero-point subtraction); pads
  stay separate blocks, run as parallel vectorized loops;
* tile: ``v`` split by ``lanes`` (largest divisor <= SIMD lanes), and a second spatial axis
  ``t`` that does *not* index that input (conv: output channel; matmul: row) split by up to
  8, so one loaded input vector feeds ``t_inner`` accumulator vectors. When some other input
  is indexed by a spatial axis in its last dimension (the blocked conv's output column ``j``
  reading ``x[…, j + kx]``), that axis is ``t``: its ``t_inner`` scalars, broadcast one per
  accumulator, come from one cache line; it is split by up to 14 on 32-register SIMD files
  (AVX-512), 8 otherwise, divided by the SIMD vectors each row holds: a short vector axis
  (the blocked conv's channel block, one or a few vectors) is held whole by each row, so
  ``rows · vectors`` accumulators fit the register file;
* loop order ``[outer spatial tiles] [reduction loops, original order] t_inner v_inner``;
  the outer tiles are fused and run in parallel, ``t_inner`` unrolled, ``v_inner`` vectorized;
* accumulate in place, initialized per tile (``decompose_reduction``); LLVM keeps the tile in
  registers across the reduction loops (the PrimFunc is ``noalias``). A ``local`` cache_write
  tile measured 3x slower on depthwise conv, so it is not used;
* the epilogue blocks run per tile right after it (``reverse_compute_at``, vectorized), while
  the tile is still in cache.

Each output's sum runs over the reduction axes in the original order, so float results equal
the unscheduled kernel's up to LLVM's fused multiply-add contraction, and integer results are
bit-exact.
"""

from __future__ import annotations

from . import register_rule
from .analysis import (
    block_analyzer,
    blocks_of,
    buffer_index_vars,
    largest_divisor,
    row_lanes,
    simd_bits,
    unit_stride,
    vector_lanes,
)
from .injective import parallel_vectorize, written_bits

#: the most output-channel / row accumulators one input vector feeds
MAX_REGISTER_ROWS = 8
#: the most accumulators of a broadcast-row tile on a 32-register SIMD file (14 + the
#: loaded vector + a broadcast; measured on the 3×3 conv 56²·64: 14 rows 1.0 ms, 8 rows 1.14)
MAX_BROADCAST_ROWS = 14
#: the most SIMD vectors a broadcast row holds whole (the blocked conv's channel block)
MAX_ROW_VECTORS = 4


def _same_shape(sch, block) -> bool:
    """True when the block writes a buffer shaped like one it reads (elementwise pre-block)."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return False
    shape = [int(d) for d in stmt.writes[0].source.shape]
    return any([int(d) for d in r.source.shape] == shape for r in stmt.reads)


def _plan(sch, fact, target):
    """(index of v, index of t or None, row limit, lanes of v held whole by a broadcast row
    or None) for the main block, or None when the pattern fails."""
    stmt = sch.get(fact.block)
    n_s = fact.kinds.count("S")
    if len(stmt.writes) != 1 or n_s == 0:
        return None
    out = stmt.writes[0]
    rank = len(out.region)
    iters = list(stmt.iter_vars)
    ana = block_analyzer(stmt)
    v = next((i for i in range(n_s) if buffer_index_vars(out, iters[i].var) == [rank - 1]),
             None)
    if v is None or (fact.extents[v] or 0) < 2:
        return None
    streamed = [r for r in stmt.reads
                if buffer_index_vars(r, iters[v].var, ana) == [len(r.region) - 1]
                and unit_stride(ana.simplify(r.region[-1].min), iters[v].var)]
    if not streamed:
        return None
    big = max(streamed, key=lambda r: _numel(r.source))
    t, best, rows = None, 1, MAX_REGISTER_ROWS
    for i in range(n_s):
        if i == v or (fact.extents[i] or 0) < 2 or buffer_index_vars(big, iters[i].var, ana):
            continue
        if any(buffer_index_vars(r, iters[i].var, ana) for r in stmt.reads) and \
                fact.extents[i] > best:
            t, best = i, fact.extents[i]
    # a row axis indexing another input's last dimension: the t_inner broadcasts come from
    # one cache line (the output-channel-blocked conv), so a taller tile pays off
    for i in range(n_s):
        if i == v or (fact.extents[i] or 0) < 2 or buffer_index_vars(big, iters[i].var, ana):
            continue
        if any(buffer_index_vars(r, iters[i].var, ana) == [len(r.region) - 1]
               for r in stmt.reads):
            # a short vector axis (the conv's channel block: up to MAX_ROW_VECTORS SIMD
            # vectors) is held whole by each row, and rows x vectors accumulators stay
            # within the register budget
            whole = fact.extents[v]
            per_row = -(-whole // vector_lanes(target, written_bits(sch, fact.block)))
            if per_row > MAX_ROW_VECTORS:
                return v, i, broadcast_rows(target), None
            return v, i, max(broadcast_rows(target) // per_row, 1), whole
    return v, t, rows, None


def broadcast_rows(target) -> int:
    """Register rows for a broadcast-row tile: ``MAX_BROADCAST_ROWS`` with 32 SIMD registers
    (AVX-512), else ``MAX_REGISTER_ROWS``."""
    return MAX_BROADCAST_ROWS if simd_bits(target) >= 512 else MAX_REGISTER_ROWS


def _numel(buffer) -> int:
    n = 1
    for d in buffer.shape:
        n *= int(d)
    return n


class Contraction:
    """One ``S…S R…R`` block with a contiguous innermost spatial axis -> register tile."""

    def apply(self, func, target, _tunable):
        from tvm import s_tir
        from tvm.s_tir.schedule import ScheduleError

        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        facts = blocks_of(sch)
        if not facts or not all(f.simple for f in facts):
            return None
        mains = [i for i, f in enumerate(facts) if not f.injective]
        if len(mains) != 1:
            return None
        main = facts[mains[0]]
        n_s = main.kinds.count("S")
        if not main.reduction or main.kinds != "S" * n_s + "R" * (len(main.kinds) - n_s):
            return None
        if not all(f.injective for i, f in enumerate(facts) if i != mains[0]):
            return None
        plan = _plan(sch, main, target)
        if plan is None:
            return None
        try:
            return self._schedule(sch, facts, mains[0], plan, target)
        except ScheduleError:
            return None  # a pattern the primitives refuse: leave the PrimFunc as it is

    @staticmethod
    def _schedule(sch, facts, index, plan, target):
        from tvm.s_tir.schedule import ScheduleError

        main = facts[index]
        block = main.block
        v, t, row_limit, whole = plan
        n_s = main.kinds.count("S")
        bits = written_bits(sch, block)
        # elementwise pre-blocks fold into the reads; shape-changing ones (pads) stay
        for fact in facts[:index]:
            if _same_shape(sch, fact.block):
                sch.compute_inline(fact.block)
        loops = sch.get_loops(block)
        # a tile with register rows is one SIMD vector per row; one without is a row step
        if whole is not None:
            lanes = whole
        else:
            lanes = vector_lanes(target, bits) if t is not None else row_lanes(target, bits)
            lanes = largest_divisor(main.extents[v], lanes)
        v_out, v_in = sch.split(loops[v], factors=[None, lanes])
        outer = list(loops[:n_s])
        outer[v] = v_out
        inner = [v_in]
        if t is not None:
            rows = largest_divisor(main.extents[t], row_limit)
            t_out, t_in = sch.split(loops[t], factors=[None, rows])
            outer[t] = t_out
            inner = [t_in, v_in]
        reduction = list(loops[n_s:])
        sch.reorder(*outer, *reduction, *inner)
        tile = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(tile)
        if t is not None:
            sch.unroll(inner[0])
        sch.vectorize(inner[-1])  # before decompose_reduction: needs the block's init
        # epilogues (bias, activation, requantize) run per tile, right after it; a later block
        # that does not read the contraction (another input's epilogue feeding a residual
        # add) is inlined into its consumer instead: moved under the tile loop it would be
        # recomputed whole for every tile (measured: a fused residual conv 1.2 -> 25 ms)
        reached = _consumers_of(sch, block)
        leftover = [f.block for f in facts[:index] if _exists(sch, f.block)]
        for fact in facts[index + 1:]:
            if not any(sch.get(fact.block).same_as(sch.get(r)) for r in reached):
                try:
                    sch.compute_inline(fact.block)
                except ScheduleError:
                    leftover.append(fact.block)
        for fact in facts[index + 1:]:
            if not _exists(sch, fact.block) or fact.block in leftover:
                continue
            try:
                sch.reverse_compute_at(fact.block, tile, preserve_unit_loops=True)
                _vectorize_tail(sch, fact.block)
            except ScheduleError:
                leftover.append(fact.block)
        init = sch.decompose_reduction(block, reduction[0])
        _vectorize_tail(sch, init)
        # what stayed at the root (pads, epilogues that could not move) runs parallel + vector
        for child in leftover:
            parallel_vectorize(sch, child, target, written_bits(sch, child))
        return sch


def _consumers_of(sch, block) -> list:
    """Every block that reads ``block``'s output, directly or through other blocks."""
    found, todo = [], [block]
    while todo:
        for consumer in sch.get_consumers(todo.pop()):
            if not any(sch.get(consumer).same_as(sch.get(f)) for f in found):
                found.append(consumer)
                todo.append(consumer)
    return found


def _exists(sch, block) -> bool:
    try:
        sch.get(block)
    except ValueError:  # inlined away: the block RV no longer resolves
        return False
    return True


def _vectorize_tail(sch, block) -> None:
    """Vectorize the innermost loop of a block computed inside the tile (a row of the tile)."""
    loops = sch.get_loops(block)
    if loops and int(sch.get(loops[-1]).extent) > 1:
        sch.vectorize(loops[-1])


def _is_under(sch, block, loop) -> bool:
    return any(lp.same_as(loop) for lp in sch.get_loops(block))


@register_rule("contraction", priority=10)
def _rule():
    from tvm.s_tir import dlight as dl

    return type("ContractionRule", (Contraction, dl.ScheduleRule), {})()
