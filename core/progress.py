"""Cooperative cancellation and throttled progress for long-running core functions.

Core functions take a ``progress`` argument (a :class:`Progress` or ``None``) and call
``progress.update(done, total, message)`` as they go and ``progress.check()`` at safe points.
``check()`` raises :class:`~polyprune.errors.Cancelled` once :meth:`Progress.cancel` was called
(from another thread: the GUI, or Ctrl-C in the CLI). Modelled on Orange3's ``TaskState``: the
callback is rate-limited so a fast loop cannot flood a GUI event queue.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]


class Progress:
    """Progress sink with a cancel flag.

    Args:
        callback: called as ``callback(fraction, message)`` with ``fraction`` in [0, 1].
        min_interval: seconds between two callbacks (the last update of a stage, where
            ``done == total``, is always delivered).
        stage_span: ``(start, end)`` sub-range of [0, 1] this object maps its fractions into;
            used by :meth:`sub` so that nested stages report one overall fraction.
    """

    def __init__(self, callback: ProgressCallback | None = None, min_interval: float = 0.1,
                 stage_span: tuple[float, float] = (0.0, 1.0), _cancel: threading.Event | None = None):
        self.callback = callback
        self.min_interval = min_interval
        self.span = stage_span
        self._cancel = _cancel or threading.Event()
        self._last = 0.0

    # --- cancellation -------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the running job to stop at its next :meth:`check` (thread-safe)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called."""
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    # --- reporting ----------------------------------------------------------------------
    def update(self, done: float, total: float, message: str = "") -> None:
        """Report ``done`` of ``total`` units of the current stage; also checks for cancel."""
        self.check()
        if self.callback is None:
            return
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        a, b = self.span
        self.callback(a + (b - a) * frac, message)

    def sub(self, start: float, end: float) -> "Progress":
        """A child reporting into ``[start, end]`` of this object's range, sharing its cancel flag."""
        a, b = self.span
        return Progress(self.callback, self.min_interval,
                        (a + (b - a) * start, a + (b - a) * end), self._cancel)


def ensure(progress: Progress | None) -> Progress:
    """Return ``progress`` or a silent :class:`Progress` so callees need no ``None`` checks."""
    return progress if progress is not None else Progress()


def tqdm_progress(desc: str) -> Progress:
    """A :class:`Progress` drawing a tqdm bar on stderr (for the command line); the bar is ``.bar``."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
    lock = threading.Lock()

    def cb(frac: float, msg: str):
        with lock:
            bar.n = int(frac * 1000)
            bar.set_postfix_str(msg[:60], refresh=False)
            bar.refresh()

    p = Progress(cb, min_interval=0.2)
    p.bar = bar  # type: ignore[attr-defined]
    return p
