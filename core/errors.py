"""User-facing errors.

Every problem a user can cause (a wrong path, a bad setting, a malformed file) is raised as a
:class:`PolypruneError` whose message names the problem *and* the fix. The command line prints it
without a traceback and exits with status 2; the GUI shows it in a dialog.
"""
from __future__ import annotations


class PolypruneError(Exception):
    """A problem with the user's input or environment, worded for the user.

    Args:
        problem: what is wrong, in plain words (``"No config.json in /models/x"``).
        fix: what to do about it (``"point --model at a Hugging Face model folder"``).
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}. Fix: {fix}")


class Cancelled(Exception):
    """Raised inside a job when the user asked it to stop (see :class:`polyprune.progress.Progress`)."""
