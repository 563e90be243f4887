"""Shared checks of the pass tests: golden numerics, printed-IR comparison, honest ``changed``."""

from __future__ import annotations

import numpy as np
import pytest
from lowbit.ir import verify
from lowbit.runtime.reference import run_reference


def _feeds(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.shape).astype(v.dtype.numpy) for v in graph.inputs}


def _ir_lines(text: str) -> list[str]:
    """Node/input/output lines of a printed graph (header and summary dropped), dedented; a
    trailing backslash continues a line (to keep expected IR within 100 columns)."""
    text = text.replace("\\\n", "")
    lines = [" ".join(ln.split()) for ln in text.strip().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith(("graph ", "summary:"))]


@pytest.fixture
def apply_pass():
    """``apply_pass(pass_, graph, expected=None)``: run the pass with contract checks, verify,
    compare the printed IR to ``expected`` (when given), check the outputs stay equal within
    1e-5 relative, and check that a second run reports ``changed=False``. Returns the result."""

    def run(pass_, graph, expected: str | None = None, rtol: float = 1e-5, atol: float = 1e-6):
        feeds = _feeds(graph)
        before = run_reference(graph, feeds)
        result = pass_(graph, check=True)
        verify(result.graph)
        if expected is not None:
            assert _ir_lines(str(result.graph)) == _ir_lines(expected)
        after = run_reference(result.graph, feeds)
        assert list(after) == list(before)
        for name in before:
            np.testing.assert_allclose(after[name], before[name], rtol=rtol, atol=atol)
        again = pass_(result.graph, check=True)
        assert again.changed is False, "second run must report no change"
        return result

    return run


@pytest.fixture
def ir_lines():
    return _ir_lines
