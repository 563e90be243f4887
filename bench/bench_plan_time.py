"""Issue 5 timing: ``--quant auto`` planning time for a 60-layer model, cold and warm.

The model is the 60-conv ResNet-style net of ``bench_compile_time.py`` (60 3x3 convs + a Gemm
head = 61 quantizable layers, input 1x3x64x64, random weights), calibrated on
``--calib-samples`` (default 8) uniform [0, 1) images, with the 21 default candidates. Each run
is a fresh Python process that builds a :class:`lowbit.compiler.planner.Planner` and solves
``budget=size=0.25`` (so sensitivity, kernel latencies, the remainder and the ILP all run),
reporting each part's seconds. Runs, sharing one cache folder:

1. cold: empty cache folder;
2. warm: both caches (``kernels.json``, ``sensitivity.json``) kept;
3. with ``--latency-warm``, also: ``sensitivity.json`` deleted, ``kernels.json`` kept (the
   sensitivity pass alone, cold).

Goal (issue 5): <= 10 min cold, <= 1 min warm, on the 2-core machine.
Run: ``python bench/bench_plan_time.py [--calib-samples 8] [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {here!r})
from bench_compile_time import build_model
from lowbit.compiler.planner import Planner

t0 = time.perf_counter()
model = build_model()
calib = {{"input": np.random.default_rng(0).uniform(0, 1, ({n}, 3, 64, 64)).astype(np.float32)}}
planner = Planner(model, "x86", calib, cache_dir={cache!r})
times = {{}}
t = time.perf_counter(); planner.table; times["sensitivity"] = time.perf_counter() - t
t = time.perf_counter(); planner.costs; times["latency"] = time.perf_counter() - t
t = time.perf_counter(); planner.remainder_ms; times["remainder"] = time.perf_counter() - t
t = time.perf_counter(); plan = planner.allocate("size=0.25"); times["ilp"] = time.perf_counter() - t
times["total"] = time.perf_counter() - t0
print(json.dumps({{"times": times, "layers": len(planner.layer_names),
                  "candidates": len(planner.candidates), "bytes": plan.weight_bytes,
                  "predicted_ms": plan.predicted_ms}}))
"""


def run(cache: str, samples: int) -> dict:
    code = CHILD.format(here=str(HERE), n=samples, cache=cache)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--cache", help="cache folder (default: a fresh temporary one)")
    parser.add_argument("--latency-warm", action="store_true",
                        help="also time a run with only the latency cache warm")
    args = parser.parse_args(argv)
    cache = args.cache or tempfile.mkdtemp(prefix="lowbit-plan-time-")
    print(f"load average {os.getloadavg()}", file=sys.stderr)
    rows = []
    labels = ("cold", "warm") + (("warm latency cache",) if args.latency_warm else ())
    for label in labels:
        if label == "warm latency cache":
            Path(cache, "sensitivity.json").unlink(missing_ok=True)
        res = run(cache, args.calib_samples)
        rows.append((label, res))
        print(f"{label}: {res}", file=sys.stderr, flush=True)
    print(f"load average {os.getloadavg()}", file=sys.stderr)
    first = rows[0][1]
    print(f"\n60-conv model: {first['layers']} layers x {first['candidates']} candidates, "
          f"{args.calib_samples} calibration images\n")
    print("| run | sensitivity s | latency s | remainder s | ILP s | process wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, res in rows:
        t = res["times"]
        print(f"| {label} | {t['sensitivity']:.1f} | {t['latency']:.1f} | "
              f"{t['remainder']:.1f} | {t['ilp']:.2f} | {res['wall']:.1f} |")


if __name__ == "__main__":
    main()
