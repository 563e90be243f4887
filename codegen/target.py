"""Compilation targets: which TVM target a kernel is built for, and what that ISA offers.

A :class:`Target` is a frozen value naming the TVM target (the JSON-dict form TVM 0.27 wants;
the CLI string form is gone), the ISA features a kernel family may rely on, and
``popcount_bits``: the width of the machine word bit planes are packed into (64 where the ISA
counts bits of a 64-bit word in one instruction, 32 on CUDA where ``__popc`` is the native
32-bit count and ``__popcll`` costs two).

:func:`resolve_target` turns a user-facing name into a :class:`Target`:

* ``"x86"``         the host CPU: flags read from ``/proc/cpuinfo``; the CPU is named with
                    LLVM's own ``target.llvm_get_system_cpu`` when the bundled LLVM knows it
                    (``mcpu: native`` is rejected by LLVM 22, so it is never used), otherwise
                    a generic ``mcpu`` plus the detected ``mattr`` features;
* ``"x86-avx2"``    ``mcpu: haswell`` (AVX2, POPCNT), for building on or for older hosts;
* ``"x86-avx512"``  ``mcpu: icelake-server`` (AVX-512 F/VNNI/VPOPCNTDQ/BITALG);
* ``"arm64"``       ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}``
                    (cross code generation; NEON ``cnt`` counts bits);
* ``"cuda"``        ``sm_80``; ``"cuda:sm_80"`` / ``"cuda:sm_90"`` name the architecture.

Unknown names raise :class:`~lowbit.ir.errors.LoweringError` listing the valid ones. TVM is
imported lazily (only to ask LLVM about the host), so importing this module is cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..ir.errors import LoweringError

#: the /proc/cpuinfo flags lowbit's kernels care about, in a stable order
X86_FEATURES = ("popcnt", "avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq", "avx512_bitalg",
                "amx_tile", "amx_int8")

#: /proc/cpuinfo flag -> LLVM ``mattr`` spelling (used when the host CPU has no LLVM name)
_LLVM_MATTR = {
    "popcnt": "+popcnt",
    "avx2": "+avx2",
    "avx512f": "+avx512f",
    "avx512_vnni": "+avx512vnni",
    "avx512_vpopcntdq": "+avx512vpopcntdq",
    "avx512_bitalg": "+avx512bitalg",
    "amx_tile": "+amx-tile",
    "amx_int8": "+amx-int8",
}

#: features always passed as ``mattr``, also with a CPU name: a hypervisor may expose AMX on a
#: CPU model LLVM names without it (this project's Xeon host reports a Rocket Lake model with
#: ``amx_tile`` / ``amx_int8`` flags)
_ALWAYS_MATTR = ("amx_tile", "amx_int8")

_CUDA_ARCHS = ("sm_80", "sm_90")

VALID_NAMES = ("x86", "x86-avx2", "x86-avx512", "arm64", "cuda",
               *(f"cuda:{arch}" for arch in _CUDA_ARCHS))


@dataclass(frozen=True, slots=True)
class Target:
    """A compilation target.

    ``tvm_items`` is the TVM target dict as sorted ``(key, value)`` pairs (lists as tuples) so
    the value stays hashable; :meth:`tvm_dict` gives the dict TVM takes. ``features`` are ISA
    feature names (``/proc/cpuinfo`` spelling on x86, e.g. ``avx512_vpopcntdq``; ``neon``;
    ``sm_90``). ``popcount_bits`` is the bit-plane word width (32 or 64).
    """

    name: str
    tvm_items: tuple[tuple[str, object], ...]
    features: frozenset[str]
    popcount_bits: int

    def __post_init__(self):
        if self.popcount_bits not in (32, 64):
            raise LoweringError(
                f"target {self.name}: popcount_bits must be 32 or 64, got {self.popcount_bits}")

    @property
    def kind(self) -> str:
        """TVM target kind: ``llvm`` or ``cuda``."""
        return str(dict(self.tvm_items)["kind"])

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def tvm_dict(self) -> dict:
        """The JSON-dict target TVM 0.27 accepts (a fresh dict; tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.tvm_items}

    def tvm_target(self):
        """A ``tvm.target.Target`` (Relax builds need the object, PrimFunc builds take either)."""
        import tvm

        return tvm.target.Target(self.tvm_dict())

    def runs_on_host(self) -> bool:
        """True when code built for this target can execute on this machine."""
        if self.kind != "llvm" or "mtriple" in dict(self.tvm_items):
            return False
        return self.features <= set(host_x86_flags())


def _make(name: str, tvm_target: dict, features, popcount_bits: int) -> Target:
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                         for k, v in tvm_target.items()))
    return Target(name, items, frozenset(features), popcount_bits)


@functools.cache
def host_x86_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The subset of :data:`X86_FEATURES` the host CPU reports (first ``flags`` line)."""
    path = Path(cpuinfo)
    if not path.exists():
        return ()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            if not _amx_permitted():  # the CPU has tiles, the kernel will not hand them out
                flags -= set(_ALWAYS_MATTR)
            return tuple(f for f in X86_FEATURES if f in flags)
    return ()


@functools.cache
def _amx_permitted() -> bool:
    """True when Linux grants this process the AMX tile state
    (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`` returns 0; Linux >= 5.16). The
    ``amx`` kernels ask for it themselves on their first call; a refusal there would fault."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0
    except (OSError, AttributeError):
        return False


def _llvm_cpu_name() -> str | None:
    """The host CPU's LLVM name (``znver4``...) when the bundled LLVM knows it, else None."""
    import tvm

    cpu = str(tvm.get_global_func("target.llvm_get_system_cpu")())
    valid = tvm.get_global_func("target.llvm_is_valid_cpu")
    if cpu and cpu != "generic" and valid(cpu, "x86_64-linux-gnu"):
        return cpu
    return None


def host_x86_target(flags: tuple[str, ...] | None = None, cpu: str | None = "detect") -> Target:
    """The ``"x86"`` target for this host (``flags`` / ``cpu`` overridable for tests).

    With a CPU name LLVM accepts, ``mcpu`` is that name (it implies the features; AMX is added
    as ``mattr`` when the flags have it, :data:`_ALWAYS_MATTR`); without, ``mcpu`` is
    ``x86-64-v4`` / ``x86-64-v3`` / ``x86-64`` by AVX level and ``mattr`` lists every detected
    feature, so popcount still lowers to ``popcnt`` / ``vpopcntq``.
    """
    flags = host_x86_flags() if flags is None else tuple(flags)
    if cpu == "detect":
        cpu = _llvm_cpu_name()
    if cpu:
        tvm_target = {"kind": "llvm", "mcpu": cpu}
        extra = [_LLVM_MATTR[f] for f in _ALWAYS_MATTR if f in flags]
        if extra:
            tvm_target["mattr"] = extra
    else:
        level = "x86-64-v4" if "avx512f" in flags else "x86-64-v3" if "avx2" in flags else "x86-64"
        tvm_target = {"kind": "llvm", "mcpu": level,
                      "mattr": [_LLVM_MATTR[f] for f in flags if f in _LLVM_MATTR]}
    return _make("x86", tvm_target, flags, 64 if "popcnt" in flags or cpu else 32)


_FIXED = {
    "x86-avx2": ({"kind": "llvm", "mcpu": "haswell"}, ("popcnt", "avx2"), 64),
    "x86-avx512": ({"kind": "llvm", "mcpu": "icelake-server"},
                   ("popcnt", "avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq",
                    "avx512_bitalg"), 64),
    "arm64": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
              ("neon",), 64),
}


def resolve_target(name: str) -> Target:
    """A user-facing target name -> :class:`Target` (see the module docstring for the names)."""
    if name == "x86":
        return host_x86_target()
    if name in _FIXED:
        tvm_target, features, bits = _FIXED[name]
        return _make(name, tvm_target, features, bits)
    if name == "cuda" or name.startswith("cuda:"):
        arch = name.partition(":")[2] or "sm_80"
        if arch in _CUDA_ARCHS:
            return _make(f"cuda:{arch}", {"kind": "cuda", "arch": arch}, (arch,), 32)
    raise LoweringError(
        f"unknown target {name!r}; valid targets: {', '.join(VALID_NAMES)}")
