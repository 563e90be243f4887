"""The kernel-family registry: which compiled kernel computes a quantized layer.

A family (one module in this package: ``bitserial.py``, later ``lut.py``, ``int8.py`` ...)
registers one :class:`KernelFamily` at import time with :func:`register_family`. It declares

* ``accepts(w_qtype, a_qtype) -> bool``  which weight x activation formats it computes;
* ``accumulator_dtype(K, w_qtype, a_qtype) -> DType``  its accumulator type rule (raises
  ``LoweringError`` when a K-long dot product cannot fit);
* ``pack_weights(spec, target, w, ...)``  compile-time weight layout (numpy);
* ``build(spec, target)``  one compiled function per layer shape;
* ``formula``  the text of what the kernel computes (shown in reports / the printer).

The selector asks :func:`families_for` and never names a family: families are discovered by
importing every module of this package on first query, so a new family is one new file. The
family modules import TVM; this module does not (discovery is lazy).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from ...ir.errors import LoweringError


@dataclass(frozen=True, slots=True)
class KernelFamily:
    """One kernel family's declaration (see the module docstring for each field)."""

    name: str
    accepts: Callable
    accumulator_dtype: Callable
    build: Callable
    pack_weights: Callable
    formula: str


_FAMILIES: dict[str, KernelFamily] = {}
_discovered = False


def register_family(family: KernelFamily) -> KernelFamily:
    """Add ``family`` to the registry; a second family of the same name is an error."""
    existing = _FAMILIES.get(family.name)
    if existing is not None and existing is not family:
        raise LoweringError(
            f"kernel family {family.name!r} is registered twice; rename one of them")
    _FAMILIES[family.name] = family
    return family


def _discover() -> None:
    """Import every family module of this package once (each registers itself)."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    _discovered = True


def families() -> tuple[KernelFamily, ...]:
    """Every registered family, sorted by name."""
    _discover()
    return tuple(_FAMILIES[name] for name in sorted(_FAMILIES))


def get_family(name: str) -> KernelFamily:
    """The family called ``name``; :class:`LoweringError` listing the known ones otherwise."""
    _discover()
    if name not in _FAMILIES:
        raise LoweringError(
            f"unknown kernel family {name!r}; known: {', '.join(sorted(_FAMILIES)) or 'none'}")
    return _FAMILIES[name]


def families_for(w_qtype, a_qtype) -> tuple[KernelFamily, ...]:
    """The families whose ``accepts(w_qtype, a_qtype)`` is true, sorted by name."""
    return tuple(f for f in families() if f.accepts(w_qtype, a_qtype))
