"""Translation demonstrations panel: source, languages, shots, template and a live preview."""
from __future__ import annotations

import html
from dataclasses import asdict, replace
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QTextBrowser, QToolButton,
                               QVBoxLayout, QWidget)

from polyprune.demos import (DEFAULT_TEMPLATE, DIRECTIONS, HUB_DATASET, DemoConfig,
                             build_calibration, build_prompts, load_pairs, read_calibration_text)
from polyprune.errors import PolypruneError
from polyprune.languages import language_name, resolve_language
from polyprune.recipe import Recipe, default_data_dir

from ..widgets import GLOSSARY, LanguagePicker, debounce, group, heading, help_label, monospace, primary

SOURCES = [
    ("builtin", "Built-in pairs (36 sentences, 11 languages)"),
    ("flores", "FLORES-200 folder (204 languages)"),
    ("file", "File of pairs (TSV, CSV or JSON Lines)"),
    ("hub", "Hugging Face hub (FLORES+, needs network)"),
    ("text", "Raw text lines (no translation pairs)"),
]
PREVIEW_SAMPLES = 3


def default_flores_dir() -> str:
    """The FLORES-200 folder of the default data folder, or an empty string."""
    d = default_data_dir()
    if d is not None and (d / "flores200").is_dir():
        return str(d / "flores200")
    return ""


def calibration_key(cfg: DemoConfig, text: str | None) -> str:
    """Identifies a calibration set by every setting that shapes it."""
    return repr((sorted(asdict(cfg).items()), text))


class DemosPanel(QWidget):
    """Settings of the calibration demonstrations, with a live preview of the first prompts."""

    title = "Demonstrations"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self._pairs_cache: dict = {}
        self._preview_gen = 0
        self._updating = False

        self.source = QComboBox()
        for key, label in SOURCES:
            self.source.addItem(label, key)
        self.source.setToolTip("Where the sentence pairs come from. FLORES-200 has the same 997 sentences "
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
        self.shuffle = QCheckBox("Shuffle pairs, seed")
        self.shuffle.setToolTip("Draw sentence pairs in a random but repeatable order instead of file order")
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
        form.addRow("", help_label("Fields: {src_name} {src} {tgt_name} {tgt} {eos}. "
                                   "One demonstration repeats the template once per shot."))

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
        self.preview.setToolTip("The first demonstrations as the model will read them, with their length in tokens")
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setObjectName("warning")
        self.warning.hide()
        right = QVBoxLayout()
        right.addWidget(self.warning)
        right.addWidget(self.preview, 1)

        body = QHBoxLayout()
        body.addWidget(group("Settings", left), 5)
        body.addWidget(group("Preview of the first demonstrations", right), 6)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("2 · Translation demonstrations"))
        lay.addWidget(help_label(
            "Demonstrations are short translation examples (\"English: … French: …\") that the model reads while "
            "features are measured and weights are scored. Pick the languages; the preview updates as you type."))
        lay.addLayout(body, 1)

        self._timer = debounce(self, 250, self.refresh_preview)
        self.apply_config(ctx.state.demo_config, None)
        for sig in (self.source.currentIndexChanged, self.direction.currentIndexChanged,
                    self.split.currentIndexChanged, self.shots.valueChanged, self.samples.valueChanged,
                    self.seq_len.valueChanged, self.seed.valueChanged, self.monolingual.toggled,
                    self.shuffle.toggled, self.src.language_changed, self.tgt.language_changed,
                    self.location.textChanged, self.template.textChanged):
            sig.connect(self._changed)
        self.source.currentIndexChanged.connect(self._source_changed)
        ctx.state.model_loaded.connect(lambda _: self._changed())
        ctx.state.calibration_changed.connect(self._show_calibration)
        ctx.state.busy_changed.connect(self.set_busy)
        self._source_changed()

    # --- settings <-> config -------------------------------------------------------------
    def source_kind(self) -> str:
        """``builtin``, ``flores``, ``file``, ``hub`` or ``text``."""
        return self.source.currentData()

    def config(self) -> tuple[DemoConfig, str | None]:
        """The current settings as ``(DemoConfig, calibration_text_path or None)``."""
        kind = self.source_kind()
        loc = self.location.text().strip()
        text = None
        if kind == "builtin":
            source = "builtin"
        elif kind == "flores":
            source = f"flores:{loc}"
        elif kind == "file":
            source = f"file:{loc}"
        elif kind == "hub":
            source = f"hub:{loc}" if loc and loc != HUB_DATASET else "hub"
        else:
            source = "builtin"
            text = loc
        cfg = DemoConfig(source=source, src=self.src.code(), tgt=self.tgt.code(),
                         direction=self.direction.currentData(), shots=self.shots.value(),
                         samples=self.samples.value(), seq_len=self.seq_len.value(),
                         template=self.template.toPlainText() or DEFAULT_TEMPLATE,
                         monolingual=self.monolingual.isChecked(), split=self.split.currentText(),
                         shuffle=self.shuffle.isChecked(), seed=self.seed.value(),
                         src_column=self.ctx.state.demo_config.src_column,
                         tgt_column=self.ctx.state.demo_config.tgt_column)
        return cfg, text

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
            if kind == "flores" and not arg:
                arg = default_flores_dir()
            if kind == "hub" and not arg:
                arg = HUB_DATASET
            self.location.setText(arg)
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
        finally:
            self._updating = False
        self._source_changed()
        self._changed()

    def set_values(self, **kw) -> None:
        """Change some settings at once (``samples=8, seq_len=128, source='flores:DIR'`` ...)."""
        cfg, text = self.config()
        text = kw.pop("calibration_text", text)
        self.apply_config(replace(cfg, **kw), text)

    # --- reactions ----------------------------------------------------------------------
    def _source_changed(self) -> None:
        kind = self.source_kind()
        labels = {"builtin": "", "flores": "Folder", "file": "File", "hub": "Dataset", "text": "Text file"}
        placeholders = {"flores": "folder with dev/ and devtest/, e.g. ../shared/data/flores200",
                        "file": "a .tsv, .csv or .jsonl file with source and target columns",
                        "hub": HUB_DATASET, "text": "a text file: one calibration sample per line"}
        self.location_label.setText(labels[kind])
        self.location.setPlaceholderText(placeholders.get(kind, ""))
        self.location.setEnabled(kind != "builtin")
        self.browse.setEnabled(kind in ("flores", "file", "text"))
        if not self._updating:
            self._updating = True
            if kind == "flores" and not self.location.text().strip():
                self.location.setText(default_flores_dir())
            elif kind == "hub" and not self.location.text().strip():
                self.location.setText(HUB_DATASET)
            elif kind == "builtin":
                self.location.setText("")
            self._updating = False
        pairs = kind != "text"
        for w in (self.src, self.tgt, self.swap, self.direction, self.shots, self.monolingual, self.template,
                  self.reset_template):
            w.setEnabled(pairs)
        self.split.setEnabled(kind in ("flores", "hub"))

    def _browse(self) -> None:
        kind = self.source_kind()
        if kind == "flores":
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
        cfg, text = self.config()
        self.ctx.state.demo_config = cfg
        self.ctx.state.calibration_text = text
        st = self.ctx.state
        if st.calibration is not None and st.calibration_key != calibration_key(cfg, text):
            self.summary.setText("Settings changed: the demonstrations are rebuilt at the next step.")
        self._timer.start()

    def _show_calibration(self, cal) -> None:
        if cal is None:
            return
        lengths = cal.attention_mask.sum(1)
        self.summary.setText(
            f"Built {len(cal)} demonstrations: {cal.n_tokens:,} tokens in all, {int(lengths.min())}–{int(lengths.max())} "
            f"tokens each; {cal.truncated} cut at {cal.meta.get('seq_len')} tokens.")

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.build_btn.setEnabled(not busy)

    # --- preview ------------------------------------------------------------------------
    def refresh_preview(self) -> None:
        """Rebuild the preview in a light background job (it never touches the model)."""
        cfg, text = self.config()
        loaded = self.ctx.state.loaded
        tok = loaded.tokenizer if loaded is not None else None
        eos = (tok.eos_token or "") if tok is not None else "<eos>"
        key = (cfg.source, cfg.src, cfg.tgt, cfg.split, cfg.src_column, cfg.tgt_column)
        cached = self._pairs_cache.get(key)
        self._preview_gen += 1
        gen = self._preview_gen

        def job(progress):
            pairs = None
            if text is not None:
                if not text.strip():
                    raise PolypruneError("No text file is chosen", "choose a text file with one sample per line")
                prompts = read_calibration_text(text, cfg.samples)
            else:
                pairs = cached if cached is not None else load_pairs(cfg.source, resolve_language(cfg.src),
                                                                     resolve_language(cfg.tgt), cfg.split,
                                                                     cfg.src_column, cfg.tgt_column)
                prompts, _ = build_prompts(cfg, eos=eos, pairs=pairs)
            counts, cuts = None, []
            if tok is not None:
                counts = [len(x) for x in tok(prompts)["input_ids"]]
                for p in prompts[:PREVIEW_SAMPLES]:
                    cuts.append(_cut_offset(tok, p, cfg.seq_len))
            return {"prompts": prompts, "counts": counts, "cuts": cuts, "pairs": pairs, "key": key,
                    "eos": eos, "n_pairs": len(pairs) if pairs is not None else None}

        def done(res):
            if gen != self._preview_gen:
                return
            if res["pairs"] is not None:
                self._pairs_cache = {res["key"]: res["pairs"]}
            self._show_preview(res, cfg)

        def failed(problem, fix, tb):
            if gen != self._preview_gen:
                return
            self.preview.setHtml(f"<p style='color:#b71c1c'><b>{html.escape(problem)}</b></p>"
                                 f"<p>Fix: {html.escape(fix)}</p>")
            self.warning.hide()

        self.ctx.run_job("Preview", job, on_finished=done, on_failed=failed, model_changing=False, quiet=True)

    def _show_preview(self, res: dict, cfg: DemoConfig) -> None:
        prompts, counts, cuts, eos = res["prompts"], res["counts"], res["cuts"], res["eos"]
        parts = []
        if res["n_pairs"] is not None:
            parts.append(f"<p style='color:#555'>{res['n_pairs']} sentence pairs available · "
                         f"{len(prompts)} demonstrations of {cfg.shots} pairs</p>")
        for i, p in enumerate(prompts[:PREVIEW_SAMPLES]):
            cut = cuts[i] if i < len(cuts) else None
            head = f"Demonstration {i + 1}"
            if counts is not None:
                n = counts[i]
                head += f" · {n} tokens" + (f" (cut to {cfg.seq_len})" if n > cfg.seq_len else "")
            kept, lost = (p, "") if cut is None else (p[:cut], p[cut:])
            body = _mark_eos(html.escape(kept), eos)
            if lost:
                body += f"<span style='color:#9e9e9e; text-decoration: line-through'>{_mark_eos(html.escape(lost), eos)}</span>"
            parts.append(f"<p style='margin-top:10px'><b>{head}</b></p>"
                         f"<p style='font-family:\"DejaVu Sans Mono\"; white-space:pre-wrap; background:#f6f8fa; "
                         f"padding:6px'>{body}</p>")
        if counts is None:
            parts.append("<p style='color:#555'><i>Load a model to see token counts.</i></p>")
        self.preview.setHtml("".join(parts))
        if counts is not None:
            over = sum(c > cfg.seq_len for c in counts)
            if over:
                self.warning.setText(f"⚠ {over} of {len(counts)} demonstrations are longer than {cfg.seq_len} tokens "
                                     f"and will be cut (the longest has {max(counts)}). Raise the sequence length "
                                     f"or use fewer shots to keep whole sentences.")
                self.warning.show()
            else:
                self.warning.hide()
        else:
            self.warning.hide()

    # --- build --------------------------------------------------------------------------
    def build(self):
        """Tokenize all demonstrations now in a background job."""
        if not self.ctx.require_model():
            return None
        cfg, text = self.config()
        key = calibration_key(cfg, text)
        tok = self.ctx.state.loaded.tokenizer

        def job(progress):
            progress.update(0, 1, "Building demonstrations")
            cal = build_calibration(cfg, tok, text)
            progress.update(1, 1, "Demonstrations built")
            return cal

        def done(cal):
            self.ctx.state.set_calibration(cal, key)
            self.ctx.log(f"Demonstrations: {len(cal)} samples, {cal.n_tokens} tokens, {cal.truncated} truncated "
                         f"({describe(cfg, text)})")

        return self.ctx.run_job("Building demonstrations", job, on_finished=done)

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        cfg, text = self.config()
        recipe.demos = cfg
        recipe.calibration_text = text or None

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.apply_config(recipe.demos, recipe.calibration_text)


def describe(cfg: DemoConfig, text: str | None = None) -> str:
    """Plain description of a calibration setting: "English→French translation, 4 shots"."""
    if text:
        return f"text lines from {Path(text).name}"
    src, tgt = language_name(cfg.src), language_name(cfg.tgt)
    if cfg.monolingual:
        return f"{src} monolingual, {cfg.shots} sentences"
    arrow = {"forward": f"{src}→{tgt}", "reverse": f"{tgt}→{src}", "both": f"{src}↔{tgt}"}[cfg.direction]
    return f"{arrow} translation, {cfg.shots} shots"


def _mark_eos(escaped: str, eos: str) -> str:
    if not eos:
        return escaped
    marker = "<span style='color:#1565c0; font-size:small'>⟨eos⟩</span><br>"
    return escaped.replace(html.escape(eos), marker)


def _cut_offset(tok, text: str, seq_len: int) -> int | None:
    """Character offset where ``text`` is cut at ``seq_len`` tokens (``None`` if it fits)."""
    try:
        enc = tok(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    ids = enc["input_ids"]
    if len(ids) <= seq_len:
        return None
    ends = [e for s, e in enc["offset_mapping"][:seq_len] if e > 0]
    return max(ends) if ends else 0
