"""The kernel families' shared pieces: OutputRange, set_num_threads, bind_layer / BoundLayer."""

from types import SimpleNamespace

import numpy as np
import pytest
from lowbit.codegen.kernels import bitserial, common, int8, lut, shiftadd
from lowbit.ir.errors import LoweringError


@pytest.mark.parametrize("family", [bitserial, int8, lut, shiftadd])
def test_families_share_one_definition(family):
    # The names the families exported before common.py still resolve, to the one class.
    assert family.OutputRange is common.OutputRange
    assert family.BoundLayer is common.BoundLayer
    if family is not lut:
        assert family.set_num_threads is common.set_num_threads


def test_shiftadd_keeps_its_bound_layer_name():
    assert shiftadd.BoundShiftAdd is common.BoundLayer


def test_output_range_dtype_and_errors():
    assert common.OutputRange(0, -128, 127).dtype == "int8"
    assert common.OutputRange(0, 0, 255).dtype == "uint8"
    assert common.OutputRange(0, -129, 0).dtype == "int16"
    assert common.OutputRange(0, 0, 1 << 16).dtype == "int32"
    with pytest.raises(LoweringError, match=r"empty or non-int32 output range \[5, 4\]"):
        common.OutputRange(0, 5, 4)
    with pytest.raises(LoweringError, match="zero point"):
        common.OutputRange(1 << 31, 0, 1)


def test_set_num_threads_rejects_zero():
    with pytest.raises(LoweringError, match="need >= 1 thread, got 0"):
        common.set_num_threads(0)


def _add_kernel(seen: list):
    """A stand-in compiled kernel: ``main(x, p, y)`` writes ``y = x + p`` (int32)."""

    def main(x, p, y):
        seen.append(x.numpy().dtype)
        y.copyfrom((x.numpy().astype(np.int32) + p.numpy()).astype(np.int32))

    return SimpleNamespace(spec=SimpleNamespace(a_dtype="uint8", out_dtype="int32"),
                           lib={"main": main})


def test_bound_layer_uploads_once_and_calls_main():
    seen = []
    params = np.arange(6, dtype=np.int32).reshape(2, 3)
    layer = common.bind_layer(_add_kernel(seen), [params], family="fake", in_shape=(2, 3),
                              out_shape=(2, 3))
    params[:] = 100  # the upload is a copy: later host edits do not reach the device
    x = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    y = layer(x)
    np.testing.assert_array_equal(y, x + np.arange(6).reshape(2, 3))
    assert y.dtype == np.int32 and seen == [np.uint8]  # x was cast to the spec's a_dtype
    assert layer.in_shape == (2, 3) and isinstance(layer.in_shape[0], int)


def test_bound_layer_checks_shape_then_codes():
    checked = []

    def check_codes(x):
        checked.append(x.shape)
        if x.max() > 3:
            raise LoweringError("fake: codes beyond 3")

    layer = common.bind_layer(_add_kernel([]), [np.zeros((1, 2), np.int32)], family="fake",
                              in_shape=(1, 2), out_shape=(1, 2), check_codes=check_codes)
    with pytest.raises(LoweringError, match=r"fake: input shape \(2, 1\), kernel built for "
                                            r"\(1, 2\)"):
        layer(np.zeros((2, 1), np.uint8))
    assert checked == []  # the shape is checked first
    with pytest.raises(LoweringError, match="codes beyond 3"):
        layer(np.array([[1, 9]]))
    np.testing.assert_array_equal(layer(np.array([[1, 3]])), [[1, 3]])
