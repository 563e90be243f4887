"""The code generator's revision: a digest of its own sources.

Rule: ``revision() = sha256(path + text of every .py file under codegen/, in sorted path
order)[:16]``. Measured kernel latencies are cached on disk across runs (``kernels.json``), and
the package version alone does not change when a kernel or a schedule does -- a latency measured
on an earlier kernel would then be reused for a different one. The cache keys of
:func:`lowbit.codegen.select.layer_key` and of the whole-graph timings in
:mod:`lowbit.codegen.latency` therefore include this revision, so an edited kernel is measured
again.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def revision() -> str:
    """16 hex digits identifying the codegen sources (module docstring)."""
    digest = hashlib.sha256()
    for path in sorted(ROOT.rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


__all__ = ["revision"]
