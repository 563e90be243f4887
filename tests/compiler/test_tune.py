"""lowbit tune: the Pareto rule on hand-made points, and a real sweep of the digits CNN (three
candidates, 3 budgets per sweep, a cold latency cache): files, frontier correctness against every
pair, budgets met, presets reported (a failing one recorded, not raised), SQNR mode, determinism.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lowbit.codegen.kernels.int8 import reduces_range
from lowbit.codegen.target import resolve_target
from lowbit.compiler import driver
from lowbit.compiler.planner import Planner
from lowbit.compiler.recipes import ActSpec, WeightSpec
from lowbit.compiler.tune import (
    TuneOutputError,
    _label_offsets,
    pareto,
    render,
    sweep,
    to_json,
    to_markdown,
    tune,
    write_report,
)
from lowbit.ir.errors import LowbitError, LoweringError, QuantizationError
from lowbit.passes.analysis import Candidate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = EXAMPLES / "digits_cnn.onnx"
SHAPES = {"input": (32, 1, 8, 8)}
CANDS = (
    Candidate("w8a8", WeightSpec("uniform", 8), ActSpec(8)),
    Candidate("w4a8", WeightSpec("uniform", 4), ActSpec(8)),
    Candidate("ternarya8", WeightSpec("ternary", 2), ActSpec(8)),
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def point(name, ms, acc, nbytes=0):
    return SimpleNamespace(name=name, ms=ms, bytes=nbytes, accuracy=acc)


# -- pareto() on hand-made points --------------------------------------------------------------
def test_pareto_hand_made_with_ties():
    a = point("a", 1.0, 50.0)
    a_twin = point("a_twin", 1.0, 50.0)  # identical: neither dominates the other
    same_x_worse = point("same_x_worse", 1.0, 40.0)  # dominated by a (x equal, acc lower)
    same_acc_slower = point("same_acc_slower", 2.0, 50.0)  # dominated by a (acc equal)
    fast_bad = point("fast_bad", 0.5, 10.0)
    slow_good = point("slow_good", 3.0, 70.0)
    slower_worse = point("slower_worse", 4.0, 60.0)  # dominated by slow_good
    unmeasured = point("unmeasured", None, 99.0)
    pts = [slow_good, same_x_worse, a, unmeasured, fast_bad, same_acc_slower, a_twin,
           slower_worse]
    front = pareto(pts, "ms")
    assert [p.name for p in front] == ["fast_bad", "a", "a_twin", "slow_good"]


def test_pareto_by_bytes_and_single_and_empty():
    pts = [point("small", 9.0, 10.0, nbytes=100), point("big", 1.0, 90.0, nbytes=400),
           point("mid_bad", 0.5, 5.0, nbytes=200)]
    assert [p.name for p in pareto(pts, "bytes")] == ["small", "big"]
    assert [p.name for p in pareto(pts, "ms")] == ["mid_bad", "big"]
    assert [p.name for p in pareto(pts[:1], "ms")] == ["small"]
    assert pareto([], "ms") == ()


def test_pareto_unknown_axis():
    with pytest.raises(QuantizationError, match="axis 'accuracy'"):
        pareto([point("a", 1.0, 1.0)], "accuracy")


def test_coincident_preset_labels_do_not_overlap():
    offsets = _label_offsets([1.0, 1.0, 1.0, 5.0], [50.0, 50.0, 50.0, 90.0],
                             ["w2a8", "ternary", "int8"], (430.0, 250.0))
    assert len(set(offsets)) == 3


# -- a real sweep ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    calib = {"input": np.load(EXAMPLES / "digits_calib.npz")["input"][:64]}
    return Planner(MODEL, "x86", calib, input_shapes=SHAPES, candidates=CANDS,
                   cache_dir=tmp_path_factory.mktemp("latency_cache"))


@pytest.fixture(scope="module")
def report(planner):
    lines = []
    result = tune(planner, EXAMPLES / "digits_eval.npz", points=3, presets=("int8", "w4a8"),
                  log=lines.append)
    assert any("preset 2/2 (w4a8)" in line for line in lines)
    return result


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "pareto"  # does not exist yet: created
    return out, write_report(report, out)


def dominates(q, p, x):
    qx, px = getattr(q, x), getattr(p, x)
    return qx <= px and q.accuracy >= p.accuracy and (qx < px or q.accuracy > p.accuracy)


def test_report_contents(report):
    assert report.metric == "top1" and report.target == "x86"
    assert report.model == "digits_cnn.onnx"
    assert 90.0 < report.float_accuracy <= 100.0
    assert len(report.auto) >= 2 and [p.name for p in report.presets] == ["int8", "w4a8"]
    assert not report.failures
    for p in report.points:
        assert 0.0 <= p.accuracy <= 100.0 and p.ms > 0 and p.bytes > 0
        assert (p.predicted_ms is None) == (p.kind == "preset")
    int8 = report.presets[0]
    # the int8 preset as compiled for this host: 7-bit weights where the target reduces range
    eight = 7.0 if reduces_range(resolve_target("x86")) else 8.0
    assert int8.mean_bits == eight and int8.bytes * 3.5 < report.fp32_bytes
    choices = [p.choice for p in report.auto]
    assert len(set(choices)) == len(choices), "identical plans must be deduplicated"


def test_budgets_met_and_sweep_ends_covered(planner, report):
    for p in report.auto:
        for budget in p.budgets:
            key, value = budget.split("=")
            if key == "latency":
                assert p.predicted_ms <= float(value.removesuffix("ms")) * (1 + 1e-6) + 1e-6
            else:
                assert p.bytes <= int(value.removesuffix("B")), (p.name, p.bytes)
    best = planner.allocate(None)
    assert tuple(best.choice) in {p.choice for p in report.auto}
    allowed = ~np.isnan(planner.costs.ms)
    least = np.where(allowed, planner.table.weight_bytes, np.inf).min(axis=1).sum()
    assert min(p.bytes for p in report.auto) == round(least)


@pytest.mark.parametrize("x", ["ms", "bytes"])
def test_frontier_is_exactly_the_non_dominated_auto_points(report, x):
    auto = report.auto
    front = report.frontier(x)
    assert front and all(p.kind == "auto" for p in front)
    assert [getattr(p, x) for p in front] == sorted(getattr(p, x) for p in front)
    for p in front:  # every pair: no auto point dominates a frontier point
        for q in auto:
            assert not dominates(q, p, x), (q.name, p.name)
    for p in auto:  # every other auto point is dominated by a frontier point
        if not report.on_frontier(p, x):
            assert any(dominates(f, p, x) for f in front), p.name


def test_files_written(written, report):
    out, paths = written
    names = sorted(p.name for p in paths)
    assert names == ["pareto.json", "pareto.md", "pareto_latency.png", "pareto_size.png"]
    assert all(p.parent == out and p.is_file() for p in paths)
    for name in ("pareto_latency.png", "pareto_size.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left"
    md = (out / "pareto.md").read_text()
    assert "top-1" in md and "## Preset failures" in md
    for p in report.points:
        assert f"| {p.kind} | {p.name} |" in md


def test_json_holds_points_presets_and_frontiers(written, report):
    data = json.loads((written[0] / "pareto.json").read_text())
    assert data["metric"] == "top1" and data["fp32_bytes"] == report.fp32_bytes
    assert [(d["kind"], d["name"]) for d in data["points"]] == \
        [(p.kind, p.name) for p in report.points]
    presets = {d["name"]: d for d in data["points"] if d["kind"] == "preset"}
    assert set(presets) == {"int8", "w4a8"} and presets["int8"]["candidates"] is None
    assert data["latency_frontier"] == [p.name for p in report.latency_frontier]
    assert data["size_frontier"] == [p.name for p in report.size_frontier]
    for d, p in zip(data["points"], report.points):
        assert d["on_latency_frontier"] == report.on_frontier(p, "ms")
        assert d["bytes"] == p.bytes and d["ratio_fp32"] == p.bytes / report.fp32_bytes
    assert data["preset_failures"] == []


def test_render_lists_every_point(report):
    from rich.console import Console

    console = Console(record=True, width=220)
    console.print(render(report))
    text = console.export_text()
    assert all(p.name in text for p in report.points)


def test_sweep_is_deterministic(planner, report, tmp_path):
    again = [tuple(plan.choice) for _, plan in sweep(planner, 3)]
    assert again == [p.choice for p in report.auto]
    # a fresh planner reading the same latency cache sweeps the same plans
    fresh = Planner(MODEL, "x86", planner.calib, input_shapes=SHAPES, candidates=CANDS,
                    cache_dir=planner.cache_dir)
    assert [tuple(plan.choice) for _, plan in sweep(fresh, 3)] == again


def test_sqnr_mode_and_failing_preset_is_reported(planner, report, monkeypatch, tmp_path):
    real = driver.compile_model

    def compile_model(model, target="x86", quant="w4a8", *args, **kwargs):
        if quant == "pow2":
            raise LoweringError("no kernel for pow2 here (test)")
        return real(model, target, quant, *args, **kwargs)

    monkeypatch.setattr(driver, "compile_model", compile_model)
    sqnr = tune(planner, None, points=2, presets=("int8", "pow2"))
    assert sqnr.metric == "sqnr" and sqnr.float_accuracy is None
    assert [(f.name, f.reason) for f in sqnr.failures] == \
        [("pow2", "lowering error: no kernel for pow2 here (test)")]
    assert [p.name for p in sqnr.presets] == ["int8"]
    int8 = sqnr.presets[0]
    assert int8.accuracy > 25.0, "int8 output SQNR should be well above 25 dB"
    assert all(p.accuracy < 200 for p in sqnr.auto)
    assert "SQNR" in to_markdown(sqnr) and "pow2: lowering error" in to_markdown(sqnr)
    assert json.loads(to_json(sqnr))["preset_failures"][0]["name"] == "pow2"


def test_bad_input(planner, report, tmp_path):
    for bad in (1, 0, 2.5, True):
        with pytest.raises(QuantizationError, match="points="):
            tune(planner, points=bad)
    with pytest.raises(QuantizationError, match="unknown"):
        tune(planner, points=2, presets=("int9",))
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(TuneOutputError, match="is a file") as info:
        write_report(report, target)
    assert isinstance(info.value, LowbitError) and "\n" not in str(info.value)


def test_target_this_host_cannot_run(planner):
    arm = Planner(MODEL, "arm64", planner.calib, input_shapes=SHAPES, candidates=CANDS,
                  measure=False)
    with pytest.raises(QuantizationError, match="'arm64' does not"):
        tune(arm, points=2)


# -- the CLI -----------------------------------------------------------------------------------
def test_cli_tune_writes_the_report(planner, tmp_path, monkeypatch, capsys):
    import shutil

    from lowbit.compiler.cli import main
    from lowbit.passes import analysis

    _ = planner.costs  # measured (and cached on disk) once per module
    xdg = tmp_path / "xdg"
    (xdg / "lowbit").mkdir(parents=True)
    shutil.copy(Path(planner.cache_dir) / "kernels.json", xdg / "lowbit" / "kernels.json")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))  # warm: the module fixture's measurements
    monkeypatch.setattr(analysis, "DEFAULT_CANDIDATES", CANDS)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.load(EXAMPLES / "digits_calib.npz")["input"][:64])
    out = tmp_path / "pareto"
    code = main(["tune", str(MODEL), "--target", "x86", "--calib", str(calib), "--eval",
                 str(EXAMPLES / "digits_eval.npz"), "--input-shape", "input=32,1,8,8",
                 "--points", "2", "--presets", "int8", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "pareto_latency.png" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["pareto.json", "pareto.md", "pareto_latency.png", "pareto_size.png"]
    data = json.loads((out / "pareto.json").read_text())
    assert [p["name"] for p in data["points"] if p["kind"] == "preset"] == ["int8"]
    assert data["latency_frontier"] and data["size_frontier"]
    # a file where the folder should go: one line, exit 2
    code = main(["tune", str(MODEL), "--calib", str(calib), "-o", str(calib)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file" in err[-1]


def test_latency_budget_labels_are_the_budgets_solved():
    """A swept budget prints with 6 significant digits; it is rounded up to them first, so a
    plan never exceeds its own label (1.5733539 ms once printed as 1.57335 ms) and the lowest
    budget stays feasible."""
    from lowbit.compiler.tune import _printed_ceil

    for value in (1.5733539285714289, 1.57335, 0.000123456789, 999999.7, 12.0):
        out = _printed_ceil(value)
        assert out >= value and float(f"{out:g}") == out
        assert out - value <= 10.0 ** (np.floor(np.log10(value)) - 5) * (1 + 1e-9)
