"""A faster float simulator for analyses that run one graph many times (layer sensitivity).

:class:`FastFakeQuantInterpreter` is :class:`~lowbit.passes.calibrate.FakeQuantInterpreter`
with every float32 1-D / 2-D ``Conv`` computed by torch's convolution on one thread (oneDNN or
torch's own kernel; no im2col copy; 2-D convs channels-last, their results NCHW arrays with
channels-last strides) and float32 ``Relu`` on torch: the same formula as the reference kernel,
``y[n, m, p] = Σ_(c, k) w[m, c, k] · x_pad[n, g·Cg + c, p·stride + k·dilation] + b[m]``, with the
float32 products summed in another order -- results agree with the numpy reference to about
1e-6 relative, not bitwise. It is a measuring instrument, never the oracle: tests and the
integer simulator keep :mod:`lowbit.runtime.reference`.

:func:`rebatched` makes the batch-``N`` copy of a graph (graph inputs re-bound to the stacked
calibration batches, Reshape targets that name the batch re-targeted, every shape
re-inferred) so that several calibration batches run as one:
fewer, larger convolutions. The caller checks the copy against per-batch runs
(:func:`same_outputs`) because a graph with a batch size baked into a Reshape computes
something else at another batch.
"""

from __future__ import annotations

import importlib.util
import warnings
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from ...ir import Graph, Op
from ...ir.errors import LowbitError
from ..calibrate import FakeQuantInterpreter
from ..infer_shapes import InferShapes

#: what a graph run at another batch size may raise when it does not support it
REBATCH_ERRORS = (LowbitError, ValueError, IndexError, ArithmeticError, RuntimeError)


def has_torch() -> bool:
    """True when torch can be imported (it is the optional ``[ptq]`` extra)."""
    return importlib.util.find_spec("torch") is not None


class FastFakeQuantInterpreter(FakeQuantInterpreter):
    """The fake-quant simulator with float32 1-D / 2-D convolutions on torch (module
    docstring); without torch it is the plain simulator. Run it inside
    :func:`one_torch_thread` for results that do not depend on the process's thread count."""

    def __init__(self, graph: Graph):
        super().__init__(graph)
        self._torch = has_torch()

    def run_node(self, node, inputs):
        if self._torch and node.op == Op.CONV and _torch_conv_applies(inputs):
            return [_torch_conv(node, inputs)]
        if self._torch and node.op == Op.RELU and inputs[0].dtype == np.float32:
            return [_torch_relu(inputs[0])]
        return super().run_node(node, inputs)


def _torch_conv_applies(inputs) -> bool:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    return (x.dtype == np.float32 and w.dtype == np.float32 and w.ndim in (3, 4)
            and (bias is None or bias.dtype == np.float32))


def _as_tensor(x: np.ndarray):
    """A torch view of ``x`` (any positive strides, e.g. a channels-last result), else a
    contiguous copy."""
    import torch

    if x.ndim and not all(stride > 0 for stride in x.strides):
        x = np.ascontiguousarray(x)
    return torch.from_numpy(x)


#: channels-last torch copies of recent conv weights, by the id of their (kept) numpy array
_WEIGHTS: dict[int, tuple[np.ndarray, object]] = {}
_WEIGHTS_KEPT = 256


def _channels_last_weight(w: np.ndarray):
    """``w`` as a channels-last torch tensor, made once per weight array: a sensitivity pass
    runs each float conv of the model a few thousand times with the same weights. The entry
    holds the array, so its id cannot be reused while cached; the cache is dropped whole when
    full, and only read-only arrays (graph constants) are cached."""
    import torch

    entry = _WEIGHTS.get(id(w))
    if entry is not None and entry[0] is w:
        return entry[1]
    wt = torch.from_numpy(np.ascontiguousarray(w)).contiguous(memory_format=torch.channels_last)
    if not w.flags.writeable:
        if len(_WEIGHTS) >= _WEIGHTS_KEPT:
            _WEIGHTS.clear()
        _WEIGHTS[id(w)] = (w, wt)
    return wt


def _torch_conv(node, inputs) -> np.ndarray:
    """The conv on torch. 2-D convs run channels-last (oneDNN's fast layout on CPU, up to
    2.6x on a 16-channel 64x64 map) and return the channels-last result as an NCHW array
    with permuted strides, which the next conv reads without a copy."""
    import torch
    import torch.nn.functional as F

    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    attrs = node.attrs
    nd = w.ndim - 2
    begins, ends = tuple(attrs.pads[:nd]), tuple(attrs.pads[nd:])
    conv = F.conv2d if nd == 2 else F.conv1d
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays: conv never writes
        xt = _as_tensor(x)
        if nd == 2:
            xt = xt.contiguous(memory_format=torch.channels_last)
            wt = _channels_last_weight(w)
        else:
            xt, wt = xt.contiguous(), torch.from_numpy(np.ascontiguousarray(w))
        if begins == ends:
            padding = begins
        else:  # F.pad lists the last axis first: (left, right, top, bottom)
            order = [p for axis in reversed(range(nd)) for p in (begins[axis], ends[axis])]
            xt, padding = F.pad(xt, order), (0,) * nd
        y = conv(xt, wt, None if bias is None else torch.from_numpy(np.ascontiguousarray(bias)),
                 tuple(attrs.strides), padding, tuple(attrs.dilations), attrs.group)
    return y.numpy()


def _torch_relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) on torch, keeping ``x``'s memory layout (NaN stays NaN)."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.relu(_as_tensor(x)).numpy()


@contextmanager
def one_torch_thread():
    """Run the block with torch on one thread (restored after); nothing without torch."""
    if not has_torch():
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stack_feeds(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The feeds concatenated along axis 0, or None when they do not line up (different
    names, ranks or per-sample shapes, or a 0-d input)."""
    if len(feeds) < 2:
        return None
    names = list(feeds[0])
    out = {}
    for name in names:
        arrays = [feed.get(name) for feed in feeds]
        if any(a is None or a.ndim == 0 or a.shape != arrays[0].shape for a in arrays):
            return None
        out[name] = np.concatenate(arrays, axis=0)
    if any(set(feed) != set(names) for feed in feeds):
        return None
    return out


def rebatched(graph: Graph, stacked: dict[str, np.ndarray]) -> Graph | None:
    """A copy of ``graph`` whose inputs take ``stacked`` (shapes re-inferred), or None when a
    shape rule rejects the new batch."""
    copy = graph.copy()
    old = {v.shape[0] for v in copy.inputs if v.shape}
    for value in copy.inputs:
        if value.name not in stacked or not value.shape:
            return None
        value.shape = tuple(stacked[value.name].shape)
    new = {v.shape[0] for v in copy.inputs}
    if len(old) == 1 and len(new) == 1:
        _rebatch_reshapes(copy, old.pop(), new.pop())
    try:
        InferShapes()(copy)
    except REBATCH_ERRORS:
        return None
    return copy


def _rebatch_reshapes(graph: Graph, old: int, new: int) -> None:
    """Exporters bake the batch into Reshape targets (``Flatten`` as ``Reshape(x, [16, 64])``):
    a target whose first entry is ``old`` on an input whose first dim is ``old`` gets ``new``
    there. A guess, checked by the caller's comparison of outputs."""
    for node in graph.nodes:
        if node.op != Op.RESHAPE:
            continue
        x, shape = node.inputs[0], tuple(node.attrs.shape)
        if x.shape and shape and x.shape[0] == old and shape[0] == old:
            node.attrs = replace(node.attrs, shape=(new,) + shape[1:])


def same_outputs(batched: dict[str, np.ndarray], parts: list[dict[str, np.ndarray]],
                 rtol: float = 1e-4) -> bool:
    """True when ``batched`` holds each output of ``parts`` concatenated along axis 0, to
    ``rtol`` of each output's largest magnitude."""
    for name, array in batched.items():
        pieces = [p.get(name) for p in parts]
        if any(p is None or p.ndim == 0 for p in pieces):
            return False
        want = np.concatenate(pieces, axis=0)
        if array.shape != want.shape:
            return False
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        if not np.allclose(array, want, rtol=rtol, atol=rtol * scale + 1e-30):
            return False
    return set(batched) == set(parts[0])
