"""Latency for --quant auto (codegen/latency.py): kernels and whole graphs compiled on worker
processes and timed here give the same costs, cache keys and errors as compiling here."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from lowbit.codegen import latency, select
from lowbit.codegen.target import resolve_target
from lowbit.ir import Graph, LoweringError, Op

tvm = pytest.importorskip("tvm")

def layer_names(graph: Graph) -> list[str]:
    return [n.name for n in graph.nodes if n.op in (Op.QCONV, Op.QMATMUL)]


def cache_keys(folder: Path) -> set[str]:
    return set(json.loads((folder / "kernels.json").read_text())["entries"])


#: made-up kernel times (µs): the family order differs from the static one, int8 and bitserial
#: tie (the name breaks it)
FAKE_US = {"bitserial": 10.0, "int8": 10.0, "lut": 7.0, "shiftadd": 30.0,
           "shiftadd_int8": 20.0, "reference": 50.0}


@pytest.fixture
def fake_timing(monkeypatch):
    """Real compiles (here or on workers), made-up times: each library is loaded (it must be a
    valid module) and timed FAKE_US of its family."""
    family_of: dict[str, str] = {}
    compiled: list[str] = []  # the cache key of every kernel compiled
    real_compile = select.compile_layers

    def compile_layers(layers, target, folder, jobs=1, **kw):
        out = real_compile(layers, target, folder, jobs, **kw)
        for (node, family), path in zip(layers, out):
            family_of[str(path)] = family
            compiled.append(select.layer_key(node, target, family))
        return out

    def time_layer(node, path):
        select.load_executable(path)
        return FAKE_US[family_of[str(path)]]

    monkeypatch.setattr(select, "compile_layers", compile_layers)
    monkeypatch.setattr(select, "time_layer", time_layer)
    return compiled


def test_workers_give_the_serial_costs_and_cache_keys(tmp_path, monkeypatch, fake_timing, cnn):
    """jobs=2 (workers forced) and jobs=1: the same families, times and cache keys; each
    uncached (layer, family) compiled once; progress once per (layer, candidate); the fastest
    family wins, ties by name; a forced kernel that cannot take a layer gives NaN."""
    graphs = [cnn("int8"), cnn("w2a2"), cnn("w2a2")]
    layers = layer_names(graphs[0])[:2]
    kernels = [None, None, "bitserial"]
    monkeypatch.setattr(latency, "MIN_PARALLEL_LAYERS", 1)
    runs = []
    for jobs in (1, 2):
        calls = []
        costs = latency.layer_costs(graphs, layers, "x86", kernels=kernels,
                                    cache_dir=tmp_path / f"j{jobs}", jobs=jobs,
                                    progress=lambda calls=calls: calls.append(1))
        assert costs.measured and len(calls) == len(layers) * len(graphs)
        runs.append((costs, sorted(fake_timing), cache_keys(tmp_path / f"j{jobs}")))
        fake_timing.clear()
    (serial, compiled_1, keys_1), (parallel, compiled_2, keys_2) = runs
    assert serial.family == parallel.family
    np.testing.assert_array_equal(serial.ms, parallel.ms)
    assert keys_1 == keys_2 and compiled_1 == compiled_2
    assert len(compiled_1) == len(set(compiled_1)) and set(compiled_1) == keys_1  # once each
    target = resolve_target("x86")
    for c, graph in enumerate(graphs):
        nodes = {n.name: n for n in graph.nodes}
        for l, name in enumerate(layers):
            pool, _ = select.candidates(nodes[name], target)
            if kernels[c] is not None:
                if kernels[c] not in pool:
                    assert math.isnan(serial.ms[l, c]) and serial.family[l][c] == "reference"
                    continue
                pool = [kernels[c]]
            best = min(pool, key=lambda f: (FAKE_US[f], f))
            assert serial.family[l][c] == best
            assert np.isfinite(serial.ms[l, c])
    assert math.isnan(serial.ms[0, 2])  # the 8-bit first layer: no bit-serial kernel
    assert {"bitserial", "lut"} & {f for row in serial.family for f in row}


def test_real_timings_on_workers_are_finite_and_cached(tmp_path, monkeypatch, cnn):
    """Compiled on 2 workers, timed here: finite positive times, every key in kernels.json;
    a second call compiles and times nothing and returns the same costs."""
    monkeypatch.setattr(latency, "MIN_PARALLEL_LAYERS", 1)
    graphs = [cnn("w2a2")]
    layers = layer_names(graphs[0])[1:3]
    first = latency.layer_costs(graphs, layers, "x86", cache_dir=tmp_path, jobs=2)
    assert np.all(np.isfinite(first.ms)) and np.all(first.ms > 0)
    target = resolve_target("x86")
    nodes = {n.name: n for n in graphs[0].nodes}
    want = {select.layer_key(nodes[name], target, f)
            for name in layers for f in select.candidates(nodes[name], target)[0]}
    assert cache_keys(tmp_path) == want

    def no_compile(*args, **kwargs):
        raise AssertionError("a cached kernel was compiled again")

    monkeypatch.setattr(select, "compile_layers", no_compile)
    again = latency.layer_costs(graphs, layers, "x86", cache_dir=tmp_path, jobs=2)
    assert again.family == first.family
    np.testing.assert_array_equal(again.ms, first.ms)


def test_compile_failure_on_a_worker_is_a_lowering_error(tmp_path, cnn):
    """A kernel whose compile fails on a worker comes back as the LoweringError that
    measure_layer raises for it (node, family, the cause, the fix), and layer_costs raises it;
    a LoweringError raised on a worker keeps its message; the other kernels still compile."""
    x86 = resolve_target("x86")
    broken = replace(x86, tvm_items=tuple(sorted((*x86.tvm_items, ("bogus", 1)))))
    graph = cnn("int8")
    node = next(n for n in graph.nodes if n.op == Op.QCONV)
    with pytest.raises(LoweringError) as here:
        select.measure_layer(node, "int8", broken)
    assert re.search(rf"QConv node '{node.name}': kernel family 'int8' failed to compile for "
                     r"timing: ValueError: Unknown config option 'bogus'.*force another",
                     str(here.value))
    with pytest.raises(LoweringError) as costs:
        latency.layer_costs([graph], [node.name], broken, cache_dir=tmp_path)
    assert str(costs.value) == str(here.value)
    layers = [(node, "bitserial"), (node, "int8"), (node, "reference")]
    out = select.compile_layers(layers, x86, tmp_path, jobs=2)
    assert isinstance(out[0], LoweringError) and "'bitserial' cannot take" in str(out[0])
    assert Path(out[1]).is_file() and Path(out[2]).is_file()
    out = select.compile_layers(layers[1:], broken, tmp_path / "b", jobs=2)
    assert [str(e) for e in out] == [str(here.value), str(here.value).replace(
        "'int8'", "'reference'")]
    with pytest.raises(LoweringError, match="graph '.*' failed to compile for timing: "
                                            "ValueError: Unknown config option 'bogus'"):
        latency.graphs_ms([graph], broken, cache_dir=tmp_path)


def test_graphs_ms_compiles_on_workers_and_caches(tmp_path, monkeypatch, cnn):
    """graphs_ms: one compile per distinct graph (on workers), finite times, cached with
    graph_ms's key: a second call and graph_ms compile nothing."""
    monkeypatch.setattr(latency, "MIN_PARALLEL_NODES", 1)
    compiled = []
    real = select.compile_graphs

    def counting(graphs, *args, **kwargs):
        compiled.extend(g.name for g in graphs)
        return real(graphs, *args, **kwargs)

    monkeypatch.setattr(select, "compile_graphs", counting)
    a, b = cnn("int8"), cnn("w2a2")
    select.select_kernels(b, "x86", measure=False)  # per-node kernels are part of the key
    ms = latency.graphs_ms([a, b, a.copy()], "x86", cache_dir=tmp_path, jobs=2)
    assert len(compiled) == 2 and ms[0] == ms[2]
    assert all(math.isfinite(t) and t > 0 for t in ms)
    assert len([k for k in cache_keys(tmp_path) if "|graph|" in k]) == 2
    compiled.clear()
    assert latency.graphs_ms([b, a], "x86", cache_dir=tmp_path, jobs=2) == [ms[1], ms[0]]
    assert latency.graph_ms(b, "x86", cache_dir=tmp_path) == ms[1]
    assert compiled == []
    with pytest.raises(LoweringError, match="cannot time a model for target 'arm64'"):
        latency.graphs_ms([a], "arm64", cache_dir=tmp_path)


def test_workers_only_for_enough_work(monkeypatch):
    """Below the thresholds everything stays in this process (a worker costs seconds)."""
    from lowbit.compiler import parallel

    assert latency._workers(2, latency.MIN_PARALLEL_LAYERS - 1, latency.MIN_PARALLEL_LAYERS) == 1
    assert latency._workers(2, latency.MIN_PARALLEL_LAYERS, latency.MIN_PARALLEL_LAYERS) == 2
    monkeypatch.setattr(parallel, "default_jobs", lambda: 3)
    assert latency._workers(None, 10**6, 1) == 3


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_timing_leaves_this_process_on_all_its_cpus(cnn):
    """TVM pins the thread that configures its pool to one CPU; after a timing the process
    is back on all its CPUs (else workers spawned later would all share that one)."""
    before = os.sched_getaffinity(0)
    graph = cnn("int8")
    node = next(n for n in graph.nodes if n.op == Op.QCONV)
    assert select.measure_layer(node, "int8", "x86") > 0
    assert os.sched_getaffinity(0) == before


def test_artifacts_ms_times_side_by_side(monkeypatch):
    """artifacts_ms: every artifact in one interleaved time_executables call, each fed inputs
    of its manifest's shapes and dtypes; artifact_ms is its one-artifact case."""
    import lowbit

    examples = Path(__file__).resolve().parents[2] / "examples"
    artifact = lowbit.compile(examples / "digits_cnn.onnx", quant="int8",
                              calib=str(examples / "digits_calib.npz"),
                              input_shapes={"input": (8, 1, 8, 8)})
    calls = []
    real = latency.time_executables

    def spy(items, *args, **kwargs):
        calls.append([[(a.shape, a.dtype) for a in inputs] for _, inputs in items])
        return real(items, *args, **kwargs)

    monkeypatch.setattr(latency, "time_executables", spy)
    ms = latency.artifacts_ms([artifact, artifact])
    assert len(calls) == 1 and len(calls[0]) == 2 and calls[0][0] == calls[0][1]
    spec = artifact.inputs[0]
    assert calls[0][0][0] == (tuple(spec.shape), np.dtype(spec.dtype))
    assert len(ms) == 2 and all(math.isfinite(t) and t > 0 for t in ms)
    assert math.isfinite(latency.artifact_ms(artifact)) and len(calls) == 2
