"""JSON serialization of a graph that round-trips exactly.

Constants are stored inline as base64 of their little-endian bytes with dtype and shape; attrs
as ``{"class": "ConvAttrs", "fields": {...}}``; DTypes by name; QTypes field by field. The
format carries ``"format": "lowbit-ir", "version": 1``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import fields, is_dataclass

import numpy as np

from .attrs import ATTR_CLASSES, NESTED_ATTR_CLASSES
from .core import Graph, Value
from .dtypes import DType
from .errors import IRError
from .ops import Op
from .qtype import Granularity, QKind, QType

FORMAT_VERSION = 1


def _enc(obj):
    if isinstance(obj, DType):
        return {"dtype": obj.name}
    if isinstance(obj, QType):
        return {"qtype": _qtype_to(obj)}
    if type(obj).__name__ in NESTED_ATTR_CLASSES and is_dataclass(obj):
        return {"nested": type(obj).__name__,
                "fields": {f.name: _enc(getattr(obj, f.name)) for f in fields(obj)}}
    if isinstance(obj, tuple):
        return [_enc(x) for x in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def _dec(obj, tuple_ok=True):
    if isinstance(obj, dict) and "dtype" in obj:
        return DType.parse(obj["dtype"])
    if isinstance(obj, dict) and "qtype" in obj:
        return _qtype_from(obj["qtype"])
    if isinstance(obj, dict) and "nested" in obj:
        cls = NESTED_ATTR_CLASSES.get(obj["nested"])
        if cls is None:
            raise IRError(f"unknown nested attribute class {obj['nested']!r} in serialized graph")
        return cls(**{k: _dec(v) for k, v in obj["fields"].items()})
    if isinstance(obj, list) and tuple_ok:
        return tuple(_dec(x) for x in obj)
    return obj


def _qtype_to(q: QType) -> dict:
    return {
        "kind": q.kind.value, "bits": q.bits, "signed": q.signed,
        "axis": q.granularity.axis, "group_size": q.granularity.group_size,
        "scale": list(q.scale), "zero_point": list(q.zero_point),
        "codebook": [list(c) for c in q.codebook], "zero_free": q.zero_free,
        "multiplier": list(q.multiplier), "shift": list(q.shift),
        "extra": [list(e) for e in q.extra],
    }


def _qtype_from(d: dict) -> QType:
    return QType(
        kind=QKind(d["kind"]), bits=d["bits"], signed=d["signed"],
        granularity=Granularity(d["axis"], d["group_size"]),
        scale=tuple(d["scale"]), zero_point=tuple(d["zero_point"]),
        codebook=tuple(tuple(c) for c in d["codebook"]), zero_free=d["zero_free"],
        multiplier=tuple(d["multiplier"]), shift=tuple(d["shift"]),
        extra=tuple(tuple(e) for e in d["extra"]),
    )


def _value_to(v: Value) -> dict:
    d = {"name": v.name, "dtype": v.dtype.name,
         "shape": None if v.shape is None else list(v.shape)}
    if v.qtype is not None:
        d["qtype"] = _qtype_to(v.qtype)
    if v.is_const:
        arr = np.ascontiguousarray(v.const, dtype=v.dtype.numpy.newbyteorder("<"))
        d["data"] = base64.b64encode(arr.tobytes()).decode("ascii")
    return d


def _attrs_to(attrs) -> dict | None:
    if attrs is None:
        return None
    assert is_dataclass(attrs)
    return {"class": type(attrs).__name__,
            "fields": {f.name: _enc(getattr(attrs, f.name)) for f in fields(attrs)}}


def _attrs_from(d):
    if d is None:
        return None
    cls = ATTR_CLASSES.get(d["class"])
    if cls is None:
        raise IRError(f"unknown attribute class {d['class']!r} in serialized graph")
    return cls(**{k: _dec(v) for k, v in d["fields"].items()})


def to_json(graph: Graph, indent: int | None = 1) -> str:
    """Serialize ``graph`` (constants inline) to a JSON string."""
    consts = graph.constants()
    doc = {
        "format": "lowbit-ir", "version": FORMAT_VERSION, "name": graph.name,
        "opset": graph.opset,
        "inputs": [_value_to(v) for v in graph.inputs],
        "constants": [_value_to(v) for v in consts],
        "nodes": [
            {"name": n.name, "op": n.op.value, "attrs": _attrs_to(n.attrs),
             "inputs": [None if v is None else v.name for v in n.inputs],
             "outputs": [_value_to(v) for v in n.outputs],
             "meta": {k: v for k, v in n.meta.items() if isinstance(v, (str, int, float))}}
            for n in graph.nodes
        ],
        "outputs": [v.name for v in graph.outputs],
    }
    return json.dumps(doc, indent=indent)


def _value_from(d: dict) -> Value:
    dt = DType.parse(d["dtype"])
    const = None
    if "data" in d:
        raw = base64.b64decode(d["data"])
        const = np.frombuffer(raw, dtype=dt.numpy.newbyteorder("<")).astype(dt.numpy)
        const = const.reshape(d["shape"])
        const.setflags(write=False)
    v = Value(d["name"], dt, d["shape"], const=const)
    if "qtype" in d:
        v.qtype = _qtype_from(d["qtype"])
    return v


def from_json(text: str) -> Graph:
    """Rebuild a graph written by :func:`to_json`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise IRError(f"not a lowbit IR JSON document: {e}") from None
    if doc.get("format") != "lowbit-ir" or doc.get("version") != FORMAT_VERSION:
        raise IRError(f"not a lowbit IR JSON document of version {FORMAT_VERSION}")
    g = Graph(doc["name"], doc["opset"])
    for d in doc["inputs"]:
        v = _value_from(d)
        g._register(v)
        g.inputs.append(v)
    for d in doc["constants"]:
        g._register(_value_from(d))
    for nd in doc["nodes"]:
        ins = [None if n is None else g.values[n] for n in nd["inputs"]]
        outs = [_value_from(d) for d in nd["outputs"]]
        node = g.add_node(Op(nd["op"]), ins, _attrs_from(nd["attrs"]), name=nd["name"],
                          outputs=[o.name for o in outs],
                          out_types=[(o.dtype, o.shape) for o in outs])
        for v, o in zip(node.outputs, outs):
            v.qtype = o.qtype
        node.meta.update(nd.get("meta", {}))
    g.outputs = [g.values[n] for n in doc["outputs"]]
    return g
