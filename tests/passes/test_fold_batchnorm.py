"""fold_batchnorm: BN folded into Conv / ConvTranspose / MatMul(+bias) weights; others untouched.
decompose_batchnorm: the explicit Mul + Add rewrite of a standalone BN."""

import numpy as np
import pytest
from lowbit.ir import FLOAT32, Graph, Op
from lowbit.ir import attrs as A
from lowbit.passes import DecomposeBatchNorm, FoldBatchNorm

rng = np.random.default_rng(0)


def const(g, name, *shape, positive=False):
    data = rng.random(shape) + 0.5 if positive else rng.standard_normal(shape)
    return g.add_const(data.astype(np.float32), name)


def bn(g, z, channels, name="bn"):
    params = [const(g, "gamma", channels), const(g, "beta", channels),
              const(g, "mean", channels), const(g, "var", channels, positive=True)]
    return g.make(Op.BATCHNORM, z, *params, attrs=A.BatchNormAttrs(1e-3), name=name)


def _ops(g):
    return [n.op for n in g.nodes]


def test_conv_bn(apply_pass, ir_lines):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 3, 6, 6))
    z = g.make(Op.CONV, x, const(g, "w", 4, 3, 3, 3),
               attrs=A.ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1)), name="conv")
    g.outputs = [g.make(Op.RELU, bn(g, z, 4), name="relu")]
    conv_attrs = "{strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1}"
    assert ir_lines(str(g))[2:] == [
        f"%conv: float32[1,4,6,6] = Conv(%x, %w: const float32[4,3,3,3]) {conv_attrs}",
        ("%bn: float32[1,4,6,6] = BatchNormalization(%conv, %gamma: const float32[4], %beta: "
         "const float32[4], %mean: const float32[4], %var: const float32[4]) {epsilon=0.001}"),
        "%relu: float32[1,4,6,6] = Relu(%bn)"]
    apply_pass(FoldBatchNorm(), g, f"""
      inputs:  %x: float32[1,3,6,6]
      outputs: %relu: float32[1,4,6,6]
      %bn: float32[1,4,6,6] = Conv(%x, %w_bnfold: const float32[4,3,3,3], \\
           %conv_bias_bnfold: const float32[4]) {conv_attrs}  # node=conv_1
      %relu: float32[1,4,6,6] = Relu(%bn)
    """, atol=1e-5)


def test_grouped_conv_with_bias(apply_pass):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 4, 5, 5))
    z = g.make(Op.CONV, x, const(g, "w", 6, 2, 3, 3), const(g, "b", 6),
               attrs=A.ConvAttrs((2, 2), (0, 0, 1, 1), (1, 1), group=2), name="conv")
    g.outputs = [bn(g, z, 6)]
    apply_pass(FoldBatchNorm(), g, atol=1e-5)
    assert _ops(g) == [Op.CONV] and g.outputs[0].name == "bn"


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_grouped_weight_layout(apply_pass, group):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 4, 4, 4))
    z = g.make(Op.CONV_TRANSPOSE, x, const(g, "w", 4, 3, 3, 3),
               attrs=A.ConvTransposeAttrs((2, 2), (1, 1, 1, 1), (1, 1), (1, 1), group=group),
               name="deconv")
    g.outputs = [bn(g, z, 3 * group)]
    apply_pass(FoldBatchNorm(), g, atol=1e-5)
    assert _ops(g) == [Op.CONV_TRANSPOSE]


@pytest.mark.parametrize("bias_shape", [None, (3,), (1, 3)])
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_with_optional_bias(apply_pass, bias_shape, bias_first):
    if bias_shape is None and bias_first:
        pytest.skip("no bias")
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (5, 4))
    z = g.make(Op.MATMUL, x, const(g, "w", 4, 3), name="mm")
    if bias_shape is not None:
        b = const(g, "b", *bias_shape)
        z = g.make(Op.ADD, *((b, z) if bias_first else (z, b)), name="add")
    g.outputs = [bn(g, z, 3)]
    apply_pass(FoldBatchNorm(), g, atol=1e-5)
    assert _ops(g) == [Op.MATMUL, Op.ADD] and g.outputs[0].name == "bn"


def test_matmul_bn_on_non_feature_axis_is_not_folded():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 5, 4))
    z = g.make(Op.MATMUL, x, const(g, "w", 4, 3), name="mm")
    g.outputs = [bn(g, z, 5)]  # channel axis 1 is the sequence axis (5), not the features (3)
    text = str(g)
    result = FoldBatchNorm()(g, check=True)
    assert result.changed is False and str(g) == text
    assert "not its feature axis" in FoldBatchNorm().fold(g, g.node_by_name("bn"))


@pytest.mark.parametrize("case", ["after_add", "shared_conv", "runtime_weight",
                                  "conv_is_output"])
def test_bn_without_foldable_producer_is_untouched(case):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 2, 4, 4))
    attrs = A.ConvAttrs((1, 1), (0, 0, 0, 0), (1, 1))
    if case == "after_add":
        z = g.make(Op.ADD, x, x, name="add")
    elif case == "runtime_weight":
        w = g.add_input("w", FLOAT32, (2, 2, 1, 1))
        z = g.make(Op.CONV, x, w, attrs=attrs, name="conv")
    else:
        z = g.make(Op.CONV, x, const(g, "w", 2, 2, 1, 1), attrs=attrs, name="conv")
    y = bn(g, z, 2)
    g.outputs = [y]
    if case == "shared_conv":
        g.outputs.append(g.make(Op.RELU, z, name="other_user"))
    if case == "conv_is_output":
        g.outputs.append(z)
    text = str(g)
    fold = FoldBatchNorm()
    assert fold(g, check=True).changed is False
    assert str(g) == text
    assert list(fold.not_folded) == ["bn"]


def test_decompose_standalone_bn(apply_pass):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (1, 3, 2, 2))
    z = g.make(Op.ADD, x, x, name="add")
    g.outputs = [bn(g, z, 3)]
    assert FoldBatchNorm()(g).changed is False
    apply_pass(DecomposeBatchNorm(), g, """
      inputs:  %x: float32[1,3,2,2]
      outputs: %bn: float32[1,3,2,2]
      %add: float32[1,3,2,2] = Add(%x, %x)
      %bn_mul: float32[1,3,2,2] = Mul(%add, %bn_scale: const float32[3,1,1])
      %bn: float32[1,3,2,2] = Add(%bn_mul, %bn_shift: const float32[3,1,1])  # node=bn_add
    """, atol=1e-5)
