"""Schedule rule for PrimFuncs whose blocks are all spatial (elementwise, broadcast, reshape,
transpose, pad, resize, cast, quantize / dequantize / requantize epilogues).

Rule: inline every block that can be inlined into its consumer (``compute_inline``, then
``reverse_compute_inline``), so a fused elementwise chain becomes one loop nest — except a
producer whose consumer has a much larger iteration domain than the producer (over 1.5x: im2col,
upsampling resize; each produced element is read several times), which stays materialized
(a pad's few border points are recomputed instead): inlining
it would recompute the whole producer chain per read (measured: a dequantize+BN+sign chain
inlined into a 3×3 im2col ran ~40× slower); a pad block left is split into a constant fill
and an unconditional interior (:func:`split_padding`); for each block
left: vectorize the innermost loop when every access along it is a unit-stride run in the
last dimension (split by the SIMD lanes when they divide it, whole when it is at most
:data:`WHOLE_VECTORS` vectors long: no tail predicates; gathers — resize, transpose — are
left to LLVM; rows that are no vector multiple are first fused with the loop above when
every access walks whole planes, :func:`_flatten_rows`), fuse the outer loops and run them
in parallel. Each output element is still computed by the same
scalar expression, so results are unchanged bit for bit.
"""

from __future__ import annotations

from . import register_rule
from .analysis import _as_int, blocks_of, buffer_index_vars, row_lanes, unit_stride


def inline_all(sch, blocks) -> list:
    """Inline every block that allows it; returns the facts of the blocks left."""
    from tvm.s_tir.schedule import ScheduleError

    changed = True
    while changed:
        changed = False
        facts = blocks_of(sch) or []
        if len(facts) <= 1:
            return facts
        for fact in facts[:-1]:
            if _expands(sch, fact):
                continue
            try:
                sch.compute_inline(fact.block)
                changed = True
                break
            except ScheduleError:
                continue
        if changed:
            continue
        for fact in facts[1:]:
            if not fact.injective or _gathers(sch, fact):
                continue
            try:
                sch.reverse_compute_inline(fact.block)
                changed = True
                break
            except ScheduleError:
                continue
    return blocks_of(sch) or []


def _domain(stmt) -> int | None:
    """Number of points in a block's iteration domain (None when not constant)."""
    from tvm import tirx

    size = 1
    for iv in stmt.iter_vars:
        if not isinstance(iv.dom.extent, tirx.IntImm):
            return None
        size *= int(iv.dom.extent)
    return size


#: a consumer iterating over more than this many times the points its producer makes reads
#: produced elements repeatedly (im2col 9x, a 2x resize 4x): the producer stays materialized.
#: A pad's border (56² -> 58²: 1.07x) recomputes a few percent and saves a pass over memory.
EXPANSION_LIMIT = 1.5


def _expands(sch, fact) -> bool:
    """True when some consumer of ``fact``'s block iterates over more than
    :data:`EXPANSION_LIMIT` times the points the block produces (so it reads produced
    elements more than once)."""
    produced = _domain(sch.get(fact.block))
    if produced is None:
        return True
    for consumer in sch.get_consumers(fact.block):
        size = _domain(sch.get(consumer))
        if size is None or size > EXPANSION_LIMIT * produced:
            return True
    return False


def _gathers(sch, fact) -> bool:
    """True when ``fact``'s block iterates over more points than one of its producers (it
    reads some produced element more than once: not a one-to-one epilogue)."""
    size = _domain(sch.get(fact.block))
    if size is None:
        return True
    for producer in sch.get_producers(fact.block):
        produced = _domain(sch.get(producer))
        if produced is None or produced < size:
            return True
    return False


#: an innermost extent the SIMD lanes do not divide is vectorized whole up to this many vectors
#: (LLVM splits it into full vectors and a short tail): e.g. the 114-wide constant fill of a
#: padded 64×114×114 int32 map (ResNet stem), 7 row steps, which four vectors left scalar
WHOLE_VECTORS = 16


def parallel_vectorize(sch, block, target, dtype_bits: int, parallel: bool = True) -> None:
    """Vectorize the block's innermost loop (split by ``lanes`` when it divides the extent;
    whole when it is short), fuse the loops outside it and run them in parallel. The innermost
    loop stays whole so contiguous rows stay contiguous vector loads (fusing it with the outer
    loops would turn every index into a div / mod)."""
    from tvm import tirx

    loops = sch.get_loops(block)
    if not loops:
        return
    lanes = row_lanes(target, dtype_bits)
    flat = _flatten_rows(sch, block, loops, lanes)
    loops = flat or loops
    extent = sch.get(loops[-1]).extent
    outer = list(loops[:-1])
    if isinstance(extent, tirx.IntImm) and (flat or _contiguous(sch, block, loops[-1])):
        extent = int(extent)
        if extent > lanes and extent % lanes == 0:
            rest, inner = sch.split(loops[-1], factors=[None, lanes])
            sch.vectorize(inner)
            if not outer:
                outer = [rest]
        elif 1 < extent <= WHOLE_VECTORS * lanes:
            sch.vectorize(loops[-1])
        elif not outer:
            outer = [loops[-1]]
    if parallel and outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


#: a flattened plane that is no vector multiple is vectorized whole up to this many vectors: a
#: 28x28 int8 plane (12.25 vectors) of an int64 QAdd spilled registers (55.6 -> 66.3 us),
#: a 14x14 one (3.06) gained (33.2 -> 27.3 us)
FLAT_WHOLE = 4


def _flatten_rows(sch, block, loops, lanes: int) -> list | None:
    """``loops`` with the last two fused into one (None when they stay apart) when rows are
    not a vector multiple but whole planes are, or are at most :data:`FLAT_WHOLE` vectors
    (56-wide rows of a 56x56 map: 3136 = 49 x 64 int8 lanes; a 14x14 plane: 196), and
    every buffer the block touches with either loop's iterator is indexed ``[..., h, w]``
    in its last two dimensions with rows exactly ``W`` long -- so ``h * W + w`` walks memory
    contiguously and the fused loop vectorizes into full vectors. A 56-wide int8 row
    vectorized whole is one 32-, one 16- and one 8-byte piece plus per-piece parameter
    broadcasts (measured: a 64x56x56 int8 threshold kernel 8.5 -> 5.2 us)."""
    from tvm import tirx

    if len(loops) < 2:
        return None
    h_loop, w_loop = sch.get(loops[-2]), sch.get(loops[-1])
    if not (isinstance(h_loop.extent, tirx.IntImm) and isinstance(w_loop.extent, tirx.IntImm)):
        return None
    height, width = int(h_loop.extent), int(w_loop.extent)
    plane = height * width
    if width % lanes == 0 or height == 1 or (plane % lanes and plane > FLAT_WHOLE * lanes):
        return None
    stmt = sch.get(block)
    values = _bindings(sch, block)
    vars_ = {}
    for iv, value in zip(stmt.iter_vars, values):
        for key, loop in (("h", h_loop), ("w", w_loop)):
            if value.same_as(loop.loop_var):
                vars_[key] = iv.var
    if len(vars_) != 2:
        return None
    for region in list(stmt.reads) + list(stmt.writes):
        dims_h = buffer_index_vars(region, vars_["h"])
        dims_w = buffer_index_vars(region, vars_["w"])
        if not dims_h and not dims_w:
            continue
        rank = len(region.region)
        if dims_h != [rank - 2] or dims_w != [rank - 1] or \
                not all(_is_one(rng.extent) for rng in region.region[-2:]) or \
                not unit_stride(region.region[-2].min, vars_["h"]) or \
                not _is_var(region.region[-1].min, vars_["w"]) or \
                _as_int(region.source.shape[-1]) != width:
            return None
    return [*loops[:-2], sch.fuse(loops[-2], loops[-1])]


def _is_var(expr, var) -> bool:
    return isinstance(expr, type(var)) and expr.same_as(var)


def _contiguous(sch, block, loop) -> bool:
    """True when every buffer the block touches is indexed by ``loop``'s iterator only in its
    last dimension and with unit stride (vector loads / stores; gathers such as resize or
    transpose are left to LLVM)."""
    stmt = sch.get(block)
    var = next((iv.var for iv, value in zip(stmt.iter_vars, _bindings(sch, block))
                if value.same_as(sch.get(loop).loop_var)), None)
    if var is None:
        return False
    for region in list(stmt.reads) + list(stmt.writes):
        if not all(_is_one(rng.extent) for rng in region.region):
            return False  # a data-dependent index (resize, gather): region is a whole range
        dims = buffer_index_vars(region, var)
        if not dims:
            continue
        if dims != [len(region.region) - 1] or not unit_stride(region.region[-1].min, var):
            return False
    return True


def _is_one(expr) -> bool:
    try:
        return int(expr) == 1
    except (TypeError, ValueError):
        return False


def _bindings(sch, block):
    from tvm import s_tir

    body = sch.get(sch.get_loops(block)[-1]).body
    return list(body.iter_values) if isinstance(body, s_tir.SBlockRealize) else []


def split_padding(sch, block) -> list:
    """A pad block ``y = if_then_else(inside, f(x[i − pad]), c)`` becomes two (TVM's
    ``decompose_padding``): ``y = c`` everywhere, then ``y[i + pad] = f(x[i])`` over the
    interior, with no condition left. Vectorized, a condition on the innermost index would
    scalarize the row (the lazy ``if_then_else`` guards an out-of-bounds read); split, both
    rows are unit-stride vectors (measured on Zen 3: a 64×114×114 int32 stem epilogue + pad
    0.72 -> 0.30 ms). Returns the blocks to schedule (``[block]`` when it is no pad)."""
    from tvm.s_tir.schedule import ScheduleError

    loops = sch.get_loops(block)
    if not loops:
        return [block]
    try:
        if not sch.can_decompose_padding(block, loops[0]):
            return [block]
        fill = sch.decompose_padding(block, loops[0])
    except ScheduleError:
        return [block]
    return [fill, block]


def written_bits(sch, block) -> int:
    """Bit width of the dtype a block writes (32 when it writes nothing)."""
    writes = sch.get(block).writes
    return writes[0].source.dtype.bits if writes else 32


class Injective:
    """Every block spatial -> inline chain, then fused parallel + vectorized loops."""

    def apply(self, func, target, _tunable):
        from tvm import s_tir
        from tvm.s_tir.schedule import ScheduleError

        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        facts = blocks_of(sch)
        if not facts or not all(f.injective and f.simple for f in facts):
            return None
        try:
            for fact in inline_all(sch, facts):
                for block in split_padding(sch, fact.block):
                    parallel_vectorize(sch, block, target, written_bits(sch, block))
        except ScheduleError:
            return None  # a form the primitives refuse: leave the PrimFunc as it is
        return sch


@register_rule("injective", priority=40)
def _rule():
    from tvm.s_tir import dlight as dl

    return type("InjectiveRule", (Injective, dl.ScheduleRule), {})()
