"""The main window: the panels in workflow order (:data:`PANELS`), a log and progress dock, menus
and shortcuts, and the services the panels use (jobs, dialogs, the calibration settings)."""
from __future__ import annotations

import html
import json
import os
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QDockWidget, QFileDialog, QHBoxLayout, QLabel, QMainWindow,
                               QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QTabWidget, QTextBrowser,
                               QVBoxLayout, QWidget)

from polyprune import __version__
from polyprune.errors import PolypruneError
from polyprune.jobs import Job, JobRunner, describe_error
from polyprune.recipe import Recipe, load_recipe, save_recipe

from .panels.demos_panel import DemosPanel
from .panels.evaluation_panel import EvaluationPanel
from .panels.export_panel import ExportPanel
from .panels.features_panel import FeaturesPanel
from .panels.heads_panel import HeadsPanel
from .panels.model_panel import ModelPanel
from .panels.pruning_panel import PruningPanel
from .panels.slim_panel import SlimPanel
from .panels.study_panel import StudyPanel
from .panels.subspaces_panel import SubspacesPanel
from .state import AppState
from .style import STYLE_SHEET
from .widgets import GLOSSARY, GLOSSARY_TITLES, window_words

try:
    import psutil
except ImportError:  # optional: the status bar then shows no memory figure
    psutil = None

DEFAULT_SIZE = (1400, 900)
#: How much lower the scheduling priority of a job's worker thread is than the window's (Linux
#: ``nice`` of that thread only): the window keeps answering while a job computes on a busy machine.
WORKER_NICE = 5


def lower_thread_priority(nice: int = WORKER_NICE) -> None:
    """Lower the scheduling priority of the calling thread (Linux; elsewhere nothing happens)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError, PermissionError):
        pass

#: The panels, in workflow order. A panel is a ``QWidget`` class with a ``title``, constructed as
#: ``Panel(window)``, with ``to_recipe(recipe)``, ``apply_recipe(recipe)`` and
#: ``set_busy(busy, name)``; it becomes a tab and ``window.<snake_case_class_name>``
#: (``ModelPanel`` -> ``window.model_panel``). Adding a panel is adding its class here.
PANELS: list[type] = [ModelPanel, DemosPanel, FeaturesPanel, PruningPanel, EvaluationPanel, ExportPanel, StudyPanel,
                      HeadsPanel, SubspacesPanel, SlimPanel]

def expected_failure(tb: str) -> bool:
    """Whether a job's traceback ends in a :class:`~polyprune.errors.PolypruneError` (a mistake the
    user can fix, reported in one line) rather than an unexpected error (a bug)."""
    lines = [ln for ln in (tb or "").strip().splitlines() if ln.strip()]
    return bool(lines) and lines[-1].split(":", 1)[0].strip().endswith("PolypruneError")


def attr_name(panel) -> str:
    """``ModelPanel`` -> ``model_panel``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(panel).__name__).lower()


class MainWindow(QMainWindow):
    """Polyprune's main window.

    Args:
        settings: where window layout, recent models and last settings persist (default:
            ``QSettings("Polyprune", "Polyprune")``); tests pass a temporary INI file.
        restore: read the last settings and layout from ``settings``.
    """

    def __init__(self, settings: QSettings | None = None, restore: bool = True):
        super().__init__()
        self.settings = settings if settings is not None else QSettings("Polyprune", "Polyprune")
        self.state = AppState(self)
        self.runner = JobRunner(self)
        self.errors: list[tuple[str, str]] = []
        self.tracebacks: list[str] = []
        self._closing = False
        self._closed = False
        self._boxes: list[QWidget] = []
        self.setWindowTitle(f"Polyprune {__version__} — prune and inspect multilingual language models")
        self.setStyleSheet(STYLE_SHEET)
        self._build_dock()

        self.panels = []
        for cls in PANELS:
            panel = cls(self)
            self.panels.append(panel)
            setattr(self, attr_name(panel), panel)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        for i, p in enumerate(self.panels, 1):
            self.tabs.addTab(p, f"{i}  {p.title}")
        self.setCentralWidget(self.tabs)

        self._build_status()
        self._build_actions()

        self.runner.busy_changed.connect(self._busy_changed)
        self.runner.refused.connect(lambda p, f: self.error(p, f))
        self.runner.progress.connect(self._progress)
        self.runner.idle.connect(self._maybe_close)
        self.state.model_loaded.connect(lambda _: self._update_status())
        self.state.active_changed.connect(lambda _: self._update_status())
        self.state.variants_changed.connect(self._update_status)
        self.state.model_note_changed.connect(lambda _: self._update_status())

        self.resize(*DEFAULT_SIZE)
        if restore:
            self._restore()
        self._update_status()
        self.log("Welcome to Polyprune. Start in the Model panel: click Demo model (Ctrl+D) or open a model (Ctrl+O).")

    # ------------------------------------------------------------------------------------
    # layout
    # ------------------------------------------------------------------------------------
    def _build_dock(self) -> None:
        self.job_label = QLabel("Idle")
        self.job_label.setMinimumWidth(280)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("%p %")
        self.cancel_btn = QPushButton("Cancel (Esc)")
        self.cancel_btn.setToolTip("Stop the running job at its next safe point; nothing is lost")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.job_label, 2)
        row.addWidget(self.progress, 3)
        row.addWidget(self.cancel_btn)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setObjectName("log")
        body = QWidget()
        lay = QVBoxLayout(body)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addLayout(row)
        lay.addWidget(self.log_view, 1)
        self.dock = QDockWidget("Log and progress", self)
        self.dock.setObjectName("log_dock")
        self.dock.setWidget(body)
        self.dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable
                              | QDockWidget.DockWidgetClosable)
        self.addDockWidget(Qt.BottomDockWidgetArea, self.dock)
        self.resizeDocks([self.dock], [170], Qt.Vertical)

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.busy_label = QLabel("Ready")
        self.busy_label.setObjectName("busy")
        self.variant_label = QLabel()
        self.device_label = QLabel()
        self.dtype_label = QLabel()
        self.memory_label = QLabel()
        for w, tip in ((self.busy_label, "What the application is doing"),
                       (self.variant_label, "The variant the model holds now (Pruning panel: Variants)"),
                       (self.device_label, "Where the model runs"),
                       (self.dtype_label, "Precision of the model's weights"),
                       (self.memory_label, "Memory used by Polyprune (and on the GPU, if any)")):
            w.setToolTip(tip)
        sb.addWidget(self.busy_label, 1)
        for w in (self.variant_label, self.device_label, self.dtype_label, self.memory_label):
            sb.addPermanentWidget(w)
        self._mem_timer = QTimer(self)
        self._mem_timer.setInterval(1000)
        self._mem_timer.timeout.connect(self._update_memory)
        self._mem_timer.start()

    def _action(self, text: str, shortcut, slot: Callable, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut:
            a.setShortcut(QKeySequence(shortcut))
        a.setToolTip(tip or text)
        a.setStatusTip(tip or text)
        a.triggered.connect(lambda checked=False: slot())
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        mp, dp, fp, pp = self.model_panel, self.demos_panel, self.features_panel, self.pruning_panel
        ep, xp, sp = self.evaluation_panel, self.export_panel, self.study_panel
        self.actions_by_name = {
            "open_model": self._action("Open model folder…", "Ctrl+O", mp.browse_folder, "Open a Hugging Face model folder"),
            "open_gguf": self._action("Open .gguf file…", None, mp.browse_gguf),
            "demo": self._action("Load the demo model", "Ctrl+D", mp.load_demo, "Gemma 3 270M, ready in seconds"),
            "open_recipe": self._action("Open recipe…", "Ctrl+Shift+O", self.open_recipe_dialog,
                                        "Load settings from a recipe file (JSON or YAML)"),
            "save_recipe": self._action("Save recipe…", QKeySequence.Save, self.save_recipe_dialog,
                                        "Save every setting as a recipe that 'polyprune run' replays"),
            "quit": self._action("Quit", QKeySequence.Quit, self.close),
            "build": self._action("Build demonstrations", "Ctrl+B", dp.build),
            "features": self._action("Measure features", "Ctrl+M", fp.measure),
            "compare": self._action("Compare feature settings", None, fp.compare),
            "prune": self._action("Prune (new variant)", "Ctrl+R", pp.prune),
            "revert": self._action("Use the dense model", "Ctrl+Shift+R", pp.revert),
            "evaluate": self._action("Evaluate", "Ctrl+E", ep.run),
            "export": self._action("Export", "Ctrl+Shift+E", xp.export),
            "study": self._action("Run / resume study", None, sp.run,
                                  "Prune and evaluate every unfinished cell of the study in the Studies panel"),
            "cancel": self._action("Cancel the running job", "Esc", self.cancel),
            "glossary": self._action("Glossary", "F1", self.show_glossary),
            "about": self._action("About Polyprune", None, self.show_about),
        }
        a = self.actions_by_name
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for k in ("open_model", "open_gguf", "demo", None, "open_recipe", "save_recipe", None, "quit"):
            m.addSeparator() if k is None else m.addAction(a[k])
        m = mb.addMenu("&Run")
        for k in ("build", "features", "compare", None, "prune", "revert", None, "evaluate", "export", "study", None, "cancel"):
            m.addSeparator() if k is None else m.addAction(a[k])
        m = mb.addMenu("&View")
        for i, p in enumerate(self.panels, 1):
            act = self._action(f"{i}  {p.title}", f"Ctrl+{i}" if i <= 9 else None,
                               lambda p=p: self.tabs.setCurrentWidget(p))
            m.addAction(act)
        m.addSeparator()
        m.addAction(self.dock.toggleViewAction())
        m = mb.addMenu("&Help")
        m.addAction(a["glossary"])
        m.addAction(a["about"])
        self.model_actions = [a[k] for k in ("open_model", "open_gguf", "demo", "build", "features", "compare",
                                             "prune", "revert", "evaluate", "export", "study")]

    # ------------------------------------------------------------------------------------
    # services for the panels
    # ------------------------------------------------------------------------------------
    def log(self, message: str, level: str = "info") -> None:
        """Append a timestamped line to the log (``level``: info, ok, warn, error, muted)."""
        colors = {"info": "#222", "error": "#b71c1c", "warn": "#e65100", "ok": "#1b5e20", "muted": "#777"}
        stamp = time.strftime("%H:%M:%S")
        text = html.escape(message).replace("\n", "<br>")
        self.log_view.appendHtml(f"<span style='color:#888'>{stamp}</span>&nbsp; "
                                 f"<span style='color:{colors.get(level, '#222')}'>{text}</span>")

    def error(self, problem: str, fix: str = "", details: str = "") -> QMessageBox:
        """Show a problem and its fix in a (non-blocking, window-modal) dialog and log one line.

        Command-line options in the text are replaced by the controls of the window
        (:func:`window_words`). ``details`` (the traceback of an unexpected error) is only in the
        dialog, behind its "Show Details…" button.
        """
        problem, fix = window_words(problem), window_words(fix or "")
        self.errors.append((problem, fix))
        if details:
            self.tracebacks.append(details)
            self.log(f"Unexpected error: {problem} (the dialog's Show Details… has the technical details)", "error")
        else:
            self.log(f"Problem: {problem}" + (f" — Fix: {fix}" if fix else ""), "error")
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Critical if details else QMessageBox.Warning)
        box.setWindowTitle("Polyprune")
        box.setText(f"<b>{html.escape(problem)}</b>")
        if fix:
            box.setInformativeText(f"How to fix it: {html.escape(fix)}")
        if details:
            box.setDetailedText(details)
        box.setStandardButtons(QMessageBox.Ok)
        box.setWindowModality(Qt.WindowModal)
        box.finished.connect(lambda _=0, b=box: self._boxes.remove(b) if b in self._boxes else None)
        self._boxes.append(box)
        box.open()
        return box

    def require_model(self) -> bool:
        """True if a model is loaded, else explain how to load one."""
        if self.state.loaded is None:
            self.error("No model is loaded",
                       "load one in the Model panel: click Demo model (Ctrl+D) or open a model folder (Ctrl+O)")
            return False
        return True

    def calibration_spec(self) -> dict:
        """The calibration settings of the Demonstrations panel as one
        :func:`polyprune.calibration.build` spec.

        Raises:
            PolypruneError: a setting that cannot be used (named with its control).
        """
        return self.demos_panel.spec()

    def calibration_for(self, spec: dict):
        """The calibration set already built for ``spec``, or ``None`` (the job builds it)."""
        return self.state.cached_calibration(spec)

    def _safe(self, fn: Callable | None) -> Callable | None:
        if fn is None:
            return None

        def wrapper(*args):
            try:
                fn(*args)
            except PolypruneError as e:
                self.error(e.problem, e.fix or "")
            except Exception as e:  # noqa: BLE001 - a view error must not take the window down
                problem, fix = describe_error(e)
                self.error(problem, fix, traceback.format_exc())
        return wrapper

    def run_job(self, name: str, fn: Callable, on_finished: Callable | None = None,
                on_failed: Callable | None = None, on_cancelled: Callable | None = None,
                on_progress: Callable | None = None, model_changing: bool = True, quiet: bool = False,
                while_modified: bool = False) -> Job | None:
        """Start ``fn(progress)`` in the background with logging and error dialogs.

        ``on_progress(fraction, message)`` receives this job's progress only. ``quiet`` jobs
        (previews) neither log nor show dialogs; their ``on_failed`` handles errors. An expected
        error (:class:`~polyprune.errors.PolypruneError`) gives one log line and a dialog naming the
        control to change; an unexpected one also keeps its traceback behind the dialog's details.

        ``while_modified`` jobs may run while a panel's in-place change stands
        (:attr:`AppState.model_note`, e.g. Lens); other jobs are refused then, since their results
        would be filed under a variant the model no longer is.

        Returns:
            The :class:`Job`, or ``None`` when refused (another model job runs, or the model holds
            an in-place change).
        """
        if self._closed or (self._closing and model_changing):
            return None
        if self.state.model_note and not while_modified:
            self.error(f"The model in memory holds {self.state.model_note}, so {name[:1].lower() + name[1:]} "
                       "would not work on the model the other panels show",
                       f"export it or undo {self.state.model_note} in the Subspaces panel first, or load a model again")
            return None
        fin, fail, canc = self._safe(on_finished), self._safe(on_failed), self._safe(on_cancelled)

        holder: dict = {}  # the job, for its run time (not kept after it ends: it holds the result)

        def finished(result):
            if not quiet:
                job = holder.pop("job", None)
                secs = f" in {job.seconds:.1f} s" if job is not None and job.seconds is not None else ""
                self.log(f"{name}: done{secs}", "ok")
            if fin:
                fin(result)

        def failed(problem, fix, tb):
            if not quiet:
                self.error(problem, fix, "" if expected_failure(tb) else tb)
            if fail:
                fail(problem, fix, tb)

        def cancelled():
            if not quiet:
                self.log(f"{name}: cancelled", "warn")
            if canc:
                canc()

        def work(progress):
            lower_thread_priority()
            return fn(progress)

        job = self.runner.start(name, work, model_changing=model_changing, on_finished=finished,
                                on_failed=failed, on_cancelled=cancelled, on_progress=on_progress)
        if job is not None:
            holder["job"] = job
            job.done.connect(lambda: holder.clear())
            if not quiet:
                self.log(f"{name}…")
        return job

    def show_study(self, folder: str | Path) -> None:
        """Show a study folder's results in the Studies panel (a dialog explains a folder without any)."""
        try:
            self.study_panel.show_folder(folder, load_study=True)
        except PolypruneError as e:
            self.error(e.problem, e.fix or "")
            return
        self.tabs.setCurrentWidget(self.study_panel)

    def cancel(self) -> None:
        """Cancel the running model job (Esc)."""
        job = self.runner.current
        if job is None:
            return
        job.cancel()
        self.job_label.setText(f"Cancelling {job.name.lower()}…")
        self.log(f"Cancelling {job.name.lower()} at the next safe point…", "warn")

    # ------------------------------------------------------------------------------------
    # busy state, progress and status bar
    # ------------------------------------------------------------------------------------
    def _busy_changed(self, busy: bool, name: str) -> None:
        self.state.set_busy(busy, name)
        self.cancel_btn.setEnabled(busy)
        self.actions_by_name["cancel"].setEnabled(busy)
        for a in self.model_actions:
            a.setEnabled(not busy)
        if busy:
            self.job_label.setText(f"{name}…")
            self.progress.setValue(0)
            self.busy_label.setText(f"● Busy: {name}")
            self.busy_label.setProperty("busy", True)
        else:
            self.job_label.setText("Idle")
            self.busy_label.setText("Ready")
            self.busy_label.setProperty("busy", False)
            job = self.runner.current
            self.progress.setValue(1000 if job is None else 0)
        self.busy_label.style().unpolish(self.busy_label)
        self.busy_label.style().polish(self.busy_label)

    def _progress(self, frac: float, msg: str) -> None:
        self.progress.setValue(int(frac * 1000))
        job = self.runner.current
        if msg:
            self.job_label.setText(f"{job.name}: {msg}" if job else msg)

    def _update_status(self) -> None:
        info = self.state.info
        if info:
            self.device_label.setText(f"Device: {info['device']}")
            self.dtype_label.setText(f"Precision: {info['dtype']}")
        else:
            self.device_label.setText("Device: –")
            self.dtype_label.setText("Precision: –")
        active = self.state.active
        note = f" + {self.state.model_note}" if self.state.model_note else ""
        self.variant_label.setText(f"Model holds: {active.name}{note}" if active is not None else "No model")
        self._update_memory()

    def _update_memory(self) -> None:
        try:
            text = f"Memory: {psutil.Process().memory_info().rss / 2 ** 30:.2f} GiB"
        except Exception:  # noqa: BLE001 - psutil missing or restricted
            text = "Memory: –"
        info = self.state.info
        if info and str(info.get("device", "")).startswith("cuda"):
            text += f" · GPU {torch.cuda.memory_allocated() / 2 ** 30:.2f} GiB"
        self.memory_label.setText(text)

    # ------------------------------------------------------------------------------------
    # recipes and settings
    # ------------------------------------------------------------------------------------
    def current_recipe(self) -> Recipe:
        """Every setting of every panel as a :class:`Recipe` (what ``polyprune run`` executes)."""
        r = Recipe()
        for p in self.panels:
            p.to_recipe(r)
        return r

    def sync_recipe(self) -> Recipe:
        """Refresh ``state.recipe`` from the panels and return it."""
        self.state.recipe = self.current_recipe()
        return self.state.recipe

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show a recipe's settings in the panels (the model is loaded only when asked)."""
        for p in self.panels:
            p.apply_recipe(recipe)
        self.state.recipe = recipe
        self.state.recipe_changed.emit()

    def save_recipe(self, path: str | Path) -> Path:
        """Write the current settings as a recipe (JSON or YAML by suffix)."""
        out = save_recipe(self.sync_recipe(), path)
        self.log(f"Saved recipe {out}; replay it with: polyprune run {out}", "ok")
        return out

    def open_recipe(self, path: str | Path) -> Recipe | None:
        """Read a recipe and show its settings; a dialog explains a bad file."""
        try:
            recipe = load_recipe(path)
        except PolypruneError as e:
            self.error(e.problem, e.fix or "")
            return None
        self.apply_recipe(recipe)
        loaded = self.state.loaded
        msg = f"Opened recipe {path}"
        if loaded is None or loaded.spec != recipe.model:
            msg += f"; press Load in the Model panel to load {recipe.model}"
        self.log(msg, "ok")
        return recipe

    def save_recipe_dialog(self) -> None:
        """Ask where to save the recipe (File → Save recipe, Ctrl+S)."""
        path, _ = QFileDialog.getSaveFileName(self, "Save recipe", "recipe.yaml", "YAML (*.yaml *.yml);;JSON (*.json)")
        if path:
            try:
                self.save_recipe(path)
            except PolypruneError as e:
                self.error(e.problem, e.fix or "")
            except OSError as e:
                self.error(f"Could not write {path}: {e.strerror or e}", "choose a folder you can write to")

    def open_recipe_dialog(self) -> None:
        """Ask which recipe to open (File → Open recipe, Ctrl+Shift+O)."""
        path, _ = QFileDialog.getOpenFileName(self, "Open recipe", "", "Recipes (*.yaml *.yml *.json);;All files (*)")
        if path:
            self.open_recipe(path)

    def _restore(self) -> None:
        s = self.settings
        geo = s.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        st = s.value("window/state")
        if st is not None:
            self.restoreState(st)
        text = s.value("last_recipe")
        if text:
            try:
                self.apply_recipe(Recipe.from_dict(json.loads(text)))
            except Exception:  # noqa: BLE001 - stale settings from another version are ignored
                pass
        try:
            self.tabs.setCurrentIndex(int(s.value("window/tab", 0)))
        except (TypeError, ValueError):
            pass

    def save_settings(self) -> None:
        """Persist window layout, current panel and the last settings (QSettings)."""
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        try:
            s.setValue("last_recipe", json.dumps(self.current_recipe().to_dict()))
        except Exception:  # noqa: BLE001
            pass
        s.sync()

    # ------------------------------------------------------------------------------------
    # help
    # ------------------------------------------------------------------------------------
    def show_glossary(self) -> QDialog:
        """Explain the terms in plain words (F1), in a scrollable dialog that fits a laptop screen."""
        dlg = QDialog(self)
        dlg.setWindowTitle("Polyprune glossary")
        view = QTextBrowser()
        titled = sorted(((GLOSSARY_TITLES.get(k, k.replace("_", " ")), v) for k, v in GLOSSARY.items()),
                        key=lambda kv: kv[0].lower())
        items = "".join(f"<p><b>{html.escape(k)}</b>: {html.escape(v)}</p>" for k, v in titled)
        view.setHtml("<h3>Terms in plain words</h3>" + items)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(dlg.close)
        lay = QVBoxLayout(dlg)
        lay.addWidget(view, 1)
        lay.addWidget(buttons)
        screen = self.screen().availableGeometry() if self.screen() is not None else None
        height = min(560, int(screen.height() * 0.8)) if screen is not None else 560
        dlg.resize(620, height)
        dlg.glossary_view = view
        self._boxes.append(dlg)
        dlg.finished.connect(lambda _=0, b=dlg: self._boxes.remove(b) if b in self._boxes else None)
        dlg.open()
        return dlg

    def show_about(self) -> None:
        """Show the version and what Polyprune does."""
        box = QMessageBox(self)
        box.setWindowTitle("About Polyprune")
        box.setText(f"<h3>Polyprune {__version__}</h3><p>Prune and inspect multilingual language models with "
                    "translation demonstrations (Kim et al. 2024) and Wanda (Sun et al. 2024).</p>"
                    "<p>Every session can be saved as a recipe and replayed with <code>polyprune run</code>.</p>")
        box.open()
        self._boxes.append(box)

    # ------------------------------------------------------------------------------------
    # closing
    # ------------------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        """A shown window accepts jobs again."""
        self._closed = False
        self._closing = False
        super().showEvent(event)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Closing during a job cancels it, waits for it to stop, then closes."""
        if self.runner.active_jobs():
            if not self._closing:
                self._closing = True
                names = ", ".join(j.name for j in self.runner.active_jobs())
                self.log(f"Closing: cancelling {names}; the window closes as soon as it has stopped", "warn")
                self.busy_label.setText("Closing: waiting for the job to stop…")
                self.runner.cancel_all()
            event.ignore()
            return
        self.save_settings()
        self._mem_timer.stop()
        self._closed = True
        event.accept()

    def _maybe_close(self) -> None:
        if self._closing:
            QTimer.singleShot(0, self.close)
