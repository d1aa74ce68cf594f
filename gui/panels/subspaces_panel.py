"""Subspaces panel: where languages separate inside the model, and Lens to improve one.

Per block it shows the sentences projected onto the language-specific subspace (coloured by
language; hover shows the sentence), a language-distance matrix, how much of the sentences'
variation lies in the specific subspace across blocks, and each language's direction from the
central language. The Lens box fine-tunes the top blocks for target languages, can undo it, and
exports the model. Every number drawn is the core's (:mod:`polyprune.subspaces`).
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSlider, QSpinBox, QSplitter,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from polyprune.errors import PolypruneError
from polyprune.fileio import output_folder
from polyprune.languages import display_label, language_name
from polyprune.subspaces import LensConfig, SubspacesConfig
from polyprune.subspaces.lens import apply_lens, export_lens
from polyprune.subspaces.space import compute_subspaces, load_subspaces, save_folder

from ..widgets import LanguageList, PlotBox, settings_column, group, heading, help_label, primary, results_table, style_plot

#: Colour-blind-safe categorical colours (Okabe-Ito, then Tableau) for languages.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]

HELP = ("Zhao et al. (2024, Lens) split each language's representation in the top blocks into a part all "
        "languages share (the language-agnostic direction) and a part that tells languages apart (the "
        "language-specific subspace, spanned by the differences between the languages' mean representations). "
        "Measure it on sentences of several languages to see which blocks separate languages and which "
        "languages sit close together; Lens then fine-tunes only the top blocks so a weak language lines up "
        "with the central language where languages share meaning and keeps its own identity elsewhere.")


def short_codes(codes: list[str]) -> list[str]:
    """Axis labels: the ISO 639-3 part of each FLORES code (``eng``), the whole code where two share it."""
    iso = [c.split("_")[0] for c in codes]
    return [i if iso.count(i) == 1 else c for i, c in zip(iso, codes)]


class SubspacesPanel(QWidget):
    """Measure and inspect language subspaces; apply, undo and export Lens."""

    title = "Subspaces"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.subspaces = None
        self.lens_result = None
        self.lens_model = None  # the model the Lens result belongs to
        sd, ld = SubspacesConfig(), LensConfig()

        # --- subspace settings ---
        self.languages = LanguageList(sd.languages, "The languages to compare (at least two); add them by name")
        self.central = QComboBox()
        self.central.setToolTip("The central language: every language's direction is measured from it (Lens: English)")
        self.languages.list.model().rowsInserted.connect(self._sync_central)
        self.languages.list.model().rowsRemoved.connect(self._sync_central)
        self._sync_central()
        self.central.setCurrentIndex(max(0, self.languages.codes().index(sd.central)))
        self.texts = QLineEdit(sd.texts)
        self.texts.setToolTip("Where sentences come from: flores (the data folder's FLORES-200, parallel), "
                              "flores:DIR, builtin, or file:PATH with {lang} in the path (one sentence a line)")
        self.split = QComboBox()
        self.split.addItems(["dev", "devtest"])
        self.split.setToolTip("FLORES-200 split")
        self.samples = QSpinBox()
        self.samples.setRange(1, 100000)
        self.samples.setValue(sd.samples)
        self.samples.setToolTip("The first N sentences of every language (Lens used 300)")
        self.seq_len = QSpinBox()
        self.seq_len.setRange(2, 8192)
        self.seq_len.setValue(sd.seq_len)
        self.seq_len.setToolTip("Each sentence is cut to this many tokens (Lens used 64)")
        self.batch = QSpinBox()
        self.batch.setRange(1, 512)
        self.batch.setValue(sd.batch_size)
        self.batch.setToolTip("Sentences per forward pass: lower it if memory runs out")
        self.measure_btn = primary(QPushButton("Measure subspaces"))
        self.measure_btn.setToolTip("Run the sentences through the model and decompose every block's language means")
        self.measure_btn.clicked.connect(self.measure)
        self.open_btn = QPushButton("Open…")
        self.open_btn.setToolTip("Show a subspaces.npz saved earlier (by this panel or polyprune subspaces)")
        self.open_btn.clicked.connect(self._open_dialog)
        self.save_btn = QPushButton("Save…")
        self.save_btn.setToolTip("Write subspaces.npz, subspaces.json, blocks.csv, distances.csv and the four plots "
                                 "as PNG into a new folder")
        self.save_btn.clicked.connect(self._save_dialog)
        self.save_btn.setEnabled(False)
        form = QFormLayout()
        form.addRow("Languages", self.languages)
        form.addRow("Central language", self.central)
        form.addRow("Sentences", self.texts)
        form.addRow("Split", self.split)
        form.addRow("Sentences per language", self.samples)
        form.addRow("Tokens per sentence", self.seq_len)
        form.addRow("Batch size", self.batch)
        buttons = QHBoxLayout()
        buttons.addWidget(self.measure_btn)
        buttons.addWidget(self.open_btn)
        buttons.addWidget(self.save_btn)
        form.addRow(buttons)
        sub_box = group("Language subspaces", form)

        # --- Lens settings ---
        self.targets = LanguageList(ld.targets, "Languages Lens should improve (other than the central language)")
        self.targets.picker.set_code("hin_Deva")
        self.top_blocks = QSpinBox()
        self.top_blocks.setRange(0, 1000)
        self.top_blocks.setSpecialValueText("auto (2 of 32, scaled)")
        self.top_blocks.setValue(0)
        self.top_blocks.setToolTip("How many of the last blocks are trained; everything else stays frozen")
        self.lens_samples = QSpinBox()
        self.lens_samples.setRange(1, 100000)
        self.lens_samples.setValue(ld.samples)
        self.lens_samples.setToolTip("Parallel training examples from the sentences above (Lens used 200)")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(8)
        self.lr.setRange(1e-8, 1.0)
        self.lr.setSingleStep(1e-6)
        self.lr.setValue(ld.lr)
        self.lr.setToolTip("Learning rate of AdamW (Lens: 0.00001)")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(ld.epochs)
        self.epochs.setToolTip("Passes over the training examples (Lens: 1)")
        self.weights = {}
        for key, tip in (("retain", "Keep the central language's states as they were"),
                         ("align", "Draw the targets to the central language along the language-agnostic direction"),
                         ("separate", "Move the targets along their own direction in the language-specific subspace")):
            sp = QDoubleSpinBox()
            sp.setRange(0.0, 1000.0)
            sp.setSingleStep(0.1)
            sp.setValue(getattr(ld, f"{key}_weight"))
            sp.setToolTip(f"Weight of the {key} loss: {tip}")
            self.weights[key] = sp
        self.lens_btn = primary(QPushButton("Run Lens"))
        self.lens_btn.setToolTip("Fine-tune the top blocks for the target languages (reversible: Undo Lens)")
        self.lens_btn.clicked.connect(self.run_lens)
        self.undo_btn = QPushButton("Undo Lens")
        self.undo_btn.setToolTip("Put the trained blocks back exactly as they were")
        self.undo_btn.clicked.connect(self.undo_lens)
        self.undo_btn.setEnabled(False)
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("Write the model after Lens as a checkpoint folder; the model card records the settings")
        self.export_btn.clicked.connect(self._export_dialog)
        self.export_btn.setEnabled(False)
        lform = QFormLayout()
        lform.addRow("Targets", self.targets)
        lform.addRow("Top blocks trained", self.top_blocks)
        lform.addRow("Training examples", self.lens_samples)
        lform.addRow("Learning rate", self.lr)
        lform.addRow("Epochs", self.epochs)
        for key, sp in self.weights.items():
            lform.addRow(f"{key.capitalize()} weight", sp)
        lb = QHBoxLayout()
        lb.addWidget(self.lens_btn)
        lb.addWidget(self.undo_btn)
        lb.addWidget(self.export_btn)
        lform.addRow(lb)
        self.lens_table = results_table(["target", "align gap before", "after", "shift after", "central drift"],
                                        "On the training examples: the gap between target and central language along "
                                        "the agnostic direction, the share of its direction the target moved "
                                        "(goal 1), and how far the central language's states drifted")
        self.lens_table.setMaximumHeight(110)
        lform.addRow(self.lens_table)
        lens_box = group("Enhance a language (Lens)", lform)

        controls = QWidget()
        cl = QVBoxLayout(controls)
        cl.setContentsMargins(0, 0, 6, 0)
        cl.addWidget(sub_box)
        cl.addWidget(lens_box)
        cl.addStretch(1)
        scroll = settings_column(controls)

        # --- block selector and plots ---
        self.block = QSpinBox()
        self.block.setRange(1, 1)
        self.block.setToolTip("The block whose subspace the scatter and the distance matrix show (1 = first block)")
        self.block_slider = QSlider(Qt.Horizontal)
        self.block_slider.setRange(1, 1)
        self.block.valueChanged.connect(self.block_slider.setValue)
        self.block_slider.valueChanged.connect(self.block.setValue)
        self.block.valueChanged.connect(self._draw_block)
        brow = QHBoxLayout()
        brow.addWidget(QLabel("Block"))
        brow.addWidget(self.block)
        brow.addWidget(self.block_slider, 1)
        self.status = QLabel("Measure subspaces (or open a saved file) to see them here.")
        self.status.setObjectName("help")

        self.scatter_box = PlotBox("subspace_scatter")
        style_plot(self.scatter_box.plot, "Specific subspace", "specific coordinate 2",
                   "specific coordinate 1")
        self.scatter = pg.ScatterPlotItem(size=7, pen=None)
        self.mean_marks = pg.ScatterPlotItem(size=16, pen=pg.mkPen("#222", width=2), symbol="o")
        self.arrows = pg.PlotDataItem(pen=pg.mkPen("#222", width=1.5), connect="pairs")
        self.scatter_box.plot.addItem(self.scatter)
        self.scatter_box.plot.addItem(self.arrows)
        self.scatter_box.plot.addItem(self.mean_marks)
        self.legend = self.scatter_box.plot.addLegend(offset=(8, 8), brush=pg.mkBrush(255, 255, 255, 235),
                                                      pen=pg.mkPen("#bbb"), labelTextColor="#24292f")
        self.legend.setZValue(100)  # above the points it may cover
        # no tooltip on the plot itself: it would pop up over the points whose sentences the caption shows
        self.scatter_box.caption.setText("Each point is a sentence: hover over one to read it here. Large circles "
                                         "are the language means, lines the directions from the central language.")
        self._proxy = pg.SignalProxy(self.scatter_box.plot.scene().sigMouseMoved, rateLimit=30, slot=self._on_hover)

        self.dist_box = PlotBox("language_distances")
        style_plot(self.dist_box.plot, "Distance between languages", "", "")
        self.dist_img = pg.ImageItem(axisOrder="row-major")
        self.dist_box.plot.addItem(self.dist_img)
        self.dist_box.plot.invertY(True)
        self.dist_box.plot.setAspectLocked(True)
        self.dist_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.dist_texts: list[pg.TextItem] = []
        self.dist_box.caption.setText("Distance between language means in the specific subspace, in "
                                      "within-language spreads (0 = same place).")

        self.share_box = PlotBox("specific_share")
        style_plot(self.share_box.plot, "Share in the language-specific subspace", "share of variation", "block")
        self.share_curve = self.share_box.plot.plot([], [], pen=pg.mkPen("#4C78A8", width=2), symbol="o",
                                                    symbolSize=6, symbolBrush="#4C78A8")
        self.share_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#999", style=Qt.DashLine))
        self.share_box.plot.addItem(self.share_line)
        self.share_box.caption.setText("How much of the sentences' variation lies in the specific subspace: "
                                       "high where blocks separate languages.")

        self.dir_box = PlotBox("directions")
        style_plot(self.dir_box.plot, "Direction from the central language", "size (within-language spreads)", "block")
        self.dir_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#999", style=Qt.DashLine))
        self.dir_box.plot.addItem(self.dir_line)
        self.dir_legend = self.dir_box.plot.addLegend(offset=(8, 8), brush=pg.mkBrush(255, 255, 255, 235), labelTextColor="#24292f",
                                                      pen=pg.mkPen("#bbb"))
        self.dir_curves: dict[str, pg.PlotDataItem] = {}
        self.dir_box.caption.setText("Each language's mean minus the central language's, projected on the specific "
                                     "subspace (what Lens moves a target along).")

        self.boxes = [self.scatter_box, self.dist_box, self.share_box, self.dir_box]
        for box in self.boxes:
            box.saved.connect(lambda p: ctx.log(f"Saved plot {p}"))
            box.save_failed.connect(lambda pr, fx: ctx.error(pr, fx))
        grid = QGridLayout()
        grid.addWidget(self.scatter_box, 0, 0)
        grid.addWidget(self.dist_box, 0, 1)
        grid.addWidget(self.share_box, 1, 0)
        grid.addWidget(self.dir_box, 1, 1)
        plots = QWidget()
        pl = QVBoxLayout(plots)
        pl.setContentsMargins(6, 0, 0, 0)
        pl.addLayout(brow)
        pl.addWidget(self.status)
        pl.addLayout(grid, 1)

        split = QSplitter(Qt.Horizontal)
        split.addWidget(scroll)
        split.addWidget(plots)
        split.setStretchFactor(1, 1)
        split.setSizes([510, 900])
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Language subspaces (Lens)"))
        lay.addWidget(help_label(HELP))
        lay.addWidget(split, 1)

        ctx.state.model_loaded.connect(self._model_changed)
        ctx.state.busy_changed.connect(self.set_busy)

    # --- settings -------------------------------------------------------------------------
    def _sync_central(self, *args) -> None:
        current = self.central.currentData()
        self.central.blockSignals(True)
        self.central.clear()
        for c in self.languages.codes():
            self.central.addItem(display_label(c), c)
        i = self.central.findData(current)
        self.central.setCurrentIndex(i if i >= 0 else (self.central.findData("eng_Latn") if "eng_Latn" in
                                                        self.languages.codes() else 0))
        self.central.blockSignals(False)

    def subspaces_config(self) -> SubspacesConfig:
        """The subspace settings shown (not yet validated)."""
        return SubspacesConfig(languages=self.languages.codes(), central=self.central.currentData() or "",
                               texts=self.texts.text(), split=self.split.currentText(), samples=self.samples.value(),
                               seq_len=self.seq_len.value(), batch_size=self.batch.value())

    def lens_config(self) -> LensConfig:
        """The Lens settings shown (not yet validated): training and subspace sentences from the
        subspace settings, the other listed languages as further subspace languages."""
        sc = self.subspaces_config()
        return LensConfig(central=sc.central, targets=self.targets.codes(),
                          top_blocks=self.top_blocks.value() or None, texts=sc.texts, split=sc.split,
                          samples=self.lens_samples.value(), space_languages=list(sc.languages),
                          space_split=sc.split, space_samples=sc.samples, space_seq_len=sc.seq_len,
                          lr=self.lr.value(), epochs=self.epochs.value(), batch_size=sc.batch_size,
                          retain_weight=self.weights["retain"].value(), align_weight=self.weights["align"].value(),
                          separate_weight=self.weights["separate"].value())

    def set_configs(self, sub: SubspacesConfig | None = None, lens: LensConfig | None = None) -> None:
        """Show settings (e.g. from a recipe)."""
        if sub is not None:
            self.languages.set_codes(sub.languages)
            i = self.central.findData(sub.central)
            if i >= 0:
                self.central.setCurrentIndex(i)
            self.texts.setText(sub.texts)
            self.split.setCurrentText(sub.split)
            self.samples.setValue(sub.samples)
            self.seq_len.setValue(sub.seq_len)
            self.batch.setValue(sub.batch_size)
        if lens is not None:
            self.targets.set_codes(lens.targets)
            self.top_blocks.setValue(lens.top_blocks or 0)
            self.lens_samples.setValue(lens.samples)
            self.lr.setValue(lens.lr)
            self.epochs.setValue(lens.epochs)
            for key, sp in self.weights.items():
                sp.setValue(getattr(lens, f"{key}_weight"))

    # --- jobs -----------------------------------------------------------------------------
    def measure(self):
        """Measure subspaces of the loaded model in a background job."""
        if not self.ctx.require_model():
            return None
        try:
            cfg = self.subspaces_config().validate()
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        loaded = self.ctx.state.loaded

        def job(progress):
            return compute_subspaces(loaded, cfg, progress)

        def done(sub):
            self.show_subspaces(sub)
            self.ctx.log(f"Measured subspaces of {len(sub.languages)} languages in {sub.n_blocks} blocks", "ok")

        return self.ctx.run_job("Measuring subspaces", job, on_finished=done, while_modified=True)

    def run_lens(self):
        """Apply Lens to the loaded model in a background job (cancel leaves the model as it was)."""
        if not self.ctx.require_model():
            return None
        if self.lens_result is not None and self.lens_model is self.ctx.state.loaded.model:
            self.ctx.error("Lens was already applied to this model",
                           "press Undo Lens first, or export the model as it is")
            return None
        try:
            cfg = self.lens_config().validate()
            n_blocks = (self.ctx.state.info or {}).get("n_blocks")
            if n_blocks:
                cfg.blocks_for(n_blocks)
        except PolypruneError as e:
            self.ctx.error(e.problem.replace("top_blocks", "Top blocks trained"), e.fix or "")
            return None
        loaded = self.ctx.state.loaded

        def job(progress):
            return apply_lens(loaded, cfg, progress)

        def done(res):
            self.lens_result, self.lens_model = res, loaded.model
            self.ctx.state.set_model_note("Lens")
            self.show_lens(res)
            self.show_subspaces(res.subspaces)
            self.ctx.log(f"Lens trained blocks {', '.join(str(b + 1) for b in res.blocks)} in {res.steps} steps "
                         f"({res.seconds:.0f} s); Undo Lens puts them back", "ok")

        return self.ctx.run_job("Lens", job, on_finished=done)

    def undo_lens(self):
        """Put the blocks Lens trained back exactly as they were."""
        res = self.lens_result
        if res is None or self.ctx.state.loaded is None or self.lens_model is not self.ctx.state.loaded.model:
            self.ctx.error("Lens has not been applied to this model", "run Lens first")
            return None

        def job(progress):
            progress.update(0, 1, "Putting the trained blocks back")
            res.restore()
            progress.update(1, 1, "Lens undone")

        def done(_):
            self.lens_result = self.lens_model = None
            self.ctx.state.set_model_note(None)
            self.lens_table.setRowCount(0)
            self.set_busy(self.ctx.state.busy)
            self.ctx.log("Lens undone: the trained blocks are as they were", "ok")

        return self.ctx.run_job("Undoing Lens", job, on_finished=done, while_modified=True)

    def export_to(self, folder: str | Path, overwrite: bool = False):
        """Export the model after Lens to ``folder`` in a background job."""
        res, loaded = self.lens_result, self.ctx.state.loaded
        if res is None or loaded is None or self.lens_model is not loaded.model:
            self.ctx.error("There is no Lens result to export", "run Lens first")
            return None

        def job(progress):
            return export_lens(loaded, res, folder, overwrite=overwrite, progress=progress)

        return self.ctx.run_job("Exporting the Lens model", job, model_changing=False, while_modified=True,
                                on_finished=lambda out: self.ctx.log(f"Exported to {out}", "ok"))

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export the model after Lens to a new folder", "lens-model")
        if path:
            self.export_to(path, overwrite=Path(path).exists())

    # --- files ----------------------------------------------------------------------------
    def save_to(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the data files and the four plots (PNG) into a new folder.

        Raises:
            PolypruneError: nothing to save, or the folder cannot be written.
        """
        if self.subspaces is None:
            raise PolypruneError("There are no subspaces to save", "measure subspaces or open a saved file first")
        with output_folder(folder, kind="subspaces", overwrite=overwrite, replace_hint="confirm the replacement") as tmp:
            save_folder(self.subspaces, tmp)
            for box in self.boxes:
                box.save_to(tmp / f"{box.name}_block{self.block.value()}.png"
                            if box in (self.scatter_box, self.dist_box) else tmp / f"{box.name}.png")
        return Path(folder)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save subspaces data and plots into a new folder", "subspaces")
        if not path:
            return
        try:
            out = self.save_to(path, overwrite=Path(path).exists())
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return
        self.ctx.log(f"Saved subspaces data and plots in {out}", "ok")

    def open_file(self, path: str | Path) -> None:
        """Show a saved ``subspaces.npz`` (a dialog explains a bad file)."""
        try:
            sub = load_subspaces(path)
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return
        self.show_subspaces(sub)
        self.ctx.log(f"Opened {path}")

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open subspaces", "", "Subspaces (*.npz)")
        if path:
            self.open_file(path)

    # --- views ----------------------------------------------------------------------------
    def color(self, k: int) -> QColor:
        return QColor(PALETTE[k % len(PALETTE)])

    def show_subspaces(self, sub) -> None:
        """Show subspaces: block selector, curves across blocks, and the current block's plots."""
        self.subspaces = sub
        n = sub.n_blocks
        self.block.blockSignals(True)
        self.block_slider.blockSignals(True)
        self.block.setRange(1, n)
        self.block_slider.setRange(1, n)
        self.block.setValue(n)
        self.block_slider.setValue(n)
        self.block.blockSignals(False)
        self.block_slider.blockSignals(False)
        s = sub.settings
        self.status.setText(f"{len(sub.languages)} languages, {len(sub.sentences) // max(1, len(sub.languages))} "
                            f"sentences each, {n} blocks; central language {language_name(sub.central)}"
                            + (f"; model {s.get('model')}" if s.get("model") else ""))
        x = np.arange(1, n + 1)
        if sub.specific_coords is not None:
            self.share_curve.setData(x, sub.specific_share())
        self.share_box.plot.setYRange(0, 1.02, padding=0)
        for c in self.dir_curves.values():
            self.dir_box.plot.removeItem(c)
        self.dir_legend.clear()
        self.dir_curves = {}
        sizes = sub.direction_sizes()
        for k, lang in enumerate(sub.languages):
            if lang == sub.central:
                continue
            col = self.color(k)
            self.dir_curves[lang] = self.dir_box.plot.plot(x, sizes[:, k], pen=pg.mkPen(col, width=2), symbol="o",
                                                           symbolSize=5, symbolBrush=col, name=language_name(lang))
        self.save_btn.setEnabled(True)
        self._draw_block()

    def _draw_block(self, *args) -> None:
        sub = self.subspaces
        if sub is None:
            return
        l = self.block.value() - 1
        self.share_line.setValue(l + 1)
        self.dir_line.setValue(l + 1)
        K = len(sub.languages)
        owner = np.asarray(sub.sentence_language, dtype=int)
        pts = self.block_points(l)
        brushes = [pg.mkBrush(self.color(int(k)).lighter(110)) for k in owner]
        self.scatter.setData(x=pts[:, 0], y=pts[:, 1], brush=brushes, data=np.arange(len(pts)))
        means = self.mean_points(l)
        self.mean_marks.setData(x=means[:, 0], y=means[:, 1], brush=[pg.mkBrush(self.color(k)) for k in range(K)])
        c = sub.index(sub.central)
        seg = np.concatenate([[means[c], means[k]] for k in range(K) if k != c]) if K > 1 else np.zeros((0, 2))
        self.arrows.setData(seg[:, 0], seg[:, 1])
        self.legend.clear()
        for k, lang in enumerate(sub.languages):
            self.legend.addItem(pg.ScatterPlotItem(size=10, brush=pg.mkBrush(self.color(k)), pen=None),
                                language_name(lang) + (" (central)" if lang == sub.central else ""))
        ylab = "specific coordinate 2" if K >= 3 else "agnostic coordinate"
        self.scatter_box.plot.setTitle(f"<span style='font-size:11pt; font-weight:600; color:#24292f'>"
                                       f"Specific subspace, block {l + 1}</span>")
        self.scatter_box.plot.setLabel("left", ylab)
        self.scatter_box.plot.autoRange()
        # distance matrix
        D = sub.distances()[l]
        self.dist_img.setImage(D, levels=(0, max(float(D.max()), 1e-12)))
        self.dist_img.setColorMap(pg.colormap.get("viridis"))
        self.dist_img.setRect(0, 0, K, K)
        for t in self.dist_texts:
            self.dist_box.plot.removeItem(t)
        self.dist_texts = []
        for i in range(K):
            for j in range(K):
                t = pg.TextItem(f"{D[i, j]:.2f}", color="w" if D[i, j] < 0.6 * D.max() else "k", anchor=(0.5, 0.5))
                t.setPos(j + 0.5, i + 0.5)
                self.dist_box.plot.addItem(t)
                self.dist_texts.append(t)
        self.dist_box.plot.getAxis("left").setTicks([[(k + 0.5, lang) for k, lang in enumerate(sub.languages)]])
        self.dist_box.plot.getAxis("bottom").setTicks([[(k + 0.5, short) for k, short in
                                                         enumerate(short_codes(sub.languages))]])
        self.dist_box.plot.setTitle(f"<span style='font-size:11pt; font-weight:600; color:#24292f'>"
                                    f"Distance between languages, block {l + 1}</span>")
        self.dist_box.plot.setRange(xRange=(0, K), yRange=(0, K), padding=0.02)

    def block_points(self, l: int) -> np.ndarray:
        """``[S, 2]`` scatter positions at block index ``l``: the first two specific coordinates
        (with two languages: the specific coordinate and the agnostic coordinate)."""
        sub = self.subspaces
        x = sub.specific_coords[l]
        if x.shape[1] >= 2:
            return x[:, :2]
        return np.stack([x[:, 0], sub.agnostic_coords[l]], axis=1)

    def mean_points(self, l: int) -> np.ndarray:
        """``[K, 2]`` the language means in the scatter's coordinates."""
        owner = np.asarray(self.subspaces.sentence_language, dtype=int)
        pts = self.block_points(l)
        return np.stack([pts[owner == k].mean(axis=0) for k in range(len(self.subspaces.languages))])

    def hover_text(self, i: int, limit: int | None = None) -> str:
        """What hovering over sentence ``i`` shows (cut to ``limit`` characters)."""
        sub = self.subspaces
        lang = sub.languages[int(sub.sentence_language[i])]
        text = sub.sentences[i]
        if limit is not None and len(text) > limit:
            text = text[:limit - 1] + "…"
        return f"<b>{html.escape(language_name(lang))}</b> — {html.escape(text)}"

    def _on_hover(self, evt) -> None:
        if self.subspaces is None or not len(self.subspaces.sentences):
            return
        pos = evt[0]
        vb = self.scatter_box.plot.getViewBox()
        if not self.scatter_box.plot.sceneBoundingRect().contains(pos):
            return
        p = vb.mapSceneToView(pos)
        pts = self.block_points(self.block.value() - 1)
        px = vb.viewPixelSize()
        d = np.hypot((pts[:, 0] - p.x()) / max(px[0], 1e-30), (pts[:, 1] - p.y()) / max(px[1], 1e-30))
        i = int(np.argmin(d))
        if d[i] <= 8:
            self.scatter_box.caption.setText(self.hover_text(i, limit=160))
            self.scatter_box.caption.setToolTip(self.hover_text(i))

    def show_lens(self, res) -> None:
        """Fill the Lens table (before/after on the training examples)."""
        self.lens_table.setRowCount(0)
        for t in res.config["targets"]:
            b, a = res.before.get(t, {}), res.after.get(t, {})
            r = self.lens_table.rowCount()
            self.lens_table.insertRow(r)
            for c, v in enumerate([language_name(t), f"{b.get('align_gap', float('nan')):.4g}",
                                   f"{a.get('align_gap', float('nan')):.4g}", f"{a.get('shift', float('nan')):.3g}",
                                   f"{a.get('retain_drift', float('nan')):.3g}"]):
                self.lens_table.setItem(r, c, QTableWidgetItem(v))
        self.set_busy(self.ctx.state.busy)

    def _model_changed(self, loaded) -> None:
        self.lens_result = self.lens_model = None
        self.lens_table.setRowCount(0)
        self.set_busy(self.ctx.state.busy)

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Disable the buttons that start a model job while one runs."""
        lens_here = (self.lens_result is not None and self.ctx.state.loaded is not None
                     and self.lens_model is self.ctx.state.loaded.model)
        self.measure_btn.setEnabled(not busy)
        self.lens_btn.setEnabled(not busy)
        self.undo_btn.setEnabled(not busy and lens_here)
        self.export_btn.setEnabled(not busy and lens_here)

    # --- recipe ---------------------------------------------------------------------------
    def to_recipe(self, recipe) -> None:
        """Write this panel's settings into ``recipe`` (``recipe.subspaces`` and ``recipe.lens``)."""
        recipe.subspaces = self.subspaces_config()
        recipe.lens = self.lens_config()

    def apply_recipe(self, recipe) -> None:
        """Show ``recipe``'s subspace and Lens settings, when it has them."""
        sub, lens = getattr(recipe, "subspaces", None), getattr(recipe, "lens", None)
        if isinstance(sub, dict):
            sub = SubspacesConfig(**sub)
        if isinstance(lens, dict):
            lens = LensConfig(**lens)
        self.set_configs(sub if isinstance(sub, SubspacesConfig) else None,
                         lens if isinstance(lens, LensConfig) else None)
