"""``lowbit.Session``: run a compiled artifact like an onnxruntime ``InferenceSession``.

Only TVM's *runtime* is used (``tvm.runtime.load_module`` + ``tvm.runtime.vm.VirtualMachine``),
so a Session works with a runtime-only TVM install (``TVM_USE_RUNTIME_LIB=1`` forces that mode
on a full install); ``tvm.relax`` and the compiler are never imported.

Loading: :func:`~lowbit.runtime.artifact.load_artifact` checks the file first; then the payload
is written to a private temporary file (mode 0600, removed right after loading: ``dlopen``
keeps its own mapping) and loaded with ``tvm.runtime.load_module``. The stored weights
(decoded from their compact encoding by ``load_artifact``, :mod:`lowbit.runtime.weights`) become
TVM tensors once and follow the inputs in every call.

Concurrent ``run``: a Relax VM instance holds per-call state (registers, frames); one VM
shared by 4 threads without a lock failed with ``Check failed: reg < frame->register_file.size()``
(measured). So ``run`` gives every Python thread its own VM over the one loaded library
(``threading.local``) rather than a lock around one VM: a VM costs ~13 µs to create and shares
the library's constants (4 VMs over a 64 MB-weight model added 0 MB RSS), and tvm_ffi releases
the GIL during calls, so per-thread VMs can overlap where a lock would serialize. (On the shared
2-core dev machine at load 5-9 both gave the same throughput, ~1.6k runs/s of a 620 µs MLP at 1
and 2 Python threads: there was no idle core to overlap on.)

Thread count: TVM's CPU thread pool is per calling thread, sized on first use from
``TVM_NUM_THREADS`` (default: physical cores) and resized with the runtime function
``runtime.config_threadpool(mode, n)`` (capped by that size). ``Session(path, threads=N)``
raises ``TVM_NUM_THREADS`` to at least N when needed and sets N on each calling thread before
its call (~2 µs; only when the thread's current count differs). ``threads=None`` uses TVM's
default for a fresh thread, measured once per process before lowbit touches the environment.
Side effect: when ``TVM_NUM_THREADS`` is unset, the first Session sets it to the core count (the
cap only; every Session still configures its own count), so that a later ``threads=N`` can be
honoured on a thread whose pool already exists. A pool created before any Session, on a thread
that then asks for more threads than its cap, gets an ExecutionError that says how to fix it.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..ir.errors import ArtifactError, ExecutionError
from .artifact import Artifact, TensorSpec, load_artifact

#: TVM's affinity mode "big cores" (``threading::ThreadGroup::kBig``)
_AFFINITY_BIG = 1
#: per Python thread: the TVM pool size this thread was last configured to
_thread_state = threading.local()


@functools.cache
def _default_threads() -> int:
    """TVM's pool size for a fresh thread before lowbit touched ``TVM_NUM_THREADS``."""
    import tvm

    result = []
    probe = threading.Thread(target=lambda: result.append(int(tvm.runtime.num_threads())))
    probe.start()
    probe.join()
    return result[0]


def _raise_thread_cap(threads: int) -> None:
    """Let pools created from now on grow to ``threads`` (and, when the user set no
    ``TVM_NUM_THREADS``, to every core, so a later Session may ask for more): TVM caps a
    thread's pool at ``TVM_NUM_THREADS`` read when the pool is created."""
    cap = os.environ.get("TVM_NUM_THREADS", "")
    if not cap.isdigit():
        os.environ["TVM_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1))
    elif int(cap) < threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)


def _configure_thread(threads: int, where: str) -> None:
    """Make the calling thread's TVM pool run ``threads`` workers."""
    if getattr(_thread_state, "threads", None) == threads:
        return
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(_AFFINITY_BIG, threads)
    got = int(tvm.runtime.num_threads())
    if got != threads:
        raise ExecutionError(
            f"{where}: asked for {threads} TVM threads but this Python thread's pool was created "
            f"earlier with at most {got}; set TVM_NUM_THREADS={threads} before the first TVM "
            f"call, or call run from a fresh thread")
    _thread_state.threads = threads


def load_payload(payload: bytes, where: str = "artifact"):
    """Load an artifact's library bytes as a TVM runtime module (via a private temporary
    ``.so``, removed after loading); ArtifactError naming ``where`` if TVM refuses them."""
    import tvm

    fd, tmp = tempfile.mkstemp(prefix="lowbit-", suffix=".so")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        return tvm.runtime.load_module(tmp)
    except (RuntimeError, OSError, ValueError) as exc:  # tvm.error.InternalError...
        raise ArtifactError(
            f"{where}: TVM could not load the payload "
            f"({' '.join(str(exc).split())[:200]}); recompile the model") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


class Session:
    """Run a ``.lbx`` artifact: ``Session(path, threads=None).run(output_names, feeds)``.

    ``run`` returns numpy arrays in the order of ``output_names`` (all outputs when None),
    checks every feed's name, shape and dtype against the artifact (no implicit casts) and is
    safe to call from several threads at once.
    """

    def __init__(self, path, threads: int | None = None):
        self.path = Path(path)
        self._where = f"session {str(self.path)!r}"
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ExecutionError(f"{self._where}: threads must be a positive int or None, "
                                 f"got {threads!r}")
        artifact: Artifact = load_artifact(self.path)
        # keep the manifest fields, not the payload bytes (the library is loaded from them once)
        self.target, self.plan, self.entry = artifact.target, artifact.plan, artifact.entry
        self._inputs = artifact.inputs
        self._outputs = artifact.outputs
        self._output_index = {spec.name: i for i, spec in enumerate(self._outputs)}

        import tvm
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        self._vm_class = VirtualMachine
        self._device = tvm.cpu()
        default = _default_threads()
        self.threads = default if threads is None else threads
        _raise_thread_cap(self.threads)
        self._library = self._load_library(artifact.payload)
        # the stored weights, decoded by load_artifact: trailing arguments of every call
        self._weights = [_cpu_tensor(tvm, array) for _, array in artifact.weights]
        self._local = threading.local()
        self._check_entry(self._vm())

    # -- loading ------------------------------------------------------------------------------
    def _load_library(self, payload: bytes):
        return load_payload(payload, f"artifact {str(self.path)!r}")

    def _vm(self):
        vm = getattr(self._local, "vm", None)
        if vm is None:
            vm = self._local.vm = self._vm_class(self._library, self._device)
        return vm

    def _check_entry(self, vm) -> None:
        entry = self.entry
        try:
            arity = int(vm._get_function_arity(entry))
        except (ValueError, RuntimeError, AttributeError):  # ValueError: no such function
            raise ArtifactError(f"artifact {str(self.path)!r}: the payload has no VM function "
                                f"{entry!r}; recompile the model") from None
        expected = len(self._inputs) + len(self._weights)
        if arity != expected:
            raise ArtifactError(f"artifact {str(self.path)!r}: VM function {entry!r} takes "
                                f"{arity} arguments but the manifest lists {len(self._inputs)} "
                                f"inputs and {len(self._weights)} stored weights; recompile "
                                f"the model")

    # -- introspection ------------------------------------------------------------------------
    def get_inputs(self) -> list[TensorSpec]:
        """The inputs (name, shape, dtype), in the order the model takes them."""
        return list(self._inputs)

    def get_outputs(self) -> list[TensorSpec]:
        """The outputs (name, shape, dtype), in the order the model returns them."""
        return list(self._outputs)

    # -- running ------------------------------------------------------------------------------
    def _check_feeds(self, feeds) -> list[np.ndarray]:
        if not isinstance(feeds, dict):
            raise ExecutionError(f"{self._where}: feeds must be a dict name -> ndarray, got "
                                 f"{type(feeds).__name__}")
        expected = {spec.name for spec in self._inputs}
        unknown = sorted(set(feeds) - expected)
        if unknown:
            raise ExecutionError(f"{self._where}: unknown input {unknown[0]!r}; inputs are "
                                 f"{', '.join(str(s) for s in self._inputs)}")
        arrays = []
        for spec in self._inputs:
            if spec.name not in feeds:
                raise ExecutionError(f"{self._where}: missing input {spec.name!r} (expected "
                                     f"{spec}); feed every input")
            value = feeds[spec.name]
            if not isinstance(value, np.ndarray):
                raise ExecutionError(f"{self._where}: input {spec.name!r} must be a numpy "
                                     f"ndarray, got {type(value).__name__}")
            if value.dtype != np.dtype(spec.dtype):
                raise ExecutionError(f"{self._where}: input {spec.name!r} expected dtype "
                                     f"{spec.dtype}, got {value.dtype}; cast it with "
                                     f".astype(np.{spec.dtype})")
            if tuple(value.shape) != spec.shape:
                raise ExecutionError(f"{self._where}: input {spec.name!r} expected shape "
                                     f"{spec.shape}, got {tuple(value.shape)}")
            arrays.append(np.ascontiguousarray(value))
        return arrays

    def _output_positions(self, output_names) -> list[int]:
        if output_names is None:
            return list(range(len(self._outputs)))
        if isinstance(output_names, str):
            raise ExecutionError(f"{self._where}: output_names must be a list of names or None, "
                                 f"got the string {output_names!r}; pass [{output_names!r}]")
        positions = []
        for name in output_names:
            if name not in self._output_index:
                raise ExecutionError(f"{self._where}: unknown output {name!r}; valid outputs: "
                                     f"{', '.join(s.name for s in self._outputs)}")
            positions.append(self._output_index[name])
        return positions

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]
            ) -> list[np.ndarray]:
        """Run the model: ``[outputs[name] for name in output_names]`` as numpy arrays."""
        positions = self._output_positions(output_names)
        arrays = self._check_feeds(feeds)
        _configure_thread(self.threads, self._where)
        tvm = self._tvm
        args = [_cpu_tensor(tvm, a) for a in arrays]
        try:
            result = self._vm()[self.entry](*args, *self._weights)
        except (RuntimeError, ValueError, TypeError) as exc:  # a TVM runtime error
            raise ExecutionError(f"{self._where}: the compiled model failed "
                                 f"({' '.join(str(exc).split())[:300]})") from None
        results = [result] if len(self._outputs) == 1 else list(result)
        if len(results) != len(self._outputs):
            raise ExecutionError(f"{self._where}: the model returned {len(results)} outputs, "
                                 f"the manifest lists {len(self._outputs)}; recompile the model")
        return [np.array(np.from_dlpack(results[i])) for i in positions]

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self._inputs)
        outs = ", ".join(str(s) for s in self._outputs)
        return (f"Session({str(self.path)!r}, target={self.target.name}, "
                f"threads={self.threads}, inputs=[{ins}], outputs=[{outs}])")


#: TVM's DLPack import takes CPU data only at this alignment
_ALIGN = 64


def _cpu_tensor(tvm, array: np.ndarray):
    """``array`` as a TVM CPU tensor: copied into a fresh 64-byte-aligned numpy buffer and
    handed over through DLPack (no copy there). The same copy as ``tvm.runtime.tensor``, a
    fifth of its Python cost (measured: 10 vs 44 us), which is most of a tiny model's call;
    the buffer lives as long as the tensor (DLPack holds it)."""
    buf = np.empty(array.nbytes + _ALIGN, np.uint8)
    offset = (-buf.ctypes.data) % _ALIGN
    out = buf[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    np.copyto(out, array)
    return tvm.runtime.from_dlpack(out)
