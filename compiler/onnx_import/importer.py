"""The import driver: ONNX ModelProto -> lowbit :class:`Graph`.

Steps: load and validate (``loader``), scan for unsupported ops (``registry.scan``), bind graph
inputs (every dynamic dim must be bound by ``input_shapes``; names in ``constants`` become
constants; inputs that are also initializers are constants), add initializers, convert nodes in
order, then collect outputs.

Naming: IR value names are the ONNX value names; node names are the ONNX node names, or
``<op>_<index>`` when empty. Graph outputs that fold to constants stay constant outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ...ir.core import Graph, Value
from ...ir.errors import InvalidModelError, ShapeError
from ...ir.ops import Op
from .context import ConvertContext
from .loader import default_opset, load_model, to_dtype
from .registry import load_converters, lookup, node_label, scan


def import_onnx(model, input_shapes=None, constants=None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into a lowbit :class:`Graph`.

    ``input_shapes`` ``{"x": (1, 3, 48, 320)}`` binds dynamic dims; ``constants``
    ``{"name": ndarray}`` freezes named graph inputs to values.
    """
    load_converters()
    proto, _ = load_model(model)
    opset = default_opset(proto)
    scan(proto, opset)
    onnx_graph = proto.graph
    graph = Graph(name=onnx_graph.name or "main", opset=opset)
    values: dict[str, Value] = {}
    _add_initializers(graph, values, onnx_graph)
    _add_inputs(graph, values, onnx_graph, dict(input_shapes or {}), dict(constants or {}))
    graph_outputs = {o.name for o in onnx_graph.output}
    for index, node in enumerate(onnx_graph.node):
        _convert_node(graph, values, node, index, opset, graph_outputs)
    for out in onnx_graph.output:
        if out.name not in values:
            raise InvalidModelError(f"graph output '{out.name}' is produced by no node")
        graph.outputs.append(values[out.name])
    graph.forget_unused_constants()
    return graph


def _add_initializers(graph: Graph, values: dict[str, Value], onnx_graph) -> None:
    for tensor in onnx_graph.initializer:
        dtype = to_dtype(tensor.data_type, f"initializer '{tensor.name}'")
        try:
            array = numpy_helper.to_array(tensor)
        except (ValueError, TypeError) as exc:
            raise InvalidModelError(f"initializer '{tensor.name}' cannot be decoded: "
                                    f"{' '.join(str(exc).split())}") from None
        values[tensor.name] = graph.add_const(array, name=tensor.name, dtype=dtype)
        assert values[tensor.name].name == tensor.name


def _add_inputs(graph: Graph, values: dict[str, Value], onnx_graph, input_shapes: dict,
                constants: dict) -> None:
    real = [vi for vi in onnx_graph.input if vi.name not in values]
    real_names = [vi.name for vi in real]
    for what, table in (("input_shapes", input_shapes), ("constants", constants)):
        for name in table:
            if name not in real_names:
                raise ShapeError(f"{what} names '{name}', which is not a graph input; the graph "
                                 f"inputs are {real_names}")
    for vi in real:
        ttype = vi.type.tensor_type
        dtype = to_dtype(ttype.elem_type, f"graph input '{vi.name}'")
        if vi.name in constants:
            array = np.asarray(constants[vi.name])
            values[vi.name] = graph.add_const(array.astype(dtype.numpy), name=vi.name,
                                              dtype=dtype)
            continue
        shape = _bind_shape(vi, input_shapes.get(vi.name))
        values[vi.name] = graph.add_input(vi.name, dtype, shape)


def _bind_shape(vi, bound) -> tuple[int, ...]:
    """Static shape of graph input ``vi``, binding dynamic dims from ``bound``."""
    ttype = vi.type.tensor_type
    has_shape = ttype.HasField("shape")
    declared: list[int | str | None] = []
    for i, d in enumerate(ttype.shape.dim):
        if d.HasField("dim_value"):
            declared.append(int(d.dim_value))
        else:
            declared.append(d.dim_param or f"?{i}")
    text = "[" + ", ".join(str(d) for d in declared) + "]"
    if bound is not None:
        try:
            shape = tuple(int(d) for d in bound)
        except (TypeError, ValueError):
            raise ShapeError(f"input_shapes['{vi.name}'] = {bound!r} is not a tuple of "
                             "integers") from None
        if any(d < 0 for d in shape):
            raise ShapeError(f"input_shapes['{vi.name}'] = {shape} has a negative dim")
        if has_shape and len(shape) != len(declared):
            raise ShapeError(f"input_shapes['{vi.name}'] = {shape} has rank {len(shape)} but "
                             f"graph input '{vi.name}' has rank {len(declared)} (shape {text})")
        for i, (want, got) in enumerate(zip(declared, shape)):
            if isinstance(want, int) and want != got:
                raise ShapeError(f"input_shapes['{vi.name}'] = {shape} contradicts static dim "
                                 f"{i} = {want} of graph input '{vi.name}' (shape {text})")
        return shape
    if not has_shape:
        raise ShapeError(f"graph input '{vi.name}' has no declared shape; bind it with "
                         f"input_shapes={{'{vi.name}': (...)}} or --input-shape {vi.name}=...")
    dynamic = [d for d in declared if not isinstance(d, int)]
    if dynamic:
        example = tuple(d if isinstance(d, int) else 1 for d in declared)
        cli = ",".join(str(d) for d in example)
        raise ShapeError(f"graph input '{vi.name}' has dynamic dims {dynamic} (shape {text}); "
                         f"bind them with input_shapes={{'{vi.name}': {example}}} or "
                         f"--input-shape {vi.name}={cli}")
    return tuple(declared)  # type: ignore[arg-type]


def _convert_node(graph: Graph, values: dict[str, Value], node: onnx.NodeProto, index: int,
                  opset: int, graph_outputs: set[str]) -> None:
    conv, version = lookup(node.op_type, node.domain, opset)
    assert conv is not None, "scan() lets no unsupported op through"
    name = node_label(node, index)
    for i, input_name in enumerate(node.input):
        if input_name and input_name not in values:
            raise InvalidModelError(f"{node.op_type} node '{name}' input {i} '{input_name}' is "
                                    "not defined before use (graph not topologically sorted?)")
    ctx = ConvertContext(graph, values, node, name, opset, version)
    outs = list(conv.fn(ctx))
    created = {id(v) for v in ctx.created}
    for i, out_name in enumerate(node.output):
        if not out_name:
            continue
        if i >= len(outs) or outs[i] is None:
            raise ctx.unsupported(f"output {i} ('{out_name}') is not supported by lowbit; only "
                                  f"the first {len(outs)} output(s) can be used")
        value = outs[i]
        if id(value) in created and not _is_named(values, value):
            _rename(graph, value, out_name)
        elif out_name in graph_outputs:
            value = _alias(ctx, value, out_name)
        values[out_name] = value


def _is_named(values: dict[str, Value], value: Value) -> bool:
    """True when ``value`` already carries an ONNX value name (mapped earlier)."""
    mapped = values.get(value.name)
    return mapped is value


def _alias(ctx: ConvertContext, value: Value, name: str) -> Value:
    """A fresh value called ``name`` equal to ``value`` (graph outputs keep their ONNX names)."""
    if value.is_const:
        new = ctx.graph.add_const(value.const, name=name, dtype=value.dtype)
        if new.name != name:
            _rename(ctx.graph, new, name)
        return new
    (new,) = ctx.emit(Op.IDENTITY, [value])
    _rename(ctx.graph, new, name)
    return new


def _rename(graph: Graph, value: Value, name: str) -> None:
    """Give ``value`` the ONNX name ``name``, moving a temporary that holds it out of the way."""
    if value.name == name:
        return
    other = graph.values.get(name)
    if other is not None:
        # a temporary created earlier under what is now an ONNX value's name
        _rename(graph, other, graph.unique_name(name + "_tmp"))
    del graph.values[value.name]
    value.name = name
    graph.values[name] = value
