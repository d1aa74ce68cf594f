"""Feature magnitudes panel: heatmap of layers × hidden dimensions, top-k bars, token contexts,
and the overlap of two settings (translation vs monolingual, or two languages)."""
from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QSpinBox,
                               QSplitter, QTextBrowser, QVBoxLayout, QWidget)

from polyprune.demos import build_calibration
from polyprune.features import feature_magnitudes, overlap, token_contexts, top_k
from polyprune.languages import language_name
from polyprune.recipe import FeatureConfig, Recipe

from ..state import FeatureComparison
from ..widgets import (GLOSSARY, LanguagePicker, PlotBox, bar_colors, heading, help_label, plot_title, primary,
                       style_plot, write_csv)
from .demos_panel import describe

COMPARE_MODES = [
    ("mono", "Monolingual prompts (source language only)"),
    ("src", "Translation from another source language"),
    ("tgt", "Translation into another target language"),
]


def log_magnitudes(m: np.ndarray) -> np.ndarray:
    """What the heatmap shows: ``log10`` of the magnitudes (zeros clipped to 1e-12)."""
    return np.log10(np.maximum(np.asarray(m, dtype=np.float64), 1e-12)).astype(np.float32)


class FeaturesPanel(QWidget):
    """Measure and inspect large-magnitude features of the demonstrations."""

    title = "Features"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.selected: tuple[int, int] | None = None
        self._measured_cfg = None
        self._measured_pruned = False

        # --- controls ---
        self.measure_btn = primary(QPushButton("Measure features"))
        self.measure_btn.setToolTip("Run the demonstrations through the model and measure every hidden feature (Ctrl+M). "
                                    + GLOSSARY["magnitude"])
        self.measure_btn.clicked.connect(self.measure)
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(8)
        self.batch.setToolTip("Demonstrations per forward pass: lower it if memory runs out")
        self.k = QSpinBox()
        self.k.setRange(1, 200)
        self.k.setValue(20)
        self.k.setToolTip("How many of the largest dimensions the bar chart shows (Kim et al. show 20)")
        self.layer = QSpinBox()
        self.layer.setRange(0, 0)
        self.layer.setToolTip("Layer shown in the bar chart: 0 is the embedding output, n the output of block n")
        self.k.valueChanged.connect(self._draw_topk)
        self.layer.valueChanged.connect(self._draw_topk)
        self.save_csv = QPushButton("Save data (CSV)…")
        self.save_csv.setToolTip("Save the magnitudes (layer, dimension, value) as CSV, with all arrays as .npz")
        self.save_csv.clicked.connect(self._save_data)
        top = QHBoxLayout()
        top.addWidget(self.measure_btn)
        top.addSpacing(12)
        for lab, w in (("Batch", self.batch), ("Top-k", self.k), ("Layer", self.layer)):
            top.addWidget(QLabel(lab))
            top.addWidget(w)
        top.addStretch(1)
        top.addWidget(self.save_csv)

        self.mode = QComboBox()
        for key, label in COMPARE_MODES:
            self.mode.addItem(label, key)
        self.mode.setToolTip("The second setting to compare with the measured one")
        self.other = LanguagePicker("swh_Latn")
        self.other.setToolTip("The other language of the second setting. " + self.other.toolTip())
        self.ratio = QDoubleSpinBox()
        self.ratio.setRange(0.01, 1.0)
        self.ratio.setSingleStep(0.05)
        self.ratio.setValue(0.4)
        self.ratio.setToolTip("Share of the hidden dimensions compared (Kim et al.: the top 40%). " + GLOSSARY["overlap"])
        self.compare_btn = QPushButton("Compare")
        self.compare_btn.setToolTip("Measure the second setting and plot the overlap of top features per layer")
        self.compare_btn.clicked.connect(self.compare)
        self.mode.currentIndexChanged.connect(lambda: self.other.setEnabled(self.mode.currentData() != "mono"))
        self.other.setEnabled(False)
        cmp_row = QHBoxLayout()
        cmp_row.addWidget(QLabel("Compare with"))
        cmp_row.addWidget(self.mode)
        cmp_row.addWidget(self.other)
        cmp_row.addWidget(QLabel("top share"))
        cmp_row.addWidget(self.ratio)
        cmp_row.addWidget(self.compare_btn)
        cmp_row.addStretch(1)

        # --- heatmap ---
        self.heat_box = PlotBox("feature_heatmap")
        hp = self.heat_box.plot
        style_plot(hp, "Feature magnitudes per layer (log scale)", "layer (0 = embeddings)", "hidden dimension")
        self.heatmap = pg.ImageItem(axisOrder="row-major")
        hp.addItem(self.heatmap)
        hp.getViewBox().setMouseEnabled(x=True, y=False)
        self.cmap = pg.colormap.get("viridis")
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=self.cmap, label="log₁₀ magnitude", interactive=False,
                                        width=14, pen="#666", colorMapMenu=False)
        self.colorbar.setImageItem(self.heatmap, insert_in=hp)
        self.marker = pg.ScatterPlotItem(size=14, pen=pg.mkPen("#d62728", width=2), brush=None, symbol="s")
        hp.addItem(self.marker)
        self.hover = self.heat_box.caption
        self.hover.setObjectName("hover")
        self.hover.setText("Hover over the heatmap to read a value; click a cell to see its tokens.")
        self._proxy = pg.SignalProxy(hp.scene().sigMouseMoved, rateLimit=30, slot=self._on_hover)
        hp.scene().sigMouseClicked.connect(self._on_click)
        self.heat_box.setToolTip(GLOSSARY["feature"])

        # --- top-k bars ---
        self.top_box = PlotBox("feature_topk")
        style_plot(self.top_box.plot, "Top dimensions of a layer", "magnitude", "hidden dimension (largest first)")
        self.top_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=bar_colors()[0])
        self.top_box.plot.addItem(self.top_bars)
        self.top_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.top_box.plot.scene().sigMouseClicked.connect(self._on_bar_click)
        self.top_box.setToolTip("Click a bar to list the tokens where that dimension is largest")
        self._top_idx = np.zeros(0, dtype=int)

        # --- overlap ---
        self.ov_box = PlotBox("feature_overlap")
        style_plot(self.ov_box.plot, "Overlap of top features per layer", "share in common", "layer")
        self.ov_bars = pg.BarGraphItem(x=[], height=[], width=0.75, brush=bar_colors()[1])
        self.ov_box.plot.addItem(self.ov_bars)
        self.ov_box.plot.setYRange(0, 1.05)
        self.ov_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.ov_box.setToolTip(GLOSSARY["overlap"])
        self.ov_label = self.ov_box.caption
        for box in (self.heat_box, self.top_box, self.ov_box):
            for ax in ("left", "bottom"):
                box.plot.getAxis(ax).setStyle(hideOverlappingLabels=False)

        # --- token contexts ---
        self.tokens = QTextBrowser()
        self.tokens.setToolTip("Demonstration tokens where the selected dimension is largest, in their sentence")
        self.tokens.setHtml("<p style='color:#666'>Click a cell of the heatmap or a bar to list the tokens where "
                            "that dimension is largest.</p>")
        tok_w = QWidget()
        tl = QVBoxLayout(tok_w)
        tl.setContentsMargins(0, 0, 0, 0)
        self.tokens_title = QLabel("<b>Tokens that light up the selected dimension</b>")
        tl.addWidget(self.tokens_title)
        tl.addWidget(self.tokens, 1)

        for box in (self.heat_box, self.top_box, self.ov_box):
            box.saved.connect(lambda p: ctx.log(f"Saved plot {p}"))
            box.save_failed.connect(lambda pr, fx: ctx.error(pr, fx))

        bottom = QSplitter(Qt.Horizontal)
        bottom.addWidget(self.top_box)
        bottom.addWidget(tok_w)
        bottom.addWidget(self.ov_box)
        bottom.setSizes([440, 440, 440])
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.heat_box)
        split.addWidget(bottom)
        split.setSizes([380, 320])
        split.setChildrenCollapsible(False)

        lay = QVBoxLayout(self)
        lay.addWidget(heading("3 · Feature magnitudes"))
        lay.addWidget(help_label(
            "Each row is a layer, each column a hidden dimension; bright cells are large-magnitude features — a few "
            "dimensions with far larger values than the rest. They carry much of what the model does with the "
            "demonstrations, so Wanda keeps the weights that read them."))
        lay.addLayout(top)
        lay.addLayout(cmp_row)
        lay.addWidget(split, 1)

        ctx.state.features_ready.connect(self.show_features)
        ctx.state.comparison_ready.connect(self.show_comparison)
        ctx.state.model_loaded.connect(self._clear)
        ctx.state.busy_changed.connect(self.set_busy)

    # --- jobs ---------------------------------------------------------------------------
    def measure(self):
        """Measure feature magnitudes of the current demonstrations in a background job."""
        if not self.ctx.require_model():
            return None
        snap = self.ctx.calibration_snapshot()
        if snap is None:
            return None
        model = self.ctx.state.loaded.model
        bs = self.batch.value()
        pruned = self.ctx.state.is_pruned

        def job(progress):
            cal = snap.get(progress.sub(0, 0.05))
            res = feature_magnitudes(model, cal, batch_size=bs, progress=progress.sub(0.05, 1.0))
            return res, cal

        def done(out):
            res, cal = out
            snap.store(cal)
            self._measured_cfg = (snap.cfg, snap.text)
            self._measured_pruned = pruned
            self.ctx.state.set_features(res, cal)
            i = int(np.argmax(res.magnitudes[1:].max(axis=1))) + 1 if res.n_layers > 1 else 0
            self.ctx.log(f"Features measured on {len(cal)} demonstrations ({describe(snap.cfg, snap.text)}): "
                         f"largest magnitude {float(res.magnitudes.max()):.3g} in layer {i}")

        return self.ctx.run_job("Measuring features", job, on_finished=done)

    def compare(self):
        """Measure a second setting and show the per-layer overlap of top features."""
        st = self.ctx.state
        if not self.ctx.require_model():
            return None
        if st.features is None or self._measured_cfg is None:
            self.ctx.error("Nothing to compare yet", "measure features first (Measure features, Ctrl+M)")
            return None
        cfg_a, text = self._measured_cfg
        if text:
            self.ctx.error("Raw text lines cannot be compared by language",
                           "choose a pairs source in the Demonstrations panel, then measure again")
            return None
        mode = self.mode.currentData()
        other = self.other.code()
        if mode == "mono":
            cfg_b = replace(cfg_a, monolingual=True)
            if cfg_a.monolingual:
                cfg_b = replace(cfg_a, monolingual=False)
        elif mode == "src":
            cfg_b = replace(cfg_a, src=other)
        else:
            cfg_b = replace(cfg_a, tgt=other)
        label_a, label_b = describe(cfg_a), describe(cfg_b)
        if label_a == label_b:
            self.ctx.error(f"Both settings are the same ({label_a})", "choose a different language to compare with")
            return None
        model, tok = st.loaded.model, st.loaded.tokenizer
        base = st.features
        bs, ratio = self.batch.value(), self.ratio.value()

        def job(progress):
            progress.update(0, 1, f"Building {label_b} demonstrations")
            cal = build_calibration(cfg_b, tok)
            res = feature_magnitudes(model, cal, batch_size=bs, progress=progress.sub(0.05, 1.0))
            return res, overlap(base.magnitudes, res.magnitudes, ratio=ratio)

        def done(out):
            res, ov = out
            st.set_comparison(FeatureComparison(label_a, label_b, res, ov, ratio))
            self.ctx.log(f"Overlap of the top {ratio:.0%} dimensions, {label_a} vs {label_b}: "
                         + " ".join(f"{v:.2f}" for v in ov))

        return self.ctx.run_job(f"Comparing with {label_b}", job, on_finished=done)

    # --- views --------------------------------------------------------------------------
    def _clear(self, *args) -> None:
        self.heatmap.clear()
        self.top_bars.setOpts(x=[], height=[])
        self.ov_bars.setOpts(x=[], height=[])
        self.marker.setData([], [])
        self.selected = None
        self._measured_cfg = None

    def show_features(self, res) -> None:
        """Draw the heatmap, the top-k bars and select the strongest feature."""
        img = log_magnitudes(res.magnitudes)
        n_layers, d = img.shape
        self.heatmap.setImage(img, autoLevels=False)
        self.heatmap.setRect(QRectF(0, 0, d, n_layers))
        finite = img[np.isfinite(img)]
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1e-6
        self.colorbar.setLevels((lo, hi))
        hp = self.heat_box.plot
        hp.setXRange(0, d, padding=0)
        hp.setYRange(0, n_layers, padding=0)
        hp.getViewBox().setLimits(xMin=0, xMax=d, yMin=0, yMax=n_layers)
        left = hp.getAxis("left")
        step = max(1, -(-n_layers // 10))
        left.setTicks([[(i + 0.5, str(i)) for i in range(0, n_layers, step)]])
        cal = self.ctx.state.features_calibration
        title = "Feature magnitudes per layer (log scale)"
        if cal is not None:
            title += f" — {_meta_label(cal.meta)}, {len(cal)} samples"
        if self._measured_pruned:
            title += " (pruned model)"
        hp.setTitle(plot_title(html.escape(title)))
        self.layer.setRange(0, n_layers - 1)
        # Start on the layer with the largest feature (Kim et al.'s "massive activations").
        best = int(np.argmax(res.magnitudes.max(axis=1)))
        self.layer.blockSignals(True)
        self.layer.setValue(best)
        self.layer.blockSignals(False)
        self._draw_topk()
        self.ov_bars.setOpts(x=[], height=[])
        self.ov_label.setText("")
        self.ov_box.plot.setTitle(plot_title("Overlap of top features", "press Compare to measure a second setting"))
        dim = int(self._top_idx[0]) if len(self._top_idx) else 0
        self.select(best, dim)

    def _draw_topk(self) -> None:
        res = self.ctx.state.features
        if res is None:
            return
        layer = min(self.layer.value(), res.n_layers - 1)
        idx = top_k(res.magnitudes, self.k.value())[layer]
        self._top_idx = idx
        vals = res.magnitudes[layer, idx]
        dense, pruned = bar_colors()
        brushes = [pruned if self.selected == (layer, int(j)) else dense for j in idx]
        self.top_bars.setOpts(x=np.arange(len(idx)), height=vals, width=0.8, brushes=brushes)
        ax = self.top_box.plot.getAxis("bottom")
        every = 1 if len(idx) <= 12 else (2 if len(idx) <= 30 else 5)
        major = [(i, str(int(j))) for i, j in enumerate(idx) if i % every == 0]
        ax.setTicks([major, [(i, "") for i in range(len(idx)) if i % every]])
        self.top_box.plot.setXRange(-0.6, len(idx) - 0.4, padding=0)
        self.top_box.plot.setYRange(0, float(vals.max()) * 1.08 if len(vals) else 1, padding=0)
        name = "embeddings" if layer == 0 else f"block {layer}"
        self.top_box.plot.setTitle(plot_title(f"Top {len(idx)} dimensions of layer {layer} ({name})"))

    def topk_data(self) -> tuple[np.ndarray, np.ndarray]:
        """``(dimensions, heights)`` drawn in the bar chart (for tests)."""
        return np.asarray(self._top_idx), np.asarray(self.top_bars.opts["height"])

    def show_comparison(self, comp: FeatureComparison) -> None:
        """Draw the per-layer overlap of two feature settings."""
        ov = np.asarray(comp.overlap)
        self.ov_bars.setOpts(x=np.arange(len(ov)), height=ov, width=0.75)
        p = self.ov_box.plot
        p.setXRange(-0.6, len(ov) - 0.4, padding=0)
        p.setYRange(0, 1.05, padding=0)
        step = max(1, -(-len(ov) // 10))
        p.getAxis("bottom").setTicks([[(i, str(i)) for i in range(0, len(ov), step)]])
        p.setTitle(plot_title(f"Overlap of top {comp.ratio:.0%} dimensions", f"mean over layers {ov.mean():.2f}"))
        self.ov_label.setText(f"A: {html.escape(comp.label_a)}<br>B: {html.escape(comp.label_b)}")

    def select(self, layer: int, dim: int) -> None:
        """Select a (layer, dimension): mark it and list the tokens where it is largest."""
        st = self.ctx.state
        res, cal = st.features, st.features_calibration
        if res is None or cal is None or st.loaded is None:
            return
        layer = int(np.clip(layer, 0, res.n_layers - 1))
        dim = int(np.clip(dim, 0, res.magnitudes.shape[1] - 1))
        self.selected = (layer, dim)
        self.marker.setData([dim + 0.5], [layer + 0.5])
        if self.layer.value() != layer:
            self.layer.setValue(layer)
        else:
            self._draw_topk()
        rows = token_contexts(res, cal, st.loaded.tokenizer, layer, dim)
        self.tokens_title.setText(f"<b>Layer {layer}, dimension {dim}</b> — magnitude {res.magnitudes[layer, dim]:.4g}; "
                                  f"tokens where it is largest:")
        parts = ["<table cellspacing='0' cellpadding='3' width='100%'>"]
        for r in rows:
            left = html.escape(r["left"].replace("\n", " ⏎ "))
            right = html.escape(r["right"].replace("\n", " ⏎ "))
            tok = html.escape(r["token"].replace("\n", "⏎")) or "&nbsp;"
            parts.append(f"<tr><td width='70' style='color:#555; white-space:nowrap' valign='top'>{r['value']:.3g}</td>"
                         f"<td>…{left}<span style='background:#ffd54f; font-weight:bold'>{tok}</span>{right}…"
                         f"<span style='color:#999; font-size:small'> (sample {r['sample'] + 1}, token {r['position']})"
                         f"</span></td></tr>")
        parts.append("</table>")
        self.tokens.setHtml("".join(parts))
        self.last_contexts = rows

    def _view_pos(self, plot, scene_pos):
        vb = plot.getViewBox()
        if not vb.sceneBoundingRect().contains(scene_pos):
            return None
        p = vb.mapSceneToView(scene_pos)
        return p.x(), p.y()

    def _cell(self, scene_pos):
        res = self.ctx.state.features
        if res is None:
            return None
        pos = self._view_pos(self.heat_box.plot, scene_pos)
        if pos is None:
            return None
        x, y = pos
        dim, layer = int(np.floor(x)), int(np.floor(y))
        if 0 <= layer < res.n_layers and 0 <= dim < res.magnitudes.shape[1]:
            return layer, dim
        return None

    def _on_hover(self, evt) -> None:
        cell = self._cell(evt[0])
        res = self.ctx.state.features
        if cell is None or res is None:
            return
        layer, dim = cell
        self.hover.setText(f"layer {layer} · dimension {dim} · magnitude {res.magnitudes[layer, dim]:.4g}")

    def _on_click(self, ev) -> None:
        cell = self._cell(ev.scenePos())
        if cell is not None:
            self.select(*cell)

    def _on_bar_click(self, ev) -> None:
        pos = self._view_pos(self.top_box.plot, ev.scenePos())
        if pos is None or not len(self._top_idx):
            return
        i = int(round(pos[0]))
        if 0 <= i < len(self._top_idx):
            self.select(self.layer.value(), int(self._top_idx[i]))

    def _save_data(self) -> None:
        res = self.ctx.state.features
        if res is None:
            self.ctx.error("No features measured yet", "press Measure features first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save feature magnitudes", "features.csv", "CSV (*.csv)")
        if path:
            self.save_data(path)

    def save_data(self, path: str | Path) -> list[Path]:
        """Write the magnitudes as CSV (+ .npz) and, after a comparison, the overlap as CSV."""
        files = self.ctx.state.features.save(path)
        comp = self.ctx.state.comparison
        if comp is not None:
            p = Path(path)
            files.append(write_csv(p.with_name(p.stem + "_overlap.csv"), ["layer", "overlap", "setting_a", "setting_b", "ratio"],
                                   [[i, f"{v:.6g}", comp.label_a, comp.label_b, comp.ratio]
                                    for i, v in enumerate(comp.overlap)]))
        self.ctx.log("Saved " + ", ".join(str(f) for f in files))
        return files

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.measure_btn.setEnabled(not busy)
        self.compare_btn.setEnabled(not busy)

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        recipe.features = FeatureConfig(enabled=self.ctx.state.features is not None, top_k=self.k.value(),
                                        compare_monolingual=self.ctx.state.comparison is not None
                                        and self.mode.currentData() == "mono",
                                        ratio=self.ratio.value())

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.k.setValue(recipe.features.top_k)
        self.ratio.setValue(recipe.features.ratio)
        if recipe.features.compare_monolingual:
            self.mode.setCurrentIndex(0)


def _meta_label(meta: dict) -> str:
    kind = meta.get("kind")
    if kind == "text":
        return f"text lines from {Path(str(meta.get('file'))).name}"
    try:
        src, tgt = language_name(meta["src"]), language_name(meta["tgt"])
    except Exception:  # noqa: BLE001
        return str(kind)
    if kind == "monolingual":
        return f"{src} monolingual"
    d = meta.get("direction")
    arrow = {"forward": f"{src}→{tgt}", "reverse": f"{tgt}→{src}"}.get(d, f"{src}↔{tgt}")
    return f"{arrow} translation"
