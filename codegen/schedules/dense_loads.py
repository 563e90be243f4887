"""TIR pass ``dense_strided_loads`` and the TIR pipeline ``lowbit_cpu`` that runs it.

Rule: a vector load whose last index is ``Ramp(b, s, L)`` with a constant stride
``2 <= s <= MAX_STRIDE`` becomes the contiguous load ``Ramp(b, 1, s·(L−1) + 1)`` followed by
``Shuffle`` of lanes ``0, s, 2s, …``. The contiguous load reads exactly the elements from the
first to the last one the strided load reads (nothing past either end, so it stays inside the
buffer), and the shuffle keeps the same values: the result is identical. LLVM turns the
strided form into one scalar load and insert per lane; the dense form into one wide load and
a few permutes (see :mod:`.window` for the measurements).

:func:`tir_pipeline` registers the pipeline (TVM's default ``s_tir`` pipeline, then this
pass) in TVM's pipeline table once and returns its name, for ``tvm.compile(...,
tir_pipeline=...)``.
"""

from __future__ import annotations

import functools

#: largest stride rewritten (a 3x3/2 pool has 2; 3 and 4 cover wider strided windows)
MAX_STRIDE = 4

PIPELINE = "lowbit_cpu"


def _dense(load):
    """The dense load + shuffle for a strided vector load, or None when the rule does not
    apply."""
    from tvm import tirx

    if not load.indices:
        return None
    idx = load.indices[-1]
    if not isinstance(idx, tirx.Ramp) or not isinstance(idx.stride, tirx.IntImm):
        return None
    stride, lanes = int(idx.stride.value), int(idx.lanes)
    if not 2 <= stride <= MAX_STRIDE or lanes < 2:
        return None
    one = tirx.IntImm(str(idx.stride.ty), 1)
    dense = tirx.BufferLoad(load.source, [*load.indices[:-1],
                                          tirx.Ramp(idx.base, one, stride * (lanes - 1) + 1)])
    return tirx.Shuffle([dense], [tirx.IntImm("int32", i * stride) for i in range(lanes)])


def dense_strided_loads():
    """The pass (a ``PrimFunc`` pass over every function of the module)."""
    import tvm
    import tvm_ffi
    from tvm.ir.expr import TensorLoad

    def rewrite(load):
        dense = _dense(load)
        return load if dense is None else dense

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="lowbit.DenseStridedLoads")
    def _pass(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, (TensorLoad, rewrite))

    return _pass


@functools.cache
def tir_pipeline() -> str:
    """Register :data:`PIPELINE` (TVM's ``s_tir`` lowering, then :func:`dense_strided_loads`,
    then TVM's own finalization) and return its name."""
    import tvm
    from tvm.tirx import compilation_pipeline as cp

    def pipeline():
        lower, finalize_host, finalize_device = cp.get_tir_pipeline("s_tir")
        return (tvm.transform.Sequential([lower, dense_strided_loads()]), finalize_host,
                finalize_device)

    cp.PIPELINE_MAP[PIPELINE] = pipeline
    return PIPELINE
