"""Single-file compiled artifacts (``model.lbx``): write atomically, check before loading.

Layout (all integers little-endian; no pickle anywhere)::

    offset 0   magic            8 bytes  b"\\x89LBX\\r\\n\\x1a\\n"
    offset 8   format version   u32      FORMAT_VERSION
    offset 12  manifest length  u64      m
    offset 20  payload length   u64      p
    offset 28  manifest         m bytes  UTF-8 JSON (see :class:`Artifact`)
    28 + m     payload          p bytes  the TVM shared library (``export_library`` output),
                                         then the stored weights (format >= 2)
    28 + m + p checksum         32 bytes SHA-256 of every byte before it

so a well-formed file is exactly ``28 + m + p + 32`` bytes long. The magic's high byte and CR LF /
SUB bytes catch text-mode transfers and foreign files, as PNG's do. The manifest's ``payloads``
list the parts of the payload in order with their lengths: the library, and (format 2) the
``weights`` section, the kernels' integer weight arrays that the library takes as trailing
parameters of ``entry``, each stored at its information content (4-bit weights in an int8
kernel layout: 4 bits on disk; :mod:`lowbit.runtime.weights`) and described in the manifest's
``weights`` list. Format 3 (this lowbit) slices a per-channel palette over a set of axes
(``axes``), format 2 over one (``axis``); format 2 files and format 1 files (no weights
section) still load.

:func:`load_artifact` checks, in this order and before anything touches native code: size and
magic (empty, foreign or truncated header), format version (a newer lowbit wrote it), declared
lengths vs the file size (truncated / trailing bytes), the checksum (corrupted or tampered), the
manifest's JSON schema, lowbit version compatibility (:func:`compatible_version`) and that the
host CPU has the architecture and ISA features the target needs (``/proc/cpuinfo``). Every
failure is an :class:`~lowbit.ir.errors.ArtifactError` one-liner naming the file and the fix.

The checksum detects corruption, not malice: the payload is native code, so load only
artifacts from sources you trust. This module imports no TVM at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ir.errors import ArtifactError, LoweringError
from .weights import StoredTensor, decode, encode_all

MAGIC = b"\x89LBX\r\n\x1a\n"
FORMAT_VERSION = 3
_HEADER = struct.Struct("<8sIQQ")  # magic, format version, manifest length, payload length
HEADER_SIZE = _HEADER.size  # 28
CHECKSUM_SIZE = 32
#: the only payload kind this lowbit writes and loads
PAYLOAD_KIND = "tvm-relax-vm-shared-library"
#: the stored-weights section (format 2; :mod:`lowbit.runtime.weights`)
WEIGHTS_KIND = "lowbit-stored-weights"
#: on aarch64 /proc/cpuinfo says ``asimd`` for what LLVM and lowbit call ``neon``
_FEATURE_ALIASES = {"neon": "asimd"}
_ARCHES = ("x86_64", "aarch64", "cuda")

JsonScalar = str | int | float | bool


def _lowbit_version() -> str:
    from .. import __version__

    return __version__


def _is_scalar(value) -> bool:
    return isinstance(value, JsonScalar)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A graph input or output: name, static shape and numpy dtype name (``"float32"``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not isinstance(self.shape, tuple):
            raise ArtifactError(f"tensor spec {self.name!r}: name must be a str and shape a "
                                f"tuple, got {type(self.name).__name__} / "
                                f"{type(self.shape).__name__}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                   for d in self.shape):
            raise ArtifactError(f"tensor spec {self.name!r}: shape must be non-negative ints, "
                                f"got {self.shape}")
        try:
            if not isinstance(self.dtype, str) or np.dtype(self.dtype).name != self.dtype:
                raise TypeError(self.dtype)
        except TypeError:
            raise ArtifactError(f"tensor spec {self.name!r}: dtype must be a numpy dtype name "
                                f"such as 'float32' or 'uint8', got {self.dtype!r}") from None

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(obj) -> TensorSpec:
        shape = obj["shape"]
        return TensorSpec(obj["name"], tuple(shape) if isinstance(shape, list) else shape,
                          obj["dtype"])

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{','.join(map(str, self.shape))}]"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What a host must offer to run the payload.

    ``arch`` is ``x86_64`` | ``aarch64`` | ``cuda``; ``features`` are ISA feature names in
    ``/proc/cpuinfo`` spelling (``avx512_vnni``), plus ``neon`` on aarch64; ``tvm_target`` is
    the TVM target dict as JSON text (informational: the loader never compiles).
    """

    name: str
    arch: str
    features: tuple[str, ...] = ()
    tvm_target: str = "{}"

    def __post_init__(self):
        if self.arch not in _ARCHES:
            raise ArtifactError(f"target {self.name!r}: arch must be one of {_ARCHES}, got "
                                f"{self.arch!r}")
        if not isinstance(self.name, str) or not isinstance(self.features, tuple) or not all(
                isinstance(f, str) for f in self.features):
            raise ArtifactError(f"target {self.name!r}: name must be a str and features a "
                                f"tuple of str")
        try:
            parsed = json.loads(self.tvm_target)
        except (TypeError, ValueError):
            parsed = None
        if not isinstance(parsed, dict):
            raise ArtifactError(f"target {self.name!r}: tvm_target must be a JSON object text, "
                                f"got {self.tvm_target!r}")

    @staticmethod
    def from_tvm(name: str, tvm_target: dict, features) -> TargetSpec:
        """Build from a TVM target dict: ``arch`` is ``cuda`` for kind cuda, ``aarch64`` when
        the ``mtriple`` starts with ``aarch64``, else ``x86_64``."""
        triple = str(tvm_target.get("mtriple", ""))
        arch = ("cuda" if tvm_target.get("kind") == "cuda"
                else "aarch64" if triple.startswith("aarch64") else "x86_64")
        return TargetSpec(name, arch, tuple(sorted(features)),
                          json.dumps(tvm_target, sort_keys=True))

    @staticmethod
    def for_build_host(name: str, tvm_target: dict, features=()) -> TargetSpec:
        """For code built with ``mcpu`` naming the build machine's CPU (``znver4``...): LLVM
        may use any ISA extension that CPU has, so require every SIMD / bit-manipulation flag
        of this host (:func:`host_isa_flags`) besides ``features``. Conservative: a host with
        fewer extensions is refused rather than risking SIGILL."""
        return TargetSpec.from_tvm(name, tvm_target, set(features) | set(host_isa_flags()))

    def to_json(self) -> dict:
        return {"name": self.name, "arch": self.arch, "features": list(self.features),
                "tvm": json.loads(self.tvm_target)}

    @staticmethod
    def from_json(obj) -> TargetSpec:
        features = obj["features"]
        return TargetSpec(obj["name"], obj["arch"],
                          tuple(features) if isinstance(features, list) else features,
                          json.dumps(obj["tvm"], sort_keys=True))


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One row of the per-layer plan: the graph node, its op, the kernel family chosen for it
    and free-form scalar details (bit widths, tile sizes...), as ``(key, value)`` pairs with
    str keys and str / int / float / bool values."""

    layer: str
    op: str
    kernel: str
    details: tuple[tuple[str, JsonScalar], ...] = ()

    def __post_init__(self):
        if not all(isinstance(f, str) for f in (self.layer, self.op, self.kernel)):
            raise ArtifactError(f"plan row {self.layer!r}: layer, op and kernel must be str")
        if not isinstance(self.details, tuple) or not all(
                isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and _is_scalar(item[1]) for item in self.details):
            raise ArtifactError(f"plan row {self.layer!r}: details must be (str, str | int | "
                                f"float | bool) pairs, got {self.details!r}")

    def to_json(self) -> dict:
        return {"layer": self.layer, "op": self.op, "kernel": self.kernel,
                "details": dict(self.details)}

    @staticmethod
    def from_json(obj) -> PlanRow:
        return PlanRow(obj["layer"], obj["op"], obj["kernel"],
                       tuple(obj.get("details", {}).items()))


@dataclass(frozen=True)
class Artifact:
    """A compiled model: the manifest fields plus the payload bytes.

    ``payload`` is a TVM Relax VM executable exported with ``executable.export_library``;
    ``entry`` is the VM function to call; its positional parameters are ``inputs`` in order,
    then the arrays of ``weights`` (``(name, integer ndarray)`` pairs, in order: the kernels'
    weights, stored compactly in the file) and it returns ``outputs`` in order (a tensor when
    there is one output, a tuple otherwise). Other constants are bound inside the library.
    """

    target: TargetSpec
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    payload: bytes = field(repr=False)
    entry: str = "main"
    plan: tuple[PlanRow, ...] = ()
    lowbit_version: str = field(default_factory=_lowbit_version)
    weights: tuple[tuple[str, np.ndarray], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        for role in ("inputs", "outputs"):
            specs = getattr(self, role)
            if not isinstance(specs, tuple) or not all(isinstance(t, TensorSpec) for t in specs):
                raise ArtifactError(f"artifact {role} must be a tuple of TensorSpec")
            names = [t.name for t in specs]
            if len(set(names)) != len(names):
                raise ArtifactError(f"artifact {role} repeat a name: {names}; names must be "
                                    f"unique")
        if not isinstance(self.target, TargetSpec):
            raise ArtifactError(f"artifact target must be a TargetSpec, got {self.target!r}")
        if not isinstance(self.plan, tuple) or not all(isinstance(r, PlanRow) for r in self.plan):
            raise ArtifactError("artifact plan must be a tuple of PlanRow")
        if not isinstance(self.payload, bytes | bytearray) or not self.payload:
            raise ArtifactError("artifact payload must be non-empty bytes (the exported TVM "
                                "library)")
        object.__setattr__(self, "payload", bytes(self.payload))
        if not isinstance(self.entry, str) or not self.entry:
            raise ArtifactError(f"artifact entry must be a VM function name, got {self.entry!r}")
        if not isinstance(self.weights, tuple) or not all(
                isinstance(w, tuple) and len(w) == 2 and isinstance(w[0], str)
                and isinstance(w[1], np.ndarray) and w[1].dtype.kind in "iu"
                for w in self.weights):
            raise ArtifactError("artifact weights must be a tuple of (name, integer ndarray)")

    @functools.cached_property
    def _stored(self) -> tuple[tuple[StoredTensor, ...], bytes]:
        """The weights' entries and section, encoded on first use (saving, sizes): a loaded
        artifact that only runs never re-encodes them."""
        return encode_all(self.weights)

    @property
    def stored_weight_bytes(self) -> int:
        """Bytes the weights section takes in the file (what the plan's bits become on
        disk; the library's own constants -- scales, float weights -- are not counted)."""
        return len(self._stored[1])

    @property
    def weight_memory_bytes(self) -> int:
        """Bytes the weights take in memory once loaded (the kernels' layouts)."""
        return sum(w.nbytes for _, w in self.weights)

    def describe(self) -> str:
        """What ``lowbit inspect OUT.lbx`` prints: target, inputs / outputs, the per-layer
        plan and every stored weight (encoding, bytes on disk and in memory)."""
        features = ", ".join(self.target.features) or "none required"
        lines = [f"lowbit {self.lowbit_version} artifact, target {self.target.name} "
                 f"({self.target.arch}; {features}), entry {self.entry!r}",
                 f"library: {len(self.payload):,} B"]
        lines += [f"input  {spec}" for spec in self.inputs]
        lines += [f"output {spec}" for spec in self.outputs]
        lines.append(f"plan: {len(self.plan)} quantized layers")
        for row in self.plan:
            details = " ".join(f"{k}={v}" for k, v in row.details)
            lines.append(f"  {row.layer}  {row.op}  kernel={row.kernel}  {details}".rstrip())
        entries = self._stored[0]
        lines.append(f"weights: {len(entries)} stored, {self.stored_weight_bytes:,} B on "
                     f"disk, {self.weight_memory_bytes:,} B in memory")
        for entry in entries:
            how = {"raw": "raw", "palette": f"palette, {entry.bits}-bit indices",
                   "sliced": f"palette per slice of axes {list(entry.axes)}, {entry.bits}-bit "
                             f"indices"
                   }[entry.encoding]
            memory = entry.numel * np.dtype(entry.dtype).itemsize
            lines.append(f"  {entry.name}  {entry.dtype}[{','.join(map(str, entry.shape))}]  "
                         f"{how}  {entry.length:,} B (memory {memory:,} B)")
        return "\n".join(lines) + "\n"

    def manifest(self) -> dict:
        """The JSON manifest written into the file."""
        return {
            "lowbit_version": self.lowbit_version,
            "format_version": FORMAT_VERSION,
            "target": self.target.to_json(),
            "entry": self.entry,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "plan": [row.to_json() for row in self.plan],
            "payloads": [{"name": "library", "kind": PAYLOAD_KIND,
                          "length": len(self.payload)},
                         {"name": "weights", "kind": WEIGHTS_KIND,
                          "length": self.stored_weight_bytes}],
            "weights": [entry.to_json() for entry in self._stored[0]],
        }

    def to_bytes(self) -> bytes:
        """The whole file: header, manifest, payload (library + weights), SHA-256 of all of
        it."""
        manifest = json.dumps(self.manifest(), sort_keys=True, indent=1).encode()
        section = self._stored[1]
        body = (_HEADER.pack(MAGIC, FORMAT_VERSION, len(manifest),
                             len(self.payload) + len(section))
                + manifest + bytes(self.payload) + section)
        return body + hashlib.sha256(body).digest()

    def save(self, path) -> Path:
        """Write to ``path`` atomically (temp file in the same folder, fsync, rename): a
        failure leaves any previous file untouched and no partial file behind."""
        path = Path(path)
        data = self.to_bytes()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise ArtifactError(f"cannot write artifact {str(path)!r} ({exc.strerror or exc}); "
                                f"check that the folder exists and is writable") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise ArtifactError(f"cannot write artifact {str(path)!r} "
                                    f"({exc.strerror or exc}); nothing was written — check "
                                    f"disk space and permissions") from None
            raise
        return path


#: the linkers for each cross architecture, in order of preference: the C++ driver (as TVM's
#: default ``g++``), else the C one (enough: the payload needs no libstdc++), searched on PATH
CROSS_LINKERS = {"aarch64": ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc"),
                 "x86_64": ("x86_64-linux-gnu-g++", "x86_64-linux-gnu-gcc")}
#: how to get each cross linker (the Debian / Ubuntu package)
_CROSS_PACKAGES = {"aarch64": "g++-aarch64-linux-gnu", "x86_64": "g++-x86-64-linux-gnu"}


def cross_linker(target: TargetSpec) -> str | None:
    """The linker for ``target``'s payload: ``None`` (TVM's default, the host ``g++``) when
    the code runs on this host's architecture (``cuda`` host code included), else the full path
    of the first of :data:`CROSS_LINKERS` ``[arch]`` found on ``PATH``. Raises
    :class:`~lowbit.ir.errors.LoweringError` when none is installed."""
    if target.arch in (host_arch(), "cuda"):
        return None
    names = CROSS_LINKERS.get(target.arch, ())
    found = next((path for path in map(shutil.which, names) if path), None)
    if found is None:
        package = _CROSS_PACKAGES.get(target.arch, f"a {target.arch} cross g++")
        raise LoweringError(f"no cross linker for {target.arch} (looked for "
                            f"{' / '.join(names) or 'none known'} on PATH) to link target "
                            f"{target.name!r} on this {host_arch()} host: install it "
                            f"(apt-get install {package}) or compile on an {target.arch} host")
    return found


def export_payload(executable, target: TargetSpec | None = None) -> bytes:
    """The bytes of ``executable.export_library(path)`` (a TVM Relax VM executable), via a
    private temporary folder, linked by :func:`cross_linker` ``(target)`` (``target=None``:
    the host's). Needs the full TVM (linking calls the C compiler)."""
    cc = None if target is None else cross_linker(target)
    with tempfile.TemporaryDirectory(prefix="lowbit-export-") as tmp:
        lib = Path(tmp) / "payload.so"
        if cc is None:
            executable.export_library(str(lib))
        else:
            executable.export_library(str(lib), cc=cc)  # passed on to tvm's create_shared
        return lib.read_bytes()


def compatible_version(artifact_version: str, our_version: str) -> bool:
    """Rule: same major version, and for 0.x the same minor too (pre-1.0 minors may break the
    calling convention). ``"0.1.0"`` loads ``"0.1.7"``; not ``"0.2.0"`` nor ``"1.1.0"``."""
    try:
        theirs = [int(p) for p in artifact_version.split(".")[:2]]
        ours = [int(p) for p in our_version.split(".")[:2]]
    except ValueError:
        return False
    if len(theirs) < 2 or len(ours) < 2:
        return False
    return theirs[0] == ours[0] and (ours[0] > 0 or theirs[1] == ours[1])


def host_arch() -> str:
    """``x86_64`` / ``aarch64`` (``arm64`` spelled the Linux way) / whatever the OS says."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_cpu_features(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """Every ISA flag of the first CPU (``flags`` on x86, ``Features`` on aarch64)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


#: /proc/cpuinfo flags of instruction-set extensions a compiler may emit: these prefixes...
_ISA_PREFIXES = ("sse", "ssse", "avx", "amx", "bmi", "sve")
#: ... and these exact names (x86, then aarch64)
_ISA_NAMES = frozenset({"fma", "f16c", "popcnt", "abm", "lzcnt", "movbe", "gfni", "vaes",
                        "vpclmulqdq", "pclmulqdq", "aes", "sha_ni", "adx",
                        "fp", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sme", "sme2"})


def host_isa_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """This host's instruction-set extension flags, sorted (``_ISA_PREFIXES`` / ``_NAMES``)."""
    return tuple(sorted(f for f in host_cpu_features(cpuinfo)
                        if f.startswith(_ISA_PREFIXES) or f in _ISA_NAMES))


def check_host(target: TargetSpec, where: str, arch: str | None = None,
               features: frozenset[str] | None = None) -> None:
    """Raise ArtifactError unless this host can run code built for ``target`` (``arch`` /
    ``features`` default to the real host; tests pass others)."""
    arch = host_arch() if arch is None else arch
    features = host_cpu_features() if features is None else features
    if target.arch == "cuda":
        raise ArtifactError(
            f"{where}: built for CUDA target {target.name!r}; lowbit.Session runs CPU artifacts "
            f"only so far — recompile with a CPU target (x86, arm64)")
    if target.arch != arch:
        raise ArtifactError(
            f"{where}: built for {target.arch} (target {target.name!r}) but this host is "
            f"{arch}; recompile for this host's target")
    missing = [f for f in target.features if _FEATURE_ALIASES.get(f, f) not in features
               and f not in features]
    if missing:
        raise ArtifactError(
            f"{where}: target {target.name!r} needs CPU features {', '.join(missing)} that this "
            f"host lacks (see /proc/cpuinfo); recompile with a target this CPU supports, e.g. "
            f"'x86' (the host) or 'x86-avx2'")


def _foreign_hint(head: bytes) -> str:
    if head.startswith(b"\x7fELF"):
        return " (it is an ELF binary, e.g. a bare .so)"
    if head[:1] == b"\x08":
        return " (it looks like an ONNX/protobuf file)"
    if head.startswith(b"PK"):
        return " (it is a zip archive)"
    return ""


def _parse_manifest(raw: bytes, where: str) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"))
        if not isinstance(manifest, dict):
            raise TypeError("manifest is not a JSON object")
        manifest["_target"] = TargetSpec.from_json(manifest["target"])
        manifest["_inputs"] = tuple(TensorSpec.from_json(t) for t in manifest["inputs"])
        manifest["_outputs"] = tuple(TensorSpec.from_json(t) for t in manifest["outputs"])
        manifest["_plan"] = tuple(PlanRow.from_json(r) for r in manifest["plan"])
        for key in ("lowbit_version", "entry"):
            if not isinstance(manifest[key], str):
                raise TypeError(f"{key} must be a string")
        payloads = manifest["payloads"]
        kinds = [p["kind"] for p in payloads]
        if (kinds not in ([PAYLOAD_KIND], [PAYLOAD_KIND, WEIGHTS_KIND])
                or not all(isinstance(p["length"], int) and not isinstance(p["length"], bool)
                           and p["length"] >= 0 for p in payloads)):
            raise ValueError(f"expected a {PAYLOAD_KIND} payload, optionally followed by a "
                             f"{WEIGHTS_KIND} section")
        section = payloads[1]["length"] if len(payloads) == 2 else 0
        manifest["_weights"] = tuple(StoredTensor.from_json(w, section)
                                     for w in manifest.get("weights", ()))
        if len({w.name for w in manifest["_weights"]}) != len(manifest["_weights"]):
            raise ValueError("stored weight names repeat")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
            ArtifactError) as exc:
        raise ArtifactError(
            f"{where}: malformed manifest ({exc.__class__.__name__}: {exc}); the file was not "
            f"written by this lowbit's writer — recompile the model") from None
    return manifest


def _check_header(head: bytes, size: int, where: str) -> None:
    """Magic, format version and declared lengths vs the real file ``size``."""
    if size == 0:
        raise ArtifactError(f"{where}: empty file, not a lowbit artifact; recompile the model")
    if size < HEADER_SIZE:
        if MAGIC.startswith(head[:len(MAGIC)]) or head.startswith(MAGIC):
            raise ArtifactError(f"{where}: truncated inside the header ({size} bytes); the "
                                f"copy is incomplete — copy or recompile it again")
        raise ArtifactError(f"{where}: not a lowbit artifact (bad magic){_foreign_hint(head)}; "
                            f"pass a .lbx file written by lowbit")
    magic, version, manifest_len, payload_len = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ArtifactError(f"{where}: not a lowbit artifact (bad magic){_foreign_hint(head)}; "
                            f"pass a .lbx file written by lowbit")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{where}: artifact format version {version} is newer than this "
                            f"lowbit reads (<= {FORMAT_VERSION}); upgrade lowbit")
    if version < 1:
        raise ArtifactError(f"{where}: unknown artifact format version {version}; recompile "
                            f"the model")
    expected = HEADER_SIZE + manifest_len + payload_len + CHECKSUM_SIZE
    if size < expected:
        raise ArtifactError(f"{where}: truncated ({size} of {expected} bytes); the copy is "
                            f"incomplete — copy or recompile it again")
    if size > expected:
        raise ArtifactError(f"{where}: {size - expected} unexpected trailing bytes after the "
                            f"checksum; the file is corrupted — recompile the model")


def load_artifact(path, host_check: bool = True) -> Artifact:
    """Read and fully check ``path`` (see the module docstring); never runs native code.
    ``host_check=False`` skips only the check that this host can run the target (to read an
    arm64 or CUDA artifact's manifest on an x86 machine)."""
    path = Path(path)
    where = f"artifact {str(path)!r}"
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_SIZE)  # judge the header before reading a possibly huge file
            _check_header(head, size, where)
            data = head + f.read()
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot read ({exc.strerror or exc}); check the path and "
                            f"permissions") from None
    if len(data) != size:
        raise ArtifactError(f"{where}: the file changed while it was read; retry")
    manifest_len, payload_len = _HEADER.unpack_from(data)[2:]
    view = memoryview(data)
    if hashlib.sha256(view[:-CHECKSUM_SIZE]).digest() != data[-CHECKSUM_SIZE:]:
        raise ArtifactError(f"{where}: SHA-256 checksum mismatch, the file is corrupted or was "
                            f"modified; recompile the model")
    manifest = _parse_manifest(data[HEADER_SIZE:HEADER_SIZE + manifest_len], where)
    lengths = [p["length"] for p in manifest["payloads"]]
    if sum(lengths) != payload_len:
        raise ArtifactError(f"{where}: manifest payload lengths {lengths} do not add up to the "
                            f"header payload length {payload_len}; recompile the model")
    ours = _lowbit_version()
    if not compatible_version(manifest["lowbit_version"], ours):
        raise ArtifactError(f"{where}: written by lowbit {manifest['lowbit_version']}, which is "
                            f"not compatible with this lowbit {ours}; recompile the model with "
                            f"this version (or install lowbit {manifest['lowbit_version']})")
    if host_check:
        check_host(manifest["_target"], where)
    start = HEADER_SIZE + manifest_len
    library = lengths[0]
    section = view[start + library:start + payload_len]
    try:
        weights = tuple((entry.name, decode(entry, section)) for entry in manifest["_weights"])
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    art = Artifact(target=manifest["_target"], inputs=manifest["_inputs"],
                   outputs=manifest["_outputs"], payload=data[start:start + library],
                   entry=manifest["entry"], plan=manifest["_plan"],
                   lowbit_version=manifest["lowbit_version"], weights=weights)
    # the file's own entries and bytes: inspecting or re-saving does not encode them again
    art.__dict__["_stored"] = (manifest["_weights"], bytes(section))
    return art
