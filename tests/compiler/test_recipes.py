"""Quantization recipes: presets, validation, resolution precedence, TOML/JSON round trips."""

import dataclasses
import json
import os

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from lowbit.compiler.recipes import (
    CALIBRATION_METHODS,
    INT8_ACTIVATIONS,
    INT8_WEIGHTS,
    PRESETS,
    UNSET,
    ActOverride,
    ActSpec,
    LayerOverride,
    LayerSpec,
    PTQSpec,
    Recipe,
    WeightOverride,
    WeightSpec,
    dump_toml,
    load_recipe,
    preset,
    save_recipe,
)
from lowbit.ir.errors import QuantizationError
from lowbit.ir.ops import Op

A8 = ActSpec(8, None, "uniform")

# name -> (weights, activations, ptq.reconstruct): the documented user contract
EXPECTED_PRESETS = {
    "int8": (WeightSpec("uniform", 8, "per_channel", None, True, False), A8, False),
    "w4a8": (WeightSpec("uniform", 4, "per_channel", None, True, False), A8, False),
    "w2a8": (WeightSpec("uniform", 2, "per_channel", None, True, False), A8, True),
    "w1a8": (WeightSpec("binary", 1, "per_channel", None, True, False), A8, True),
    "w2a2": (WeightSpec("uniform", 2, "per_channel", None, True, False),
             ActSpec(2, None, "uniform"), True),
    "w1a1": (WeightSpec("binary", 1, "per_channel", None, True, False),
             ActSpec(1, True, "binary"), False),
    "ternary": (WeightSpec("ternary", 2, "per_channel", None, True, False), A8, True),
    "pow2": (WeightSpec("pow2", 4, "per_channel", None, True, False), A8, True),
    "codebook4": (WeightSpec("codebook", 4, "per_channel", None, False, False), A8, True),
}


def _recipe(**data):
    return Recipe.from_dict({"preset": "w4a8", **data})


# -- presets -----------------------------------------------------------------------------------
def test_preset_names_in_contract_order():
    assert PRESETS == ("int8", "w4a8", "w2a8", "w1a8", "w2a2", "w1a1", "ternary", "pow2",
                       "codebook4", "none")


@pytest.mark.parametrize("name", list(EXPECTED_PRESETS))
def test_preset_resolves_to_documented_specs(name):
    weights, activations, reconstruct = EXPECTED_PRESETS[name]
    recipe = preset(name)
    assert recipe.preset == name
    assert recipe.calibration == "minmax"
    assert recipe.first_last_int8 is True
    assert recipe.ptq == PTQSpec(bias_correction=False, reconstruct=reconstruct, iters=1000,
                                 seed=0)
    middle = recipe.spec_for("conv_2", "Conv")
    assert middle == LayerSpec(weights, activations, kernel=None, exclude=False)
    int8 = LayerSpec(INT8_WEIGHTS, INT8_ACTIVATIONS, None, False)
    assert recipe.spec_for("conv_1", "Conv", is_first=True) == int8
    assert recipe.spec_for("fc", "Gemm", is_last=True) == int8
    assert not recipe.quantizes_nothing


def test_preset_none_quantizes_nothing():
    recipe = preset("none")
    assert recipe.quantizes_nothing
    assert recipe.first_last_int8 is False
    for first, last in [(False, False), (True, False), (False, True)]:
        assert recipe.spec_for("conv", "Conv", first, last) is None


def test_preset_none_can_switch_single_ops_on():
    recipe = Recipe.from_dict({"preset": "none", "ops": {"MatMul": {"exclude": False}}})
    assert not recipe.quantizes_nothing
    assert recipe.spec_for("conv", "Conv") is None
    assert recipe.spec_for("mm", "MatMul").weights == INT8_WEIGHTS


def test_unknown_preset_lists_valid_names():
    with pytest.raises(QuantizationError,
                       match=r"unknown --quant preset 'w3a9'; valid: int8, w4a8, w2a8, .*none$"):
        preset("w3a9")


def test_calibration_methods_match_the_observer_registry():
    from lowbit.passes.calibration import OBSERVERS

    assert set(CALIBRATION_METHODS) == set(OBSERVERS)


# -- resolution --------------------------------------------------------------------------------
def test_precedence_node_over_op_over_first_last_over_default():
    recipe = _recipe(
        ops={"Conv": {"weights": {"bits": 3}, "kernel": "bitserial"}},
        nodes={"conv_0": {"weights": {"bits": 5}}},
    )
    # default
    assert recipe.spec_for("mm", "MatMul").weights.bits == 4
    # first/last rule beats default
    assert recipe.spec_for("mm", "MatMul", is_first=True).weights.bits == 8
    # op override beats the first/last rule, and merges onto it (kernel from the op override)
    first_conv = recipe.spec_for("conv_9", "Conv", is_first=True)
    assert (first_conv.weights.bits, first_conv.kernel) == (3, "bitserial")
    assert first_conv.activations == INT8_ACTIVATIONS
    # node override beats the op override and keeps the op override's other fields
    node = recipe.spec_for("conv_0", "Conv")
    assert (node.weights.bits, node.kernel) == (5, "bitserial")
    # the node override only applies to its node
    assert recipe.spec_for("conv_1", "Conv").weights.bits == 3


def test_partial_override_merges_field_by_field():
    recipe = _recipe(nodes={"n": {"activations": {"signed": True}}})
    spec = recipe.spec_for("n", "Conv")
    assert spec.activations == ActSpec(8, True, "uniform")
    assert spec.weights == EXPECTED_PRESETS["w4a8"][0]


def test_op_type_accepts_op_enum():
    recipe = _recipe(ops={"MatMul": {"weights": {"bits": 8}}})
    assert recipe.spec_for("mm", Op.MATMUL).weights.bits == 8
    programmatic = Recipe(preset("w4a8").default, ops={Op.CONV: LayerOverride(exclude=True)})
    assert programmatic.spec_for("c", "Conv") is None


def test_first_last_int8_can_be_switched_off():
    recipe = _recipe(first_last_int8=False)
    assert recipe.spec_for("c", "Conv", is_first=True, is_last=True).weights.bits == 4


def test_reduce_range_turns_uniform_8_bit_weights_into_7_bit():
    seven = dataclasses.replace(INT8_WEIGHTS, bits=7)
    int8 = dataclasses.replace(preset("int8"), reduce_range=True)
    for first, last in ((False, False), (True, False), (False, True)):
        spec = int8.spec_for("c", "Conv", is_first=first, is_last=last)
        assert spec.weights == seven and spec.activations == INT8_ACTIVATIONS
    recipe = dataclasses.replace(
        preset("w4a8"), reduce_range=True,
        nodes={"pw": LayerOverride(WeightOverride(format="pow2")),
               "fc": LayerOverride(WeightOverride(bits=8))},
        ops={"MatMul": LayerOverride(WeightOverride(bits=8))})
    # a low-bit recipe's first/last int8 layers are there for accuracy: they keep 8 bits ...
    assert recipe.spec_for("c0", "Conv", is_first=True).weights == INT8_WEIGHTS
    # ... unless an override names them, like any other 8-bit layer
    assert recipe.spec_for("fc", "Gemm", is_last=True).weights == seven
    assert recipe.spec_for("mm", "MatMul", is_last=True).weights == seven
    assert recipe.spec_for("mm", "MatMul").weights == seven
    assert recipe.spec_for("mid", "Conv").weights.bits == 4  # only 8-bit weights change
    assert recipe.spec_for("pw", "Conv").weights.format == "pow2"
    assert preset("int8").reduce_range is None  # "auto": the compile target decides
    assert preset("int8").spec_for("c", "Conv").weights.bits == 8  # no target: 8 bits
    off = dataclasses.replace(preset("int8"), reduce_range=False)
    assert off.spec_for("c", "Conv").weights.bits == 8


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("auto", None)])
def test_reduce_range_file_values_round_trip(value, expected, tmp_path):
    recipe = _recipe(reduce_range=value)
    assert recipe.reduce_range is expected
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    path = save_recipe(recipe, tmp_path / "r.toml")
    assert load_recipe(path).reduce_range is expected


def test_exclude_keeps_a_node_float():
    recipe = _recipe(nodes={"head": {"exclude": True}})
    assert recipe.spec_for("head", "Gemm", is_last=True) is None
    assert recipe.spec_for("other", "Gemm") is not None


@pytest.mark.parametrize("override, expected", [
    ({"format": "binary"}, WeightSpec("binary", 1)),
    ({"format": "ternary"}, WeightSpec("ternary", 2)),
    ({"format": "pow2", "zero_free": True}, WeightSpec("pow2", 4, zero_free=True)),
    ({"format": "codebook"}, WeightSpec("codebook", 4, symmetric=False)),
    ({"format": "pow2", "bits": 3}, WeightSpec("pow2", 3)),
])
def test_format_change_takes_canonical_values_for_illegal_inherited_fields(override, expected):
    recipe = _recipe(default={"weights": {"bits": 8, "symmetric": False}},
                     nodes={"n": {"weights": override}})
    assert recipe.spec_for("n", "Conv") == LayerSpec(expected, A8)


def test_format_change_keeps_legal_inherited_bits():
    recipe = Recipe.from_dict({"preset": "pow2",
                               "nodes": {"n": {"weights": {"format": "uniform"}}}})
    assert recipe.spec_for("n", "Conv").weights == WeightSpec("uniform", 4)
    zero_free = Recipe.from_dict({"preset": "pow2", "default": {"weights": {"zero_free": True}},
                                  "nodes": {"n": {"weights": {"format": "uniform"}}}})
    assert zero_free.spec_for("n", "Conv").weights.zero_free is False


def test_activation_format_change_canonicalises_bits_and_sign():
    recipe = _recipe(nodes={"a": {"activations": {"format": "binary"}}})
    assert recipe.spec_for("a", "Conv").activations == ActSpec(1, True, "binary")
    back = Recipe.from_dict({"preset": "w1a1", "nodes": {"a": {"activations": {"format":
                                                                                "uniform"}}}})
    assert back.spec_for("a", "Conv").activations == ActSpec(8, True, "uniform")


def test_granularity_change_drops_inherited_group_size():
    recipe = _recipe(default={"weights": {"granularity": "per_group", "group_size": 32}},
                     nodes={"n": {"weights": {"granularity": "per_tensor"}}})
    assert recipe.default.weights.group_size == 32
    spec = recipe.spec_for("n", "Conv")
    assert (spec.weights.granularity, spec.weights.group_size) == ("per_tensor", None)


# -- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("weights, message", [
    ({"bits": 9},
     r"^recipe nodes\.\"conv_3\"\.weights\.bits = 9: uniform weights take 2\.\.8 bits$"),
    ({"bits": 1}, r"weights\.bits = 1: uniform weights take 2\.\.8 bits"),
    ({"format": "binary", "bits": 2}, r"bits = 2: binary weights take exactly 1 bit"),
    ({"format": "ternary", "bits": 3}, r"bits = 3: ternary weights take exactly 2 bits"),
    ({"format": "pow2", "bits": 6}, r"bits = 6: pow2 weights take 3\.\.5 bits"),
    ({"format": "pow2", "bits": 2}, r"bits = 2: pow2 weights take 3\.\.5 bits"),
    ({"format": "codebook", "bits": 5}, r"bits = 5: codebook weights take 2\.\.4 bits"),
    ({"format": "uniform4"}, r"format = 'uniform4': weight formats are uniform, binary, "),
    ({"granularity": "per_row"}, r"granularity = 'per_row': granularities are per_tensor, "),
    ({"granularity": "per_group"}, r"granularity = 'per_group' needs a group size; set "),
    ({"granularity": "per_group", "group_size": 1}, r"group_size = 1: per_group needs "),
    ({"group_size": 16}, r"group_size = 16: group_size only applies with granularity"),
    ({"format": "binary", "symmetric": False}, r"symmetric = false: binary weights are always "),
    ({"zero_free": True}, r"zero_free = true: only pow2 weights can drop the zero code"),
    ({"bits": True}, r"weights\.bits = true: expected an integer"),
    ({"bits": 4.0}, r"weights\.bits = 4\.0: expected an integer"),
    ({"symmetric": "yes"}, r"symmetric = 'yes': expected true or false"),
])
def test_weight_errors_name_key_path_value_and_legal_values(weights, message):
    with pytest.raises(QuantizationError, match=message):
        _recipe(nodes={"conv_3": {"weights": weights}})


@pytest.mark.parametrize("activations, message", [
    ({"bits": 3}, r"activations\.bits = 3: activations take 1, 2, 4 or 8 bits"),
    ({"bits": 1}, r"activations\.bits = 1: 1-bit activations need format 'binary'"),
    ({"format": "binary", "bits": 2}, r"bits = 2: binary \(sign\) activations take exactly 1"),
    ({"format": "binary", "signed": False}, r"signed = false: binary activations are bipolar"),
    ({"format": "pow2"}, r"format = 'pow2': activation formats are uniform, binary"),
    ({"signed": "maybe"}, r"signed = 'maybe': expected true or false"),
])
def test_activation_errors(activations, message):
    with pytest.raises(QuantizationError, match=message):
        _recipe(ops={"Conv": {"activations": activations}})


@pytest.mark.parametrize("data, message", [
    ({"calibration": "kl"}, r"recipe calibration = 'kl': calibration methods are minmax, "),
    ({"first_last_int8": 1}, r"recipe first_last_int8 = 1: expected true or false"),
    ({"reduce_range": "yes"}, r"recipe reduce_range = 'yes': expected true, false or \"auto\""),
    ({"ptq": {"iters": -1}}, r"recipe ptq\.iters = -1: must be >= 0"),
    ({"ptq": {"reconstruct": "on"}}, r"recipe ptq\.reconstruct = 'on': expected true or false"),
    ({"preset": "w3a9"}, r"recipe preset = 'w3a9': presets are int8, w4a8"),
    ({"ops": {"Convv": {}}}, r"recipe ops\.Convv: unknown op type 'Convv'; did you mean 'Conv'"),
    ({"ops": {"Xyzzy": {}}}, r"unknown op type 'Xyzzy'; keys are IR op types"),
    ({"nodes": {"n": {"kernel": ""}}}, r"recipe nodes\.\"n\"\.kernel = '': expected a kernel"),
    ({"nodes": {"n": {"exclude": "no"}}}, r"nodes\.\"n\"\.exclude = 'no': expected true or"),
    ({"nodes": {"n": 3}}, r"recipe nodes\.\"n\" = 3: expected a table of keys"),
    ({"nodes": {"n": {"weights": {"group_size": None}}}}, r"group_size = null: expected an int"),
])
def test_recipe_level_errors(data, message):
    with pytest.raises(QuantizationError, match=message):
        _recipe(**data)


@pytest.mark.parametrize("data, message", [
    ({"nodes": {"conv1": {"weigths": {}}}},
     r"^unknown key 'weigths' in recipe nodes\.\"conv1\"; did you mean 'weights'\?$"),
    ({"default": {"weights": {"bitz": 4}}},
     r"unknown key 'bitz' in recipe default\.weights; did you mean 'bits'\?"),
    ({"ptq": {"iterations": 3}}, r"unknown key 'iterations' in recipe ptq; did you mean 'iters'"),
    ({"calibraton": "minmax"},
     r"unknown key 'calibraton' in recipe \(top level\); did you mean 'calibration'"),
    ({"zzz": 1}, r"unknown key 'zzz' in recipe \(top level\); valid keys: preset, calibration"),
])
def test_unknown_keys_are_errors_with_suggestions(data, message):
    with pytest.raises(QuantizationError, match=message):
        _recipe(**data)


def test_override_is_checked_against_the_first_last_rule_at_load_time():
    # bits=2 is fine on a w2a8 default but the int8 first/last layer is uniform too: still fine;
    # format pow2 with bits 8 is illegal everywhere and must fail before any spec_for call.
    with pytest.raises(QuantizationError, match=r"recipe ops\.Conv\.weights\.bits = 8: pow2"):
        _recipe(ops={"Conv": {"weights": {"format": "pow2", "bits": 8}}})


def test_node_over_op_combination_error_is_raised_by_spec_for_with_the_node_path():
    recipe = _recipe(ops={"Conv": {"weights": {"format": "pow2"}}},
                     nodes={"c": {"weights": {"bits": 7}}})
    assert recipe.spec_for("c", "MatMul").weights.bits == 7
    with pytest.raises(QuantizationError,
                       match=r"recipe nodes\.\"c\"\.weights\.bits = 7: pow2 weights take 3\.\.5"):
        recipe.spec_for("c", "Conv")


def test_without_preset_the_default_must_name_format_and_bits():
    with pytest.raises(QuantizationError,
                       match=r"recipe default\.weights\.bits is missing: set it, or name a base"):
        Recipe.from_dict({"default": {"weights": {"format": "uniform"},
                                      "activations": {"bits": 8}}})
    recipe = Recipe.from_dict({"default": {"weights": {"format": "ternary", "bits": 2},
                                           "activations": {"bits": 4}}})
    assert recipe.preset is None
    assert recipe.default == LayerSpec(WeightSpec("ternary", 2), ActSpec(4, None, "uniform"))
    assert recipe.ptq == PTQSpec()


def test_specs_validate_on_direct_construction():
    with pytest.raises(QuantizationError, match=r"WeightSpec\.bits = 9: uniform weights take 2"):
        WeightSpec("uniform", 9)
    with pytest.raises(QuantizationError, match=r"ActSpec\.bits = 1: 1-bit activations need"):
        ActSpec(1, None, "uniform")
    with pytest.raises(QuantizationError, match=r"WeightOverride\.format = 'int'"):
        WeightOverride(format="int")
    with pytest.raises(QuantizationError, match=r"PTQSpec\.seed = -3: must be >= 0"):
        PTQSpec(seed=-3)
    with pytest.raises(QuantizationError, match=r"LayerSpec\.kernel = 'auto'"):
        LayerSpec(INT8_WEIGHTS, kernel="auto")


def test_specs_are_frozen():
    spec = preset("int8").default
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.exclude = True
    assert ActOverride().bits is UNSET


# -- serialization -----------------------------------------------------------------------------
def _custom_recipe():
    return Recipe.from_dict({
        "preset": "w2a8",
        "calibration": "percentile",
        "first_last_int8": False,
        "default": {"kernel": "bitserial",
                    "weights": {"granularity": "per_group", "group_size": 64}},
        "ptq": {"bias_correction": True, "iters": 20, "seed": 7},
        "ops": {"MatMul": {"activations": {"signed": "auto", "bits": 4}},
                "Gemm": {"exclude": True}},
        "nodes": {
            "conv_3": {"weights": {"format": "pow2", "zero_free": True}, "kernel": "auto"},
            'odd "name"\\ with\ttab\nnewline é': {"activations": {"signed": True}},
            "/model/layer.0/Conv": {},
        },
    })


def test_to_dict_spells_none_as_auto_and_omits_unset_fields():
    data = _custom_recipe().to_dict()
    assert data["default"]["kernel"] == "bitserial"
    assert data["default"]["activations"]["signed"] == "auto"
    assert data["ops"]["MatMul"] == {"activations": {"signed": "auto", "bits": 4}}
    assert data["ops"]["Gemm"] == {"exclude": True}
    assert data["nodes"]["conv_3"]["kernel"] == "auto"
    assert data["nodes"]["/model/layer.0/Conv"] == {}
    assert "group_size" not in preset("int8").to_dict()["default"]["weights"]


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@pytest.mark.parametrize("name", list(PRESETS) + ["custom"])
def test_round_trip(tmp_path, suffix, name):
    recipe = _custom_recipe() if name == "custom" else preset(name)
    path = save_recipe(recipe, tmp_path / f"plan{suffix}")
    loaded = load_recipe(path)
    assert loaded == recipe
    assert loaded.to_dict() == recipe.to_dict()
    assert os.listdir(tmp_path) == [f"plan{suffix}"]  # no temp file left behind


def test_dump_toml_parses_back_to_the_same_dict():
    data = _custom_recipe().to_dict()
    assert tomllib.loads(dump_toml(data)) == data


def test_save_overwrites_atomically_and_json_is_plain_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    save_recipe(preset("w4a8"), path)
    assert json.loads(path.read_text())["preset"] == "w4a8"
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_load_toml_on_top_of_a_preset(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('preset = "w4a8"\n[ptq]\nreconstruct = true\n'
                    '[nodes."conv_3".weights]\nbits = 8\n')
    recipe = load_recipe(path)
    assert recipe.ptq.reconstruct is True
    assert recipe.spec_for("conv_3", "Conv").weights.bits == 8
    assert recipe.spec_for("conv_4", "Conv").weights.bits == 4


def test_base_preset_applies_only_when_the_file_names_none(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[nodes."fc"]\nexclude = true\n')
    recipe = load_recipe(path, base="w2a8")
    assert recipe.preset == "w2a8" and recipe.ptq.reconstruct is True
    assert recipe.spec_for("conv", "Conv").weights.bits == 2
    assert recipe.spec_for("fc", "Gemm") is None
    assert load_recipe(save_recipe(recipe, tmp_path / "again.toml")) == recipe
    named = tmp_path / "named.json"
    named.write_text('{"preset": "ternary"}')
    assert load_recipe(named, base="w2a8").default.weights.format == "ternary"
    with pytest.raises(QuantizationError, match=r"recipe default\.weights\.format is missing"):
        load_recipe(path)


def test_malformed_toml_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('preset = "w4a8"\n\n[ptq\nreconstruct = true\n')
    with pytest.raises(QuantizationError, match=r"bad\.toml' is not valid TOML: .*line 3"):
        load_recipe(path)


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "preset": "w4a8",\n  "ptq": {,}\n}\n')
    with pytest.raises(QuantizationError, match=r"bad\.json' is not valid JSON: .*at line 3"):
        load_recipe(path)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(QuantizationError, match=r"recipe file '.*nope\.toml' does not exist"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(QuantizationError, match=r"unknown suffix '\.yaml'; use \.toml or \.json"):
        load_recipe(tmp_path / "r.yaml")
    with pytest.raises(QuantizationError, match=r"unknown suffix '\(none\)'"):
        save_recipe(preset("int8"), tmp_path / "r")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'preset = "\xe9"\n')
    with pytest.raises(QuantizationError, match=r"is not UTF-8 text"):
        load_recipe(latin)
    typo = tmp_path / "typo.toml"
    typo.write_text('preset = "w4a8"\n[nodes.conv1.weigths]\nbits = 4\n')
    with pytest.raises(QuantizationError,
                       match=r"unknown key 'weigths' in recipe nodes\.\"conv1\"; did you mean "
                             r"'weights'\? \(in .*typo\.toml\)"):
        load_recipe(typo)
    top = tmp_path / "list.json"
    top.write_text("[1, 2]")
    with pytest.raises(QuantizationError, match=r"recipe = \[1, 2\]: expected a table of keys"):
        load_recipe(top)


def test_save_into_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(QuantizationError, match=r"cannot write recipe file .*check that the "):
        save_recipe(preset("int8"), tmp_path / "missing" / "r.toml")
