"""canonicalize: Gemm -> MatMul(+Mul)(+Add), views -> one Reshape, Identity/no-op removal."""

import numpy as np
import pytest
from lowbit.ir import FLOAT32, Graph, Op
from lowbit.ir import attrs as A
from lowbit.passes import Canonicalize

rng = np.random.default_rng(0)


def const(g, name, *shape):
    return g.add_const(rng.standard_normal(shape).astype(np.float32), name)


def _ops(g):
    return [n.op for n in g.nodes]


def test_gemm_with_constant_operands_folds_transpose_alpha_beta(apply_pass, ir_lines):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 4))
    y = g.make(Op.GEMM, x, const(g, "w", 3, 4), const(g, "b", 3),
               attrs=A.GemmAttrs(alpha=0.5, beta=2.0, trans_b=True), name="fc")
    g.outputs = [y]
    assert ir_lines(str(g))[2:] == [
        ("%fc: float32[2,3] = Gemm(%x, %w: const float32[3,4], %b: const float32[3]) "
         "{alpha=0.5, beta=2, trans_a=False, trans_b=True}")]
    w, b = g.values["w"].const, g.values["b"].const
    apply_pass(Canonicalize(), g, """
      inputs:  %x: float32[2,4]
      outputs: %fc: float32[2,3]
      %fc_matmul: float32[2,3] = MatMul(%x, %w_scaled: const float32[4,3])
      %fc: float32[2,3] = Add(%fc_matmul, %b_scaled: const float32[3])  # node=fc_bias
    """)
    np.testing.assert_allclose(g.values["w_scaled"].const, 0.5 * w.T)
    np.testing.assert_allclose(g.values["b_scaled"].const, 2.0 * b)


def test_gemm_with_runtime_operands_uses_transpose_and_mul_nodes(apply_pass):
    g = Graph("t")
    a = g.add_input("a", FLOAT32, (4, 2))
    b = g.add_input("b", FLOAT32, (4, 3))
    c = g.add_input("c", FLOAT32, (1, 3))
    g.outputs = [g.make(Op.GEMM, a, b, c, attrs=A.GemmAttrs(alpha=3.0, beta=0.5, trans_a=True),
                        name="fc")]
    apply_pass(Canonicalize(), g, """
      inputs:  %a: float32[4,2], %b: float32[4,3], %c: float32[1,3]
      outputs: %fc: float32[2,3]
      %fc_transpose_a: float32[2,4] = Transpose(%a) {perm=(1, 0)}
      %fc_matmul: float32[2,3] = MatMul(%fc_transpose_a, %b)
      %fc_mul_alpha: float32[2,3] = Mul(%fc_matmul, %fc_alpha: const float32[]=3)
      %fc_mul_beta: float32[1,3] = Mul(%c, %fc_beta: const float32[]=0.5)
      %fc: float32[2,3] = Add(%fc_mul_alpha, %fc_mul_beta)  # node=fc_bias
    """)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_without_effective_bias_is_a_bare_matmul(apply_pass, beta):
    g = Graph("t")
    a = g.add_input("a", FLOAT32, (2, 4))
    inputs = [a, const(g, "w", 4, 3)] + ([const(g, "c", 3)] if beta == 0.0 else [])
    g.outputs = [g.make(Op.GEMM, *inputs, attrs=A.GemmAttrs(beta=beta), name="fc")]
    apply_pass(Canonicalize(), g)
    assert _ops(g) == [Op.MATMUL] and g.outputs[0].name == "fc"


def test_view_chain_collapses_into_one_reshape(apply_pass):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 3, 1, 4))
    f = g.make(Op.FLATTEN, x, attrs=A.FlattenAttrs(1), name="flat")
    u = g.make(Op.UNSQUEEZE, f, attrs=A.AxesAttrs((0,)), name="unsq")
    i = g.make(Op.IDENTITY, u, name="ident")
    s = g.make(Op.SQUEEZE, i, attrs=A.AxesAttrs((0,)), name="sq")
    r = g.make(Op.RESHAPE, s, attrs=A.ReshapeAttrs((6, 4)), name="rs")
    g.outputs = [g.make(Op.RELU, r, name="relu")]
    apply_pass(Canonicalize(), g, """
      inputs:  %x: float32[2,3,1,4]
      outputs: %relu: float32[6,4]
      %rs: float32[6,4] = Reshape(%x) {shape=(6, 4)}  # node=rs_1
      %relu: float32[6,4] = Relu(%rs)
    """)


def test_flatten_squeeze_unsqueeze_become_reshape(apply_pass):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 1, 3))
    a = g.make(Op.SQUEEZE, x, attrs=A.AxesAttrs((1,)), name="sq")
    b = g.make(Op.EXP, a, name="exp")
    c = g.make(Op.UNSQUEEZE, b, attrs=A.AxesAttrs((2,)), name="unsq")
    d = g.make(Op.EXP, c, name="exp2")
    g.outputs = [g.make(Op.FLATTEN, d, attrs=A.FlattenAttrs(2), name="flat")]
    apply_pass(Canonicalize(), g)
    assert _ops(g) == [Op.RESHAPE, Op.EXP, Op.RESHAPE, Op.EXP, Op.RESHAPE]
    assert g.outputs[0].name == "flat" and g.outputs[0].shape == (6, 1)


def test_noop_reshape_and_identity_transpose_removed(apply_pass):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 3))
    e = g.make(Op.EXP, x, name="exp")
    r = g.make(Op.RESHAPE, e, attrs=A.ReshapeAttrs((3, 2)), name="r1")
    r = g.make(Op.RESHAPE, r, attrs=A.ReshapeAttrs((2, 3)), name="r2")
    t = g.make(Op.TRANSPOSE, r, attrs=A.TransposeAttrs((0, 1)), name="t")
    keep = g.make(Op.TRANSPOSE, t, attrs=A.TransposeAttrs((1, 0)), name="t2")
    g.outputs = [keep]
    apply_pass(Canonicalize(), g, """
      inputs:  %x: float32[2,3]
      outputs: %t2: float32[3,2]
      %exp: float32[2,3] = Exp(%x)
      %t2: float32[3,2] = Transpose(%exp) {perm=(1, 0)}
    """)


def test_identity_between_graph_input_and_output_stays(apply_pass):
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2,))
    y = g.make(Op.IDENTITY, x, name="y")
    z = g.make(Op.IDENTITY, g.make(Op.EXP, x, name="exp"), name="z")
    r = g.make(Op.RESHAPE, x, attrs=A.ReshapeAttrs((2,)), name="r")
    g.outputs = [y, z, r]
    apply_pass(Canonicalize(), g, """
      inputs:  %x: float32[2]
      outputs: %y: float32[2], %z: float32[2], %r: float32[2]
      %y: float32[2] = Identity(%x)
      %z: float32[2] = Exp(%x)  # node=exp
      %r: float32[2] = Reshape(%x) {shape=(2,)}
    """)
    assert [v.name for v in g.outputs] == ["y", "z", "r"]


def test_nothing_to_do_reports_no_change():
    g = Graph("t")
    x = g.add_input("x", FLOAT32, (2, 3))
    g.outputs = [g.make(Op.MATMUL, x, const(g, "w", 3, 2), name="mm")]
    text = str(g)
    assert Canonicalize()(g).changed is False and str(g) == text
