"""Every bad input gets a typed one-line error: unreadable / wrong-type / truncated files,
checker failures, unsafe or broken external data, absurd sizes, unsupported element types, old
opsets, unsupported ops (all reported at once) and attributes, unbound dynamic dims."""

import os

import numpy as np
import onnx
import pytest
from lowbit.compiler.onnx_import import import_onnx
from lowbit.ir import InvalidModelError, ShapeError, UnsupportedOpError
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, opset=17, initializers=(), opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *opsets])
    model.ir_version = 10
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _relu_model(shape=(1, 3), opset=17):
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", shape)],
                  [_vi("y", shape)], opset=opset)


def _one_line(err):
    assert "\n" not in str(err.value)


# -- files -------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(InvalidModelError, match="does not exist") as err:
        import_onnx(tmp_path / "nope.onnx")
    _one_line(err)


def test_directory(tmp_path):
    with pytest.raises(InvalidModelError, match="is a directory"):
        import_onnx(tmp_path)


@pytest.mark.parametrize("name, payload", [
    ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06"),
    ("notes.txt", b"this is a plain text file, not a model\n"),
    ("empty.onnx", b""),
])
def test_wrong_file_type(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(InvalidModelError, match="is not an ONNX model|is empty") as err:
        import_onnx(path)
    _one_line(err)


def test_npz_file(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, a=np.arange(10))
    with pytest.raises(InvalidModelError, match=r"is not an ONNX model \(protobuf decode"):
        import_onnx(path)


def test_truncated_file(tmp_path):
    w = numpy_helper.from_array(np.ones((16, 16), np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [2, 16])],
                   [_vi("y", [2, 16])], initializers=[w])
    data = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(InvalidModelError, match="truncated"):
        import_onnx(path)


def test_not_a_model_object():
    with pytest.raises(InvalidModelError, match="cannot import a int"):
        import_onnx(42)


def test_checker_failure_is_one_line():
    model = _model([helper.make_node("Relu", ["undefined"], ["y"], name="relu")],
                   [_vi("x", [1])], [_vi("y", [1])])
    with pytest.raises(InvalidModelError, match="failed onnx.checker.check_model") as err:
        import_onnx(model)
    _one_line(err)


def test_output_without_shape_is_tolerated():
    """The checker wants a shape field on graph outputs; onnxruntime does not, nor does lowbit."""
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [2, 3])],
                   [_vi("y", None)])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    assert import_onnx(model).outputs[0].shape == (2, 3)


def test_opset_too_old():
    with pytest.raises(InvalidModelError, match="opset 6; lowbit imports opset >= 7"):
        import_onnx(_relu_model(opset=6))


def test_bytes_and_path_and_proto_agree(tmp_path):
    model = _relu_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    texts = {str(import_onnx(m)) for m in (model, model.SerializeToString(), path, str(path))}
    assert len(texts) == 1


# -- external data ------------------------------------------------------------------------------
def _external_model(tmp_path, location, data=None, offset=None, length=None, dims=(4,)):
    """model.onnx in tmp_path/m with initializer w stored externally at ``location``."""
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    if data is not None:
        (folder / "w.bin").write_bytes(data)
    model = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [_vi("x", [4])],
                   [_vi("y", [4])], initializers=[tensor])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_loads(tmp_path):
    values = np.arange(4, dtype=np.float32)
    path = _external_model(tmp_path, "w.bin", data=b"PAD!" + values.tobytes(), offset=4,
                           length=16)
    graph = import_onnx(path)
    np.testing.assert_array_equal(graph.nodes[0].inputs[1].const, values)


def test_external_data_written_by_onnx_save(tmp_path):
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                   [_vi("x", [2, 64])], [_vi("y", [2, 64])],
                   initializers=[numpy_helper.from_array(w, "w")])
    path = tmp_path / "big.onnx"
    onnx.save(model, path, save_as_external_data=True, location="big.data",
              size_threshold=0)
    assert (tmp_path / "big.data").exists()
    graph = import_onnx(path)
    np.testing.assert_array_equal(graph.nodes[0].inputs[1].const, w)


def test_external_data_missing_file(tmp_path):
    with pytest.raises(InvalidModelError, match=r"initializer 'w'.*w\.bin' does not exist"):
        import_onnx(_external_model(tmp_path, "w.bin"))


@pytest.mark.parametrize("location", ["/etc/passwd", os.path.abspath("/tmp/w.bin")])
def test_external_data_absolute_location_refused(tmp_path, location):
    with pytest.raises(InvalidModelError, match=r"initializer 'w'.*absolute path; refused"):
        import_onnx(_external_model(tmp_path, location, data=bytes(16)))


def test_external_data_path_traversal_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(bytes(16))
    with pytest.raises(InvalidModelError, match=r"initializer 'w'.*outside the model's folder"):
        import_onnx(_external_model(tmp_path, "../secret.bin"))


def test_external_data_beyond_end(tmp_path):
    path = _external_model(tmp_path, "w.bin", data=bytes(16), offset=8, length=16)
    with pytest.raises(InvalidModelError, match=r"initializer 'w'.*beyond the end"):
        import_onnx(path)


def test_external_length_disagrees_with_dims(tmp_path):
    path = _external_model(tmp_path, "w.bin", data=bytes(32), length=32)
    with pytest.raises(InvalidModelError, match=r"initializer 'w'.*length 32 disagrees"):
        import_onnx(path)


def test_external_data_needs_a_path(tmp_path):
    path = _external_model(tmp_path, "w.bin", data=bytes(16))
    with pytest.raises(InvalidModelError, match="import the model from its path"):
        import_onnx(path.read_bytes())


# -- sizes and element types ----------------------------------------------------------------
def test_absurd_initializer_size():
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    model = _model([helper.make_node("Relu", ["w"], ["y"])], [], [_vi("y", [1 << 20, 1 << 20])],
                   initializers=[tensor])
    with pytest.raises(InvalidModelError, match=r"initializer 'w' declares dims"):
        import_onnx(model)


def test_raw_data_disagrees_with_dims():
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "w")
    tensor.dims[:] = [5]
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [5])],
                   [_vi("y", [5])], initializers=[tensor])
    with pytest.raises(InvalidModelError, match=r"initializer 'w' has 16 bytes"):
        import_onnx(model)


def test_absurd_graph_input_size():
    with pytest.raises(InvalidModelError, match=r"graph input 'x' declares 1099511627776"):
        import_onnx(_relu_model(shape=(1 << 20, 1 << 20)))


@pytest.mark.parametrize("elem, label", [(TensorProto.BFLOAT16, "bfloat16"),
                                         (TensorProto.STRING, "string"),
                                         (TensorProto.COMPLEX64, "complex64"),
                                         (TensorProto.FLOAT8E4M3FN, "float8e4m3fn"),
                                         (TensorProto.INT4, "int4")])
def test_unsupported_element_type_of_input(elem, label):
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", [2], elem)],
                   [_vi("y", [2], elem)], opset=21)
    with pytest.raises(UnsupportedOpError, match=f"graph input 'x' has element type {label}"):
        import_onnx(model)


def test_unsupported_element_type_of_initializer():
    tensor = helper.make_tensor("w", TensorProto.BFLOAT16, [2], [1.0, 2.0])
    model = _model([helper.make_node("Identity", ["w"], ["y"])], [],
                   [_vi("y", [2], TensorProto.BFLOAT16)], initializers=[tensor])
    with pytest.raises(UnsupportedOpError, match="initializer 'w' has element type bfloat16"):
        import_onnx(model)


# -- unsupported ops and attributes -----------------------------------------------------------
def test_every_unsupported_op_reported_at_once():
    nodes = [helper.make_node("NonZero", ["x"], [f"nz{i}"], name=f"nz_{i}") for i in range(2)]
    nodes += [helper.make_node("Attention", ["x"], [f"a{i}"], name=f"a{i}",
                               domain="com.microsoft") for i in range(4)]
    nodes += [helper.make_node("Relu", ["x"], ["y"], name="ok"),
              helper.make_node("Celu", ["x"], ["c"])]
    model = _model(nodes, [_vi("x", [2])], [_vi("y", [2])],
                   opsets=[helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(UnsupportedOpError) as err:
        import_onnx(model)
    msg = str(err.value)
    assert msg.startswith("3 unsupported op types in model (opset 17): NonZero-13 ×2 (nodes: "
                          "nz_0, nz_1), com.microsoft.Attention-1 ×4 (nodes: a0, a1, a2, ...), "
                          "Celu-12 ×1 (nodes: Celu_7); see the supported list with 'lowbit ops'")
    _one_line(err)


def test_unlisted_schema_version_is_unsupported(monkeypatch):
    """A converter listing Relu-6 and Relu-13 does not silently serve Relu-14 (opset 17)."""
    from dataclasses import replace

    from lowbit.compiler.onnx_import import registry

    registry.load_converters()
    relu = registry._TABLE["Relu"]
    monkeypatch.setitem(registry._TABLE, "Relu", replace(relu, versions=(6, 13)))
    with pytest.raises(UnsupportedOpError, match=r"\(opset 17\): Relu-14 ×1 \(nodes: relu\)"):
        import_onnx(_relu_model())
    assert import_onnx(_relu_model(opset=13)).nodes[0].name == "relu"


def test_unsupported_attribute_values_reported_with_node_names():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad1", mode="symmetric"),
             helper.make_node("Cast", ["p"], ["h"], name="cast1", to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["h"], ["y"], name="cast2", to=TensorProto.FLOAT)]
    pads = numpy_helper.from_array(np.zeros(2, np.int64), "pads")
    model = _model(nodes, [_vi("x", [2])], [_vi("y", [2])],
                   initializers=[pads])
    with pytest.raises(UnsupportedOpError, match=r"2 unsupported attribute value\(s\) \(opset "
                       r"17\): Pad node 'pad1': mode='symmetric'.*Cast node 'cast1': "
                       r"to=bfloat16"):
        import_onnx(model)


def test_auto_pad_valid_is_fine():
    w = numpy_helper.from_array(np.ones((1, 1, 2, 2), np.float32), "w")
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="VALID")],
                   [_vi("x", [1, 1, 3, 3])], [_vi("y", [1, 1, 2, 2])], initializers=[w])
    assert import_onnx(model).nodes[0].attrs.pads == (0, 0, 0, 0)


# -- dynamic dims and input binding -----------------------------------------------------------
def test_unbound_dynamic_dims():
    model = _relu_model(shape=("N", 3, "H", 320))
    with pytest.raises(ShapeError, match=r"graph input 'x' has dynamic dims \['N', 'H'\] \(shape "
                       r"\[N, 3, H, 320\]\); bind them with input_shapes=\{'x': \(1, 3, 1, "
                       r"320\)\} or --input-shape x=1,3,1,320"):
        import_onnx(model)


def test_unknown_dim_without_name():
    model = _relu_model(shape=(None, 3))
    with pytest.raises(ShapeError, match=r"dynamic dims \['\?0'\]"):
        import_onnx(model)


def test_binding_dynamic_dims():
    graph = import_onnx(_relu_model(shape=("N", 3, "H", 320)),
                        input_shapes={"x": (2, 3, 48, 320)})
    assert graph.inputs[0].shape == (2, 3, 48, 320) == graph.outputs[0].shape


def test_input_shapes_unknown_name():
    with pytest.raises(ShapeError, match=r"input_shapes names 'z', which is not a graph input; "
                       r"the graph inputs are \['x'\]"):
        import_onnx(_relu_model(), input_shapes={"z": (1, 3)})


def test_input_shapes_wrong_rank():
    with pytest.raises(ShapeError, match=r"has rank 3 but graph input 'x' has rank 2"):
        import_onnx(_relu_model(shape=("N", 3)), input_shapes={"x": (1, 3, 1)})


def test_input_shapes_contradicts_static_dim():
    with pytest.raises(ShapeError, match=r"contradicts static dim 1 = 3 of graph input 'x'"):
        import_onnx(_relu_model(shape=("N", 3)), input_shapes={"x": (1, 4)})


def test_constants_freeze_inputs_and_unknown_names_fail():
    model = _model([helper.make_node("Add", ["x", "b"], ["y"], name="add")],
                   [_vi("x", [2]), _vi("b", [2])], [_vi("y", [2])])
    graph = import_onnx(model, constants={"b": np.ones(2, np.float32)})
    assert [v.name for v in graph.inputs] == ["x"] and graph.nodes[0].inputs[1].is_const
    with pytest.raises(ShapeError, match="constants names 'q'"):
        import_onnx(model, constants={"q": np.ones(2)})


def test_input_that_is_also_initializer_is_constant():
    b = numpy_helper.from_array(np.ones(2, np.float32), "b")
    model = _model([helper.make_node("Add", ["x", "b"], ["y"], name="add")],
                   [_vi("x", [2]), _vi("b", [2])], [_vi("y", [2])], initializers=[b])
    graph = import_onnx(model)
    assert [v.name for v in graph.inputs] == ["x"] and graph.nodes[0].inputs[1].is_const
