"""CPU schedule rules for the PrimFuncs a lowered lowbit graph compiles to.

TVM 0.27's default CPU pipeline leaves legalized PrimFuncs unscheduled (one scalar loop nest
per block); these rules give each PrimFunc a schedule after legalization and fusion. A rule
is a :class:`tvm.s_tir.dlight.ScheduleRule`: ``apply(func, target, tunable)`` returns a
``tvm.s_tir.Schedule`` or None ("not my pattern"). Rules recognize PrimFuncs by their block
structure (spatial / reduction iterator kinds, what each block reads), never by name.

Rules are tried by priority; the first rule that returns a schedule wins, and a PrimFunc no
rule takes (or whose schedule a TVM primitive refuses) stays exactly as TVM legalized it
(correct, slow). Kernel-family PrimFuncs that are already scheduled are left alone. Rules:

* ``contraction`` (:mod:`.contraction`): one reduction block whose innermost spatial axis is
  unit-stride in the output and in an input — float conv2d (incl. depthwise), dense / matmul,
  stride-1 pooling windows, and the generic integer QConv / QMatMul te kernels — register
  tiled, vectorized, parallel, epilogues computed per tile;
* ``strided_window`` (:mod:`.window`): 8- / 16-bit integer max / min pooling windows with a
  row stride (the quantized max-pool after a ResNet stem) — the whole output row one vector,
  its strided taps made contiguous loads by the ``lowbit_cpu`` TIR pipeline
  (:mod:`.dense_loads`);
* ``row_reduction``, ``gemv``, ``bare_reduction`` (:mod:`.reduction`): softmax, layer norm,
  reduce_*, global pools, strided pooling windows (float row sums as lane-split vector
  reductions; otherwise dlight's CPU reduction / GEMV rules behind a structural check, then
  a plain parallel rule);
* ``injective`` (:mod:`.injective`): every block spatial — elementwise chains, broadcast,
  reshape / transpose, resize, pad, quantize / dequantize / requantize epilogues.

What a schedule may change: integer kernels stay bit-exact (only loop structure moves; no
rule touches their arithmetic). Float kernels compute every output from the same expression;
contractions keep each output's summation order (LLVM may contract a multiply-add into an
FMA differently: last-bit differences); the ``row_reduction`` rule's lane-split float sums
(softmax, layer norm, reduce_sum / mean over rows) add in a different order — P partial sums,
then the partials — so results differ from the unscheduled kernel in the last bits (within
float rounding of the sum; tests hold them to 1e-5 relative of onnxruntime). The float32
``exp`` / ``sigmoid`` / ``softmax`` approximation (:mod:`.fastmath`) is a separate Relax pass,
not a schedule.
"""

from __future__ import annotations

from collections.abc import Callable

#: rule name -> (priority, factory of the dlight ScheduleRule); lower priority is tried first
_RULES: dict[str, tuple[int, Callable[[], object]]] = {}


def register_rule(name: str, priority: int):
    """Register the decorated zero-argument factory as schedule rule ``name``; rules are tried
    by ascending ``priority``."""

    def deco(factory):
        assert name not in _RULES, f"two schedule rules named {name}"
        _RULES[name] = (priority, factory)
        return factory

    return deco


def rule_names() -> tuple[str, ...]:
    """The registered rule names in the order they are tried."""
    return tuple(sorted(_RULES, key=lambda n: _RULES[n][0]))


def cpu_rules(names: tuple[str, ...] | None = None) -> list:
    """Fresh rule objects for ``names`` (default: every rule, in registry order)."""
    return [_RULES[n][1]() for n in (names or rule_names())]


def apply_cpu_schedules(names: tuple[str, ...] | None = None):
    """The module pass that schedules every unscheduled PrimFunc with the first matching rule
    (run inside a ``with tvm_target:`` scope, after ``FuseTIR``)."""
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(*cpu_rules(names))


def schedule_func(func, target, names: tuple[str, ...] | None = None):
    """``(rule name, Schedule)`` of the first rule that takes PrimFunc ``func`` for
    ``target`` (a ``tvm.target.Target``), or ``(None, None)`` when none does."""
    with target:
        for name in names or rule_names():
            sch = _RULES[name][1]().apply(func, target, False)
            if sch is not None:
                return name, sch
    return None, None


def unscheduled(mod) -> list[str]:
    """Names of the PrimFuncs in ``mod`` no rule scheduled (for reports and tests)."""
    from tvm import tirx

    return sorted(gv.name_hint for gv, f in mod.functions_items()
                  if isinstance(f, tirx.PrimFunc)
                  and not int(f.attrs.get("tirx.is_scheduled", 0) if f.attrs else 0))


from . import contraction, injective, reduction, window  # noqa: F401  (registers the rules)

__all__ = ["apply_cpu_schedules", "cpu_rules", "register_rule", "rule_names", "schedule_func",
           "unscheduled"]
