"""Issue 5 acceptance: ``--quant auto`` against every uniform preset at the preset's own budget.

For each model (the digits CNN, the digits transformer, the ResNet-18-shaped digits CNN) and
each preset P: compile P with lowbit (measured top-1 on the 540-image test split, packed
weight bytes, whole-model latency: one thread, median, cache-hot), then plan ``--quant auto``

* at P's size: ``budget = "size=<P's bytes>B"``, and
* at P's measured latency: ``budget = "latency=<R>x"`` with ``R`` = P's time over the int8
  preset's, both timed side by side (every preset in one interleaved timing). The planner
  applies the ratio to its own timing of the int8 plan. (An absolute ``latency=<ms>ms`` made
  the comparison hinge on two timings of one artifact minutes apart, which differ by 1-3 %
  here: five ResNet rows were infeasible and the transformer's budgets sat below the
  planner's own int8 timing.)

compile each plan and time it side by side with P's artifact. A latency budget below the
planner's fastest plan is infeasible (its error names that plan's budget); the row says so, and
that fastest plan is also compiled, measured and timed beside P (the "floor" columns). Reported per row: accuracy (auto
vs preset), bytes (auto must be <= the preset's, exactly), auto vs preset ms in the same
timing rounds, predicted vs measured latency (error in %), the planning times (sensitivity,
latency measurement, cold vs warm cache) and the counts behind the acceptance.

Run: ``python bench/bench_auto.py [--models cnn transformer resnet] [--presets int8 w4a8 ...]
[--cache DIR] [--json out.json]``. The latency cache defaults to a fresh folder (cold); pass
``--cache`` to reuse one (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODELS = {
    # name: (onnx, calib npz, eval npz, bound input shape, calibration samples used)
    "cnn": ("digits_cnn.onnx", "digits_calib.npz", "digits_eval.npz", (60, 1, 8, 8), 240),
    "transformer": ("digits_transformer.onnx", "digits_transformer_calib.npz",
                    "digits_transformer_eval.npz", (60, 8, 8), 240),
    "resnet": ("digits_resnet.onnx", "digits_resnet_calib.npz", "digits_resnet_eval.npz",
               (20, 1, 32, 32), 60),
}
PRESETS = ("int8", "w4a8", "w2a8", "ternary", "pow2", "codebook4", "w1a8")


def _calib(path: Path, samples: int) -> dict:
    with np.load(path) as data:
        return {"input": data["input"][:samples]}


def _compile_preset(planner, preset, data):
    from lowbit.compiler.driver import compile_model
    from lowbit.compiler.quantize import weight_size

    result = compile_model(planner.model, planner.target, quant=preset, calib=planner.calib,
                           input_shapes=planner.input_shapes)
    return result.artifact, {"accuracy": planner.accuracy(result.artifact, data),
                             "bytes": weight_size(result.graph).packed}


def _measure_plan(planner, budget, data, preset_artifact):
    """Plan at ``budget``, compile, top-1, and whole-model ms timed side by side with the
    preset's artifact (``ms`` the plan's, ``preset_ms`` the preset's in the same rounds)."""
    from lowbit.codegen.latency import artifacts_ms
    from lowbit.compiler.quantize import weight_size
    from lowbit.ir.errors import QuantizationError

    try:
        plan = planner.allocate(budget)
    except QuantizationError as err:
        return {"budget": budget, "error": str(err)}
    result = planner.compile(plan)
    ms, preset_ms = artifacts_ms([result.artifact, preset_artifact])
    return {"budget": budget, "accuracy": planner.accuracy(result.artifact, data),
            "bytes": weight_size(result.graph).packed, "ms": ms, "preset_ms": preset_ms,
            "predicted_ms": plan.predicted_ms, "plan_bytes": plan.weight_bytes,
            "mean_bits": plan.mean_bits,
            "error_pct": 100.0 * (plan.predicted_ms - ms) / ms,
            "choice": plan.candidates}


def _floor(error: str) -> str | None:
    """The ``latency=...x`` budget of the planner's fastest plan, from its infeasibility
    message ("smallest feasible: latency=0.9734x (4.88ms)"), or None."""
    marker = "smallest feasible: "
    if marker not in error:
        return None
    budget = error.split(marker, 1)[1].split()[0]
    return budget if budget.startswith("latency=") and budget.endswith("x") else None


def run_model(name: str, presets, cache_dir: str) -> dict:
    from lowbit.codegen.latency import artifacts_ms
    from lowbit.compiler.planner import Planner
    from lowbit.ir.errors import LowbitError

    onnx_file, calib_file, eval_file, shape, samples = MODELS[name]
    t0 = time.perf_counter()
    planner = Planner(str(EXAMPLES / onnx_file), "x86", _calib(EXAMPLES / calib_file, samples),
                      input_shapes={"input": shape}, cache_dir=cache_dir)
    _ = planner.table
    t_sens = time.perf_counter() - t0
    _ = planner.costs, planner.remainder_ms
    t_costs = time.perf_counter() - t0 - t_sens
    data = planner.eval_set(str(EXAMPLES / eval_file))
    out = {"model": name, "layers": len(planner.layer_names),
           "candidates": len(planner.candidates), "sensitivity_s": t_sens,
           "latency_s": t_costs, "fp32": planner.float_accuracy(data), "rows": []}
    print(f"[{name}] {out['layers']} layers x {out['candidates']} candidates: sensitivity "
          f"{t_sens:.1f} s, latency {t_costs:.1f} s, remainder {planner.remainder_ms:.4f} ms",
          file=sys.stderr, flush=True)
    artifacts, rows = {}, {}
    for preset in dict.fromkeys(("int8",) + tuple(presets)):
        try:
            artifacts[preset], rows[preset] = _compile_preset(planner, preset, data)
        except LowbitError as err:  # a preset that cannot compile this model is a row
            rows[preset] = {"error": f"{type(err).__name__}: {err}"}
    if "int8" not in artifacts:
        raise SystemExit(f"[{name}] the int8 preset failed: {rows['int8']['error']}")
    # every preset timed side by side: a latency budget is the preset's ratio to int8, which
    # the planner applies to its own timing of the int8 plan (latency=...x)
    for preset, ms in zip(artifacts, artifacts_ms(list(artifacts.values()))):
        rows[preset]["ms"] = ms
    int8_ms = rows["int8"]["ms"]
    for preset in presets:
        p = rows[preset]
        if "error" in p:
            out["rows"].append({"preset": preset, "error": p["error"]})
            continue
        ratio = p["ms"] / int8_ms
        size = _measure_plan(planner, f"size={p['bytes']}B", data, artifacts[preset])
        lat = _measure_plan(planner, f"latency={ratio:.6f}x", data, artifacts[preset])
        floor = _floor(lat.get("error", ""))
        if floor is not None:  # below the planner's fastest plan: measure that plan too
            lat["floor"] = _measure_plan(planner, floor, data, artifacts[preset])
        out["rows"].append({"preset": preset, **{f"p_{k}": v for k, v in p.items()},
                            "p_ratio": ratio, "size": size, "latency": lat})
        print(f"[{name}] {preset}: preset {p['accuracy']:.2f}% {p['bytes']} B {p['ms']:.3f} ms"
              f" ({ratio:.4f}x) | auto@size {size.get('accuracy', float('nan')):.2f}% "
              f"{size.get('bytes', 0)} B | auto@latency {lat.get('accuracy', float('nan')):.2f}%"
              f" {lat.get('ms') or float('nan'):.3f} ms vs preset "
              f"{lat.get('preset_ms') or float('nan'):.3f} (pred "
              f"{lat.get('predicted_ms') or float('nan'):.3f})", file=sys.stderr, flush=True)
    return out


def markdown(results) -> str:
    lines, counts = [], dict.fromkeys(("rows", "size_ok", "size_ge", "lat_feasible", "lat_ge",
                                       "lat_fast", "pred_ok", "floor", "floor_ge",
                                       "floor_fast"), 0)
    for res in results:
        lines.append(f"\n### {res['model']} ({res['layers']} layers, {res['candidates']} "
                     f"candidates; fp32 {res['fp32']:.2f}%; planning: sensitivity "
                     f"{res['sensitivity_s']:.0f} s, latency {res['latency_s']:.0f} s)\n")
        lines.append("| preset | preset acc | bytes | ms (/ int8) | auto@size acc | auto bytes "
                     "| auto@latency acc | auto ms / preset ms (side by side) | predicted "
                     "(err) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in res["rows"]:
            if "error" in row:
                lines.append(f"| {row['preset']} | failed: {row['error'][:80]} |||||||")
                continue
            s, t = row["size"], row["latency"]
            counts["rows"] += 1
            if "accuracy" in s:
                counts["size_ok"] += s["bytes"] <= row["p_bytes"]
                counts["size_ge"] += s["accuracy"] >= row["p_accuracy"]
            if "accuracy" in t:
                counts["lat_feasible"] += 1
                counts["lat_ge"] += t["accuracy"] >= row["p_accuracy"]
                counts["lat_fast"] += t["ms"] <= t["preset_ms"]
                counts["pred_ok"] += abs(t["error_pct"]) <= 10.0
            sa = f"{s['accuracy']:.2f}" if "accuracy" in s else "infeasible"
            ta = f"{t['accuracy']:.2f}" if "accuracy" in t else "infeasible"
            f = t.get("floor", {})
            if "accuracy" in f:  # the planner's fastest plan, measured beside the preset
                counts["floor"] += 1
                counts["floor_ge"] += f["accuracy"] >= row["p_accuracy"]
                counts["floor_fast"] += f["ms"] <= f["preset_ms"]
                ta += f"; at the floor {f['budget'][8:]}: {f['accuracy']:.2f}"
                t = f
            tm = (f"{t['ms']:.3f} / {t['preset_ms']:.3f} ({t['ms'] / t['preset_ms']:.3f})"
                  if "ms" in t else "-")
            pm = f"{t['predicted_ms']:.3f} ({t['error_pct']:+.1f}%)" if "ms" in t else "-"
            lines.append(f"| {row['preset']} | {row['p_accuracy']:.2f} | {row['p_bytes']:,} | "
                         f"{row['p_ms']:.3f} ({row['p_ratio']:.3f}) | {sa} | "
                         f"{s.get('bytes', 0):,} | {ta} | {tm} | {pm} |")
    c = counts
    lines.append(f"\nRows {c['rows']}: size honoured {c['size_ok']}, auto >= preset at size "
                 f"{c['size_ge']}; latency budget feasible {c['lat_feasible']}, auto >= preset "
                 f"at latency {c['lat_ge']}, auto no slower than the preset side by side "
                 f"{c['lat_fast']}, prediction within 10 % {c['pred_ok']}. Budgets below the "
                 f"planner's fastest plan {c['rows'] - c['lat_feasible']}: that plan measured "
                 f"{c['floor']}, auto >= preset {c['floor_ge']}, no slower than the preset "
                 f"side by side {c['floor_fast']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--cache", help="latency cache folder (default: a fresh one, cold)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    cache = args.cache or tempfile.mkdtemp(prefix="lowbit-bench-auto-")
    print(f"load average {os.getloadavg()}", file=sys.stderr)
    results = [run_model(m, args.presets, cache) for m in args.models]
    print(markdown(results))
    print(f"load average {os.getloadavg()}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
