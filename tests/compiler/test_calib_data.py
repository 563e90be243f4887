"""Calibration data loading: npz / dict / feed sources, batching, and every error path."""

import zipfile

import numpy as np
import pytest
from lowbit.compiler.calib_data import CalibrationSet, load_calibration
from lowbit.ir.dtypes import FLOAT16, FLOAT32, INT32, INT64
from lowbit.ir.errors import CalibrationError

INPUTS = {"x": (FLOAT32, (4, 1, 8, 8)), "ids": (INT64, (4, 3))}


def _samples(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
            "ids": rng.integers(0, 100, (n, 3)).astype(np.int64)}


# -- sources and batching ----------------------------------------------------------------------
def test_npz_batches_in_sample_order_and_drops_the_partial_batch(tmp_path):
    data = _samples(10)
    path = tmp_path / "calib.npz"
    np.savez(path, ids=data["ids"], x=data["x"])  # file order differs from the model's order
    calib = load_calibration(path, INPUTS)
    assert isinstance(calib, CalibrationSet)
    assert (len(calib), calib.num_samples, calib.batch_size, calib.dropped_samples) == (2, 10, 4, 2)
    assert "last 2 dropped" in calib.summary()
    batches = list(calib)
    assert len(batches) == 2
    for index, feed in enumerate(batches):
        assert list(feed) == ["x", "ids"]  # the model's input order
        np.testing.assert_array_equal(feed["x"], data["x"][4 * index:4 * index + 4])
        np.testing.assert_array_equal(feed["ids"], data["ids"][4 * index:4 * index + 4])
        assert feed["x"].shape == (4, 1, 8, 8) and feed["x"].dtype == np.float32
    # deterministic: a second pass yields the same batches
    for again, first in zip(calib, batches):
        np.testing.assert_array_equal(again["x"], first["x"])


def test_dict_and_feed_iterable_give_the_same_batches(tmp_path):
    data = _samples(12)
    from_dict = load_calibration(data, INPUTS)
    feeds = ({k: v[i:i + 3] for k, v in data.items()} for i in range(0, 12, 3))  # a generator
    from_feeds = load_calibration(feeds, INPUTS)
    assert len(from_dict) == len(from_feeds) == 3
    assert from_dict.dropped_samples == 0 and "dropped" not in from_dict.summary()
    for a, b in zip(from_dict, from_feeds):
        for name in INPUTS:
            np.testing.assert_array_equal(a[name], b[name])


def test_batches_are_read_only_and_do_not_alias_the_caller_data():
    data = _samples(4)
    calib = load_calibration(data, INPUTS)
    feed = next(iter(calib))
    with pytest.raises(ValueError, match="read-only"):
        feed["x"][0, 0, 0, 0] = 1.0
    data["x"][:] = 7.0
    assert not np.any(next(iter(calib))["x"] == 7.0)


def test_exactly_one_batch_is_enough():
    assert len(load_calibration(_samples(4), INPUTS)) == 1


def test_float64_is_cast_to_float32_and_float16_widened():
    data = _samples(4)
    data["x"] = data["x"].astype(np.float64)
    feed = next(iter(load_calibration(data, INPUTS)))
    assert feed["x"].dtype == np.float32
    half = load_calibration({"h": np.ones((2, 5), np.float16)}, {"h": (FLOAT32, (2, 5))})
    assert next(iter(half))["h"].dtype == np.float32
    narrow = load_calibration({"h": np.ones((2, 5), np.float32)}, {"h": (FLOAT16, (2, 5))})
    assert next(iter(narrow))["h"].dtype == np.float16


def test_integer_data_is_cast_when_it_fits():
    calib = load_calibration({"i": np.arange(6, dtype=np.int64).reshape(2, 3)},
                             {"i": (INT32, (2, 3))})
    assert next(iter(calib))["i"].dtype == np.int32


# -- errors ------------------------------------------------------------------------------------
def test_only_a_partial_batch_suggests_binding_a_smaller_batch():
    with pytest.raises(CalibrationError,
                       match=r"calib has 3 samples, fewer than one batch: input 'x' is bound to "
                             r"batch size 4; bind a smaller batch \(e\.g\. --input-shape "
                             r"x=3,1,8,8\)"):
        load_calibration(_samples(3), INPUTS)


def test_min_samples():
    with pytest.raises(CalibrationError, match=r"calib has 8 samples but at least 9 are needed"):
        load_calibration(_samples(8), INPUTS, min_samples=9)
    with pytest.raises(CalibrationError, match=r"min_samples = 0: expected an integer >= 1"):
        load_calibration(_samples(8), INPUTS, min_samples=0)


def test_missing_input_lists_the_expected_names():
    data = _samples(4)
    del data["ids"]
    with pytest.raises(CalibrationError,
                       match=r"calib is missing model input 'ids'; the model's inputs are: x, ids"):
        load_calibration(data, INPUTS)


def test_unknown_extra_input():
    data = _samples(4) | {"mask": np.ones((4, 3), np.float32)}
    with pytest.raises(CalibrationError,
                       match=r"calib has unknown input 'mask'; the model's inputs are: x, ids"):
        load_calibration(data, INPUTS)


def test_wrong_per_sample_shape():
    data = _samples(4) | {"x": np.zeros((4, 1, 28, 28), np.float32)}
    with pytest.raises(CalibrationError,
                       match=r"^calib input 'x' has per-sample shape \(1, 28, 28\) but the model "
                             r"expects \(1, 8, 8\)$"):
        load_calibration(data, INPUTS)


def test_wrong_rank_hints_at_the_missing_sample_axis():
    data = _samples(4) | {"x": np.zeros((1, 8, 8), np.float32)}
    with pytest.raises(CalibrationError,
                       match=r"calib input 'x' has rank 3 \(shape \(1, 8, 8\)\) but the model "
                             r"input has rank 4 .*add the sample axis"):
        load_calibration(data, INPUTS)
    data["x"] = np.zeros((4, 64), np.float32)
    with pytest.raises(CalibrationError, match=r"has rank 2 .*stack samples along axis 0"):
        load_calibration(data, INPUTS)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 1, 8, 8), np.int64),
     r"'x' has dtype int64 but the model input is float32; convert the data to float32"),
    (np.zeros((4, 1, 8, 8), np.bool_), r"'x' has dtype bool but the model input is float32"),
    (np.full((4, 1, 8, 8), "a"), r"'x' has dtype <U1, not numbers; the model expects float32"),
])
def test_wrong_dtype_for_float_input(bad, message):
    with pytest.raises(CalibrationError, match=message):
        load_calibration(_samples(4) | {"x": bad}, INPUTS)


def test_wrong_dtype_for_integer_input():
    with pytest.raises(CalibrationError,
                       match=r"'ids' has dtype float32 but the model input is int64"):
        load_calibration(_samples(4) | {"ids": np.zeros((4, 3), np.float32)}, INPUTS)
    with pytest.raises(CalibrationError, match=r"'i' has values outside int32"):
        load_calibration({"i": np.full((2, 3), 2**40, np.int64)}, {"i": (INT32, (2, 3))})


def test_float64_overflowing_float32_is_an_error():
    data = _samples(4)
    data["x"] = data["x"].astype(np.float64)
    data["x"][2, 0, 1, 1] = 1e300
    with pytest.raises(CalibrationError,
                       match=r"'x': float64 values overflow float32 \(first in sample 2\)"):
        load_calibration(data, INPUTS)


@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_name_the_input_and_first_bad_sample(value, what, dtype):
    data = _samples(8)
    data["x"] = data["x"].astype(dtype)
    data["x"][5, 0, 3, 3] = value
    data["x"][7, 0, 0, 0] = value
    with pytest.raises(CalibrationError,
                       match=rf"calib input 'x' has {what} values \(first in sample 5\)"):
        load_calibration(data, INPUTS)


def test_inconsistent_sample_counts():
    data = _samples(8) | {"ids": np.zeros((7, 3), np.int64)}
    with pytest.raises(CalibrationError,
                       match=r"calib inputs have different sample counts \(x has 8, ids has 7\)"):
        load_calibration(data, INPUTS)


def test_feed_errors_name_the_feed():
    good = _samples(4)
    with pytest.raises(CalibrationError, match=r"calib feed 1 is missing model input 'ids'"):
        load_calibration([good, {"x": good["x"]}], INPUTS)
    with pytest.raises(CalibrationError, match=r"calib feed 0 inputs have different sample "):
        load_calibration([good | {"ids": good["ids"][:2]}], INPUTS)
    with pytest.raises(CalibrationError, match=r"calib feed 0 is a list, not a dict"):
        load_calibration([[good["x"]]], INPUTS)
    with pytest.raises(CalibrationError, match=r"calib is an empty iterable of feeds"):
        load_calibration([], INPUTS)
    bad = _samples(4, seed=1)
    bad["x"][1, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match=r"calib feeds input 'x' has NaN .*sample 5\)"):
        load_calibration([good, bad], INPUTS)


def test_not_calibration_data():
    with pytest.raises(CalibrationError, match=r"calib of type int is not calibration data"):
        load_calibration(3, INPUTS)


def test_model_inputs_must_be_bound_to_one_batch_size():
    with pytest.raises(CalibrationError, match=r"'x' has shape \(-1, 3\) with unbound dim"):
        load_calibration({}, {"x": (FLOAT32, (-1, 3))})
    with pytest.raises(CalibrationError, match=r"different batch sizes \(a: 2, b: 4\)"):
        load_calibration({}, {"a": (FLOAT32, (2, 3)), "b": (FLOAT32, (4, 3))})
    with pytest.raises(CalibrationError, match=r"'s' is a scalar"):
        load_calibration({}, {"s": (FLOAT32, ())})


# -- unreadable files --------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CalibrationError, match=r"calib file '.*nope\.npz' does not exist"):
        load_calibration(tmp_path / "nope.npz", INPUTS)
    with pytest.raises(CalibrationError, match=r"is not a file"):
        load_calibration(tmp_path, INPUTS)


def test_not_a_zip(tmp_path):
    path = tmp_path / "calib.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(CalibrationError, match=r"is not an \.npz archive \(not a zip file\)"):
        load_calibration(path, INPUTS)
    npy = tmp_path / "x.npy"
    np.save(npy, _samples(4)["x"])
    with pytest.raises(CalibrationError, match=r"x\.npy' is not an \.npz archive"):
        load_calibration(str(npy), INPUTS)


def test_truncated_npz(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, **_samples(64))
    raw = path.read_bytes()
    # keep the central directory (so it still looks like a zip) but corrupt the member data
    path.write_bytes(raw[:200] + bytes(len(raw) - 400) + raw[-200:])
    with pytest.raises(CalibrationError, match=r"calib file '.*calib\.npz' (is unreadable|is not)"):
        load_calibration(path, INPUTS)


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), ids=np.zeros((1, 3)))
    with pytest.raises(CalibrationError, match=r"is unreadable \(ValueError: .*pickle"):
        load_calibration(path, INPUTS)


def test_non_array_member_is_refused(tmp_path):
    path = tmp_path / "calib.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CalibrationError, match=r"member 'notes\.txt' is not a \.npy array"):
        load_calibration(path, INPUTS)
