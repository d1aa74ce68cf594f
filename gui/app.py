"""Starting the desktop application: ``polyprune`` (no arguments) or ``polyprune gui``."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from polyprune.errors import PolypruneError


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def gui_torch_threads() -> int:
    """Threads for torch in the desktop application: all cores but one, so that the window's
    thread always has a core (``$POLYPRUNE_GUI_THREADS`` overrides).

    Measured with ``tests/benchmarks/bench_gui_stall.py`` (demo model, 32 x 256 tokens, Wanda 50%)
    on a 2-core machine shared with other jobs: with one torch thread the longest event-loop stall
    was 25–43 ms (99th percentile 9–13 ms, 3 runs); with torch's default two threads 34–88 ms
    (16–18 ms, 5 runs, 2 of them over the 50 ms target), and pruning was not faster there. On a
    many-core machine one core is a small price. Job threads also run at a lower priority than the
    window (:data:`polyprune.gui.main_window.WORKER_NICE`); with the variants window (5 runs, load
    average 3.4–5.3 from other agents) the longest stall was 54–106 ms and the 99th percentile
    10.9–13.4 ms: the long ones fall at the start and the end of the job (repainting the busy
    window, then the first paint of the per-block plot, 22–30 ms on an idle core) and, with no
    window work at all, mid-pruning when other processes hold the cores.
    """
    env = os.environ.get("POLYPRUNE_GUI_THREADS")
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))


def make_app():
    """The ``QApplication`` (created once), named so ``QSettings`` land under "Polyprune"."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
    app.setOrganizationName("Polyprune")
    app.setApplicationName("Polyprune")
    app.setApplicationDisplayName("Polyprune")
    return app


def launch(model: str | None = None, screenshots: str | None = None, study: str | None = None) -> int:
    """Open the main window; return the exit status.

    Args:
        model: a model spec to load at start (``"demo"`` for the demo model).
        screenshots: a folder: run the workflow on ``model`` (default ``demo``) with the settings a
            new user gets (empty settings), save one PNG per panel there (``00_main_window.png``,
            ``01_model.png``, ...) and exit; the status is 1 when any step fails.
        study: a study folder whose results the Studies panel shows at start.

    Raises:
        PolypruneError: no display is available (and no screenshots folder was given).
    """
    if screenshots and not _has_display():
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not _has_display() and not os.environ.get("QT_QPA_PLATFORM"):
        raise PolypruneError("No display was found for the desktop application",
                             "run it on a desktop session, or use the command line (polyprune --help); "
                             "for screenshots without a display set QT_QPA_PLATFORM=offscreen")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from PySide6.QtCore import QSettings, QTimer

    torch.set_num_threads(gui_torch_threads())

    from .main_window import MainWindow

    app = make_app()
    if screenshots:
        from .screenshots import ScreenshotRun

        tmp = tempfile.mkdtemp(prefix="polyprune-shots-")
        settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.IniFormat)
        win = MainWindow(settings=settings, restore=False)
        win.show()
        run = ScreenshotRun(win, model or "demo", Path(screenshots), Path(tmp), study=study)
        QTimer.singleShot(0, run.start)
        app.exec()
        win.runner.cancel_all()
        win.runner.wait()
        win.close()
        win.deleteLater()
        return run.exit_code
    win = MainWindow()
    win.show()
    if study:
        QTimer.singleShot(0, lambda: win.show_study(study))
    if model:
        QTimer.singleShot(0, lambda: win.model_panel.load(model))
    return app.exec()
