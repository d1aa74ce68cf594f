"""``polyprune gui --model M --screenshots DIR``: run the whole workflow with the settings a new
user gets, save one PNG per panel and exit (status 1 when any step fails).

The steps are the ones a user clicks through, with every setting left at its default (the window
starts from empty settings): load the model, build the demonstrations, measure features, compare
with monolingual prompts, prune, evaluate the dense model and the new variant (when the data folder
is present), try both on a FLORES sentence, export to a temporary folder. Each step is a job of
the window itself, so the screenshots show exactly what a user sees.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication

from polyprune.datasets import default_data_dir

from .main_window import PANELS


def shot_name(index: int, title: str) -> str:
    """``01_model.png`` for the first panel, titled "Model"."""
    return f"{index:02d}_{title.lower().replace(' ', '_')}.png"


#: One PNG per panel, in tab order (``01_model.png`` ... ``07_studies.png`` for the built-in panels).
SHOT_NAMES = [shot_name(i, cls.title) for i, cls in enumerate(PANELS, 1)]
MAIN_NAME = "00_main_window.png"


class ScreenshotRun(QObject):
    """Drive a :class:`~polyprune.gui.main_window.MainWindow` through the workflow, then grab PNGs."""

    def __init__(self, window, model: str, out_dir: Path, tmp: Path, study: str | None = None):
        super().__init__(window)
        self.win = window
        self.model = model
        self.out = Path(out_dir)
        self.tmp = Path(tmp)
        self.exit_code = 1
        self.data = default_data_dir()
        self.steps: list[tuple[str, Callable]] = [
            ("load", lambda: self.win.model_panel.load(self.model)),
            ("demonstrations", self.win.demos_panel.build),
            ("features", self.win.features_panel.measure),
            ("compare", self.win.features_panel.compare),
            ("prune", self.win.pruning_panel.prune),
            ("evaluate", self._evaluate),
            ("try it", self._try),
            ("export", self._export),
        ]
        self.files: list[Path] = []
        self.study = study

    def say(self, msg: str) -> None:
        """Print a progress line of the screenshot run to stderr."""
        print(f"[screenshots] {msg}", file=sys.stderr, flush=True)

    def start(self) -> None:
        """Begin the workflow (called once the event loop runs)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.say(f"running the workflow on {self.model}; PNGs go to {self.out}")
        self._next()

    def _next(self) -> None:
        if not self.steps:
            self._wait_idle(self._shots)
            return
        name, step = self.steps.pop(0)
        self.say(f"step: {name}")
        job = step()
        if job is None:
            if name in ("evaluate", "try it") and not self.has_data():  # skipped: no data folder
                QTimer.singleShot(0, self._next)
                return
            self._fail(f"step {name} could not start: {self.win.errors[-1] if self.win.errors else '?'}")
            return
        job.done.connect(lambda j=job, n=name: self._after(j, n))

    def _after(self, job, name: str) -> None:
        if job.status != "finished":
            err = job.error[0] + " — " + job.error[1] if job.error else job.status
            self._fail(f"step {name} {job.status}: {err}")
            return
        QTimer.singleShot(50, self._next)

    def _fail(self, msg: str) -> None:
        self.say("FAILED: " + msg)
        self.exit_code = 1
        QTimer.singleShot(0, lambda: QApplication.instance().exit(1))

    # --- steps --------------------------------------------------------------------------
    def has_data(self) -> bool:
        return self.data is not None and (self.data / "flores200").is_dir()

    def _evaluate(self):
        if not self.has_data():
            self.say("no evaluation data folder: skipping evaluation")
            return None
        return self.win.evaluation_panel.run()

    def _try(self):
        if not self.has_data():
            return None
        return self.win.evaluation_panel.try_it()

    def _export(self):
        xp = self.win.export_panel
        target = self.tmp / "export" / "pruned-model"
        if target.exists():
            shutil.rmtree(target)
        xp.target.setText(str(target))
        return xp.export()

    # --- screenshots --------------------------------------------------------------------
    def _wait_idle(self, then: Callable) -> None:
        if self.win.runner.active_jobs():
            QTimer.singleShot(100, lambda: self._wait_idle(then))
        else:
            QTimer.singleShot(300, then)

    def _shots(self) -> None:
        win = self.win
        if self.study:  # the Studies panel shows a finished study (running one here would take too long)
            win.study_panel.show_folder(self.study, load_study=True)
            win.study_panel.views.setCurrentIndex(1)  # the calibration x language heatmap
        win.evaluation_panel.views.setCurrentIndex(0)  # the table with intervals and verdicts
        tabs = win.tabs
        shots = [(p, shot_name(i, p.title)) for i, p in enumerate(win.panels, 1)]

        def grab_next():
            if not shots:
                tabs.setCurrentWidget(win.features_panel)
                QTimer.singleShot(300, grab_main)
                return
            panel, name = shots.pop(0)
            tabs.setCurrentWidget(panel)

            def grab():
                path = self.out / name
                panel.grab().save(str(path))
                self.files.append(path)
                self.say(f"saved {path}")
                grab_next()
            QTimer.singleShot(300, grab)

        def grab_main():
            path = self.out / MAIN_NAME
            win.grab().save(str(path))
            self.files.append(path)
            self.say(f"saved {path}")
            self.exit_code = 0
            shutil.rmtree(self.tmp / "export", ignore_errors=True)
            QApplication.instance().exit(0)

        grab_next()
