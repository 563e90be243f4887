"""Reading and validating an ONNX model before any conversion.

Every bad input becomes a typed one-line error (``InvalidModelError`` unless said otherwise):

* a missing path, a directory, an empty / truncated / non-protobuf file ("is not an ONNX model
  (protobuf decode failed)"), a protobuf that decodes but holds no graph;
* a model opset below :data:`MIN_OPSET` or without a default-domain opset;
* external data: absolute ``location`` or one that resolves outside the model's folder (path
  traversal, refused), a missing data file, ``offset + length`` beyond the file, a length that
  disagrees with ``dims × itemsize``;
* absurd declared sizes: a tensor or graph input with more than :data:`MAX_ELEMENTS` elements;
* element types lowbit lacks (string, bfloat16, float8, int4, complex...) ->
  :class:`UnsupportedOpError` naming the tensor;
* ``onnx.checker.check_model`` failures, wrapped to one line.

External data is loaded here (never by ``onnx.load``) so that each check above runs first.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ...ir.dtypes import DType
from ...ir.errors import InvalidModelError, UnsupportedOpError

#: oldest default-domain opset lowbit imports
MIN_OPSET = 7
#: largest element count of any one tensor (initializer, constant or graph input)
MAX_ELEMENTS = 2**31

#: ONNX element type -> lowbit DType (everything else is unsupported)
ONNX_DTYPES: dict[int, DType] = {
    TensorProto.FLOAT: DType("float", 32),
    TensorProto.DOUBLE: DType("float", 64),
    TensorProto.FLOAT16: DType("float", 16),
    TensorProto.INT8: DType("int", 8),
    TensorProto.INT16: DType("int", 16),
    TensorProto.INT32: DType("int", 32),
    TensorProto.INT64: DType("int", 64),
    TensorProto.UINT8: DType("uint", 8),
    TensorProto.UINT16: DType("uint", 16),
    TensorProto.UINT32: DType("uint", 32),
    TensorProto.UINT64: DType("uint", 64),
    TensorProto.BOOL: DType("bool", 8),
}


def onnx_type_name(elem_type: int) -> str:
    """``TensorProto.BFLOAT16`` -> ``"bfloat16"`` (``"type 99"`` when unknown)."""
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


def to_dtype(elem_type: int, what: str) -> DType:
    """The lowbit DType of an ONNX element type; ``UnsupportedOpError`` naming ``what`` if none."""
    dt = ONNX_DTYPES.get(elem_type)
    if dt is None:
        supported = ", ".join(d.name for d in ONNX_DTYPES.values())
        raise UnsupportedOpError(f"{what} has element type {onnx_type_name(elem_type)}, which "
                                 f"lowbit does not support (supported: {supported})")
    return dt


def load_model(model) -> tuple[onnx.ModelProto, Path | None]:
    """Read ``model`` (path, bytes or ModelProto), validate it, load external data.

    Returns ``(model_proto, base_dir)``; the proto is a private copy with all external data
    inlined. Raises InvalidModelError / UnsupportedOpError as listed in the module docstring.
    """
    base_dir: Path | None = None
    path: Path | None = None
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        where = "model"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = _decode(bytes(model), "model bytes")
        where = "model bytes"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        where = f"'{path}'"
        if not path.exists():
            raise InvalidModelError(f"model file {where} does not exist; check the path")
        if path.is_dir():
            raise InvalidModelError(f"model path {where} is a directory, not an .onnx file; "
                                    "pass the path of the model file inside it")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidModelError(f"cannot read model file {where}: {exc.strerror}") from None
        proto = _decode(data, where)
        base_dir = path.resolve().parent
    else:
        raise InvalidModelError(f"cannot import a {type(model).__name__}; pass a path, bytes or "
                                "an onnx.ModelProto")
    _check_structure(proto, where)
    external = _check_tensors(proto, base_dir, where)
    _check_inputs(proto)
    for tensor, target, offset, length in external:
        with open(target, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read(length)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
    _run_checker(proto, path, where)
    return proto, base_dir


def _run_checker(proto: onnx.ModelProto, path: Path | None, where: str) -> None:
    """``onnx.checker.check_model``, failures wrapped to one line.

    Graph inputs/outputs whose tensor type has no shape field are tolerated (onnxruntime runs
    such models and lowbit infers every shape): the checker sees a copy with an empty shape
    there. A proto over protobuf's 2 GiB limit is checked from its path instead.
    """
    to_check = proto
    shapeless = [vi for vi in list(proto.graph.input) + list(proto.graph.output)
                 if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")]
    if shapeless:
        to_check = onnx.ModelProto()
        to_check.CopyFrom(proto)
        names = {vi.name for vi in shapeless}
        for vi in list(to_check.graph.input) + list(to_check.graph.output):
            if vi.name in names:
                vi.type.tensor_type.shape.SetInParent()
    target: onnx.ModelProto | str = to_check
    if to_check.ByteSize() >= 2**31:  # only the path form can check a proto this large
        if path is None:
            return
        target = str(path)
    try:
        onnx.checker.check_model(target)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = " ".join(str(exc).split())
        raise InvalidModelError(f"{where} failed onnx.checker.check_model: {first[:400]}; "
                                "fix or re-export the model") from None


def default_opset(proto: onnx.ModelProto) -> int:
    """The model's default-domain ("" / "ai.onnx") opset version."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise InvalidModelError("model has no opset_import for the default ONNX domain; re-export it "
                            "with an opset >= 7")


def _decode(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise InvalidModelError(f"{where} is empty (0 bytes); is the file truncated?")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        hint = ("it looks like a truncated ONNX file; re-download or re-export it"
                if data[:1] == b"\x08" else "expected a .onnx protobuf file")
        raise InvalidModelError(f"{where} is not an ONNX model (protobuf decode failed): "
                                f"{hint}") from None
    return proto


def _check_structure(proto: onnx.ModelProto, where: str) -> None:
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise InvalidModelError(f"{where} is not an ONNX model (protobuf decode found no "
                                "ir_version/graph); expected a .onnx protobuf file")
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        raise InvalidModelError(f"{where} uses opset {opset}; lowbit imports opset >= "
                                f"{MIN_OPSET}: convert it with onnx.version_converter."
                                f"convert_version(model, 13)")


def _graph_tensors(graph: onnx.GraphProto):
    """``(tensor, label)`` for initializers and Constant-node tensors (top-level graph)."""
    for t in graph.initializer:
        yield t, f"initializer '{t.name}'"
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t, f"Constant node '{node.name or node.output[0]}' value"


def _check_tensors(proto: onnx.ModelProto, base_dir: Path | None, where: str) -> list[tuple]:
    """Check every tensor; returns ``(tensor, file, offset, length)`` for external data."""
    external = []
    if proto.graph.sparse_initializer:
        name = proto.graph.sparse_initializer[0].values.name
        raise UnsupportedOpError(f"sparse initializer '{name}' is not supported; densify it "
                                 "before importing")
    for tensor, label in _graph_tensors(proto.graph):
        dtype = to_dtype(tensor.data_type, f"tensor {label}")
        numel = int(np.prod([int(d) for d in tensor.dims], dtype=np.float64))
        if any(int(d) < 0 for d in tensor.dims) or numel > MAX_ELEMENTS:
            raise InvalidModelError(f"tensor {label} declares dims {list(tensor.dims)} "
                                    f"({numel:.0f} elements, limit {MAX_ELEMENTS}); the file is "
                                    "corrupt or hostile")
        nbytes = numel * dtype.numpy.itemsize
        if tensor.data_location == TensorProto.EXTERNAL:
            external.append(_check_external(tensor, label, int(nbytes), base_dir, where))
        elif tensor.HasField("raw_data") and len(tensor.raw_data) != nbytes:
            raise InvalidModelError(f"tensor {label} has {len(tensor.raw_data)} bytes of data "
                                    f"but dims {list(tensor.dims)} × {dtype.numpy.itemsize} "
                                    f"bytes need {nbytes:.0f}; the file is corrupt")
    return external


def _check_external(tensor: TensorProto, label: str, nbytes: int, base_dir: Path | None,
                    where: str) -> tuple:
    """Validate one tensor's external-data reference: ``(tensor, file, offset, length)``."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise InvalidModelError(f"tensor {label} keeps its data in external file '{location}'; "
                                "import the model from its path so the file can be found")
    if not location:
        raise InvalidModelError(f"tensor {label} is marked external but names no location")
    if os.path.isabs(location) or Path(location).is_absolute():
        raise InvalidModelError(f"tensor {label}: external data location '{location}' is an "
                                "absolute path; refused (locations must be relative to the "
                                "model's folder)")
    target = (base_dir / location).resolve()
    if base_dir != target and base_dir not in target.parents:
        raise InvalidModelError(f"tensor {label}: external data location '{location}' resolves "
                                f"outside the model's folder {base_dir}; refused (path "
                                "traversal)")
    if not target.is_file():
        raise InvalidModelError(f"tensor {label}: external data file '{target}' does not exist; "
                                f"copy it next to {where}")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise InvalidModelError(f"tensor {label}: external data offset/length are not "
                                "integers") from None
    size = target.stat().st_size
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise InvalidModelError(f"tensor {label}: external data offset {offset} + length "
                                f"{length} is beyond the end of '{location}' ({size} bytes); "
                                "the data file is truncated or does not belong to this model")
    if length != nbytes:
        raise InvalidModelError(f"tensor {label}: external data length {length} disagrees "
                                f"with dims {list(tensor.dims)} ({nbytes} bytes)")
    return tensor, target, offset, length


def _check_inputs(proto: onnx.ModelProto) -> None:
    graph = proto.graph
    init = {t.name for t in graph.initializer}
    tagged = [(vi, "input") for vi in graph.input] + [(vi, "output") for vi in graph.output]
    for vi, kind in tagged:
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedOpError(f"graph {kind} '{vi.name}' is not a tensor "
                                     f"({vi.type.WhichOneof('value')}); lowbit imports tensor "
                                     "inputs/outputs only")
        ttype = vi.type.tensor_type
        if ttype.elem_type:
            to_dtype(ttype.elem_type, f"graph {kind} '{vi.name}'")
        if kind == "input" and vi.name not in init and ttype.HasField("shape"):
            dims = [d.dim_value for d in ttype.shape.dim if d.HasField("dim_value")]
            numel = float(np.prod(dims, dtype=np.float64)) if dims else 0.0
            if numel > MAX_ELEMENTS:
                raise InvalidModelError(f"graph input '{vi.name}' declares {numel:.0f} elements "
                                        f"(limit {MAX_ELEMENTS}); the model is corrupt")
