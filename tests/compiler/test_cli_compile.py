"""``lowbit compile / run / bench / demo``: files, outputs, timings, one-line exit-2 errors.

Outputs of ``lowbit run`` are compared with the integer simulator on the same quantized graph
(``lowbit.quantize`` is deterministic for a given calibration set) within 4 float32 ulps of the
output magnitude: the integer layers are bit-exact, only the final float dequantize may round
differently (see tests/compiler/test_driver.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.codegen.target import resolve_target
from lowbit.compiler.cli import main
from lowbit.compiler.driver import target_recipe
from lowbit.compiler.recipes import preset
from lowbit.runtime.artifact import load_artifact
from lowbit.runtime.reference import run_reference

EXAMPLES = Path(lowbit.__file__).parent / "examples"
MODEL = EXAMPLES / "digits_cnn.onnx"
CALIB = EXAMPLES / "digits_calib.npz"
SHAPES = {"input": (8, 1, 8, 8)}
ULP32 = 2.0 ** -23


def _images():
    return np.load(EXAMPLES / "digits_eval.npz")["input"][:8]


def _one_line_error(capsys, code, pattern):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("lowbit: ") and pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An int8 artifact compiled through the CLI, its stderr, and an inputs file."""
    folder = tmp_path_factory.mktemp("cli")
    np.savez(folder / "in.npz", input=_images())
    np.save(folder / "x.npy", _images())
    np.savez(folder / "wrong.npz", image=_images())
    lbx = folder / "m.lbx"
    proc = subprocess.run(
        [sys.executable, "-m", "lowbit.compiler.cli", "compile", str(MODEL), "--target", "x86",
         "--quant", "int8", "--calib", str(CALIB), "--input-shape", "input=8,1,8,8",
         "--dump-ir", str(folder / "dump"), "-o", str(lbx)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return folder, lbx, proc.stderr


def test_inspect_prints_a_compiled_artifact(work, capsys):
    _folder, lbx, err = work
    art = load_artifact(lbx)
    # the compile report names the stored weights' bytes on disk and in memory
    assert f"kernel weights {art.stored_weight_bytes:,} B on disk" in err
    assert main(["inspect", str(lbx)]) == 0
    out = capsys.readouterr().out
    assert f"{lbx}: {lbx.stat().st_size:,} B" in out
    assert "target x86 (x86_64;" in out and "input  input: float32[8,1,8,8]" in out
    for row in art.plan:
        assert f"  {row.layer}  {row.op}  kernel={row.kernel}  " in out
    for name, array in art.weights:
        assert f"  {name}  {array.dtype}[{','.join(map(str, array.shape))}]  " in out
    assert main(["inspect", str(lbx), "--format", "json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest == art.manifest()
    _one_line_error(capsys, main(["inspect", str(lbx), "--quant", "int8"]),
                    "--quant applies to ONNX models")
    _one_line_error(capsys, main(["inspect", str(lbx), "--passes", "none"]),
                    "--passes applies to ONNX models")
    out_file = lbx.parent / "manifest.txt"
    assert main(["inspect", str(lbx), "-o", str(out_file)]) == 0
    assert "kernel=" in out_file.read_text()


def test_compile_writes_artifact_and_shows_stages(work):
    folder, lbx, err = work
    assert lbx.is_file() and lowbit.Session(lbx).get_inputs()[0].shape == (8, 1, 8, 8)
    # not a terminal: one plain line per stage, in order, with its time
    stage_lines = [line.split()[1] for line in err.splitlines() if line.endswith(")")
                   or line.rstrip().endswith(" s")]
    assert stage_lines[:7] == ["import", "passes", "quantize", "select", "lower", "compile",
                               "save"]
    assert "wrote" in err.splitlines()[-1]
    assert "def main(" in (folder / "dump" / "relax.py").read_text()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_run_outputs_equal_the_integer_simulator(work, capsys):
    folder, lbx, _ = work
    out = folder / "out.npz"
    assert main(["run", str(lbx), "--inputs", str(folder / "in.npz"), "-o", str(out)]) == 0
    got = np.load(out)["logits"]
    # the int8 preset as `lowbit compile` resolves it for this host (reduce_range "auto")
    recipe = target_recipe(preset("int8"), resolve_target("x86"))
    graph = lowbit.quantize(str(MODEL), recipe=recipe, calib=str(CALIB), input_shapes=SHAPES)
    ref = run_reference(graph, {"input": _images()})["logits"]
    np.testing.assert_allclose(got, ref, rtol=0, atol=4 * ULP32 * float(np.abs(ref).max()))
    # and the same bytes as the Python Session gives
    (session_out,) = lowbit.Session(lbx).run(None, {"input": _images()})
    np.testing.assert_array_equal(got, session_out)


def test_run_prints_outputs_and_timing(work, capsys):
    folder, lbx, _ = work
    code = main(["run", str(lbx), "--input", f"input={folder / 'x.npy'}", "--repeat", "4",
                 "--print-time"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("logits: float32[8,10]")
    timing = [line for line in out.splitlines() if line.startswith("time:")]
    assert len(timing) == 1
    for word in ("mean", "median", "min", "max", "std", "(4 runs)"):
        assert word in timing[0]


def test_run_error_subprocess_exit_code(work, tmp_path):
    folder, lbx, _ = work
    corrupt = tmp_path / "corrupt.lbx"
    data = bytearray(lbx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "lowbit.compiler.cli", "run", str(corrupt),
                           "--inputs", str(folder / "in.npz")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "checksum mismatch" in proc.stderr


@pytest.mark.parametrize("args, pattern", [
    (["compile", "missing.onnx", "-o", "{tmp}/a.lbx"], "model file 'missing.onnx' does not exist"),
    (["compile", str(MODEL), "--calib", str(CALIB), "--input-shape", "input=8,x", "-o",
      "{tmp}/a.lbx"], "--input-shape 'input=8,x': dims must be integers"),
    (["compile", str(MODEL), "--input-shape", "input", "-o", "{tmp}/a.lbx"],
     "expected NAME=D0,D1"),
    (["compile", str(MODEL), "--quant", "int7", "--calib", str(CALIB), "-o", "{tmp}/a.lbx"],
     "unknown --quant preset 'int7'"),
    (["compile", str(MODEL), "--quant", "w4a8", "-o", "{tmp}/a.lbx"],
     "needs calibration data"),
    (["compile", str(MODEL), "--quant", "none", "--target", "sparc", "-o", "{tmp}/a.lbx"],
     "unknown target 'sparc'"),
    (["compile", str(MODEL), "--quant", "none", "-o", "{tmp}/no/such/dir/a.lbx"],
     "does not exist"),
    (["bench", str(MODEL), "--quant", "int8"], "needs calibration data"),
    (["bench", "missing.onnx", "--quant", "none"], "does not exist"),
])
def test_compile_errors_are_one_line(args, pattern, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    _one_line_error(capsys, code, pattern)
    assert not list(tmp_path.rglob("*.lbx")) and not list(tmp_path.rglob("*.tmp"))


def test_failed_compile_leaves_no_file(tmp_path, capsys):
    # fails in the import stage (bad model bytes), after the stage display has started
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code = main(["compile", str(bad), "--quant", "none", "-o", str(tmp_path / "a.lbx")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lowbit: invalid model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


@pytest.mark.parametrize("make, args, pattern", [
    (lambda f, lbx: f / "wrong.npz", ["--inputs", "{file}"], "unknown input 'image'"),
    (lambda f, lbx: f / "in.npz", ["--inputs", "{file}", "--input", "input=x.npy"],
     "not both"),
    (lambda f, lbx: f / "in.npz", ["--input", "image={file}"], "unknown input 'image'"),
    (lambda f, lbx: f / "in.npz", [], "missing input 'input'"),
    (lambda f, lbx: f / "x.npy", ["--inputs", "{file}"], "cannot read"),
])
def test_run_input_errors_are_one_line(work, make, args, pattern, capsys):
    folder, lbx, _ = work
    file = str(make(folder, lbx))
    code = main(["run", str(lbx), *[a.replace("{file}", file) for a in args]])
    _one_line_error(capsys, code, pattern)


@pytest.mark.parametrize("corrupt, pattern", [
    (lambda data: data[:100], "truncated"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "checksum mismatch"),
    (lambda data: b"", "empty file"),
])
def test_run_corrupt_artifact_is_one_line(work, tmp_path, corrupt, pattern, capsys):
    folder, lbx, _ = work
    bad = tmp_path / "bad.lbx"
    bad.write_bytes(corrupt(lbx.read_bytes()))
    code = main(["run", str(bad), "--inputs", str(folder / "in.npz")])
    _one_line_error(capsys, code, pattern)


def test_bench_prints_a_table_against_onnxruntime(capsys):
    from lowbit.compiler.bench import bench

    report = bench(MODEL, "int8", str(CALIB), None, SHAPES, threads=1, repeat=3, warmup=1)
    rows = {row.name: row for row in report.rows}
    assert list(rows) == ["lowbit int8", "ORT fp32", "ORT int8"]
    assert rows["ORT fp32"].max_abs_diff == 0.0 and rows["ORT fp32"].argmax_agreement == 1.0
    assert rows["lowbit int8"].argmax_agreement >= 0.75
    assert 0 < rows["lowbit int8"].max_abs_diff < 1.0
    assert rows["lowbit int8"].weight_bytes < rows["ORT fp32"].weight_bytes / 3
    assert rows["ORT int8"].weight_bytes < rows["ORT fp32"].weight_bytes / 3
    assert all(r.latency.repeat == 3 and r.latency.median > 0 for r in report.rows)
    assert "1 thread(s)" in report.caption

    code = main(["bench", str(MODEL), "--quant", "int8", "--calib", str(CALIB),
                 "--input-shape", "input=8,1,8,8", "--repeat", "2", "--warmup", "0",
                 "--threads", "1", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("lowbit int8", "ORT fp32", "ORT int8", "weight bytes", "argmax"):
        assert word in out


def test_demo_fast_prints_the_table(capsys):
    code = main(["demo", "--fast", "--repeat", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    for row in ("lowbit none", "lowbit int8", "lowbit w4a8", "lowbit ternary", "ORT fp32",
                "ORT int8", "no reconstruction (--fast)", "test accuracy"):
        assert row in out, out
    # fp32 compiled by TVM classifies exactly like onnxruntime fp32 (99.26 %, examples/README)
    accuracy = {line.split("│")[1].strip(): line.split("│")[2].strip()
                for line in out.splitlines() if line.count("│") >= 6}
    assert accuracy["lowbit none"] == accuracy["ORT fp32"] == "99.26%"


@pytest.mark.slow
def test_demo_full_with_reconstruction(capsys):
    from lowbit.compiler.demo import demo

    report = demo(threads=1, repeat=2)
    rows = {r.name: r for r in report.rows}
    assert rows["lowbit ternary"].accuracy > 0.95
    assert rows["lowbit int8"].accuracy > 0.97
    assert rows["lowbit ternary"].weight_bytes < rows["lowbit int8"].weight_bytes
