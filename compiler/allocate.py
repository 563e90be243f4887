"""The bit / format / kernel allocator of ``--quant auto``: an ILP over a sensitivity table.

Given a :class:`~lowbit.passes.analysis.sensitivity.SensitivityTable` (layers ``l``,
candidates ``c``, damage ``s[l, c]``, packed weight bytes ``B[l, c]``), per-candidate latencies
``T[l, c]`` (ms, ``costs``) and a :class:`Budget`, :func:`allocate` solves::

    minimise    sum_{l,c} s[l,c] x[l,c]
    subject to  sum_c x[l,c] = 1                      for every layer      (one-hot rows)
                sum_{l,c} B[l,c] x[l,c] <= size       bytes (or ratio * fp32 weight bytes)
                sum_{l,c} T[l,c] x[l,c] <= latency    ms (or ratio * latency of the int8 plan)
                sum_{l,c} b[c] P[l] x[l,c] <= bits * sum_l P[l]     (parameter-weighted mean)
                x[l,c] in {0, 1}

with ``b[c]`` the candidate's weight bits and ``P[l]`` the layer's parameter count, using
``scipy.optimize.milp`` (HiGHS). The *int8 plan* takes, per layer, the fastest candidate with
uniform 8-bit weights and 8-bit activations. The solution is checked against every budget
exactly (integer bytes for ``size``) and the ILP re-solved with a tightened row if a solver
tolerance let it slip. Same table, costs and budget -> same plan.

Budgets parse from the CLI string or a dict (:func:`parse_budget`): ``size=0.25`` (ratio of
fp32 weight bytes; a value > 1 or with a ``B`` / ``kB`` / ``MB`` suffix is bytes),
``latency=0.6x`` (ratio of the int8 plan) or ``latency=2.5ms``, ``bits=3.0``. An infeasible
budget raises :class:`QuantizationError` stating, for every budget given, the smallest feasible
value: ``sum_l min_c`` of that dimension (each dimension alone is separable per layer).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..ir.errors import QuantizationError
from .recipes import Recipe, preset, save_recipe

if TYPE_CHECKING:
    from ..passes.analysis.sensitivity import SensitivityTable

BUDGET_KEYS = ("size", "latency", "bits")
_BYTE_UNITS = {"b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3}


@dataclass(frozen=True, slots=True)
class Budget:
    """Upper bounds; None = unconstrained. ``size`` in bytes when ``size_unit == "bytes"`` else a
    ratio of fp32 weight bytes; ``latency`` in ms when ``latency_unit == "ms"`` else a ratio of
    the int8 plan's latency; ``bits`` the parameter-weighted mean weight bits."""

    size: float | None = None
    size_unit: str = "ratio"
    latency: float | None = None
    latency_unit: str = "x"
    bits: float | None = None

    def __post_init__(self):
        if self.size_unit not in ("ratio", "bytes"):
            raise QuantizationError(f"budget size unit {self.size_unit!r}: use ratio or bytes")
        if self.latency_unit not in ("x", "ms"):
            raise QuantizationError(f"budget latency unit {self.latency_unit!r}: use x or ms")
        for key in BUDGET_KEYS:
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise QuantizationError(f"budget {key}={value!r}: must be a positive number")

    def __str__(self) -> str:
        parts = []
        if self.size is not None:
            parts.append(f"size={_fmt_size(self.size, self.size_unit)}")
        if self.latency is not None:
            parts.append(f"latency={_fmt_latency(self.latency, self.latency_unit)}")
        if self.bits is not None:
            parts.append(f"bits={self.bits:g}")
        return ",".join(parts) or "(no budget)"


def _fmt_size(value: float, unit: str) -> str:
    return f"{int(value)}B" if unit == "bytes" else f"{value:g}"


def _fmt_latency(value: float, unit: str) -> str:
    return f"{value:g}ms" if unit == "ms" else f"{value:g}x"


def _number(text: str, key: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise QuantizationError(
            f"budget {spec!r}: {key} value {text!r} is not a number; e.g. size=0.25, "
            f"latency=0.6x, latency=2.5ms, bits=3.0") from None


def _parse_one(budget: dict, key: str, raw, spec: str) -> None:
    if key not in BUDGET_KEYS:
        raise QuantizationError(
            f"budget {spec!r}: unknown budget {key!r}; budgets are {', '.join(BUDGET_KEYS)}")
    if key in budget:
        raise QuantizationError(f"budget {spec!r}: {key} is given twice")
    text = str(raw).strip().lower().replace("_", "")
    if key == "size":
        match = re.fullmatch(r"([0-9.e+-]+)\s*(b|kb|mb|gb)?", text)
        if not match:
            raise QuantizationError(
                f"budget {spec!r}: size={raw!r}; use a ratio of fp32 (size=0.25) or bytes "
                f"(size=120000, size=120kB)")
        value = _number(match.group(1), key, spec)
        if match.group(2):
            budget["size"], budget["size_unit"] = value * _BYTE_UNITS[match.group(2)], "bytes"
        else:
            budget["size"], budget["size_unit"] = value, "ratio" if value <= 1 else "bytes"
    elif key == "latency":
        if text.endswith("ms"):
            budget["latency"], budget["latency_unit"] = _number(text[:-2], key, spec), "ms"
        elif text.endswith("x"):
            budget["latency"], budget["latency_unit"] = _number(text[:-1], key, spec), "x"
        else:
            raise QuantizationError(
                f"budget {spec!r}: latency={raw!r} needs a unit: 'x' (ratio of the int8 "
                f"plan, latency=0.6x) or 'ms' (latency=2.5ms)")
    else:
        budget["bits"] = _number(text, key, spec)


def parse_budget(spec) -> Budget:
    """A :class:`Budget` from ``"size=0.25,latency=0.6x,bits=3.0"``, a dict
    ``{"size": 0.25, "latency": "2.5ms"}`` or a Budget (returned as is)."""
    if isinstance(spec, Budget):
        return spec
    fields: dict = {}
    if isinstance(spec, str):
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if "=" not in part:
                raise QuantizationError(
                    f"budget {spec!r}: {part!r} is not key=value; e.g. size=0.25,latency=0.6x")
            key, value = part.split("=", 1)
            _parse_one(fields, key.strip(), value, spec)
    elif isinstance(spec, Mapping):
        for key, value in spec.items():
            _parse_one(fields, str(key), value, str(dict(spec)))
    else:
        raise QuantizationError(
            f"budget of type {type(spec).__name__}: pass a string like 'size=0.25' or a dict")
    if not any(k in fields for k in BUDGET_KEYS):
        raise QuantizationError(
            f"budget {spec!r} sets nothing; give size=, latency= and/or bits=")
    return Budget(**fields)


@dataclass(frozen=True, slots=True)
class AllocationRow:
    """One layer of a plan: weight ``format`` and ``bits`` (e.g. ``uniform``, ``w4a8``), kernel
    (``auto`` when the selector chooses), sensitivity, latency (ms, None when unknown) and
    packed weight bytes."""

    layer: str
    format: str
    bits: str
    kernel: str
    sensitivity: float
    latency_ms: float | None
    bytes: int


@dataclass(frozen=True)
class Plan:
    """The chosen candidate index per layer (``choice[l]`` into ``table.candidates``), with the
    table, the latency matrix (None without costs) and the budget it satisfies."""

    table: SensitivityTable
    choice: tuple[int, ...]
    latency: np.ndarray | None
    budget: Budget
    #: ``kernels[l][c]``: the family measured fastest for layer l at candidate c (None: the
    #: candidate's own kernel, or ``auto``)
    kernels: tuple[tuple[str, ...], ...] | None = None
    #: measured whole-model time outside the quantized layers (ms; None: unknown)
    remainder_ms: float | None = None
    #: ``kernel_ms[l, c]``: the layer kernel's own time when ``latency`` also carries a share
    #: of the rest of the model (None: ``latency`` is the kernel time)
    kernel_ms: np.ndarray | None = None

    @property
    def candidates(self) -> dict[str, str]:
        """layer name -> chosen candidate name."""
        return {info.name: self.table.candidates[c].name
                for info, c in zip(self.table.layers, self.choice)}

    def _pick(self, matrix: np.ndarray) -> float:
        return float(sum(matrix[l, c] for l, c in enumerate(self.choice)))

    @property
    def sensitivity(self) -> float:
        """Summed sensitivity of the chosen candidates (the ILP objective)."""
        return self._pick(self.table.sensitivity)

    @property
    def weight_bytes(self) -> int:
        """Packed weight bytes of all layers (as ``weight_size(...).packed`` counts them)."""
        return round(self._pick(self.table.weight_bytes))

    @property
    def latency_ms(self) -> float | None:
        """Summed latency of the chosen layer kernels (ms; None without costs)."""
        return None if self.latency is None else self._pick(self.latency)

    @property
    def kernels_ms(self) -> float | None:
        """Summed time of the chosen layer kernels alone (ms; None without costs)."""
        if self.latency is None:
            return None
        return self._pick(self.kernel_ms if self.kernel_ms is not None else self.latency)

    @property
    def predicted_ms(self) -> float | None:
        """Predicted whole-model latency: :attr:`latency_ms` plus :attr:`remainder_ms`."""
        if self.latency is None:
            return None
        return self._pick(self.latency) + (self.remainder_ms or 0.0)

    def kernel(self, l: int) -> str:
        """The kernel family of layer ``l`` in this plan (``auto``: the selector decides)."""
        cand = self.table.candidates[self.choice[l]]
        if cand.kernel is not None:
            return cand.kernel
        return self.kernels[l][self.choice[l]] if self.kernels is not None else "auto"

    @property
    def reconstructs(self) -> bool:
        """True when a chosen candidate :attr:`~lowbit.passes.analysis.Candidate.reconstructs`
        (any weights but uniform 7/8-bit); the plan then reconstructs its layers in order."""
        return any(self.table.candidates[c].reconstructs for c in self.choice)

    @property
    def mean_bits(self) -> float:
        """Parameter-weighted mean weight bits."""
        params = np.array([i.params for i in self.table.layers], dtype=np.float64)
        bits = np.array([self.table.candidates[c].weights.bits for c in self.choice])
        return float(np.dot(params, bits) / params.sum())

    def to_recipe(self) -> Recipe:
        """A recipe that quantizes exactly the planned layers at their candidates: base
        ``preset("none")`` (everything else float, no first/last rule) plus one ``nodes``
        override per layer with its format and measured-fastest kernel; reconstruction on when
        :attr:`reconstructs`; ``reduce_range`` off. Reusable with ``--recipe``."""
        nodes = {}
        for l, (info, c) in enumerate(zip(self.table.layers, self.choice)):
            override = self.table.candidates[c].override
            kernel = self.kernel(l)
            nodes[info.name] = replace(override, kernel=None if kernel == "auto" else kernel)
        base = preset("none")
        # the candidates were measured at their own bits: no target-dependent 7-bit weights
        return replace(base, nodes=nodes, reduce_range=False,
                       ptq=replace(base.ptq, reconstruct=self.reconstructs))

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_recipe` as TOML / JSON (by suffix), atomically."""
        return save_recipe(self.to_recipe(), path)

    def rows(self) -> list[AllocationRow]:
        """One row per layer, in graph order."""
        out = []
        for l, (info, c) in enumerate(zip(self.table.layers, self.choice)):
            cand = self.table.candidates[c]
            out.append(AllocationRow(
                info.name, cand.weights.format,
                f"w{cand.weights.bits}a{cand.activations.bits}", self.kernel(l),
                float(self.table.sensitivity[l, c]),
                None if self.latency is None else float(
                    (self.kernel_ms if self.kernel_ms is not None else self.latency)[l, c]),
                round(self.table.weight_bytes[l, c])))
        return out


def _latency_matrix(table, costs) -> np.ndarray | None:
    if costs is None:
        return None
    shape = (len(table.layers), len(table.candidates))
    if isinstance(costs, Mapping):
        matrix = np.full(shape, np.nan)
        for l, info in enumerate(table.layers):
            for c, cand in enumerate(table.candidates):
                if (info.name, cand.name) in costs:
                    matrix[l, c] = float(costs[(info.name, cand.name)])
        missing = [(table.layers[l].name, table.candidates[c].name)
                   for l, c in zip(*np.nonzero(np.isnan(matrix)))]
        if missing:
            raise QuantizationError(
                f"costs has no latency for {len(missing)} (layer, candidate) pairs, e.g. "
                f"{missing[0]}; give every pair of the sensitivity table")
    else:
        matrix = np.array(costs, dtype=np.float64)
        if matrix.shape != shape:
            raise QuantizationError(
                f"costs has shape {matrix.shape}; expected {shape} (layers x candidates, ms)")
    # NaN in an array: no kernel takes that layer at that candidate (excluded from the ILP)
    if np.any(np.isinf(matrix)) or np.any(matrix < 0):
        raise QuantizationError("costs: every latency must be a finite number of ms >= 0 "
                                "(NaN in an array: that candidate is impossible for the layer)")
    if np.any(np.all(np.isnan(matrix), axis=1)):
        l = int(np.nonzero(np.all(np.isnan(matrix), axis=1))[0][0])
        raise QuantizationError(
            f"layer '{table.layers[l].name}': no candidate has a latency (no kernel takes it "
            f"at any candidate); add a candidate the int8 or reference kernel accepts")
    return matrix


def _masked_min(matrix: np.ndarray, allowed: np.ndarray) -> float:
    """``sum_l min_{c allowed} matrix[l, c]``: the least any plan can spend on one row."""
    return float(np.where(allowed, matrix, np.inf).min(axis=1).sum())


def int8_candidates(table) -> list[int]:
    """Indices of the uniform w8a8 candidates (and their 7-bit twins, the int8 candidates of
    a ``reduce_range`` target: :func:`lowbit.passes.analysis.reduced_range`)."""
    return [c for c, cand in enumerate(table.candidates)
            if cand.weights.format == "uniform" and cand.weights.bits in (7, 8)
            and cand.activations.format == "uniform" and cand.activations.bits == 8]


def int8_latency(table, latency: np.ndarray, remainder_ms: float = 0.0) -> float:
    """Latency (ms) of the int8 plan: per layer the fastest w8a8 uniform candidate, plus the
    measured remainder of the model."""
    int8 = int8_candidates(table)
    if not int8:
        raise QuantizationError(
            "latency=...x is a ratio of the int8 plan, but no candidate is uniform w8a8; add "
            "one or give the latency budget in ms (latency=2.5ms)")
    sub = latency[:, int8]
    if np.any(np.all(np.isnan(sub), axis=1)):
        raise QuantizationError(
            "latency=...x is a ratio of the int8 plan, but a layer has no w8a8 kernel; give "
            "the latency budget in ms (latency=2.5ms)")
    return float(np.nanmin(sub, axis=1).sum()) + remainder_ms


def _rows(table, latency, budget: Budget, remainder_ms: float = 0.0):
    """(name, coefficient matrix, limit) per budget given; the latency row bounds the layer
    kernels' sum, i.e. the budget minus the remainder."""
    params = np.array([i.params for i in table.layers], dtype=np.float64)
    fp32 = float(sum(i.fp32_bytes for i in table.layers))
    rows = []
    if budget.size is not None:
        limit = budget.size if budget.size_unit == "bytes" else budget.size * fp32
        rows.append(("size", np.asarray(table.weight_bytes, dtype=np.float64),
                     float(math.floor(limit + 1e-9))))
    if budget.latency is not None:
        if latency is None:
            raise QuantizationError(
                "a latency budget needs per-candidate latencies: pass costs= "
                "{(layer, candidate): ms}")
        limit = budget.latency if budget.latency_unit == "ms" \
            else budget.latency * int8_latency(table, latency, remainder_ms)
        rows.append(("latency", np.nan_to_num(latency), limit - remainder_ms))
    if budget.bits is not None:
        bits = np.array([c.weights.bits for c in table.candidates], dtype=np.float64)
        rows.append(("bits", np.outer(params, bits), budget.bits * params.sum()))
    return rows


def _up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` decimals (a suggested budget must itself be met)."""
    return math.ceil(value * 10 ** digits - 1e-6) / 10 ** digits


def _smallest(table, latency, budget: Budget, name: str, matrix: np.ndarray,
              allowed: np.ndarray, remainder_ms: float = 0.0) -> str:
    """The smallest feasible value of one budget dimension, in the user's unit, rounded up."""
    least = _masked_min(matrix, allowed)
    if name == "size":
        fp32 = sum(i.fp32_bytes for i in table.layers)
        return f"size={_up(least / fp32)} ({round(least)} bytes)" \
            if budget.size_unit == "ratio" else f"size={round(least)}B"
    if name == "latency":
        least += remainder_ms
        if budget.latency_unit == "ms":
            return f"latency={_up(least)}ms"
        base = int8_latency(table, latency, remainder_ms)
        return f"latency={_up(least / base)}x ({_up(least)}ms)"
    params = sum(i.params for i in table.layers)
    return f"bits={_up(least / params)}"


def _solve(cost: np.ndarray, rows, layers: int, candidates: int, allowed: np.ndarray):
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = layers * candidates
    one_hot = np.zeros((layers, n))
    for l in range(layers):
        one_hot[l, l * candidates:(l + 1) * candidates] = 1.0
    constraints = [LinearConstraint(one_hot, 1.0, 1.0)]
    for _, matrix, limit in rows:
        scale = limit if limit > 0 else 1.0
        constraints.append(LinearConstraint(matrix.reshape(1, n) / scale, -np.inf, limit / scale))
    upper = allowed.reshape(n).astype(np.float64)
    result = milp(cost.reshape(n), integrality=np.ones(n), bounds=Bounds(0, upper),
                  constraints=constraints, options={"mip_rel_gap": 0.0, "presolve": True})
    if result.x is None:
        return None
    x = np.rint(result.x).reshape(layers, candidates)
    assert np.all(x.sum(axis=1) == 1), "one-hot rows violated"
    return tuple(int(np.argmax(row)) for row in x)


def allocate(table, costs=None, budget="size=1.0", *, kernels=None,
             remainder_ms: float | None = None, kernel_ms=None) -> Plan:
    """Choose one candidate per layer of ``table`` minimising summed sensitivity under
    ``budget`` (a :class:`Budget`, CLI string or dict; None: no bound, the least damaging
    plan); ``costs`` holds the latency in ms of every (layer name, candidate name) pair, as a
    dict or a layers x candidates array in which NaN marks a candidate no kernel takes for that
    layer (needed only for a latency budget). ``kernels[l][c]``: the family measured for each
    pair (recorded in the plan); ``remainder_ms``: the measured time outside the layers, added
    to every plan's predicted latency; ``kernel_ms``: the kernels' own times when ``costs``
    include shares of the rest (shown in :meth:`Plan.rows`). The ILP and the infeasibility
    message: module docstring."""
    budget = Budget() if budget is None else parse_budget(budget)
    latency = _latency_matrix(table, costs)
    layers, cands = len(table.layers), len(table.candidates)
    allowed = np.ones((layers, cands), dtype=bool) if latency is None else ~np.isnan(latency)
    rem = remainder_ms or 0.0
    rows = _rows(table, latency, budget, rem)
    too_tight = [(name, m) for name, m, limit in rows
                 if _masked_min(m, allowed) > limit * (1 + 1e-9) + 1e-12]
    if too_tight:
        raise QuantizationError(
            f"budget {budget} is infeasible; smallest feasible: "
            + ", ".join(_smallest(table, latency, budget, n, m, allowed, rem)
                        for n, m in too_tight))
    # Shift each row by its minimum (a constant under one-hot rows) and scale so that the
    # smallest nonzero excess is 1: HiGHS's absolute gap tolerance then cannot hide a better plan.
    sens = np.where(allowed, np.asarray(table.sensitivity, dtype=np.float64), np.inf)
    excess = sens - sens.min(axis=1, keepdims=True)
    positive = excess[np.isfinite(excess) & (excess > 0)]
    cost = excess / positive.min() if positive.size else excess
    cost = np.where(allowed, cost, 0.0)
    for _attempt in range(4):
        choice = _solve(cost, rows, layers, cands, allowed)
        if choice is None:
            raise QuantizationError(
                f"budget {budget} is infeasible: each budget alone can be met (smallest: "
                + ", ".join(_smallest(table, latency, budget, n, m, allowed, rem)
                            for n, m, _ in rows)
                + ") but not all together; relax one of them")
        slips = [(i, float(sum(m[l, c] for l, c in enumerate(choice))) - limit)
                 for i, (_, m, limit) in enumerate(rows)]
        slips = [(i, over) for i, over in slips if over > 1e-9 * max(1.0, abs(rows[i][2]))]
        if not slips:
            return Plan(table, choice, latency, budget, kernels, remainder_ms,
                        None if kernel_ms is None else np.asarray(kernel_ms, dtype=np.float64))
        for i, over in slips:  # a solver tolerance let a row slip: tighten it and re-solve
            name, matrix, limit = rows[i]
            rows[i] = (name, matrix, limit - 2 * over)
    raise AssertionError("the ILP kept violating a budget row after tightening")


__all__ = ["BUDGET_KEYS", "AllocationRow", "Budget", "Plan", "allocate", "int8_candidates",
           "int8_latency",
           "parse_budget"]
