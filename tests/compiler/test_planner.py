"""planner (--quant auto) on the digits CNN: measured costs, budgets honoured by the compiled
artifact, the saved plan as a recipe, determinism, the accuracy-aware search, the CLI and its
one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.compiler.cli import main
from lowbit.compiler.eval_data import load_eval, top1
from lowbit.compiler.planner import Planner, format_plan
from lowbit.compiler.quantize import weight_size
from lowbit.compiler.recipes import ActSpec, WeightSpec, load_recipe
from lowbit.ir.errors import CalibrationError, QuantizationError
from lowbit.passes.analysis import DEFAULT_CANDIDATES, Candidate, reduced_range
from lowbit.passes.analysis import sensitivity as sensitivity_module
from lowbit.passes.calibrate import graph_input_types

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = str(EXAMPLES / "digits_cnn.onnx")
EVAL = str(EXAMPLES / "digits_eval.npz")
SHAPES = {"input": (30, 1, 8, 8)}
# formats that need no layer-wise reconstruction (keeps compiles fast)
CANDS = (
    Candidate("w8a8", WeightSpec("uniform", 8), ActSpec(8)),
    Candidate("w4a8", WeightSpec("uniform", 4), ActSpec(8)),
    Candidate("w4a4", WeightSpec("uniform", 4), ActSpec(4)),
    Candidate("w3a8", WeightSpec("uniform", 3), ActSpec(8)),
)


def _calib():
    with np.load(EXAMPLES / "digits_calib.npz") as data:
        return {"input": data["input"][:60]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("latency-cache")


@pytest.fixture(scope="module")
def planner(cache):
    return Planner(MODEL, "x86", _calib(), input_shapes=SHAPES, candidates=CANDS,
                   cache_dir=cache)


def test_costs_are_measured_for_every_layer_and_candidate(planner):
    costs = planner.costs
    assert costs.measured
    assert costs.ms.shape == (4, len(CANDS))
    assert np.all(np.isfinite(costs.ms)) and np.all(costs.ms > 0)
    families = {f for row in costs.family for f in row}
    assert families <= {"int8", "bitserial", "lut", "shiftadd", "shiftadd_int8", "amx",
                        "reference"}
    # the rest may be negative (layers timed alone pay what the whole model fuses), never
    # more negative than the layers themselves
    assert planner.remainder_ms is not None
    assert planner.remainders.shape == (len(CANDS),)
    assert np.all(planner.remainders > -planner.costs.ms.sum(axis=0))
    plan = planner.allocate(None)
    # predicted = the chosen kernels, each scaled by its candidate's whole / kernels factor
    ms, rem = planner.costs.ms, planner.remainders
    factor = 1 + rem / ms.sum(axis=0)
    assert plan.predicted_ms == pytest.approx(
        sum(ms[l, c] * factor[c] for l, c in enumerate(plan.choice)))
    mixed = [l % len(CANDS) for l in range(len(plan.choice))]  # a plan of several candidates
    assert planner.latency_matrix[range(len(mixed)), mixed].sum() == pytest.approx(
        sum(ms[l, c] * factor[c] for l, c in enumerate(mixed)))
    # rows show the kernels' own times
    assert all(r.latency_ms == pytest.approx(planner.costs.ms[l, c])
               for l, (r, c) in enumerate(zip(plan.rows(), plan.choice)))
    # a uniform plan predicts the measured whole-model time of its graph (kernels + rest)
    assert planner.latency_matrix[:, 0].sum() == pytest.approx(
        planner.costs.ms[:, 0].sum() + planner.remainders[0])
    # the least damaging plan: every layer at its lowest-sensitivity candidate
    best = planner.table.sensitivity.argmin(axis=1)
    assert plan.sensitivity == pytest.approx(planner.table.sensitivity.min(axis=1).sum())
    assert len(best) == len(plan.choice)


def test_size_budget_is_honoured_exactly_by_the_compiled_model(planner):
    fp32 = sum(i.fp32_bytes for i in planner.table.layers)
    plan = planner.allocate("size=0.14")
    assert plan.weight_bytes <= int(0.14 * fp32)
    result = planner.compile(plan)
    assert weight_size(result.graph).packed == plan.weight_bytes
    # each layer got the planned format and the measured-fastest kernel
    kinds = {r.layer: r for r in result.artifact.plan}
    for row in plan.rows():
        details = dict(kinds[row.layer].details)
        assert kinds[row.layer].kernel == row.kernel
        assert row.bits.startswith(f"w{details['w_bits']}a{details['a_bits']}")
        assert details["sensitivity"] == pytest.approx(row.sensitivity)


def test_latency_budget_binds_and_is_met_by_the_prediction(planner):
    free = planner.allocate(None)
    fastest = planner.latency_matrix.min(axis=1).sum()
    limit = (free.predicted_ms + fastest) / 2
    plan = planner.allocate(f"latency={limit}ms")
    assert plan.predicted_ms <= limit + 1e-9
    with pytest.raises(QuantizationError, match=r"smallest feasible: latency=[0-9.]+ms"):
        planner.allocate(f"latency={fastest * 0.5}ms")


def test_plan_is_deterministic_and_saves_as_a_recipe(planner, cache, tmp_path):
    sensitivity_module.clear_cache()
    again = Planner(MODEL, "x86", _calib(), input_shapes=SHAPES, candidates=CANDS,
                    cache_dir=cache, sensitivity_cache=False)  # sensitivities recomputed
    _ = planner.costs  # measured once and written to the costs cache

    def forbidden(*args, **kwargs):
        raise AssertionError("costs were measured again despite the costs cache")

    with pytest.MonkeyPatch.context() as mp:  # a warm cache: no quantizing, no timing
        mp.setattr(Planner, "_measure_costs", forbidden)
        a, b = planner.allocate("size=0.2"), again.allocate("size=0.2")
        assert a.choice == b.choice and a.rows() == b.rows()
        np.testing.assert_array_equal(again.latency_matrix, planner.latency_matrix)
    assert list((cache / "costs").glob("*.json"))
    path = a.save(tmp_path / "plan.toml")
    recipe = load_recipe(path)
    graph = lowbit.quantize(MODEL, recipe=recipe, calib=_calib(), input_shapes=SHAPES)
    assert weight_size(graph).packed == a.weight_bytes
    assert recipe.nodes.keys() == set(planner.layer_names)


def test_lowbit_plan_takes_a_dict_budget(cache):
    plan = lowbit.plan(MODEL, "x86", _calib(), budget={"size": 0.2}, input_shapes=SHAPES,
                       candidates=CANDS, cache_dir=cache)
    assert plan.budget.size == 0.2
    text = format_plan(plan, measured_ms=1.0)
    assert "sensitivity" in text and "measured 1.0000 ms" in text
    with pytest.raises(QuantizationError, match="max_drop and eval go together"):
        lowbit.plan(MODEL, "x86", _calib(), max_drop=1.0, input_shapes=SHAPES)


def test_accuracy_aware_search_stays_within_the_drop(planner):
    data = planner.eval_set(EVAL)
    fp32 = planner.float_accuracy(data)
    plan, measured = planner.search(data, max_drop=1.0, steps=2)
    assert measured.accuracy >= fp32 - 1.0
    assert measured.ms is not None and measured.bytes == plan.weight_bytes
    with pytest.raises(QuantizationError, match="max_drop"):
        planner.search(data, max_drop=-1)


def test_eval_data_checks_and_top1():
    types = graph_input_types(lowbit.import_onnx(MODEL, input_shapes=SHAPES))
    data = load_eval(EVAL, types)
    assert len(data) == 540
    perfect = top1(lambda feed: np.eye(10)[np.zeros(len(feed["input"]), int)], data, 30)
    assert perfect == pytest.approx(100.0 * np.mean(data.labels == 0))
    with pytest.raises(CalibrationError, match="no 'labels'"):
        load_eval({"input": data.arrays["input"]}, types)
    with pytest.raises(CalibrationError, match="one label per sample"):
        load_eval({"input": data.arrays["input"], "labels": data.labels[:5]}, types)


# -- CLI ---------------------------------------------------------------------------------------
def _one_line(capsys, code, pattern):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert re.search(pattern, err[0]), err[0]


@pytest.mark.parametrize("extra, pattern", [
    (["--quant", "int8", "--budget", "size=0.2"], "--budget apply to --quant auto only"),
    (["--quant", "auto"], "needs a budget"),
    (["--quant", "auto", "--budget", "size=0.2", "--max-drop", "1"], "go together"),
    (["--quant", "auto", "--budget", "speed=2"], "unknown budget 'speed'"),
    (["--quant", "auto", "--budget", "size=0.2", "--save-plan", "plan.txt"], r"\.toml or \.json"),
    (["--quant", "auto", "--budget", "latency=2"], "needs a unit"),
])
def test_cli_auto_errors_are_one_line(capsys, tmp_path, extra, pattern):
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_calib())
    code = main(["compile", MODEL, "--calib", str(calib), "--input-shape", "input=30,1,8,8",
                 "-o", str(tmp_path / "out.lbx"), *extra])
    _one_line(capsys, code, pattern)
    assert not (tmp_path / "out.lbx").exists()


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_cli_jobs_must_be_a_positive_count(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", MODEL, "--quant", "auto", "--budget", "size=0.2", "-o", "x.lbx",
              "--jobs", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "-j/--jobs" in err and "processes >= 1" in err


def test_cli_compile_auto_writes_artifact_plan_and_report(capsys, tmp_path, cache, planner,
                                                          monkeypatch):
    from lowbit.passes import analysis

    _ = planner.costs  # the module's measurements, copied below

    xdg = tmp_path / "xdg"
    (xdg / "lowbit").mkdir(parents=True)
    (xdg / "lowbit" / "kernels.json").write_bytes((cache / "kernels.json").read_bytes())
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))  # warm: the module's measurements
    monkeypatch.setattr(analysis, "DEFAULT_CANDIDATES", CANDS)  # the fast candidate set
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_calib())
    out, plan = tmp_path / "auto.lbx", tmp_path / "plan.toml"
    code = main(["compile", MODEL, "--target", "x86", "--quant", "auto", "--budget",
                 "size=0.25", "--calib", str(calib), "--input-shape", "input=30,1,8,8",
                 "--save-plan", str(plan), "-o", str(out), "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert out.is_file() and plan.is_file()
    assert "sensitivity" in err and "latency predicted" in err and "measured" in err
    assert len(load_recipe(plan).nodes) == 4
    # the candidates' names, w8 spelled w7 where the host reduces the range
    assert set(re.findall(r"w\da\d", err)) <= {c.name for c in CANDS + reduced_range(CANDS)}
    # the saved plan compiles again with --recipe and gives the same weights
    code = main(["inspect", MODEL, "--recipe", str(plan), "--calib", str(calib),
                 "--input-shape", "input=30,1,8,8"])
    assert code == 0
    assert "weights: fp32" in capsys.readouterr().out


def test_cli_inspect_auto_prints_ir_and_plan(capsys, tmp_path, cache, planner, monkeypatch):
    from lowbit.passes import analysis

    _ = planner.costs  # the module's measurements, copied below

    xdg = tmp_path / "xdg"
    (xdg / "lowbit").mkdir(parents=True)
    (xdg / "lowbit" / "kernels.json").write_bytes((cache / "kernels.json").read_bytes())
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setattr(analysis, "DEFAULT_CANDIDATES", CANDS)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_calib())
    plan = tmp_path / "p.json"
    code = main(["inspect", MODEL, "--quant", "auto", "--budget", "bits=5", "--calib",
                 str(calib), "--input-shape", "input=30,1,8,8", "--save-plan", str(plan)])
    out = capsys.readouterr().out
    assert code == 0
    assert "QConv" in out and "plan (--quant auto):" in out and "budget bits=5" in out
    mean_bits = float(re.search(r"mean ([0-9.]+) weight bits", out).group(1))
    assert mean_bits <= 5.0
    assert len(load_recipe(plan).nodes) == 4
    # inspect without --quant auto refuses the auto options
    code = main(["inspect", MODEL, "--budget", "bits=5"])
    _one_line(capsys, code, "--budget applies to --quant auto")


# -- worker processes (jobs) -------------------------------------------------------------------
def test_uniform_graphs_quantized_on_workers_are_identical(monkeypatch):
    """_measure_costs quantizes the uniform plans of every default candidate on 2 workers
    (forced) into the graphs this process makes: same text, constants and graph.meta."""
    from lowbit.codegen import latency
    from lowbit.compiler import planner as planner_module
    from lowbit.ir.printer import format_graph
    from lowbit.passes.analysis import quantizable_layers

    monkeypatch.setattr(latency, "layer_costs", lambda *args, **kwargs: None)  # no timing
    monkeypatch.setattr(planner_module, "MIN_PARALLEL_QUANTIZED_LAYERS", 1)
    graphs = {}
    for jobs in (1, 2):
        p = Planner(MODEL, "x86", _calib(), input_shapes=SHAPES, jobs=jobs)
        p.__dict__["layer_names"] = tuple(n.name for n in quantizable_layers(p.graph))
        graphs[jobs], _ = p._measure_costs()
    assert len(graphs[1]) == len(graphs[2]) == len(p.candidates) > 4
    for here, there in zip(graphs[1], graphs[2]):
        assert format_graph(here) == format_graph(there)
        consts = [{k: v.const for k, v in g.values.items() if v.is_const} for g in (here, there)]
        assert consts[0].keys() == consts[1].keys()
        for name, array in consts[0].items():
            assert array.dtype == consts[1][name].dtype
            np.testing.assert_array_equal(array, consts[1][name])
        assert here.meta["quant"] == there.meta["quant"]
        assert latency.graph_digest(here) == latency.graph_digest(there)


def test_jobs_is_checked_and_defaults_to_the_cpus(monkeypatch):
    from lowbit.ir.errors import LowbitError

    monkeypatch.setenv("LOWBIT_JOBS", "3")
    assert Planner(MODEL, "x86", _calib(), input_shapes=SHAPES).jobs == 3
    assert Planner(MODEL, "x86", _calib(), input_shapes=SHAPES, jobs=1).jobs == 1
    with pytest.raises(LowbitError, match="jobs=0"):
        Planner(MODEL, "x86", _calib(), input_shapes=SHAPES, jobs=0)


@pytest.mark.parametrize("target, bits", [("x86-avx2", 7), ("x86-avx512", 8), ("arm64", 8)])
def test_default_candidates_follow_the_targets_int8(target, bits):
    """Where the target reduces the range (AVX2 without VNNI) the int8 preset compiles 7-bit
    weights, so the planner's 8-bit candidates are 7-bit there too; explicit sets are kept."""
    planner = Planner(MODEL, target, _calib(), input_shapes=SHAPES)
    eights = [c for c in planner.candidates if c.weights.format == "uniform"
              and c.weights.bits in (7, 8)]
    assert len(planner.candidates) == len(DEFAULT_CANDIDATES)
    assert [c.name for c in eights] == [f"w{bits}a8", f"w{bits}a4", f"w{bits}a2"]
    assert {c.weights.bits for c in eights} == {bits}
    assert not any(c.reconstructs for c in eights)  # 7- and 8-bit: plain rounding
    kept = Planner(MODEL, target, _calib(), input_shapes=SHAPES, candidates=CANDS)
    assert kept.candidates == CANDS
