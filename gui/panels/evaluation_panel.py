"""Evaluation panel: every task of the engine × the languages it has data for, several variants
against the dense model with 95 % intervals, the chance level and a plain verdict per result, and
a "Try it" pane with the variants' outputs side by side."""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QPlainTextEdit, QPushButton, QSpinBox, QSplitter, QTableWidgetItem,
                               QTabWidget, QTextBrowser, QToolButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout,
                               QWidget)

from polyprune.datasets import default_data_dir
from polyprune.errors import PolypruneError
from polyprune.evaluation.tasks import TASKS, get_task
from polyprune.languages import TASK_TO_FLORES, language_name, resolve_language
from polyprune.recipe import EvalConfig, Recipe
from polyprune.session import BETTER, NO_CHANGE, WORSE, eval_key, evaluate_variants, try_variants
from polyprune.study import lower_is_better

from ..widgets import (GLOSSARY, LanguagePicker, PlotBox, bar_colors, debounce, fmt_value, group, heading,
                       help_label, monospace, plot_title, primary, results_table, style_plot, write_csv)

RESULT_COLUMNS = ["Task", "Language", "Metric", "n", "Chance", "Dense [95 % CI]", "Variant", "Variant's value [95 % CI]",
                  "Verdict (paired)", "Change [paired 95 % CI]"]
TASK_LABELS = {
    "xnli": "XNLI — does one sentence follow from another? (3 labels)",
    "pawsx": "PAWS-X — are two sentences paraphrases? (2 labels)",
    "xcopa": "XCOPA — cause or effect? (2 choices)",
    "xstorycloze": "XStoryCloze — the right end of a story (2 choices)",
    "xwinograd": "XWinograd — what a pronoun refers to (2 choices)",
    "flores_ppl": "FLORES perplexity — how well real sentences are predicted",
    "flores_mt": "FLORES translation to and from English — chrF++, BLEU (slow)",
}
TASK_NAMES = {"xnli": "XNLI", "pawsx": "PAWS-X", "xcopa": "XCOPA", "xstorycloze": "XStoryCloze",
              "xwinograd": "XWinograd", "flores_ppl": "FLORES perplexity", "flores_mt": "FLORES translation"}
DEFAULT_TICKS = {"flores_ppl": ["eng_Latn", "fra_Latn"], "xnli": ["en", "fr"]}
VERDICT_COLORS = {WORSE: "#c62828", BETTER: "#2e7d32", NO_CHANGE: "#57606a"}
VARIANT_COLORS = ["#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D"]


def lang_label(code: str) -> str:
    """``French (fra_Latn)`` for FLORES codes, ``French (fr)`` for task codes, else the code."""
    try:
        name = language_name(TASK_TO_FLORES.get(code, code))
    except PolypruneError:
        if "-" in code:  # a translation direction
            a, _, b = code.partition("-")
            try:
                return f"{language_name(a)} → {language_name(b)}"
            except PolypruneError:
                return code
        return code
    return f"{name} ({code})"


def short_lang(code: str) -> str:
    try:
        name = language_name(TASK_TO_FLORES.get(code, code))
    except PolypruneError:
        return code
    return name if len(name) <= 12 else code


def is_accuracy(metric: str) -> bool:
    return metric.startswith("acc") or metric == "prompt_mean"


def fmt_change(d: float | None, metric: str, dense: float | None = None) -> str:
    """A change as the table shows it: points for accuracies, relative change for perplexity."""
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "–"
    if is_accuracy(metric):
        return f"{100 * d:+.1f} pts"
    if abs(d) >= 1000:
        return f"{d:+,.0f}"
    if metric == "perplexity" and dense:
        return f"{d:+.3g} ({100 * d / dense:+.1f} %)"
    return f"{d:+.3g}"


class EvaluationPanel(QWidget):
    """Evaluate variants per task and language in the background and compare them with dense."""

    title = "Evaluation"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.custom_tasks: dict[str, str] = {}  # task name -> spec file
        self._ticks: dict[str, set[str]] = {k: set(v) for k, v in DEFAULT_TICKS.items()}

        self.data = QLineEdit(str(default_data_dir() or ""))
        self.data.setPlaceholderText("folder with flores200/, xnli/, pawsx/, … (e.g. ../shared/data)")
        self.data.setToolTip("The evaluation data: a folder with one sub-folder per task (flores200/, xnli/, pawsx/, "
                             "xcopa/, xstorycloze/, xwinograd/); only languages with a file there are offered")
        browse = QToolButton()
        browse.setText("Browse…")
        browse.clicked.connect(self._browse)
        data_row = QHBoxLayout()
        data_row.addWidget(self.data, 1)
        data_row.addWidget(browse)

        self.tasks = QTreeWidget()
        self.tasks.setHeaderLabels(["Task and language"])
        self.tasks.setToolTip("Tick the tasks and languages to run. Each task lists only the languages it has data "
                              "for in the data folder")
        self.tasks.itemChanged.connect(self._tick_changed)
        add_custom = QPushButton("Add a custom task…")
        add_custom.setToolTip("A multiple-choice task of your own: a .json or .yaml spec with file, context, choices "
                              "and answer (see the README)")
        add_custom.clicked.connect(self._add_custom_dialog)
        self.task_summary = QLabel("")
        self.task_summary.setObjectName("help")
        self.task_summary.setWordWrap(True)

        self.limit = QSpinBox()
        self.limit.setRange(0, 100000)
        self.limit.setValue(50)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("Evaluate only the first N examples (sentences for FLORES) per language; 0 = all. "
                              "Few examples give wide intervals: the table shows them")
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(16)
        self.batch.setToolTip("Examples per forward pass; lower it if memory runs out")
        self.split = QComboBox()
        self.split.addItems(["devtest", "dev"])
        self.split.setToolTip("FLORES split for perplexity and translation (devtest is not used by the demonstrations)")
        self.bootstrap = QSpinBox()
        self.bootstrap.setRange(0, 100000)
        self.bootstrap.setValue(1000)
        self.bootstrap.setToolTip("Bootstrap resamples for the 95 % intervals and the paired comparison (0 = none)")
        self.variants = QListWidget()
        self.variants.setMinimumHeight(56)
        self.variants.setMaximumHeight(110)
        self.variants.setToolTip("Variants to evaluate; the dense model is always evaluated, as the reference. "
                                 "Results already measured with the same settings are reused")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Data folder", data_row)
        form.addRow("Examples per language", self.limit)
        form.addRow("FLORES split", self.split)
        form.addRow("Bootstrap resamples", self.bootstrap)
        form.addRow("Batch size", self.batch)
        form.addRow("Variants", self.variants)

        self.eval_btn = primary(QPushButton("Evaluate"))
        self.eval_btn.setToolTip("Run the ticked tasks on the ticked variants and the dense model in the background "
                                 "(Ctrl+E)")
        self.eval_btn.clicked.connect(self.run)
        self.csv_btn = QPushButton("Save table (CSV)…")
        self.csv_btn.clicked.connect(self._save_csv)
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("help")
        self.progress_label.setWordWrap(True)
        btns = QHBoxLayout()
        btns.addWidget(self.eval_btn)
        btns.addStretch(1)
        btns.addWidget(self.csv_btn)

        left = QVBoxLayout()
        left.addWidget(self.tasks, 1)
        row = QHBoxLayout()
        row.addWidget(add_custom)
        row.addStretch(1)
        left.addLayout(row)
        left.addWidget(self.task_summary)
        left.addLayout(form)
        left.addLayout(btns)
        left.addWidget(self.progress_label)

        # --- results ---
        self.table = results_table(RESULT_COLUMNS, "Change = variant − dense on the same examples, with a paired "
                                                   "bootstrap 95 % interval. Perplexity: lower is better; accuracy: "
                                                   "higher is better. " + GLOSSARY["paired"])
        self.verdict_label = QLabel("")
        self.verdict_label.setObjectName("help")
        self.verdict_label.setWordWrap(True)
        table_page = QWidget()
        tl = QVBoxLayout(table_page)
        tl.addWidget(self.verdict_label)
        tl.addWidget(self.table, 1)

        self.ppl_box = PlotBox("eval_perplexity")
        style_plot(self.ppl_box.plot, "FLORES perplexity", "perplexity", "language")
        self.acc_box = PlotBox("eval_accuracy")
        style_plot(self.acc_box.plot, "Accuracy", "accuracy (%)", "language")
        self.acc_choice = QComboBox()
        self.acc_choice.setToolTip("Which task and metric the right chart shows")
        self.acc_choice.currentIndexChanged.connect(lambda _: self._draw_acc())
        self.acc_box.bar.insertWidget(0, self.acc_choice)
        for box in (self.ppl_box, self.acc_box):
            box.plot.addLegend(offset=(8, 4), colCount=3, labelTextColor="#24292f")
            box.plot.getViewBox().setMouseEnabled(x=False, y=False)
            box.saved.connect(lambda p: ctx.log(f"Saved plot {p}"))
            box.save_failed.connect(lambda pr, fx: ctx.error(pr, fx))
        plots = QSplitter(Qt.Horizontal)
        plots.addWidget(self.ppl_box)
        plots.addWidget(self.acc_box)

        self.views = QTabWidget()
        self.views.addTab(table_page, "Table")
        self.views.addTab(plots, "Charts")
        self.views.addTab(self._build_try(), "Try it")

        body = QSplitter(Qt.Horizontal)
        left_box = group("Tasks and languages", left)
        left_box.setMinimumWidth(340)
        body.addWidget(left_box)
        body.addWidget(group("Variants against dense", _wrap(self.views)))
        body.setSizes([400, 1000])
        lay = QVBoxLayout(self)
        lay.addWidget(heading("5 · Evaluation"))
        lay.addWidget(help_label(
            "Compare pruned variants with the dense model, task by task and language by language. Every number "
            "comes with its 95 % interval and the number of examples n; each change is tested on the same examples "
            "(paired bootstrap) and gets a plain verdict. Accuracy charts draw the chance level: a language at "
            "chance cannot show a loss."))
        lay.addWidget(body, 1)

        self._data_timer = debounce(self, 400, self.refresh_tasks)
        self.data.textChanged.connect(lambda _: self._data_timer.start())
        self.refresh_tasks()
        ctx.state.evaluated.connect(self.show_results)
        ctx.state.variants_changed.connect(self.refresh_variants)
        ctx.state.busy_changed.connect(self.set_busy)

    # --- try it ---------------------------------------------------------------------------
    def _build_try(self) -> QWidget:
        self.try_mode = QComboBox()
        self.try_mode.addItem("a FLORES sentence, translated", "flores")
        self.try_mode.addItem("my own prompt", "prompt")
        self.try_mode.setToolTip("What the variants continue: a few-shot translation of a FLORES-200 sentence (as "
                                 "the translation task builds it), or any text you type")
        self.try_lang = LanguagePicker("fra_Latn")
        self.try_lang.setToolTip("The language translated to or from English. " + self.try_lang.toolTip())
        self.try_dir = QComboBox()
        self.try_dir.addItem("into English", "xx-en")
        self.try_dir.addItem("from English", "en-xx")
        self.try_index = QSpinBox()
        self.try_index.setRange(1, 1012)
        self.try_index.setToolTip("Which sentence of FLORES devtest (1–1012)")
        self.try_tokens = QSpinBox()
        self.try_tokens.setRange(1, 512)
        self.try_tokens.setValue(48)
        self.try_tokens.setToolTip("At most this many new tokens per output")
        self.try_prompt = QPlainTextEdit()
        self.try_prompt.setFont(monospace())
        self.try_prompt.setPlaceholderText("Type a prompt, e.g. 'English: The weather is nice today.\\nFrench:'")
        self.try_prompt.setMaximumHeight(90)
        self.try_btn = QPushButton("Generate")
        self.try_btn.setToolTip("Greedy outputs of the dense model and the ticked variants, side by side")
        self.try_btn.clicked.connect(self.try_it)
        self.try_out = QTextBrowser()
        self.try_out.setHtml("<p style='color:#666'>Outputs of the dense model and the ticked variants appear here, "
                             "side by side.</p>")
        top = QHBoxLayout()
        top.addWidget(QLabel("Try"))
        top.addWidget(self.try_mode)
        top.addWidget(self.try_lang, 1)
        top.addWidget(self.try_dir)
        top.addWidget(QLabel("sentence"))
        top.addWidget(self.try_index)
        top.addWidget(QLabel("max tokens"))
        top.addWidget(self.try_tokens)
        top.addWidget(self.try_btn)
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.addLayout(top)
        lay.addWidget(self.try_prompt)
        lay.addWidget(self.try_out, 1)
        self.try_mode.currentIndexChanged.connect(self._try_mode_changed)
        self._try_mode_changed()
        return page

    def _try_mode_changed(self) -> None:
        flores = self.try_mode.currentData() == "flores"
        for w in (self.try_lang, self.try_dir, self.try_index):
            w.setEnabled(flores)
        self.try_prompt.setVisible(not flores)

    def try_it(self):
        """Generate with the dense model and the ticked variants, side by side."""
        st = self.ctx.state
        if not self.ctx.require_model():
            return None
        variants = self.chosen_variants()
        flores = prompt = None
        if self.try_mode.currentData() == "flores":
            try:
                lang = self.try_lang.checked_code("the language of Try it (Evaluation panel)")
            except PolypruneError as e:
                self.ctx.error(e.problem, e.fix or "")
                return None
            if lang == "eng_Latn":
                self.ctx.error("English cannot be translated into English",
                               "choose another language for Try it (Evaluation panel)")
                return None
            src, tgt = (lang, "eng_Latn") if self.try_dir.currentData() == "xx-en" else ("eng_Latn", lang)
            flores = {"data": self.data.text().strip() or None, "src": src, "tgt": tgt,
                      "index": self.try_index.value() - 1}
        else:
            prompt = self.try_prompt.toPlainText()
            if not prompt.strip():
                self.ctx.error("The prompt is empty", "type a prompt in Try it (Evaluation panel)")
                return None
        session, n = st.session, self.try_tokens.value()

        def job(progress):
            return try_variants(session, variants, prompt, flores=flores, max_new_tokens=n, progress=progress)

        def done(res):
            self.show_try(res)

        self.views.setCurrentIndex(2)
        return self.ctx.run_job("Trying variants", job, on_finished=done, on_progress=self._progress)

    def show_try(self, res) -> None:
        """Show a :class:`~polyprune.session.TryResult` as a table with one column per variant."""
        session = self.ctx.state.session
        names = {}
        for vid in res.outputs:
            try:
                names[vid] = session.get(vid).name
            except PolypruneError:
                names[vid] = vid
        head = "".join(f"<th align='left' style='padding:4px'>{html.escape(names[v])}</th>" for v in res.outputs)
        cells = "".join(f"<td valign='top' style='padding:6px; background:#f6f8fa; white-space:pre-wrap'>"
                        f"{html.escape(t) or '<i>(nothing)</i>'}</td>" for t in res.outputs.values())
        parts = []
        if res.source is not None:
            parts.append(f"<p><b>Sentence:</b> {html.escape(res.source)}<br><b>Reference translation:</b> "
                         f"{html.escape(res.reference or '')}</p>")
        else:
            parts.append(f"<p><b>Prompt:</b> <span style='white-space:pre-wrap'>{html.escape(res.prompt)}</span></p>")
        parts.append(f"<table width='100%' cellspacing='4'><tr>{head}</tr><tr>{cells}</tr></table>")
        parts.append("<p style='color:#666'>Greedy decoding; the output stops at the first line break for FLORES "
                     "sentences.</p>")
        self.try_out.setHtml("".join(parts))
        self.last_try = res

    # --- tasks and languages ------------------------------------------------------------
    def data_dir(self) -> str | None:
        return self.data.text().strip() or None

    def refresh_tasks(self) -> None:
        """Rebuild the task tree: each task with the languages it has data for (ticks are kept)."""
        self._ticks = self.checked() if self.tasks.topLevelItemCount() else self._ticks
        data = self.data_dir()
        folder = Path(data).expanduser() if data else None
        self.tasks.blockSignals(True)
        self.tasks.clear()
        flores_langs: list[str] = []
        if folder is not None and folder.is_dir():
            flores_langs = TASKS["flores_ppl"].available_languages(str(folder))
        for name, task in list(TASKS.items()) + [(n, None) for n in self.custom_tasks]:
            if task is None:
                try:
                    task = get_task(self.custom_tasks[name])
                except PolypruneError:
                    continue
            if name in ("flores_ppl", "flores_mt"):
                langs = [c for c in flores_langs if not (name == "flores_mt" and c == "eng_Latn")]
            elif folder is not None and folder.is_dir():
                langs = task.available_languages(str(folder))
                if not langs and getattr(task, "languages", ()) and name in self.custom_tasks:
                    langs = list(task.languages)
            else:
                langs = []
            top = QTreeWidgetItem([TASK_LABELS.get(name, f"{name} (custom task)")])
            top.setData(0, Qt.UserRole, name)
            if langs:
                top.setFlags(Qt.ItemIsEnabled | Qt.ItemIsUserCheckable | Qt.ItemIsAutoTristate)
            else:
                top.setFlags(Qt.NoItemFlags)
                top.setText(0, top.text(0) + " — no data in this folder")
            top.setToolTip(0, GLOSSARY.get({"flores_ppl": "perplexity", "xnli": "xnli", "flores_mt": "chrf"}.get(name, ""),
                                           ""))
            self.tasks.addTopLevelItem(top)
            ticked = self._ticks.get(name, set())
            for code in sorted(langs, key=lambda c: lang_label(c).lower()):
                child = QTreeWidgetItem([lang_label(code)])
                child.setData(0, Qt.UserRole, code)
                child.setFlags(Qt.ItemIsEnabled | Qt.ItemIsUserCheckable)
                child.setCheckState(0, Qt.Checked if code in ticked else Qt.Unchecked)
                top.addChild(child)
            if langs:
                top.setExpanded(bool(ticked & set(langs)) and len(langs) < 40)
        self.tasks.blockSignals(False)
        self._tick_changed()

    def _tick_changed(self, *args) -> None:
        ticks = self.checked()
        n = sum(len(v) for v in ticks.values())
        parts = [f"{TASK_NAMES.get(t, t)}: {', '.join(sorted(v))}" for t, v in ticks.items() if v]
        self.task_summary.setText(f"{n} task × language pair{'s' if n != 1 else ''} ticked"
                                  + (" — " + "; ".join(parts) if parts else ""))

    def checked(self) -> dict[str, set[str]]:
        """Ticked languages per task (a task without data in the folder keeps the ticks it was given,
        so a recipe's settings survive a missing folder)."""
        out: dict[str, set[str]] = {}
        for i in range(self.tasks.topLevelItemCount()):
            top = self.tasks.topLevelItem(i)
            name = top.data(0, Qt.UserRole)
            if top.childCount():
                langs = {top.child(j).data(0, Qt.UserRole) for j in range(top.childCount())
                         if top.child(j).checkState(0) == Qt.Checked}
            else:
                langs = set(self._ticks.get(name, set()))
            if langs:
                out[name] = langs
        return out

    def set_checked(self, ppl: list[str], xnli: list[str], others: dict[str, list[str]] | None = None) -> None:
        """Tick exactly these languages (FLORES codes for perplexity, task codes for XNLI and ``others``)."""
        ppl_codes = set()
        for c in ppl:
            try:
                ppl_codes.add(resolve_language(c))
            except PolypruneError:
                pass
        self._ticks = {"flores_ppl": ppl_codes, "xnli": {x.lower() for x in xnli}}
        for t, langs in (others or {}).items():
            self._ticks[t] = set(langs)
        self.tasks.clear()
        self.refresh_tasks()

    def _add_custom_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Custom task spec", "", "Task specs (*.json *.yaml *.yml)")
        if path:
            self.add_custom(path)

    def add_custom(self, path: str) -> str | None:
        """Add a custom task from its spec file; a dialog explains a bad spec."""
        try:
            task = get_task(str(path))
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        self.custom_tasks[task.name] = str(path)
        self.refresh_tasks()
        self.ctx.log(f"Added the custom task {task.name} from {path}")
        return task.name

    def refresh_variants(self) -> None:
        """List the session's variants; pruned ones are ticked by default."""
        st = self.ctx.state
        ticked = {self.variants.item(i).data(Qt.UserRole) for i in range(self.variants.count())
                  if self.variants.item(i).checkState() == Qt.Checked}
        known = {self.variants.item(i).data(Qt.UserRole) for i in range(self.variants.count())}
        self.variants.clear()
        for v in st.variants:
            item = QListWidgetItem(v.name if not v.is_dense else f"{v.name} (always: the reference)")
            item.setData(Qt.UserRole, v.id)
            if v.is_dense:
                item.setFlags(Qt.ItemIsEnabled)
                item.setCheckState(Qt.Checked)
            else:
                item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if (v.id in ticked or v.id not in known) else Qt.Unchecked)
            item.setToolTip(v.describe())
            self.variants.addItem(item)

    def chosen_variants(self) -> list:
        """The ticked variants (the dense model first)."""
        st = self.ctx.state
        out = []
        for i in range(self.variants.count()):
            item = self.variants.item(i)
            if item.checkState() == Qt.Checked:
                try:
                    out.append(st.session.get(item.data(Qt.UserRole)))
                except PolypruneError:
                    pass
        if st.session is not None and st.session.dense not in out:
            out.insert(0, st.session.dense)
        return out

    def config(self) -> EvalConfig:
        """The settings as an :class:`EvalConfig`."""
        ticks = self.checked()
        data = self.data_dir()
        limit = self.limit.value() or None
        other = {t: sorted(v) for t, v in ticks.items() if t not in ("flores_ppl", "xnli")}
        tasks = [self.custom_tasks.get(t, t) for t in other]
        return EvalConfig(ppl=sorted(ticks.get("flores_ppl", [])), xnli=sorted(ticks.get("xnli", [])),
                          tasks=tasks, task_languages={self.custom_tasks.get(t, t): v for t, v in other.items()},
                          limit=limit, ppl_limit=limit, data=data, split=self.split.currentText(),
                          batch_size=self.batch.value(), bootstrap=self.bootstrap.value(),
                          optional=data is None)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Evaluation data folder (with flores200/, xnli/, …)",
                                                self.data.text())
        if path:
            self.data.setText(path)

    # --- job ----------------------------------------------------------------------------
    def run(self):
        """Evaluate the dense model and the ticked variants in the background."""
        st = self.ctx.state
        if not self.ctx.require_model():
            return None
        cfg = self.config()
        data = Path(cfg.data).expanduser() if cfg.data else None
        if data is None or not data.is_dir():
            self.ctx.error(f"The evaluation data folder {data or '(none)'} does not exist",
                           "choose the folder that holds flores200/, xnli/, … in Data folder (Evaluation panel), "
                           "for example ../shared/data")
            return None
        if not cfg.enabled:
            self.ctx.error("No task is ticked", "tick at least one language of a task (Evaluation panel)")
            return None
        try:
            cfg.validate()
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        variants = self.chosen_variants()
        session = st.session
        key = eval_key(cfg)
        known = st.known_results(key)

        def job(progress):
            return evaluate_variants(session, variants, cfg, progress, known=known)

        def done(table):
            st.set_evaluation(table)
            n_new = len([v for v in variants if v.id not in known])
            self.progress_label.setText(f"Evaluated {n_new} model(s) in {table.seconds:.0f} s"
                                        + (f"; {len(known)} reused" if known else ""))
            self.ctx.log(f"Evaluated {', '.join(v.name for v in variants)}: {len(table.rows)} results")

        self.progress_label.setText("Starting…")
        started = self.ctx.run_job("Evaluating", job, on_finished=done, on_progress=self._progress,
                                   on_cancelled=lambda: self.progress_label.setText("Cancelled: nothing changed"))
        if started is None:  # refused (the reason is in a dialog): do not keep saying "Starting…"
            self.progress_label.setText("")
        return started

    def _progress(self, frac: float, msg: str) -> None:
        if msg:
            self.progress_label.setText(f"{100 * frac:.0f} % — {msg}")

    # --- view ---------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """The rows the table shows (see :class:`~polyprune.session.EvaluationTable`)."""
        table = self.ctx.state.table
        return list(table.rows) if table is not None else []

    def table_values(self) -> list[dict]:
        """What the table holds, read back from its cells' raw values (for tests)."""
        keys = ["task", "language", "metric", "n", "chance", "dense", "variant", "pruned", "verdict", "delta"]
        return [{k: self.table.item(r, c).data(Qt.UserRole) for c, k in enumerate(keys)}
                for r in range(self.table.rowCount())]

    def show_results(self, table) -> None:
        """Fill the table and the charts from an :class:`~polyprune.session.EvaluationTable`."""
        rows = self.rows()
        session = self.ctx.state.session
        names = {v.id: v.name for v in (session.variants if session is not None else [])}
        self.table.setRowCount(len(rows))
        counts = {WORSE: 0, BETTER: 0, NO_CHANGE: 0}
        for i, r in enumerate(rows):
            m = r["metric"]
            dense_ci, pruned_ci, diff_ci = r.get("dense_ci"), r.get("pruned_ci"), r.get("diff_ci")
            variant = r.get("variant")
            verdict = r.get("verdict", "")
            if verdict in counts and variant != "dense":
                counts[verdict] += 1
            verdict_text = verdict + (" · dense at chance level" if r.get("at_chance") else "")
            values = [
                (TASK_NAMES.get(r["task"], r["task"]), r["task"]),
                (lang_label(r["language"]), r["language"]),
                (m, m),
                ("" if r["n"] is None else str(r["n"]), r["n"]),
                ("" if r.get("chance") is None else f"{100 * r['chance']:.0f} %", r.get("chance")),
                (self._with_ci(r["dense"], dense_ci, m), r["dense"]),
                (_elide(names.get(variant, variant or ""), 26), variant),
                ("" if variant == "dense" else self._with_ci(r["pruned"], pruned_ci, m), r["pruned"]),
                ("" if variant == "dense" else verdict_text, verdict),
                ("" if variant == "dense" else fmt_change(r.get("diff", r["delta"]), m)
                 + (f" [{fmt_change(diff_ci[0], m)}, {fmt_change(diff_ci[1], m)}]".replace(" pts", "")
                    if diff_ci else ""), r["delta"]),
            ]
            for c, (text, raw) in enumerate(values):
                item = QTableWidgetItem(text)
                item.setData(Qt.UserRole, raw)
                if c in (3, 4, 5, 7, 9):
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if c in (8, 9) and variant != "dense":
                    item.setForeground(QBrush(QColor(VERDICT_COLORS.get(verdict, "#57606a"))))
                if c == 8 and verdict in (WORSE, BETTER):
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                if c == 4:
                    item.setToolTip(GLOSSARY["chance"])
                if c == 6:
                    item.setToolTip(names.get(variant, variant or ""))
                if c == 8:
                    item.setToolTip(GLOSSARY["paired"])
                if c == 9 and r["dense"] and r.get("diff") is not None and not is_accuracy(m):
                    item.setToolTip(f"{100 * r['diff'] / r['dense']:+.1f} % of the dense value")
                self.table.setItem(i, c, item)
        if rows:
            self.verdict_label.setText(
                f"Against dense, on the same examples: <b style='color:{VERDICT_COLORS[WORSE]}'>{counts[WORSE]} worse"
                f"</b>, <b style='color:{VERDICT_COLORS[BETTER]}'>{counts[BETTER]} better</b>, {counts[NO_CHANGE]} "
                "with no detectable change (the paired 95 % interval includes 0).")
        else:
            self.verdict_label.setText("")
        self._fill_acc_choice(rows)
        self._draw(self.ppl_box.plot, [r for r in rows if r["metric"] == "perplexity"], "FLORES perplexity",
                   percent=False)
        self._draw_acc()

    @staticmethod
    def _with_ci(v, ci, metric) -> str:
        if v is None:
            return "–"
        text = fmt_value(v, metric)
        if ci and ci[0] is not None:
            lo, hi = ci
            if is_accuracy(metric):
                text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
            else:
                text += f" [{lo:.4g}, {hi:.4g}]"
        return text

    def _fill_acc_choice(self, rows: list[dict]) -> None:
        prev = self.acc_choice.currentData()
        combos = list(dict.fromkeys((r["task"], r["metric"]) for r in rows if r["metric"] != "perplexity"))
        self.acc_choice.blockSignals(True)
        self.acc_choice.clear()
        for task, metric in combos:
            self.acc_choice.addItem(f"{TASK_NAMES.get(task, task)} · {metric}", f"{task}|{metric}")
        i = self.acc_choice.findData(prev) if prev is not None else -1
        if i < 0 and combos:
            i = next((k for k, c in enumerate(combos) if c[1] == "acc"), 0)
        self.acc_choice.setCurrentIndex(max(i, 0))
        self.acc_choice.blockSignals(False)

    def _draw_acc(self) -> None:
        data = self.acc_choice.currentData()
        choice = tuple(data.split("|", 1)) if data else None
        rows = [r for r in self.rows() if choice is not None and (r["task"], r["metric"]) == choice]
        title = f"{TASK_NAMES.get(choice[0], choice[0])} {choice[1]}" if choice else "Accuracy"
        self._draw(self.acc_box.plot, rows, title, percent=bool(choice) and is_accuracy(choice[1]))

    def _draw(self, plot: pg.PlotItem, rows: list[dict], what: str, percent: bool) -> None:
        """Grouped bars per language: dense and every variant, with 95 % intervals and the chance level."""
        for item in list(plot.items):
            if isinstance(item, (pg.BarGraphItem, pg.ErrorBarItem, pg.InfiniteLine)):
                plot.removeItem(item)
        for item in list(plot.listDataItems()):
            plot.removeItem(item)
        if plot.legend is not None:
            plot.legend.clear()
        if not rows:
            plot.getAxis("bottom").setTicks([[]])
            plot.setTitle(plot_title(what, "no results yet"))
            return
        langs = list(dict.fromkeys(r["language"] for r in rows))
        variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "dense"))
        session = self.ctx.state.session
        names = {v.id: v.name for v in (session.variants if session is not None else [])}
        series = [("dense", "dense")] + [(v, "pruned") for v in variants]
        scale = 100.0 if percent else 1.0
        k = len(series)
        w = 0.8 / k
        x0 = np.arange(len(langs), dtype=float)
        dense_c, _ = bar_colors()
        top = 1e-9
        for s, (vid, side) in enumerate(series):
            vals, lo, hi = [], [], []
            for lang in langs:
                r = next((r for r in rows if r["language"] == lang and (side == "dense" or r["variant"] == vid)), None)
                v = None if r is None else r[side]
                ci = None if r is None else r.get(f"{side}_ci")
                vals.append(np.nan if v is None else v * scale)
                lo.append(np.nan if not ci or ci[0] is None else ci[0] * scale)
                hi.append(np.nan if not ci or ci[1] is None else ci[1] * scale)
            x = x0 - 0.4 + w * (s + 0.5)
            color = dense_c if vid == "dense" else QColor(VARIANT_COLORS[(s - 1) % len(VARIANT_COLORS)])
            h = np.nan_to_num(np.array(vals))
            plot.addItem(pg.BarGraphItem(x=x, height=h, width=w * 0.92, brush=color, pen=pg.mkPen("#444", width=0.5),
                                         name=names.get(vid, vid)))
            lo_a, hi_a, v_a = np.array(lo), np.array(hi), np.array(vals)
            ok = np.isfinite(lo_a) & np.isfinite(hi_a) & np.isfinite(v_a)
            if ok.any():
                plot.addItem(pg.ErrorBarItem(x=x[ok], y=v_a[ok], top=hi_a[ok] - v_a[ok], bottom=v_a[ok] - lo_a[ok],
                                             beam=w * 0.3, pen=pg.mkPen("#222", width=1.2)))
            top = max([top] + [t for t in (np.nanmax(hi_a) if np.isfinite(hi_a).any() else 0,
                                           np.nanmax(v_a) if np.isfinite(v_a).any() else 0)])
        chance = rows[0].get("chance")
        if percent and chance is not None:
            line = pg.InfiniteLine(pos=chance * scale, angle=0, pen=pg.mkPen("#c62828", width=1.5, style=Qt.DashLine),
                                   label=f"chance {100 * chance:.0f} %", labelOpts={"position": 0.06, "color": "#c62828",
                                                                                   "anchors": [(0, 1), (0, 1)]})
            plot.addItem(line)
        plot.getAxis("bottom").setTicks([[(i, short_lang(c)) for i, c in enumerate(langs)]])
        plot.setXRange(-0.6, len(langs) - 0.4, padding=0)
        plot.setYRange(0, max(top * 1.35, 50 if percent else top * 1.35), padding=0)
        better = "lower is better" if lower_is_better(rows[0]["metric"]) else "higher is better"
        plot.setTitle(plot_title(what, f"{better} · bars: value, whiskers: 95 % interval"
                                       + (" · dashed: chance level" if percent and chance is not None else "")))
        plot.setLabel("left", "accuracy (%)" if percent else rows[0]["metric"])

    def _save_csv(self) -> None:
        if not self.rows():
            self.ctx.error("No results to save yet", "press Evaluate first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save evaluation", "evaluation.csv", "CSV (*.csv)")
        if path:
            try:
                self.save_csv(path)
            except OSError as e:
                self.ctx.error(f"Could not write {path}: {e.strerror or e}", "choose a folder you can write to")

    def save_csv(self, path: str | Path) -> Path:
        """Write the table as CSV (plain columns; ``pandas.read_csv`` reads it as is)."""
        session = self.ctx.state.session
        names = {v.id: v.name for v in (session.variants if session is not None else [])}

        def num(v):
            return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"

        def ci(c, i):
            return num(c[i]) if c else ""
        out = write_csv(path, ["task", "language", "metric", "n", "chance", "dense", "dense_ci_low", "dense_ci_high",
                               "variant", "value", "ci_low", "ci_high", "difference", "diff_ci_low", "diff_ci_high",
                               "verdict"],
                        [[r["task"], r["language"], r["metric"], r["n"], num(r.get("chance")), num(r["dense"]),
                          ci(r.get("dense_ci"), 0), ci(r.get("dense_ci"), 1), names.get(r["variant"], r["variant"]),
                          num(r["pruned"]), ci(r.get("pruned_ci"), 0), ci(r.get("pruned_ci"), 1),
                          num(r.get("diff", r["delta"])), ci(r.get("diff_ci"), 0), ci(r.get("diff_ci"), 1),
                          r.get("verdict", "")] for r in self.rows()])
        self.ctx.log(f"Saved {out}")
        return out

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.eval_btn.setEnabled(not busy)
        self.try_btn.setEnabled(not busy)

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        recipe.evaluation = self.config()

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        ev = recipe.evaluation
        others = {}
        for t in ev.tasks:
            langs = ev.task_languages.get(t) or ev.languages
            try:
                name = get_task(t).name
            except PolypruneError:
                continue
            if t != name:
                self.custom_tasks[name] = t
            others[name] = list(langs)
        if ev.data:
            self.data.setText(ev.data)
        self.set_checked(list(ev.ppl), [x.lower() for x in ev.xnli], others)
        self.limit.setValue(ev.limit or ev.ppl_limit or 0)
        self.split.setCurrentIndex(max(0, self.split.findText(ev.split)))
        self.batch.setValue(ev.batch_size)
        self.bootstrap.setValue(ev.bootstrap)


def _elide(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _wrap(widget: QWidget) -> QVBoxLayout:
    lay = QVBoxLayout()
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(widget)
    return lay
