"""Kernel selection (codegen/select.py): candidates per layer, static order, measured choice
with an on-disk cache, forced families, and the IR printer's ``# kernel=`` note."""

from __future__ import annotations

import json
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.codegen import select
from lowbit.codegen.revision import revision
from lowbit.codegen.select import STATIC_PREFERENCE, KernelChoice, MeasurementCache, select_kernels
from lowbit.codegen.target import resolve_target
from lowbit.ir import Graph, LoweringError, Op

tvm = pytest.importorskip("tvm")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
def layers(graph: Graph):
    return [n for n in graph.nodes if n.op in (Op.QCONV, Op.QMATMUL)]


def test_static_selection_records_candidates_and_prints(cnn):
    graph = cnn("w2a2")
    choices = select_kernels(graph, "x86", measure=False)
    assert set(choices) == {n.name for n in layers(graph)}
    conv3 = layers(graph)[1]
    c = choices[conv3.name]
    assert isinstance(c, KernelChoice) and c.family == "bitserial" and c.source == "static"
    assert [f for f, _ in c.candidates] == ["bitserial", "int8", "lut", "reference"]
    assert dict(c.rejected)["shiftadd"].startswith("it does not accept")
    assert "kernel_us" not in conv3.meta
    assert "# " in str(graph) and "kernel=bitserial" in str(graph)
    assert STATIC_PREFERENCE[0] == "bitserial"


def test_measured_selection_caches_to_disk(tmp_path, monkeypatch, cnn):
    """measure=True times every candidate once (reference included), picks the fastest,
    writes kernels.json; a second selection reads the cache and times nothing."""
    graph = cnn("int8")
    first = select_kernels(graph, "x86", cache_dir=tmp_path, measure=True)
    for node in layers(graph):
        c = first[node.name]
        assert c.source == "measured"
        times = dict(c.candidates)
        # (on CPUs with AMX tiles the amx family competes for some of them too)
        assert set(times) - {"amx"} == {"int8", "reference"}
        assert all(t > 0 for t in times.values())
        assert times[c.family] <= min(times.values()) * (1 + select.TIE_TOLERANCE)
        assert node.meta["kernel"] == c.family
        assert node.meta["kernel_us"] == pytest.approx(times[c.family], abs=1e-3)
    conv_times = dict(first[layers(graph)[1].name].candidates)
    assert conv_times["int8"] < conv_times["reference"]  # the scheduled GEMM wins a real conv
    data = json.loads((tmp_path / "kernels.json").read_text())["entries"]
    timed = sum(len(first[n.name].candidates) for n in layers(graph))
    assert len(data) == timed >= 8
    assert all(f"+{revision()}|" in k and "target=x86" in k for k in data)

    def no_timing(*args):
        raise AssertionError("a cached layer was timed again")

    monkeypatch.setattr(select, "measure_layer", no_timing)
    again = cnn("int8")
    second = select_kernels(again, "x86", cache_dir=tmp_path, measure=True)
    assert all(c.source == "cached" for c in second.values())
    assert {k: c.family for k, c in second.items()} == {k: c.family for k, c in first.items()}


def test_ties_break_by_name_and_default_cache_path(tmp_path, monkeypatch, cnn):
    """Equal times and equal weight bytes: the alphabetically first family wins; without
    cache_dir the cache lives under $XDG_CACHE_HOME/lowbit/kernels.json."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fixed(node, family, target):
        calls.append((node.name, family))
        return 5.0

    monkeypatch.setattr(select, "measure_layer", fixed)
    graph = cnn("w2a2")
    choices = select_kernels(graph, "x86", measure=True)
    host = resolve_target("x86")
    for node in layers(graph)[:2]:  # the fewest packed weight bytes, then the name
        pool = [f for f, _ in choices[node.name].candidates if f != "reference"]
        want = min(pool, key=lambda f: (select._weight_bytes(node, f, host), f))
        assert choices[node.name].family == want
    assert choices[layers(graph)[0].name].family == "int8"  # never reference on a tie
    assert (tmp_path / "lowbit" / "kernels.json").exists()
    # every candidate of every layer timed once: 2 + 4 + 4 + 2, plus amx where the CPU has
    # AMX tiles and a layer fills them (the third conv, as im2col + the tile GEMM)
    per_layer = [len(choices[n.name].candidates) for n in layers(graph)]
    assert len(calls) == sum(per_layer) and per_layer[:2] == [2, 4] and per_layer[3] == 2


def test_forced_family_is_honoured(cnn):
    graph = cnn("w2a2")
    conv3, conv7 = layers(graph)[1:3]
    choices = select_kernels(graph, "x86", measure=False,
                             forced={conv3.name: "lut", conv7.name: "reference"})
    assert conv3.meta["kernel"] == "lut" and choices[conv3.name].source == "forced"
    assert conv7.meta["kernel"] == "reference"


def test_forced_family_that_cannot_take_the_layer(cnn):
    graph = cnn("int8")
    conv = layers(graph)[1]
    with pytest.raises(LoweringError, match=rf"{conv.name}.*'bitserial'.*does not accept"):
        select_kernels(graph, "x86", measure=False, forced={conv.name: "bitserial"})
    with pytest.raises(LoweringError, match="unknown kernel family 'nope'"):
        select_kernels(graph, "x86", measure=False, forced={conv.name: "nope"})
    with pytest.raises(LoweringError, match="no QConv / QMatMul of that name"):
        select_kernels(graph, "x86", measure=False, forced={"missing": "int8"})


def test_cross_target_is_not_measured(monkeypatch, cnn):
    """arm64 code cannot run here: the static order applies even with measure=True, and
    families without an ARM path (shiftadd_int8: VNNI only) are not candidates."""
    monkeypatch.setattr(select, "measure_layer", lambda *a: pytest.fail("timed on arm64"))
    graph = cnn("pow2")
    choices = select_kernels(graph, "arm64", measure=True)
    conv = layers(graph)[1]
    assert choices[conv.name].family == "int8" and choices[conv.name].source == "static"
    assert "shiftadd_int8" in dict(choices[conv.name].rejected)


def test_cache_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "sub" / "kernels.json"
    a, b = MeasurementCache(path), MeasurementCache(path)
    a.put("k1", 1.5)
    a.save()
    b.put("k2", 2.5)
    b.save()  # merges with what a wrote
    assert json.loads(path.read_text())["entries"] == {"k1": 1.5, "k2": 2.5}
    assert [p.name for p in path.parent.iterdir()] == ["kernels.json"]
    path.write_text("not json")
    assert MeasurementCache(path).entries == {}


def test_selected_graph_builds_bit_exact(cnn):
    """select -> build -> run: the selected graph equals the integer simulator."""
    from lowbit.codegen.build import build
    from tvm import relax

    graph = cnn("ternary")
    middle = {n.name: "lut" for n in layers(graph)[1:-1]}  # the ternary layers, on LUT
    select_kernels(graph, "x86", measure=False, forced=middle)
    assert layers(graph)[1].meta["kernel"] == "lut"
    x = np.load(EXAMPLES / "digits_calib.npz")["input"][:8].astype(np.float32)
    vm = relax.VirtualMachine(build(graph, "x86"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = lowbit.run_reference(graph, {"input": x})[graph.outputs[0].name]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_measuring_leaves_the_callers_thread_pool_free(monkeypatch):
    """Timing runs on its own one-thread pool: a Python thread that measured a layer can still
    run two TVM threads after (TVM caps a thread's pool at the TVM_NUM_THREADS it was created
    under, so measuring on the caller's own pool pinned it to one thread), and the
    environment variable is back as it was."""
    import threading

    import tvm
    from lowbit.codegen.build import build
    from lowbit.ir import FLOAT32

    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    g = Graph("relu")
    x = g.add_input("x", FLOAT32, (4, 64))
    g.outputs = [g.add_node(Op.RELU, [x], None, name="relu", outputs=["y"],
                            out_types=[(FLOAT32, (4, 64))]).outputs[0]]
    ex = build(g, "x86")
    seen = {}

    def caller():  # a fresh thread: its pool is created by what it does here
        seen["us"] = select.time_executable(ex, [np.ones((4, 64), np.float32)])
        tvm.get_global_func("runtime.config_threadpool")(0, 2)
        seen["threads"] = int(tvm.runtime.num_threads())

    worker = threading.Thread(target=caller)
    worker.start()
    worker.join()
    assert seen["us"] > 0
    assert seen["threads"] == 2
    assert __import__("os").environ["TVM_NUM_THREADS"] == "2"


def test_time_executables_takes_turns_and_orders_by_work(monkeypatch):
    """Whole-model timing: every executable is timed once per round (repeats rounds), and a
    graph doing 64x the work measures slower than the small one."""
    from lowbit.codegen.build import build
    from lowbit.ir import FLOAT32

    def relu(n):
        g = Graph(f"relu{n}")
        x = g.add_input("x", FLOAT32, (n, 1024))
        g.outputs = [g.add_node(Op.RELU, [x], None, name="relu", outputs=["y"],
                                out_types=[(FLOAT32, (n, 1024))]).outputs[0]]
        return build(g, "x86"), [np.ones((n, 1024), np.float32)]

    monkeypatch.setattr(select, "MIN_REPEAT_MS", 1)
    small, big = relu(4), relu(256)
    us = select.time_executables([small, big], repeats=3)
    assert len(us) == 2 and 0 < us[0] < us[1]


@pytest.mark.parametrize("lut_us,want", [(10.3, "lut"), (11.0, "bitserial")])
def test_near_ties_go_to_the_smaller_weights(monkeypatch, tmp_path, cnn, lut_us, want):
    """Within TIE_TOLERANCE of the fastest the family storing fewer weight bytes wins (lut's
    2-bit codes over the popcount kernel's word-padded planes); beyond it the fastest."""
    fake = {"bitserial": 10.0, "int8": 30.0, "lut": lut_us}
    monkeypatch.setattr(select, "measure_layer",
                        lambda node, family, target: fake.get(family, 99.0))
    graph = cnn("w2a2")
    conv = layers(graph)[1]
    choices = select_kernels(graph, "x86", measure=True, cache_dir=tmp_path)
    host = resolve_target("x86")
    assert select._weight_bytes(conv, "lut", host) < select._weight_bytes(
        conv, "bitserial", host)
    assert choices[conv.name].family == want
