"""Converters that never reach the IR as ops: Constant, ConstantOfShape, Shape (all become
constants), Identity and Dropout (inference: the input itself; Dropout's optional mask output is
a constant all-True tensor)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...ir.dtypes import BOOL
from .loader import to_dtype
from .registry import converter, get_attr

_LATEST = (21, 23, 24, 25)
_CONSTANT_KINDS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def check_constant(node, version) -> str | None:
    """Sparse and string constants have no lowbit form."""
    names = [a.name for a in node.attribute]
    unsupported = [n for n in names if n not in _CONSTANT_KINDS]
    if unsupported:
        return f"attribute {unsupported[0]} (sparse / string constants are not supported)"
    return None


@converter("Constant", versions=(1, 9, 11, 12, 13, 19) + _LATEST, check=check_constant)
def convert_constant(ctx):
    """value (tensor), value_float(s) -> float32, value_int(s) -> int64."""
    for attr in ctx.node.attribute:
        if attr.name == "value":
            to_dtype(attr.t.data_type, f"Constant node '{ctx.name}' value")
            return [ctx.constant(numpy_helper.to_array(attr.t))]
        if attr.name in ("value_float", "value_floats"):
            return [ctx.constant(np.asarray(get_attr(ctx.node, attr.name), dtype=np.float32))]
        if attr.name in ("value_int", "value_ints"):
            return [ctx.constant(np.asarray(get_attr(ctx.node, attr.name), dtype=np.int64))]
    raise ctx.unsupported("no value attribute")


@converter("ConstantOfShape", versions=(9, 20) + _LATEST)
def convert_constant_of_shape(ctx):
    """A tensor of the constant ``shape`` input filled with ``value`` (default float32 0)."""
    shape = tuple(int(d) for d in ctx.const(0, "input"))
    value = get_attr(ctx.node, "value", None)
    fill = np.zeros(1, np.float32) if value is None else numpy_helper.to_array(value)
    return [ctx.constant(np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype))]


@converter("Shape", versions=(1, 13, 15, 19) + _LATEST)
def convert_shape(ctx):
    """The (static) input shape as int64, sliced by ``start``/``end`` from opset 15."""
    shape = np.asarray(ctx.input(0).shape, dtype=np.int64)
    if ctx.version >= 15:
        rank = len(shape)
        start = int(ctx.attr("start", 0))
        end = ctx.attr("end", None)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = rank if end is None else int(end)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        shape = shape[start:end]
    return [ctx.constant(shape)]


@converter("Identity", versions=(1, 13, 14, 16, 19) + _LATEST)
def convert_identity(ctx):
    """y = x: the input value itself (a graph output keeps its name through an Identity)."""
    return [ctx.input(0)]


@converter("Dropout", versions=(7, 10, 12, 13, 22))
def convert_dropout(ctx):
    """Inference: y = x. The mask output (when used) is constant all-True (bool from opset 10,
    x's dtype before). training_mode (opset 12+) must be a constant False."""
    x = ctx.input(0)
    if ctx.version >= 12:
        training = ctx.const(2, "training_mode")
        if training is not None and bool(np.asarray(training).reshape(-1)[0]):
            raise ctx.unsupported("training_mode=True; lowbit imports inference graphs")
    outs = [x]
    if ctx.n_outputs > 1:
        if ctx.version >= 10:
            outs.append(ctx.constant(np.ones(x.shape, dtype=np.bool_), dtype=BOOL))
        else:
            outs.append(ctx.constant(np.ones(x.shape, dtype=x.dtype.numpy), dtype=x.dtype))
    return outs
