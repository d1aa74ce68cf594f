"""Background jobs for the desktop application: one plain function per job, run in a ``QThread``.

A *job* runs ``fn(progress) -> result`` where ``progress`` is a :class:`polyprune.progress.Progress`
(the core's throttled progress sink with a cooperative cancel flag). The function runs in a worker
thread; everything the job reports reaches the GUI thread through queued Qt signals, so slots and
plain callables connected to a :class:`Job` or the :class:`JobRunner` always run in the GUI thread.

* progress is throttled once, by the core ``Progress`` (20 Hz by default), so a fast loop can
  never flood the event queue; the last update of a stage is always delivered; a job's progress
  goes to that job's own ``progress`` signal (and, for the model-changing job, to the runner's);
* cancel is cooperative: :meth:`Job.cancel` sets the ``Progress`` flag and the core function stops
  at its next ``progress.check()`` (pruning then restores every weight before it stops);
* errors are split for the user: a :class:`~polyprune.errors.PolypruneError` gives its ``problem``
  and ``fix``; any other exception gives its type and message, with the traceback for the log;
* :class:`JobRunner` allows one *model-changing* job at a time (anything that reads or writes the
  model: loading, measuring, pruning, evaluating, exporting) and refuses a second one with a
  message naming the running job. Light jobs (``model_changing=False``, e.g. a prompt preview)
  may run beside it.

The idea follows superqt's ``thread_worker`` but is written here with QtCore only (no widgets),
so it can be tested and used without a display.
"""
from __future__ import annotations

import time
import traceback
import warnings
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, QThread, QTimer, Signal, Slot

from .errors import Cancelled, PolypruneError
from .progress import Progress

__all__ = ["Job", "JobRunner", "describe_error"]

JobFunction = Callable[[Progress], Any]


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(problem, fix)`` for any exception, worded for a dialog.

    A :class:`PolypruneError` carries both; other exceptions become ``"TypeName: message"`` with a
    generic fix (the traceback goes to the log).
    """
    if isinstance(exc, PolypruneError):
        return exc.problem, exc.fix or ""
    msg = str(exc).strip() or repr(exc)
    if isinstance(exc, MemoryError):
        return ("Out of memory: " + msg,
                "use fewer samples, a shorter calibration length or a smaller batch size")
    return (f"{type(exc).__name__}: {msg}",
            "this looks like a bug or an unsupported model; the log has the details (please report them)")


class _Worker(QObject):
    """Runs the job function in the worker thread and reports through signals (queued to the GUI)."""

    progress = Signal(float, str)
    finished = Signal(object)
    failed = Signal(str, str, str)
    cancelled = Signal()
    done = Signal()

    def __init__(self, fn: JobFunction, prog: Progress):
        super().__init__()
        self._fn = fn
        self._prog = prog

    def _report(self, fraction: float, message: str) -> None:
        # Progress already throttles (its min_interval); this only crosses into the GUI thread.
        self.progress.emit(float(fraction), str(message))

    @Slot()
    def run(self) -> None:
        """Run the job function and report how it ended (in the worker thread)."""
        self._prog.callback = self._report
        try:
            result = self._fn(self._prog)
        except Cancelled:
            self.cancelled.emit()
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, never raised into Qt
            problem, fix = describe_error(exc)
            self.failed.emit(problem, fix, traceback.format_exc())
        else:
            # A function that returns normally after cancel was asked for had no check point
            # left: its work is complete, so it is reported as finished.
            self.finished.emit(result)
        finally:
            self._fn = None  # drop references to models and tensors held by the closure
            self.done.emit()


class Job(QObject):
    """One background job. Its signals are emitted in the GUI thread.

    Signals:
        progress(fraction, message): throttled progress, ``fraction`` in [0, 1].
        finished(result): the function returned ``result``.
        failed(problem, fix, traceback): the function raised; see :func:`describe_error`.
        cancelled(): the function stopped at a check point after :meth:`cancel`.
        done(): after any of the three above, once the thread has stopped.

    Attributes:
        name: what the job does, for messages ("Pruning").
        model_changing: whether the job holds the model exclusively (see :class:`JobRunner`).
        status: ``"pending"``, ``"running"``, ``"finished"``, ``"failed"`` or ``"cancelled"``.
        result: the function's return value once finished.
        error: ``(problem, fix, traceback)`` once failed.
    """

    progress = Signal(float, str)
    finished = Signal(object)
    failed = Signal(str, str, str)
    cancelled = Signal()
    done = Signal()

    def __init__(self, name: str, fn: JobFunction, model_changing: bool = True,
                 min_interval: float = 0.05, parent: QObject | None = None):
        super().__init__(parent)
        self.name = name
        self.model_changing = model_changing
        self.status = "pending"
        self.result: Any = None
        self.error: tuple[str, str, str] | None = None
        self.started_at: float | None = None
        self.seconds: float | None = None
        self.last_progress: tuple[float, str] = (0.0, "")
        self._progress = Progress(None, min_interval=min_interval)
        self._thread = QThread()
        self._thread.setObjectName(f"polyprune-job-{name}")
        self._worker = _Worker(fn, self._progress)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progress.connect(self._on_progress)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)
        self._worker.cancelled.connect(self._on_cancelled)
        # QThread.quit is thread-safe; a direct connection stops the thread even when the GUI
        # event loop is not running (e.g. while the application waits for jobs on exit).
        self._worker.done.connect(self._thread.quit, Qt.DirectConnection)
        self._thread.finished.connect(self._on_thread_finished)

    # --- control ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (called by :meth:`JobRunner.start`)."""
        self.status = "running"
        self.started_at = time.perf_counter()
        self._thread.start()

    def cancel(self) -> None:
        """Ask the function to stop at its next check point (thread-safe, returns at once)."""
        self._progress.cancel()

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._progress.cancelled

    def is_running(self) -> bool:
        """True from :meth:`start` until the result (or error, or cancel) has been delivered."""
        return self.status == "running"

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until the worker thread has stopped; ``False`` on timeout.

        Results are delivered through the event loop, so after ``wait`` returns, process events
        (``QCoreApplication.processEvents()``) to receive them.
        """
        if timeout_ms is None or timeout_ms < 0:
            return self._thread.wait()
        return self._thread.wait(int(timeout_ms))

    # --- worker reports (queued into the GUI thread) --------------------------------------
    def _elapsed(self) -> None:
        if self.started_at is not None:
            self.seconds = time.perf_counter() - self.started_at

    @Slot(float, str)
    def _on_progress(self, fraction: float, message: str) -> None:
        if self.status != "running":
            return
        self.last_progress = (fraction, message)
        self.progress.emit(fraction, message)

    @Slot(object)
    def _on_finished(self, result: object) -> None:
        self._elapsed()
        self.status = "finished"
        self.result = result
        self.finished.emit(result)

    @Slot(str, str, str)
    def _on_failed(self, problem: str, fix: str, tb: str) -> None:
        self._elapsed()
        self.status = "failed"
        self.error = (problem, fix, tb)
        self.failed.emit(problem, fix, tb)

    @Slot()
    def _on_cancelled(self) -> None:
        self._elapsed()
        self.status = "cancelled"
        self.cancelled.emit()

    @Slot()
    def _on_thread_finished(self) -> None:
        self._thread.wait()
        self.done.emit()


def _shutdown(jobs: list[Job]) -> None:
    """Cancel and wait for ``jobs``, and cut them off from receivers that are being deleted."""
    for job in list(jobs):
        job.cancel()
    for job in list(jobs):
        for sig in (job.progress, job.finished, job.failed, job.cancelled, job.done):
            with warnings.catch_warnings():  # PySide warns when a signal has no connection left
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    sig.disconnect()
                except (RuntimeError, TypeError):
                    pass
        try:
            job.wait()
        except RuntimeError:  # its QThread is already gone
            pass
    jobs.clear()


class JobRunner(QObject):
    """Runs :class:`Job` objects; at most one model-changing job at a time.

    Signals (all in the GUI thread):
        started(name): a job started.
        progress(fraction, message): progress of the model-changing job.
        finished(name, result), failed(name, problem, fix, traceback), cancelled(name):
            how a job ended.
        refused(problem, fix): :meth:`start` was refused because a model-changing job runs.
        busy_changed(busy, name): a model-changing job started (``True``) or ended (``False``).
        idle(): the last running thread (of any job) has stopped.
    """

    started = Signal(str)
    progress = Signal(float, str)
    finished = Signal(str, object)
    failed = Signal(str, str, str, str)
    cancelled = Signal(str)
    refused = Signal(str, str)
    busy_changed = Signal(bool, str)
    idle = Signal()

    def __init__(self, parent: QObject | None = None, min_interval: float = 0.05):
        super().__init__(parent)
        self.min_interval = min_interval
        self._jobs: list[Job] = []
        self._current: Job | None = None
        # If the runner is deleted (e.g. with its window) while threads still run, stop them first;
        # the handler must not reference ``self``, whose C++ side is going away.
        self.destroyed.connect(lambda *_, jobs=self._jobs: _shutdown(jobs))

    # --- state --------------------------------------------------------------------------
    @property
    def current(self) -> Job | None:
        """The running model-changing job, or ``None``."""
        return self._current

    @property
    def busy(self) -> bool:
        """True while a model-changing job runs."""
        return self._current is not None

    def active_jobs(self) -> list[Job]:
        """Every job whose thread has not stopped yet (model-changing or not)."""
        return list(self._jobs)

    # --- control ------------------------------------------------------------------------
    def start(self, name: str, fn: JobFunction, model_changing: bool = True,
              on_finished: Callable[[Any], None] | None = None,
              on_failed: Callable[[str, str, str], None] | None = None,
              on_cancelled: Callable[[], None] | None = None,
              on_progress: Callable[[float, str], None] | None = None) -> Job | None:
        """Run ``fn(progress)`` in a new thread.

        Args:
            name: shown in progress, log and refusal messages.
            fn: the job; a plain function of one :class:`Progress` argument.
            model_changing: hold the model exclusively; refused while another such job runs.
            on_finished, on_failed, on_cancelled, on_progress: optional callables connected to
                the job's signals (called in the GUI thread).

        Returns:
            The started :class:`Job`, or ``None`` when refused (``refused`` is emitted with a
            message "A job is running: <name>").
        """
        if model_changing and self._current is not None:
            self.refused.emit(f"A job is running: {self._current.name}",
                              f"wait for it to finish, or cancel it (Esc) before starting {name.lower()}")
            return None
        job = Job(name, fn, model_changing, self.min_interval, parent=None)
        if on_progress is not None:
            job.progress.connect(on_progress)
        if on_finished is not None:
            job.finished.connect(on_finished)
        if on_failed is not None:
            job.failed.connect(on_failed)
        if on_cancelled is not None:
            job.cancelled.connect(on_cancelled)
        job.finished.connect(lambda result, j=job: self._ended(j, "finished", result))
        job.failed.connect(lambda p, f, t, j=job: self._ended(j, "failed", (p, f, t)))
        job.cancelled.connect(lambda j=job: self._ended(j, "cancelled", None))
        job.done.connect(lambda j=job: self._forget(j))
        if model_changing:
            job.progress.connect(self.progress)
            self._current = job
        self._jobs.append(job)
        job.start()
        self.started.emit(name)
        if model_changing:
            self.busy_changed.emit(True, name)
        return job

    def cancel(self) -> bool:
        """Ask the model-changing job to stop; ``False`` if none runs."""
        if self._current is None:
            return False
        self._current.cancel()
        return True

    def cancel_all(self) -> None:
        """Ask every running job to stop."""
        for job in self._jobs:
            job.cancel()

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until every job thread has stopped (``False`` on timeout); results are then
        delivered by the event loop."""
        deadline = None if timeout_ms is None or timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        for job in list(self._jobs):
            left = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not job.wait(left):
                return False
        return True

    # --- bookkeeping --------------------------------------------------------------------
    def _ended(self, job: Job, how: str, payload: Any) -> None:
        if how == "finished":
            self.finished.emit(job.name, payload)
        elif how == "failed":
            self.failed.emit(job.name, *payload)
        else:
            self.cancelled.emit(job.name)
        if job is self._current:
            self._current = None
            self.busy_changed.emit(False, job.name)

    def _forget(self, job: Job) -> None:
        # The thread has stopped; drop the job on the next turn of the event loop so Qt has
        # finished with the thread object before Python releases it.
        def drop():
            if job in self._jobs:
                self._jobs.remove(job)
                if not self._jobs:
                    self.idle.emit()
        QTimer.singleShot(0, self, drop)
