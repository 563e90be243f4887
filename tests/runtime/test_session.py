"""lowbit.Session on a real payload: a 2-layer MLP built with the full TVM (onnx.helper ->
relax from_onnx -> tvm.compile -> export_library), saved as .lbx, compared to onnxruntime;
input/output checking; threads; and a run under a runtime-only TVM in a subprocess."""

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import lowbit
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from lowbit.ir.errors import ArtifactError, ExecutionError
from lowbit.runtime.artifact import (
    Artifact,
    PlanRow,
    TargetSpec,
    TensorSpec,
    export_payload,
    load_artifact,
)
from lowbit.runtime.session import Session
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")

BATCH, IN, HIDDEN, OUT = 3, 64, 256, 4


def _mlp() -> onnx.ModelProto:
    """y = relu(x·W1 + b1)·W2, with the hidden activation h as a second output."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (IN, HIDDEN)), ("b1", (HIDDEN,)), ("W2", (HIDDEN, OUT)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, OUT]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [BATCH, HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return _mlp()


@pytest.fixture(scope="module")
def artifact(model) -> Artifact:
    from tvm.relax.frontend.onnx import from_onnx

    target = {"kind": "llvm"}  # generic x86-64: runs on any x86 host
    executable = tvm.compile(from_onnx(model, keep_params_in_input=False),
                             target=tvm.target.Target(target))
    return Artifact(target=TargetSpec.from_tvm("x86", target, ()),
                    inputs=(TensorSpec("x", (BATCH, IN), "float32"),),
                    outputs=(TensorSpec("y", (BATCH, OUT), "float32"),
                             TensorSpec("h", (BATCH, HIDDEN), "float32")),
                    payload=export_payload(executable),
                    plan=(PlanRow("fc1", "MatMul", "tvm-default"),
                          PlanRow("fc2", "MatMul", "tvm-default")))


@pytest.fixture(scope="module")
def path(artifact, tmp_path_factory) -> Path:
    return artifact.save(tmp_path_factory.mktemp("session") / "mlp.lbx")


@pytest.fixture(scope="module")
def session(path) -> Session:
    return Session(path)


def _reference(model, x):
    ort_session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    return ort_session.run(["y", "h"], {"x": x})


def _x(seed=1):
    return np.random.default_rng(seed).standard_normal((BATCH, IN)).astype(np.float32)


def test_matches_onnxruntime(session, model):
    x = _x()
    y, h = session.run(None, {"x": x})
    y_ref, h_ref = _reference(model, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)
    assert y.dtype == np.float32 and y.shape == (BATCH, OUT)


def test_output_selection_and_order(session):
    x = _x()
    y, h = session.run(None, {"x": x})
    h2, y2, h3 = session.run(["h", "y", "h"], {"x": x})
    assert np.array_equal(h2, h) and np.array_equal(y2, y) and np.array_equal(h3, h)
    assert session.run([], {"x": x}) == []


def test_non_contiguous_input(session):
    x = np.asfortranarray(_x())
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(session.run(["y"], {"x": x})[0],
                                  session.run(["y"], {"x": np.ascontiguousarray(x)})[0])


def test_misaligned_input_and_owned_outputs(session):
    """An input at an address TVM's DLPack import would refuse (not 64-byte aligned) runs
    like an aligned one; outputs are the caller's own arrays (writable, not reused by the next
    run) and the caller's input is never written."""
    x = _x()
    raw = np.empty(x.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + 4  # 4 bytes past a 64-byte boundary
    shifted = raw[start:start + x.nbytes].view(np.float32).reshape(x.shape)
    shifted[...] = x
    assert shifted.ctypes.data % 64
    want = session.run(["y"], {"x": x})[0]
    first = session.run(["y"], {"x": shifted})[0]
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(shifted, x)
    kept = first.copy()
    assert first.flags.writeable and first.flags.owndata
    session.run(["y"], {"x": _x(seed=5)})
    np.testing.assert_array_equal(first, kept)


def test_io_records(session):
    assert [(s.name, s.shape, s.dtype) for s in session.get_inputs()] == [
        ("x", (BATCH, IN), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in session.get_outputs()] == [
        ("y", (BATCH, OUT), "float32"), ("h", (BATCH, HIDDEN), "float32")]
    assert f"x: float32[{BATCH},{IN}]" in repr(session)
    assert session.target.name == "x86" and session.entry == "main"
    assert [row.kernel for row in session.plan] == ["tvm-default", "tvm-default"]


def test_exported_from_package_root(path):
    assert lowbit.Session is Session
    assert "Session" in lowbit.__all__


@pytest.mark.parametrize("feeds, message", [
    ({}, f"missing input 'x'.*float32\\[{BATCH},{IN}\\]"),
    ({"x": np.zeros((BATCH, IN), np.float32), "z": np.zeros(1)}, "unknown input 'z'.*x: float32"),
    ({"x": np.zeros((2, IN), np.float32)},
     f"input 'x' expected shape \\({BATCH}, {IN}\\), got \\(2, {IN}\\)"),
    ({"x": np.zeros((BATCH, IN))}, "input 'x' expected dtype float32, got float64"),
    ({"x": np.zeros((BATCH, IN), np.int8)}, "expected dtype float32, got int8"),
    ({"x": [[0.0] * IN] * BATCH}, "input 'x' must be a numpy ndarray, got list"),
])
def test_bad_feeds(session, feeds, message):
    with pytest.raises(ExecutionError, match=message):
        session.run(None, feeds)


def test_bad_output_names(session):
    with pytest.raises(ExecutionError, match="unknown output 'logits'; valid outputs: y, h"):
        session.run(["y", "logits"], {"x": _x()})
    with pytest.raises(ExecutionError, match="list of names"):
        session.run("y", {"x": _x()})


def test_concurrent_runs(session, model):
    """Eight threads, each with its own inputs, all at once: every result exact."""
    inputs = [_x(seed) for seed in range(8)]
    expected = [session.run(["y"], {"x": x})[0] for x in inputs]
    np.testing.assert_allclose(expected[3], _reference(model, inputs[3])[0], rtol=1e-5,
                               atol=1e-5)
    errors, start = [], threading.Barrier(8)

    def work(i):
        start.wait()
        try:
            for _ in range(200):
                got = session.run(["y"], {"x": inputs[i]})[0]
                if not np.array_equal(got, expected[i]):
                    errors.append(f"thread {i}: wrong result")
        except Exception as exc:  # noqa: BLE001 - a thread's exception must fail the test
            errors.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_thread_count_is_applied(path):
    """threads=N sets the calling thread's TVM pool to N (checked on fresh threads)."""
    seen = {}

    def work(n):
        Session(path, threads=n).run(["y"], {"x": _x()})
        seen[n] = int(tvm.runtime.num_threads())

    for n in (1, 2):
        thread = threading.Thread(target=work, args=(n,))
        thread.start()
        thread.join()
    assert seen == {1: 1, 2: 2}
    with pytest.raises(ExecutionError, match="threads must be a positive int"):
        Session(path, threads=0)


def test_thread_pool_created_under_a_lower_cap(path, monkeypatch):
    """TVM sizes a thread's pool once; asking for more later is an error that says the fix."""
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    caught = []

    def work():
        tvm.runtime.num_threads()  # creates this thread's pool, capped at 1
        try:
            Session(path, threads=2).run(["y"], {"x": _x()})
        except ExecutionError as exc:
            caught.append(str(exc))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert len(caught) == 1 and "set TVM_NUM_THREADS=2 before the first TVM call" in caught[0]


def test_payload_written_privately_and_removed(path, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    modes = []
    real_load = tvm.runtime.load_module

    def spy(file_name, *args, **kwargs):
        modes.append(stat.S_IMODE(os.stat(file_name).st_mode))
        return real_load(file_name, *args, **kwargs)

    monkeypatch.setattr(tvm.runtime, "load_module", spy)
    Session(path).run(["y"], {"x": _x()})
    assert modes == [0o600]
    assert list(tmp_path.iterdir()) == []


def test_invalid_payload_with_valid_checksum(artifact, tmp_path):
    fake = Artifact(artifact.target, artifact.inputs, artifact.outputs,
                    payload=b"\x7fELF" + b"\0" * 300)
    with pytest.raises(ArtifactError, match="TVM could not load the payload"):
        Session(fake.save(tmp_path / "fake.lbx"))


def test_manifest_that_does_not_fit_the_payload(artifact, tmp_path):
    wrong_entry = Artifact(artifact.target, artifact.inputs, artifact.outputs,
                           payload=artifact.payload, entry="forward")
    with pytest.raises(ArtifactError, match="no VM function 'forward'"):
        Session(wrong_entry.save(tmp_path / "entry.lbx"))
    extra_input = Artifact(artifact.target, (*artifact.inputs, TensorSpec("z", (1,), "float32")),
                           artifact.outputs, payload=artifact.payload)
    with pytest.raises(ArtifactError, match="takes 1 arguments but the manifest lists 2 inputs "
                                             "and 0 stored weights"):
        Session(extra_input.save(tmp_path / "arity.lbx"))


def test_corrupt_file_is_an_artifact_error(path, tmp_path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.lbx"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        Session(bad)
    bad.write_bytes(bytes(data[:1000]))
    with pytest.raises(ArtifactError, match="truncated"):
        Session(bad)


RUNTIME_ONLY_SCRIPT = """
import json, sys
import numpy as np
from lowbit.runtime.session import Session
import tvm
assert tvm.base._RUNTIME_ONLY, "not in runtime-only mode"
x = np.load(sys.argv[2])
session = Session(sys.argv[1], threads=1)
y, h = session.run(["y", "h"], {"x": x})
try:
    import tvm.relax  # noqa: F401
    relax = "importable"
except Exception as exc:
    relax = type(exc).__name__
np.save(sys.argv[3], y)
print(json.dumps({"relax": relax, "compiler": "tvm.relax.frontend" in sys.modules}))
"""


def test_runs_under_runtime_only_tvm(path, model, tmp_path):
    x = _x(7)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    done = subprocess.run([sys.executable, "-c", RUNTIME_ONLY_SCRIPT, str(path),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          check=False, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"relax": report["relax"], "compiler": False}
    assert report["relax"] != "importable"  # tvm.relax does not import in runtime-only mode
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _reference(model, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_loaded_artifact_round_trips(artifact, path):
    assert load_artifact(path) == artifact
