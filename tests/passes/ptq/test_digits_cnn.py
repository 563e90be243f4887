"""End to end on a small digits CNN: quantize every layer in order, reconstructing each on the
inputs it sees in the already-quantized network; accuracy must stay within 3 points of fp32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lowbit.ir.attrs import ConvAttrs
from lowbit.ir.qformats import dequantize, fit_weights
from lowbit.ir.qtype import Granularity
from lowbit.passes.ptq import reconstruct_layer
from sklearn.datasets import load_digits
from torch import nn

LAYERS = [  # index in the Sequential, kind, attrs, activation after it
    (0, "conv", ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1), 1), "relu"),
    (2, "conv", ConvAttrs((2, 2), (1, 1, 1, 1), (1, 1), 1), "relu"),
    (5, "linear", None, None),
]


@pytest.fixture(scope="module")
def digits_cnn():
    images = load_digits()
    x = (images.images / 16.0).astype(np.float32)[:, None]
    y = images.target
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1300], order[1300:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(32 * 16, 10))
        optimizer = torch.optim.Adam(net.parameters(), 1e-2)
        xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
        for _ in range(15):
            for i in range(0, len(train), 64):
                optimizer.zero_grad()
                F.cross_entropy(net(xt[i:i + 64]), yt[i:i + 64]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return net, x[train[:256]], x[test], y[test]


def _accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _quantize(net, calibration, kind, bits, reconstruct: bool):
    net = copy.deepcopy(net)
    for index, layer_kind, attrs, act in LAYERS:
        module = net[index]
        w, b = module.weight.detach().numpy(), module.bias.detach().numpy()
        qtype, codes = fit_weights(w, kind, bits, granularity=Granularity(0))
        if reconstruct:
            with torch.no_grad():  # the layer's inputs in the partly quantized network
                x = net[:index](torch.from_numpy(calibration)).numpy()
            codes, qtype, b = reconstruct_layer(w, b, x, qtype, kind=layer_kind,
                                                conv_attrs=attrs, act_fn=act,
                                                init_codes=codes, iters=300)
        module.weight.data = torch.from_numpy(dequantize(codes, qtype))
        module.bias.data = torch.from_numpy(np.asarray(b, dtype=np.float32))
    return net


@pytest.mark.parametrize("kind,bits", [("ternary", 2), ("uniform", 2)])
def test_reconstructed_network_within_three_points_of_fp32(digits_cnn, kind, bits):
    net, calibration, x_test, y_test = digits_cnn
    fp32 = _accuracy(net, x_test, y_test)
    assert fp32 > 0.95
    rounded = _accuracy(_quantize(net, calibration, kind, bits, False), x_test, y_test)
    rebuilt = _accuracy(_quantize(net, calibration, kind, bits, True), x_test, y_test)
    assert rebuilt >= fp32 - 0.03, (fp32, rounded, rebuilt)
    if kind == "uniform":  # max-abs 2-bit rounding collapses; reconstruction recovers it
        assert rounded < fp32 - 0.1 and rebuilt > rounded + 0.1
