"""A max-pool fused into the AMX conv in front of it (the ResNet stem: conv 7x7/2 -> BN ->
ReLU -> max-pool 3x3/2).

Rule: a QConv on the ``amx`` family's int8 conv entry with its requant fused (integer codes
out) whose only user is a 2-D MaxPool (dilation 1, floor mode, every pad smaller than its
kernel side, no Indices output) is lowered as one kernel that writes the pooled codes:
requant is monotone per channel (multiplier >= 0, then clamps), so ``maxpool(requant(acc)) =
requant(maxpool(acc))``, and the kernel pools the raw tile sums while they are in L1, then
requantizes a quarter of them (3x3/2). The conv is not lowered on its own
(``LoweringContext.fused``); the MaxPool's lowering emits the fused call.
The graph (and so the integer simulator) still says conv -> MaxPool; the output is the same
bit for bit. Measured on the binarized ResNet-18's stem at 224² (one thread): conv + requant
448 µs, then a pad (90 µs) and the u8 max-pool (44 µs); fused 346 µs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...ir import Graph, Node, Op
from ...ir.errors import LoweringError
from . import out_dtype, out_shape


@dataclass(frozen=True)
class FusedPool:
    """The conv whose kernel computes the MaxPool (``plan``: its amx plan with the pool in
    the spec) and the nodes the fusion replaces (the conv)."""

    conv: Node
    plan: object
    absorbed: frozenset[str]


def _window(pool: Node):
    """The :class:`~lowbit.codegen.kernels.common.MaxPoolWindow` of a MaxPool node, or None
    when the kernel cannot fuse it."""
    from ..kernels.common import MaxPoolWindow

    a = pool.attrs
    if (pool.op != Op.MAXPOOL or len(pool.outputs) != 1 or len(a.kernel_shape) != 2
            or any(d != 1 for d in a.dilations) or a.ceil_mode):
        return None
    try:
        return MaxPoolWindow(tuple(a.kernel_shape), tuple(a.strides), tuple(a.pads))
    except LoweringError:
        return None


def find(graph: Graph, target) -> dict[str, FusedPool]:
    """``{MaxPool name: FusedPool}`` for every conv + MaxPool pair of ``graph`` that fuses."""
    out = {}
    for node in graph.nodes:
        found = fusable(node, target) if node.op == Op.QCONV else None
        if found is not None:
            out[found[0].name] = FusedPool(node, found[1], frozenset({node.name}))
    return out


def fusable(conv: Node, target):
    """``(pool node, plan)`` when ``conv`` and its MaxPool fuse (module docstring): ``plan``
    is the conv's amx plan with the pool in its spec and ``lower`` building that kernel;
    None otherwise."""
    from . import families

    if conv.op != Op.QCONV or conv.meta.get("kernel") != "amx":
        return None
    out = conv.outputs[0]
    users = out.users
    graph = conv.graph
    if len(users) != 1 or (graph is not None and out in graph.outputs):
        return None
    pool = users[0][0]
    window = _window(pool)
    if window is None:
        return None
    try:
        plan = families.plan_layer(conv, "amx", target)
        if plan.layout != "conv" or not plan.fused or plan.spec.requant is None:
            return None
        spec = replace(plan.spec, pool=window)
    except LoweringError:
        return None
    if spec.out_shape != out_shape(pool) or spec.C * spec.KH * spec.KW * 255 * 128 >= 1 << 31:
        return None  # (the raw tile sums must not wrap for their max to be the true one)
    int8 = families._kernels("int8")
    zx = int(conv.attrs.requant.in_zero_point)
    return pool, replace(plan, spec=spec,
                         lower=lambda: int8.lower_conv(spec, target, zx)["main"])


def emit(ctx, fused: FusedPool, pool: Node):
    """The fused call computing MaxPool ``pool`` from its conv's input."""
    from tvm import relax

    from .families import _add_scheduled

    conv, plan = fused.conv, fused.plan
    spec = plan.spec
    gv = _add_scheduled(ctx, plan.lower(), f"amx_{conv.name}_maxpool")
    x = ctx.input(conv, 0)
    if str(x.ty.dtype) != spec.a_dtype:
        x = ctx.bb.emit(relax.op.astype(x, spec.a_dtype))
    args = relax.Tuple([x, *[ctx.weight(p, f"{conv.name}:w{i}")
                             for i, p in enumerate(plan.params)]])
    y = ctx.bb.emit(relax.call_tir(gv, args, out_ty=relax.TensorType(spec.out_shape,
                                                                      spec.out_dtype)))
    if spec.out_dtype != out_dtype(pool):
        y = ctx.bb.emit(relax.op.astype(y, out_dtype(pool)))
    return y
