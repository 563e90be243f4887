"""Movement ops import vs onnxruntime: Flatten, Reshape, Transpose, Concat, Split, Slice,
Squeeze, Unsqueeze, Gather, Expand, Pad — parameter tensors resolved into attrs."""

import numpy as np
import pytest
from lowbit.compiler.onnx_import.testing import check_against_ort, single_node_model
from lowbit.ir import NonConstantInputError, Op

RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
I64 = np.int64


@pytest.mark.parametrize("opset", [9, 13, 21])
@pytest.mark.parametrize("axis", [0, 1, 3, 4, -1, -4])
def test_flatten(opset, axis):
    if axis < 0 and opset < 11:
        pytest.skip("negative axis from opset 11")
    model = single_node_model("Flatten", {"x": X}, ["y"], {"axis": axis}, opset=opset)
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.axis == (axis + 4 if axis < 0 else axis)


@pytest.mark.parametrize("opset", [9, 13, 14, 21])
@pytest.mark.parametrize("shape, expected", [
    ([6, 20], (6, 20)), ([0, -1], (2, 60)), ([-1, 5], (24, 5)), ([2, 0, 0, 5], (2, 3, 4, 5)),
    ([120], (120,)),
])
def test_reshape_resolves_placeholders(opset, shape, expected):
    model = single_node_model("Reshape", {"x": X}, ["y"], opset=opset,
                              initializers={"shape": np.asarray(shape, I64)})
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.shape == expected


def test_reshape_allowzero():
    x = np.zeros((0, 3), np.float32)
    model = single_node_model("Reshape", {"x": x}, ["y"], {"allowzero": 1}, opset=14,
                              initializers={"shape": np.asarray([3, 0], I64)})
    graph = check_against_ort(model, {"x": x})
    assert graph.nodes[0].attrs.shape == (3, 0)


def test_reshape_runtime_shape_is_rejected():
    model = single_node_model("Reshape", {"x": X, "s": np.asarray([6, 20], I64)}, ["y"],
                              opset=13)
    with pytest.raises(NonConstantInputError,
                       match=r"Reshape node 'reshape_node' input 'shape' \(%s\) must be a "
                             r"compile-time constant; it is computed from graph input 's'") as e:
        check_against_ort(model, {"x": X, "s": np.asarray([6, 20], I64)})
    assert e.value.value_name == "s"


@pytest.mark.parametrize("opset", [9, 13, 21])
@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [3, 1, 0, 2]])
def test_transpose(opset, perm):
    attrs = {} if perm is None else {"perm": perm}
    model = single_node_model("Transpose", {"x": X}, ["y"], attrs, opset=opset)
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.perm == tuple(perm or (3, 2, 1, 0))


@pytest.mark.parametrize("opset", [9, 11, 13])
@pytest.mark.parametrize("axis", [0, 2, -1])
def test_concat(opset, axis):
    if axis < 0 and opset < 11:
        pytest.skip("negative axis from opset 11")
    feeds = {"a": X, "b": X[..., :2].copy() if axis % 4 == 3 else X.copy()}
    if axis % 4 == 2:
        feeds["b"] = X[:, :, :1].copy()
    elif axis == 0:
        feeds["b"] = X[:1].copy()
    model = single_node_model("Concat", feeds, ["y"], {"axis": axis}, opset=opset)
    graph = check_against_ort(model, feeds)
    assert graph.nodes[0].attrs.axis == axis % 4


@pytest.mark.parametrize("opset, how, n, expected", [
    (9, {"split": [1, 3]}, 2, (1, 3)),
    (11, {}, 2, (2, 2)),
    (13, {"input": [3, 1]}, 2, (3, 1)),
    (13, {}, 4, (1, 1, 1, 1)),
    (18, {"num_outputs": 3}, 3, (2, 2, 1)),
    (18, {"input": [2, 2]}, 2, (2, 2)),
])
def test_split(opset, how, n, expected):
    x = RNG.standard_normal((3, 4, 2)).astype(np.float32)
    attrs, inits, names = {"axis": 1}, {}, ["x"]
    if "input" in how:
        inits["split"] = np.asarray(how["input"], I64)
        names.append("split")
    else:
        attrs.update(how)
    if "num_outputs" in how:  # ceil(5 / 3) = 2 per piece, the last one smaller
        x = RNG.standard_normal((3, 5, 2)).astype(np.float32)
    outs = [f"y{i}" for i in range(n)]
    model = single_node_model("Split", {"x": x}, outs, attrs, opset=opset,
                              initializers=inits, inputs=names)
    graph = check_against_ort(model, {"x": x})
    (node,) = graph.nodes
    assert node.attrs.sizes == expected and [o.name for o in node.outputs] == outs


@pytest.mark.parametrize("opset", [9, 10, 13])
@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([0, 1], [2, 3], None, None),
    ([1], [-1], [-1], None),
    ([-100], [100], [2], None),
    ([3, 4], [0, 0], [2, 3], [-1, -2]),
    ([0], [9223372036854775807], [1], [2]),
])
def test_slice(opset, starts, ends, axes, steps):
    if opset < 10 and steps is not None:
        pytest.skip("steps from opset 10")
    if opset < 11 and axes is not None and min(axes) < 0:
        pytest.skip("negative axes from opset 11")
    if opset < 10:
        attrs = {"starts": starts, "ends": ends}
        if axes is not None:
            attrs["axes"] = axes
        model = single_node_model("Slice", {"x": X}, ["y"], attrs, opset=opset)
    else:
        inits = {"starts": np.asarray(starts, I64), "ends": np.asarray(ends, I64)}
        names = ["x", "starts", "ends"]
        if axes is not None or steps is not None:
            inits["axes"] = np.asarray(axes if axes is not None else range(len(starts)), I64)
            names.append("axes")
        if steps is not None:
            inits["steps"] = np.asarray(steps, I64)
            names.append("steps")
        model = single_node_model("Slice", {"x": X}, ["y"], opset=opset, initializers=inits,
                                  inputs=names)
    graph = check_against_ort(model, {"x": X})
    attrs = graph.nodes[0].attrs
    assert all(a >= 0 for a in attrs.axes) and len(attrs.steps) == len(starts)


@pytest.mark.parametrize("opset", [11, 13, 21])
@pytest.mark.parametrize("axes, expected", [(None, (0, 3)), ([3], (3,)), ([-1, 0], (0, 3))])
def test_squeeze(opset, axes, expected):
    x = RNG.standard_normal((1, 3, 2, 1)).astype(np.float32)
    attrs, inits, names = {}, {}, ["x"]
    if axes is not None and opset >= 13:
        inits["axes"] = np.asarray(axes, I64)
        names.append("axes")
    elif axes is not None:
        attrs["axes"] = axes
    model = single_node_model("Squeeze", {"x": x}, ["y"], attrs, opset=opset,
                              initializers=inits, inputs=names)
    graph = check_against_ort(model, {"x": x})
    assert graph.nodes[0].attrs.axes == expected


@pytest.mark.parametrize("opset", [9, 11, 13, 21])
@pytest.mark.parametrize("axes, expected", [([0], (0,)), ([-1], (3,)), ([1, -1], (1, 4))])
def test_unsqueeze(opset, axes, expected):
    x = RNG.standard_normal((3, 2, 4)).astype(np.float32)
    if opset < 11 and min(axes) < 0:
        pytest.skip("negative axes from opset 11")
    if opset >= 13:
        model = single_node_model("Unsqueeze", {"x": x}, ["y"], opset=opset,
                                  initializers={"axes": np.asarray(axes, I64)})
    else:
        model = single_node_model("Unsqueeze", {"x": x}, ["y"], {"axes": axes}, opset=opset)
    graph = check_against_ort(model, {"x": x})
    assert graph.nodes[0].attrs.axes == expected


@pytest.mark.parametrize("opset", [9, 11, 13])
@pytest.mark.parametrize("axis, indices", [(0, [1, 0, 1]), (2, [[0, 3], [-1, 2]]), (-1, 4),
                                           (1, [-3])])
def test_gather(opset, axis, indices):
    if opset < 11 and (axis < 0 or np.min(indices) < 0):
        pytest.skip("negative axis / indices from opset 11")
    model = single_node_model("Gather", {"x": X}, ["y"], {"axis": axis}, opset=opset,
                              initializers={"idx": np.asarray(indices, I64)})
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.axis == axis % 4


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("shape, expected", [([2, 1, 1, 5], (2, 3, 4, 5)),
                                             ([3, 2, 3, 4, 5], (3, 2, 3, 4, 5)),
                                             ([5], (2, 3, 4, 5))])
def test_expand(opset, shape, expected):
    model = single_node_model("Expand", {"x": X}, ["y"], opset=opset,
                              initializers={"shape": np.asarray(shape, I64)})
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.shape == expected


@pytest.mark.parametrize("opset", [9, 11, 13, 18, 19, 21])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad(opset, mode):
    if mode == "wrap" and opset < 19:
        pytest.skip("wrap from opset 19")
    pads = [0, 1, 2, 0, 0, 2, 1, 1]
    x = X
    if opset < 11:
        model = single_node_model("Pad", {"x": x}, ["y"], {"pads": pads, "mode": mode,
                                                           "value": 1.5}, opset=opset)
    else:
        inits = {"pads": np.asarray(pads, I64), "value": np.asarray(1.5, np.float32)}
        model = single_node_model("Pad", {"x": x}, ["y"], {"mode": mode}, opset=opset,
                                  initializers=inits)
    graph = check_against_ort(model, {"x": x})
    attrs = graph.nodes[0].attrs
    assert attrs.pads == tuple(pads) and attrs.mode == mode
    assert attrs.value == (1.5 if mode == "constant" or opset < 11 else attrs.value)


def test_pad_axes_opset18():
    inits = {"pads": np.asarray([1, 2, 0, 3], I64), "value": np.asarray(0.0, np.float32),
             "axes": np.asarray([1, -1], I64)}
    model = single_node_model("Pad", {"x": X}, ["y"], opset=18, initializers=inits)
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].attrs.pads == (0, 1, 0, 2, 0, 0, 0, 3)


def test_pad_negative_crops():
    inits = {"pads": np.asarray([0, -1, 0, 0, 0, 0, -1, 1], I64)}
    model = single_node_model("Pad", {"x": X}, ["y"], opset=13, initializers=inits)
    graph = check_against_ort(model, {"x": X})
    assert graph.nodes[0].op is Op.PAD
