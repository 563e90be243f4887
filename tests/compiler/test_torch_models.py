"""Small torch.nn models exported to ONNX, imported by lowbit, run by the reference executor.

Each model is checked against onnxruntime twice: right after import and after
``default_pipeline()``. Models with BatchNormalization after a conv also assert that the pipeline
folded every such BatchNormalization. Dynamic batch / spatial / sequence dims are exported as
``dim_param``s and bound at import through ``input_shapes``; the same file is imported at two
shapes. Seeds are fixed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from lowbit.compiler.onnx_import import import_onnx
from lowbit.ir import Graph, Op, verify
from lowbit.passes import default_pipeline
from lowbit.runtime.reference import run_reference
from torch import nn

RTOL, ATOL = 1e-4, 1e-5


# -- models -----------------------------------------------------------------------------------
class ResidualCNN(nn.Module):
    """conv-BN-ReLU stem, two residual blocks (one strided, with a 1x1 projection), GAP, FC."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.block2 = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.project = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False),
                                     nn.BatchNorm2d(16))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(self.project(x) + self.block2(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """Linear-ReLU-Linear-GELU-Linear."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(),
                                 nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer with hand-written multi-head attention."""

    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=-1)

        def heads(t):
            return t.reshape(batch, seq, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)
        attn = torch.softmax(scores, dim=-1) @ v
        x = self.norm1(x + self.out(attn.transpose(1, 2).reshape(batch, seq, dim)))
        return self.norm2(x + self.ffn(x))


class MobileNetBlock(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, squeeze-excite (HardSigmoid), 1x1 project,
    with BN after every conv and HardSwish activations."""

    def __init__(self, channels: int = 8, expand: int = 24, squeeze: int = 8):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, expand, 1, bias=False),
                                    nn.BatchNorm2d(expand), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(expand, expand, 3, padding=1, groups=expand, bias=False),
            nn.BatchNorm2d(expand), nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(expand, squeeze, 1),
                                nn.ReLU(), nn.Conv2d(squeeze, expand, 1), nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(expand, channels, 1, bias=False),
                                     nn.BatchNorm2d(channels))

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        return x + self.project(y * self.se(y))


# -- helpers ----------------------------------------------------------------------------------
def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold is visible."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def export(model: nn.Module, example: torch.Tensor, path, dynamic: dict | None = None,
           opset: int = 17) -> onnx.ModelProto:
    """TorchScript export (``dynamo=False``) without constant folding, so BatchNormalization
    stays in the file for lowbit to fold."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=False)
    return onnx.load(str(path))


def onnxruntime_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def check_against_onnxruntime(path, model: onnx.ModelProto, x: np.ndarray) -> tuple[Graph, Graph]:
    """Import with ``x``'s shape bound; compare lowbit's reference output with onnxruntime
    before and after the default passes. Returns (imported graph, optimized graph)."""
    expected = onnxruntime_outputs(path, x)
    graph = import_onnx(model, input_shapes={"x": x.shape})
    verify(graph)
    (name,) = [v.name for v in graph.inputs]
    before = run_reference(graph, {name: x})[graph.outputs[0].name]
    np.testing.assert_allclose(before, expected, rtol=RTOL, atol=ATOL)
    optimized = default_pipeline()(graph.copy()).graph
    verify(optimized)
    after = run_reference(optimized, {optimized.inputs[0].name: x})[optimized.outputs[0].name]
    np.testing.assert_allclose(after, expected, rtol=RTOL, atol=ATOL)
    return graph, optimized


def count(graph: Graph, op: Op) -> int:
    return sum(node.op == op for node in graph.nodes)


def assert_batchnorm_folded(imported: Graph, optimized: Graph, expected_bns: int) -> None:
    """The import kept every BN; the pipeline removed every BN that follows a conv."""
    assert count(imported, Op.BATCHNORM) == expected_bns
    after_conv = [n for n in optimized.nodes if n.op == Op.BATCHNORM
                  and n.inputs[0].producer is not None and n.inputs[0].producer.op == Op.CONV]
    assert after_conv == [], f"BatchNormalization left after a Conv: {after_conv}"
    assert count(optimized, Op.BATCHNORM) == 0


def _input(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# -- tests ------------------------------------------------------------------------------------
def test_residual_cnn_batchnorm_folded(tmp_path):
    torch.manual_seed(0)
    model = _randomize_batchnorm(ResidualCNN())
    path = tmp_path / "cnn.onnx"
    proto = export(model, torch.randn(2, 3, 16, 16), path)
    x = _input(np.random.default_rng(0), 2, 3, 16, 16)
    imported, optimized = check_against_onnxruntime(path, proto, x)
    assert_batchnorm_folded(imported, optimized, expected_bns=6)
    assert count(optimized, Op.CONV) == 6


def test_mlp(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "mlp.onnx"
    proto = export(MLP().eval(), torch.randn(4, 32), path)
    check_against_onnxruntime(path, proto, _input(np.random.default_rng(1), 4, 32))


@pytest.mark.parametrize("opset", [17, 20])
def test_transformer_encoder_layer(tmp_path, opset):
    """LayerNormalization, Softmax, GELU (Erf form at opset 17, the Gelu op at opset 20)."""
    torch.manual_seed(2)
    path = tmp_path / "encoder.onnx"
    proto = export(EncoderLayer().eval(), torch.randn(2, 5, 32), path, opset=opset)
    ops = {n.op_type for n in proto.graph.node}
    assert {"LayerNormalization", "Softmax"} <= ops
    imported, _ = check_against_onnxruntime(path, proto, _input(np.random.default_rng(2), 2, 5, 32))
    assert count(imported, Op.LAYERNORM) == 2
    assert count(imported, Op.SOFTMAX) == 1


def test_mobilenet_block_depthwise_hardswish_squeeze_excite(tmp_path):
    torch.manual_seed(3)
    model = _randomize_batchnorm(MobileNetBlock())
    path = tmp_path / "mobilenet.onnx"
    proto = export(model, torch.randn(1, 8, 12, 12), path)
    assert {"HardSwish", "HardSigmoid"} <= {n.op_type for n in proto.graph.node}
    x = _input(np.random.default_rng(3), 1, 8, 12, 12)
    imported, optimized = check_against_onnxruntime(path, proto, x)
    assert_batchnorm_folded(imported, optimized, expected_bns=3)
    depthwise = [n for n in optimized.nodes if n.op == Op.CONV and n.attrs.group == 24]
    assert len(depthwise) == 1


def test_cnn_dynamic_batch_and_spatial_dims(tmp_path):
    """One file with dim_params N, H, W; imported at two different bound shapes."""
    torch.manual_seed(4)
    model = _randomize_batchnorm(ResidualCNN())
    path = tmp_path / "cnn_dynamic.onnx"
    proto = export(model, torch.randn(1, 3, 16, 16), path,
                   dynamic={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["N", "", "H", "W"]
    rng = np.random.default_rng(4)
    for shape in [(3, 3, 16, 16), (1, 3, 20, 12)]:
        imported, optimized = check_against_onnxruntime(path, proto, _input(rng, *shape))
        assert imported.inputs[0].shape == shape
        assert optimized.outputs[0].shape == (shape[0], 10)
        assert_batchnorm_folded(imported, optimized, expected_bns=6)


def test_transformer_dynamic_batch_and_sequence(tmp_path):
    """Dynamic batch / sequence: the exported Reshape shapes come from Shape ops on the input,
    which the importer resolves from the bound shape."""
    torch.manual_seed(5)
    path = tmp_path / "encoder_dynamic.onnx"
    proto = export(EncoderLayer().eval(), torch.randn(2, 5, 32), path,
                   dynamic={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    assert "Shape" in {n.op_type for n in proto.graph.node}
    rng = np.random.default_rng(5)
    for shape in [(1, 7, 32), (3, 4, 32)]:
        _, optimized = check_against_onnxruntime(path, proto, _input(rng, *shape))
        assert optimized.outputs[0].shape == shape


def test_mlp_dynamo_export_dynamic_batch(tmp_path):
    """The torch.export-based exporter with ``dynamic_shapes``."""
    torch.manual_seed(6)
    path = tmp_path / "mlp_dynamo.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(MLP().eval(), (torch.randn(4, 32),), str(path), dynamo=True,
                          input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: batch},), verbose=False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    rng = np.random.default_rng(6)
    for n in (1, 9):
        check_against_onnxruntime(path, proto, _input(rng, n, 32))
