"""Studies panel: edit and run a calibration-language study, then read its table, its
calibration × evaluation-language heatmap and the mask agreement per layer.

A study (:mod:`polyprune.study`) prunes one model once per cell of a grid of calibration sources ×
methods × sparsities and evaluates every cell (Kim et al. 2024; Kurz et al. 2024, methods.md §1, §6).
The panel only edits the study text, starts :func:`polyprune.study.run_study` as a job and shows
the files the study writes, so a study started from the command line can be opened here too.
"""
from __future__ import annotations

import html
import json
import math
from importlib import resources as importlib_resources
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import yaml
from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QPushButton, QSplitter, QTableWidgetItem, QTabWidget, QToolButton,
                               QVBoxLayout, QWidget)

from polyprune.errors import PolypruneError
from polyprune.fileio import atomic_write_text
from polyprune.session import study_rows_so_far
from polyprune.study import (HeatmapTable, StudyConfig, heat_scores, heatmap_table, load_agreement, load_paired,
                             load_rows, lower_is_better, run_study, study_from_text, study_status)

from ..widgets import (PlotBox, debounce, fmt_value, group, heading, help_label, monospace, plot_title, primary,
                       results_table, style_plot, write_csv)

TABLE_COLUMNS = ["Calibration", "Method", "Sparsity", "Task", "Language", "Metric", "Value", "95% CI", "n",
                 "Change vs dense"]
TABLE_KEYS = ["calibration", "method", "sparsity", "task", "language", "metric", "value", "ci", "n", "delta"]
MODES = [("value", "Value"), ("delta", "Change vs dense"), ("ratio", "Ratio to dense"),
         ("paired", "Difference from the reference (paired)")]
PAIRED_COLUMNS = ["Calibration", "Method", "Sparsity", "Task", "Language", "Metric", "n", "Value", "Reference",
                  "Difference", "95% CI (paired)"]
# worse → neutral → better (a red-blue scale that stays readable for red-green colour blindness)
HEAT_COLORS = [(178, 24, 43), (244, 165, 130), (247, 247, 247), (146, 197, 222), (33, 102, 172)]
EXAMPLE = "calibration_language.yaml"


def example_study_text() -> str:
    """The built-in example study (``resources/studies/calibration_language.yaml``)."""
    return (importlib_resources.files("polyprune.resources") / "studies" / EXAMPLE).read_text(encoding="utf-8")


class _LogBridge(QObject):
    """Carries log lines from the study thread to the GUI thread (a queued signal)."""

    line = Signal(str)


class StudyPanel(QWidget):
    """Run a study of calibration sources × methods × sparsities and show its results."""

    title = "Studies"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.rows: list[dict] = []
        self.agreement: list[dict] = []
        self.paired: list[dict] = []
        self._significant: list[list[bool]] = []
        self.folder: Path | None = None
        self.study_path: Path | None = None
        self._texts: list[pg.TextItem] = []
        self._bridge = _LogBridge(self)
        self._bridge.line.connect(self._log_line)

        # --- the study --------------------------------------------------------------------
        self.editor = QPlainTextEdit()
        self.editor.setFont(monospace())
        self.editor.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.editor.setToolTip("The study in YAML: calibration sources, methods, sparsities, evaluation and the "
                               "output folder. Open or save it as a file; 'polyprune study FILE' runs the same file")
        saved = ctx.settings.value("study/text") if hasattr(ctx, "settings") else None
        self.editor.setPlainText(saved if isinstance(saved, str) and saved.strip() else example_study_text())
        self.out = QLineEdit()
        self.out.setPlaceholderText("output folder (the study's 'out' setting when empty)")
        self.out.setToolTip("Where the study writes its cells, tables and masks; running again resumes there")
        saved_out = ctx.settings.value("study/out") if hasattr(ctx, "settings") else None
        if isinstance(saved_out, str):
            self.out.setText(saved_out)
        out_browse = QToolButton()
        out_browse.setText("Browse…")
        out_browse.clicked.connect(self._browse_out)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out, 1)
        out_row.addWidget(out_browse)

        open_btn = QPushButton("Open study…")
        open_btn.setToolTip("Read a study file (YAML or JSON) into the editor")
        open_btn.clicked.connect(self._open_dialog)
        save_btn = QPushButton("Save study…")
        save_btn.setToolTip("Write the editor's study to a file that 'polyprune study FILE' runs")
        save_btn.clicked.connect(self._save_dialog)
        example_btn = QPushButton("Example")
        example_btn.setToolTip("Replace the editor's text with the built-in calibration-language study")
        example_btn.clicked.connect(lambda: self.editor.setPlainText(example_study_text()))
        file_row = QHBoxLayout()
        for b in (open_btn, save_btn, example_btn):
            file_row.addWidget(b)
        file_row.addStretch(1)

        self.plan_label = QLabel("")
        self.plan_label.setWordWrap(True)
        self.plan_label.setObjectName("help")
        self.plan_label.setTextFormat(Qt.RichText)
        self.run_btn = primary(QPushButton("Run / resume study"))
        self.run_btn.setToolTip("Prune and evaluate every cell not finished yet, in the background. "
                                "Cancel (Esc) keeps finished cells; press again to resume")
        self.run_btn.clicked.connect(self.run)
        self.show_btn = QPushButton("Show results of a folder…")
        self.show_btn.setToolTip("Open the tables of a study folder written earlier (also from the command line)")
        self.show_btn.clicked.connect(self._show_dialog)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_btn)
        run_row.addWidget(self.show_btn)
        run_row.addStretch(1)

        # --- Ray (issue 15): run every cell as a Ray task ----------------------------------
        self.use_ray = QCheckBox("Run cells on Ray")
        self.use_ray.setToolTip("Run every cell as a Ray task (pip install 'polyprune[cluster]'): on the cluster at "
                                "the address, or on a local Ray cluster on this machine when the address is empty. "
                                "Per-cell CPUs, GPUs and memory come from the study's ray: settings")
        self.ray_address = QLineEdit()
        self.ray_address.setPlaceholderText("Ray address (host:port); empty: a local cluster")
        self.ray_address.setEnabled(False)
        self.use_ray.toggled.connect(self.ray_address.setEnabled)
        if hasattr(ctx, "settings"):
            self.use_ray.setChecked(str(ctx.settings.value("study/ray", "false")).lower() == "true")
            self.ray_address.setText(str(ctx.settings.value("study/ray_address", "") or ""))
        ray_row = QHBoxLayout()
        ray_row.addWidget(self.use_ray)
        ray_row.addWidget(self.ray_address, 1)

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Output folder", out_row)
        form.addRow("Cluster", ray_row)
        left = QVBoxLayout()
        left.addLayout(file_row)
        left.addWidget(self.editor, 1)
        left.addLayout(form)
        left.addWidget(self.plan_label)
        left.addLayout(run_row)

        # --- results ----------------------------------------------------------------------
        self.table = results_table(TABLE_COLUMNS, "One row per cell, task, language and metric; the dense model first. "
                              "Change = cell − dense: perplexity lower is better, accuracy higher is better")
        self.csv_btn = QPushButton("Save table (CSV)…")
        self.csv_btn.clicked.connect(self._save_csv)
        t_lay = QVBoxLayout()
        t_lay.addWidget(self.table, 1)
        t_row = QHBoxLayout()
        t_row.addStretch(1)
        t_row.addWidget(self.csv_btn)
        t_lay.addLayout(t_row)
        table_page = QWidget()
        table_page.setLayout(t_lay)

        self.heat_choice = QComboBox()
        self.heat_choice.setToolTip("Which result the heatmap shows: task, metric, method and sparsity")
        self.heat_mode = QComboBox()
        for key, text in MODES:
            self.heat_mode.addItem(text, key)
        self.heat_mode.setCurrentIndex(1)
        self.heat_mode.setToolTip("Show the values, their change from the dense model, or their ratio to it")
        self.per_column = QCheckBox("Colour each language on its own")
        self.per_column.setChecked(True)
        self.per_column.setToolTip("Blue = best calibration for that evaluation language, red = worst. "
                                   "Untick for one colour scale over the whole table")
        for w in (self.heat_choice, self.heat_mode):
            w.currentIndexChanged.connect(lambda _=0: self.draw_heatmap())
        self.per_column.toggled.connect(lambda _=False: self.draw_heatmap())
        h_row = QHBoxLayout()
        h_row.addWidget(QLabel("Result"))
        h_row.addWidget(self.heat_choice, 2)
        h_row.addWidget(QLabel("Show"))
        h_row.addWidget(self.heat_mode, 1)
        h_row.addWidget(self.per_column)
        self.heat_box = PlotBox("study_heatmap")
        self.heat_img = pg.ImageItem(axisOrder="row-major")
        self.heat_box.plot.addItem(self.heat_img)
        self.heat_box.plot.invertY(True)
        self.heat_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.heat_box.plot.hideButtons()
        self.heat_lut = pg.ColorMap(np.linspace(0, 1, len(HEAT_COLORS)), HEAT_COLORS).getLookupTable(0, 1, 256)
        style_plot(self.heat_box.plot, "Calibration × evaluation language", "calibration data", "evaluation language")
        self.heat_box.plot.showGrid(x=False, y=False)
        self.heat_box.caption.setText("Blue: the calibration that keeps this language best; red: the worst. "
                                      "Numbers are the values shown, with the 95% interval in the table")
        h_lay = QVBoxLayout()
        h_lay.addLayout(h_row)
        h_lay.addWidget(self.heat_box, 1)
        heat_page = QWidget()
        heat_page.setLayout(h_lay)

        self.agree_box = PlotBox("study_mask_agreement")
        style_plot(self.agree_box.plot, "Mask agreement per layer", "agreement (Dice of kept weights)", "block")
        self.agree_box.plot.addLegend(offset=(-8, -8), labelTextColor="#24292f")
        self.agree_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.agree_box.caption.setText("Share of kept weights two cells have in common (1 = the same mask), "
                                       "per block, against the study's reference cell")
        a_lay = QVBoxLayout()
        a_lay.addWidget(self.agree_box, 1)
        agree_page = QWidget()
        agree_page.setLayout(a_lay)

        self.paired_table = results_table(PAIRED_COLUMNS, "Each cell minus the reference cell on the same items, with a paired bootstrap "
                                     "95% interval; bold where the interval excludes 0")
        self.paired_label = QLabel("")
        self.paired_label.setObjectName("help")
        self.paired_label.setWordWrap(True)
        p_lay = QVBoxLayout()
        p_lay.addWidget(self.paired_label)
        p_lay.addWidget(self.paired_table, 1)
        paired_page = QWidget()
        paired_page.setLayout(p_lay)

        for box in (self.heat_box, self.agree_box):
            box.saved.connect(lambda p: ctx.log(f"Saved plot {p}"))
            box.save_failed.connect(lambda pr, fx: ctx.error(pr, fx))

        self.views = QTabWidget()
        self.views.addTab(table_page, "Table")
        self.views.addTab(heat_page, "Heatmap")
        self.views.addTab(paired_page, "Paired differences")
        self.views.addTab(agree_page, "Mask agreement")
        self.folder_label = QLabel("No study results shown yet")
        self.folder_label.setObjectName("help")
        self.folder_label.setWordWrap(True)
        r_lay = QVBoxLayout()
        r_lay.addWidget(self.folder_label)
        r_lay.addWidget(self.views, 1)

        split = QSplitter(Qt.Horizontal)
        lw = group("Study", left)
        rw = group("Results", r_lay)
        split.addWidget(lw)
        split.addWidget(rw)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 7)
        split.setSizes([480, 900])
        lay = QVBoxLayout(self)
        lay.addWidget(heading("7 · Studies"))
        lay.addWidget(help_label(
            "Which calibration data keeps the pruned model good in each language? A study prunes the model once "
            "per calibration source, method and sparsity, evaluates every result and puts them in one table. "
            "It runs in the background and resumes where it stopped."))
        lay.addWidget(split, 1)

        self._plan_timer = debounce(self, 400, self.update_plan)
        self.editor.textChanged.connect(self._plan_timer.start)
        self.out.textChanged.connect(lambda _: self._plan_timer.start())
        ctx.state.busy_changed.connect(self.set_busy)
        self.update_plan()
        self._show_existing()

    # --- the study ----------------------------------------------------------------------
    def config(self) -> StudyConfig:
        """The editor's study, with the output folder field applied.

        Raises:
            PolypruneError: YAML syntax errors or unknown settings.
        """
        cfg = study_from_text(self.editor.toPlainText(), where="study in the editor")
        if self.out.text().strip():
            cfg.out = self.out.text().strip()
        return cfg

    def update_plan(self) -> None:
        """Check the study as it is typed and say what running it would do."""
        if hasattr(self.ctx, "settings"):
            self.ctx.settings.setValue("study/text", self.editor.toPlainText())
            self.ctx.settings.setValue("study/out", self.out.text())
        try:
            cfg = self.config()
            cells, finished = study_status(cfg)
        except PolypruneError as e:
            self.plan_label.setText(f"<span style='color:#b71c1c'><b>{_esc(e.problem)}</b>"
                                    + (f" — {_esc(e.fix)}" if e.fix else "") + "</span>")
            return
        todo = len(cells) - len(finished)
        text = (f"<b>{len(cells)} cell{'s' if len(cells) != 1 else ''}</b> ({len(cfg.calibration)} calibration "
                f"source(s) × {len(cfg.methods)} method(s) × {len(cfg.sparsities)} sparsit"
                f"{'y' if len(cfg.sparsities) == 1 else 'ies'}) on <b>{_esc(str(cfg.model))}</b>; ")
        text += (f"{len(finished)} finished, {todo} to run" if finished else f"{todo} to run")
        text += f" · output: {_esc(str(Path(cfg.out).expanduser()))}"
        self.plan_label.setText(text)

    def run(self):
        """Run (or resume) the study in the background; finished cells are shown as they are kept."""
        try:
            cfg = self.config()
            cells, finished = study_status(cfg)
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        if len(finished) == len(cells) and cells:
            self.ctx.log(f"Every cell of the study is finished in {cfg.out}; showing its results", "ok")
        out = Path(cfg.out).expanduser()
        bridge = self._bridge
        self._running_cfg = cfg

        use_ray, address = self.use_ray.isChecked(), self.ray_address.text().strip() or None
        if hasattr(self.ctx, "settings"):
            self.ctx.settings.setValue("study/ray", use_ray)
            self.ctx.settings.setValue("study/ray_address", address or "")

        def job(progress):
            if use_ray:
                from polyprune.study.ray import run_study_ray
                return run_study_ray(cfg, address, progress, log=bridge.line.emit)
            return run_study(cfg, progress, log=bridge.line.emit)

        def done(res):
            self._running_cfg = None
            self.show_folder(res.out)
            self.update_plan()
            self.ctx.log(f"Study finished: {len(res.ran)} cell(s) run, {len(res.skipped)} resumed from disk, "
                         f"{res.seconds:.0f} s; tables in {res.out}", "ok")

        def stopped(*_):
            self._running_cfg = None
            if (out / "results.jsonl").is_file():
                self.show_folder(out)
            self.update_plan()

        return self.ctx.run_job("Running study", job, on_finished=done, on_cancelled=stopped, on_failed=stopped)

    @Slot(str)
    def _log_line(self, line: str) -> None:
        self.ctx.log(line.strip())
        cfg = getattr(self, "_running_cfg", None)
        if cfg is not None and (line.lstrip().startswith(("Cell ", "Evaluating the dense")) or "pruned in" in line):
            self.show_progress_rows()

    def show_progress_rows(self) -> None:
        """While a study runs: show the rows of the cells finished so far in the table."""
        cfg = getattr(self, "_running_cfg", None)
        if cfg is None:
            return
        try:
            rows = study_rows_so_far(cfg)
        except PolypruneError:
            return
        if len(rows) != len(self.rows):
            self.rows = rows
            n_cells = len({r["cell"] for r in rows if r.get("cell") != "dense"})
            self.folder_label.setText(f"{Path(cfg.out).expanduser()} · running: {n_cells} cell(s) finished so far, "
                                      f"{len(rows)} results")
            self.fill_table()

    # --- results ------------------------------------------------------------------------
    def _show_existing(self) -> None:
        try:
            out = Path(self.config().out).expanduser()
        except PolypruneError:
            return
        if (out / "results.jsonl").is_file():
            try:
                self.show_folder(out)
            except PolypruneError:
                pass

    def show_folder(self, folder: str | Path, load_study: bool = False) -> None:
        """Load and show the tables of a study folder (``results.jsonl``, ``paired.csv``,
        ``mask_agreement.csv``).

        Args:
            folder: the study's output folder.
            load_study: also put the folder's study (``study.json``) in the editor and the folder in
                the output field, so that Run resumes exactly that study.

        Raises:
            PolypruneError: the folder holds no study results.
        """
        folder = Path(folder).expanduser()
        self.rows = load_rows(folder)
        if load_study and (folder / "study.json").is_file():
            try:
                cfg = json.loads((folder / "study.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cfg = None
            if isinstance(cfg, dict):
                cfg.pop("out", None)
                self.editor.setPlainText(f"# the study of {folder}\n"
                                         + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
                self.out.setText(str(folder))
                self.update_plan()
        self.agreement = load_agreement(folder)
        self.paired = load_paired(folder)
        self.folder = folder
        n_cells = len({r["cell"] for r in self.rows if r.get("cell") != "dense"})
        self.folder_label.setText(f"{folder} · {n_cells} finished cell(s), {len(self.rows)} results")
        self.fill_table()
        self.fill_paired()
        self._fill_choices()
        self.draw_heatmap()
        self.draw_agreement()

    def fill_table(self) -> None:
        """Show every result row (dense first) with its interval and change from dense."""
        rows = self.rows
        self.table.setRowCount(len(rows))
        green, red = QColor("#2e7d32"), QColor("#c62828")
        for i, r in enumerate(rows):
            lo, hi = r.get("ci_low"), r.get("ci_high")
            ci = "" if lo is None or hi is None else f"[{fmt_value(lo, r['metric'])}, {fmt_value(hi, r['metric'])}]"
            delta = r.get("delta")
            texts = [r["calibration"], r["method"], "" if r["cell"] == "dense" else f"{float(r['sparsity']):g}",
                     r["task"], r["language"], r["metric"], fmt_value(r.get("value"), r["metric"]), ci,
                     "" if r.get("n") is None else str(r["n"]), _delta_text(delta, r["metric"])]
            raw = [r["calibration"], r["method"], r["sparsity"], r["task"], r["language"], r["metric"], r.get("value"),
                   (lo, hi), r.get("n"), delta]
            for c, (t, v) in enumerate(zip(texts, raw)):
                item = QTableWidgetItem(t)
                item.setData(Qt.UserRole, v)
                if c >= 6:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if c == 9 and delta is not None:
                    item.setForeground(QBrush(change_color(delta, r["metric"], green, red)))
                self.table.setItem(i, c, item)

    def fill_paired(self) -> None:
        """Show every cell's paired difference from the reference cell (bold where significant)."""
        rows = self.paired
        ref = rows[0]["reference"] if rows else None
        self.paired_label.setText(
            f"Each cell minus the reference cell <b>{_esc(ref)}</b>, on the same items; the interval resamples "
            "items for both cells together, so it is much narrower than the two cells' own intervals. Bold: the "
            "interval excludes 0." if rows else "Paired differences appear once the reference cell and another "
            "cell are finished (studies keep each item's score).")
        self.paired_label.setTextFormat(Qt.RichText)
        self.paired_table.setRowCount(len(rows))
        green, red = QColor("#2e7d32"), QColor("#c62828")
        for i, r in enumerate(rows):
            m = r["metric"]
            sig = not (r["ci_low"] <= 0 <= r["ci_high"])
            texts = [r["calibration"], r["method"], f"{r['sparsity']:g}", r["task"], r["language"], m, str(r["n"]),
                     fmt_value(r["value"], m), fmt_value(r["reference_value"], m), _delta_text(r["difference"], m),
                     f"[{_delta_text(r['ci_low'], m)}, {_delta_text(r['ci_high'], m)}]"]
            for c, t in enumerate(texts):
                item = QTableWidgetItem(t)
                if c >= 6:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if c >= 9:
                    # colour only what the paired interval shows; a change it cannot tell from 0 stays grey
                    item.setForeground(QBrush(change_color(r["difference"], m, green, red) if sig else QColor(GREY)))
                    if sig:
                        f = item.font()
                        f.setBold(True)
                        item.setFont(f)
                self.paired_table.setItem(i, c, item)

    def paired_heatmap(self, task: str, metric: str, method: str, s: float) -> HeatmapTable:
        """Calibration × language of the paired differences from the reference cell (sets the significance map).

        Raises:
            PolypruneError: no paired rows for this choice.
        """
        sel = [r for r in self.paired if r["task"] == task and r["metric"] == metric and r["method"] == method
               and abs(r["sparsity"] - s) < 1e-12]
        if not sel:
            raise PolypruneError("No paired differences for this result",
                                 "they need the reference cell and item scores (studies run with this version)")
        rows = list(dict.fromkeys(r["calibration"] for r in sel))
        cols = list(dict.fromkeys(r["language"] for r in sel))
        grid = {(r["calibration"], r["language"]): r for r in sel}
        values = [[grid[(c, lang)]["difference"] if (c, lang) in grid else None for lang in cols] for c in rows]
        self._significant = [[(c, lang) in grid and not (grid[(c, lang)]["ci_low"] <= 0 <= grid[(c, lang)]["ci_high"])
                              for lang in cols] for c in rows]
        return HeatmapTable(rows, cols, values, f"{metric} ({task}) — {method} at {s:g}, paired difference from "
                                                f"{sel[0]['reference']}")

    def table_values(self) -> list[dict]:
        """The table's raw values, row by row (for tests)."""
        return [{k: self.table.item(i, c).data(Qt.UserRole) for c, k in enumerate(TABLE_KEYS)}
                for i in range(self.table.rowCount())]

    def _fill_choices(self) -> None:
        prev = self.heat_choice.currentData()
        self.heat_choice.blockSignals(True)
        self.heat_choice.clear()
        combos = list(dict.fromkeys((r["task"], r["metric"], r["method"], float(r["sparsity"]))
                                    for r in self.rows if r.get("cell") != "dense"))
        for c in combos:
            task, metric, method, s = c
            self.heat_choice.addItem(f"{task} · {metric} · {method} · {s:g}", c)
        i = self.heat_choice.findData(prev) if prev is not None else -1
        self.heat_choice.setCurrentIndex(i if i >= 0 else 0)
        self.heat_choice.blockSignals(False)

    def heatmap(self):
        """The :class:`~polyprune.study.HeatmapTable` the heatmap shows, or ``None``."""
        choice = self.heat_choice.currentData()
        if choice is None:
            return None
        task, metric, method, s = choice
        mode = self.heat_mode.currentData()
        self._significant = []
        if mode == "paired":
            return self.paired_heatmap(task, metric, method, s)
        return heatmap_table(self.rows, metric, task, method, s, mode, include_dense=(mode == "value"))

    def draw_heatmap(self) -> None:
        """Draw the chosen calibration × evaluation-language table as a coloured grid with its numbers."""
        plot = self.heat_box.plot
        for t in self._texts:
            plot.removeItem(t)
        self._texts = []
        try:
            table = self.heatmap()
        except PolypruneError as e:
            self.heat_img.clear()
            plot.setTitle(plot_title("Calibration × evaluation language", e.problem))
            return
        if table is None:
            self.heat_img.clear()
            plot.getAxis("left").setTicks([[]])
            plot.getAxis("bottom").setTicks([[]])
            return
        task, metric, method, s = self.heat_choice.currentData()
        mode = self.heat_mode.currentData()
        scores = heat_scores(table.values, metric, mode, self.per_column.isChecked())
        lut = self.heat_lut
        rgba = np.full(scores.shape + (4,), 235, dtype=np.ubyte)  # missing cells: light grey
        ok = np.isfinite(scores)
        idx = np.clip((np.nan_to_num(scores) * 255).round().astype(int), 0, 255)
        rgba[..., :3][ok] = lut[idx[ok]]
        rgba[..., 3] = 255
        self.heat_img.setImage(rgba, levels=None, autoLevels=False)
        self.heat_img.setRect(0, 0, len(table.cols), len(table.rows))
        for i, row in enumerate(table.values):
            for j, v in enumerate(row):
                text = "–" if v is None else _cell_text(v, metric, "delta" if mode == "paired" else mode)
                if self._significant and self._significant[i][j]:
                    text += " *"
                dark = ok[i, j] and abs(scores[i, j] - 0.5) > 0.38
                item = pg.TextItem(text, color="#ffffff" if dark else "#111111", anchor=(0.5, 0.5))
                item.setPos(j + 0.5, i + 0.5)
                plot.addItem(item)
                self._texts.append(item)
        plot.getAxis("left").setTicks([[(i + 0.5, r) for i, r in enumerate(table.rows)]])
        plot.getAxis("bottom").setTicks([[(j + 0.5, c) for j, c in enumerate(table.cols)]])
        plot.setXRange(0, len(table.cols), padding=0.02)
        plot.setYRange(0, len(table.rows), padding=0.02)
        better = "lower is better" if lower_is_better(metric) else "higher is better"
        what = dict(MODES)[mode].lower()
        if mode == "paired" and self.paired:
            what = f"minus {self.paired[0]['reference']} (* paired 95% interval excludes 0)"
        plot.setTitle(plot_title(f"{task} {metric}: calibration × evaluation language",
                                 f"{method} at sparsity {s:g} · {what} · {better}"))

    def draw_agreement(self) -> None:
        """One line per cell: agreement of its masks with the reference cell's, block by block."""
        plot = self.agree_box.plot
        plot.clear()
        if plot.legend is not None:
            plot.legend.clear()
        blocks = [r for r in self.agreement if r["level"] == "block"]
        if not blocks:
            plot.setTitle(plot_title("Mask agreement per layer", "needs at least two finished cells"))
            return
        ref_id = blocks[0]["reference"]
        ref_label = next((f"{r['calibration']} | {r['method']} | {float(r['sparsity']):g}" for r in self.rows
                          if r.get("cell") == ref_id), ref_id)
        cells = list(dict.fromkeys(r["cell"] for r in blocks))
        for k, cid in enumerate(cells):
            rs = sorted((r for r in blocks if r["cell"] == cid), key=lambda r: r["block"])
            x = np.array([r["block"] for r in rs], dtype=float)
            y = np.array([r["agreement"] for r in rs], dtype=float)
            color = pg.intColor(k, hues=max(len(cells), 3), values=1, maxValue=200, minValue=200)
            label = f"{rs[0]['calibration']} | {rs[0]['method']} | {float(rs[0]['sparsity']):g}"
            plot.plot(x, y, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=6, symbolBrush=color,
                      symbolPen=None, name=label)
        ids = sorted({r["block"] for r in blocks})
        step = max(1, math.ceil(len(ids) / 24))
        plot.getAxis("bottom").setTicks([[(b, str(b)) for b in ids[::step]]])
        plot.setXRange(ids[0] - 0.5, ids[-1] + 0.5, padding=0)
        lo = min(r["agreement"] for r in blocks)
        plot.setYRange(max(0.0, math.floor(lo * 20) / 20 - 0.05), 1.0, padding=0.02)
        plot.setTitle(plot_title("Mask agreement per layer", f"against {ref_label}"))

    # --- files --------------------------------------------------------------------------
    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Study output folder", self.out.text())
        if path:
            self.out.setText(path)

    def open_study(self, path: str | Path) -> bool:
        """Read a study file into the editor (its syntax is checked; a dialog explains a bad file)."""
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            self.ctx.error(f"Could not read the study file {p}: {e.strerror or e}", "check the path and permissions")
            return False
        if p.suffix.lower() == ".json":
            try:
                text = yaml.safe_dump(json.loads(text), sort_keys=False, allow_unicode=True)
            except ValueError as e:
                self.ctx.error(f"Could not parse the study file {p}: {e}", "fix the JSON syntax")
                return False
        self.editor.setPlainText(text)
        self.study_path = p
        self.update_plan()
        self.ctx.log(f"Opened study {p}")
        return True

    def save_study(self, path: str | Path) -> Path:
        """Write the editor's text to ``path`` atomically (after checking it parses)."""
        self.config()  # refuse to save a study that cannot run
        p = Path(path).expanduser()
        atomic_write_text(p, self.editor.toPlainText())
        self.study_path = p
        self.ctx.log(f"Saved study {p}; run it with: polyprune study {p}", "ok")
        return p

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open study", "", "Studies (*.yaml *.yml *.json);;All files (*)")
        if path:
            self.open_study(path)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save study", str(self.study_path or "study.yaml"),
                                              "YAML (*.yaml *.yml)")
        if path:
            try:
                self.save_study(path)
            except PolypruneError as e:
                self.ctx.error(e.problem, e.fix or "")
            except OSError as e:
                self.ctx.error(f"Could not write {path}: {e.strerror or e}", "choose a folder you can write to")

    def _show_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Study folder (with results.jsonl)", self.out.text())
        if path:
            try:
                self.show_folder(path, load_study=True)
            except PolypruneError as e:
                self.ctx.error(e.problem, e.fix or "")

    def _save_csv(self) -> None:
        if not self.rows:
            self.ctx.error("No study results to save yet", "run a study or show the results of a study folder")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save study table", "study.csv", "CSV (*.csv)")
        if path:
            self.save_csv(path)

    def save_csv(self, path: str | Path) -> Path:
        """Write the table as CSV (values unrounded)."""
        keys = ["calibration", "method", "sparsity", "task", "language", "metric", "value", "ci_low", "ci_high", "n",
                "dense", "delta"]
        out = write_csv(path, keys, [[r.get(k) if r.get(k) is not None else "" for k in keys] for r in self.rows])
        self.ctx.log(f"Saved {out}")
        return out

    def set_busy(self, busy: bool, name: str = "") -> None:
        """While a model job runs, a study cannot start."""
        self.run_btn.setEnabled(not busy)

    # --- recipe (a study is its own file, not part of the session recipe) ---------------------
    def to_recipe(self, recipe) -> None:
        """Studies are saved as their own files; nothing goes into the session recipe."""

    def apply_recipe(self, recipe) -> None:
        """Studies are saved as their own files; nothing is read from the session recipe."""


GREY = "#57606a"


def change_color(d: float, metric: str, better: QColor, worse: QColor) -> QColor:
    """Green for a change for the better, red for the worse, grey when it shows as zero."""
    if _delta_text(d, metric).lstrip("+-").startswith(("0.0 ", "0 ")) or d == 0:
        return QColor(GREY)
    good = d < 0 if lower_is_better(metric) else d > 0
    return better if good else worse


def _esc(text: str) -> str:
    return html.escape(text)


def _delta_text(d: float | None, metric: str) -> str:
    if d is None:
        return "–"
    if metric.startswith("acc") or metric == "rankc":
        return f"{100 * d:+.1f} pts"
    return f"{d:+.4g}"


def _cell_text(v: float, metric: str, mode: str) -> str:
    if mode == "ratio":
        return f"×{v:.3f}"
    if metric.startswith("acc") or metric == "rankc":
        return f"{100 * v:+.1f}" if mode == "delta" else f"{100 * v:.1f}"
    return f"{v:+.1f}" if mode == "delta" else f"{v:.1f}"
