"""``lowbit.compile`` / ``compile_model``: the digits CNN compiled, saved and run through
``lowbit.Session`` against the integer simulator and onnxruntime; manifest, dumps, early errors.

Tolerance vs the simulator: the integer layers are bit-exact (the kernels compute the
simulator's formulas), so outputs differ only by the final float DequantizeLinear
``(q − zp) · scale``: we allow 4 float32 ulps of the output magnitude,
``atol = 4 · 2^-23 · max|reference|`` (about 5e-6 for logits near 10), ``rtol = 0``.
"""

import dataclasses
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import lowbit
import numpy as np
import onnxruntime as ort
import pytest
from lowbit.compiler.cli import main
from lowbit.codegen.kernels.int8 import reduces_range
from lowbit.codegen.lowering import STORED_MIN_BYTES
from lowbit.codegen.target import resolve_target
from lowbit.compiler.driver import (
    STAGES,
    PlainStageLog,
    StageLog,
    compile_model,
    plan_rows,
    target_recipe,
)
from lowbit.compiler.recipes import preset
from lowbit.ir import Op
from lowbit.ir.errors import ArtifactError, InvalidModelError, LoweringError, QuantizationError
from lowbit.runtime import artifact as artifact_module
from lowbit.runtime.artifact import Artifact, TargetSpec, cross_linker, host_arch, load_artifact
from lowbit.runtime.reference import run_reference

EXAMPLES = Path(lowbit.__file__).parent / "examples"
MODEL = EXAMPLES / "digits_cnn.onnx"
CALIB = EXAMPLES / "digits_calib.npz"
SHAPES = {"input": (8, 1, 8, 8)}
ULP32 = 2.0 ** -23


def _images(start=0):
    return np.load(EXAMPLES / "digits_eval.npz")["input"][start:start + 8]


def assert_dequantize_close(out, ref):
    """Equal up to the final float dequantize: 4 float32 ulps of max |ref| (module doc)."""
    np.testing.assert_allclose(out, ref, rtol=0, atol=4 * ULP32 * float(np.abs(ref).max()))


@pytest.fixture(scope="module", params=["int8", "w4a8"])
def compiled(request, tmp_path_factory):
    result = compile_model(MODEL, "x86", request.param, str(CALIB), None, SHAPES)
    path = result.artifact.save(tmp_path_factory.mktemp(request.param) / "m.lbx")
    return request.param, result, path


def test_session_equals_integer_simulator(compiled):
    _quant, result, path = compiled
    session = lowbit.Session(path)
    for start in (0, 8, 100):
        x = _images(start)
        (out,) = session.run(None, {"input": x})
        ref = run_reference(result.graph, {"input": x})["logits"]
        assert out.dtype == np.float32 and out.shape == (8, 10)
        assert_dequantize_close(out, ref)


def test_manifest_plan_and_specs(compiled):
    quant, result, path = compiled
    art = load_artifact(path)
    assert [(s.name, s.shape, s.dtype) for s in art.inputs] == [("input", (8, 1, 8, 8),
                                                                  "float32")]
    assert [(s.name, s.shape, s.dtype) for s in art.outputs] == [("logits", (8, 10), "float32")]
    assert art.target.name == "x86" and art.target.arch == "x86_64"
    layers = [n for n in result.graph.nodes if n.op in (Op.QCONV, Op.QMATMUL)]
    assert len(layers) == 4 and len(art.plan) == 4
    assert [r.layer for r in art.plan] == [n.name for n in layers]
    w_bits = [dict(r.details)["w_bits"] for r in art.plan]
    # first and last layer stay int8 in every preset; the middle ones follow the preset; the
    # int8 preset's layers take 7 bits where the host reduces the range, the first/last
    # exception of a low-bit preset keeps 8
    eight = 7 if reduces_range(resolve_target("x86")) else 8
    assert w_bits == ([eight] * 4 if quant == "int8" else [8, 4, 4, 8])
    assert any(row.kernel != "reference" for row in art.plan)  # a fast family took some layer
    for row in art.plan:
        details = dict(row.details)
        # the plan records the family select_kernels measured fastest for each layer
        assert row.kernel == result.graph.node_by_name(row.layer).meta["kernel"]
        assert row.kernel in {"int8", "lut", "bitserial", "shiftadd", "shiftadd_int8", "amx",
                              "reference"} and row.op in ("QConv", "QMatMul")
        assert details["format"] == "uniform" and details["a_bits"] == 8
        assert details["acc"] in ("int32", "int64")
    assert tuple(name for name, _ in result.times) == STAGES[:6]


def _stored_entries(path) -> dict:
    """The manifest's stored-weight entries of the .lbx at ``path``, by name."""
    data = Path(path).read_bytes()
    _, _, m, _ = struct.unpack_from("<8sIQQ", data)
    manifest = json.loads(data[artifact_module.HEADER_SIZE:artifact_module.HEADER_SIZE + m])
    return {w["name"]: w for w in manifest["weights"]}


def test_kernel_weights_are_stored_at_the_plans_bits(compiled):
    """A w-bit layer's weights take ~w bits per weight on disk whatever its kernel's layout
    (int8 keeps a byte per weight in memory): the 4-bit export is smaller than the 8-bit one."""
    quant, result, path = compiled
    art = load_artifact(path)
    entries = _stored_entries(path)
    assert [name for name, _ in art.weights] == list(entries)
    for row in art.plan:
        details = dict(row.details)
        node = result.graph.node_by_name(row.layer)
        weights = int(node.inputs[1].numel)
        entry = entries.get(f"{row.layer}:w0")  # the packed weights, whatever the family
        if entry is None:  # a layout under the threshold stays inside the library
            assert weights * details["w_bits"] / 8 < STORED_MIN_BYTES, row
            continue
        assert entry["length"] <= 1.5 * weights * details["w_bits"] / 8 + 64, (row, entry)
        if entry["encoding"] == "palette":
            assert entry["bits"] <= details["w_bits"]
    assert art.stored_weight_bytes == sum(e["length"] for e in entries.values())
    assert art.stored_weight_bytes < art.weight_memory_bytes or quant == "int8"


RUNTIME_ONLY = """
import sys
import numpy as np
import tvm
assert tvm.base._RUNTIME_ONLY, "not in runtime-only mode"
from lowbit.runtime.session import Session
(y,) = Session(sys.argv[1], threads=1).run(None, {"input": np.load(sys.argv[2])})
np.save(sys.argv[3], y)
"""


def test_stored_weights_load_under_runtime_only_tvm(compiled, tmp_path):
    _quant, _result, path = compiled
    x = _images(16)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], check=False, capture_output=True, text=True,
                          env=dict(os.environ, TVM_USE_RUNTIME_LIB="1"), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (here,) = lowbit.Session(path, threads=1).run(None, {"input": x})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), here)


def test_quant_none_equals_onnxruntime(tmp_path):
    art = lowbit.compile(str(MODEL), quant="none", input_shapes=SHAPES)
    assert isinstance(art, Artifact) and art.plan == ()
    path = art.save(tmp_path / "fp32.lbx")
    x = _images(16)
    (out,) = lowbit.Session(path).run(["logits"], {"input": x})
    (expected,) = ort.InferenceSession(str(MODEL)).run(None, {"input": x})
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_dump_ir_writes_passes_quantize_and_relax(tmp_path):
    dump = tmp_path / "dump"
    result = compile_model(MODEL, "x86", "int8", str(CALIB), None, SHAPES, dump_ir=dump)
    assert (dump / "passes" / "00-input.txt").is_file()
    assert any(p.name.endswith("fold_scales.txt") for p in (dump / "quantize").iterdir())
    assert (dump / "final.txt").read_text() == str(result.graph)
    script = (dump / "relax.py").read_text()
    assert script == result.relax_script and "def main(" in script and "R.call_tir" in script


def test_stage_logs_time_every_stage_in_order(tmp_path):
    import io

    stream = io.StringIO()
    log = PlainStageLog(stream)
    result = compile_model(MODEL, "x86", "none", None, None, SHAPES, log=log)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == list(STAGES[:6])
    assert "skipped" in lines[2] and all(s >= 0 for _, s in result.times)
    # a second compile on the same log reports only its own stages
    again = compile_model(MODEL, "x86", "none", None, None, SHAPES, log=log)
    assert len(again.times) == 6 and len(log.times) == 12


def test_failed_stage_is_not_recorded():
    log = StageLog()
    with pytest.raises(InvalidModelError):
        compile_model(EXAMPLES / "missing.onnx", "x86", "none", None, None, None, log=log)
    assert log.times == []


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"quant": "int9", "calib": str(CALIB)}, QuantizationError, "unknown --quant preset 'int9'"),
    ({"quant": "w4a8"}, QuantizationError, "needs calibration data"),
    ({"quant": "none", "target": "riscv"}, LoweringError, "unknown target 'riscv'"),
])
def test_bad_requests_fail_before_any_stage(kwargs, error, pattern):
    log = StageLog()
    # the model does not exist: the request checks must fire before the import stage
    with pytest.raises(error, match=pattern):
        compile_model("/nonexistent/model.onnx", log=log, **kwargs)
    assert log.times == []


def test_plan_rows_skip_float_layers():
    graph = lowbit.quantize(str(MODEL), quant="none", input_shapes=SHAPES)
    assert plan_rows(graph) == ()
    assert any(n.op == Op.CONV for n in graph.nodes)


def test_rich_stage_log_on_a_terminal():
    import io
    import re

    from lowbit.compiler.driver import RichStageLog, stage_log_for
    from rich.console import Console

    buffer = io.StringIO()
    log = RichStageLog(Console(file=buffer, force_terminal=True, width=100))
    try:
        compile_model(MODEL, "x86", "none", None, None, SHAPES, log=log)
    finally:
        log.close()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buffer.getvalue())
    final = text.splitlines()[-6:]
    assert [line.split()[1] for line in final] == list(STAGES[:6])
    assert all(line.startswith("✓") for line in final), final
    assert "skipped (--quant none)" in final[2]
    # not a terminal: plain lines; quiet: nothing
    assert isinstance(stage_log_for(io.StringIO()), PlainStageLog)
    assert type(stage_log_for(io.StringIO(), quiet=True)) is StageLog


def _aarch64_linker_or_skip():
    try:
        return cross_linker(TargetSpec("arm64", "aarch64", ("neon",)))
    except LoweringError:
        pytest.skip("no aarch64 cross linker: apt-get install g++-aarch64-linux-gnu")


def _elf_machine(payload: bytes) -> int:
    """ELF64 little-endian header: magic at 0, class (2 = 64-bit) at 4, e_machine u16 at 18."""
    magic, elf_class, data = struct.unpack_from("<4sBB", payload, 0)
    assert (magic, elf_class, data) == (b"\x7fELF", 2, 1), payload[:6]
    return struct.unpack_from("<H", payload, 18)[0]


EM_AARCH64 = 183


def _read_lbx(path: Path) -> tuple[dict, bytes]:
    """Manifest and library of a .lbx file built for another architecture (fully checked but
    the host's ability to run it)."""
    art = load_artifact(path, host_check=False)
    return art.manifest(), art.payload


def test_missing_cross_linker_is_one_lowering_error(monkeypatch):
    # arm64 code is generated, but linking it needs a cross linker: pretend none is installed
    if host_arch() == "aarch64":
        pytest.skip("host is aarch64: arm64 links natively")
    monkeypatch.setattr(artifact_module.shutil, "which", lambda name: None)
    with pytest.raises(LoweringError, match=r"no cross linker for aarch64 .*target 'arm64'.*"
                       r"apt-get install g\+\+-aarch64-linux-gnu.*compile on an aarch64 host") \
            as info:
        compile_model(MODEL, "arm64", "none", None, None, SHAPES)
    assert "\n" not in str(info.value)


def test_failing_cross_linker_is_one_lowering_error(monkeypatch):
    if host_arch() == "aarch64":
        pytest.skip("host is aarch64: arm64 links natively")
    monkeypatch.setattr(artifact_module.shutil, "which", lambda name: "/bin/false")
    with pytest.raises(LoweringError, match="linking the compiled library for target 'arm64' "
                       "failed: .*check that the cross linker") as info:
        compile_model(MODEL, "arm64", "none", None, None, SHAPES)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("quant", ["none", "int8"])
def test_arm64_artifact_is_an_aarch64_library(quant, tmp_path):
    _aarch64_linker_or_skip()
    calib = None if quant == "none" else str(CALIB)
    art = lowbit.compile(str(MODEL), "arm64", quant, calib, input_shapes=SHAPES)
    assert _elf_machine(art.payload) == EM_AARCH64
    target = art.manifest()["target"]
    assert (target["name"], target["arch"], target["features"]) == ("arm64", "aarch64", ["neon"])
    assert len(art.plan) == (0 if quant == "none" else 4)
    path = art.save(tmp_path / "arm.lbx")
    assert path.read_bytes() == art.to_bytes()
    assert _read_lbx(path) == (art.manifest(), art.payload)
    # the quantized layers' weights are stored beside the library, and unpack the same
    loaded = load_artifact(path, host_check=False)
    assert len(loaded.weights) == len(art.weights) == (0 if quant == "none" else 3)
    for (name, want), (got_name, got) in zip(art.weights, loaded.weights):
        assert name == got_name and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    if host_arch() == "aarch64":
        return  # it runs here: the other tests cover Session
    with pytest.raises(ArtifactError, match=f"built for aarch64 .*this host is {host_arch()}") \
            as info:
        lowbit.Session(path)
    assert "\n" not in str(info.value)


def test_arm64_links_with_the_c_cross_compiler_alone(monkeypatch):
    # the payload needs no libstdc++: gcc-aarch64-linux-gnu without the g++ package is enough
    linker = _aarch64_linker_or_skip()
    gcc = linker.removesuffix("g++") + "gcc"
    if not Path(gcc).exists():
        pytest.skip(f"{gcc} not installed")
    if host_arch() == "aarch64":
        pytest.skip("host is aarch64: arm64 links natively")
    monkeypatch.setattr(artifact_module.shutil, "which",
                        lambda name: gcc if name.endswith("-gcc") else None)
    art = lowbit.compile(str(MODEL), "arm64", "none", input_shapes=SHAPES)
    assert _elf_machine(art.payload) == EM_AARCH64


def test_cli_compiles_for_arm64(tmp_path, capsys):
    _aarch64_linker_or_skip()
    out = tmp_path / "out.lbx"
    assert main(["compile", str(MODEL), "--target", "arm64", "--quant", "int8", "--calib",
                 str(CALIB), "--input-shape", "input=8,1,8,8", "-o", str(out), "-q"]) == 0
    manifest, payload = _read_lbx(out)
    assert manifest["target"]["name"] == "arm64" and manifest["target"]["arch"] == "aarch64"
    assert _elf_machine(payload) == EM_AARCH64


@pytest.mark.parametrize("target, expected", [
    ("x86-avx2", True), ("x86-avx512", False), ("arm64", False), ("cuda", False)])
def test_reduce_range_auto_follows_the_target(target, expected):
    """8-bit weights become 7-bit exactly where the int8 kernel would take the half-rate
    exact path (AVX2 without VNNI); an explicit recipe value is kept on every target."""
    tgt = resolve_target(target)
    assert target_recipe(preset("int8"), tgt).reduce_range is expected
    for forced in (True, False):
        kept = dataclasses.replace(preset("int8"), reduce_range=forced)
        assert target_recipe(kept, tgt).reduce_range is forced


def test_reduce_range_compiles_7_bit_weights_bit_exact(tmp_path):
    recipe = dataclasses.replace(preset("int8"), reduce_range=True)
    result = compile_model(MODEL, "x86", "int8", str(CALIB), recipe, SHAPES)
    layers = [n for n in result.graph.nodes if n.op in (Op.QCONV, Op.QMATMUL)]
    assert {n.inputs[1].qtype.bits for n in layers} == {7}
    assert all(np.abs(n.inputs[1].const).max() <= 63 for n in layers)
    assert [dict(r.details)["w_bits"] for r in result.artifact.plan] == [7] * 4
    path = result.artifact.save(tmp_path / "m.lbx")
    x = _images(0)
    (out,) = lowbit.Session(path).run(None, {"input": x})
    assert_dequantize_close(out, run_reference(result.graph, {"input": x})["logits"])

