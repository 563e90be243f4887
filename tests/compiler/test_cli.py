"""`lowbit inspect` / `lowbit ops`: outputs, files, and one-line exit-2 errors on bad input."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from lowbit.compiler.cli import main
from lowbit.ir import from_json
from onnx import TensorProto, helper, numpy_helper


def _conv_bn_model(path, batch="N"):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"],
                         name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "convbn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def _run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "lowbit.compiler.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def _assert_one_line_error(code, err, pattern):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert pattern in lines[0], lines[0]


def test_inspect_text_default_passes_fold_bn(tmp_path, capsys):
    model = _conv_bn_model(tmp_path / "m.onnx")
    assert main(["inspect", str(model), "--input-shape", "x=2,3,8,8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph ") and "%x: float32[2,3,8,8]" in out
    assert "BatchNormalization" not in out and "Conv" in out
    assert "summary:" in out.splitlines()[-1]


def test_inspect_passes_none_keeps_bn_and_dump_ir(tmp_path, capsys):
    model = _conv_bn_model(tmp_path / "m.onnx")
    assert main(["inspect", str(model), "--input-shape", "x=1,3,8,8", "--passes", "none"]) == 0
    assert "BatchNormalization" in capsys.readouterr().out
    dump = tmp_path / "dump"
    assert main(["inspect", str(model), "--input-shape", "x=1,3,8,8", "--dump-ir",
                 str(dump), "-o", str(tmp_path / "out.txt")]) == 0
    files = sorted(p.name for p in dump.iterdir())
    assert files[0].startswith("00-") and len(files) >= 3
    assert any("fold_batchnorm" in f for f in files)
    assert (tmp_path / "out.txt").read_text().startswith("graph ")


def test_inspect_json_round_trips(tmp_path):
    model = _conv_bn_model(tmp_path / "m.onnx")
    out = tmp_path / "g.json"
    assert main(["inspect", str(model), "--input-shape", "x=1,3,8,8", "--format", "json",
                 "-o", str(out)]) == 0
    doc = out.read_text()
    assert json.loads(doc)["format"] == "lowbit-ir"
    g = from_json(doc)
    assert [n.op.value for n in g.nodes] == ["Conv", "Relu"]


def test_cli_missing_file(tmp_path):
    code, _, err = _run_cli("inspect", tmp_path / "nope.onnx")
    _assert_one_line_error(code, err, "nope.onnx")


def test_cli_wrong_file_type(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 20)
    code, _, err = _run_cli("inspect", bad)
    _assert_one_line_error(code, err, "not an ONNX model")


def test_cli_unbound_dynamic_dim_says_how_to_bind(tmp_path):
    model = _conv_bn_model(tmp_path / "m.onnx")
    code, _, err = _run_cli("inspect", model)
    _assert_one_line_error(code, err, "--input-shape")
    assert "'x'" in err


@pytest.mark.parametrize("spec", ["x", "x=", "x=1,a,8,8", "=1,2", "x=1,-3,8,8"])
def test_cli_bad_input_shape_syntax(tmp_path, spec):
    model = _conv_bn_model(tmp_path / "m.onnx")
    code, _, err = _run_cli("inspect", model, "--input-shape", spec)
    _assert_one_line_error(code, err, "--input-shape")


def test_cli_unsupported_ops_all_listed(tmp_path):
    nodes = [
        helper.make_node("NonZero", ["x"], ["a"], name="nz"),
        helper.make_node("Relu", ["x"], ["b"], name="r"),
        helper.make_node("Det", ["x"], ["c"], name="det1"),
        helper.make_node("Det", ["x"], ["d"], name="det2"),
    ]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abcd"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    out = tmp_path / "never.txt"
    code, _, err = _run_cli("inspect", path, "-o", out)
    _assert_one_line_error(code, err, "NonZero")
    assert "Det" in err and "det1" in err and "det2" in err and "17" in err
    assert not out.exists()  # nothing half-written


def test_cli_output_into_missing_folder(tmp_path):
    model = _conv_bn_model(tmp_path / "m.onnx")
    code, _, err = _run_cli("inspect", model, "--input-shape", "x=1,3,8,8", "-o",
                            tmp_path / "no" / "such" / "out.txt")
    _assert_one_line_error(code, err, "does not exist")


def test_cli_ops_lists_converters():
    code, out, err = _run_cli("ops")
    assert code == 0, err
    assert "Conv" in out and "Resize" in out
