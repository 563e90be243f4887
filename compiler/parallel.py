"""Worker processes for the CPU-bound parts of planning (sensitivity, kernel compiles).

Rule: :func:`pmap` ``(fn, items, jobs)`` returns ``[fn(item) for item in items]`` in item order,
computed by ``min(jobs, len(items))`` *spawned* worker processes (``jobs <= 1``: in this
process, no pool). Each worker starts with one BLAS / OpenMP / TVM thread (``OMP_NUM_THREADS``
... set in the environment it is spawned with), so ``jobs`` workers keep ``jobs`` cores busy
without oversubscription; ``initializer(*initargs)`` runs once per worker (to build state the
tasks share, e.g. a model and its calibration data). ``fn``, the items, the initializer and
its arguments must be picklable (module-level functions; graphs pickle through their JSON
form). An exception in a task is re-raised here. Results do not depend on ``jobs``.

Workers never import the caller's ``__main__`` (it is hidden while they are spawned), so a
script that calls ``lowbit.plan(...)`` without an ``if __name__ == "__main__":`` guard is not
re-run by each worker; the price is that a task, or an object it receives, must not live in
``__main__`` (:func:`reaches_workers` tells; callers then stay in-process).

:func:`default_jobs`: ``$LOWBIT_JOBS`` when set, else the number of :func:`allowed_cpus`;
workers run on all of them (not on the one CPU TVM may have pinned the caller's thread to).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import types
from collections.abc import Callable, Iterable, Sequence

from ..ir.errors import LowbitError

#: environment of a worker: one thread per library, so workers do not oversubscribe the cores
WORKER_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "MKL_NUM_THREADS", "TVM_NUM_THREADS")}


def default_jobs() -> int:
    """``$LOWBIT_JOBS`` (an integer >= 1) or the number of CPUs this process may use."""
    raw = os.environ.get("LOWBIT_JOBS")
    if raw is not None:
        try:
            jobs = int(raw)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise LowbitError(f"LOWBIT_JOBS={raw!r} is not an integer >= 1; set it to the "
                              f"number of worker processes (1: no workers)")
        return jobs
    cpus = allowed_cpus()
    return max(1, len(cpus) if cpus is not None else (os.cpu_count() or 1))


def allowed_cpus() -> frozenset[int] | None:
    """The CPUs this process may use: those it had when lowbit was imported plus the current
    affinity (TVM pins a thread that configures its pool to one CPU); None off Linux."""
    from .. import START_CPUS

    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0)) | (START_CPUS or frozenset())


def _start_worker(cpus, initializer, initargs) -> None:
    """Worker start: run on every allowed CPU (a spawned process inherits the affinity of the
    thread that spawned it), then the caller's initializer."""
    if cpus is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    if initializer is not None:
        initializer(*initargs)


def resolve_jobs(jobs: int | None) -> int:
    """``jobs`` (None: :func:`default_jobs`), checked to be >= 1."""
    if jobs is None:
        return default_jobs()
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise LowbitError(f"jobs={jobs!r}: give the number of worker processes, an integer "
                          f">= 1 (1: work in this process)")
    return jobs


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Set ``values`` in ``os.environ`` for the block (a spawned child copies it)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def _hidden_main():
    """Replace ``sys.modules["__main__"]`` by a blank module for the block: a process spawned
    meanwhile then has no main module to import (multiprocessing's spawn imports it by path or
    name when it has one)."""
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = saved


def reaches_workers(obj) -> bool:
    """True when ``obj`` pickles without naming anything in ``__main__`` (workers do not import
    the caller's main module, module docstring)."""
    try:
        data = pickle.dumps(obj)
    except Exception:  # noqa: BLE001 (any failure means: it cannot be sent)
        return False
    return b"__main__" not in data


def pmap(fn: Callable, items: Iterable, jobs: int = 1, *, initializer: Callable | None = None,
         initargs: Sequence = (), on_done: Callable | None = None) -> list:
    """``[fn(item) for item in items]`` on ``jobs`` worker processes (module docstring).
    ``on_done(index, result)`` is called in this process as each task finishes (any order)."""
    items = list(items)
    workers = min(resolve_jobs(jobs), len(items))
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if on_done is not None:
                on_done(i, out[-1])
        return out

    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    results: list = [None] * len(items)
    context = multiprocessing.get_context("spawn")
    with _environment(WORKER_ENV), _hidden_main():
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=(allowed_cpus(), initializer, tuple(initargs)))
        # workers are spawned as tasks are submitted, all while WORKER_ENV is set
        pending = {pool.submit(fn, item): i for i, item in enumerate(items)}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                results[i] = future.result()
                if on_done is not None:
                    on_done(i, results[i])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


__all__ = ["WORKER_ENV", "allowed_cpus", "default_jobs", "pmap", "reaches_workers", "resolve_jobs"]
