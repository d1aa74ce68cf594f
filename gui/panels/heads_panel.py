"""Heads panel: which attention heads matter for which language, the cross-effects of removing them,
and removing the heads of languages a deployment does not need (heads issue; methods.md §7)."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                               QSplitter, QTableWidgetItem, QVBoxLayout, QWidget)

from polyprune.errors import PolypruneError
from polyprune.heads import HeadsConfig, RemovalConfig, hard_cut_option, load_results, remove_heads, save_results, score_heads
from polyprune.heads.config import parse_heads_spec
from polyprune.heads.removal import describe_heads, propose_removal
from polyprune.heads.stats import agreement
from polyprune.languages import display_label, language_name

from ..widgets import LanguageList, PlotBox, settings_column, group, heading, help_label, plot_title, primary, results_table, style_plot

#: Colour-blind-safe palette (Okabe-Ito, then Tableau) for languages; shared heads dark grey.
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#4C78A8", "#F58518",
           "#54A24B", "#B279A2", "#9D755D"]
SHARED_COLOR, NONE_COLOR = "#444444", "#dcdcdc"
SCORE_JOB, REMOVE_JOB = "Scoring heads", "Removing heads"
JOB_NAMES = (SCORE_JOB, REMOVE_JOB)


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def head_map_image(label: np.ndarray) -> np.ndarray:
    """``[L, H, 3]`` uint8 colours of the head map: language colour, shared dark grey, else light grey."""
    img = np.zeros(label.shape + (3,), dtype=np.uint8)
    for (l, h), lab in np.ndenumerate(label):
        img[l, h] = _rgb(PALETTE[lab % len(PALETTE)] if lab >= 0 else SHARED_COLOR if lab == -2 else NONE_COLOR)
    return img


def _spin(lo, hi, value, tip, double=False, step=None):
    w = QDoubleSpinBox() if double else QSpinBox()
    w.setRange(lo, hi)
    if double:
        w.setDecimals(3)
        w.setSingleStep(step or 0.01)
    w.setValue(value)
    w.setToolTip(tip)
    return w


def _ticks(plot, axis: str, labels: list[str], every: int = 1) -> None:
    plot.getAxis(axis).setTicks([[(i, s) for i, s in enumerate(labels) if i % every == 0]])


def _block_ticks(plot, L: int) -> None:
    _ticks(plot, "left", [str(b) for b in range(L)], 1 if L <= 20 else 2 if L <= 40 else 5)


class HeadsPanel(QWidget):
    """Score attention heads per language, show the maps and cross-effects, remove heads."""

    title = "Heads"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.result = None
        self.plan = None
        self.job = None
        d, r = HeadsConfig(), RemovalConfig()

        # --- settings ---
        self.languages = LanguageList(d.languages, "Languages whose heads are scored")
        self.texts = QLineEdit(d.texts)
        self.texts.setToolTip("Where sentences come from: flores (the data folder), flores:DIR, file:PATH with {lang} "
                              "for the language code (one sentence a line), or builtin")
        self.split = QComboBox()
        self.split.addItems(["dev", "devtest"])
        self.split.setToolTip("FLORES split the scores come from")
        self.samples = _spin(1, 100000, d.samples, "First N sentences per language (fewer available is an error)")
        self.seq_len = _spin(2, 8192, d.seq_len, "Each sentence is cut to at most this many tokens")
        self.batch = _spin(1, 1024, d.batch_size, "Sentences per forward pass: lower it if memory runs out")
        self.k_ablation = QCheckBox("ablation")
        self.k_ablation.setChecked(True)
        self.k_ablation.setToolTip("Exact: NLL with one head switched off minus NLL intact; one pass per head (slow)")
        self.k_taylor = QCheckBox("taylor")
        self.k_taylor.setChecked(True)
        self.k_taylor.setToolTip("First-order estimate of the ablation from the gradient of a gate per head; one forward "
                                 "and backward pass for all heads (fast)")
        self.top_share = _spin(0.001, 1.0, d.top_share, "q: the share of all heads that forms a language's top set", True)
        self.min_shared = _spin(2, 1000, d.min_shared, "m: a head in the top sets of at least m languages is shared")
        self.cross = QCheckBox("cross-effects")
        self.cross.setToolTip("Remove the heads specific to each language and measure every language's perplexity on "
                              "held-out sentences, with 95 % bootstrap intervals")
        self.cross_split = QComboBox()
        self.cross_split.addItems(["devtest", "dev"])
        self.cross_split.setToolTip("Held-out split for effects (use another split than the scores)")
        self.cross_samples = _spin(1, 100000, d.cross_samples, "Held-out sentences per language")
        self.score_btn = primary(QPushButton("Score heads"))
        self.score_btn.setToolTip("Score every head for every language in the background")
        self.score_btn.clicked.connect(self.score)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.setToolTip("Stop the running heads job at its next safe point; the model stays as it was")
        self.cancel_btn.clicked.connect(self.cancel)
        self.open_btn = QPushButton("Open results…")
        self.open_btn.setToolTip("Show a folder written by Save results or 'polyprune heads --out DIR'")
        self.open_btn.clicked.connect(self._open)
        self.save_btn = QPushButton("Save results…")
        self.save_btn.setToolTip("Write head_scores.csv, the classification, cross-effects, settings and the plots (PNG)")
        self.save_btn.setEnabled(False)
        self.save_btn.clicked.connect(self._save)

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Languages", self.languages)
        form.addRow("Sentences", self.texts)
        r1 = QHBoxLayout()
        for lab, w in (("sentences", self.samples), ("tokens", self.seq_len), ("batch", self.batch)):
            r1.addWidget(QLabel(lab))
            r1.addWidget(w)
        r1.addStretch(1)
        form.addRow("Split", self.split)
        form.addRow("", r1)
        r2 = QHBoxLayout()
        for w in (self.k_ablation, self.k_taylor):
            r2.addWidget(w)
        r2.addStretch(1)
        form.addRow("Scores", r2)
        r2b = QHBoxLayout()
        for w in (QLabel("top share q"), self.top_share, QLabel("shared at m"), self.min_shared):
            r2b.addWidget(w)
        r2b.addStretch(1)
        form.addRow("", r2b)
        r3 = QHBoxLayout()
        for w in (self.cross, self.cross_split, QLabel("held-out sentences"), self.cross_samples):
            r3.addWidget(w)
        r3.addStretch(1)
        form.addRow("", r3)
        btns = QHBoxLayout()
        for w in (self.score_btn, self.cancel_btn):
            btns.addWidget(w)
        btns.addStretch(1)
        form.addRow(btns)
        files = QHBoxLayout()
        for w in (self.open_btn, self.save_btn):
            files.addWidget(w)
        files.addStretch(1)
        form.addRow(files)
        grid = form
        settings = group("Scoring", grid)

        # --- plots ---
        self.show_lang = QComboBox()
        self.show_lang.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.show_lang.setToolTip("Language shown in the heatmap")
        self.show_kind = QComboBox()
        self.show_kind.addItems(["ablation", "taylor"])
        self.show_kind.setToolTip("Score shown in the heatmap")
        self.show_lang.currentIndexChanged.connect(self._draw_heat)
        self.show_kind.currentIndexChanged.connect(self._draw_heat)

        self.heat_box = PlotBox("head_scores")
        style_plot(self.heat_box.plot, "Head scores", "block", "head")
        self.heat_img = pg.ImageItem(axisOrder="row-major")
        self.heat_box.plot.addItem(self.heat_img)
        self.heat_bar = pg.ColorBarItem(values=(0, 1), colorMap=pg.colormap.get("viridis"), label="NLL change (nats/token)",
                                        interactive=False, width=14, colorMapMenu=False)
        self.heat_bar.setImageItem(self.heat_img, insert_in=self.heat_box.plot)
        self.heat_box.bar.insertWidget(0, QLabel("language"))
        self.heat_box.bar.insertWidget(1, self.show_lang)
        self.heat_box.bar.insertWidget(2, self.show_kind)

        self.map_box = PlotBox("head_languages")
        style_plot(self.map_box.plot, "Which language each head belongs to", "block", "head")
        self.map_img = pg.ImageItem(axisOrder="row-major")
        self.map_box.plot.addItem(self.map_img)

        self.scatter_box = PlotBox("ablation_vs_taylor")
        style_plot(self.scatter_box.plot, "Taylor estimate vs ablation", "taylor (−∂NLL/∂gate)", "ablation (ΔNLL)")
        self.scatter_box.plot.showGrid(x=True, y=True, alpha=0.25)
        self.scatter = pg.ScatterPlotItem(size=6, pen=None)
        self.diag = pg.PlotDataItem(pen=pg.mkPen("#999", style=Qt.DashLine))
        self.scatter_box.plot.addItem(self.diag)
        self.scatter_box.plot.addItem(self.scatter)

        self.cross_box = PlotBox("cross_effects")
        style_plot(self.cross_box.plot, "Cross-effects of removing specific heads",
                   "language measured", "specific heads removed (language, count)")
        self.cross_img = pg.ImageItem(axisOrder="row-major")
        self.cross_box.plot.addItem(self.cross_img)
        self.cross_box.plot.invertY(True)
        self.cross_bar = pg.ColorBarItem(values=(-1, 1), colorMap=pg.colormap.get("CET-D1"), label="ΔNLL (nats/token)",
                                         interactive=False, width=14, colorMapMenu=False)
        self.cross_bar.setImageItem(self.cross_img, insert_in=self.cross_box.plot)
        self.cross_texts: list = []

        for box in (self.heat_box, self.map_box, self.scatter_box, self.cross_box):
            box.saved.connect(lambda p: ctx.log(f"Saved plot {p}"))
            box.save_failed.connect(lambda pr, fx: ctx.error(pr, fx))
            box.plot.getViewBox().setMouseEnabled(x=False, y=False)
            box.setMinimumHeight(230)
        top = QSplitter(Qt.Horizontal)
        top.addWidget(self.heat_box)
        top.addWidget(self.map_box)
        bottom = QSplitter(Qt.Horizontal)
        bottom.addWidget(self.scatter_box)
        bottom.addWidget(self.cross_box)
        plots = QSplitter(Qt.Vertical)
        plots.addWidget(top)
        plots.addWidget(bottom)
        plots.setChildrenCollapsible(False)

        # --- removal ---
        self.keep = LanguageList(["eng_Latn"], "Languages that must stay intact: their heads are never proposed")
        self.drop = LanguageList([], "Languages the deployment does not need: their heads are proposed for removal")
        self.heads_edit = QLineEdit()
        self.heads_edit.setPlaceholderText('or an explicit list: "BLOCK:H,H;BLOCK:H", e.g. 3:0,2;7:1')
        self.heads_edit.setToolTip("Remove exactly these heads instead of the proposal (blocks and heads count from 0)")
        self.cut = QComboBox()
        self.cut.addItem("soft: zero the heads (same size, loads anywhere)", "soft")
        self.cut.addItem("hard: delete the heads (smaller stock checkpoint)", "hard")
        self.cut.setToolTip("How the heads are removed in the exported checkpoint")
        self.nearest = QCheckBox("take the nearest set a stock checkpoint can hold")
        self.nearest.setToolTip("A hard cut needs the same number of heads removed from every block and a head count "
                                "that transformers accepts; tick to take the nearest such set")
        self.max_heads = _spin(0, 100000, r.max_heads, "At most this many proposed heads (0: no limit)")
        self.propose_btn = QPushButton("Propose heads")
        self.propose_btn.setToolTip("Apply the rule to the current scores: heads in the top set of a dropped language and "
                                    "of no kept language")
        self.propose_btn.clicked.connect(self.propose)
        self.export_btn = primary(QPushButton("Remove and export…"))
        self.export_btn.setToolTip("Measure the effect on every kept and dropped language, then export the model without "
                                   "these heads (with removed_heads.json); the model in memory is not changed")
        self.export_btn.clicked.connect(self._ask_export)
        self.proposal = QLabel("Score heads, choose languages to keep and drop, then propose.")
        self.proposal.setWordWrap(True)
        self.proposal.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.effects = results_table(["language", "role", "predicted ΔNLL (taylor)", "measured ΔNLL", "95 % interval",
                                      "perplexity ratio"], "Effect of the removal per language (held-out sentences)")
        self.effects.setMinimumHeight(150)
        rg = QFormLayout()
        rg.setLabelAlignment(Qt.AlignRight)
        rg.addRow("Keep", self.keep)
        rg.addRow("Drop", self.drop)
        rg.addRow("Heads", self.heads_edit)
        rg.addRow("Cut", self.cut)
        most = QHBoxLayout()
        most.addWidget(self.max_heads)
        most.addWidget(QLabel("heads at most (0: no limit)"))
        most.addStretch(1)
        rg.addRow("", most)
        rg.addRow("", self.nearest)
        act = QHBoxLayout()
        act.addWidget(self.propose_btn)
        act.addWidget(self.export_btn)
        act.addStretch(1)
        rg.addRow(act)
        rg.addRow(self.proposal)
        rg.addRow(self.effects)
        removal = group("Remove the heads of languages you do not need", rg)

        lay = QVBoxLayout(self)
        lay.addWidget(heading("Attention heads by language"))
        lay.addWidget(help_label(
            "Each attention head is scored per language by how much the model's loss on that language's sentences rises "
            "when the head is switched off (ablation, exact) or by the gradient of a gate on the head (taylor, a fast "
            "estimate). A head in the top share of one language only is specific to it; in the top share of several, "
            "shared. Removing a language's specific heads should hurt that language more than the others: the "
            "cross-effect matrix checks it on held-out sentences."))
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(settings)
        ll.addWidget(removal)
        ll.addStretch(1)
        scroll = settings_column(left)
        body = QSplitter(Qt.Horizontal)
        body.addWidget(scroll)
        body.addWidget(plots)
        body.setStretchFactor(1, 1)
        body.setSizes([520, 1000])
        lay.addWidget(body, 1)

        ctx.state.model_loaded.connect(lambda _: self._clear_removal())
        ctx.state.busy_changed.connect(self.set_busy)

    # --- settings -----------------------------------------------------------------------
    def config(self) -> HeadsConfig:
        """The panel's settings as a :class:`HeadsConfig` (not yet validated)."""
        kinds = [k for k, box in (("ablation", self.k_ablation), ("taylor", self.k_taylor)) if box.isChecked()]
        removal = RemovalConfig(heads=self.heads_edit.text().strip() or None, drop=self.drop.codes(),
                                keep=self.keep.codes(), cut=self.cut.currentData(), nearest=self.nearest.isChecked(),
                                max_heads=self.max_heads.value())
        return HeadsConfig(languages=self.languages.codes(), texts=self.texts.text().strip(), split=self.split.currentText(),
                           samples=self.samples.value(), seq_len=self.seq_len.value(), batch_size=self.batch.value(),
                           kinds=kinds, top_share=self.top_share.value(), min_shared=self.min_shared.value(),
                           cross=self.cross.isChecked(), cross_split=self.cross_split.currentText(),
                           cross_samples=self.cross_samples.value(), removal=removal)

    def set_config(self, cfg: HeadsConfig) -> None:
        """Show ``cfg`` in the controls."""
        self.languages.set_codes(list(cfg.languages))
        self.texts.setText(cfg.texts)
        self.split.setCurrentText(cfg.split)
        self.samples.setValue(cfg.samples)
        self.seq_len.setValue(cfg.seq_len)
        self.batch.setValue(cfg.batch_size)
        self.k_ablation.setChecked("ablation" in cfg.kinds)
        self.k_taylor.setChecked("taylor" in cfg.kinds)
        self.top_share.setValue(cfg.top_share)
        self.min_shared.setValue(cfg.min_shared)
        self.cross.setChecked(cfg.cross)
        self.cross_split.setCurrentText(cfg.cross_split)
        self.cross_samples.setValue(cfg.cross_samples)
        r = cfg.removal
        if r is not None:
            self.keep.set_codes(list(r.keep))
            self.drop.set_codes(list(r.drop))
            self.heads_edit.setText(r.heads or "")
            self.cut.setCurrentIndex(1 if r.cut == "hard" else 0)
            self.nearest.setChecked(r.nearest)
            self.max_heads.setValue(r.max_heads)

    def _validated(self, need_removal: bool = False) -> HeadsConfig | None:
        cfg = self.config()
        try:
            if not need_removal:
                cfg.removal = None
            cfg.validate()
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        return cfg

    # --- jobs ---------------------------------------------------------------------------
    def score(self):
        """Score heads (and cross-effects when ticked) in a background job."""
        if not self.ctx.require_model():
            return None
        if not (self.k_ablation.isChecked() or self.k_taylor.isChecked()):
            self.ctx.error("No score is chosen", "tick ablation, taylor or both")
            return None
        cfg = self._validated()
        if cfg is None:
            return None
        loaded = self.ctx.state.loaded
        self.job = self.ctx.run_job(SCORE_JOB, lambda p: score_heads(loaded, cfg, p), on_finished=self.show_result)
        return self.job

    def cancel(self) -> None:
        """Cancel the running heads job."""
        if self.job is not None and self.job.is_running():
            self.job.cancel()

    def propose(self) -> None:
        """Apply the keep/drop rule (or the explicit list) and show the heads, predicted effects and hard-cut status."""
        cfg = self._validated(need_removal=True)
        if cfg is None:
            return
        try:
            heads, priority = self._chosen(cfg)
            text = [f"<b>{sum(map(len, heads.values()))} heads</b>: {html.escape(describe_heads(heads))}"]
            if self.plan is not None and not cfg.removal.heads:
                text.append(f"Rule: {html.escape(self.plan.rule)}.")
            if cfg.removal.cut == "hard" and self.ctx.state.loaded is not None:
                opt = hard_cut_option(self.ctx.state.loaded, heads, priority)
                if opt["ok"]:
                    text.append("Hard cut: a stock checkpoint can hold this removal.")
                elif opt["nearest"]:
                    text.append(f"<span style='color:#b35900'>Hard cut not possible as a stock checkpoint: "
                                f"{html.escape(opt['problem'])}. Nearest set that is: {html.escape(describe_heads(opt['nearest']))} "
                                f"(tick “nearest” to take it, or use the soft cut).</span>")
                else:
                    text.append(f"<span style='color:#b35900'>Hard cut not possible: {html.escape(opt['problem'])}; "
                                "use the soft cut.</span>")
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return
        self.proposal.setText("<br>".join(text))
        self._show_predicted(heads)

    def _chosen(self, cfg: HeadsConfig):
        r = cfg.removal
        if r.heads:
            self.plan = None
            return parse_heads_spec(r.heads), None
        if self.result is None:
            raise PolypruneError("There are no head scores to propose from", "score heads first (Score heads)")
        kind = cfg.ranking_kind() if cfg.ranking_kind() in self.result.scores.kinds() else self.result.classes.kind
        self.plan = propose_removal(self.result.scores, r.keep, r.drop, cfg.top_share, kind, r.max_heads)
        if not self.plan.heads:
            raise PolypruneError("No head matters for the dropped languages without mattering for a kept one",
                                 "raise the top share q, or keep fewer languages")
        return self.plan.heads, self.plan.priority

    def _show_predicted(self, heads) -> None:
        self.effects.setRowCount(0)
        if self.result is None:
            return
        s = self.result.scores
        order = [(b, h) for b, hs in heads.items() for h in hs]
        roles = {c: "drop" for c in self.drop.codes()} | {c: "keep" for c in self.keep.codes()}
        for i, lang in enumerate(s.languages):
            pred = float(sum(s.taylor[i][l, h] for l, h in order))
            self._effect_row(lang, roles.get(lang, ""), pred, None)

    def _effect_row(self, lang, role, pred, eff) -> None:
        t = self.effects
        r = t.rowCount()
        t.insertRow(r)
        cells = [display_label(lang), role, "–" if not np.isfinite(pred) else f"{pred:+.4f}",
                 "" if eff is None else f"{eff.delta:+.4f}",
                 "" if eff is None else f"[{eff.ci_low:+.4f}, {eff.ci_high:+.4f}]",
                 "" if eff is None else f"{eff.ppl_ratio:.3f}"]
        for c, v in enumerate(cells):
            t.setItem(r, c, QTableWidgetItem(v))

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export folder for the model without these heads", "model-without-heads")
        if path:
            self.export_to(path)

    def export_to(self, out: str | Path, overwrite: bool = False):
        """Measure and export the removal to the new folder ``out`` in a background job."""
        if not self.ctx.require_model():
            return None
        cfg = self._validated(need_removal=True)
        if cfg is None:
            return None
        loaded, scores = self.ctx.state.loaded, self.result
        if scores is not None and not set(cfg.removal.drop + cfg.removal.keep) <= set(scores.scores.languages):
            scores = None  # languages not scored: remove_heads scores them
        if scores is not None:
            cfg.texts, cfg.seq_len = scores.config.texts, scores.config.seq_len
        cfg.cross_split, cfg.cross_samples = self.cross_split.currentText(), self.cross_samples.value()

        def done(res):
            self.effects.setRowCount(0)
            roles = {c: "drop" for c in cfg.removal.drop} | {c: "keep" for c in cfg.removal.keep}
            for e in res.effects:
                self._effect_row(e.language, roles.get(e.language, ""), e.predicted, e)
            self.ctx.log(f"Removed {sum(map(len, res.heads.values()))} heads ({res.cut} cut) and exported to {res.out}; "
                         f"parameters {res.params_before:,} → {res.params_after:,}; reload check {res.reload_diff:.2g}", "ok")
            self.last_removal = res

        self.job = self.ctx.run_job(REMOVE_JOB, lambda p: remove_heads(loaded, cfg, out, overwrite=overwrite,
                                                                             scores=scores, progress=p), on_finished=done)
        return self.job

    # --- results ------------------------------------------------------------------------
    def show_result(self, res) -> None:
        """Show a :class:`~polyprune.heads.HeadsResult` in the four plots."""
        self.result = res
        self.save_btn.setEnabled(True)
        s = res.scores
        self.show_lang.blockSignals(True)
        self.show_lang.clear()
        for code in s.languages:
            self.show_lang.addItem(display_label(code), code)
        self.show_lang.blockSignals(False)
        self.show_kind.blockSignals(True)
        self.show_kind.clear()
        self.show_kind.addItems(s.kinds())
        self.show_kind.blockSignals(False)
        self._draw_heat()
        self._draw_map()
        self._draw_scatter()
        self._draw_cross()
        t = res.timings()
        self.ctx.log("Heads scored: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()), "ok")

    def _draw_heat(self) -> None:
        res = self.result
        if res is None or self.show_lang.currentIndex() < 0:
            return
        k, kind = self.show_lang.currentIndex(), self.show_kind.currentText()
        data = res.scores.get(kind)[k].astype(np.float32)
        L, H = data.shape
        self.heat_img.setImage(data)
        self.heat_img.setRect(QRectF(-0.5, -0.5, H, L))
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        self.heat_bar.setLevels((lo, hi if hi > lo else lo + 1e-9))
        p = self.heat_box.plot
        p.setTitle(plot_title(f"Head scores: {language_name(res.scores.languages[k])}", f"{kind}; block × head"))
        _ticks(p, "bottom", [str(h) for h in range(H)])
        _block_ticks(p, L)
        p.setXRange(-0.5, H - 0.5, padding=0)
        p.setYRange(-0.5, L - 0.5, padding=0)

    def _draw_map(self) -> None:
        c = self.result.classes
        L, H = c.label.shape
        self.map_img.setImage(head_map_image(c.label), levels=(0, 255))
        self.map_img.setRect(QRectF(-0.5, -0.5, H, L))
        p = self.map_box.plot
        _ticks(p, "bottom", [str(h) for h in range(H)])
        _block_ticks(p, L)
        p.setXRange(-0.5, H - 0.5, padding=0)
        p.setYRange(-0.5, L - 0.5, padding=0)
        legend = " ".join(f"<span style='color:{PALETTE[i % len(PALETTE)]}'>■</span> {html.escape(language_name(x))} "
                          f"({len(c.specific[x])})" for i, x in enumerate(c.languages))
        self.map_box.caption.setText(f"{legend} <span style='color:{SHARED_COLOR}'>■</span> shared ({len(c.shared)}) "
                                     f"<span style='color:{NONE_COLOR}'>■</span> neither — top {c.k} heads per language by {c.kind}")

    def _draw_scatter(self) -> None:
        s = self.result.scores
        if len(s.kinds()) < 2:
            self.scatter.setData([], [])
            self.diag.setData([], [])
            self.scatter_box.caption.setText("Compute both ablation and taylor scores to compare them.")
            return
        spots, xs = [], []
        for i, lang in enumerate(s.languages):
            for a, t in zip(s.ablation[i].ravel(), s.taylor[i].ravel()):
                spots.append({"pos": (float(a), float(t)), "brush": pg.mkBrush(PALETTE[i % len(PALETTE)])})
                xs += [a, t]
        self.scatter.setData(spots)
        lo, hi = float(np.min(xs)), float(np.max(xs))
        self.diag.setData([lo, hi], [lo, hi])
        agree = agreement(s.ablation, s.taylor, s.languages, self.result.classes.k)
        self.scatter_box.caption.setText("Spearman ρ: " + ", ".join(
            f"<span style='color:{PALETTE[i % len(PALETTE)]}'>■</span> {html.escape(x)} {agree[x]['spearman']:+.2f}"
            for i, x in enumerate(s.languages) if x in agree) + " (dashed: taylor = ablation)")

    def _draw_cross(self) -> None:
        p = self.cross_box.plot
        for t in self.cross_texts:
            p.removeItem(t)
        self.cross_texts = []
        x = self.result.cross
        if x is None:
            self.cross_img.clear()
            for ax in ("bottom", "left"):
                p.getAxis(ax).setTicks(None)
            self.cross_box.caption.setText("Tick cross-effects and score again to measure them.")
            return
        K = len(x.languages)
        # rows: language measured (B); columns: language whose heads were removed (A)
        data = x.delta.T.astype(np.float32)
        self.cross_img.setImage(data)
        self.cross_img.setRect(QRectF(-0.5, -0.5, K, K))
        m = float(np.nanmax(np.abs(data))) or 1e-9
        self.cross_bar.setLevels((-m, m))
        dec, fs = (3, 9) if K <= 3 else (2, 7) if K <= 6 else (2, 6)
        for a in range(K):
            for b in range(K):
                txt = (f"{x.delta[a, b]:+.{dec}f}<br>[{x.ci_low[a, b]:+.{dec}f},{x.ci_high[a, b]:+.{dec}f}]"
                       if x.removed[x.languages[a]] else "no heads")
                item = pg.TextItem(html=f"<div style='text-align:center; color:#111; font-size:{fs}pt'>{txt}</div>",
                                   anchor=(0.5, 0.5))
                item.setPos(a, b)
                p.addItem(item)
                self.cross_texts.append(item)
        short = (lambda c: c.split("_")[0]) if K > 4 else (lambda c: c)  # noqa: E731
        _ticks(p, "bottom", [f"{short(c)} ({len(x.removed[c])})" for c in x.languages])
        _ticks(p, "left", [short(c) for c in x.languages])
        p.getAxis("bottom").setStyle(hideOverlappingLabels=False)
        p.setXRange(-0.5, K - 0.5, padding=0)
        p.setYRange(-0.5, K - 0.5, padding=0)
        spec = "; ".join(f"{la}: {x.specificity[i]:+.3f} [{x.spec_low[i]:+.3f}, {x.spec_high[i]:+.3f}]"
                         for i, la in enumerate(x.languages) if np.isfinite(x.specificity[i]))
        self.cross_box.caption.setText(f"Held-out {x.split}; cell: ΔNLL [95 % interval]. Own minus others' effect: {spec}")

    def _clear_removal(self) -> None:
        self.plan = None
        self.proposal.setText("Score heads, choose languages to keep and drop, then propose.")
        self.effects.setRowCount(0)

    # --- files --------------------------------------------------------------------------
    def _open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder with head scores")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        """Show the results saved in ``folder``."""
        try:
            res = load_results(folder)
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return
        self.set_config(res.config)
        self.show_result(res)

    def _save(self) -> None:
        folder = QFileDialog.getSaveFileName(self, "New folder for the head scores", "head-scores")[0]
        if folder:
            self.save_to(folder)

    def save_to(self, folder: str | Path, overwrite: bool = False) -> Path | None:
        """Write the results (CSV, npz, settings) and the four plots as PNG into the new folder ``folder``."""
        if self.result is None:
            self.ctx.error("There are no head scores to save", "score heads first")
            return None
        try:
            src = self.ctx.state.loaded.path if self.ctx.state.loaded is not None else None
            out = save_results(self.result, folder, overwrite=overwrite, sources=[src])
            for box in (self.heat_box, self.map_box, self.scatter_box, self.cross_box):
                box.save_to(out / f"{box.name}.png")
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        self.ctx.log(f"Saved head scores and plots to {out}", "ok")
        return out

    # --- busy / recipe ------------------------------------------------------------------
    def set_busy(self, busy: bool, name: str = "") -> None:
        """Disable the buttons that start a model job while one runs; Cancel only then."""
        for b in (self.score_btn, self.export_btn):
            b.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy and name in JOB_NAMES)

    def to_recipe(self, recipe) -> None:
        """Write this panel's settings into ``recipe.heads`` when the recipe has that section."""
        if hasattr(recipe, "heads"):
            cfg = self.config()
            r = cfg.removal
            if r is not None and not (r.heads or r.drop):
                cfg.removal = None  # nothing chosen to remove yet: the recipe holds the scoring settings
            recipe.heads = cfg.to_dict()

    def apply_recipe(self, recipe) -> None:
        """Show ``recipe.heads`` (a :class:`HeadsConfig` or a mapping) when present."""
        cfg = getattr(recipe, "heads", None)
        if isinstance(cfg, dict):
            cfg = HeadsConfig.from_dict(cfg)
        if isinstance(cfg, HeadsConfig):
            self.set_config(cfg)
