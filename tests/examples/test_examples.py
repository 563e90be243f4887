"""The shipped example models (examples/digits_*.onnx) and their data files.

digits_cnn and digits_transformer come from examples/train_digits.py; digits_resnet (a
ResNet-18-shaped CNN on the digits upsampled to 32x32) from examples/train_digits_resnet.py.

Checks, on the committed files: they are valid ONNX with the documented interface, the data
files are the documented digits split, onnxruntime reproduces the accuracy stated in
examples/README.md (and it clears the targets), and lowbit's reference executor matches
onnxruntime once the importer and the executor exist.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# model name -> (file prefix of its calib/eval npz pair, minimum fp32 test accuracy)
MODELS = {
    "digits_cnn": ("digits", 0.97),
    "digits_transformer": ("digits_transformer", 0.95),
    "digits_resnet": ("digits_resnet", 0.97),
}
# model name -> per-sample input shape
LAYOUTS = {"digits_cnn": (1, 8, 8), "digits_transformer": (8, 8), "digits_resnet": (1, 32, 32)}
# model name -> file size limit: the small models stay under 1 MiB, the ResNet (~0.7 M fp32
# parameters) under 4 MiB
MAX_BYTES = {"digits_cnn": 1 << 20, "digits_transformer": 1 << 20, "digits_resnet": 4 << 20}
NUM_TEST = 540  # 30% of sklearn's 1,797 digits
NUM_CALIB = 256
# eval images compared between lowbit's reference executor and onnxruntime (fewer for the
# ResNet, whose 32x32 convolutions are slow in the numpy reference executor)
NUM_REFERENCE = {"digits_cnn": 64, "digits_transformer": 64, "digits_resnet": 16}


def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(EXAMPLES / name) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def eval_data() -> dict[str, dict[str, np.ndarray]]:
    """model name -> its eval npz (``input`` in the model's layout, ``labels``)."""
    return {name: _npz(f"{prefix}_eval.npz") for name, (prefix, _) in MODELS.items()}


def _session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(EXAMPLES / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
    )


def _readme_cell(name: str, column: int) -> str:
    """Cell ``column`` (0 = model name) of ``name``'s row in an examples/README.md results table
    (columns: model, params, file size, accuracy, training time)."""
    readme = (EXAMPLES / "README.md").read_text()
    match = re.search(rf"^\| {name} \|.*\|$", readme, flags=re.MULTILINE)
    assert match is not None, f"no results row for {name} in examples/README.md"
    return match.group(0).strip("|").split("|")[column].strip()


def _readme_accuracy(name: str) -> str:
    """The accuracy cell ("99.26%") of ``name``'s row in examples/README.md's results table."""
    return _readme_cell(name, column=3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_is_valid_onnx_with_documented_interface(name):
    model = onnx.load(str(EXAMPLES / f"{name}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert (EXAMPLES / f"{name}.onnx").stat().st_size < MAX_BYTES[name]
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert (graph_input.name, graph_output.name) == ("input", "logits")
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch", "batch axis must be dynamic"
    assert tuple(d.dim_value for d in dims[1:]) == LAYOUTS[name]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_cnn_keeps_batchnorm_unfused():
    ops = Counter(n.op_type for n in onnx.load(str(EXAMPLES / "digits_cnn.onnx")).graph.node)
    assert ops["Conv"] == 3 and ops["BatchNormalization"] == 3
    assert "Identity" not in ops


def test_transformer_is_written_with_matmul_softmax_layernorm():
    model = onnx.load(str(EXAMPLES / "digits_transformer.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Softmax"] == 2  # one per encoder layer
    assert ops["LayerNormalization"] == 5  # 2 per layer + final
    assert ops["Erf"] == 2  # exact GELU at opset 17
    assert "Shape" not in ops, "head reshapes must use constant shapes"


def test_resnet_is_resnet18_shaped_with_batchnorm_unfused():
    model = onnx.load(str(EXAMPLES / "digits_resnet.onnx"))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["BatchNormalization"] == 20 and ops["Gemm"] == 1
    assert ops["Add"] == 8, "one residual Add per BasicBlock (4 stages x 2)"
    assert "Identity" not in ops and "MaxPool" not in ops
    weights = {init.name: init for init in model.graph.initializer}
    kernels = Counter(
        tuple(weights[n.input[1]].dims[2:]) for n in model.graph.node if n.op_type == "Conv"
    )
    # 17 3x3 convs (stem + 16 in the blocks) + 3 1x1 downsample shortcuts (+ 1 FC = 21 layers)
    assert kernels == {(3, 3): 17, (1, 1): 3}
    # the README's count is torch's trainable parameters: every initializer except the BN
    # running mean and variance (inputs 3 and 4 of BatchNormalization)
    batchnorms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    running = {n.input[i] for n in batchnorms for i in (3, 4)}
    params = sum(int(np.prod(w.dims)) for name, w in weights.items() if name not in running)
    assert f"{params:,}" == _readme_cell("digits_resnet", column=1)
    assert 0.6e6 < params < 0.8e6


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): the documented split, images (N, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return tuple(
        train_test_split(
            images, digits.target, test_size=0.3, random_state=0, stratify=digits.target
        )
    )


def _upsample_4x(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) -> (N, 1, 32, 32) with torch's bilinear interpolation (align_corners=False),
    an implementation independent of the numpy one in examples/train_digits_resnet.py."""
    import torch

    x = torch.from_numpy(images[:, None])
    up = torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    return up.numpy()


def test_resnet_data_is_the_documented_split_upsampled(eval_data):
    x_train, x_test, _, y_test = _digits_split()
    resnet = eval_data["digits_resnet"]
    assert set(resnet) == {"input", "labels"}
    assert resnet["input"].shape == (NUM_TEST, 1, 32, 32)
    assert resnet["input"].dtype == np.float32 and resnet["labels"].dtype == np.int64
    np.testing.assert_allclose(resnet["input"], _upsample_4x(x_test), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(resnet["labels"], y_test)
    # the same images, in the same order, as the CNN's eval file
    cnn = eval_data["digits_cnn"]
    np.testing.assert_allclose(resnet["input"], _upsample_4x(cnn["input"][:, 0]), atol=1e-6)
    np.testing.assert_array_equal(resnet["labels"], cnn["labels"])

    calib_file = _npz("digits_resnet_calib.npz")
    assert set(calib_file) == {"input"}  # usable as --calib as is
    calib = calib_file["input"]
    assert calib.shape == (NUM_CALIB, 1, 32, 32) and calib.dtype == np.float32
    np.testing.assert_allclose(calib, _upsample_4x(x_train[:NUM_CALIB]), rtol=0, atol=1e-6)
    assert 0.0 <= calib.min() and calib.max() <= 1.0


def test_eval_data_is_the_documented_digits_test_split(eval_data):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    _, x_test, _, y_test = train_test_split(
        images, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    cnn, tokens = eval_data["digits_cnn"], eval_data["digits_transformer"]
    # each file holds exactly the model's input name (+ labels): usable as --eval as is
    assert set(cnn) == set(tokens) == {"input", "labels"}
    assert cnn["input"].shape == (NUM_TEST, 1, 8, 8)
    assert cnn["input"].dtype == np.float32 and cnn["labels"].dtype == np.int64
    np.testing.assert_array_equal(tokens["input"], x_test)
    np.testing.assert_array_equal(cnn["input"][:, 0], x_test)
    np.testing.assert_array_equal(cnn["labels"], y_test)
    np.testing.assert_array_equal(tokens["labels"], y_test)


def test_calibration_data_is_256_training_images(eval_data):
    calib_file, tokens_file = _npz("digits_calib.npz"), _npz("digits_transformer_calib.npz")
    assert set(calib_file) == set(tokens_file) == {"input"}  # usable as --calib as is
    calib, tokens = calib_file["input"], tokens_file["input"]
    assert calib.shape == (NUM_CALIB, 1, 8, 8) and calib.dtype == np.float32
    np.testing.assert_array_equal(calib[:, 0], tokens)
    assert 0.0 <= calib.min() and calib.max() <= 1.0
    # Calibration images come from the training split: none of them is a test image.
    test_rows = {row.tobytes() for row in eval_data["digits_transformer"]["input"]}
    assert not any(row.tobytes() in test_rows for row in tokens)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_accuracy_matches_readme(name, eval_data):
    minimum = MODELS[name][1]
    (logits,) = _session(name).run(["logits"], {"input": eval_data[name]["input"]})
    assert logits.shape == (NUM_TEST, 10)
    accuracy = float((logits.argmax(axis=1) == eval_data[name]["labels"]).mean())
    assert f"{100 * accuracy:.2f}%" == _readme_accuracy(name)
    assert accuracy >= minimum


def _lowbit_reference_available() -> bool:
    """True once lowbit.import_onnx and lowbit.run_reference have implementations to call."""
    if importlib.util.find_spec("lowbit.runtime.reference") is None:
        return False
    return hasattr(importlib.import_module("lowbit.compiler.onnx_import"), "import_onnx")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lowbit_reference_matches_onnxruntime(name, eval_data):
    if not _lowbit_reference_available():
        pytest.skip(
            "lowbit.compiler.onnx_import.import_onnx / lowbit.runtime.reference not written yet"
        )
    import lowbit

    x = eval_data[name]["input"][: NUM_REFERENCE[name]]
    (expected,) = _session(name).run(["logits"], {"input": x})
    graph = lowbit.import_onnx(str(EXAMPLES / f"{name}.onnx"), input_shapes={"input": x.shape})
    actual = lowbit.run_reference(graph, {"input": x})["logits"]
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)
