"""calibrate: choose the scale / zero point of every activation FakeQuant from sample data.

Rule: run the calibration batches through the fake-quant graph with a
:class:`~lowbit.runtime.reference.Interpreter` subclass in which *uncalibrated* activation
FakeQuants pass their input through unchanged while feeding one observer each (weights and
already-calibrated activations are fake-quantized as usual). After the last batch every
uncalibrated activation FakeQuant gets a new frozen :class:`~lowbit.ir.attrs.FakeQuantAttrs`:

* uniform: ``(lo, hi) = observer.range()`` with the observer of ``method`` (minmax |
  percentile | mse | entropy, :data:`lowbit.passes.calibration.OBSERVERS`), then
  ``activation_qtype(lo, hi, bits, signed)`` (range widened to contain 0 so zero is exact;
  ``s = (hi - lo) / (2^b - 1)``, ``zp = clamp(qmin - rint(lo / s))``). With
  ``meta["signed_auto"]`` the codes are unsigned when ``lo >= 0``, signed otherwise.
* binary (sign activations): codes ``sign(x)`` with ``sign(0) = +1``, one per-tensor scale
  ``alpha = mean |x|`` over all calibration data (XNOR-Net).

The observed range is recorded as ``node.meta["calib_range"]``. Batches run in order and the
observers are deterministic, so the result is too. A rich progress bar over batches is shown
only when stderr is a terminal. ``changed`` is False when no FakeQuant was uncalibrated.

:class:`FakeQuantInterpreter` (the float fake-quant simulator used here and by the PTQ passes)
and :func:`capture_values` (run batches and keep chosen intermediate values) live here too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import numpy as np

from ..compiler.calib_data import CalibrationSet, load_calibration
from ..ir import Graph, Node, Op, Value
from ..ir.attrs import FakeQuantAttrs
from ..ir.errors import CalibrationError
from ..ir.qformats import activation_qtype, dequantize, quantize
from ..ir.qtype import QKind, QType
from ..runtime.reference import Interpreter
from .base import Pass, PassResult
from .calibration import OBSERVERS, EntropyObserver, MSEObserver, Observer


def is_calibrated(qtype: QType) -> bool:
    """True when the QType has its parameters (a scale, or a codebook)."""
    return bool(qtype.scale) or bool(qtype.codebook)


def fake_quantize(x: np.ndarray, qtype: QType) -> np.ndarray:
    """``dequantize(quantize(x, qtype), qtype)`` in x's float dtype."""
    return dequantize(quantize(x, qtype), qtype).astype(x.dtype, copy=False)


class FakeQuantInterpreter(Interpreter):
    """The float fake-quant simulator: the reference interpreter where ``FakeQuant`` computes
    ``dequantize(quantize(x, qtype), qtype)`` (:mod:`lowbit.ir.qformats`). An uncalibrated
    activation FakeQuant is an error (run the calibrate pass first)."""

    def run_node(self, node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        if node.op != Op.FAKE_QUANT:
            return super().run_node(node, inputs)
        qtype = node.attrs.qtype
        if not is_calibrated(qtype):
            return self.uncalibrated(node, inputs[0])
        return [fake_quantize(inputs[0], qtype)]

    def uncalibrated(self, node: Node, x: np.ndarray) -> list[np.ndarray]:
        """Hook for FakeQuants without a scale; the simulator refuses them."""
        raise CalibrationError(
            f"FakeQuant node '{node.name}' ({node.attrs.role}) has no scale yet; run the "
            f"calibrate pass (lowbit.quantize does) before simulating")


class _ObservingInterpreter(FakeQuantInterpreter):
    """Uncalibrated activation FakeQuants pass through and feed ``observers[node.name]``."""

    def __init__(self, graph: Graph, observers: dict[str, Observer | _MeanAbs]):
        super().__init__(graph)
        self.observers = observers

    def uncalibrated(self, node, x):
        self.observers[node.name].update(x)
        return [x]


class _MeanAbs:
    """Running ``mean |x|`` (the scale of binary activations)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, x) -> None:
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise CalibrationError("binary activation calibration saw NaN/inf values; fix the "
                                   "model or the calibration data")
        self.total += float(np.abs(x).sum())
        self.count += x.size

    def scale(self) -> float:
        if self.count == 0:
            raise CalibrationError("binary activation observer has seen no data")
        return self.total / self.count


def make_observer(method: str, bits: int) -> Observer:
    """The observer ``method`` for ``bits``-bit activations."""
    if method not in OBSERVERS:
        raise CalibrationError(
            f"unknown calibration method {method!r}; valid: {', '.join(OBSERVERS)}")
    if method == "mse":
        return MSEObserver(bits=bits)
    if method == "entropy":
        return EntropyObserver(bits=bits)
    return OBSERVERS[method]()


def graph_input_types(graph: Graph) -> dict:
    """``{name: (DType, bound shape)}`` of the graph inputs (what load_calibration checks)."""
    return {v.name: (v.dtype, v.shape) for v in graph.inputs}


def as_calibration_set(graph: Graph, calib) -> CalibrationSet:
    """``calib`` as a checked :class:`CalibrationSet` for ``graph``'s bound inputs."""
    if isinstance(calib, CalibrationSet):
        return calib
    if calib is None:
        raise CalibrationError(
            "calibration needs sample data: pass calib= a .npz path, a dict {input name: "
            "samples} or an iterable of feed dicts (CLI: --calib FILE.npz)")
    return load_calibration(calib, graph_input_types(graph))


def batches(calib: CalibrationSet, description: str) -> Iterable[Mapping[str, np.ndarray]]:
    """Iterate the calibration batches with a rich progress bar (only on a terminal)."""
    from rich.progress import Progress

    with Progress(transient=True, disable=not sys.stderr.isatty(),
                  console=_stderr_console()) as progress:
        task = progress.add_task(description, total=len(calib))
        for feed in calib:
            yield feed
            progress.advance(task)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


class _Captured(Exception):  # noqa: N818 (a signal, not an error)
    """Raised inside :func:`capture_values`' run once every wanted value has been seen."""


def capture_values(graph: Graph, calib: CalibrationSet, values: list[Value],
                   description: str = "collecting",
                   initial_envs=None) -> dict[str, np.ndarray]:
    """Run every calibration batch through the fake-quant simulator and return the arrays of
    ``values`` (by name), batches concatenated along axis 0. ``initial_envs`` (one
    ``{value name: array}`` per batch, or None) resumes each run from known values
    (:meth:`~lowbit.runtime.reference.Interpreter.run`'s ``initial_env``). A run stops at the
    first node after every wanted value has been read: the rest of the graph is not run."""
    wanted = {id(v): v.name for v in values}
    parts: dict[str, list[np.ndarray]] = {v.name: [] for v in values}

    class _Capture(FakeQuantInterpreter):
        def run_node(self, node, inputs):
            for v, array in zip(node.inputs, inputs):
                if v is not None and id(v) in wanted and id(v) not in self.seen:
                    parts[wanted[id(v)]].append(np.array(array))
                    self.seen.add(id(v))
            if len(self.seen) == len(wanted):
                raise _Captured  # the rest of the graph is not needed
            return super().run_node(node, inputs)

    for i, feed in enumerate(batches(calib, description)):
        interp = _Capture(graph)
        interp.seen = set()
        try:
            interp.run(feed, initial_env=None if initial_envs is None else initial_envs[i])
        except _Captured:
            pass
    return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items() if chunks}


class Calibrate(Pass):
    """Fill scale / zero point of every uncalibrated activation FakeQuant from calibration data
    (rule and formulas in the module docstring). ``calib``: a CalibrationSet or anything
    :func:`~lowbit.compiler.calib_data.load_calibration` accepts; ``method``: minmax |
    percentile | mse | entropy."""

    name = "calibrate"
    in_place = True

    def __init__(self, calib, method: str = "minmax"):
        if method not in OBSERVERS:
            raise CalibrationError(
                f"unknown calibration method {method!r}; valid: {', '.join(OBSERVERS)}")
        self.calib = calib
        self.method = method

    def run(self, graph: Graph) -> PassResult:
        todo = [n for n in graph.nodes if n.op == Op.FAKE_QUANT
                and n.attrs.role == "activation" and not is_calibrated(n.attrs.qtype)]
        if not todo:
            return PassResult(graph, False)
        calib = as_calibration_set(graph, self.calib)
        observers = {node.name: observer_for(node, self.method) for node in todo}
        interp = _ObservingInterpreter(graph, observers)
        for feed in batches(calib, f"calibrating ({self.method})"):
            interp.run(feed)
        for node in todo:
            node.attrs = FakeQuantAttrs(fit_observed(node, observers[node.name]), "activation")
        return PassResult(graph, True)


def observer_for(node: Node, method: str) -> Observer | _MeanAbs:
    """A fresh observer for the activation FakeQuant ``node``: ``mean |x|`` for binary, else
    :func:`make_observer` of ``method`` at the node's bits."""
    qtype = node.attrs.qtype
    return _MeanAbs() if qtype.kind == QKind.BINARY else make_observer(method, qtype.bits)


def calibrate_node(node: Node, arrays: Iterable[np.ndarray], method: str = "minmax") -> None:
    """Calibrate one activation FakeQuant from the arrays its input takes (one per batch, in
    order) -- what :class:`Calibrate` does for that node when the arrays are already known
    (e.g. a float value upstream of every other FakeQuant). Same observers, same rule."""
    observer = observer_for(node, method)
    for array in arrays:
        observer.update(array)
    node.attrs = FakeQuantAttrs(fit_observed(node, observer), "activation")


def fit_observed(node: Node, observer) -> QType:
    """The calibrated QType of activation FakeQuant ``node`` from its filled ``observer``
    (module docstring); records ``node.meta["calib_range"]``."""
    qtype = node.attrs.qtype
    if qtype.kind == QKind.BINARY:
        alpha = observer.scale()
        node.meta["calib_range"] = f"mean|x|={alpha:.6g}"
        return QType(QKind.BINARY, 1, True, scale=(alpha if alpha > 0 else 1.0,))
    if qtype.kind != QKind.UNIFORM:
        raise CalibrationError(
            f"FakeQuant node '{node.name}': activations are uniform or binary, not "
            f"{qtype.kind.value}; fix the recipe's activation format")
    lo, hi = observer.range()
    node.meta["calib_range"] = f"[{lo:.6g}, {hi:.6g}]"
    signed = lo < 0 if node.meta.get("signed_auto") else qtype.signed
    return activation_qtype(lo, hi, qtype.bits, signed)
