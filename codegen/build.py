"""Build a lowbit graph into a TVM executable: ``build(graph, target="x86", threads=None)``.

Steps: resolve the target (:func:`lowbit.codegen.target.resolve_target`), lower the graph to
Relax (:func:`lowbit.codegen.lower.lower`), run TVM's default Relax pipeline for the target
with lowbit's CPU schedule rules (:mod:`lowbit.codegen.schedules`: register-tiled
conv / matmul / pooling, row reductions, fused elementwise) applied right after legalization
and fusion on CPU targets (PrimFuncs no rule matches stay unscheduled: correctness first), then
``tvm.compile`` against ``tvm.target.Target(target_dict)`` (on CPU targets with lowbit's TIR
pipeline, :func:`tir_pipeline`). The result is a
``tvm.runtime.Executable``: run it with ``tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](...)``
or save it with ``ex.export_library(path)`` (weights are Relax constants inside it).
"""

from __future__ import annotations

from .lower import lower
from .target import Target, resolve_target


def relax_pipeline(target: Target, schedule: bool = True):
    """TVM's default Relax pipeline for ``target`` plus, on llvm targets, lowbit's fast float32
    ``exp`` / ``sigmoid`` / ``softmax`` / ``erf`` / ``gelu``
    (:func:`lowbit.codegen.schedules.fastmath.fast_math_pass`,
    before legalization) and CPU schedule rules (after legalization and fusion);
    ``schedule=False``: without either, TVM's unscheduled default, for benchmarks."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from .schedules import apply_cpu_schedules
    from .schedules.fastmath import fast_math_pass

    tvm_target = target.tvm_target()
    if target.kind != "llvm" or not schedule:
        return relax.pipeline.get_default_pipeline(tvm_target)

    @tvm.transform.module_pass(opt_level=0, name="lowbit_cpu_pipeline")
    def pipeline(mod, _ctx):
        with tvm_target:
            seq = tvm.transform.Sequential(
                [fast_math_pass()]
                + cpu_generic.library_dispatch_passes(tvm_target)
                + cpu_generic.legalize_passes(tvm_target)
                + [apply_cpu_schedules()]
                + cpu_generic.dataflow_lower_passes(tvm_target)
                + cpu_generic.finalize_passes(tvm_target))
            return seq(mod)

    return pipeline


def build(graph, target: str | Target = "x86", threads: int | None = None):
    """Compile ``graph`` for ``target``; returns the TVM executable (``export_library``).

    ``threads`` sizes TVM's CPU thread pool for the calling process (``TVM_NUM_THREADS``;
    1 runs parallel loops inline); None leaves it as it is."""
    if isinstance(target, str):
        target = resolve_target(target)
    if threads is not None:
        from .kernels.bitserial import set_num_threads

        set_num_threads(threads)
    return compile_lowered(lower(graph, target), target)


def compile_lowered(mod, target: Target):
    """``tvm.compile`` of a lowered Relax module with lowbit's Relax and TIR pipelines for
    ``target`` (:func:`relax_pipeline`, :func:`tir_pipeline`); the TVM executable."""
    import tvm

    return tvm.compile(mod, target=target.tvm_target(), relax_pipeline=relax_pipeline(target),
                       tir_pipeline=tir_pipeline(target))


def tir_pipeline(target: Target) -> str:
    """The TIR pipeline name for ``target``: on llvm targets lowbit's ``lowbit_cpu`` (TVM's
    default lowering, then :func:`~lowbit.codegen.schedules.dense_loads.dense_strided_loads`),
    elsewhere TVM's default."""
    if target.kind != "llvm":
        return "default"
    from .schedules.dense_loads import tir_pipeline as lowbit_cpu

    return lowbit_cpu()
