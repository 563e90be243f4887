"""lowbit.compiler.bench helpers: interleaved timing."""

from __future__ import annotations

import pytest
from lowbit.compiler.bench import measure_interleaved
from lowbit.ir.errors import ExecutionError


def test_interleaved_rounds_call_every_contender_in_turn():
    calls = []
    fns = [lambda n=name: calls.append(n) for name in "abc"]
    timings = measure_interleaved(fns, repeat=3, warmup=2)
    assert calls == list("aabbcc") + list("abc") * 3  # warm-ups per contender, then rounds
    assert [t.repeat for t in timings] == [3, 3, 3]
    assert all(0 <= t.min <= t.median <= t.max for t in timings)


def test_interleaved_timing_needs_a_round():
    with pytest.raises(ExecutionError, match="at least one run"):
        measure_interleaved([lambda: None], repeat=0)
