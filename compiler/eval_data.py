"""Labelled evaluation data (``--eval FILE.npz``) and top-1 accuracy over padded batches.

An eval file is a calibration file (one array per model input, samples on axis 0; checked by
:func:`~lowbit.compiler.calib_data.load_calibration`) plus an integer ``labels`` array with one
class index per sample. :func:`top1` runs a ``predict(feed) -> logits`` callable over every
sample in batches of the model's bound batch size -- the last batch zero-padded, the padding's
predictions ignored, so no sample is dropped -- and returns the percentage whose
``argmax(logits, -1)`` equals its label.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ..ir.errors import CalibrationError

LABELS = "labels"


@dataclass(frozen=True)
class EvalSet:
    """Model inputs ``arrays`` (name -> samples) and ``labels`` (one int per sample)."""

    arrays: Mapping[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def padded_batches(images: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(padded batch, number of real rows)`` over ``images``."""
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        real = len(chunk)
        if real < batch:
            pad = np.zeros((batch - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        yield np.ascontiguousarray(chunk), real


def load_eval(source, inputs) -> EvalSet:
    """An :class:`EvalSet` from an ``.npz`` path or a dict holding the model inputs and
    ``labels``; ``inputs`` as for :func:`~lowbit.compiler.calib_data.load_calibration`
    (``{name: (DType, bound shape)}``). One :class:`CalibrationError` line per problem."""
    from .calib_data import load_calibration

    where = f"eval file {str(source)!r}" if isinstance(source, (str, os.PathLike)) \
        else "eval data"
    if isinstance(source, (str, os.PathLike)):
        try:
            with np.load(source, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise CalibrationError(f"{where}: cannot read it as .npz ({err}); save it with "
                                   f"numpy.savez(path, <input>=images, labels=labels)") from None
    elif isinstance(source, Mapping):
        arrays = dict(source)
    else:
        raise CalibrationError(f"eval data of type {type(source).__name__}: pass an .npz path "
                               f"or a dict {{input name: samples, 'labels': labels}}")
    if LABELS not in arrays:
        raise CalibrationError(f"{where} has no 'labels' array (keys: {sorted(arrays)}); add "
                               f"one integer class index per sample")
    labels = np.asarray(arrays.pop(LABELS))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CalibrationError(f"{where}: 'labels' must be a 1-D integer array, got dtype "
                               f"{labels.dtype} shape {list(labels.shape)}")
    loaded = load_calibration(arrays, inputs)
    counts = {name: len(a) for name, a in loaded.arrays.items()}
    if any(n != len(labels) for n in counts.values()):
        raise CalibrationError(f"{where}: {len(labels)} labels but inputs hold {counts} "
                               f"samples; give one label per sample")
    return EvalSet(dict(loaded.arrays), labels)


def top1(predict: Callable[[dict[str, np.ndarray]], np.ndarray], data: EvalSet,
         batch: int) -> float:
    """Top-1 accuracy in percent of ``predict`` (feed dict -> logits of the batch) over
    ``data`` in zero-padded batches of ``batch`` (module docstring)."""
    names = list(data.arrays)
    iters = [padded_batches(data.arrays[n], batch) for n in names]
    correct = done = 0
    for parts in zip(*iters):
        real = parts[0][1]
        logits = np.asarray(predict({n: chunk for n, (chunk, _) in zip(names, parts)}))
        predicted = np.argmax(logits[:real], axis=-1)
        correct += int(np.sum(predicted == data.labels[done:done + real]))
        done += real
    return 100.0 * correct / len(data.labels)


__all__ = ["LABELS", "EvalSet", "load_eval", "padded_batches", "top1"]
