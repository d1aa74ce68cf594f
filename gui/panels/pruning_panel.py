"""Pruning panel: method, pattern, sparsity, what to skip; run with progress and cancel; revert."""
from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                               QPushButton, QSlider, QSpinBox, QTextBrowser, QVBoxLayout, QWidget)

from dataclasses import fields

from polyprune import pruning as core_pruning
from polyprune.errors import PolypruneError
from polyprune.pruning import PruneConfig, prune, restore
from polyprune.recipe import Recipe

from ..widgets import GLOSSARY, PlotBox, bar_colors, group, heading, help_label, primary, style_plot
from .demos_panel import describe


# Methods offered, in this order, when the core provides them. ``wanda_refined`` needs a second
# (contrast) calibration set that recipes cannot name yet, so it is left to the command line.
METHOD_LABELS = {
    "wanda": ("Wanda — weight size × input size on the demonstrations", GLOSSARY["wanda"]),
    "magnitude": ("Magnitude — smallest weights (no demonstrations)", GLOSSARY["magnitude_method"]),
    "sparsegpt": ("SparseGPT — prune, then correct the remaining weights (slower)",
                  "SparseGPT (Frantar & Alistarh 2023) removes weights using the demonstrations and adjusts the "
                  "weights it keeps to make up for them. Slower than Wanda; often better at high sparsity."),
}
LAYERWISE_LABELS = {
    "uniform": ("Same sparsity in every block", "Every pruned block loses the same share of its weights"),
    "owl": ("OWL — prune blocks with many outliers less",
            "OWL (Yin et al. 2024) gives blocks with many large-magnitude features a lower sparsity and others a "
            "higher one, keeping the average. Needs demonstrations and the unstructured pattern."),
}
PRUNE_FIELDS = {f.name for f in fields(PruneConfig)}


def parse_blocks(text: str, n_blocks: int | None = None) -> list[int]:
    """``"0, 3-5, 17"`` -> ``[0, 3, 4, 5, 17]``.

    Raises:
        PolypruneError: not a list of block numbers, or a block the model does not have.
    """
    out: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise PolypruneError(f"'{part}' is not a block number",
                                 "list block numbers separated by commas, with ranges like 3-5") from None
    if n_blocks is not None:
        bad = [b for b in out if b < 0 or b >= n_blocks]
        if bad:
            raise PolypruneError(f"The model has no block {bad[0]} (it has blocks 0–{n_blocks - 1})",
                                 f"use block numbers from 0 to {n_blocks - 1}")
    return sorted(set(out))


class PruningPanel(QWidget):
    """Prune the loaded model in a background job; show per-block sparsity; revert to dense."""

    title = "Pruning"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self._extra: dict = {}

        self.method = QComboBox()
        for key, (label, tip) in METHOD_LABELS.items():
            if key in core_pruning.METHODS:
                self.method.addItem(label, key)
                self.method.setItemData(self.method.count() - 1, tip, Qt.ToolTipRole)
        self.method.setToolTip("How weights are chosen for removal. " + GLOSSARY["wanda"])
        self.layerwise = QComboBox()
        for key, (label, tip) in LAYERWISE_LABELS.items():
            if key in getattr(core_pruning, "LAYERWISE", ("uniform",)):
                self.layerwise.addItem(label, key)
                self.layerwise.setItemData(self.layerwise.count() - 1, tip, Qt.ToolTipRole)
        self.layerwise.setToolTip("Whether every block is pruned equally. " + LAYERWISE_LABELS["owl"][1])
        self.pattern = QComboBox()
        self.pattern.addItem("Unstructured (any weight)", "unstructured")
        self.pattern.addItem("2:4 (2 of every 4 weights)", "2:4")
        self.pattern.addItem("4:8 (4 of every 8 weights)", "4:8")
        self.pattern.setToolTip(GLOSSARY["nm"])
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 95)
        self.slider.setTickInterval(10)
        self.slider.setTickPosition(QSlider.TicksBelow)
        self.slider.setToolTip(GLOSSARY["sparsity"])
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0.0, 0.99)
        self.sparsity.setDecimals(2)
        self.sparsity.setSingleStep(0.05)
        self.sparsity.setToolTip(GLOSSARY["sparsity"])
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
        self.skip_blocks.setPlaceholderText("e.g. 0, 17 or 0-2")
        self.skip_blocks.setToolTip("Whole blocks to leave dense, by number (0 is the first block)")
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(8)
        self.batch.setToolTip("Demonstrations per forward pass; lower it if memory runs out")
        self.pattern.currentIndexChanged.connect(self._pattern_changed)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.layerwise.currentIndexChanged.connect(self._method_changed)

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Method", self.method)
        form.addRow("Pattern", self.pattern)
        form.addRow("Sparsity", sp_row)
        if self.layerwise.count() > 1:
            form.addRow("Per block", self.layerwise)
        else:
            self.layerwise.hide()
        form.addRow("Compare within", self.group_box)
        form.addRow("Skip layers", self.skip)
        form.addRow("Skip blocks", self.skip_blocks)
        form.addRow("Batch size", self.batch)
        self.calib_label = help_label("")
        form.addRow("Calibration", self.calib_label)

        self.prune_btn = primary(QPushButton("Prune"))
        self.prune_btn.setToolTip("Prune the loaded model block by block in the background (Ctrl+R)")
        self.prune_btn.clicked.connect(self.prune)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop pruning (Esc); every weight is put back as it was")
        self.cancel_btn.clicked.connect(self.ctx.cancel)
        self.cancel_btn.setEnabled(False)
        self.revert_btn = QPushButton("Revert to dense")
        self.revert_btn.setToolTip(GLOSSARY["revert"] + " (Ctrl+Shift+R)")
        self.revert_btn.clicked.connect(self.revert)
        self.revert_btn.setEnabled(False)
        btns = QHBoxLayout()
        btns.addWidget(self.prune_btn)
        btns.addWidget(self.cancel_btn)
        btns.addWidget(self.revert_btn)
        btns.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("%p %")
        self.progress_label = QLabel("Idle")

        left = QVBoxLayout()
        left.addLayout(form)
        left.addLayout(btns)
        left.addWidget(self.progress_label)
        left.addWidget(self.progress)
        left.addStretch(1)

        self.plot_box = PlotBox("block_sparsity")
        style_plot(self.plot_box.plot, "Measured sparsity per block", "share of weights removed", "decoder block")
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
        self.summary.setMaximumHeight(190)
        self.summary.setHtml("<p style='color:#666'>Not pruned yet.</p>")
        right = QVBoxLayout()
        right.addWidget(self.plot_box, 1)
        right.addWidget(self.summary)

        body = QHBoxLayout()
        body.addWidget(group("Settings", left), 4)
        body.addWidget(group("Result", right), 6)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("4 · Pruning"))
        lay.addWidget(help_label(
            "Pruning sets the least important weights of every linear layer in the decoder blocks to zero. "
            "It runs block by block; Cancel stops it and puts every weight back. Revert to dense undoes a "
            "finished pruning exactly, without reloading the model."))
        lay.addLayout(body, 1)

        self.set_config(PruneConfig())
        ctx.state.pruned.connect(self.show_result)
        ctx.state.reverted.connect(self.show_reverted)
        ctx.state.model_loaded.connect(lambda _: self.show_reverted())
        ctx.state.busy_changed.connect(self.set_busy)
        ctx.runner.progress.connect(self._progress)
        ctx.state.calibration_changed.connect(lambda _: self._update_calib())
        ctx.state.model_loaded.connect(lambda _: self._update_calib())
        self._update_calib()

    # --- settings -----------------------------------------------------------------------
    def _sync_spin(self, v: int) -> None:
        if abs(self.sparsity.value() * 100 - v) >= 0.5:
            self.sparsity.setValue(v / 100)

    def _sync_slider(self, v: float) -> None:
        if self.slider.value() != round(v * 100):
            self.slider.blockSignals(True)
            self.slider.setValue(int(round(v * 100)))
            self.slider.blockSignals(False)

    def _pattern_changed(self) -> None:
        pat = self.pattern.currentData()
        self.group_box.setEnabled(pat == "unstructured")
        if pat != "unstructured":
            n, m = (int(x) for x in pat.split(":"))
            self.sparsity.setValue(n / m)

    def _method_changed(self) -> None:
        self._update_calib()

    def _update_calib(self) -> None:
        if self.method.currentData() == "magnitude" and self.layerwise.currentData() in (None, "uniform"):
            self.calib_label.setText("not needed for magnitude pruning")
            return
        cfg, text = self.ctx.demos_config()
        self.calib_label.setText(f"{describe(cfg, text)}; {cfg.samples} samples of up to {cfg.seq_len} tokens "
                                 "(set in Demonstrations)")

    def config(self) -> PruneConfig:
        """The settings as a :class:`PruneConfig` (not validated)."""
        skip_blocks_text = self.skip_blocks.text()
        n = self.ctx.state.info["n_blocks"] if self.ctx.state.info else None
        kw = dict(method=self.method.currentData(), sparsity=round(self.sparsity.value(), 4),
                  pattern=self.pattern.currentData(), group=self.group_box.currentData(),
                  skip=[s.strip() for s in self.skip.text().split(",") if s.strip()],
                  skip_blocks=parse_blocks(skip_blocks_text, n), batch_size=self.batch.value())
        if "layerwise" in PRUNE_FIELDS and self.layerwise.currentData():
            kw["layerwise"] = self.layerwise.currentData()
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
        self.layerwise.setCurrentIndex(max(0, self.layerwise.findData(getattr(cfg, "layerwise", "uniform"))))
        self.pattern.blockSignals(True)
        self.pattern.setCurrentIndex(max(0, self.pattern.findData(cfg.pattern)))
        self.pattern.blockSignals(False)
        self.group_box.setEnabled(cfg.pattern == "unstructured")
        self.sparsity.setValue(cfg.sparsity)
        self.group_box.setCurrentIndex(max(0, self.group_box.findData(cfg.group)))
        self.skip.setText(", ".join(cfg.skip))
        self.skip_blocks.setText(", ".join(str(b) for b in cfg.skip_blocks))
        self.batch.setValue(cfg.batch_size)

    # --- jobs ---------------------------------------------------------------------------
    def prune(self):
        """Validate the settings, then prune in a background job (re-pruning starts from dense)."""
        if not self.ctx.require_model():
            return None
        try:
            cfg = self.config()
            cfg.validate()
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        st = self.ctx.state
        snap = None
        needs = getattr(cfg, "needs_calibration", cfg.method != "magnitude")
        if needs and cfg.sparsity > 0:
            snap = self.ctx.calibration_snapshot()
            if snap is None:
                return None
        model = st.loaded.model
        previous = st.prune_result

        def job(progress):
            if previous is not None:
                progress.update(0, 1, "Reverting the previous pruning first")
                restore(model, previous.records)
            cal = snap.get(progress.sub(0, 0.02)) if snap is not None else None
            return prune(model, cfg, cal, progress.sub(0.02, 1.0)), cal

        def done(out):
            res, cal = out
            if snap is not None and cal is not None:
                snap.store(cal)
            st.set_pruned(res)
            self.ctx.log(f"Pruned {len(res.records)} layers in {res.seconds:.1f} s: {cfg.method}, {cfg.pattern}, "
                         f"{100 * res.overall:.2f} % of the pruned layers' weights removed")

        def stopped():
            self.progress_label.setText("Cancelled: every weight was put back")
            if previous is not None:
                st.set_reverted()
                self.ctx.log("The model is dense now (the previous pruning was reverted before the new one started)")

        def failed(problem, fix, tb):
            self.progress_label.setText("Failed: the model was left unchanged")
            if previous is not None:
                st.set_reverted()

        self.progress.setValue(0)
        self.progress_label.setText("Starting…")
        return self.ctx.run_job("Pruning", job, on_finished=done, on_cancelled=stopped, on_failed=failed)

    def revert(self):
        """Put every pruned weight back (bit-identical) in a background job."""
        st = self.ctx.state
        if st.prune_result is None or st.loaded is None:
            self.ctx.error("The model is not pruned", "nothing to revert: prune it first")
            return None
        model, records = st.loaded.model, st.prune_result.records

        def job(progress):
            progress.update(0, 1, "Restoring the removed weights")
            restore(model, records)
            progress.update(1, 1, "Dense again")

        def done(_):
            st.set_reverted()
            self.ctx.log("Reverted to the dense model (every removed weight put back)")

        return self.ctx.run_job("Reverting to dense", job, on_finished=done)

    # --- views --------------------------------------------------------------------------
    def _progress(self, frac: float, msg: str) -> None:
        if self.ctx.runner.current is not None and self.ctx.runner.current.name == "Pruning":
            self.progress.setValue(int(frac * 1000))
            self.progress_label.setText(msg)

    def show_result(self, res) -> None:
        """Draw the per-block sparsity and the summary of a pruning."""
        sp = np.asarray(res.block_sparsity, dtype=float)
        self.bars.setOpts(x=np.arange(len(sp)), height=sp, width=0.75)
        p = self.plot_box.plot
        p.setXRange(-0.6, len(sp) - 0.4, padding=0)
        p.setYRange(0, max(1.0, float(sp.max()) * 1.05 if len(sp) else 1.0), padding=0)
        step = max(1, len(sp) // 18)
        p.getAxis("bottom").setTicks([[(i, str(i)) for i in range(0, len(sp), step)]])
        self.target_line.setValue(res.config["sparsity"])
        self.target_line.label.setFormat(f"target {res.config['sparsity']:.0%}")
        self.target_line.show()
        cfg = res.config
        # Counts from the core's numbers only: summing 100 M mask entries here would stall the GUI.
        n_params = sum(r.mask.numel() for r in res.records.values())
        n_zero = int(round(res.overall * n_params))
        info = self.ctx.state.info or {}
        skipped = (info.get("prunable_modules") or 0) - len(res.records)
        cal = res.calibration
        cal_txt = "none (magnitude)" if not cal else (
            f"{html.escape(str(cal.get('kind')))} — {cal.get('src')} → {cal.get('tgt')}, {cal.get('samples')} samples, "
            f"{cal.get('tokens')} tokens")
        self.summary.setHtml(
            "<table cellpadding='2'>"
            f"<tr><td><b>Removed</b></td><td>{100 * res.overall:.2f} % of the weights in {len(res.records)} pruned layers "
            f"({n_zero:,} of {n_params:,})</td></tr>"
            f"<tr><td><b>Settings</b></td><td>{cfg['method']}, {cfg['pattern']}, sparsity {cfg['sparsity']}, "
            f"compared within {'each row' if cfg['group'] == 'row' else 'the layer'}</td></tr>"
            f"<tr><td><b>Left dense</b></td><td>{skipped} layers; blocks {', '.join(map(str, cfg['skip_blocks'])) or 'none'}"
            f"; patterns {', '.join(cfg['skip']) or 'none'}</td></tr>"
            f"<tr><td><b>Calibration</b></td><td>{cal_txt}</td></tr>"
            f"<tr><td><b>Time</b></td><td>{res.seconds:.1f} s</td></tr></table>")
        self.progress.setValue(1000)
        self.progress_label.setText("Pruned")
        self.revert_btn.setEnabled(not self.ctx.state.busy)

    def sparsity_data(self) -> np.ndarray:
        """The bar heights of the per-block plot (for tests)."""
        return np.asarray(self.bars.opts["height"], dtype=float)

    def show_reverted(self) -> None:
        """Clear the pruning result views."""
        self.bars.setOpts(x=[], height=[])
        self.target_line.hide()
        self.summary.setHtml("<p style='color:#666'>Not pruned: the model is dense.</p>")
        self.progress.setValue(0)
        self.revert_btn.setEnabled(False)

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.prune_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        self.revert_btn.setEnabled(not busy and self.ctx.state.prune_result is not None)

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        try:
            recipe.pruning = self.config()
        except PolypruneError:
            recipe.pruning = PruneConfig(method=self.method.currentData(), sparsity=self.sparsity.value(),
                                         pattern=self.pattern.currentData(), group=self.group_box.currentData(),
                                         batch_size=self.batch.value())

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.set_config(recipe.pruning)
