"""A binarization-ready ResNet-18-shaped network (torch.nn, no torchvision) and its ONNX export.

Shape (ResNet-18): stem Conv 7x7/2 (3->64) + BN + ReLU + MaxPool 3x3/2, four stages of two
basic blocks (64-128-256-512 channels, the first block of stages 2-4 strided with a 1x1/2
downsample Conv + BN on the shortcut), GlobalAveragePool, Linear(512 -> classes).

Made for lowbit's ``w1a1`` preset the way XNOR-Net / Bi-Real Net / Larq make a ResNet
binarizable:

* each basic block reads ``x`` through a **pre-sign BatchNorm** (XNOR-Net's BN -> sign -> conv
  order): ``h = bn_in(x)`` is signed (no ReLU before any sign: the sign of a post-ReLU tensor is
  constantly +1 and carries nothing), then ``h = bn1(conv1(h))``, ``h = bn2(conv2(h))`` with no
  ReLU inside the block either, so both 3x3 convs see signed, zero-centred inputs;
* the residual ``out = h + shortcut(x)`` stays a real-valued stream (int8 once quantized);
  the shortcut is the identity or the downsample 1x1 Conv + BN (real-valued / int8);
* the 3x3 convs are **one-padded** (explicit ``Pad(value=1)``, Larq's ``pad_values=1.0``): after
  the sign the border is the code +1, which XNOR-popcount kernels can hold; a zero border (real
  0) cannot be a +-1 code, and lowbit's bitserial family rejects such padded binary convs.
  ``pad_value=None`` builds the ordinary zero-padded variant (reference kernels only).

Why the pre-sign BN is needed by lowbit too, not only by the math: lowbit puts an 8-bit
FakeQuant on every all-integer residual ``Add`` output, and a layer reading that value reuses
it instead of getting its own activation FakeQuant (``passes/insert_fake_quant.py``). A 3x3
conv reading the residual stream directly would therefore get int8 activations (w1a8), never
sign activations. The BN (kept as a float op by lowbit) sits between the two, so the conv gets
its own binary (sign) FakeQuant.

Under ``w1a1`` the 16 block 3x3 convs are binary weights x binary activations; the stem conv
and the FC are int8 by the preset's first/last rule, and :func:`w1a1_recipe` keeps the three
downsample 1x1 convs int8 too (they are shortcuts). Weights are random but deterministic
(``torch.manual_seed(seed)``); BN statistics are non-trivial (random affine, running mean / var
estimated on seeded images), so the folds and the pre-sign BN do real work. No training: the
model exists for correctness and speed, not accuracy.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

#: output channels of the four stages (ResNet-18)
STAGES = (64, 128, 256, 512)
#: basic blocks per stage (ResNet-18)
BLOCKS_PER_STAGE = 2
#: block 3x3 convs binarized under w1a1 (4 stages x 2 blocks x 2 convs)
BINARY_CONVS = 4 * BLOCKS_PER_STAGE * 2


def _randomize_affine(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
    """Random BN affine: gamma ~ U(0.5, 1.5), beta ~ N(0, 0.2)."""
    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.2)


def _estimate_bn_statistics(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BN's running mean / var to the statistics of its input over ``images``
    (cumulative average, ``momentum=None``), the way a trained network's BN would centre its
    input. This matters for the pre-sign BNs: with made-up statistics the sign of a post-ReLU
    stem output would be almost constantly +1."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


class BinaryBasicBlock(nn.Module):
    """``out = bn2(conv2(pad(bn1(conv1(pad(bn_in(x))))))) + shortcut(x)``; conv1 carries the
    stride; shortcut = identity, or ``bn_down(down(x))`` (1x1 conv, same stride) when the
    shape changes. The two 3x3 convs have no bias (BN follows) and see signed inputs.

    ``pad_value``: the 3x3 convs' 1-pixel border. A number (default 1.0) pads explicitly with
    that value before the conv (which then has no padding), as Larq's ``pad_values=1.0`` does
    for binary networks: after the sign the border is the code +1, so an XNOR-popcount kernel
    needs no border correction (lowbit's bitserial family rejects padded binary convs, whose
    zero border a +-1 code cannot hold). None: ordinary zero padding inside the conv."""

    def __init__(self, cin: int, cout: int, stride: int, pad_value: float | None = 1.0):
        super().__init__()
        self.pad_value = pad_value
        conv_pad = 1 if pad_value is None else 0
        self.bn_in = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, conv_pad, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, conv_pad, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def _pad(self, h: torch.Tensor) -> torch.Tensor:
        if self.pad_value is None:
            return h
        return nn.functional.pad(h, (1, 1, 1, 1), value=self.pad_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv1(self._pad(self.bn_in(x))))
        h = self.bn2(self.conv2(self._pad(h)))
        return h + (x if self.down is None else self.down(x))


class BinaryResNet18(nn.Module):
    """The ResNet-18-shaped network of the module docstring; input (N, 3, H, W) float32,
    output logits (N, classes)."""

    def __init__(self, classes: int = 1000, pad_value: float | None = 1.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, STAGES[0], 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(STAGES[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], STAGES[0]
        for i, cout in enumerate(STAGES):
            for j in range(BLOCKS_PER_STAGE):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BinaryBasicBlock(cin, cout, stride, pad_value))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(h, 1))


def make_model(classes: int = 1000, seed: int = 0,
               pad_value: float | None = 1.0) -> BinaryResNet18:
    """The network in eval mode with deterministic weights drawn from ``seed``: Kaiming-normal
    convs, default Linear init, random BN affine (gamma, beta), BN running statistics estimated
    on 8 seeded N(0, 1) 64x64 images (non-trivial: per channel, data-derived). ``pad_value``:
    the block convs' border (:class:`BinaryBasicBlock`)."""
    torch.manual_seed(seed)
    model = BinaryResNet18(classes, pad_value)
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, generator=gen)
        elif isinstance(module, nn.BatchNorm2d):
            _randomize_affine(module, gen)
    images = torch.randn(8, 3, 64, 64, generator=gen)
    _estimate_bn_statistics(model, images)
    return model


def export_onnx(model: nn.Module, path=None, resolution: int = 64, batch: int = 1,
                opset: int = 17) -> bytes:
    """Export ``model`` to ONNX (opset 17, TorchScript exporter ``dynamo=False``, no constant
    folding so the BatchNormalization nodes stay for lowbit to fold, ir_version 10) with input
    ``input`` (batch, 3, resolution, resolution) and output ``logits``. Writes ``path`` when
    given; returns the serialized model."""
    import onnx

    x = torch.zeros(batch, 3, resolution, resolution)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (x,), buf, opset_version=opset, dynamo=False,
                          do_constant_folding=False, input_names=["input"],
                          output_names=["logits"])
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = 10
    data = proto.SerializeToString()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def calibration_images(count: int = 4, resolution: int = 64, seed: int = 0) -> np.ndarray:
    """``count`` seeded random images (count, 3, resolution, resolution) float32 ~ N(0, 1),
    the statistics of ImageNet-normalized inputs."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, resolution, resolution)).astype(np.float32)


def w1a1_recipe(model) -> dict:
    """The ``w1a1`` preset plus int8 for the downsample 1x1 convs (shortcuts stay real-valued /
    int8), as a recipe dict for ``lowbit.quantize(..., recipe=...)``. ``model``: this network as
    ONNX (path / bytes / ModelProto). The 1x1 Conv nodes are looked up by weight shape in the
    graph ``lowbit.quantize(model, quant="none")`` returns (after lowbit's default passes, whose
    BN folding renames the convs), so the recipe does not depend on the exporter's naming."""
    import lowbit

    graph = lowbit.quantize(model, quant="none")
    int8 = {"weights": {"format": "uniform", "bits": 8},
            "activations": {"format": "uniform", "bits": 8}}
    names = [n.name for n in graph.nodes if n.op == lowbit.Op.CONV
             and n.inputs[1].is_const and n.inputs[1].shape[2:] == (1, 1)]
    return {"preset": "w1a1", "nodes": {name: dict(int8) for name in names}}


__all__ = ["BINARY_CONVS", "BLOCKS_PER_STAGE", "STAGES", "BinaryBasicBlock", "BinaryResNet18",
           "calibration_images", "export_onnx", "make_model", "w1a1_recipe"]
