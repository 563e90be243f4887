"""Activation import vs onnxruntime: Relu, Clip (attrs < 11, inputs >= 11), PRelu, LeakyRelu,
Sigmoid, HardSigmoid, HardSwish, Tanh, Gelu."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import NonConstantInputError, Op

RNG = np.random.default_rng(3)
X = (RNG.standard_normal((2, 3, 4)) * 3).astype(np.float32)


@pytest.mark.parametrize("opset", [9, 13, 14, 22])
@pytest.mark.parametrize("op_type, attrs", [
    ("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.3}),
    ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.1, "beta": 0.4}), ("HardSwish", {}),
])
def test_unary_activation(opset, op_type, attrs):
    if op_type == "HardSwish" and opset < 14:
        pytest.skip("HardSwish exists from opset 14")
    model = single_node_model(op_type, {"x": X}, ["y"], attrs, opset=opset)
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].op.value == op_type
    if "alpha" in attrs:
        assert graph.nodes[0].attrs.alpha == pytest.approx(attrs["alpha"])


@pytest.mark.parametrize("bounds", [(None, None), (-1.0, None), (None, 2.5), (-0.5, 0.5)])
def test_clip_opset9_attributes(bounds):
    attrs = {k: v for k, v in zip(("min", "max"), bounds) if v is not None}
    model = single_node_model("Clip", {"x": X}, ["y"], attrs, opset=9)
    graph = check_against_ort(model, {"x": X})
    assert (graph.nodes[0].attrs.min, graph.nodes[0].attrs.max) == bounds


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("bounds", [(None, None), (-1.0, None), (None, 2.5), (-0.5, 0.5)])
def test_clip_inputs(opset, bounds):
    inits, names = {}, ["x"]
    for key, value in zip(("lo", "hi"), bounds):
        if value is not None:
            inits[key] = np.float32(value)
        names.append(key if value is not None else "")
    model = single_node_model("Clip", {"x": X}, ["y"], opset=opset, initializers=inits,
                              inputs=names)
    graph = check_against_ort(model, {"x": X})
    assert (graph.nodes[0].attrs.min, graph.nodes[0].attrs.max) == bounds
    assert len(graph.nodes[0].inputs) == 1


def test_clip_integer_bounds_stay_integers():
    x = RNG.integers(-20, 20, (5,)).astype(np.int32)
    model = single_node_model("Clip", {"x": x}, ["y"], opset=13,
                              initializers={"lo": np.int32(-3), "hi": np.int32(4)})
    graph = check_against_ort(model, {"x": x})
    assert graph.nodes[0].attrs.min == -3 and isinstance(graph.nodes[0].attrs.min, int)


def test_clip_runtime_bound_is_rejected():
    feeds = {"x": X, "lo": np.array(0, np.float32)}
    model = single_node_model("Clip", feeds, ["y"], opset=13)
    with pytest.raises(NonConstantInputError, match="Clip node 'clip_node' input 'min'") as err:
        check_against_ort(model, feeds)
    assert err.value.value_name == "lo"
    # binding it as a constant fixes it
    graph = check_against_ort(model, feeds, constants={"lo": feeds["lo"]})
    assert graph.nodes[0].attrs.min == 0.0


@pytest.mark.parametrize("opset", [9, 16])
@pytest.mark.parametrize("slope_shape", [(1,), (4,), (3, 1), (2, 3, 4)])
def test_prelu(opset, slope_shape):
    slope = RNG.uniform(0, 0.5, slope_shape).astype(np.float32)
    model = single_node_model("PRelu", {"x": X}, ["y"], opset=opset,
                              initializers={"slope": slope})
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].op is Op.PRELU


def test_prelu_legacy_per_channel_slope():
    """Opset 6 models upgraded to 7 keep a (C,) slope: it means per channel (axis 1)."""
    from lowbit.compiler.onnx_import import import_onnx
    from lowbit.runtime.reference import run_reference

    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    slope = np.asarray([0.1, 0.2, 0.3], np.float32)
    model = single_node_model("PRelu", {"x": x}, ["y"], opset=7, initializers={"slope": slope})
    graph = import_onnx(model)
    assert graph.nodes[0].inputs[1].shape == (3, 1, 1)
    expected = np.where(x >= 0, x, x * slope[:, None, None])
    np.testing.assert_allclose(run_reference(graph, {"x": x})["y"], expected, rtol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    model = single_node_model("Gelu", {"x": X}, ["y"], {"approximate": approximate}, opset=20)
    graph = check_against_ort(model, {"x": X}, rtol=1e-4, atol=1e-5)
    assert graph.nodes[0].attrs.approximate == approximate
