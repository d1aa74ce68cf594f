"""``polyprune gui --model M --screenshots DIR``: run the whole workflow with small settings,
save one PNG per panel and exit.

The steps are the ones a user clicks through: load the model, build demonstrations (FLORES-200
English→French when the data folder is present, else the built-in pairs), measure features,
compare with monolingual prompts, prune 50% with Wanda, evaluate dense vs pruned on a few
examples (when data is present), export to a temporary folder. Each step is a job of the window
itself, so the screenshots show exactly what a user sees.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication

from polyprune.recipe import default_data_dir

SHOT_NAMES = ["01_model.png", "02_demonstrations.png", "03_features.png", "04_pruning.png", "05_evaluation.png",
              "06_export.png",
              "07_studies.png"]
MAIN_NAME = "00_main_window.png"


class ScreenshotRun(QObject):
    """Drive a :class:`~polyprune.gui.main_window.MainWindow` through the workflow, then grab PNGs."""

    def __init__(self, window, model: str, out_dir: Path, tmp: Path, samples: int = 8, seq_len: int = 128,
                 study: str | None = None):
        super().__init__(window)
        self.win = window
        self.model = model
        self.out = Path(out_dir)
        self.tmp = Path(tmp)
        self.samples = samples
        self.seq_len = seq_len
        self.exit_code = 1
        self.data = default_data_dir()
        self.steps: list[tuple[str, Callable]] = [
            ("load", lambda: self.win.model_panel.load(self.model)),
            ("demonstrations", self._demos),
            ("features", self.win.features_panel.measure),
            ("compare", self.win.features_panel.compare),
            ("prune", self._prune),
            ("evaluate", self._evaluate),
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
            if name == "evaluate":  # skipped: no data
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
    def _demos(self):
        dp = self.win.demos_panel
        flores = self.data / "flores200" if self.data is not None else None
        if flores is not None and (flores / "dev" / "eng_Latn.dev").exists():
            dp.set_values(source=f"flores:{flores}", src="eng_Latn", tgt="fra_Latn", shots=4,
                          samples=self.samples, seq_len=self.seq_len, calibration_text=None)
        else:
            dp.set_values(source="builtin", src="eng_Latn", tgt="fra_Latn", shots=4, samples=self.samples,
                          seq_len=self.seq_len, calibration_text=None)
        dp.refresh_preview()
        return dp.build()

    def _prune(self):
        pp = self.win.pruning_panel
        pp.method.setCurrentIndex(pp.method.findData("wanda"))
        pp.pattern.setCurrentIndex(pp.pattern.findData("unstructured"))
        pp.sparsity.setValue(0.5)
        return pp.prune()

    def _evaluate(self):
        ep = self.win.evaluation_panel
        if self.data is None or not (self.data / "flores200").is_dir():
            self.say("no evaluation data folder: skipping evaluation")
            return None
        ep.data.setText(str(self.data))
        ep.set_checked(["eng_Latn", "fra_Latn", "swh_Latn"], ["en", "fr"])
        ep.limit.setValue(8)
        return ep.run()

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
        tabs = win.tabs
        shots = list(zip(win.panels, SHOT_NAMES))

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
