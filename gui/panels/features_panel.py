"""Feature magnitudes panel: heatmap of hidden states × dimensions (setting A, setting B or their
difference), top-k bars, the tokens where a dimension is largest, and the overlap of two settings.

Blocks are counted from 0 everywhere in Polyprune. Row 0 of the heatmap is the embedding output,
row ``l`` the output of block ``l − 1``; the last row also includes the model's final norm (as
transformers returns the last hidden state).
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QPushButton,
                               QSpinBox, QSplitter, QTextBrowser, QVBoxLayout, QWidget)

from polyprune.errors import PolypruneError
from polyprune.features import token_contexts, top_k
from polyprune.fileio import write_json
from polyprune.pipeline import measure_features
from polyprune.recipe import FeatureConfig, Recipe
from polyprune.session import compare_features

from ..widgets import (GLOSSARY, LanguagePicker, PlotBox, bar_colors, heading, help_label, plot_title, primary,
                       style_plot, write_csv)
from .demos_panel import describe_spec

COMPARE_MODES = [
    ("mono", "Monolingual prompts (source language only)"),
    ("src", "Translation from another source language"),
    ("tgt", "Translation into another target language"),
]
VIEWS = [("a", "Setting A"), ("b", "Setting B"), ("diff", "B − A (log₁₀ ratio)")]
UNIT = "L2 norm over a sample's tokens, mean over samples"


def log_magnitudes(m: np.ndarray) -> np.ndarray:
    """What the heatmap shows: ``log10`` of the magnitudes (zeros clipped to 1e-12)."""
    return np.log10(np.maximum(np.asarray(m, dtype=np.float64), 1e-12)).astype(np.float32)


def row_label(row: int, n_rows: int, short: bool = False) -> str:
    """The name of heatmap row ``row`` of ``n_rows``: embeddings, then the output of each block
    (counted from 0); the last one includes the final norm."""
    if row == 0:
        return "emb" if short else "embeddings"
    text = f"{row - 1}" if short else f"after block {row - 1}"
    if row == n_rows - 1:
        text += "+norm" if short else " (+ final norm)"
    return text


class RowSpinBox(QSpinBox):
    """A heatmap row chosen by number, shown by name ("after block 3")."""

    def textFromValue(self, value: int) -> str:  # noqa: N802 - Qt override
        return row_label(value, self.maximum() + 1)

    def valueFromText(self, text: str) -> int:  # noqa: N802 - Qt override
        t = text.strip().lower()
        if t.startswith("emb"):
            return 0
        digits = "".join(ch for ch in t.split("(")[0] if ch.isdigit())
        return int(digits) + 1 if digits else self.value()

    def validate(self, text, pos):  # noqa: D102 - Qt override
        return QValidator.Acceptable, text, pos


class FeaturesPanel(QWidget):
    """Measure and inspect large-magnitude features of the calibration data."""

    title = "Features"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.selected: tuple[int, int] | None = None
        self._spec_a: dict | None = None
        self.last_contexts: list[dict] = []

        # --- controls ---
        self.measure_btn = primary(QPushButton("Measure features"))
        self.measure_btn.setToolTip("Run the demonstrations through the model as it is now and measure every hidden "
                                    "feature (Ctrl+M). " + GLOSSARY["magnitude"])
        self.measure_btn.clicked.connect(self.measure)
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(8)
        self.batch.setToolTip("Samples per forward pass: lower it if memory runs out")
        self.k = QSpinBox()
        self.k.setRange(1, 200)
        self.k.setValue(20)
        self.k.setToolTip("How many of the largest dimensions the bar chart shows (Kim et al. show 20)")
        self.layer = RowSpinBox()
        self.layer.setRange(0, 0)
        self.layer.setMinimumWidth(170)
        self.layer.setToolTip("Hidden state shown in the bar chart: the embeddings or the output of a block "
                              "(blocks counted from 0)")
        self.exclude = QCheckBox("Leave special tokens out of the statistics")
        self.exclude.setToolTip(GLOSSARY["special_tokens"] + " The setting is saved with the result.")
        self.k.valueChanged.connect(self._draw_topk)
        self.layer.valueChanged.connect(self._draw_topk)
        self.save_csv = QPushButton("Save data (CSV)…")
        self.save_csv.setToolTip("Save the magnitudes (columns layer, dimension, magnitude) as CSV with the settings "
                                 "in a .json beside it and every array as .npz; after a comparison also setting B "
                                 "and the overlap")
        self.save_csv.clicked.connect(self._save_data)
        top = QHBoxLayout()
        top.addWidget(self.measure_btn)
        top.addSpacing(12)
        for lab, w in (("Batch", self.batch), ("Top-k", self.k), ("Bars for", self.layer)):
            top.addWidget(QLabel(lab))
            top.addWidget(w)
        top.addWidget(self.exclude)
        top.addStretch(1)
        top.addWidget(self.save_csv)

        self.mode = QComboBox()
        for key, label in COMPARE_MODES:
            self.mode.addItem(label, key)
        self.mode.setToolTip("The second setting (B) to compare with the measured one (A)")
        self.other = LanguagePicker("swh_Latn")
        self.other.setToolTip("The other language of setting B. " + self.other.toolTip())
        self.ratio = QDoubleSpinBox()
        self.ratio.setRange(0.01, 1.0)
        self.ratio.setSingleStep(0.05)
        self.ratio.setValue(0.4)
        self.ratio.setToolTip(GLOSSARY["top_share"])
        self.compare_btn = QPushButton("Compare")
        self.compare_btn.setToolTip("Measure setting B and show it, its difference from A and the overlap of top "
                                    "features per hidden state")
        self.compare_btn.clicked.connect(self.compare)
        self.mode.currentIndexChanged.connect(lambda: self.other.setEnabled(self.mode.currentData() != "mono"))
        self.other.setEnabled(False)
        self.view = QComboBox()
        for key, label in VIEWS:
            self.view.addItem(label, key)
        self.view.setToolTip("What the heatmap shows: setting A, setting B, or how much larger each feature is "
                             "under B than under A (log₁₀ of the ratio: +1 = ten times larger)")
        self.view.currentIndexChanged.connect(lambda _: self.draw_heatmap())
        cmp_row = QHBoxLayout()
        cmp_row.addWidget(QLabel("Compare with"))
        cmp_row.addWidget(self.mode)
        cmp_row.addWidget(self.other)
        cmp_row.addWidget(QLabel("top share"))
        cmp_row.addWidget(self.ratio)
        cmp_row.addWidget(self.compare_btn)
        cmp_row.addSpacing(16)
        cmp_row.addWidget(QLabel("Heatmap shows"))
        cmp_row.addWidget(self.view)
        cmp_row.addStretch(1)

        # --- heatmap ---
        self.heat_box = PlotBox("feature_heatmap")
        hp = self.heat_box.plot
        style_plot(hp, "Feature magnitudes (log scale)", "hidden state", "hidden dimension")
        self.heatmap = pg.ImageItem(axisOrder="row-major")
        hp.addItem(self.heatmap)
        hp.getViewBox().setMouseEnabled(x=True, y=False)
        self.cmap = pg.colormap.get("viridis")
        self.diff_cmap = pg.ColorMap(np.linspace(0, 1, 5), [(33, 102, 172), (146, 197, 222), (247, 247, 247),
                                                            (244, 165, 130), (178, 24, 43)])
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=self.cmap, label="log₁₀ magnitude",
                                        interactive=False, width=14, pen="#666", colorMapMenu=False)
        self.colorbar.setImageItem(self.heatmap, insert_in=hp)
        self.colorbar.axis.enableAutoSIPrefix(False)  # log ratios of ±0.03 must not read as ±30 "m"
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
        style_plot(self.top_box.plot, "Top dimensions", "magnitude", "hidden dimension (largest first)")
        self.top_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=bar_colors()[0])
        self.top_box.plot.addItem(self.top_bars)
        self.top_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.top_box.plot.scene().sigMouseClicked.connect(self._on_bar_click)
        self.top_box.setToolTip("Click a bar to list the tokens where that dimension is largest")
        self._top_idx = np.zeros(0, dtype=int)

        # --- overlap ---
        self.ov_box = PlotBox("feature_overlap")
        style_plot(self.ov_box.plot, "Overlap of top features", "share in common", "hidden state")
        self.ov_bars = pg.BarGraphItem(x=[], height=[], width=0.75, brush=bar_colors()[1])
        self.ov_box.plot.addItem(self.ov_bars)
        self.ov_box.plot.setYRange(0, 1.05)
        self.ov_box.plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.ov_box.setToolTip(GLOSSARY["overlap"])
        self.ov_label = self.ov_box.caption
        for box in (self.heat_box, self.top_box, self.ov_box):
            for ax in ("left", "bottom"):
                box.plot.getAxis(ax).setStyle(hideOverlappingLabels=False)
                box.plot.getAxis(ax).enableAutoSIPrefix(False)

        # --- token contexts ---
        self.tokens = QTextBrowser()
        self.tokens.setToolTip("Calibration tokens where the selected dimension is largest, in their sentence "
                               "(special tokens such as <bos> are left out)")
        self.tokens.setHtml("<p style='color:#666'>Click a cell of the heatmap or a bar to list the tokens where "
                            "that dimension is largest.</p>")
        tok_w = QWidget()
        tl = QVBoxLayout(tok_w)
        tl.setContentsMargins(0, 0, 0, 0)
        self.tokens_title = QLabel("<b>Tokens that light up the selected dimension</b>")
        self.tokens_title.setWordWrap(True)
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
            "Each row is a hidden state — the embeddings, then the output of each block (blocks are counted from 0 "
            "everywhere; the last row includes the final norm) — and each column a hidden dimension. Bright cells "
            "are large-magnitude features: a few dimensions with far larger values than the rest. They carry much "
            "of what the model does with the demonstrations, so Wanda keeps the weights that read them."))
        lay.addLayout(top)
        lay.addLayout(cmp_row)
        lay.addWidget(split, 1)

        ctx.state.features_ready.connect(self.show_features)
        ctx.state.comparison_ready.connect(self.show_comparison)
        ctx.state.model_loaded.connect(self._clear)
        ctx.state.busy_changed.connect(self.set_busy)

    def feature_config(self) -> FeatureConfig:
        """The panel's settings as a :class:`~polyprune.recipe.FeatureConfig`."""
        return FeatureConfig(enabled=True, top_k=self.k.value(), ratio=round(self.ratio.value(), 4),
                             exclude_special=self.exclude.isChecked())

    # --- jobs ---------------------------------------------------------------------------
    def measure(self):
        """Measure feature magnitudes of the current calibration setting in a background job."""
        if not self.ctx.require_model():
            return None
        try:
            spec = self.ctx.calibration_spec()
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        loaded = self.ctx.state.loaded
        cal = self.ctx.calibration_for(spec)
        cfg, bs = self.feature_config(), self.batch.value()

        def job(progress):
            return measure_features(loaded, spec, cfg, batch_size=bs, progress=progress, calibration=cal)

        def done(run):
            self._spec_a = spec
            self.ctx.state.store_calibration(spec, run.calibration)
            self.ctx.state.set_features(run, describe_spec(spec))
            res = run.result
            i = int(np.argmax(res.magnitudes.max(axis=1)))
            self.ctx.log(f"Features measured on {len(run.calibration)} samples ({describe_spec(spec)}), model "
                         f"holding “{self.ctx.state.features_variant}”: largest magnitude "
                         f"{float(res.magnitudes.max()):.3g} {row_label(i, res.n_layers)}")

        return self.ctx.run_job("Measuring features", job, on_finished=done)

    def compare(self):
        """Measure setting B and show it, its difference from A and the per-layer overlap."""
        st = self.ctx.state
        if not self.ctx.require_model():
            return None
        if st.features_run is None or self._spec_a is None:
            self.ctx.error("Nothing to compare yet", "measure features first (Measure features, Ctrl+M)")
            return None
        spec_a = self._spec_a
        if spec_a.get("kind") != "demos":
            self.ctx.error("Only translation demonstrations can be compared by language",
                           "choose a source of sentence pairs in the Demonstrations panel, then measure again")
            return None
        mode = self.mode.currentData()
        try:
            other = self.other.checked_code("the language of 'Compare with' (Features panel)")
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        if mode == "mono":
            spec_b = spec_a | {"monolingual": not spec_a.get("monolingual", False)}
        elif mode == "src":
            spec_b = spec_a | {"src": other}
        else:
            spec_b = spec_a | {"tgt": other}
        label_a, label_b = describe_spec(spec_a), describe_spec(spec_b)
        if label_a == label_b:
            self.ctx.error(f"Both settings are the same ({label_a})", "choose a different language to compare with")
            return None
        loaded = st.loaded
        first = st.features_run
        cfg, bs = self.feature_config(), self.batch.value()

        def job(progress):
            return compare_features(loaded, first, spec_b, cfg, batch_size=bs, progress=progress)

        def done(run):
            st.set_comparison(run, (label_a, label_b))
            self.ctx.log(f"Overlap of the top {cfg.ratio:.0%} dimensions, {label_a} vs {label_b}: "
                         + " ".join(f"{v:.2f}" for v in run.overlap))

        return self.ctx.run_job(f"Comparing with {label_b}", job, on_finished=done)

    # --- views --------------------------------------------------------------------------
    def _clear(self, *args) -> None:
        self.heatmap.clear()
        self.top_bars.setOpts(x=[], height=[])
        self.ov_bars.setOpts(x=[], height=[])
        self.marker.setData([], [])
        self.selected = None
        self._spec_a = None

    def heat_image(self) -> tuple[np.ndarray, str] | None:
        """The image the heatmap shows now and its kind (``a``, ``b`` or ``diff``)."""
        run = self.ctx.state.features_run
        if run is None:
            return None
        view = self.view.currentData()
        if view != "a" and run.other is None:
            view = "a"
        if view == "a":
            return log_magnitudes(run.result.magnitudes), "a"
        if view == "b":
            return log_magnitudes(run.other.magnitudes), "b"
        return log_magnitudes(run.other.magnitudes) - log_magnitudes(run.result.magnitudes), "diff"

    def show_features(self, run) -> None:
        """Draw the heatmap, the top-k bars and select the strongest feature."""
        res = run.result
        n_layers = res.n_layers
        self.view.blockSignals(True)
        self.view.setCurrentIndex(0)
        self.view.blockSignals(False)
        self.draw_heatmap()
        self.layer.setRange(0, n_layers - 1)
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

    def draw_heatmap(self) -> None:
        """Draw the chosen view (A, B or B − A) with labelled rows."""
        got = self.heat_image()
        if got is None:
            return
        img, kind = got
        run = self.ctx.state.features_run
        n_layers, d = img.shape
        self.heatmap.setImage(img, autoLevels=False)
        self.heatmap.setRect(QRectF(0, 0, d, n_layers))
        finite = img[np.isfinite(img)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if kind == "diff":
            m = max(abs(lo), abs(hi), 1e-6)
            lo, hi = -m, m
            self.colorbar.setColorMap(self.diff_cmap)
            self.colorbar.getAxis("left").setLabel("log₁₀(B / A)")
        else:
            self.colorbar.setColorMap(self.cmap)
            self.colorbar.getAxis("left").setLabel("log₁₀ magnitude")
        if hi <= lo:
            hi = lo + 1e-6
        self.colorbar.setLevels((lo, hi))
        hp = self.heat_box.plot
        hp.setXRange(0, d, padding=0)
        hp.setYRange(-0.35, n_layers + 0.35, padding=0)  # a margin, so the first and last row names show
        hp.getViewBox().setLimits(xMin=0, xMax=d, yMin=-0.35, yMax=n_layers + 0.35)
        step = max(1, -(-n_layers // 12))
        rows = sorted(set(range(0, n_layers, step)) | {n_layers - 1})
        hp.getAxis("left").setTicks([[(i + 0.5, row_label(i, n_layers, short=True)) for i in rows]])
        labels = self.ctx.state.feature_labels
        cal = run.calibration if kind != "b" else run.other_calibration
        what = {"a": "Setting A", "b": "Setting B", "diff": "B − A"}[kind]
        name = {"a": labels[0], "b": labels[1], "diff": f"B: {labels[1]} − A: {labels[0]}"}[kind]
        sub = f"{name}, {len(cal)} samples · model holding “{self.ctx.state.features_variant}”"
        sub += " · red: larger under B, blue: larger under A" if kind == "diff" else f" · {UNIT}"
        special = run.result.settings.get("exclude_special")
        if special:
            sub += " · special tokens left out"
        scale = "log₁₀ ratio" if kind == "diff" else "log scale"
        hp.setTitle(plot_title(html.escape(f"Feature magnitudes — {what} ({scale})"), html.escape(sub)))

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
        self.top_box.plot.setTitle(plot_title(f"Top {len(idx)} dimensions {row_label(layer, res.n_layers)}",
                                              f"setting A · {UNIT}"))

    def topk_data(self) -> tuple[np.ndarray, np.ndarray]:
        """``(dimensions, heights)`` drawn in the bar chart (for tests)."""
        return np.asarray(self._top_idx), np.asarray(self.top_bars.opts["height"])

    def show_comparison(self, run) -> None:
        """Draw the per-layer overlap, and offer setting B and the difference in the heatmap."""
        ov = np.asarray(run.overlap)
        self.ov_bars.setOpts(x=np.arange(len(ov)), height=ov, width=0.75)
        p = self.ov_box.plot
        p.setXRange(-0.6, len(ov) - 0.4, padding=0)
        p.setYRange(0, 1.05, padding=0)
        step = max(1, -(-len(ov) // 10))
        rows = sorted(set(range(0, len(ov), step)) | {len(ov) - 1})
        p.getAxis("bottom").setTicks([[(i, row_label(i, len(ov), short=True)) for i in rows]])
        p.setTitle(plot_title(f"Overlap of top {run.ratio:.0%} dimensions", f"mean over hidden states {ov.mean():.2f}"))
        labels = self.ctx.state.feature_labels
        self.ov_label.setText(f"A: {html.escape(labels[0])}<br>B: {html.escape(labels[1])}")
        self.view.setCurrentIndex(2)  # the difference map: where B lights up more or less than A
        self.draw_heatmap()

    def select(self, layer: int, dim: int) -> None:
        """Select a (hidden state, dimension): mark it and list the tokens where it is largest."""
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
        self.tokens_title.setText(f"<b>{row_label(layer, res.n_layers).capitalize()}, dimension {dim}</b> — "
                                  f"magnitude {res.magnitudes[layer, dim]:.4g} ({UNIT}); tokens where |value| is "
                                  "largest (special tokens left out):")
        parts = ["<table cellspacing='0' cellpadding='3' width='100%'>"]
        for r in rows:
            left = html.escape(r["left"].replace("\n", " ⏎ "))
            right = html.escape(r["right"].replace("\n", " ⏎ "))
            tok = html.escape(r["token"].replace("\n", "⏎")) or "&nbsp;"
            parts.append(f"<tr><td width='70' style='color:#555; white-space:nowrap' valign='top'>{r['value']:.3g}</td>"
                         f"<td>…{left}<span style='background:#ffd54f; font-weight:bold'>{tok}</span>{right}…"
                         f"<span style='color:#999; font-size:small'> (sample {r['sample'] + 1}, token {r['position']})"
                         f"</span></td></tr>")
        if not rows:
            parts.append("<tr><td>No word token: this dimension is largest only on special tokens.</td></tr>")
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
        got = self.heat_image()
        if cell is None or got is None:
            return
        layer, dim = cell
        img, kind = got
        res = self.ctx.state.features_run
        n = res.result.n_layers
        if kind == "diff":
            text = (f"{row_label(layer, n)} · dimension {dim} · A {res.result.magnitudes[layer, dim]:.4g}, "
                    f"B {res.other.magnitudes[layer, dim]:.4g} (log₁₀ B/A {img[layer, dim]:+.2f})")
        else:
            m = (res.result if kind == "a" else res.other).magnitudes[layer, dim]
            text = f"{row_label(layer, n)} · dimension {dim} · magnitude {m:.4g}"
        self.hover.setText(text)

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
        if self.ctx.state.features is None:
            self.ctx.error("No features measured yet", "press Measure features first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save feature magnitudes", "features.csv", "CSV (*.csv)")
        if path:
            try:
                self.save_data(path)
            except PolypruneError as e:
                self.ctx.error(e.problem, e.fix or "")
            except OSError as e:
                self.ctx.error(f"Could not write {path}: {e.strerror or e}", "choose a folder you can write to")

    def save_data(self, path: str | Path) -> list[Path]:
        """Write setting A as CSV + JSON + .npz (:meth:`FeatureResult.save`) and, after a comparison,
        setting B (``<name>_B``) and the overlap (``<name>_overlap.csv`` + ``.json``); every CSV reads
        with ``pandas.read_csv`` as is."""
        run = self.ctx.state.features_run
        p = Path(path)
        files = run.result.save(p)
        if run.other is not None:
            files += run.other.save(p.with_name(p.stem + "_B" + p.suffix))
            labels = self.ctx.state.feature_labels
            n = len(run.overlap)
            files.append(write_csv(p.with_name(p.stem + "_overlap.csv"), ["layer", "hidden_state", "overlap"],
                                   [[i, row_label(i, n), f"{v:.6g}"] for i, v in enumerate(run.overlap)]))
            files.append(write_json(p.with_name(p.stem + "_overlap.json"),
                                    {"setting_a": labels[0], "setting_b": labels[1], "top_share": run.ratio,
                                     "layer": "0 = embedding output, l = output of block l - 1 (blocks counted from "
                                              "0); the last includes the final norm"},
                                    kind="feature overlap"))
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
                                        ratio=round(self.ratio.value(), 4), exclude_special=self.exclude.isChecked())

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.k.setValue(recipe.features.top_k)
        self.ratio.setValue(recipe.features.ratio)
        self.exclude.setChecked(recipe.features.exclude_special)
        if recipe.features.compare_monolingual:
            self.mode.setCurrentIndex(0)
