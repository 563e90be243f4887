"""Lower a lowbit graph to a TVM Relax module: ``lower(graph, target) -> tvm.IRModule``.

The module holds one Relax function ``main`` whose parameters are the graph inputs (in order,
typed with their storage dtypes: int4 codes travel as int8) and which returns the graph outputs
(a tuple when there are several). Constants become Relax constants, so weights travel inside
the compiled library -- except with :func:`lower_stored`, where the kernels' integer weights
are trailing parameters that a compiled artifact stores at their information content. Each
node is lowered by the registry of :mod:`lowbit.codegen.lowering` (its kernel family's
lowering when ``node.meta["kernel"]`` names one, else the generic one); nodes are lowered in
the graph's (topological) order inside one dataflow block.
"""

from __future__ import annotations

from ..ir import Graph
from ..ir.errors import LowbitError, LoweringError
from .lowering import LoweringContext, fused_pool, fused_sign, get_lowering


def _struct_info(value):
    from tvm import relax

    return relax.TensorType([int(d) for d in value.shape], str(value.dtype.numpy))


def _outputs_of(bb, node, result) -> list:
    """Bind the lowering's result; one Relax var per node output."""
    from tvm import relax

    n = len(node.outputs)
    if isinstance(result, (tuple, list)):
        if len(result) != n:
            raise LoweringError(f"{node.op.value} node '{node.name}': lowering returned "
                                f"{len(result)} values for {n} outputs")
        return [r if isinstance(r, relax.Var) else bb.emit(r) for r in result]
    var = result if isinstance(result, relax.Var) else bb.emit(result)
    if isinstance(var.ty, relax.TupleType):
        if len(var.ty.fields) != n:
            raise LoweringError(f"{node.op.value} node '{node.name}': lowering returned a "
                                f"{len(var.ty.fields)}-tuple for {n} outputs")
        return [bb.emit(relax.TupleGetItem(var, i)) for i in range(n)]
    if n != 1:
        raise LoweringError(f"{node.op.value} node '{node.name}': lowering returned one value "
                            f"for {n} outputs")
    return [var]


def _check(node, value, var) -> None:
    """The lowered value must have the IR's shape and storage dtype."""
    sinfo = var.ty
    shape = tuple(int(d) for d in sinfo.shape)
    dtype = str(sinfo.dtype)
    want_shape = tuple(int(d) for d in value.shape)
    want_dtype = str(value.dtype.numpy)
    if shape != want_shape or dtype != want_dtype:
        raise LoweringError(
            f"{node.op.value} node '{node.name}': output '{value.name}' lowered to "
            f"{dtype}{list(shape)}, the IR says {want_dtype}{list(want_shape)}; fix the lowering "
            f"of {node.op.value}")


def lower(graph: Graph, target) -> tvm.IRModule:  # noqa: F821
    """``graph`` -> ``tvm.IRModule`` with Relax ``main`` (see the module docstring).

    ``target`` is a :class:`lowbit.codegen.target.Target` (or a name for
    :func:`~lowbit.codegen.target.resolve_target`); lowerings may consult it. Unsupported ops
    or attributes raise :class:`LoweringError` naming the node and op."""
    return _lower(graph, target, None)


def lower_stored(graph: Graph, target) -> tuple[tvm.IRModule, list]:  # noqa: F821
    """:func:`lower`, except that the kernels' integer weight arrays
    (:meth:`~lowbit.codegen.lowering.LoweringContext.weight`) are not bound inside the module:
    ``main`` takes them as parameters after the graph inputs. Returns the module and
    ``[(parameter name, ndarray)]`` in parameter order -- what an artifact stores compactly
    (:mod:`lowbit.runtime.weights`) and passes back on every call."""
    stored: list = []
    mod = _lower(graph, target, stored)
    return mod, [(name, array) for name, _, array in stored]


def _lower(graph: Graph, target, stored: list | None):
    from tvm import relax

    from .target import resolve_target

    if isinstance(target, str):
        target = resolve_target(target)
    if not graph.outputs:
        raise LoweringError(f"graph '{graph.name}' has no outputs; nothing to lower")
    bb = relax.BlockBuilder()
    params = [relax.Var(v.name, _struct_info(v)) for v in graph.inputs]
    ctx = LoweringContext(bb, target, {v.name: p for v, p in zip(graph.inputs, params)},
                          stored)
    ctx.fused = {**fused_sign.find(graph, target), **fused_pool.find(graph, target)}
    absorbed = set().union(*(f.absorbed for f in ctx.fused.values()))
    with bb.function("main"):  # parameters at the end: stored weights join the inputs
        with bb.dataflow():
            for node in graph.nodes:
                if node.name in absorbed:  # a consumer's lowering computes it (ctx.fused)
                    continue
                lowering = get_lowering(node)
                try:
                    result = lowering(ctx, node)
                    vars_ = _outputs_of(bb, node, result)
                except LowbitError:
                    raise
                except Exception as err:  # TVM's own errors: say which node failed
                    raise LoweringError(
                        f"{node.op.value} node '{node.name}': TVM rejected the lowering: "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    ) from err
                for value, var in zip(node.outputs, vars_):
                    _check(node, value, var)
                    ctx.values[value.name] = var
            outs = []
            for value in graph.outputs:
                if value.name not in ctx.values:
                    if value.const is None:
                        raise LoweringError(f"graph output '{value.name}' is never computed")
                    ctx.values[value.name] = bb.emit(ctx.constant(value.const))
                outs.append(ctx.values[value.name])
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            gv = bb.emit_output(result)
        bb.emit_func_output(gv, params=params + [var for _, var, _ in stored or ()])
    return bb.get()
