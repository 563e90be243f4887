"""The converter registry and the up-front scan of a model.

``@converter("Conv", versions=(1, 11, 22))`` registers a function for the ONNX *schema versions*
it implements. For a node the importer computes ``onnx.defs.get_schema(op_type, model_opset,
domain).since_version``; a version that is not listed is unsupported (no silent fallback to a
neighbouring version). Only the default domain ("" / "ai.onnx") has converters.

A converter may name a ``check(node, version) -> str | None`` that returns why an attribute value
is unsupported (e.g. Resize ``antialias=1``). :func:`scan` runs over the whole model before any
conversion and raises ONE :class:`UnsupportedOpError` listing every unsupported op type (with
schema version, count, up to 3 node names) and every unsupported attribute value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
import onnx.defs

from ...ir.errors import UnsupportedOpError

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Converter:
    """One ONNX op's converter: the schema versions it implements and an attribute check."""

    op_type: str
    versions: tuple[int, ...]
    fn: Callable
    check: Callable[[onnx.NodeProto, int], str | None] | None = None


_TABLE: dict[str, Converter] = {}


def converter(op_type: str, versions: tuple[int, ...], check=None):
    """Register ``fn(ctx) -> list[Value]`` for ``op_type`` at the listed schema versions."""

    def deco(fn):
        if op_type in _TABLE:
            raise AssertionError(f"converter for {op_type} registered twice")
        _TABLE[op_type] = Converter(op_type, tuple(sorted(versions)), fn, check)
        return fn

    return deco


def schema_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """``since_version`` of the schema the model's opset selects, or None if ONNX has none."""
    try:
        return int(onnx.defs.get_schema(op_type, opset, domain).since_version)
    except onnx.defs.SchemaError:
        return None


def lookup(op_type: str, domain: str, opset: int) -> tuple[Converter | None, int | None]:
    """``(converter, schema_version)``; converter is None when this version is unsupported."""
    if domain not in DEFAULT_DOMAINS:
        return None, None
    version = schema_version(op_type, opset)
    conv = _TABLE.get(op_type)
    if conv is None or version is None or version not in conv.versions:
        return None, version
    return conv, version


#: converter modules, one per op family; each registers its converters when imported
FAMILIES = ("conv", "linear", "elementwise", "activation", "normalization", "reduce", "pool",
            "tensor", "resize", "quant", "constant")


def load_converters() -> None:
    """Import every converter family module (idempotent)."""
    import importlib

    package = __name__.rsplit(".", 1)[0]
    for family in FAMILIES:
        importlib.import_module(f"{package}.{family}")


def supported_ops() -> dict[str, tuple[int, ...]]:
    """``{op_type: schema versions}`` of every registered converter (for ``lowbit ops``)."""
    load_converters()
    return {name: c.versions for name, c in sorted(_TABLE.items())}


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's ONNX name, or ``<op>_<index>`` when it has none."""
    return node.name or f"{node.op_type}_{index}"


def scan(model: onnx.ModelProto, opset: int) -> None:
    """Raise one UnsupportedOpError naming every unsupported op and attribute value, if any."""
    domain_opsets = {e.domain or "": int(e.version) for e in model.opset_import}
    missing: dict[str, list[str]] = {}
    bad_attrs: list[str] = []
    for index, node in enumerate(model.graph.node):
        name = node_label(node, index)
        conv, version = lookup(node.op_type, node.domain, opset)
        if conv is None:
            if node.domain in DEFAULT_DOMAINS:
                label = f"{node.op_type}-{version if version is not None else '?'}"
            else:
                label = f"{node.domain}.{node.op_type}-{domain_opsets.get(node.domain, '?')}"
            missing.setdefault(label, []).append(name)
            continue
        if conv.check is not None:
            reason = conv.check(node, version)
            if reason:
                bad_attrs.append(f"{node.op_type} node '{name}': {reason}")
    if not missing and not bad_attrs:
        return
    parts = []
    if missing:
        items = []
        for label, names in missing.items():
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            items.append(f"{label} ×{len(names)} (nodes: {shown})")
        noun = "type" if len(missing) == 1 else "types"
        parts.append(f"{len(missing)} unsupported op {noun} in model (opset {opset}): "
                     + ", ".join(items) + "; see the supported list with 'lowbit ops'")
    if bad_attrs:
        parts.append(f"{len(bad_attrs)} unsupported attribute value(s) (opset {opset}): "
                     + "; ".join(bad_attrs))
    raise UnsupportedOpError(" | ".join(parts))


def get_attr(node: onnx.NodeProto, name: str, default=None):
    """The python value of attribute ``name`` of an ONNX node, or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            if isinstance(value, list) and value and isinstance(value[0], bytes):
                return [v.decode("utf-8", "replace") for v in value]
            return value
    return default
