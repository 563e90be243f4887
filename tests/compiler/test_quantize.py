"""lowbit.quantize and ``lowbit inspect --quant``: the pipeline end to end, recipes, errors,
the fake-quant graph (fold=False), and weight bytes before / after."""

import json
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.compiler.cli import main
from lowbit.compiler.quantize import weight_size
from lowbit.ir import CalibrationError, Op, QuantizationError, from_json, verify
from lowbit.passes.calibrate import FakeQuantInterpreter

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CNN = str(EXAMPLES / "digits_cnn.onnx")
SHAPES = {"input": (16, 1, 8, 8)}
#: every layer 2-bit (first/last too), no reconstruction: the pure packing ratio
ALL_2BIT = {"preset": "w2a8", "first_last_int8": False, "ptq": {"reconstruct": False}}


@pytest.fixture(scope="module")
def calib():
    return {"input": np.load(EXAMPLES / "digits_calib.npz")["input"][:64]}


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory, calib):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, **calib)
    return path


def test_int8_gives_a_verified_integer_graph_close_to_float(calib):
    graph = lowbit.quantize(CNN, "int8", calib=calib, input_shapes=SHAPES)
    verify(graph)
    ops = {n.op for n in graph.nodes}
    assert Op.FAKE_QUANT not in ops and Op.QCONV in ops and Op.QMATMUL in ops
    assert graph.meta["quant"] == "int8"
    x = calib["input"][:16]
    reference = lowbit.run_reference(lowbit.quantize(CNN, "none", input_shapes=SHAPES),
                                     {"input": x})["logits"]
    out = lowbit.run_reference(graph, {"input": x})["logits"]
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert np.abs(out - reference).max() < 0.1 * np.abs(reference).max()


def test_fold_false_returns_the_calibrated_fake_quant_graph(calib):
    graph = lowbit.quantize(CNN, "w4a8", calib=calib, input_shapes=SHAPES, fold=False)
    verify(graph)
    fqs = [n for n in graph.nodes if n.op == Op.FAKE_QUANT]
    assert len(fqs) == 8 and all(n.attrs.qtype.scale for n in fqs)
    assert {n.attrs.qtype.bits for n in fqs if n.attrs.role == "weight"} == {8, 4}
    FakeQuantInterpreter(graph).run({"input": calib["input"][:16]})


def test_graph_input_is_not_mutated_and_none_preset_needs_no_calib(calib):
    float_graph = lowbit.quantize(CNN, "none", input_shapes=SHAPES)
    before = str(float_graph)
    assert not any(n.op == Op.FAKE_QUANT for n in float_graph.nodes)
    lowbit.quantize(float_graph, "int8", calib=calib)
    assert str(float_graph) == before


def test_errors_unknown_preset_missing_calib_bad_calib(calib):
    with pytest.raises(QuantizationError, match="valid: int8, w4a8, .*none"):
        lowbit.quantize(CNN, "int3", calib=calib, input_shapes=SHAPES)
    with pytest.raises(QuantizationError, match="needs calibration data"):
        lowbit.quantize(CNN, "w4a8", input_shapes=SHAPES)
    with pytest.raises(CalibrationError, match="unknown input 'tokens'"):
        lowbit.quantize(CNN, "w4a8", calib={**calib, "tokens": np.zeros((8, 8, 8), np.float32)},
                        input_shapes=SHAPES)
    # the shipped calibration file names exactly the model's input, so it works as a path too
    graph = lowbit.quantize(CNN, "int8", calib=str(EXAMPLES / "digits_calib.npz"),
                            input_shapes=SHAPES)
    assert any(n.op == Op.QCONV for n in graph.nodes)


def test_recipe_file_and_calibration_override(tmp_path, calib):
    recipe = tmp_path / "r.toml"
    recipe.write_text('preset = "w4a8"\ncalibration = "percentile"\n'
                      '[nodes."/classifier/Gemm_matmul"]\nexclude = true\n')
    graph = lowbit.quantize(CNN, calib=calib, recipe=recipe, input_shapes=SHAPES, fold=False)
    assert graph.node_by_name("/classifier/Gemm_matmul").meta["quant_rule"] == \
        'excluded by nodes["/classifier/Gemm_matmul"]'
    def first_range(**kw):
        g = lowbit.quantize(CNN, calib=calib, recipe=recipe, input_shapes=SHAPES, fold=False,
                            **kw)
        return g.node_by_name("/features/features.3/Conv_1/input_fq").attrs.qtype

    # the default calibration="minmax" defers to the recipe's method; another method overrides
    assert first_range() == first_range(calibration="percentile")
    assert first_range() != first_range(calibration="mse")
    assert lowbit.quantize(CNN, "w4a8", calib=calib, input_shapes=SHAPES, fold=False) \
        .node_by_name("/features/features.3/Conv_1/input_fq").attrs.qtype \
        != first_range()  # preset alone: minmax


def test_two_bit_weights_are_about_16x_smaller(calib):
    size = weight_size(lowbit.quantize(CNN, recipe=ALL_2BIT, calib=calib, input_shapes=SHAPES))
    assert size.fp32 == 4 * (16 * 9 + 32 * 16 * 9 + 64 * 32 * 9 + 64 * 10)
    assert size.quantized == size.layers == 4
    assert size.ratio >= 14.5  # 2 bits + one float32 scale per output channel
    per_tensor = dict(ALL_2BIT, default={"weights": {"granularity": "per_tensor"}})
    size = weight_size(lowbit.quantize(CNN, recipe=per_tensor, calib=calib,
                                       input_shapes=SHAPES))
    assert size.ratio >= 15.9
    fake = weight_size(lowbit.quantize(CNN, recipe=per_tensor, calib=calib, input_shapes=SHAPES,
                                       fold=False))
    assert fake == size  # the same count from the fake-quant graph
    int8 = weight_size(lowbit.quantize(CNN, "int8", calib=calib, input_shapes=SHAPES))
    assert 3.5 < int8.ratio < 4.0
    float_size = weight_size(lowbit.quantize(CNN, "none", input_shapes=SHAPES))
    assert float_size.ratio == 1.0 and float_size.quantized == 0


def test_cli_inspect_quant_prints_qtypes_dyadic_and_weight_bytes(calib_file, capsys):
    assert main(["inspect", CNN, "--input-shape", "input=16,1,8,8", "--quant", "int8",
                 "--calib", str(calib_file)]) == 0
    out = capsys.readouterr().out
    assert "QConv(" in out and "dyadic(m=" in out and "s8 per-channel(axis=0) scale=" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("weights: fp32 95,296 B -> packed ") and "4/4 layers" in last


def test_cli_inspect_recipe_two_bit_ratio_and_dump(tmp_path, calib_file, capsys):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(dict(ALL_2BIT, default={"weights": {
        "granularity": "per_tensor"}})))
    dump = tmp_path / "dump"
    assert main(["inspect", CNN, "--input-shape", "input=16,1,8,8", "--recipe", str(recipe),
                 "--calib", str(calib_file), "--calibration", "mse", "--dump-ir",
                 str(dump)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "(16.0x smaller" in last
    names = sorted(p.name for p in dump.iterdir())
    assert names[0] == "00-input.txt" and names[-1].endswith("fold_scales.txt")
    assert any("calibrate" in n for n in names)


def test_cli_quant_errors_are_one_line(calib_file, capsys):
    assert main(["inspect", CNN, "--input-shape", "input=16,1,8,8", "--quant", "w4a8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs calibration data" in err[0]
    assert main(["inspect", CNN, "--input-shape", "input=16,1,8,8", "--calib",
                 str(calib_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quant PRESET or --recipe FILE" in err[0]
    with pytest.raises(SystemExit):
        main(["inspect", CNN, "--quant", "int3"])
    assert "invalid choice: 'int3'" in capsys.readouterr().err


def test_cli_json_of_the_integer_graph_round_trips(tmp_path, calib_file, calib):
    out = tmp_path / "g.json"
    assert main(["inspect", CNN, "--input-shape", "input=16,1,8,8", "--quant", "int8",
                 "--calib", str(calib_file), "--format", "json", "-o", str(out)]) == 0
    graph = from_json(out.read_text())
    verify(graph)
    direct = lowbit.quantize(CNN, "int8", calib=calib, input_shapes=SHAPES)
    x = {"input": calib["input"][:16]}
    np.testing.assert_array_equal(lowbit.run_reference(graph, x)["logits"],
                                  lowbit.run_reference(direct, x)["logits"])


def _residual_model():
    """conv-relu -> conv -> Add(skip) -> relu -> conv: a residual block as ONNX bytes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, c, 3, 3)) * 0.3)
                                     .astype(np.float32), f"w{i}")
             for i, c in enumerate((2, 4, 4))]
    conv = {"pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0", **conv),
             helper.make_node("Relu", ["a"], ["r0"], name="r0"),
             helper.make_node("Conv", ["r0", "w1"], ["b"], name="c1", **conv),
             helper.make_node("Add", ["r0", "b"], ["s"], name="res"),
             helper.make_node("Relu", ["s"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="c2", **conv)]
    graph = helper.make_graph(
        nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model.SerializeToString()


def test_residual_block_is_quantized_deterministically_and_tracks_fake_quant():
    model = _residual_model()
    data = {"x": np.random.default_rng(3).uniform(-1, 1, (32, 2, 6, 6)).astype(np.float32)}
    fake = lowbit.quantize(model, "int8", calib=data, fold=False)
    assert fake.node_by_name("res/output_fq").attrs.qtype.scale
    first = lowbit.quantize(model, "int8", calib=data)
    assert str(first) == str(lowbit.quantize(model, "int8", calib=data))
    assert Op.FAKE_QUANT not in {n.op for n in first.nodes}
    feed = {"x": data["x"][:4]}
    out = lowbit.run_reference(first, feed)["y"]
    ref = FakeQuantInterpreter(fake).run(feed)["y"]
    step = fake.node_by_name("c2/input_fq").attrs.qtype.scale[0]
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + step
