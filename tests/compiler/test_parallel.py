"""lowbit.compiler.parallel: pmap order, errors, worker environment, no __main__ re-import."""

import os
import subprocess
import sys
import textwrap

import pytest
from lowbit.compiler.parallel import WORKER_ENV, default_jobs, pmap, reaches_workers, resolve_jobs
from lowbit.ir.errors import LowbitError


def _square(x):
    return x * x


def _env(_):
    return {name: os.environ.get(name) for name in WORKER_ENV}, os.getpid()


def _fail(x):
    if x == 2:
        raise ValueError("task 2 failed")
    return x


_STATE = {}


def _init(value):
    _STATE["value"] = value


def _read_state(x):
    return _STATE["value"] + x


def test_in_process_when_one_job():
    done = []
    assert pmap(_square, range(5), 1, on_done=lambda i, r: done.append((i, r))) == \
        [0, 1, 4, 9, 16]
    assert done == [(i, i * i) for i in range(5)]
    assert pmap(_read_state, [1, 2], 1, initializer=_init, initargs=(10,)) == [11, 12]


def test_workers_keep_item_order_and_run_the_initializer():
    done = {}
    out = pmap(_read_state, range(8), 2, initializer=_init, initargs=(100,),
               on_done=lambda i, r: done.__setitem__(i, r))
    assert out == [100 + i for i in range(8)]
    assert done == dict(enumerate(out))


def test_workers_run_one_thread_each_and_the_caller_env_is_restored():
    before = {name: os.environ.get(name) for name in WORKER_ENV}
    results = pmap(_env, range(4), 2)
    assert all(env == WORKER_ENV for env, _ in results)
    assert all(pid != os.getpid() for _, pid in results)
    assert {name: os.environ.get(name) for name in WORKER_ENV} == before


def test_a_task_error_is_raised_here():
    with pytest.raises(ValueError, match="task 2 failed"):
        pmap(_fail, range(4), 2)
    with pytest.raises(ValueError, match="task 2 failed"):
        pmap(_fail, range(4), 1)


def test_jobs_are_checked(monkeypatch):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(LowbitError, match="jobs="):
            resolve_jobs(bad)
    monkeypatch.setenv("LOWBIT_JOBS", "3")
    assert default_jobs() == resolve_jobs(None) == 3
    monkeypatch.setenv("LOWBIT_JOBS", "zero")
    with pytest.raises(LowbitError, match="LOWBIT_JOBS='zero'"):
        default_jobs()
    monkeypatch.delenv("LOWBIT_JOBS")
    assert default_jobs() >= 1


def test_reaches_workers():
    assert reaches_workers(_square) and reaches_workers({"a": 1})
    assert not reaches_workers(lambda x: x)

    def local(x):
        return x

    assert not reaches_workers(local)


def test_an_unguarded_script_is_not_rerun_by_the_workers(tmp_path):
    """A script without ``if __name__ == "__main__":`` that uses workers runs once."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        from lowbit.compiler.parallel import pmap
        print("script body ran", flush=True)
        print(pmap(abs, [-1, -2, -3, -4], 2), flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("script body ran") == 1
    assert "[1, 2, 3, 4]" in proc.stdout


def _affinity(_):
    return sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux affinity API")
def test_workers_use_every_cpu_even_when_the_caller_is_pinned():
    """TVM's thread pool pins the configuring thread to one CPU; workers must not inherit it."""
    from lowbit.compiler.parallel import allowed_cpus

    every = sorted(allowed_cpus())
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {every[0]})
    try:
        assert default_jobs() == len(every)
        results = pmap(_affinity, range(4), 2)
    finally:
        os.sched_setaffinity(0, before)
    assert all(cpus == every for cpus in results)
