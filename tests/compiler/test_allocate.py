"""allocate: ILP optimality vs brute force, budgets, infeasibility messages, determinism, and a
size-budgeted plan for the digits CNN that compiles and meets its budget."""

import dataclasses
import itertools
import re
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.compiler.allocate import Budget, allocate, int8_latency, parse_budget
from lowbit.compiler.quantize import weight_size
from lowbit.compiler.recipes import ActSpec, WeightSpec, load_recipe
from lowbit.ir.errors import QuantizationError
from lowbit.passes.analysis import Candidate, LayerInfo, SensitivityTable, layer_sensitivity

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHAPES = {"input": (16, 1, 8, 8)}

CANDS = (
    Candidate("w8a8", WeightSpec("uniform", 8), ActSpec(8)),
    Candidate("w4a8", WeightSpec("uniform", 4), ActSpec(8)),
    Candidate("w2a8", WeightSpec("uniform", 2), ActSpec(8)),
    Candidate("b1a8", WeightSpec("binary", 1), ActSpec(8), kernel="bitserial"),
)


def synthetic(seed: int, layers: int = 5):
    """A random table with monotone trade-offs (fewer bits: more damage, fewer bytes, faster)."""
    rng = np.random.default_rng(seed)
    params = rng.integers(50, 5000, size=layers)
    infos = tuple(LayerInfo(f"layer{i}", "Conv", int(p)) for i, p in enumerate(params))
    bits = np.array([c.weights.bits for c in CANDS])
    nbytes = np.ceil(np.outer(params, bits) / 8) + 8
    sens = np.sort(rng.uniform(1e-5, 1.0, size=(layers, len(CANDS))), axis=1)
    sens *= rng.uniform(0.1, 10, size=(layers, 1))
    latency = np.outer(rng.uniform(0.1, 2.0, size=layers), [1.0, 0.7, 0.5, 0.3])
    latency += rng.uniform(0, 0.05, size=latency.shape)
    return SensitivityTable(infos, CANDS, sens, nbytes), latency


def brute_force(table, latency, limits):
    """Best summed sensitivity over every assignment meeting (bytes, ms, mean bits) limits."""
    params = np.array([i.params for i in table.layers])
    bits = np.array([c.weights.bits for c in table.candidates])
    best = None
    for choice in itertools.product(range(len(table.candidates)), repeat=len(table.layers)):
        rows = range(len(choice))
        size = sum(table.weight_bytes[l, c] for l, c in zip(rows, choice))
        ms = sum(latency[l, c] for l, c in zip(rows, choice))
        mean_bits = float(np.dot(params, bits[list(choice)]) / params.sum())
        if size > limits[0] or ms > limits[1] + 1e-12 or mean_bits > limits[2] + 1e-12:
            continue
        value = sum(table.sensitivity[l, c] for l, c in zip(rows, choice))
        best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_ilp_matches_brute_force(seed):
    table, latency = synthetic(seed)
    fp32 = sum(i.fp32_bytes for i in table.layers)
    int8_ms = int8_latency(table, latency)
    budget = {"size": 0.12, "latency": "0.7x", "bits": 4.5}
    plan = allocate(table, latency, budget)
    best = brute_force(table, latency, (int(0.12 * fp32), 0.7 * int8_ms, 4.5))
    assert best is not None
    assert plan.choice != (0,) * len(table.layers)  # the budget binds (w8a8 is the free optimum)
    assert plan.sensitivity == pytest.approx(best, rel=1e-9)
    assert plan.weight_bytes <= 0.12 * fp32
    assert plan.latency_ms <= 0.7 * int8_ms + 1e-12
    assert plan.mean_bits <= 4.5 + 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_size_budget_in_bytes_is_exact_and_optimal(seed):
    table, latency = synthetic(100 + seed, layers=6)
    total = table.weight_bytes.min(axis=1).sum()
    limit = int(total + 0.3 * (table.weight_bytes[:, 0].sum() - total))
    plan = allocate(table, None, f"size={limit}")
    assert plan.weight_bytes <= limit
    assert plan.sensitivity == pytest.approx(brute_force(table, latency, (limit, 1e9, 99)))
    # the budget binds: the unconstrained optimum (all w8a8) does not fit
    assert table.weight_bytes[:, 0].sum() > limit


def test_latency_in_ms_and_dict_costs():
    table, latency = synthetic(7, layers=4)
    costs = {(i.name, c.name): float(latency[l, k])
             for l, i in enumerate(table.layers) for k, c in enumerate(table.candidates)}
    limit = float(latency[:, 2].sum())
    plan = allocate(table, costs, f"latency={limit}ms")
    assert plan.latency_ms <= limit + 1e-12
    assert plan.sensitivity == pytest.approx(brute_force(table, latency, (1e12, limit, 99)))


def test_infeasible_states_smallest_values():
    table, latency = synthetic(3)
    fp32 = sum(i.fp32_bytes for i in table.layers)
    least_bytes = int(table.weight_bytes.min(axis=1).sum())
    least_ms = float(latency.min(axis=1).sum())
    with pytest.raises(QuantizationError, match="infeasible") as info:
        allocate(table, latency, "size=0.001,latency=0.0001ms,bits=0.5")
    text = str(info.value).split("smallest feasible:")[1]
    assert f"({least_bytes} bytes)" in text
    ratio = float(re.search(r"size=([0-9.]+)", text).group(1))
    assert least_bytes / fp32 <= ratio < least_bytes / fp32 + 1e-4
    ms = float(re.search(r"latency=([0-9.]+)ms", text).group(1))
    assert least_ms <= ms < least_ms + 1e-4
    assert "bits=1.0" in text  # the binary candidate everywhere
    # the stated smallest size is itself feasible
    allocate(table, latency, f"size={ratio}")
    with pytest.raises(QuantizationError, match=r"smallest feasible: size=\d+B"):
        allocate(table, latency, f"size={least_bytes - 1}")


def test_jointly_infeasible_budgets_say_so():
    table, latency = synthetic(11, layers=3)
    # make binary (the only candidate at the smallest size) the slowest: the least size and the
    # least latency can each be met, not both
    latency = latency[:, ::-1].copy()
    least_bytes = int(table.weight_bytes.min(axis=1).sum())
    least_ms = float(latency.min(axis=1).sum())
    with pytest.raises(QuantizationError, match="not all together"):
        allocate(table, latency, {"size": f"{least_bytes}B", "latency": f"{least_ms}ms"})


def test_same_inputs_same_plan():
    table, latency = synthetic(5, layers=8)
    plans = [allocate(table, latency, "size=0.15,latency=0.8x") for _ in range(2)]
    assert plans[0].choice == plans[1].choice
    assert plans[0].rows() == plans[1].rows()


def test_parse_budget():
    assert parse_budget("size=0.25,latency=0.6x,bits=3.0") == Budget(0.25, "ratio", 0.6, "x", 3.0)
    assert parse_budget("latency=2.5ms") == Budget(latency=2.5, latency_unit="ms")
    assert parse_budget({"size": "12kB"}) == Budget(12000, "bytes")
    assert parse_budget({"size": 4096}) == Budget(4096, "bytes")
    with pytest.raises(QuantizationError, match="needs a unit"):
        parse_budget("latency=2.5")
    with pytest.raises(QuantizationError, match="unknown budget 'sise'"):
        parse_budget("sise=0.25")
    with pytest.raises(QuantizationError, match="given twice"):
        parse_budget("size=0.2,size=0.3")
    with pytest.raises(QuantizationError, match="positive"):
        parse_budget("bits=-1")


def test_int8_candidates_include_the_7_bit_twins():
    from lowbit.compiler.allocate import int8_candidates
    from lowbit.passes.analysis import reduced_range

    table, _ = synthetic(0, layers=2)
    twins = dataclasses.replace(table, candidates=reduced_range(table.candidates))
    assert int8_candidates(twins) == int8_candidates(table) == [0]
    assert twins.candidates[0].name == "w7a8" and twins.candidates[0].weights.bits == 7
    assert twins.candidates[1:] == table.candidates[1:]  # only 8-bit weights change


def test_rows_recipe_and_save(tmp_path):
    table, latency = synthetic(2, layers=3)
    plan = allocate(table, latency, "bits=3")
    rows = plan.rows()
    assert [r.layer for r in rows] == ["layer0", "layer1", "layer2"]
    assert sum(r.bytes for r in rows) == plan.weight_bytes
    recipe = plan.to_recipe()
    # the candidates were measured at their own bits: the target must not reduce them
    assert recipe.reduce_range is False
    for row, info in zip(rows, table.layers):
        spec = recipe.spec_for(info.name, "Conv")
        assert f"w{spec.weights.bits}a{spec.activations.bits}" == row.bits
        assert (spec.kernel or "auto") == row.kernel
    assert recipe.spec_for("other", "Conv") is None
    path = plan.save(tmp_path / "plan.toml")
    assert load_recipe(path) == recipe


def test_digits_size_budget_plan_compiles_within_budget():
    cands = (
        Candidate("w8a8", WeightSpec("uniform", 8), ActSpec(8)),
        Candidate("w4a8", WeightSpec("uniform", 4), ActSpec(8)),
        Candidate("w2a8", WeightSpec("uniform", 2), ActSpec(8)),
        Candidate("ternarya8", WeightSpec("ternary", 2), ActSpec(8)),
        Candidate("binarya8", WeightSpec("binary", 1), ActSpec(8)),
    )
    model, calib = EXAMPLES / "digits_cnn.onnx", EXAMPLES / "digits_calib.npz"
    table = layer_sensitivity(model, cands, calib, SHAPES)
    plan = allocate(table, None, "size=0.25")
    fp32 = sum(i.fp32_bytes for i in table.layers)
    assert plan.weight_bytes <= 0.25 * fp32
    graph = lowbit.quantize(model, calib=calib, recipe=plan.to_recipe(), input_shapes=SHAPES)
    size = weight_size(graph)
    assert size.fp32 == fp32
    assert size.packed == plan.weight_bytes
    assert size.packed <= 0.25 * size.fp32
    assert size.quantized == len(table.layers)
