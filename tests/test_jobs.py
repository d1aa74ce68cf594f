"""The job runner alone (QtCore only): progress, results, errors, cancel and refusal."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from polyprune.errors import PolypruneError  # noqa: E402
from polyprune.jobs import JobRunner, describe_error  # noqa: E402


def _wait_done(qtbot, runner, timeout=10000):
    qtbot.waitUntil(lambda: not runner.active_jobs(), timeout=timeout)


def test_progress_and_finished_in_gui_thread(qtbot):
    runner = JobRunner(min_interval=0.0)
    seen, threads, results = [], [], []

    def fn(progress):
        threads.append(threading.current_thread())
        for i in range(5):
            progress.update(i + 1, 5, f"step {i + 1}")
            time.sleep(0.02)
        return 42

    def on_finished(value):
        threads.append(threading.current_thread())
        results.append(value)

    job = runner.start("Counting", fn, on_finished=on_finished, on_progress=lambda f, m: seen.append((f, m)))
    assert job is not None and job.is_running()
    assert runner.busy and runner.current is job
    _wait_done(qtbot, runner)
    assert results == [42] and job.status == "finished" and job.result == 42
    assert threads[0] is not threading.main_thread()  # the function ran in the worker thread
    assert threads[1] is threading.main_thread()  # the callback ran in the GUI thread
    assert seen and seen[-1] == (1.0, "step 5")
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs)
    assert not runner.busy
    assert job.seconds is not None and job.seconds > 0


def test_progress_is_throttled(qtbot):
    runner = JobRunner(min_interval=0.05)
    seen = []

    def fn(progress):
        for i in range(200000):
            progress.update(i, 200000, "fast loop")
        progress.update(1, 1, "done")

    job = runner.start("Fast", fn, on_progress=lambda f, m: seen.append(f))
    with qtbot.waitSignal(job.done, timeout=20000):
        pass
    assert seen[-1] == 1.0  # the final update always arrives
    elapsed = job.seconds or 1.0
    assert len(seen) <= elapsed / 0.05 + 3  # at most ~20 per second


def test_failed_with_problem_and_fix(qtbot):
    runner = JobRunner()
    errors = []

    def fn(progress):
        raise PolypruneError("The folder /x has no config.json", "point to a model folder")

    runner.failed.connect(lambda name, p, f, tb: errors.append((name, p, f, tb)))
    job = runner.start("Loading", fn)
    _wait_done(qtbot, runner)
    assert job.status == "failed"
    name, problem, fix, tb = errors[0]
    assert (name, problem, fix) == ("Loading", "The folder /x has no config.json", "point to a model folder")
    assert "PolypruneError" in tb
    assert not runner.busy


def test_failed_with_other_exception(qtbot):
    runner = JobRunner()

    def fn(progress):
        raise ValueError("bad shape [3, 4]")

    job = runner.start("Measuring", fn)
    _wait_done(qtbot, runner)
    problem, fix, tb = job.error
    assert problem == "ValueError: bad shape [3, 4]"
    assert fix and "Traceback" in tb and "ValueError" in tb
    assert describe_error(MemoryError("x"))[0].startswith("Out of memory")


def test_cancel_is_cooperative(qtbot):
    runner = JobRunner()
    started = threading.Event()
    cancelled = []

    def fn(progress):
        started.set()
        while True:
            progress.check()
            time.sleep(0.005)

    job = runner.start("Pruning", fn, on_cancelled=lambda: cancelled.append(True))
    assert started.wait(5)
    assert runner.cancel() is True
    assert job.cancel_requested
    _wait_done(qtbot, runner)
    assert cancelled == [True] and job.status == "cancelled"
    assert runner.cancel() is False  # nothing runs any more


def test_second_model_job_is_refused(qtbot):
    runner = JobRunner()
    gate = threading.Event()
    refused, busy = [], []
    runner.refused.connect(lambda p, f: refused.append((p, f)))
    runner.busy_changed.connect(lambda b, n: busy.append((b, n)))
    first = runner.start("Pruning", lambda p: gate.wait(10))
    second = runner.start("Measuring features", lambda p: 1)
    assert first is not None and second is None
    assert refused[0][0] == "A job is running: Pruning"
    assert "cancel" in refused[0][1]
    light = runner.start("Preview", lambda p: "ok", model_changing=False)  # light jobs may run beside it
    assert light is not None
    with qtbot.waitSignal(runner.idle, timeout=10000):
        gate.set()
    assert busy == [(True, "Pruning"), (False, "Pruning")]
    assert light.result == "ok"
    assert runner.start("Measuring features", lambda p: 1) is not None  # free again
    _wait_done(qtbot, runner)


def test_wait_blocks_until_threads_stop(qtbot):
    runner = JobRunner()
    runner.start("Sleeping", lambda p: time.sleep(0.2))
    t0 = time.perf_counter()
    assert runner.wait(5000)
    assert time.perf_counter() - t0 >= 0.1
    _wait_done(qtbot, runner)
    assert runner.wait(10)


def test_signal_emit_keeps_reference_counts(qtbot):
    """The Qt binding must not drop references on emit: PySide6 6.12.0 released ``True`` once per
    ``Signal.emit()`` (-100 after 100 emits on Python 3.11), and a session of progress signals then
    aborted the whole application ("bool_dealloc"). pyproject.toml keeps such versions out."""
    import sys

    from PySide6.QtCore import QObject, Signal

    class Emitter(QObject):
        changed = Signal(object)

    e, got = Emitter(), []
    e.changed.connect(got.append)
    before = sys.getrefcount(True)
    for i in range(200):
        e.changed.emit(i)
    assert got == list(range(200))
    # other code may take or drop a few references meanwhile; the bug drops one per emit (200)
    assert sys.getrefcount(True) > before - 50
