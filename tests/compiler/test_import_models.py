"""The 9 real (opset 9) model graphs shipped with onnx import without error (running them is
tested elsewhere)."""

from pathlib import Path

import onnx
import pytest
from lowbit.compiler.onnx_import import import_onnx
from lowbit.ir import Op, verify

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(LIGHT.glob("light_*.onnx"))


def test_all_nine_models_are_present():
    assert len(MODELS) == 9


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_light_model_imports(path):
    graph = import_onnx(path)
    verify(graph)
    assert graph.opset == 9 and graph.nodes
    assert all(v.shape is not None for n in graph.nodes for v in n.outputs)
    # no ONNX-only ops survive and every ONNX output keeps its name
    proto = onnx.load(path, load_external_data=False)
    assert [v.name for v in graph.outputs] == [o.name for o in proto.graph.output]
    assert Op.IDENTITY not in {n.op for n in graph.nodes}


def test_supported_ops_cover_the_contract():
    from lowbit.compiler.onnx_import import supported_ops

    contract = set(["Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "PRelu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Softmax", "LogSoftmax", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Neg", "Abs", "ReduceMean", "ReduceSum", "ReduceMax", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Shape", "Gather", "Cast", "Resize", "Pad", "LayerNormalization", "Constant", "ConstantOfShape", "Identity", "Dropout", "Expand", "Where", "Equal", "MatMulInteger", "QuantizeLinear", "DequantizeLinear", "LRN", "Sum"])
    table = supported_ops()
    assert set(table) == contract
    assert table["Conv"] == (1, 11, 22) and table["Softmax"] == (1, 11, 13)
