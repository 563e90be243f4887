"""lowbit IR: Graph / Node / Value, ops, typed attributes, dtypes, QTypes, printer, verifier."""

from . import attrs
from .core import Graph, Node, Shape, Value
from .dtypes import (
                     BOOL,
                     FLOAT16,
                     FLOAT32,
                     FLOAT64,
                     INT8,
                     INT16,
                     INT32,
                     INT64,
                     UINT8,
                     UINT16,
                     UINT32,
                     UINT64,
                     DType,
)
from .errors import (
                     ArtifactError,
                     CalibrationError,
                     ExecutionError,
                     InvalidModelError,
                     IRError,
                     LowbitError,
                     LoweringError,
                     NonConstantInputError,
                     PassError,
                     QuantizationError,
                     ShapeError,
                     UnsupportedOpError,
)
from .ops import Op, OpKind
from .printer import format_graph, graph_summary
from .qtype import PER_TENSOR, Granularity, QKind, QType
from .serialize import from_json, to_json
from .verifier import verify

__all__ = [
                     "BOOL",
                     "FLOAT16",
                     "FLOAT32",
                     "FLOAT64",
                     "INT8",
                     "INT16",
                     "INT32",
                     "INT64",
                     "PER_TENSOR",
                     "UINT8",
                     "UINT16",
                     "UINT32",
                     "UINT64",
                     "ArtifactError",
                     "CalibrationError",
                     "DType",
                     "ExecutionError",
                     "Granularity",
                     "Graph",
                     "IRError",
                     "InvalidModelError",
                     "LowbitError",
                     "LoweringError",
                     "Node",
                     "NonConstantInputError",
                     "Op",
                     "OpKind",
                     "PassError",
                     "QKind",
                     "QType",
                     "QuantizationError",
                     "Shape",
                     "ShapeError",
                     "UnsupportedOpError",
                     "Value",
                     "attrs",
                     "format_graph",
                     "from_json",
                     "graph_summary",
                     "to_json",
                     "verify",
]
