"""What every kernel family shares: the requant output stage, the thread pool, bound layers.

- :class:`OutputRange`: the requant output stage ``y = clamp(z_y + requant(acc), lo, hi)``
  (zero point and clamp range in output codes); its :attr:`~OutputRange.dtype` is the kernel's
  output dtype.
- :func:`set_num_threads`: size TVM's CPU thread pool (all families run their parallel loop
  there).
- :func:`bind_layer` / :class:`BoundLayer`: upload a compiled layer's parameters to the device
  once, then call it on numpy codes (``y = kernel(x, *params)``) or time it.

Each family keeps its own checks of the packed weights (they differ per layout); this module
only holds the steps that are identical across families.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ...ir.errors import LoweringError

__all__ = ["BoundLayer", "OutputRange", "bind_layer", "set_num_threads"]

_INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class MaxPoolWindow:
    """A 2-D max-pool fused behind a conv's requant (dilation 1, floor mode): ``kernel`` (kh,
    kw), ``strides`` (sh, sw), ``pads`` (top, left, bottom, right), each pad smaller than its
    kernel side, so every window holds at least one real pixel and the padding never wins.
    Requant is monotone per channel (multiplier >= 0, then clamps), so ``max(requant(a)) =
    requant(max(a))``: the kernel pools the accumulators and requantizes the pooled ones."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]

    def __post_init__(self):
        if min(*self.kernel, *self.strides) < 1 or min(self.pads) < 0 or any(
                self.pads[i] >= self.kernel[i % 2] for i in range(4)):
            raise LoweringError(f"fused max-pool: kernel {self.kernel}, strides "
                                f"{self.strides}, pads {self.pads}: sizes must be >= 1 and "
                                "every pad smaller than its kernel side")

    def out_shape(self, H: int, W: int) -> tuple[int, int]:
        """Pooled (rows, columns) of an (H, W) map."""
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.strides, self.pads
        return (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1


@dataclass(frozen=True, slots=True)
class OutputRange:
    """Requant output stage: zero point ``z_y`` and clamp range ``[lo, hi]`` (codes)."""

    zero_point: int
    lo: int
    hi: int

    def __post_init__(self):
        # The "bitserial" prefix is kept from where this class was born: messages are matched.
        if not -(1 << 31) <= self.lo <= self.hi <= _INT32_MAX:
            raise LoweringError(
                f"bitserial requant: empty or non-int32 output range [{self.lo}, {self.hi}]")
        if abs(self.zero_point) >= (1 << 31):
            raise LoweringError(f"bitserial requant: zero point {self.zero_point} beyond int32")

    @property
    def dtype(self) -> str:
        """Smallest numpy integer dtype holding ``[lo, hi]`` (the kernel's output dtype)."""
        for name in ("int8", "uint8", "int16", "int32"):
            info = np.iinfo(name)
            if info.min <= self.lo and self.hi <= info.max:
                return name
        raise AssertionError("checked in __post_init__")


def set_num_threads(n: int) -> None:
    """Size TVM's CPU thread pool for the kernels' parallel loops.

    Sets ``TVM_NUM_THREADS`` and reconfigures the pool (``runtime.config_threadpool``). Measured
    on TVM 0.27: the pool's default (and ``config_threadpool`` alone) runs even one thread as a
    worker the caller waits on, ~10 us per call; with ``TVM_NUM_THREADS=1`` the parallel loop
    runs inline in the caller (0.03 us), so single-thread layers must go through here (or set
    the variable before the first call). Raising the count above the pool's first size may be
    capped by TVM.
    """
    import os

    import tvm

    if n < 1:
        raise LoweringError(f"set_num_threads: need >= 1 thread, got {n}")
    os.environ["TVM_NUM_THREADS"] = str(n)
    tvm.get_global_func("runtime.config_threadpool")(0, n)


@dataclass(frozen=True, slots=True, eq=False)
class BoundLayer:
    """A compiled layer with its parameters resident on the device.

    ``kernel`` is a family's compiled kernel (``.spec`` with ``a_dtype`` / ``out_dtype``, and
    ``.lib`` whose ``main`` takes ``(x, *params, y)``). A call checks ``x.shape == in_shape``,
    then ``check_codes(x)`` if given (a family's code-range check; the kernels trust their
    inputs), casts ``x`` to ``a_dtype`` and returns ``y`` of ``out_shape`` / ``out_dtype``.
    """

    kernel: object
    params: tuple
    family: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    check_codes: Callable[[np.ndarray], None] | None = None

    def _args(self, x: np.ndarray) -> tuple:
        import tvm

        spec = self.kernel.spec
        x = np.asarray(x)
        if x.shape != self.in_shape:
            raise LoweringError(f"{self.family}: input shape {x.shape}, kernel built for "
                                f"{self.in_shape}")
        if self.check_codes is not None:
            self.check_codes(x)
        dev = tvm.cpu()
        return (tvm.runtime.tensor(np.ascontiguousarray(x, dtype=spec.a_dtype), dev),
                *self.params,
                tvm.runtime.tensor(np.empty(self.out_shape, spec.out_dtype), dev))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run on numpy codes; returns the output codes (or int32 accumulators)."""
        args = self._args(x)
        self.kernel.lib["main"](*args)
        return args[-1].numpy()

    def timer(self, x: np.ndarray, number: int = 100, repeat: int = 1):
        """TVM ``time_evaluator`` over the whole layer with resident input / output."""
        import tvm

        args = self._args(x)
        evaluator = self.kernel.lib.mod.time_evaluator("main", tvm.cpu(), number=number,
                                                       repeat=repeat)
        return lambda: evaluator(*args)


def bind_layer(kernel, params: Sequence[np.ndarray], *, family: str,
               in_shape: Sequence[int], out_shape: Sequence[int],
               check_codes: Callable[[np.ndarray], None] | None = None) -> BoundLayer:
    """Upload ``params`` (C-contiguous copies) to the CPU device once; a :class:`BoundLayer`."""
    import tvm

    dev = tvm.cpu()
    return BoundLayer(kernel,
                      tuple(tvm.runtime.tensor(np.ascontiguousarray(p), dev) for p in params),
                      family, tuple(int(d) for d in in_shape), tuple(int(d) for d in out_shape),
                      check_codes)


def dyadic_params(family: str, requant, N: int, mult,
                  shift) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel dyadic ``(mult, shift)`` as int64 ``(N,)`` arrays for a layer's requant
    epilogue (empty when ``requant`` is None: accumulator-out mode). Checked, never clamped:
    ``mult`` in [0, 2^31) and ``shift`` in [0, MAX_SHIFT], as ``lowbit.ir.dyadic.to_dyadic``
    builds them."""
    from ...ir.dyadic import MAX_SHIFT

    if requant is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if mult is None or shift is None:
        raise LoweringError(f"{family}: requant mode needs mult and shift (to_dyadic)")
    mult_a = np.broadcast_to(np.asarray(mult, np.int64), (N,)).copy()
    shift_a = np.broadcast_to(np.asarray(shift, np.int64), (N,)).copy()
    if (np.any(mult_a < 0) or np.any(mult_a >= (1 << 31)) or np.any(shift_a < 0)
            or np.any(shift_a > MAX_SHIFT)):
        raise LoweringError(
            f"{family}: dyadic mult must be in [0, 2^31) and shift in [0, {MAX_SHIFT}]; "
            f"build them with lowbit.ir.dyadic.to_dyadic")
    return mult_a, shift_a
