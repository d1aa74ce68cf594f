"""Calibration panel: translation demonstrations (source, languages, shots, template), raw text,
or a mix of languages in proportions, with a live preview."""
from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QTableWidget,
                               QTextBrowser, QToolButton, QVBoxLayout, QWidget)

from polyprune.calibration import spec_label
from polyprune.datasets import HUB_DATASET, builtin_languages, builtin_pairs, default_data_dir
from polyprune.errors import PolypruneError
from polyprune.languages import language_name, resolve_language
from polyprune.pipeline import build_calibration
from polyprune.recipe import DEFAULT_TEMPLATE, DIRECTIONS, DemoConfig, Recipe, demos_spec
from polyprune.session import preview_calibration

from ..widgets import (GLOSSARY, LanguagePicker, debounce, group, heading, help_label, monospace, primary,
                       window_words)

SOURCES = [
    ("builtin", "Built-in pairs (36 sentences, 11 languages)"),
    ("flores", "FLORES-200 folder (204 languages)"),
    ("file", "File of pairs (TSV, CSV or JSON Lines)"),
    ("hub", "Hugging Face hub (FLORES+, needs network)"),
    ("text", "Raw text lines (no translation pairs)"),
    ("mix", "Mix of languages in proportions (FLORES-200 text)"),
]
LOCATION_LABELS = {"builtin": "", "flores": "Folder", "file": "File", "hub": "Dataset", "text": "Text file",
                   "mix": "FLORES folder"}
PLACEHOLDERS = {"flores": "folder with dev/ and devtest/, e.g. ../shared/data/flores200",
                "file": "a .tsv, .csv or .jsonl file with source and target columns",
                "hub": HUB_DATASET, "text": "a text file: one calibration sample per line",
                "mix": "FLORES-200 folder (empty: the built-in sentences)"}
PREVIEW_SAMPLES = 3
MIX_STYLES = [("text", "plain sentences"), ("demo", "demonstration lines (\"English: …\")")]
DEFAULT_MIX = {"eng_Latn": 0.5, "fra_Latn": 0.25, "swh_Latn": 0.25}


def default_flores_dir() -> str:
    """The FLORES-200 folder of the default data folder, or an empty string."""
    d = default_data_dir()
    if d is not None and (d / "flores200").is_dir():
        return str(d / "flores200")
    return ""


def default_location(kind: str) -> str:
    """What the location field holds when a source is chosen for the first time."""
    return {"flores": default_flores_dir(), "hub": HUB_DATASET, "mix": default_flores_dir()}.get(kind, "")


class MixEditor(QWidget):
    """Languages and their shares of a calibration mix (shares must add up to 1)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Language", "Share"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(110)
        self.table.setToolTip(GLOSSARY["mix"])
        self.add_btn = QToolButton()
        self.add_btn.setText("Add language")
        self.add_btn.clicked.connect(lambda: self.add("deu_Latn", 0.0))
        self.del_btn = QToolButton()
        self.del_btn.setText("Remove")
        self.del_btn.clicked.connect(self.remove_current)
        self.even_btn = QToolButton()
        self.even_btn.setText("Equal shares")
        self.even_btn.clicked.connect(self.equal_shares)
        self.style = QComboBox()
        for key, label in MIX_STYLES:
            self.style.addItem(label, key)
        self.style.setToolTip("How each sample is written: sentences joined by spaces, or one "
                              "\"Language: sentence\" line per sentence (Kim et al.'s monolingual prompts)")
        self.sum_label = QLabel("")
        row = QHBoxLayout()
        for w in (self.add_btn, self.del_btn, self.even_btn):
            row.addWidget(w)
        row.addStretch(1)
        row.addWidget(self.sum_label)
        style_row = QHBoxLayout()
        style_row.addWidget(QLabel("Samples written as"))
        style_row.addWidget(self.style, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.table)
        lay.addLayout(row)
        lay.addLayout(style_row)
        self.changed = None  # a callable, set by the panel
        self.set_proportions(DEFAULT_MIX)

    def add(self, code: str, share: float) -> None:
        """Add a language row."""
        r = self.table.rowCount()
        self.table.insertRow(r)
        picker = LanguagePicker(code)
        picker.language_changed.connect(lambda _: self._changed())
        spin = QDoubleSpinBox()
        spin.setRange(0.0, 1.0)
        spin.setDecimals(3)
        spin.setSingleStep(0.05)
        spin.setValue(share)
        spin.valueChanged.connect(lambda _: self._changed())
        self.table.setCellWidget(r, 0, picker)
        self.table.setCellWidget(r, 1, spin)
        self._changed()

    def remove_current(self) -> None:
        r = self.table.currentRow()
        if r < 0:
            r = self.table.rowCount() - 1
        if r >= 0:
            self.table.removeRow(r)
            self._changed()

    def equal_shares(self) -> None:
        n = self.table.rowCount()
        for r in range(n):
            spin = self.table.cellWidget(r, 1)
            spin.blockSignals(True)
            spin.setValue(round(1.0 / n, 3) if r < n - 1 else round(1.0 - (n - 1) * round(1.0 / n, 3), 3))
            spin.blockSignals(False)
        self._changed()

    def set_proportions(self, props: dict) -> None:
        self.table.setRowCount(0)
        for code, share in props.items():
            self.add(code, float(share))

    def proportions(self) -> dict[str, float]:
        """``{FLORES code: share}``.

        Raises:
            PolypruneError: a row whose language is not valid (named by its row).
        """
        out: dict[str, float] = {}
        for r in range(self.table.rowCount()):
            code = self.table.cellWidget(r, 0).checked_code(f"Language {r + 1} of the mix (Demonstrations panel)")
            out[code] = out.get(code, 0.0) + float(self.table.cellWidget(r, 1).value())
        return out

    def _changed(self) -> None:
        total = sum(float(self.table.cellWidget(r, 1).value()) for r in range(self.table.rowCount()))
        ok = abs(total - 1.0) < 1e-6
        self.sum_label.setText(f"sum {total:.3g}" + ("" if ok else " — must be 1"))
        self.sum_label.setStyleSheet("" if ok else "color: #b71c1c")
        if self.changed is not None:
            self.changed()


class DemosPanel(QWidget):
    """Settings of the calibration data, with a live preview of the first samples."""

    title = "Demonstrations"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self._preview_gen = 0
        self._updating = False
        self._locations: dict[str, str] = {}
        self._kind = "builtin"
        self._columns = (None, None)

        self.source = QComboBox()
        for key, label in SOURCES:
            self.source.addItem(label, key)
        self.source.setToolTip("Where the calibration sentences come from. FLORES-200 has the same 997 sentences "
                               "translated into 204 languages")
        self.location = QLineEdit()
        self.location.setToolTip("The FLORES-200 folder (with dev/ and devtest/), the pairs file, the hub dataset, "
                                 "or the text file, depending on the source")
        self.browse = QToolButton()
        self.browse.setText("Browse…")
        self.browse.clicked.connect(self._browse)
        loc = QHBoxLayout()
        loc.addWidget(self.location, 1)
        loc.addWidget(self.browse)

        self.src = LanguagePicker("eng_Latn")
        self.src.setToolTip("Language of the first sentence of each pair. " + self.src.toolTip())
        self.tgt = LanguagePicker("fra_Latn")
        self.tgt.setToolTip("Language the sentences are translated into. " + self.tgt.toolTip())
        self.swap = QToolButton()
        self.swap.setText("⇅ swap")
        self.swap.setToolTip("Swap source and target language")
        self.swap.clicked.connect(self._swap)
        self.direction = QComboBox()
        for d, label in zip(DIRECTIONS, ["source → target", "target → source", "both, alternating"]):
            self.direction.addItem(label, d)
        self.direction.setToolTip("Which way the demonstrations translate")
        self.shots = QSpinBox()
        self.shots.setRange(1, 32)
        self.shots.setToolTip(GLOSSARY["shots"])
        self.samples = QSpinBox()
        self.samples.setRange(1, 4096)
        self.samples.setToolTip(GLOSSARY["samples"])
        self.seq_len = QSpinBox()
        self.seq_len.setRange(8, 8192)
        self.seq_len.setSingleStep(64)
        self.seq_len.setSuffix(" tokens")
        self.seq_len.setToolTip(GLOSSARY["seq_len"])
        self.split = QComboBox()
        self.split.addItems(["dev", "devtest"])
        self.split.setToolTip("FLORES split to draw sentences from (Kim et al. use dev; devtest is kept for evaluation)")
        self.monolingual = QCheckBox("Monolingual (source sentences only)")
        self.monolingual.setToolTip("Drop the translations: useful to compare which features translation lights up")
        self.shuffle = QCheckBox("Shuffle, seed")
        self.shuffle.setToolTip("Draw sentences in a random but repeatable order instead of file order")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2 ** 31 - 1)
        self.seed.setToolTip("The same seed always draws the same sentences")
        shuf = QHBoxLayout()
        shuf.addWidget(self.shuffle)
        shuf.addWidget(self.seed)
        shuf.addStretch(1)

        self.template = QPlainTextEdit()
        self.template.setFont(monospace())
        self.template.setFixedHeight(54)
        self.template.setToolTip(GLOSSARY["template"])
        self.reset_template = QToolButton()
        self.reset_template.setText("Reset")
        self.reset_template.setToolTip("Back to the template of Kim et al. (2024)")
        self.reset_template.clicked.connect(lambda: self.template.setPlainText(DEFAULT_TEMPLATE))
        tpl = QHBoxLayout()
        tpl.addWidget(self.template, 1)
        tpl.addWidget(self.reset_template, 0, Qt.AlignTop)
        self.mix = MixEditor()

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Source of pairs", self.source)
        self.location_label = QLabel("Folder")
        form.addRow(self.location_label, loc)
        form.addRow("Source language", self.src)
        tgt_row = QHBoxLayout()
        tgt_row.addWidget(self.tgt, 1)
        tgt_row.addWidget(self.swap)
        form.addRow("Target language", tgt_row)
        form.addRow("Direction", self.direction)
        self.mix_label = QLabel("Languages")
        form.addRow(self.mix_label, self.mix)
        nums = QHBoxLayout()
        for lab, w in (("Shots", self.shots), ("Samples", self.samples)):
            nums.addWidget(QLabel(lab))
            nums.addWidget(w)
        nums.addStretch(1)
        form.addRow("", nums)
        form.addRow("Sequence length", self.seq_len)
        form.addRow("FLORES split", self.split)
        form.addRow("", self.monolingual)
        form.addRow("", shuf)
        form.addRow("Template", tpl)
        self.template_help = help_label("Fields: {src_name} {src} {tgt_name} {tgt} {eos}. "
                                        "One demonstration repeats the template once per shot.")
        form.addRow("", self.template_help)

        self.build_btn = primary(QPushButton("Build demonstrations"))
        self.build_btn.setToolTip("Tokenize all samples now (Ctrl+B). Measuring features and pruning build them "
                                  "automatically when needed")
        self.build_btn.clicked.connect(self.build)
        self.summary = QLabel("Not built yet: they are built when you measure features or prune.")
        self.summary.setWordWrap(True)
        left = QVBoxLayout()
        left.addLayout(form)
        brow = QHBoxLayout()
        brow.addWidget(self.build_btn)
        brow.addStretch(1)
        left.addLayout(brow)
        left.addWidget(self.summary)
        left.addStretch(1)

        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        self.preview.setToolTip("The first samples as the model will read them, with their length in tokens")
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setObjectName("warning")
        self.warning.hide()
        right = QVBoxLayout()
        right.addWidget(self.warning)
        right.addWidget(self.preview, 1)

        body = QHBoxLayout()
        body.addWidget(group("Calibration data", left), 5)
        body.addWidget(group("Preview", right), 6)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("2 · Translation demonstrations"))
        lay.addWidget(help_label(
            "Demonstrations are short translation examples (\"English: … French: …\") that the model reads while "
            "features are measured and weights are scored. Pick the languages; the preview updates as you type. "
            "The defaults work on every source."))
        lay.addLayout(body, 1)

        self._timer = debounce(self, 250, self.refresh_preview)
        self.apply_config(DemoConfig(), None)
        for sig in (self.direction.currentIndexChanged, self.split.currentIndexChanged, self.shots.valueChanged,
                    self.samples.valueChanged, self.seq_len.valueChanged, self.seed.valueChanged,
                    self.monolingual.toggled, self.shuffle.toggled, self.src.language_changed,
                    self.tgt.language_changed, self.location.textChanged, self.template.textChanged,
                    self.mix.style.currentIndexChanged):
            sig.connect(self._changed)
        self.mix.changed = self._changed
        self.source.currentIndexChanged.connect(self._source_changed)
        ctx.state.model_loaded.connect(lambda _: self._changed())
        ctx.state.calibration_changed.connect(self._show_calibration)
        ctx.state.busy_changed.connect(self.set_busy)

    # --- settings <-> config -------------------------------------------------------------
    def source_kind(self) -> str:
        """``builtin``, ``flores``, ``file``, ``hub``, ``text`` or ``mix``."""
        return self.source.currentData()

    def config(self) -> tuple[DemoConfig, str | None]:
        """The demonstration settings as ``(DemoConfig, raw text file or None)`` (not validated;
        a mix keeps its languages in :meth:`spec`)."""
        kind = self.source_kind()
        loc = self.location.text().strip()
        text = None
        if kind == "flores":
            source = f"flores:{loc}"
        elif kind == "file":
            source = f"file:{loc}"
        elif kind == "hub":
            source = f"hub:{loc}" if loc and loc != HUB_DATASET else "hub"
        elif kind == "mix":
            source = f"flores:{loc}" if loc else "builtin"
        else:
            source = "builtin"
            if kind == "text":
                text = loc
        cfg = DemoConfig(source=source, src=self.src.code(), tgt=self.tgt.code(),
                         direction=self.direction.currentData(), shots=self.shots.value(),
                         samples=self.samples.value(), seq_len=self.seq_len.value(),
                         template=self.template.toPlainText() or DEFAULT_TEMPLATE,
                         monolingual=self.monolingual.isChecked(), split=self.split.currentText(),
                         shuffle=self.shuffle.isChecked(), seed=self.seed.value(),
                         src_column=self._columns[0], tgt_column=self._columns[1])
        return cfg, text

    def spec(self) -> dict:
        """The settings as one :func:`polyprune.calibration.build` spec.

        Raises:
            PolypruneError: a setting that cannot be used, naming its control.
        """
        kind = self.source_kind()
        cfg, text = self.config()
        if kind == "text":
            if not (text or "").strip():
                raise PolypruneError("No text file is chosen for the source 'Raw text lines'",
                                     "choose a text file (Text file, Demonstrations panel), or another Source of pairs")
            return {"kind": "text", "file": text, "samples": cfg.samples, "seq_len": cfg.seq_len}
        if kind == "mix":
            props = self.mix.proportions()
            return {"kind": "mix", "proportions": props, "style": self.mix.style.currentData(),
                    "source": cfg.source, "split": cfg.split, "shuffle": cfg.shuffle, "seed": cfg.seed,
                    "samples": cfg.samples, "seq_len": cfg.seq_len, "shots": cfg.shots}
        if kind in ("flores", "file") and not self.location.text().strip():
            what = "FLORES-200 folder" if kind == "flores" else "file of pairs"
            raise PolypruneError(f"No {what} is chosen", f"choose the {what} ({self.location_label.text()}, "
                                                          "Demonstrations panel), or another Source of pairs")
        src = self.src.checked_code("Source language (Demonstrations panel)")
        tgt = self.tgt.checked_code("Target language (Demonstrations panel)")
        return demos_spec(replace(cfg, src=src, tgt=tgt))

    def describe(self) -> str:
        """A plain name of the current setting (for other panels)."""
        try:
            return describe_spec(self.spec())
        except PolypruneError as e:
            return f"not usable: {e.problem}"

    def apply_config(self, cfg: DemoConfig, text: str | None) -> None:
        """Show ``cfg`` (and a raw-text file) in the widgets."""
        self._updating = True
        try:
            kind, _, arg = cfg.source.partition(":")
            if text:
                kind, arg = "text", text
            elif kind not in ("builtin", "flores", "file", "hub"):
                kind, arg = ("flores", cfg.source) if Path(cfg.source).is_dir() else ("file", cfg.source)
            self.source.setCurrentIndex(max(0, self.source.findData(kind)))
            if kind in ("flores", "hub") and not arg:
                arg = default_location(kind)
            self._kind = kind
            self.location.setText(arg)
            self._locations[kind] = arg
            for picker, code in ((self.src, cfg.src), (self.tgt, cfg.tgt)):
                try:
                    picker.set_code(resolve_language(code))
                except PolypruneError:
                    pass
            self.direction.setCurrentIndex(max(0, self.direction.findData(cfg.direction)))
            self.shots.setValue(cfg.shots)
            self.samples.setValue(cfg.samples)
            self.seq_len.setValue(cfg.seq_len)
            self.split.setCurrentIndex(max(0, self.split.findText(cfg.split)))
            self.monolingual.setChecked(cfg.monolingual)
            self.shuffle.setChecked(cfg.shuffle)
            self.seed.setValue(cfg.seed)
            self.template.setPlainText(cfg.template)
            self._columns = (cfg.src_column, cfg.tgt_column)
        finally:
            self._updating = False
        self._show_source()
        self._changed()

    def set_values(self, **kw) -> None:
        """Change some settings at once (``samples=8, seq_len=128, source='flores:DIR'`` ...)."""
        cfg, text = self.config()
        text = kw.pop("calibration_text", text)
        self.apply_config(replace(cfg, **kw), text)

    # --- reactions ----------------------------------------------------------------------
    def _source_changed(self) -> None:
        """A new source: its own location (or its default), and settings that no longer fit reset."""
        kind = self.source_kind()
        if self._updating:
            return
        self._locations[self._kind] = self.location.text().strip()
        self._kind = kind
        notes = []
        self._updating = True
        try:
            self.location.setText(self._locations.get(kind) or default_location(kind))
            self._columns = (None, None) if kind != "file" else self._columns
            if kind == "builtin":
                have = builtin_languages()
                for picker, default, what in ((self.src, "eng_Latn", "source"), (self.tgt, "fra_Latn", "target")):
                    if picker.code() not in have:
                        notes.append(f"the {what} language {language_name(picker.code())} is not in the built-in "
                                     f"pairs, so it is back to {language_name(default)}")
                        picker.set_code(default)
                n_pairs = len(builtin_pairs("eng_Latn", "fra_Latn"))
                if self.samples.value() * self.shots.value() > n_pairs:
                    fit = max(1, n_pairs // self.shots.value())
                    notes.append(f"{self.samples.value()} samples × {self.shots.value()} shots need more than the "
                                 f"{n_pairs} built-in pairs, so Samples is {fit} now")
                    self.samples.setValue(fit)
        finally:
            self._updating = False
        self._show_source()
        if notes:
            text = "Source changed: " + "; ".join(notes) + "."
            self.summary.setText(text)
            self.ctx.log(text, "warn")
        self._changed()

    def _show_source(self) -> None:
        kind = self.source_kind()
        self.location_label.setText(LOCATION_LABELS[kind])
        self.location.setPlaceholderText(PLACEHOLDERS.get(kind, ""))
        self.location.setEnabled(kind != "builtin")
        self.browse.setEnabled(kind in ("flores", "file", "text", "mix"))
        pairs = kind not in ("text", "mix")
        for w in (self.src, self.tgt, self.swap, self.direction, self.monolingual, self.template,
                  self.reset_template, self.template_help):
            w.setVisible(pairs)
        for w in (self.mix, self.mix_label):
            w.setVisible(kind == "mix")
        self.shots.setEnabled(kind != "text")
        self.split.setEnabled(kind in ("flores", "hub", "mix"))
        self.shuffle.setEnabled(kind != "text")
        self.seed.setEnabled(kind != "text")
        form = self.src.parentWidget()
        if form is not None:
            form.updateGeometry()

    def _browse(self) -> None:
        kind = self.source_kind()
        if kind in ("flores", "mix"):
            path = QFileDialog.getExistingDirectory(self, "FLORES-200 folder (with dev/ and devtest/)",
                                                    self.location.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Demonstrations file", self.location.text(),
                                                  "Pairs or text (*.tsv *.csv *.jsonl *.json *.txt);;All files (*)")
        if path:
            self.location.setText(path)

    def _swap(self) -> None:
        a, b = self.src.code(), self.tgt.code()
        self._updating = True
        self.src.set_code(b)
        self.tgt.set_code(a)
        self._updating = False
        self._changed()

    def _changed(self, *args) -> None:
        if self._updating:
            return
        st = self.ctx.state
        try:
            spec = self.spec()
        except PolypruneError:
            spec = None
        if st.calibration is not None and (spec is None or st.cached_calibration(spec) is None):
            self.summary.setText("Settings changed: the demonstrations are rebuilt at the next step.")
        self._timer.start()

    def _show_calibration(self, cal) -> None:
        if cal is None:
            return
        lengths = cal.attention_mask.sum(1)
        self.summary.setText(
            f"Built {len(cal)} samples ({cal.meta.get('label', '')}): {cal.n_tokens:,} tokens in all, "
            f"{int(lengths.min())}–{int(lengths.max())} tokens each; {cal.truncated} cut at "
            f"{cal.meta.get('seq_len')} tokens.")

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.build_btn.setEnabled(not busy)

    # --- preview ------------------------------------------------------------------------
    def refresh_preview(self) -> None:
        """Rebuild the preview in a light background job (it never touches the model)."""
        loaded = self.ctx.state.loaded
        tok = loaded.tokenizer if loaded is not None else None
        self._preview_gen += 1
        gen = self._preview_gen
        try:
            spec = self.spec()
        except PolypruneError as e:
            self._show_problem(e.problem, e.fix or "")
            return

        def job(progress):
            return preview_calibration(spec, tok, PREVIEW_SAMPLES)

        def done(res):
            if gen == self._preview_gen:
                self._show_preview(res, spec, tok.eos_token if tok is not None else "<eos>")

        def failed(problem, fix, tb):
            if gen == self._preview_gen:
                self._show_problem(problem, fix)

        self.ctx.run_job("Preview", job, on_finished=done, on_failed=failed, model_changing=False, quiet=True)

    def _show_problem(self, problem: str, fix: str) -> None:
        self.preview.setHtml(f"<p style='color:#b71c1c'><b>{html.escape(window_words(problem))}</b></p>"
                             f"<p>Fix: {html.escape(window_words(fix))}</p>")
        self.warning.hide()

    def _show_preview(self, res, spec: dict, eos: str | None) -> None:
        counts, cuts, seq_len = res.counts, res.cuts, res.seq_len
        parts = []
        shots = spec.get("shots", 1)
        if res.available is not None:
            parts.append(f"<p style='color:#555'>{res.available} sentence pairs available · "
                         f"{res.samples} samples of {shots} pairs use {res.samples * shots}</p>")
        else:
            parts.append(f"<p style='color:#555'>{res.samples} samples · {describe_spec(spec)}</p>")
        for i, p in enumerate(res.texts):
            cut = cuts[i] if i < len(cuts) else None
            head = f"Sample {i + 1}"
            if counts is not None:
                n = counts[i]
                head += f" · {n} tokens" + (f" (cut to {seq_len})" if n > seq_len else "")
            kept, lost = (p, "") if cut is None else (p[:cut], p[cut:])
            body = _mark_eos(html.escape(kept), eos or "")
            if lost:
                body += (f"<span style='color:#9e9e9e; text-decoration: line-through'>"
                         f"{_mark_eos(html.escape(lost), eos or '')}</span>")
            parts.append(f"<p style='margin-top:10px'><b>{head}</b></p>"
                         f"<p style='font-family:\"DejaVu Sans Mono\"; white-space:pre-wrap; background:#f6f8fa; "
                         f"padding:6px'>{body}</p>")
        if counts is None:
            parts.append("<p style='color:#555'><i>Load a model to see token counts.</i></p>")
        self.preview.setHtml("".join(parts))
        over = sum(c > seq_len for c in counts) if counts is not None else 0
        if over:
            self.warning.setText(f"⚠ {over} of {len(counts)} samples are longer than {seq_len} tokens "
                                 f"and will be cut (the longest has {max(counts)}). Raise the sequence length "
                                 f"or use fewer shots to keep whole sentences.")
            self.warning.show()
        else:
            self.warning.hide()

    # --- build --------------------------------------------------------------------------
    def build(self):
        """Tokenize all samples now in a background job."""
        if not self.ctx.require_model():
            return None
        try:
            spec = self.spec()
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        loaded = self.ctx.state.loaded

        def job(progress):
            return build_calibration(loaded, spec, progress)

        def done(cal):
            self.ctx.state.store_calibration(spec, cal)
            self.ctx.log(f"Calibration set: {len(cal)} samples, {cal.n_tokens} tokens, {cal.truncated} truncated "
                         f"({describe_spec(spec)})")

        return self.ctx.run_job("Building demonstrations", job, on_finished=done)

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        cfg, text = self.config()
        recipe.demos = cfg
        recipe.calibration_text = text or None
        recipe.calibration = None
        if self.source_kind() == "mix":
            try:
                props = self.mix.proportions()
            except PolypruneError:
                props = dict(DEFAULT_MIX)
            recipe.calibration = {"kind": "mix", "proportions": props, "style": self.mix.style.currentData(),
                                  "source": cfg.source, "split": cfg.split, "shots": cfg.shots,
                                  "shuffle": cfg.shuffle, "seed": cfg.seed}

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.apply_config(recipe.demos, recipe.calibration_text)
        cal = recipe.calibration
        if cal and cal.get("kind") == "mix":
            self._updating = True
            self.source.setCurrentIndex(self.source.findData("mix"))
            self._kind = "mix"
            src = str(cal.get("source", ""))
            self.location.setText(src.partition(":")[2] if src.startswith("flores:") else "")
            self.mix.set_proportions(cal.get("proportions") or DEFAULT_MIX)
            self.mix.style.setCurrentIndex(max(0, self.mix.style.findData(cal.get("style", "text"))))
            self._updating = False
            self._show_source()
            self._changed()
        elif cal:
            self.ctx.log(f"The recipe calibrates on a {cal.get('kind')} set, which the Demonstrations panel cannot "
                         "show; run the recipe with 'polyprune run' for it", "warn")


def describe_spec(spec: dict) -> str:
    """Plain description of a calibration spec: "English→French translation, 4 shots"."""
    kind = spec.get("kind")
    if kind == "text":
        return f"text lines from {Path(str(spec.get('file'))).name}"
    if kind == "demos":
        src, tgt = language_name(resolve_language(spec["src"])), language_name(resolve_language(spec["tgt"]))
        if spec.get("monolingual"):
            return f"{src} monolingual, {spec.get('shots')} sentences"
        d = spec.get("direction", "forward")
        arrow = {"forward": f"{src}→{tgt}", "reverse": f"{tgt}→{src}", "both": f"{src}↔{tgt}"}[d]
        return f"{arrow} translation, {spec.get('shots')} shots"
    if kind == "mix":
        return "mix " + ", ".join(f"{language_name(resolve_language(k))} {100 * float(v):.3g} %"
                                  for k, v in spec["proportions"].items())
    return spec_label(spec) if kind else "?"


def _mark_eos(escaped: str, eos: str) -> str:
    if not eos:
        return escaped
    marker = "<span style='color:#1565c0; font-size:small'>⟨eos⟩</span><br>"
    return escaped.replace(html.escape(eos), marker)
