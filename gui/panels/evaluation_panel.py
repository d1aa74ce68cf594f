"""Evaluation panel: tasks × languages checklist, dense vs pruned table and grouped bar charts."""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QHeaderView, QLineEdit, QPushButton, QSpinBox, QSplitter, QTableWidget,
                               QTableWidgetItem, QToolButton, QVBoxLayout, QWidget)

from polyprune.errors import PolypruneError
from polyprune.evaluation import XNLI_LANGUAGES
from polyprune.languages import FLORES_LANGUAGES, TASK_TO_FLORES, language_name
from polyprune.pipeline import evaluate
from polyprune.pruning import apply_mask, restore
from polyprune.recipe import EvalConfig, Recipe, default_data_dir

from ..state import EvalState, eval_key
from ..widgets import (GLOSSARY, LanguagePicker, PlotBox, bar_colors, fmt_value, group, heading, help_label,
                       plot_title, primary, results_table, style_plot, write_csv)

FLORES_TO_XNLI = {TASK_TO_FLORES[x]: x for x in XNLI_LANGUAGES}
RESULT_COLUMNS = ["Task", "Language", "Metric", "Examples", "Dense", "Pruned", "Change"]
TASK_NAMES = {"flores_ppl": "FLORES perplexity", "xnli": "XNLI accuracy"}


def lang_label(code: str) -> str:
    """``French (fra_Latn)`` for FLORES codes, ``French (fr)`` for XNLI codes."""
    try:
        return f"{language_name(code)} ({code})"
    except PolypruneError:
        return code


class EvaluationPanel(QWidget):
    """Evaluate the dense and the pruned model per language, in the background."""

    title = "Evaluation"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx

        self.data = QLineEdit(str(default_data_dir() or ""))
        self.data.setPlaceholderText("folder with flores200/ and xnli/ (e.g. ../shared/data)")
        self.data.setToolTip("The evaluation data: a folder with flores200/ (FLORES-200) and xnli/ (XNLI test files)")
        browse = QToolButton()
        browse.setText("Browse…")
        browse.clicked.connect(self._browse)
        data_row = QHBoxLayout()
        data_row.addWidget(self.data, 1)
        data_row.addWidget(browse)

        self.langs = QTableWidget(0, 3)
        self.langs.setHorizontalHeaderLabels(["Language", "FLORES perplexity", "XNLI accuracy"])
        self.langs.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.langs.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeToContents)
        self.langs.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeToContents)
        self.langs.verticalHeader().setVisible(False)
        self.langs.setSelectionMode(QAbstractItemView.NoSelection)
        self.langs.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.langs.horizontalHeaderItem(1).setToolTip(GLOSSARY["perplexity"])
        self.langs.horizontalHeaderItem(2).setToolTip(GLOSSARY["xnli"])
        self.langs.setToolTip("Tick the tasks to run for each language. XNLI has 15 languages; FLORES perplexity "
                              "works for all 204 (add more below)")
        for code in sorted({TASK_TO_FLORES[x] for x in XNLI_LANGUAGES}, key=lambda c: FLORES_LANGUAGES[c]):
            self.add_language(code, ppl=code in ("eng_Latn", "fra_Latn"), xnli=code in ("eng_Latn", "fra_Latn"))

        self.add_picker = LanguagePicker("swh_Latn")
        add_btn = QPushButton("Add")
        add_btn.setToolTip("Add this language to the list (FLORES perplexity)")
        add_btn.clicked.connect(lambda: self.add_language(self.add_picker.code(), ppl=True, xnli=True))
        add_row = QHBoxLayout()
        add_row.addWidget(self.add_picker, 1)
        add_row.addWidget(add_btn)

        self.limit = QSpinBox()
        self.limit.setRange(0, 100000)
        self.limit.setValue(50)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("Evaluate only the first N sentences / examples per language (0 = all); small is fast")
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(16)
        self.batch.setToolTip("Sequences per forward pass; lower it if memory runs out")
        self.split = QComboBox()
        self.split.addItems(["devtest", "dev"])
        self.split.setToolTip("FLORES split for perplexity (devtest is not used by the demonstrations)")
        self.dense = QCheckBox("Also evaluate the dense model (for the change column)")
        self.dense.setChecked(True)
        self.dense.setToolTip("When the model is pruned, the dense numbers are measured by putting the removed "
                              "weights back for a moment; they are reused while the settings stay the same")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Data folder", data_row)
        form.addRow("Example limit", self.limit)
        form.addRow("FLORES split", self.split)
        form.addRow("Batch size", self.batch)
        form.addRow("", self.dense)

        self.eval_btn = primary(QPushButton("Evaluate"))
        self.eval_btn.setToolTip("Run the ticked tasks in the background (Ctrl+E)")
        self.eval_btn.clicked.connect(self.run)
        self.csv_btn = QPushButton("Save table (CSV)…")
        self.csv_btn.clicked.connect(self._save_csv)
        btns = QHBoxLayout()
        btns.addWidget(self.eval_btn)
        btns.addStretch(1)
        btns.addWidget(self.csv_btn)

        left = QVBoxLayout()
        left.addWidget(self.langs, 1)
        left.addLayout(add_row)
        left.addLayout(form)
        left.addLayout(btns)

        self.table = results_table(RESULT_COLUMNS, "Change = pruned − dense. Perplexity: lower is better; accuracy: higher is better")

        self.ppl_box = PlotBox("eval_perplexity")
        style_plot(self.ppl_box.plot, "FLORES perplexity", "perplexity", "language")
        self.acc_box = PlotBox("eval_xnli")
        style_plot(self.acc_box.plot, "XNLI accuracy", "accuracy (%)", "language")
        for box in (self.ppl_box, self.acc_box):
            box.plot.addLegend(offset=(8, 4), colCount=2, labelTextColor="#24292f")
            box.plot.getViewBox().setMouseEnabled(x=False, y=False)
            box.saved.connect(lambda p: ctx.log(f"Saved plot {p}"))
            box.save_failed.connect(lambda pr, fx: ctx.error(pr, fx))
        plots = QSplitter(Qt.Horizontal)
        plots.addWidget(self.ppl_box)
        plots.addWidget(self.acc_box)
        right = QSplitter(Qt.Vertical)
        right.addWidget(self.table)
        right.addWidget(plots)
        right.setSizes([260, 420])
        rlay = QVBoxLayout()
        rlay.addWidget(right)

        body = QHBoxLayout()
        body.addWidget(group("Tasks and languages", left), 5)
        body.addWidget(group("Dense vs pruned", rlay), 8)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("5 · Evaluation"))
        lay.addWidget(help_label(
            "Compare the dense and the pruned model language by language: FLORES perplexity (how well the model "
            "predicts real sentences) and XNLI accuracy (reasoning about pairs of sentences). A small example "
            "limit gives a quick first look."))
        lay.addLayout(body, 1)

        ctx.state.evaluated.connect(self.show_results)
        ctx.state.busy_changed.connect(self.set_busy)

    # --- languages ----------------------------------------------------------------------
    def add_language(self, code: str, ppl: bool = False, xnli: bool = False) -> None:
        """Add a row for ``code`` (a FLORES code) unless present; tick the given tasks."""
        for r in range(self.langs.rowCount()):
            if self.langs.item(r, 0).data(Qt.UserRole) == code:
                self.langs.item(r, 1).setCheckState(Qt.Checked if ppl else self.langs.item(r, 1).checkState())
                return
        r = self.langs.rowCount()
        self.langs.insertRow(r)
        name = QTableWidgetItem(f"{FLORES_LANGUAGES[code]} — {code}")
        name.setData(Qt.UserRole, code)
        self.langs.setItem(r, 0, name)
        p = QTableWidgetItem()
        p.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
        p.setCheckState(Qt.Checked if ppl else Qt.Unchecked)
        self.langs.setItem(r, 1, p)
        x = QTableWidgetItem()
        if code in FLORES_TO_XNLI:
            x.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
            x.setCheckState(Qt.Checked if xnli else Qt.Unchecked)
            x.setData(Qt.UserRole, FLORES_TO_XNLI[code])
        else:
            x.setFlags(Qt.NoItemFlags)
            x.setText("n/a")
            x.setToolTip("XNLI has no data in this language")
        self.langs.setItem(r, 2, x)

    def set_checked(self, ppl: list[str], xnli: list[str]) -> None:
        """Tick exactly these languages (FLORES codes for perplexity, two-letter codes for XNLI)."""
        from polyprune.languages import resolve_language

        ppl_codes = set()
        for c in ppl:
            try:
                ppl_codes.add(resolve_language(c))
            except PolypruneError:
                pass
        for c in ppl_codes | {TASK_TO_FLORES[x] for x in xnli if x in TASK_TO_FLORES}:
            self.add_language(c)
        for r in range(self.langs.rowCount()):
            code = self.langs.item(r, 0).data(Qt.UserRole)
            self.langs.item(r, 1).setCheckState(Qt.Checked if code in ppl_codes else Qt.Unchecked)
            xi = self.langs.item(r, 2)
            if xi.flags() & Qt.ItemIsUserCheckable:
                xi.setCheckState(Qt.Checked if xi.data(Qt.UserRole) in xnli else Qt.Unchecked)

    def checked(self) -> tuple[list[str], list[str]]:
        """Ticked languages: ``(FLORES codes for perplexity, two-letter codes for XNLI)``."""
        ppl, xnli = [], []
        for r in range(self.langs.rowCount()):
            if self.langs.item(r, 1).checkState() == Qt.Checked:
                ppl.append(self.langs.item(r, 0).data(Qt.UserRole))
            xi = self.langs.item(r, 2)
            if xi.flags() & Qt.ItemIsUserCheckable and xi.checkState() == Qt.Checked:
                xnli.append(xi.data(Qt.UserRole))
        return ppl, xnli

    def config(self) -> EvalConfig:
        """The settings as an :class:`EvalConfig`."""
        ppl, xnli = self.checked()
        data = self.data.text().strip() or None
        limit = self.limit.value() or None
        kw = dict(ppl=ppl, xnli=xnli, limit=limit, data=data, split=self.split.currentText(),
                  batch_size=self.batch.value(), dense=self.dense.isChecked(), optional=data is None)
        if "ppl_limit" in {f.name for f in fields(EvalConfig)}:
            kw["ppl_limit"] = limit  # one limit for every task in the panel
        return EvalConfig(**kw)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Evaluation data folder (with flores200/ and xnli/)",
                                                self.data.text())
        if path:
            self.data.setText(path)

    # --- job ----------------------------------------------------------------------------
    def run(self):
        """Evaluate in the background: the pruned model and, if asked, the dense one."""
        st = self.ctx.state
        if not self.ctx.require_model():
            return None
        cfg = self.config()
        if not cfg.enabled:
            self.ctx.error("No task is ticked", "tick FLORES perplexity and/or XNLI accuracy for at least one language")
            return None
        data = Path(cfg.data).expanduser() if cfg.data else None
        if data is None or not data.is_dir():
            self.ctx.error(f"The evaluation data folder {data or '(none)'} does not exist",
                           "choose the folder that holds flores200/ and xnli/ (for example ../shared/data)")
            return None
        loaded = st.loaded
        key = eval_key(cfg)
        result = st.prune_result
        reuse_dense = list(st.eval.dense) if st.eval.dense_key == key and st.eval.dense else None
        want_dense = cfg.dense and result is not None and reuse_dense is None

        def job(progress):
            if result is None:
                return {"dense": evaluate(loaded, cfg, progress), "pruned": []}
            dense = reuse_dense or []
            if want_dense:
                modules = dict(loaded.model.named_modules())
                restore(loaded.model, result.records)
                try:
                    dense = evaluate(loaded, cfg, progress.sub(0, 0.5))
                finally:  # the model goes back to its pruned state whatever happens
                    for name, rec in result.records.items():
                        apply_mask(modules[name], rec.mask)
                pruned = evaluate(loaded, cfg, progress.sub(0.5, 1.0))
            else:
                pruned = evaluate(loaded, cfg, progress)
            return {"dense": dense, "pruned": pruned}

        def done(out):
            if result is None:  # the dense model was evaluated
                ev = EvalState(dense=out["dense"], pruned=[], dense_key=key)
            else:  # dense numbers only when measured (or reused) for these very settings
                ev = EvalState(dense=list(out["dense"]), pruned=out["pruned"],
                               dense_key=key if out["dense"] else None, pruned_key=key)
            st.set_eval(ev)
            which = "dense and pruned" if out["pruned"] and out["dense"] else ("pruned" if out["pruned"] else "dense")
            self.ctx.log(f"Evaluated the {which} model: {len(ev.rows())} results")

        return self.ctx.run_job("Evaluating", job, on_finished=done)

    # --- view ---------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """The rows the table shows: ``compare(dense, pruned)`` plus the example count."""
        ev = self.ctx.state.eval
        n = {(r.task, r.language, r.metric): r.n for r in list(ev.dense) + list(ev.pruned)}
        return [r | {"n": n.get((r["task"], r["language"], r["metric"]))} for r in ev.rows()]

    def table_values(self) -> list[dict]:
        """What the table holds, read back from its cells' raw values (for tests)."""
        out = []
        for r in range(self.table.rowCount()):
            out.append({k: self.table.item(r, c).data(Qt.UserRole)
                        for c, k in enumerate(["task", "language", "metric", "n", "dense", "pruned", "delta"])})
        return out

    def show_results(self, ev: EvalState) -> None:
        """Fill the table and the bar charts from the evaluation state."""
        rows = self.rows()
        self.table.setRowCount(len(rows))
        green, red = QColor("#2e7d32"), QColor("#c62828")
        for i, r in enumerate(rows):
            vals = [TASK_NAMES.get(r["task"], r["task"]), lang_label(r["language"]), r["metric"],
                    "" if r["n"] is None else str(r["n"]), fmt_value(r["dense"], r["metric"]),
                    fmt_value(r["pruned"], r["metric"]), self._delta_text(r)]
            raw = [r["task"], r["language"], r["metric"], r["n"], r["dense"], r["pruned"], r["delta"]]
            for c, (v, rv) in enumerate(zip(vals, raw)):
                item = QTableWidgetItem(v)
                item.setData(Qt.UserRole, rv)
                if c >= 3:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if c == 6 and r["delta"] is not None:
                    better = (r["delta"] < 0) if r["metric"] == "perplexity" else (r["delta"] > 0)
                    item.setForeground(QBrush(green if better else red))
                self.table.setItem(i, c, item)
        self._draw(self.ppl_box.plot, [r for r in rows if r["metric"] == "perplexity"], percent=False)
        self._draw(self.acc_box.plot, [r for r in rows if r["metric"] == "acc"], percent=True)

    @staticmethod
    def _delta_text(r: dict) -> str:
        d = r["delta"]
        if d is None:
            return "–"
        if r["metric"] == "acc":
            return f"{100 * d:+.1f} pts"
        rel = d / r["dense"] * 100 if r["dense"] else float("nan")
        return f"{d:+.3f} ({rel:+.1f} %)"

    def _draw(self, plot: pg.PlotItem, rows: list[dict], percent: bool) -> None:
        for item in list(plot.listDataItems()) + [i for i in plot.items if isinstance(i, pg.BarGraphItem)]:
            plot.removeItem(item)
        if plot.legend is not None:
            plot.legend.clear()
        if not rows:
            plot.getAxis("bottom").setTicks([[]])
            return
        dense_c, pruned_c = bar_colors()
        x = np.arange(len(rows), dtype=float)
        have_dense = any(r["dense"] is not None for r in rows)
        have_pruned = any(r["pruned"] is not None for r in rows)
        w = 0.38 if have_dense and have_pruned else 0.6
        scale = 100.0 if percent else 1.0
        if have_dense:
            h = np.array([(r["dense"] or 0) * scale for r in rows])
            plot.addItem(pg.BarGraphItem(x=x - (w / 2 if have_pruned else 0), height=h, width=w, brush=dense_c,
                                         pen=pg.mkPen("#2f4b6e"), name="dense"))
        if have_pruned:
            h = np.array([(r["pruned"] or 0) * scale for r in rows])
            plot.addItem(pg.BarGraphItem(x=x + (w / 2 if have_dense else 0), height=h, width=w, brush=pruned_c,
                                         pen=pg.mkPen("#9a4f00"), name="pruned"))
        plot.getAxis("bottom").setTicks([[(i, _short(r["language"])) for i, r in enumerate(rows)]])
        top = max([(r[k] or 0) * scale for r in rows for k in ("dense", "pruned")] + [1e-9])
        plot.setXRange(-0.7, len(rows) - 0.3, padding=0)
        plot.setYRange(0, max(top * 1.3, 50) if percent else top * 1.3, padding=0)
        better = "higher is better" if percent else "lower is better"
        what = "XNLI accuracy" if percent else "FLORES perplexity"
        plot.setTitle(plot_title(what, f"{better} · dense vs pruned per language"))

    def _save_csv(self) -> None:
        if not self.ctx.state.eval.rows():
            self.ctx.error("No results to save yet", "press Evaluate first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save evaluation", "evaluation.csv", "CSV (*.csv)")
        if path:
            self.save_csv(path)

    def save_csv(self, path: str | Path) -> Path:
        """Write the dense-vs-pruned table as CSV."""
        out = write_csv(path, ["task", "language", "metric", "n", "dense", "pruned", "delta"],
                        [[r["task"], r["language"], r["metric"], r["n"], _num(r["dense"]), _num(r["pruned"]),
                          _num(r["delta"])] for r in self.rows()])
        self.ctx.log(f"Saved {out}")
        return out

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.eval_btn.setEnabled(not busy)

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        recipe.evaluation = self.config()

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        ev = recipe.evaluation
        self.set_checked(list(ev.ppl), [x.lower() for x in ev.xnli])
        self.limit.setValue(ev.limit or getattr(ev, "ppl_limit", None) or 0)
        if ev.data:
            self.data.setText(ev.data)
        self.split.setCurrentIndex(max(0, self.split.findText(ev.split)))
        self.batch.setValue(ev.batch_size)
        self.dense.setChecked(ev.dense)


def _short(code: str) -> str:
    try:
        name = language_name(code)
    except PolypruneError:
        return code
    return name if len(name) <= 12 else code


def _num(v):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"
