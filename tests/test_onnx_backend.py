"""The ONNX backend test suite (``onnx.backend.test.BackendTest``) over ``lowbit.onnx_backend``.

Every case the onnx wheel ships is generated: the node tests (built in memory from
``onnx/backend/test/case/node``), the ``simple``, ``pytorch-converted`` and ``pytorch-operator``
model sets, and the nine real models (``test_resnet50_cpu``... in the "real" set, which the
runner feeds with the tiny ``onnx/backend/test/data/light/light_*.onnx`` models and their
stored outputs).

Each test is classified by the op types its model actually uses (read from the model, subgraphs
included, never guessed from the name):

* every op is in :data:`lowbit.onnx_backend.CLAIMED_OPS` -> the test runs and must pass, unless
  it is listed in :data:`EXCLUDED` with a reason: then it is a strict xfail that must fail with
  a typed :class:`~lowbit.ir.errors.LowbitError` (so stale or papered-over exclusions show);
* otherwise it is skipped as "op not claimed".

The nine real models run in the default suite (1-6 s each); any case over ~10 s is marked
``slow`` and only runs with ``-m slow`` (pyproject's default options deselect ``slow``).
CUDA variants are dropped: the backend is CPU only. ``bench/onnx_backend_report.py`` imports
this module and writes the per-set counts to ``docs/onnx-backend-coverage.md``.
"""

from __future__ import annotations

import os
import unittest
import warnings
from dataclasses import dataclass

import lowbit.onnx_backend
import numpy as np
import onnx
import onnx.backend.test
import pytest
from lowbit.ir.errors import ExecutionError, LowbitError
from lowbit.onnx_backend import CLAIMED_OPS
from onnx.backend.test.loader import load_model_tests

#: the onnx ``load_model_tests`` kinds, which are also the set names of the coverage report
SUITES = ("node", "simple", "pytorch-converted", "pytorch-operator", "real")

_ELEMENT_TYPES = "lowbit dtypes are float16/32/64, (u)int8-64 and bool"
_FLOAT8 = f"float8 element types unsupported ({_ELEMENT_TYPES})"
_FLOAT4 = f"float4e2m1 element type unsupported ({_ELEMENT_TYPES})"
_INT4 = (f"ONNX int4/uint4 element types unsupported ({_ELEMENT_TYPES}; lowbit's own 4-bit "
         "formats are QTypes, not ONNX tensor types)")
_INT2 = f"ONNX int2/uint2 element types unsupported ({_ELEMENT_TYPES})"
_BFLOAT16 = f"bfloat16 unsupported ({_ELEMENT_TYPES})"
_STRING = "string tensors unsupported"
_SEQUENCE = "sequence-typed graph inputs unsupported (tensors only)"
_OPTIONAL = "optional-typed graph inputs unsupported (tensors only)"
_TRAINING_DROPOUT = "training-mode Dropout (random mask) not supported: inference graphs only"
_TRAINING_BN = "training-mode BatchNormalization (batch statistics) not supported"
_MAXPOOL_INDICES = "MaxPool's optional Indices output not supported"
_ANTIALIAS = "Resize antialias=1 not supported"

#: Tests of claimed ops that lowbit does not pass, on purpose: exact test name -> reason.
EXCLUDED: dict[str, str] = {
    **dict.fromkeys([
        "test_batchnorm_epsilon_training_mode_cpu", "test_batchnorm_example_training_mode_cpu",
    ], _TRAINING_BN),
    **dict.fromkeys([
        "test_cast_BFLOAT16_to_FLOAT_cpu", "test_cast_FLOAT_to_BFLOAT16_cpu",
        "test_castlike_BFLOAT16_to_FLOAT_expanded_cpu",
        "test_castlike_FLOAT_to_BFLOAT16_expanded_cpu",
    ], _BFLOAT16),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_FLOAT4E2M1_cpu", "test_cast_FLOAT4E2M1_to_FLOAT16_cpu",
        "test_cast_FLOAT4E2M1_to_FLOAT_cpu", "test_cast_FLOAT_to_FLOAT4E2M1_cpu",
        "test_castlike_FLOAT16_to_FLOAT4E2M1_expanded_cpu",
        "test_castlike_FLOAT4E2M1_to_FLOAT16_expanded_cpu",
        "test_castlike_FLOAT4E2M1_to_FLOAT_expanded_cpu",
        "test_castlike_FLOAT_to_FLOAT4E2M1_expanded_cpu", "test_dequantizelinear_float4e2m1_cpu",
        "test_quantizelinear_float4e2m1_cpu",
    ], _FLOAT4),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_FLOAT8E4M3FNUZ_cpu", "test_cast_FLOAT16_to_FLOAT8E4M3FN_cpu",
        "test_cast_FLOAT16_to_FLOAT8E5M2FNUZ_cpu", "test_cast_FLOAT16_to_FLOAT8E5M2_cpu",
        "test_cast_FLOAT8E4M3FNUZ_to_FLOAT16_cpu", "test_cast_FLOAT8E4M3FNUZ_to_FLOAT_cpu",
        "test_cast_FLOAT8E4M3FN_to_FLOAT16_cpu", "test_cast_FLOAT8E4M3FN_to_FLOAT_cpu",
        "test_cast_FLOAT8E5M2FNUZ_to_FLOAT16_cpu", "test_cast_FLOAT8E5M2FNUZ_to_FLOAT_cpu",
        "test_cast_FLOAT8E5M2_to_FLOAT16_cpu", "test_cast_FLOAT8E5M2_to_FLOAT_cpu",
        "test_cast_FLOAT_to_FLOAT8E4M3FNUZ_cpu", "test_cast_FLOAT_to_FLOAT8E4M3FN_cpu",
        "test_cast_FLOAT_to_FLOAT8E5M2FNUZ_cpu", "test_cast_FLOAT_to_FLOAT8E5M2_cpu",
        "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0_cpu", "test_cast_e8m0_FLOAT8E8M0_to_FLOAT16_cpu",
        "test_cast_e8m0_FLOAT8E8M0_to_FLOAT_cpu", "test_cast_e8m0_FLOAT_to_FLOAT8E8M0_cpu",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ_cpu",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FN_cpu",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ_cpu",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2_cpu",
        "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ_cpu",
        "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN_cpu",
        "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ_cpu",
        "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2_cpu",
        "test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ_expanded_cpu",
        "test_castlike_FLOAT16_to_FLOAT8E4M3FN_expanded_cpu",
        "test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ_expanded_cpu",
        "test_castlike_FLOAT16_to_FLOAT8E5M2_expanded_cpu",
        "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16_expanded_cpu",
        "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT_expanded_cpu",
        "test_castlike_FLOAT8E4M3FN_to_FLOAT16_expanded_cpu",
        "test_castlike_FLOAT8E4M3FN_to_FLOAT_expanded_cpu",
        "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16_expanded_cpu",
        "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT_expanded_cpu",
        "test_castlike_FLOAT8E5M2_to_FLOAT16_expanded_cpu",
        "test_castlike_FLOAT8E5M2_to_FLOAT_expanded_cpu",
        "test_castlike_FLOAT_to_FLOAT8E4M3FNUZ_expanded_cpu",
        "test_castlike_FLOAT_to_FLOAT8E4M3FN_expanded_cpu",
        "test_castlike_FLOAT_to_FLOAT8E5M2FNUZ_expanded_cpu",
        "test_castlike_FLOAT_to_FLOAT8E5M2_expanded_cpu",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ_expanded_cpu",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN_expanded_cpu",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ_expanded_cpu",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2_expanded_cpu",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ_expanded_cpu",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN_expanded_cpu",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ_expanded_cpu",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2_expanded_cpu",
        "test_dequantizelinear_e4m3fn_cpu", "test_dequantizelinear_e4m3fn_float16_cpu",
        "test_dequantizelinear_e4m3fn_zero_point_cpu", "test_dequantizelinear_e5m2_cpu",
        "test_quantizelinear_e4m3fn_cpu", "test_quantizelinear_e5m2_cpu",
    ], _FLOAT8),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_INT2_cpu", "test_cast_FLOAT16_to_UINT2_cpu",
        "test_cast_FLOAT_to_INT2_cpu", "test_cast_FLOAT_to_UINT2_cpu",
        "test_cast_INT2_to_FLOAT16_cpu", "test_cast_INT2_to_FLOAT_cpu",
        "test_cast_INT2_to_INT8_cpu", "test_cast_UINT2_to_FLOAT16_cpu",
        "test_cast_UINT2_to_FLOAT_cpu", "test_cast_UINT2_to_UINT8_cpu",
        "test_castlike_FLOAT16_to_INT2_expanded_cpu",
        "test_castlike_FLOAT16_to_UINT2_expanded_cpu", "test_castlike_FLOAT_to_INT2_expanded_cpu",
        "test_castlike_FLOAT_to_UINT2_expanded_cpu", "test_castlike_INT2_to_FLOAT16_expanded_cpu",
        "test_castlike_INT2_to_FLOAT_expanded_cpu", "test_castlike_INT2_to_INT8_expanded_cpu",
        "test_castlike_UINT2_to_FLOAT16_expanded_cpu", "test_castlike_UINT2_to_FLOAT_expanded_cpu",
        "test_castlike_UINT2_to_UINT8_expanded_cpu", "test_dequantizelinear_int2_cpu",
        "test_dequantizelinear_uint2_cpu", "test_quantizelinear_int2_cpu",
        "test_quantizelinear_uint2_cpu",
    ], _INT2),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_INT4_cpu", "test_cast_FLOAT16_to_UINT4_cpu",
        "test_cast_FLOAT_to_INT4_cpu", "test_cast_FLOAT_to_UINT4_cpu",
        "test_cast_INT4_to_FLOAT16_cpu", "test_cast_INT4_to_FLOAT_cpu",
        "test_cast_INT4_to_INT8_cpu", "test_cast_UINT4_to_FLOAT16_cpu",
        "test_cast_UINT4_to_FLOAT_cpu", "test_cast_UINT4_to_UINT8_cpu",
        "test_castlike_FLOAT16_to_INT4_expanded_cpu",
        "test_castlike_FLOAT16_to_UINT4_expanded_cpu", "test_castlike_FLOAT_to_INT4_expanded_cpu",
        "test_castlike_FLOAT_to_UINT4_expanded_cpu", "test_castlike_INT4_to_FLOAT16_expanded_cpu",
        "test_castlike_INT4_to_FLOAT_expanded_cpu", "test_castlike_INT4_to_INT8_expanded_cpu",
        "test_castlike_UINT4_to_FLOAT16_expanded_cpu", "test_castlike_UINT4_to_FLOAT_expanded_cpu",
        "test_castlike_UINT4_to_UINT8_expanded_cpu", "test_dequantizelinear_int4_cpu",
        "test_dequantizelinear_uint4_cpu", "test_quantizelinear_int4_cpu",
        "test_quantizelinear_uint4_cpu",
    ], _INT4),
    **dict.fromkeys([
        "test_equal_string_broadcast_cpu", "test_equal_string_cpu",
    ], _STRING),
    **dict.fromkeys([
        "test_identity_opt_cpu",
    ], _OPTIONAL),
    **dict.fromkeys([
        "test_identity_sequence_cpu",
    ], _SEQUENCE),
    **dict.fromkeys([
        "test_maxpool_with_argmax_2d_precomputed_pads_cpu",
        "test_maxpool_with_argmax_2d_precomputed_strides_cpu",
    ], _MAXPOOL_INDICES),
    **dict.fromkeys([
        "test_resize_downsample_scales_cubic_antialias_cpu",
        "test_resize_downsample_scales_linear_antialias_cpu",
        "test_resize_downsample_sizes_cubic_antialias_cpu",
        "test_resize_downsample_sizes_linear_antialias_cpu",
    ], _ANTIALIAS),
    **dict.fromkeys([
        "test_training_dropout_cpu", "test_training_dropout_default_cpu",
        "test_training_dropout_default_mask_cpu", "test_training_dropout_mask_cpu",
        "test_training_dropout_zero_ratio_cpu", "test_training_dropout_zero_ratio_mask_cpu",
    ], _TRAINING_DROPOUT),
}

#: Cases of claimed ops that take over ~10 s on the 2-core CI machine (besides the real set).
SLOW: frozenset[str] = frozenset()

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True, slots=True)
class SuiteCase:
    """One backend test: its runner name (``test_abs_cpu``), set, op types and verdict.

    ``status`` is ``"run"``, ``"excluded"`` (see :data:`EXCLUDED`) or ``"not claimed"``.
    """

    name: str
    suite: str
    ops: frozenset[str]
    status: str
    reason: str
    slow: bool


def _graph_ops(graph: onnx.GraphProto) -> set[str]:
    """Op types of ``graph`` and its subgraphs; ops outside the default domain are spelled
    ``domain::Op`` so they never match a claimed op."""
    ops: set[str] = set()
    for node in graph.node:
        domain = node.domain if node.domain not in _DEFAULT_DOMAINS else ""
        ops.add(f"{domain}::{node.op_type}" if domain else node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops |= _graph_ops(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    ops |= _graph_ops(sub)
    return ops


def _case_model(case) -> onnx.ModelProto:
    """The model of an onnx ``TestCase`` (in memory, in its directory, or a light model)."""
    if case.model is not None:
        return case.model
    if case.model_dir is not None:
        return onnx.load(os.path.join(case.model_dir, "model.onnx"), load_external_data=False)
    onnx_root = os.path.dirname(os.path.dirname(os.path.realpath(onnx.__file__)))
    return onnx.load(os.path.join(onnx_root, case.url), load_external_data=False)


def classify() -> list[SuiteCase]:
    """Every CPU test the runner generates, with its verdict (see the module docstring)."""
    cases = []
    for suite in SUITES:
        for case in load_model_tests(kind=suite):
            name = f"{case.name}_cpu"
            ops = frozenset(_graph_ops(_case_model(case).graph))
            unclaimed = sorted(ops - CLAIMED_OPS)
            if unclaimed:
                status, reason = "not claimed", "op not claimed: " + ", ".join(unclaimed)
            elif name in EXCLUDED:
                status, reason = "excluded", EXCLUDED[name]
            else:
                status, reason = "run", ""
            slow = name in SLOW
            cases.append(SuiteCase(name, suite, ops, status, reason, slow))
    return cases


with warnings.catch_warnings():
    # onnx computes the node tests' expected outputs at import, with overflows on purpose.
    warnings.simplefilter("ignore", RuntimeWarning)
    CASES: dict[str, SuiteCase] = {c.name: c for c in classify()}

_stale = sorted(set(EXCLUDED) - {n for n, c in CASES.items() if c.status == "excluded"})
assert not _stale, f"EXCLUDED names no runnable test of a claimed op: {_stale}"

_slow_mark = [pytest.mark.slow]

backend_test = onnx.backend.test.BackendTest(lowbit.onnx_backend, __name__)
for _items in backend_test._test_items.values():
    # The runner also makes a CUDA variant of every test; lowbit is CPU only.
    for _name in [n for n in _items if not n.endswith("_cpu")]:
        del _items[_name]
    for _name, _item in _items.items():
        _case = CASES[_name]
        if _case.status == "excluded":
            # Still run: an excluded test must fail with lowbit's own typed refusal. A pass
            # (stale exclusion) or any other failure (wrong numbers, crash) fails the suite.
            _item.func = pytest.mark.xfail(raises=LowbitError, reason=_case.reason,
                                           strict=True)(_item.func)
        elif _case.status != "run":
            _item.func = unittest.skip(_case.reason)(_item.func)
        elif _case.slow:
            for _mark in _slow_mark:
                _item.func = _mark(_item.func)

globals().update(backend_test.test_cases)


# -- the harness itself -----------------------------------------------------------------------
def _reshape_model() -> onnx.ModelProto:
    """y = Reshape(x, shape) with ``shape`` a graph input (a compile-time constant for lowbit)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 6]),
         onnx.helper.make_tensor_value_info("shape", onnx.TensorProto.INT64, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["A", "B"])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_backend_freezes_shape_input_and_caches_per_value():
    rep = lowbit.onnx_backend.prepare(_reshape_model())
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    (y,) = rep.run([x, np.array([3, 4], dtype=np.int64)])
    np.testing.assert_array_equal(y, x.reshape(3, 4))
    (y,) = rep.run([x, np.array([4, 3], dtype=np.int64)])
    np.testing.assert_array_equal(y, x.reshape(4, 3))
    (y,) = rep.run({"x": x, "shape": np.array([3, 4], dtype=np.int64)})
    np.testing.assert_array_equal(y, x.reshape(3, 4))
    assert list(rep._frozen.values()) == [frozenset({"shape"})]
    serialized = lowbit.onnx_backend.prepare(_reshape_model().SerializeToString())
    np.testing.assert_array_equal(serialized.run([x, np.array([3, 4])])[0], x.reshape(3, 4))
    assert len(rep._graphs) == 2  # one graph per frozen shape value, reused on the third run
    x3 = np.ones((3, 6), dtype=np.float32)
    (y,) = rep.run([x3, np.array([9, 2], dtype=np.int64)])
    assert y.shape == (9, 2) and len(rep._graphs) == 3  # new input shape: new graph


def test_backend_run_node_and_devices():
    node = onnx.helper.make_node("Add", ["a", "b"], ["c"])
    a, b = np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32)
    (c,) = lowbit.onnx_backend.run_node(node, [a, b])
    np.testing.assert_array_equal(c, a + b)
    assert lowbit.onnx_backend.supports_device("CPU")
    assert not lowbit.onnx_backend.supports_device("CUDA")
    assert not lowbit.onnx_backend.supports_device("TPU")
    with pytest.raises(ExecutionError, match="CPU only"):
        lowbit.onnx_backend.prepare(_reshape_model(), "CUDA")


def test_backend_rejects_unknown_and_extra_inputs():
    rep = lowbit.onnx_backend.prepare(_reshape_model())
    x = np.ones((2, 6), np.float32)
    with pytest.raises(ExecutionError, match="unknown input"):
        rep.run({"x": x, "z": x})
    with pytest.raises(ExecutionError, match="got 3 inputs"):
        rep.run([x, np.array([3, 4]), x])


def test_backend_upgrades_opset_6_models():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "relu6",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 6)])
    rep = lowbit.onnx_backend.prepare(model)
    assert rep.model.opset_import[0].version == lowbit.onnx_backend.UPGRADE_OPSET
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(rep.run([x])[0], np.maximum(x, 0))


def test_claimed_ops_mirror_the_importer():
    """CLAIMED_OPS must list exactly the op types the importer has converters for."""
    from lowbit.compiler.onnx_import import supported_ops

    assert set(CLAIMED_OPS) == set(supported_ops())
