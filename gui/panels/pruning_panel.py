"""Pruning panel: method, pattern, sparsity, what to skip; prune into a new *variant* with progress
and cancel; the variants of the session (name, settings, memory), which one the model holds."""
from __future__ import annotations

import html
from dataclasses import fields

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QProgressBar, QPushButton, QSlider, QSpinBox, QSplitter,
                               QTableWidgetItem, QTextBrowser, QToolButton, QVBoxLayout, QWidget)

from polyprune.arguments import block_list
from polyprune.errors import PolypruneError
from polyprune.recipe import LAYERWISE, METHODS, PruneConfig, Recipe
from polyprune.session import prune_variant

from ..widgets import GLOSSARY, LanguagePicker, PlotBox, bar_colors, group, heading, help_label, primary, \
    results_table, style_plot

# Methods offered, in this order.
METHOD_LABELS = {
    "wanda": ("Wanda — weight size × input size on the demonstrations", GLOSSARY["wanda"]),
    "magnitude": ("Magnitude — smallest weights (no demonstrations)", GLOSSARY["magnitude_method"]),
    "sparsegpt": ("SparseGPT — prune, then correct the remaining weights (slower)",
                  "SparseGPT (Frantar & Alistarh 2023) removes weights using the demonstrations and adjusts the "
                  "weights it keeps to make up for them. Slower than Wanda; often better at high sparsity."),
    "wanda_refined": ("Refined Wanda (Kim et al.) — base set vs contrast set", GLOSSARY["refined"]),
}
LAYERWISE_LABELS = {
    "uniform": ("Same sparsity in every block", "Every pruned block loses the same share of its weights"),
    "owl": ("OWL — prune blocks with many outliers less", GLOSSARY["owl"]),
}
CONTRAST_KINDS = [("monolingual", "text in one language (FLORES-200, else built-in)"),
                  ("translation", "translation demonstrations of another language ↔ English"),
                  ("text", "a text file (one sample per line)")]
PRUNE_FIELDS = {f.name for f in fields(PruneConfig)}
VARIANT_COLUMNS = ["Variant (double-click to rename)", "In the model", "Removed", "Memory", "Settings"]


def parse_blocks(text: str, n_blocks: int | None = None) -> list[int]:
    """``"0, 3-5, 17"`` -> ``[0, 3, 4, 5, 17]`` (blocks counted from 0).

    Raises:
        PolypruneError: not a list of block numbers, or a block the model does not have.
    """
    try:
        out = block_list(text)
    except PolypruneError as e:  # the same rule as --skip-blocks; the fix names the control
        raise PolypruneError(e.problem, "list block numbers in Skip blocks (Pruning panel) separated by commas, "
                                        "with ranges like 3-5") from None
    if n_blocks is not None:
        bad = [b for b in out if b < 0 or b >= n_blocks]
        if bad:
            raise PolypruneError(f"The model has no block {bad[0]} (it has blocks 0–{n_blocks - 1})",
                                 f"use block numbers from 0 to {n_blocks - 1} in Skip blocks (Pruning panel)")
    return out


def fmt_bytes(n: int) -> str:
    """``12.5 MiB``."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class PruningPanel(QWidget):
    """Prune the loaded model into variants in background jobs; show per-block sparsity and the
    session's variants."""

    title = "Pruning"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self._extra: dict = {}

        self.method = QComboBox()
        for key, (label, tip) in METHOD_LABELS.items():
            if key in METHODS:
                self.method.addItem(label, key)
                self.method.setItemData(self.method.count() - 1, tip, Qt.ToolTipRole)
        self.method.setToolTip("How weights are chosen for removal. " + GLOSSARY["wanda"])
        self.layerwise = QComboBox()
        for key, (label, tip) in LAYERWISE_LABELS.items():
            if key in LAYERWISE:
                self.layerwise.addItem(label, key)
                self.layerwise.setItemData(self.layerwise.count() - 1, tip, Qt.ToolTipRole)
        self.layerwise.setToolTip("Whether every block is pruned equally. " + GLOSSARY["owl"])
        self.pattern = QComboBox()
        self.pattern.addItem("Unstructured (any weight)", "unstructured")
        self.pattern.addItem("2:4 (2 of every 4 weights)", "2:4")
        self.pattern.addItem("4:8 (4 of every 8 weights)", "4:8")
        self.pattern.setToolTip(GLOSSARY["nm"])
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 99)
        self.slider.setTickInterval(10)
        self.slider.setTickPosition(QSlider.TicksBelow)
        self.slider.setToolTip(GLOSSARY["sparsity"])
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0.0, 1.0)  # 1.0 is accepted here and reported, never silently changed
        self.sparsity.setDecimals(2)
        self.sparsity.setSingleStep(0.05)
        self.sparsity.setToolTip(GLOSSARY["sparsity"] + " Below 1.")
        self.sparsity_note = QLabel("")
        self.sparsity_note.setObjectName("help")
        self.slider.valueChanged.connect(lambda v: self._sync_spin(v))
        self.sparsity.valueChanged.connect(lambda v: self._sync_slider(v))
        sp_row = QHBoxLayout()
        sp_row.addWidget(self.slider, 1)
        sp_row.addWidget(self.sparsity)
        self.group_box = QComboBox()
        self.group_box.addItem("each output row (as Wanda)", "row")
        self.group_box.addItem("whole layer", "layer")
        self.group_box.setToolTip("Among which weights the lowest scores are removed")
        self.skip = QLineEdit()
        self.skip.setPlaceholderText("e.g. *.self_attn.*  (comma-separated patterns)")
        self.skip.setToolTip("Layers to leave dense, as name patterns: '*.self_attn.*' keeps all attention layers, "
                             "'*.mlp.down_proj' one kind of layer")
        self.skip_blocks = QLineEdit()
        self.skip_blocks.setPlaceholderText("e.g. 0, 17 or 0-2 (blocks counted from 0)")
        self.skip_blocks.setToolTip("Whole blocks to leave dense, by number (blocks are counted from 0 everywhere)")
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(8)
        self.batch.setToolTip("Demonstrations per forward pass; lower it if memory runs out")
        self.pattern.currentIndexChanged.connect(self._pattern_changed)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.layerwise.currentIndexChanged.connect(self._method_changed)

        # contrast set of the refined metric
        self.contrast_kind = QComboBox()
        for key, label in CONTRAST_KINDS:
            self.contrast_kind.addItem(label, key)
        self.contrast_kind.setToolTip("The contrast set of the refined metric: weights the base set (the "
                                      "demonstrations) needs more than this set are kept")
        self.contrast_lang = LanguagePicker("deu_Latn")
        self.contrast_lang.setToolTip("Language of the contrast set. " + self.contrast_lang.toolTip())
        self.contrast_file = QLineEdit()
        self.contrast_file.setPlaceholderText("a text file, one sample per line")
        self.contrast_browse = QToolButton()
        self.contrast_browse.setText("Browse…")
        self.contrast_browse.clicked.connect(self._browse_contrast)
        self.contrast_kind.currentIndexChanged.connect(self._method_changed)
        c_row = QHBoxLayout()
        c_row.addWidget(self.contrast_lang, 1)
        c_row.addWidget(self.contrast_file, 1)
        c_row.addWidget(self.contrast_browse)
        contrast_lay = QVBoxLayout()
        contrast_lay.setContentsMargins(0, 0, 0, 0)
        contrast_lay.addWidget(self.contrast_kind)
        contrast_lay.addLayout(c_row)
        self.contrast_box = QWidget()
        self.contrast_box.setLayout(contrast_lay)

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Method", self.method)
        form.addRow("Pattern", self.pattern)
        form.addRow("Sparsity", sp_row)
        form.addRow("", self.sparsity_note)
        form.addRow("Per block", self.layerwise)
        form.addRow("Compare within", self.group_box)
        form.addRow("Skip layers", self.skip)
        form.addRow("Skip blocks", self.skip_blocks)
        form.addRow("Batch size", self.batch)
        self.calib_label = help_label("")
        form.addRow("Calibration (base)", self.calib_label)
        self.contrast_label = QLabel("Contrast set")
        form.addRow(self.contrast_label, self.contrast_box)

        self.prune_btn = primary(QPushButton("Prune (new variant)"))
        self.prune_btn.setToolTip("Prune the dense model block by block in the background (Ctrl+R). The result is "
                                  "kept as a new variant once it is finished; earlier variants stay")
        self.prune_btn.clicked.connect(self.prune)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop pruning (Esc); nothing changes and no variant is lost")
        self.cancel_btn.clicked.connect(self.ctx.cancel)
        self.cancel_btn.setEnabled(False)
        btns = QHBoxLayout()
        btns.addWidget(self.prune_btn)
        btns.addWidget(self.cancel_btn)
        btns.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("%p %")
        self.progress_label = QLabel("Idle")
        self.progress_label.setWordWrap(True)
        # a fixed height: a message of another length must not re-lay out (and repaint) the plots
        self.progress_label.setFixedHeight(2 * self.progress_label.fontMetrics().lineSpacing() + 4)
        self.progress_label.setAlignment(Qt.AlignLeft | Qt.AlignTop)

        left = QVBoxLayout()
        left.addLayout(form)
        left.addLayout(btns)
        left.addWidget(self.progress_label)
        left.addWidget(self.progress)

        # --- variants ---
        self.variants_table = results_table(VARIANT_COLUMNS, GLOSSARY["variant"])
        self.variants_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.variants_table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.variants_table.setEditTriggers(QAbstractItemView.DoubleClicked | QAbstractItemView.EditKeyPressed)
        self.variants_table.itemChanged.connect(self._renamed)
        self.variants_table.itemSelectionChanged.connect(self._selection_changed)
        self.use_btn = QPushButton("Put in the model")
        self.use_btn.setToolTip("Make the model hold the selected variant (exact: every weight as it was after its "
                                "pruning); Features, Evaluation and Export then work on it")
        self.use_btn.clicked.connect(self.use_selected)
        self.revert_btn = QPushButton("Use the dense model")
        self.revert_btn.setToolTip(GLOSSARY["revert"] + " The pruned variants are kept (Ctrl+Shift+R)")
        self.revert_btn.clicked.connect(self.revert)
        self.revert_btn.setEnabled(False)
        self.delete_btn = QPushButton("Delete variant")
        self.delete_btn.setToolTip("Forget the selected variant and its results (the dense model cannot be deleted)")
        self.delete_btn.clicked.connect(self.delete_selected)
        self.memory_label = QLabel("")
        self.memory_label.setObjectName("help")
        v_btns = QHBoxLayout()
        for b in (self.use_btn, self.revert_btn, self.delete_btn):
            v_btns.addWidget(b)
        v_btns.addStretch(1)
        v_btns.addWidget(self.memory_label)
        v_lay = QVBoxLayout()
        v_lay.addWidget(self.variants_table, 1)
        v_lay.addLayout(v_btns)

        self.plot_box = PlotBox("block_sparsity")
        style_plot(self.plot_box.plot, "Measured sparsity per block", "share of weights removed",
                   "decoder block (counted from 0)")
        dense, pruned = bar_colors()
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.75, brush=pruned)
        self.plot_box.plot.addItem(self.bars)
        self.target_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#555", style=Qt.DashLine), label="target",
                                           labelOpts={"position": 0.97, "color": "#555"})
        self.target_line.hide()
        self.plot_box.plot.addItem(self.target_line)
        self.plot_box.plot.setYRange(0, 1.0)
        self.plot_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.plot_box.saved.connect(lambda p: ctx.log(f"Saved plot {p}"))
        self.plot_box.save_failed.connect(lambda pr, fx: ctx.error(pr, fx))
        self.summary = QTextBrowser()
        self.summary.setHtml("<p style='color:#666'>Not pruned yet.</p>")
        self.summary.setToolTip("The variant the model holds now")
        left.addWidget(QLabel("<b>The variant the model holds</b>"))
        left.addWidget(self.summary, 1)
        result = QWidget()
        r_lay = QVBoxLayout(result)
        r_lay.setContentsMargins(0, 0, 0, 0)
        r_lay.addWidget(self.plot_box, 1)
        variants = QWidget()
        variants.setLayout(v_lay)
        right_split = QSplitter(Qt.Vertical)
        right_split.addWidget(group("Variants of this session", v_lay_wrap(variants)))
        right_split.addWidget(group("Sparsity of the variant the model holds", v_lay_wrap(result)))
        right_split.setSizes([230, 420])

        body = QHBoxLayout()
        body.addWidget(group("Settings", left), 4)
        body.addWidget(right_split, 6)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("4 · Pruning"))
        lay.addWidget(help_label(
            "Pruning sets the least important weights of every linear layer in the decoder blocks to zero, block by "
            "block, always starting from the dense model. Each finished pruning is kept as a variant: name them, "
            "put one in the model, compare them in Evaluation, export or delete them. Cancel stops a pruning and "
            "changes nothing."))
        lay.addLayout(body, 1)

        self.set_config(PruneConfig())
        # Redraws run on their own turns of the event loop (after a pruning several views change at
        # once: one long handler would stall the window; see tests/benchmarks/bench_gui_stall.py).
        ctx.state.active_changed.connect(lambda _=None: QTimer.singleShot(0, self.show_active))
        ctx.state.variants_changed.connect(lambda: QTimer.singleShot(0, self.show_variants))
        ctx.state.busy_changed.connect(self.set_busy)
        ctx.state.calibration_changed.connect(lambda _: self._update_calib())
        ctx.state.model_loaded.connect(lambda _: self._update_calib())
        self._method_changed()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Show the current calibration setting when the panel is shown."""
        super().showEvent(event)
        self._update_calib()

    # --- settings -----------------------------------------------------------------------
    def _sync_spin(self, v: int) -> None:
        if abs(self.sparsity.value() * 100 - v) >= 0.5:
            self.sparsity.setValue(v / 100)

    def _sync_slider(self, v: float) -> None:
        if self.slider.value() != round(min(v, 0.99) * 100):
            self.slider.blockSignals(True)
            self.slider.setValue(int(round(min(v, 0.99) * 100)))
            self.slider.blockSignals(False)
        bad = v >= 1.0
        self.sparsity.setStyleSheet("QDoubleSpinBox { border: 1px solid #c62828; }" if bad else "")
        self.sparsity_note.setText("1.00 would remove every weight: choose a value below 1" if bad else
                                   f"removes {100 * v:.0f} % of the weights of every pruned layer")
        self.sparsity_note.setStyleSheet("color: #b71c1c" if bad else "")

    def _pattern_changed(self) -> None:
        pat = self.pattern.currentData()
        self.group_box.setEnabled(pat == "unstructured")
        if pat != "unstructured":
            n, m = (int(x) for x in pat.split(":"))
            self.sparsity.setValue(n / m)

    def _method_changed(self) -> None:
        refined = self.method.currentData() == "wanda_refined"
        for w in (self.contrast_box, self.contrast_label):
            w.setVisible(refined)
        kind = self.contrast_kind.currentData()
        self.contrast_lang.setVisible(kind != "text")
        self.contrast_file.setVisible(kind == "text")
        self.contrast_browse.setVisible(kind == "text")
        self._update_calib()

    def _browse_contrast(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Contrast text file", self.contrast_file.text(),
                                              "Text (*.txt);;All files (*)")
        if path:
            self.contrast_file.setText(path)

    def _update_calib(self) -> None:
        if self.method.currentData() == "magnitude" and self.layerwise.currentData() in (None, "uniform"):
            self.calib_label.setText("not needed for magnitude pruning")
            return
        demos = self.ctx.demos_panel if hasattr(self.ctx, "demos_panel") else None
        if demos is None:
            return
        cfg, _ = demos.config()
        self.calib_label.setText(f"{demos.describe()}; {cfg.samples} samples of up to {cfg.seq_len} tokens "
                                 "(set in Demonstrations)")

    def contrast_spec(self) -> dict | None:
        """The contrast set of the refined metric as a calibration spec (``None`` for other methods).

        Raises:
            PolypruneError: no language or file chosen (the control is named).
        """
        if self.method.currentData() != "wanda_refined":
            return None
        kind = self.contrast_kind.currentData()
        if kind == "text":
            f = self.contrast_file.text().strip()
            if not f:
                raise PolypruneError("The refined metric needs a contrast text file",
                                     "choose a file for the Contrast set (Pruning panel), or another kind of "
                                     "contrast set")
            return {"kind": "text", "file": f}
        lang = self.contrast_lang.checked_code("the Contrast set language (Pruning panel)")
        if kind == "monolingual":
            return {"kind": "monolingual", "lang": lang, "source": "auto"}
        return {"kind": "translation", "langs": [lang], "direction": "both", "source": "auto"}

    def config(self) -> PruneConfig:
        """The settings as a :class:`PruneConfig` (not validated).

        Raises:
            PolypruneError: unreadable Skip blocks.
        """
        n = self.ctx.state.info["n_blocks"] if self.ctx.state.info else None
        kw = dict(method=self.method.currentData(), sparsity=round(self.sparsity.value(), 4),
                  pattern=self.pattern.currentData(), group=self.group_box.currentData(),
                  skip=[s.strip() for s in self.skip.text().split(",") if s.strip()],
                  skip_blocks=parse_blocks(self.skip_blocks.text(), n), batch_size=self.batch.value(),
                  layerwise=self.layerwise.currentData() or "uniform")
        kw.update({k: v for k, v in self._extra.items() if k in PRUNE_FIELDS and k not in kw})
        return PruneConfig(**kw)

    def set_config(self, cfg: PruneConfig) -> None:
        """Show ``cfg``; settings without a widget (e.g. SparseGPT damping) are kept as they are."""
        shown = {"method", "sparsity", "pattern", "group", "skip", "skip_blocks", "batch_size", "layerwise"}
        self._extra = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in shown}
        if self.method.findData(cfg.method) < 0:
            self.ctx.log(f"The recipe's pruning method {cfg.method!r} is not offered in the window; "
                         "using Wanda (run the recipe with 'polyprune run' for that method)", "warn")
        self.method.setCurrentIndex(max(0, self.method.findData(cfg.method)))
        self.layerwise.setCurrentIndex(max(0, self.layerwise.findData(cfg.layerwise)))
        self.pattern.blockSignals(True)
        self.pattern.setCurrentIndex(max(0, self.pattern.findData(cfg.pattern)))
        self.pattern.blockSignals(False)
        self.group_box.setEnabled(cfg.pattern == "unstructured")
        self.sparsity.setValue(cfg.sparsity)
        self._sync_slider(cfg.sparsity)
        self.group_box.setCurrentIndex(max(0, self.group_box.findData(cfg.group)))
        self.skip.setText(", ".join(cfg.skip))
        self.skip_blocks.setText(", ".join(str(b) for b in cfg.skip_blocks))
        self.batch.setValue(cfg.batch_size)

    # --- jobs ---------------------------------------------------------------------------
    def _checked_recipe(self) -> Recipe:
        """The recipe of the next pruning, checked before any work (errors name the controls)."""
        st = self.ctx.state
        cfg = self.config()
        if cfg.sparsity >= 1.0:
            raise PolypruneError(f"A sparsity of {cfg.sparsity:g} would remove every weight",
                                 "set Sparsity (Pruning panel) below 1, e.g. 0.5 to remove half of the weights; "
                                 "nothing was changed")
        cfg.validate(st.info["n_blocks"] if st.info else None)
        recipe = self.ctx.current_recipe()
        recipe.pruning = cfg
        recipe.contrast = self.contrast_spec()
        if cfg.needs_calibration and cfg.sparsity > 0:
            self.ctx.calibration_spec()  # the Demonstrations panel's settings are usable
        return recipe

    def prune(self):
        """Check the settings, then prune the dense model into a new variant in a background job."""
        if not self.ctx.require_model():
            return None
        try:
            recipe = self._checked_recipe()
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        st = self.ctx.state
        session = st.session
        previous = session.active
        spec = recipe.calibration_spec()
        cal = self.ctx.calibration_for(spec) if recipe.pruning.needs_calibration else None

        def job(progress):
            return prune_variant(session, recipe, progress, calibration=cal)

        def done(out):
            variant, built = out
            if built is not None:
                st.store_calibration(spec, built)
            st.add_variant(variant)
            res = variant.result
            msg = (f"New variant “{variant.name}”: {len(res.records)} layers pruned in {res.seconds:.1f} s, "
                   f"{100 * res.overall:.2f} % of their weights removed; it costs {fmt_bytes(variant.nbytes())} "
                   "of memory. The model holds it now.")
            QTimer.singleShot(0, lambda: (self.progress_label.setText(f"Pruned: new variant “{variant.name}”"),
                                          self.ctx.log(msg)))

        def unchanged(how: str):
            st.set_active()
            msg = (f"{how}: nothing was changed — the model holds “{previous.name}” as before and every variant "
                   "is kept")
            self.progress_label.setText(msg)
            self.progress.setValue(0)
            self.ctx.log(msg, "warn")

        self.progress.setValue(0)
        self.progress_label.setText("Starting…")
        started = self.ctx.run_job("Pruning", job, on_finished=done, on_cancelled=lambda: unchanged("Cancelled"),
                                   on_failed=lambda *_: unchanged("Pruning failed"), on_progress=self._progress)
        if started is None:  # refused (the reason is in a dialog): do not keep saying "Starting…"
            self.progress_label.setText("")
        return started

    def _move(self, name: str, variant, message: str):
        session = self.ctx.state.session

        def job(progress):
            progress.update(0, 1, message)
            session.activate(variant)
            progress.update(1, 1, "Done")

        def done(_):
            self.ctx.state.set_active()
            self.ctx.log(f"The model holds “{variant.name}” now (every weight as it was)")

        return self.ctx.run_job(name, job, on_finished=done, on_cancelled=self.ctx.state.set_active,
                                on_failed=lambda *_: self.ctx.state.set_active())

    def revert(self):
        """Make the model dense again (bit-identical); the pruned variants are kept."""
        st = self.ctx.state
        if st.loaded is None or st.prune_result is None:
            self.ctx.error("The model is not pruned", "nothing to revert: prune it first, or put a variant in the "
                                                      "model (Pruning panel, Variants)")
            return None
        return self._move("Using the dense model", st.session.dense, "Putting every removed weight back")

    def selected_variant(self):
        rows = self.variants_table.selectionModel().selectedRows() if self.variants_table.selectionModel() else []
        if not rows:
            return None
        vid = self.variants_table.item(rows[0].row(), 0).data(Qt.UserRole)
        try:
            return self.ctx.state.session.get(vid)
        except PolypruneError:
            return None

    def use_selected(self):
        """Put the selected variant in the model."""
        v = self.selected_variant()
        if v is None:
            self.ctx.error("No variant is selected", "click a variant in the list (Pruning panel, Variants)")
            return None
        if v is self.ctx.state.active:
            return None
        return self._move(f"Putting “{v.name}” in the model", v, f"Putting “{v.name}” in the model")

    def delete_selected(self):
        """Delete the selected variant (if the model holds it, the model goes back to dense first)."""
        st = self.ctx.state
        v = self.selected_variant()
        if v is None or v.is_dense:
            self.ctx.error("No pruned variant is selected" if v is None else "The dense model cannot be deleted",
                           "select a pruned variant in the list (Pruning panel, Variants)")
            return None
        if v is st.active:
            job = self._move("Using the dense model", st.session.dense, "Putting every removed weight back")
            if job is not None:
                job.finished.connect(lambda _: self._forget(v))
            return job
        self._forget(v)
        return None

    def _forget(self, v) -> None:
        self.ctx.state.forget_variant(v.id)
        self.ctx.log(f"Deleted the variant “{v.name}” (freed {fmt_bytes(v.nbytes())})")

    # --- views --------------------------------------------------------------------------
    def _progress(self, frac: float, msg: str) -> None:
        self.progress.setValue(int(frac * 1000))
        if msg:
            self.progress_label.setText(msg)

    def show_variants(self) -> None:
        """Fill the variants table (name, settings, removed share, memory, which one the model holds)."""
        st = self.ctx.state
        t = self.variants_table
        t.blockSignals(True)
        t.setRowCount(0)
        for v in st.variants:
            r = t.rowCount()
            t.insertRow(r)
            removed = "0 %" if v.is_dense else f"{100 * v.result.overall:.1f} %"
            memory = "–" if v.is_dense else (f"{fmt_bytes(v.nbytes())} now, {fmt_bytes(v.stored_nbytes())} stored"
                                             if v is st.active else fmt_bytes(v.nbytes()))
            cells = [v.name, "● yes" if v is st.active else "", removed, memory, v.describe()]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.UserRole, v.id)
                flags = Qt.ItemIsSelectable | Qt.ItemIsEnabled
                if c == 0 and not v.is_dense:
                    flags |= Qt.ItemIsEditable
                item.setFlags(flags)
                if c in (2, 3):
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                t.setItem(r, c, item)
        t.blockSignals(False)
        n = len(st.variants) - 1
        self.memory_label.setText(f"{n} pruned variant{'s' if n != 1 else ''}, "
                                  f"{fmt_bytes(st.session.nbytes()) if st.session else '0 B'} of memory in all")
        self._selection_changed()

    def _renamed(self, item: QTableWidgetItem) -> None:
        if item.column() != 0:
            return
        vid = item.data(Qt.UserRole)
        try:
            old = self.ctx.state.session.get(vid).name
            self.ctx.state.rename_variant(vid, item.text())
            if old != self.ctx.state.session.get(vid).name:
                self.ctx.log(f"Renamed the variant “{old}” to “{self.ctx.state.session.get(vid).name}”")
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            self.show_variants()

    def _selection_changed(self) -> None:
        v = self.selected_variant()
        busy = self.ctx.state.busy
        self.use_btn.setEnabled(not busy and v is not None and v is not self.ctx.state.active)
        self.delete_btn.setEnabled(not busy and v is not None and not v.is_dense)

    def show_active(self, variant=None) -> None:
        """Draw the per-block sparsity and the summary of the variant the model holds."""
        res = self.ctx.state.prune_result
        self.revert_btn.setEnabled(not self.ctx.state.busy and res is not None)
        if res is None:
            self.bars.setOpts(x=[], height=[])
            self.target_line.hide()
            self._drawn = None
            self.summary.setHtml("<p style='color:#666'>The model is dense (not pruned)."
                                 + (" Put a variant in the model to see it here." if len(self.ctx.state.variants) > 1
                                    else "") + "</p>")
            return
        v = self.ctx.state.active
        sp = np.asarray(res.block_sparsity, dtype=float)
        self.bars.setOpts(x=np.arange(len(sp)), height=sp, width=0.75)
        p = self.plot_box.plot
        p.setXRange(-0.6, len(sp) - 0.4, padding=0)
        p.setYRange(0, max(1.0, float(sp.max()) * 1.05 if len(sp) else 1.0), padding=0)
        step = max(1, len(sp) // 18)
        ticks = [[(i, str(i)) for i in range(0, len(sp), step)]]
        cfg = res.config
        title = (f"<span style='font-size:11pt; font-weight:600; color:#24292f'>Measured sparsity per block</span>"
                 f"<br><span style='font-size:9pt; color:#57606a'>{html.escape(v.name)}</span>")
        # Re-laying out axis labels and the HTML title costs tens of milliseconds on a busy machine:
        # only when they change.
        if getattr(self, "_drawn", None) != (ticks, cfg["sparsity"], title):
            p.getAxis("bottom").setTicks(ticks)
            self.target_line.setValue(cfg["sparsity"])
            self.target_line.label.setFormat(f"target {cfg['sparsity']:.0%}")
            p.setTitle(title)
            self._drawn = (ticks, cfg["sparsity"], title)
        self.target_line.show()
        # Counts from the core's numbers only: summing 100 M mask entries here would stall the window.
        n_params = sum(r.numel for r in res.records.values())
        n_zero = int(round(res.overall * n_params))
        info = self.ctx.state.info or {}
        skipped = (info.get("prunable_modules") or 0) - len(res.records)
        cal = res.calibration
        cal_txt = "none (magnitude)" if not cal else html.escape(
            f"{cal.get('label') or cal.get('kind')} — {cal.get('samples')} samples, {cal.get('tokens')} tokens")
        if res.contrast:
            cal_txt += html.escape(f"; contrast set {res.contrast.get('label') or res.contrast.get('kind')}")
        text = (
            "<table cellpadding='2'>"
            f"<tr><td><b>Removed</b></td><td>{100 * res.overall:.2f} % of the weights in {len(res.records)} pruned "
            f"layers ({n_zero:,} of {n_params:,})</td></tr>"
            f"<tr><td><b>Settings</b></td><td>{cfg['method']}, {cfg['pattern']}, sparsity {cfg['sparsity']}"
            f"{', OWL' if cfg.get('layerwise') == 'owl' else ''}, compared within "
            f"{'each row' if cfg['group'] == 'row' else 'the layer'}</td></tr>"
            f"<tr><td><b>Left dense</b></td><td>{skipped} layers; blocks "
            f"{', '.join(map(str, cfg['skip_blocks'])) or 'none'}; patterns {', '.join(cfg['skip']) or 'none'}</td></tr>"
            f"<tr><td><b>Calibration</b></td><td>{cal_txt}</td></tr>"
            f"<tr><td><b>Memory</b></td><td>{fmt_bytes(v.nbytes())} while the model holds it (mask bits and what gives "
            f"the dense weights back); {fmt_bytes(v.stored_nbytes())} when another variant is in the model</td></tr>"
            f"<tr><td><b>Time</b></td><td>{res.seconds:.1f} s</td></tr></table>")
        QTimer.singleShot(0, lambda: self.summary.setHtml(text))
        self.progress.setValue(1000)

    def sparsity_data(self) -> np.ndarray:
        """The bar heights of the per-block plot (for tests)."""
        return np.asarray(self.bars.opts["height"], dtype=float)

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.prune_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        self.revert_btn.setEnabled(not busy and self.ctx.state.prune_result is not None)
        self._selection_changed()

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        try:
            recipe.pruning = self.config()
        except PolypruneError:
            recipe.pruning = PruneConfig(method=self.method.currentData(), sparsity=self.sparsity.value(),
                                         pattern=self.pattern.currentData(), group=self.group_box.currentData(),
                                         batch_size=self.batch.value())
        try:
            recipe.contrast = self.contrast_spec()
        except PolypruneError:
            recipe.contrast = None

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.set_config(recipe.pruning)
        c = recipe.contrast
        if c:
            kind = c.get("kind")
            self.contrast_kind.setCurrentIndex(max(0, self.contrast_kind.findData(kind)))
            if kind == "text":
                self.contrast_file.setText(str(c.get("file", "")))
            else:
                lang = c.get("lang") or (c.get("langs") or ["deu_Latn"])[0]
                self.contrast_lang.set_code(lang)
        self._method_changed()


def v_lay_wrap(widget: QWidget) -> QVBoxLayout:
    """A layout holding only ``widget`` (for :func:`~polyprune.gui.widgets.group`)."""
    lay = QVBoxLayout()
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(widget)
    return lay
