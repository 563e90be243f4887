"""Torch fake-quant: bit-exact with the numpy qformats grid, STE and LSQ gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lowbit.ir.errors import QuantizationError
from lowbit.ir.qformats import dequantize, fit_weights, quantize
from lowbit.ir.qtype import Granularity, QKind
from lowbit.passes.ptq import (
    fake_quant,
    fake_quant_learnable,
    fake_quant_scales,
    quant_params,
    with_params,
)

FORMATS = [
    ("uniform", 2, {}),
    ("uniform", 4, {}),
    ("uniform", 8, {}),
    ("uniform", 4, {"symmetric": False}),
    ("uniform", 3, {"symmetric": False, "signed": False}),
    ("binary", 1, {}),
    ("ternary", 2, {}),
    ("pow2", 2, {}),
    ("pow2", 4, {}),
    ("pow2", 3, {"zero_free": True}),
    ("codebook", 2, {}),
    ("codebook", 4, {}),
]
GRANULARITIES = [Granularity(), Granularity(0), Granularity(1, 5)]


def _weights(seed=0, shape=(12, 10, 3, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 0.2, size=(shape[0],) + (1,) * (len(shape) - 1))
    return (rng.laplace(size=shape) * scale).astype(np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("kind,bits,options", FORMATS, ids=lambda v: str(v))
def test_fake_quant_is_bit_exact_with_numpy_grid(kind, bits, options, granularity):
    w = _weights()
    qtype, _ = fit_weights(w, kind, bits, granularity=granularity, **options)
    # Inputs beyond the fitted range (clamping), on the grid (ties) and the weights themselves.
    grid = dequantize(quantize(w, qtype), qtype)
    for x in (w, (w * 1.7).astype(np.float32), grid, -grid, np.zeros_like(w)):
        expected = dequantize(quantize(x, qtype), qtype)
        got = fake_quant(torch.from_numpy(x), qtype)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(_bits(got.numpy()), _bits(expected))


def test_fake_quant_half_way_ties_follow_numpy():
    # Exact midpoints between uniform levels: numpy rounds half to even, so must torch.
    w = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]], dtype=np.float32)
    qtype, _ = fit_weights(np.array([[7.0, -7.0]], np.float32), "uniform", 4,
                           granularity=Granularity())
    assert qtype.scale == (1.0,)
    got = fake_quant(torch.from_numpy(w), qtype).numpy()
    np.testing.assert_array_equal(got, [[-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 4.0]])
    np.testing.assert_array_equal(_bits(got), _bits(dequantize(quantize(w, qtype), qtype)))


@pytest.mark.parametrize("kind,bits,options", FORMATS, ids=lambda v: str(v))
def test_learnable_params_match_with_params_qtype(kind, bits, options):
    """Changed (and, for codebooks, unsorted) parameters read the same as the QType they
    produce through with_params."""
    w = _weights(1)
    qtype, _ = fit_weights(w, kind, bits, granularity=Granularity(0), **options)
    params = quant_params(qtype, w.shape)
    if qtype.kind == QKind.CODEBOOK:
        changed = (params * 0.9).flip(1)
    else:
        changed = params * torch.linspace(0.5, 1.2, params.shape[0], dtype=torch.float64)
    new_qtype = with_params(qtype, changed)
    got = fake_quant_learnable(torch.from_numpy(w), qtype, changed).numpy()
    expected = dequantize(quantize(w, new_qtype), new_qtype)
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    assert new_qtype.zero_point == qtype.zero_point and new_qtype.granularity == qtype.granularity


def test_straight_through_gradient_masks_outside_range():
    qtype, _ = fit_weights(np.array([1.0, -1.0], np.float32), "uniform", 2,
                           granularity=Granularity())  # s = 1, codes -1..1
    w = torch.tensor([-3.0, -1.4, 0.2, 1.49, 1.51, 4.0], requires_grad=True)
    fake_quant(w, qtype).sum().backward()
    # unclamped code rint(w) must lie in [-2, 1]: -1.4 -> -1, 1.49 -> 1 inside; 1.51 -> 2 out
    np.testing.assert_array_equal(w.grad.numpy(), [0, 1, 1, 1, 0, 0])

    ternary, _ = fit_weights(np.array([2.0, -2.0], np.float32), "ternary", 2,
                             granularity=Granularity())
    w = torch.tensor([-2.5, -0.3, 0.9, 2.0, 2.1], requires_grad=True)
    fake_quant(w, ternary).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [0, 1, 1, 1, 0])


def test_lsq_scale_gradient():
    """dy/ds = level - w/s inside the range, level when saturated."""
    qtype, _ = fit_weights(np.array([[3.0, -3.0], [1.5, 0.0]], np.float32), "uniform", 3,
                           granularity=Granularity(0))  # s = 1, 0.5 per row
    w = torch.tensor([[0.4, 2.3], [5.0, -0.3]], dtype=torch.float64)
    scale = quant_params(qtype, (2, 2)).requires_grad_(True)
    fake_quant_learnable(w, qtype, scale).sum().backward()
    # row 0 (s=1): levels 0, 2 -> (0 - 0.4) + (2 - 2.3); row 1 (s=.5): 5.0 saturates at 3,
    # -0.3/0.5 = -0.6 -> level -1: (-1 + 0.6)
    np.testing.assert_allclose(scale.grad.numpy(), [-0.4 - 0.3, 3.0 + (-1 + 0.6)], atol=1e-12)


def test_codebook_level_gradient_counts_assignments():
    qtype, _ = fit_weights(np.array([-1.0, 0.0, 1.0, 2.0], np.float32), "codebook", 2,
                           granularity=Granularity())
    levels = quant_params(qtype, (6,)).requires_grad_(True)
    w = torch.tensor([-1.2, -0.9, 0.1, 0.2, 0.3, 2.2], dtype=torch.float64,
                     requires_grad=True)
    fake_quant_learnable(w, qtype, levels).sum().backward()
    np.testing.assert_array_equal(levels.grad.numpy(), [[2, 3, 0, 1]])
    np.testing.assert_array_equal(w.grad.numpy(), [0, 1, 1, 1, 1, 0])


def test_wrong_parameter_shape_is_rejected():
    w = _weights()
    qtype, _ = fit_weights(w, "uniform", 4, granularity=Granularity(0))
    with pytest.raises(QuantizationError, match="shape"):
        fake_quant_learnable(torch.from_numpy(w), qtype, torch.ones(3, dtype=torch.float64))
    with pytest.raises(QuantizationError, match="groups"):
        fake_quant(torch.from_numpy(w[:5]), qtype)


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("kind,bits,options",
                         [f for f in FORMATS if f[0] != "codebook"], ids=lambda v: str(v))
def test_fake_quant_scales_stacks_fake_quant_learnable(kind, bits, options, granularity):
    w = torch.from_numpy(_weights(2)).to(torch.float64)
    qtype, _ = fit_weights(w.numpy().astype(np.float32), kind, bits, granularity=granularity,
                           **options)
    base = quant_params(qtype, tuple(w.shape))
    scales = base[None, :] * torch.tensor([0.3, 1.0, 1.25], dtype=torch.float64)[:, None]
    got = fake_quant_scales(w, qtype, scales)
    for row in range(3):
        want = fake_quant_learnable(w, qtype, scales[row])
        np.testing.assert_array_equal(got[row].numpy(), want.numpy())


def test_fake_quant_scales_rejects_codebooks_and_bad_shapes():
    w = torch.from_numpy(_weights()).to(torch.float64)
    codebook, _ = fit_weights(w.numpy().astype(np.float32), "codebook", 2,
                              granularity=Granularity(0))
    with pytest.raises(QuantizationError, match="codebook"):
        fake_quant_scales(w, codebook, torch.ones(1, 12, dtype=torch.float64))
    uniform, _ = fit_weights(w.numpy().astype(np.float32), "uniform", 4,
                             granularity=Granularity(0))
    with pytest.raises(QuantizationError, match=r"\(M, 12\)"):
        fake_quant_scales(w, uniform, torch.ones(12, dtype=torch.float64))


def test_leading_groups_broadcasts_only_leading_axis_layouts():
    """fake_quant_scales broadcasts (M, G) scales only where the groups are whole slices of
    axis 0 (or one group); a square tensor grouped on axis 1 has G == shape[0] but another
    layout, and must take the gather path."""
    from lowbit.ir.qformats import group_index
    from lowbit.passes.ptq.fake_quant_torch import _leading_groups

    shape = (6, 6, 3, 3)
    assert _leading_groups(*group_index(shape, Granularity())) == (1, 1, 1, 1)
    assert _leading_groups(*group_index(shape, Granularity(0))) == (6, 1, 1, 1)
    assert _leading_groups(*group_index(shape, Granularity(1))) is None
    assert _leading_groups(*group_index(shape, Granularity(1, 2))) is None
    w = torch.from_numpy(_weights(3, shape)).to(torch.float64)
    qtype, _ = fit_weights(w.numpy().astype(np.float32), "uniform", 4,
                           granularity=Granularity(1))
    scales = quant_params(qtype, shape)[None, :] * torch.tensor([[0.5], [1.0]],
                                                                dtype=torch.float64)
    got = fake_quant_scales(w, qtype, scales)
    for row in range(2):
        np.testing.assert_array_equal(got[row].numpy(),
                                      fake_quant_learnable(w, qtype, scales[row]).numpy())
