"""Calibration data: load, check and batch the sample inputs that calibration runs on (``--calib``).

:func:`load_calibration` accepts

* a path to an ``.npz`` file holding one array per model input name, samples stacked on axis 0
  (``numpy.savez(path, x=samples)``),
* a dict ``{input name: array}`` in the same layout,
* an iterable of feed dicts, each already one batch (``{input name: array}``, batch on axis 0);
  the feeds are concatenated in order and re-batched like the other two.

and checks every array against the model's bound inputs ``{name: (DType, bound shape)}``: the
names match exactly, the rank and the per-sample shape (``shape[1:]``) match, the dtype fits,
every float value is finite, and every input has the same number of samples. Dtype rule: data
of the input's exact dtype is taken as is; float data of another width (float64 into a
float32 input, say) is cast to the input's width, rounding to nearest, and a value that
overflows the narrower type is an error; integer data into an integer input is cast when every
value fits the input's type; integers or bools into a float input (and floats into an integer
input) are errors, never silent casts.

A :class:`CalibrationSet` yields feed dicts of exactly the bound batch size ``shape[0]``, in
sample order, with keys in the order of ``inputs``. A last partial batch is dropped (it would not
fit the bound shapes); :attr:`CalibrationSet.dropped_samples` and :meth:`CalibrationSet.summary`
report it. Fewer samples than one batch is an error that suggests binding a smaller batch.
Every problem is one :class:`~lowbit.ir.errors.CalibrationError` line naming the input.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir.dtypes import DType
from ..ir.errors import CalibrationError


@dataclass(frozen=True, slots=True, eq=False)
class CalibrationSet:
    """Checked calibration samples: ``arrays[name]`` has shape ``(num_samples, *per_sample)``
    (read-only, keys in the model's input order). ``len()`` is the number of full batches of
    ``batch_size``; iterating yields one feed dict per batch, the same every time."""

    arrays: dict[str, np.ndarray]
    batch_size: int
    num_samples: int

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(self)):
            start = index * self.batch_size
            yield {name: array[start:start + self.batch_size]
                   for name, array in self.arrays.items()}

    @property
    def dropped_samples(self) -> int:
        """Samples in the last, partial batch, which iteration leaves out."""
        return self.num_samples % self.batch_size

    def summary(self) -> str:
        """One line for the user, e.g. ``70 samples -> 4 batches of 16 (last 6 dropped: a
        partial batch does not fit the bound shapes)``."""
        text = f"{self.num_samples} samples -> {len(self)} batches of {self.batch_size}"
        if self.dropped_samples:
            text += (f" (last {self.dropped_samples} dropped: a partial batch does not fit the "
                     f"bound shapes)")
        return text


def load_calibration(calib, inputs: Mapping[str, tuple[DType, tuple[int, ...]]],
                     min_samples: int = 1) -> CalibrationSet:
    """Load and check calibration samples (rules in the module docstring).

    ``calib``: a ``.npz`` path, a dict of stacked arrays, or an iterable of feed dicts.
    ``inputs``: the model's bound graph inputs, ``name -> (DType, bound shape)``; every bound
    batch size ``shape[0]`` must be the same. ``min_samples``: fewer samples is an error.
    """
    batch_size = _batch_size(inputs)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise CalibrationError(f"min_samples = {min_samples!r}: expected an integer >= 1")
    if isinstance(calib, (str, os.PathLike)):
        source = f"calib file {str(calib)!r}"
        arrays = _check_feed(_read_npz(Path(calib)), inputs, source)
    elif isinstance(calib, Mapping):
        source = "calib"
        arrays = _check_feed(calib, inputs, source)
    elif isinstance(calib, Iterable) and not isinstance(calib, (bytes, np.ndarray)):
        source = "calib feeds"  # sample indices below count across the feeds, in order
        arrays = _concat_feeds(calib, inputs)
    else:
        raise CalibrationError(
            f"calib of type {type(calib).__name__} is not calibration data; pass a .npz path, "
            f"a dict {{input name: samples}} or an iterable of feed dicts")
    num_samples = _sample_count(arrays, source)
    for name, array in arrays.items():
        _check_finite(name, array, source)
    if num_samples < min_samples:
        raise CalibrationError(
            f"{source} has {num_samples} samples but at least {min_samples} are needed; "
            f"give more calibration samples")
    if num_samples < batch_size:
        name, (_, shape) = next(iter(inputs.items()))
        smaller = ",".join(str(d) for d in (num_samples,) + tuple(shape[1:]))
        raise CalibrationError(
            f"{source} has {num_samples} samples, fewer than one batch: input {name!r} is bound "
            f"to batch size {batch_size}; bind a smaller batch (e.g. --input-shape "
            f"{name}={smaller}) or give at least {batch_size} samples")
    for array in arrays.values():
        array.setflags(write=False)
    return CalibrationSet(arrays, batch_size, num_samples)


def _batch_size(inputs: Mapping[str, tuple[DType, tuple[int, ...]]]) -> int:
    """The one bound batch size ``shape[0]`` shared by every input."""
    if not inputs:
        raise CalibrationError("the model has no graph inputs to calibrate")
    sizes = {}
    for name, (dtype, shape) in inputs.items():
        assert isinstance(dtype, DType), f"input {name!r}: expected a DType, got {dtype!r}"
        if len(shape) == 0:
            raise CalibrationError(
                f"model input {name!r} is a scalar; calibration stacks samples along a batch "
                f"axis, so every input needs rank >= 1")
        if not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
            raise CalibrationError(
                f"model input {name!r} has shape {tuple(shape)} with unbound dimensions; bind "
                f"every dimension (--input-shape {name}=D0,D1,...) before calibrating")
        sizes[name] = int(shape[0])
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{n}: {b}" for n, b in sizes.items())
        raise CalibrationError(
            f"model inputs are bound to different batch sizes ({listed}); bind them to one "
            f"batch size to calibrate")
    return next(iter(sizes.values()))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, in file order; no pickles."""
    if not path.exists():
        raise CalibrationError(f"calib file {str(path)!r} does not exist")
    if not path.is_file():
        raise CalibrationError(f"calib file {str(path)!r} is not a file")
    if not zipfile.is_zipfile(path):
        raise CalibrationError(
            f"calib file {str(path)!r} is not an .npz archive (not a zip file); write it with "
            f"numpy.savez(path, input_name=samples)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise CalibrationError(
            f"calib file {str(path)!r} is unreadable ({type(exc).__name__}: {exc}); write it "
            f"with numpy.savez(path, input_name=samples)") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise CalibrationError(
                f"calib file {str(path)!r} member {key!r} is not a .npy array; write the file "
                f"with numpy.savez(path, input_name=samples)")
    return arrays


def _check_feed(feed, inputs, source: str) -> dict[str, np.ndarray]:
    """Names, rank, per-sample shape and dtype of one ``{name: stacked samples}`` mapping;
    returns the arrays converted to the inputs' dtypes, in the inputs' order."""
    if not isinstance(feed, Mapping):
        raise CalibrationError(
            f"{source} is a {type(feed).__name__}, not a dict {{input name: array}}")
    expected = ", ".join(inputs)
    for name in feed:
        if name not in inputs:
            raise CalibrationError(
                f"{source} has unknown input {name!r}; the model's inputs are: {expected}")
    for name in inputs:
        if name not in feed:
            raise CalibrationError(
                f"{source} is missing model input {name!r}; the model's inputs are: {expected}")
    return {name: _check_array(name, feed[name], dtype, tuple(shape), source)
            for name, (dtype, shape) in inputs.items()}


def _check_array(name: str, value, dtype: DType, shape: tuple[int, ...],
                 source: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise CalibrationError(
            f"{source} input {name!r} has dtype {array.dtype}, not numbers; the model expects "
            f"{dtype}")
    per_sample = tuple(int(d) for d in shape[1:])
    if array.ndim != len(shape):
        hint = ("; add the sample axis (x[None]) for a single sample"
                if array.shape == per_sample else "; stack samples along axis 0")
        raise CalibrationError(
            f"{source} input {name!r} has rank {array.ndim} (shape {array.shape}) but the model "
            f"input has rank {len(shape)} (bound shape {tuple(shape)}){hint}")
    if array.shape[1:] != per_sample:
        raise CalibrationError(
            f"{source} input {name!r} has per-sample shape {array.shape[1:]} but the model "
            f"expects {per_sample}")
    return _convert(name, array, dtype, source)


def _convert(name: str, array: np.ndarray, dtype: DType, source: str) -> np.ndarray:
    """Apply the dtype rule of the module docstring."""
    kind = array.dtype.kind
    if array.dtype == dtype.numpy:
        return np.array(array, copy=True)
    refuse = CalibrationError(
        f"{source} input {name!r} has dtype {array.dtype} but the model input is {dtype}; "
        f"convert the data to {dtype.numpy} (no silent {array.dtype} -> {dtype} cast)")
    if dtype.is_float:
        if kind != "f":
            raise refuse
        _check_finite(name, array, source)
        with np.errstate(over="ignore"):
            cast = array.astype(dtype.numpy)
        overflow = np.isinf(cast).reshape(len(cast), -1).any(axis=1)
        if overflow.any():
            raise CalibrationError(
                f"{source} input {name!r}: {array.dtype} values overflow {dtype} (first in "
                f"sample {int(np.argmax(overflow))}); rescale the data")
        return cast
    if dtype.is_integer and kind in "iu":
        if not dtype.can_represent(array):
            raise CalibrationError(
                f"{source} input {name!r} has values outside {dtype} "
                f"[{dtype.min}, {dtype.max}]; fix the data")
        return array.astype(dtype.numpy)
    raise refuse


def _check_finite(name: str, array: np.ndarray, source: str = "calib") -> None:
    """NaN or Inf anywhere in a float input is an error naming the first bad sample."""
    if array.dtype.kind != "f" or array.size == 0:
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = ~finite.reshape(len(array), -1).all(axis=1)
    sample = int(np.argmax(bad))
    what = "NaN" if np.isnan(array[sample]).any() else "Inf"
    raise CalibrationError(
        f"{source} input {name!r} has {what} values (first in sample {sample}); calibration "
        f"needs finite data")


def _sample_count(arrays: Mapping[str, np.ndarray], source: str) -> int:
    counts = {name: len(array) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n} has {c}" for n, c in counts.items())
        raise CalibrationError(
            f"{source} inputs have different sample counts ({listed}); every input needs one "
            f"row per sample")
    return next(iter(counts.values()))


def _concat_feeds(feeds: Iterable, inputs) -> dict[str, np.ndarray]:
    """Check each feed (naming its index) and stack them in order along the sample axis."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    for index, feed in enumerate(feeds):
        source = f"calib feed {index}"
        arrays = _check_feed(feed, inputs, source)
        _sample_count(arrays, source)
        for name, array in arrays.items():
            parts[name].append(array)
    if not parts[next(iter(inputs))]:
        raise CalibrationError(
            "calib is an empty iterable of feeds; give at least one batch of samples")
    return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}
