"""Schedule rule for row reductions: softmax, log-softmax, layer norm, reduce_{sum,mean,max},
global pools, and any PrimFunc whose reduction blocks reduce the innermost (contiguous) axes.

Rule: the blocks must be ``S…S R…R`` reductions and spatial blocks sharing leading spatial
axes, the last block spatial (dlight's CPU ``Reduction`` pattern); then the shared spatial
axes run in parallel, every block is computed at that loop, spatial blocks are vectorized and
reduction loops split by the SIMD width and unrolled (``tvm.s_tir.dlight.cpu.Reduction``). A
PrimFunc ending in a reduction block (a bare ``reduce_sum``, a GEMV) goes to dlight's ``GEMV``
rule, then to a plain rule: the spatial loops but the innermost run in parallel, the rest
left in order (strided pooling windows land here too). Each sum
keeps its order, so results equal the unscheduled kernel's.
"""

from __future__ import annotations

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


@register_rule("row_reduction", priority=20)
def _rule():
    from tvm.s_tir import dlight as dl

    return type("RowReductionRule", (_Guarded, dl.ScheduleRule), {})(dl.cpu.Reduction())


@register_rule("gemv", priority=25)
def _gemv():
    from tvm.s_tir import dlight as dl

    return dl.cpu.GEMV()


@register_rule("bare_reduction", priority=30)
def _bare():
    from tvm.s_tir import dlight as dl

    return type("BareReductionRule", (BareReduction, dl.ScheduleRule), {})()
