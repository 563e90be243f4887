"""Block-structure facts the schedule rules match on (no name strings).

:func:`blocks_of` lists the root-level blocks of a PrimFunc in order as :class:`BlockFacts`:
the block's iterator kinds (``S`` spatial, ``R`` reduction, ``O`` other), its loop extents, and
whether its iterators are bound one-to-one to its loops in order (``simple``: true for every
te/TOPI legalized block; rules only schedule simple blocks). :func:`vector_lanes` is the SIMD
width of the target for a dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

_KIND = {0: "S", 2: "R"}


@dataclass(frozen=True, slots=True)
class BlockFacts:
    """One root-level block: ``kinds`` like ``"SSSSRRR"``, ``extents`` per iterator (None
    when not a constant), ``simple`` when iterator i is bound to loop i and nothing else."""

    block: object  # tvm.s_tir.schedule.SBlockRV
    kinds: str
    extents: tuple[int | None, ...]
    simple: bool

    @property
    def injective(self) -> bool:
        return bool(self.kinds) and set(self.kinds) == {"S"}

    @property
    def reduction(self) -> bool:
        return "R" in self.kinds and "O" not in self.kinds


def blocks_of(sch) -> list[BlockFacts] | None:
    """The root's child blocks (in order) with their facts, or None for a PrimFunc without
    the single-root-block form (already scheduled, opaque, extern calls)."""
    from tvm import tirx
    from tvm.s_tir.schedule import ScheduleError

    try:
        root = sch.get_sblock("root")
    except ScheduleError:  # no root block: not a legalized te PrimFunc
        return None
    facts = []
    for block in sch.get_child_blocks(root):
        stmt = sch.get(block)
        loops = sch.get_loops(block)
        kinds = "".join(_KIND.get(int(iv.iter_type), "O") for iv in stmt.iter_vars)
        extents = tuple(int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else None
                        for iv in stmt.iter_vars)
        simple = _bound_one_to_one(sch, block, loops)
        facts.append(BlockFacts(block, kinds, extents, simple))
    return facts


def _bound_one_to_one(sch, block, loops) -> bool:
    """True when the block's iterator values are exactly its enclosing loop vars, in order."""
    from tvm import tirx

    realize = _realize_of(sch, block)
    if realize is None or len(loops) != len(realize.iter_values):
        return False
    if not (isinstance(realize.predicate, tirx.IntImm) and int(realize.predicate) == 1):
        return False
    for loop, value in zip(loops, realize.iter_values):
        if not (isinstance(value, tirx.Var) and value.same_as(sch.get(loop).loop_var)):
            return False
    return True


def _realize_of(sch, block):
    """The SBlockRealize wrapping ``block`` (found as the body of its innermost loop)."""
    from tvm import s_tir

    loops = sch.get_loops(block)
    if not loops:
        return None
    body = sch.get(loops[-1]).body
    return body if isinstance(body, s_tir.SBlockRealize) else None


def simd_bits(target) -> int:
    """Width of ``target``'s SIMD registers in bits: on x86 512 with AVX-512F, 256 with AVX /
    AVX2, else 128, from the features LLVM gives the target's ``mcpu`` + ``mattr``
    (``target_has_features``); elsewhere LLVM's vector width (128 when it does not say).
    ``llvm_get_vector_width`` itself answers 512 for every x86 ``mcpu`` in TVM 0.27 (haswell,
    znver3 and x86-64 included): on an AVX2 CPU, tiles sized by it held twice the registers
    there are (a float 3×3 conv ran 3.1× slower than onnxruntime on Zen 3)."""
    from tvm.target.codegen import llvm_get_vector_width, target_has_features

    triple = str(target.attrs.get("mtriple", "")) if target.kind.name == "llvm" else ""
    if target.kind.name == "llvm" and (not triple or triple.startswith(("x86", "i686"))):
        if target_has_features("avx512f", target):
            return 512
        return 256 if target_has_features("avx", target) else 128
    width = llvm_get_vector_width(target)
    return width if width and width > 0 else 128


def vector_lanes(target, dtype_bits: int) -> int:
    """SIMD lanes of ``dtype_bits``-wide elements on ``target`` (:func:`simd_bits`), at
    least 4."""
    return max(simd_bits(target) // dtype_bits, 4)


#: bytes of outputs per vector step in loops that are not register-tiled (elementwise rows,
#: row reductions, a contraction tile without register rows): one AVX-512 vector, two AVX2
#: vectors -- two independent chains; measured on Zen 3 against one ymm: depthwise 3×3
#: 112²·32 0.36 vs 0.55 ms, softmax 128×1000 0.15 vs 0.18 ms
ROW_BYTES = 64


def row_lanes(target, dtype_bits: int) -> int:
    """Lanes of one vector step of a loop that is not register-tiled: ``ROW_BYTES`` of
    ``dtype_bits`` elements, or the SIMD lanes when wider."""
    return max(vector_lanes(target, dtype_bits), ROW_BYTES * 8 // dtype_bits)


def largest_divisor(extent: int, limit: int) -> int:
    """The largest divisor of ``extent`` that is <= ``limit`` (1 at least)."""
    for d in range(min(extent, limit), 0, -1):
        if extent % d == 0:
            return d
    return 1


def buffer_index_vars(region, var, analyzer=None) -> list[int]:
    """Positions of the buffer dimensions of ``region`` (a BufferRegion) whose index uses
    ``var`` (after simplifying with ``analyzer`` when given: ``c // 32 * 16 + ci`` with
    ``c < 32`` does not use ``c``)."""
    from tvm.tirx.analysis import undefined_vars

    hits = []
    for i, rng in enumerate(region.region):
        index = analyzer.simplify(rng.min) if analyzer is not None else rng.min
        if any(u.same_as(var) for u in undefined_vars(index)):
            hits.append(i)
    return hits


def block_analyzer(stmt):
    """A ``tvm.sym.Analyzer`` that knows the ranges of the block's iterators."""
    from tvm.sym import Analyzer

    analyzer = Analyzer()
    for iv in stmt.iter_vars:
        analyzer.bind(iv.var, iv.dom)
    return analyzer


def unit_stride(expr, var) -> bool:
    """True when ``expr`` is ``var + (terms without var)``: consecutive ``var`` values read
    consecutive elements (a plain vector load, no gather)."""
    from tvm.sym import detect_linear_equation

    coeffs = detect_linear_equation(expr, [var])
    return len(coeffs) == 2 and _as_int(coeffs[0]) == 1


def _as_int(expr) -> int | None:
    try:
        return int(expr)
    except (TypeError, ValueError):
        return None
