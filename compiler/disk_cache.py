"""On-disk caches of measurements: kernel latencies (``kernels.json``, kernel selection and
``--quant auto``) and layer sensitivities (``sensitivity.json``).

:class:`JsonCache` keeps ``{key: float}`` in one JSON file ``{"entries": {key: value}}``. Keys
name everything the value depends on (the lowbit version first). Saving re-reads the file and
merges, then writes a temporary file in the same folder and renames it over the old one
(atomic: a reader sees the old or the new file, never half of one; two processes saving at
once lose nothing but the later one's view of the earlier one's new keys). A missing or
unreadable file is an empty cache. The folder is :func:`cache_folder`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path


#: the packages whose sources define quantized numerics (formats, calibration, reconstruction,
#: folding, the sensitivity measurement): :func:`numerics_revision` digests them
NUMERICS_PACKAGES = ("ir", "passes")
#: the folder holding lowbit's packages
SOURCE_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def numerics_revision() -> str:
    """16 hex digits: ``sha256(path + text of every .py file under`` :data:`NUMERICS_PACKAGES`
    ``, in sorted path order)[:16]``. Cached sensitivities (and the plans' kernel costs, which
    time the graphs those passes produce) are keyed by it, so an edit to a format, the
    calibration or the reconstruction is measured again rather than read back stale -- the
    package version does not change with each edit (codegen has its own
    :func:`lowbit.codegen.revision.revision`)."""
    digest = hashlib.sha256()
    for package in NUMERICS_PACKAGES:
        for path in sorted((SOURCE_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(SOURCE_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_folder() -> Path:
    """``$XDG_CACHE_HOME/lowbit`` (``~/.cache/lowbit`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lowbit"


class JsonCache:
    """``{key: float}`` persisted in ``path`` (module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, float] = self._read()
        self.dirty: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return {str(k): float(v) for k, v in (entries or {}).items()}

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, value: float) -> None:
        self.entries[key] = value
        self.dirty[key] = value

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self._read(), **self.dirty}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}-", suffix=".json",
                                   dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"entries": dict(sorted(merged.items()))}, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.entries.update(merged)
        self.dirty = {}


__all__ = ["JsonCache", "cache_folder"]
