"""Small reusable widgets and helpers: language picker, plot export, help labels, glossary."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QStringListModel, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QCompleter, QFileDialog, QFrame, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QPushButton, QSizePolicy, QTableWidget, QToolButton, QVBoxLayout,
                               QWidget)

from polyprune.errors import PolypruneError
from polyprune.languages import FLORES_LANGUAGES, display_label, resolve_language, search_languages

# Plain-word explanations used as tooltips across the panels.
GLOSSARY = {
    "feature": ("A hidden feature is one of the numbers (dimensions) the model passes from layer to layer "
                "for every token. A large-magnitude feature is a dimension whose values are much larger than "
                "the others'; Kim et al. (2024) found that translation demonstrations light up a few of them "
                "strongly, and that keeping the weights that read them keeps multilingual ability."),
    "magnitude": ("How large a feature's values are: for each sample, the length (L2 norm) of that "
                  "dimension over the sample's tokens, averaged over the samples. Padding is never counted."),
    "sparsity": "The share of weights set to zero in every pruned layer: 0.5 removes half of them.",
    "nm": ("N:M sparsity keeps a fixed pattern: in every group of M neighbouring weights, N are removed "
           "(2:4 removes 2 of every 4). Some GPUs run such models faster. It always removes exactly N/M."),
    "wanda": ("Wanda (Sun et al. 2024) scores each weight by its size times how large its input usually is "
              "on the demonstrations, and removes the lowest scores in each output row. No retraining."),
    "magnitude_method": "Magnitude pruning removes the smallest weights; it needs no demonstrations.",
    "shots": "How many translated sentence pairs one demonstration (one calibration sample) contains.",
    "samples": "How many demonstrations are fed to the model to measure features and score weights.",
    "seq_len": ("The longest a demonstration may be, in tokens (word pieces). Longer ones are cut; "
                "shorter ones are padded, and padding is ignored."),
    "template": ("How one sentence pair is written. Fields: {src_name} {src} {tgt_name} {tgt} {eos}; "
                 "{eos} is the model's end-of-text token."),
    "overlap": ("Of the top dimensions (by magnitude) under setting A, the share that are also among the top "
                "dimensions under setting B, per layer. 1 means the same features light up."),
    "trust_remote_code": ("Some models ship their own Python code. Loading them runs that code on your "
                          "computer, like installing a program from the model's authors. Leave this off "
                          "unless you trust them; most models do not need it."),
    "perplexity": "FLORES perplexity: how surprised the model is by real sentences in a language. Lower is better.",
    "xnli": "XNLI accuracy: does the model tell whether one sentence follows from another? Higher is better.",
    "revert": "Put every removed weight back exactly as it was, without reading the model from disk.",
}


def help_label(text: str, parent: QWidget | None = None) -> QLabel:
    """A wrapped, muted explanatory label."""
    lab = QLabel(text, parent)
    lab.setWordWrap(True)
    lab.setObjectName("help")
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.LinksAccessibleByMouse)
    lab.setOpenExternalLinks(True)
    return lab


def heading(text: str) -> QLabel:
    """A bold section heading."""
    lab = QLabel(text)
    f = lab.font()
    f.setPointSizeF(f.pointSizeF() * 1.35)
    f.setBold(True)
    lab.setFont(f)
    lab.setObjectName("heading")
    return lab


def group(title: str, layout) -> QGroupBox:
    """A titled group box holding ``layout``."""
    box = QGroupBox(title)
    box.setLayout(layout)
    return box


def hline() -> QFrame:
    """A horizontal separator line."""
    line = QFrame()
    line.setFrameShape(QFrame.HLine)
    line.setFrameShadow(QFrame.Sunken)
    return line


def fmt_count(n: int | float | None) -> str:
    """``268,098,176 (268.1 M)``."""
    if n is None:
        return "–"
    n = int(n)
    if n >= 1e9:
        short = f"{n / 1e9:.2f} B"
    elif n >= 1e6:
        short = f"{n / 1e6:.1f} M"
    elif n >= 1e3:
        short = f"{n / 1e3:.1f} k"
    else:
        return f"{n}"
    return f"{n:,} ({short})"


def fmt_value(v: float | None, metric: str = "") -> str:
    """Format a metric value for a table (accuracy as a percentage)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if metric == "acc":
        return f"{100 * v:.1f} %"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.1f}"


# --------------------------------------------------------------------------------------------
# language picker
# --------------------------------------------------------------------------------------------
class LanguagePicker(QComboBox):
    """Editable combo of FLORES-200 languages, labelled "Swahili — swh_Latn", with type-to-search.

    Typing filters with :func:`polyprune.languages.search_languages` (names starting with the
    text first, then codes, then other matches), so "swa", "swh" and "Swahili" all find Swahili.

    Signals:
        language_changed(code): a valid language was chosen.
    """

    language_changed = Signal(str)

    def __init__(self, code: str = "eng_Latn", codes: Sequence[str] | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setEditable(True)
        self.setInsertPolicy(QComboBox.NoInsert)
        self.setMaxVisibleItems(16)
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(22)
        allowed = set(codes) if codes is not None else set(FLORES_LANGUAGES)
        self._codes = [c for c, _ in search_languages("") if c in allowed]
        self._labels = [display_label(c) for c in self._codes]
        self.addItems(self._labels)
        self._model = QStringListModel(self._labels, self)
        comp = QCompleter(self._model, self)
        comp.setCaseSensitivity(Qt.CaseInsensitive)
        comp.setCompletionMode(QCompleter.UnfilteredPopupCompletion)
        comp.setMaxVisibleItems(12)
        self.setCompleter(comp)
        comp.activated[str].connect(self._chosen)
        self.lineEdit().textEdited.connect(self._search)
        self.lineEdit().editingFinished.connect(self._commit)
        self.currentIndexChanged.connect(self._index_changed)
        self.lineEdit().setPlaceholderText("type a language name or code")
        self.setToolTip("Type part of a language name or FLORES-200 code (e.g. 'swa' or 'swh') and pick it "
                        f"from the list: {len(self._codes)} languages")
        self._code = None
        self.set_code(code)

    def _search(self, text: str) -> None:
        allowed = set(self._codes)
        labels = [display_label(c) for c, _ in search_languages(text) if c in allowed]
        self._model.setStringList(labels or self._labels)
        if labels:
            self.completer().complete()

    def _chosen(self, label: str) -> None:
        self._commit(label)

    def _index_changed(self, i: int) -> None:
        if 0 <= i < len(self._codes):
            self._set(self._codes[i])

    def _commit(self, text: str | None = None) -> None:
        text = self.currentText() if text is None or not isinstance(text, str) else text
        try:
            code = resolve_language(text)
        except PolypruneError as e:
            self.setStyleSheet("QComboBox { border: 1px solid #c62828; }")
            self.setToolTip(f"{e.problem}. {e.fix}")
            return
        if code not in self._codes:
            self.setStyleSheet("QComboBox { border: 1px solid #c62828; }")
            self.setToolTip(f"{display_label(code)} is not available here")
            return
        self._set(code)

    def _set(self, code: str) -> None:
        self.setStyleSheet("")
        i = self._codes.index(code)
        if self.currentIndex() != i:
            self.blockSignals(True)
            self.setCurrentIndex(i)
            self.blockSignals(False)
        if self.currentText() != self._labels[i]:
            self.setEditText(self._labels[i])
        if code != self._code:
            self._code = code
            self.language_changed.emit(code)

    def code(self) -> str:
        """The chosen FLORES-200 code."""
        return self._code

    def set_code(self, code: str) -> None:
        """Choose a language by code, name or two-letter code."""
        self._commit(code)

    def codes(self) -> list[str]:
        """The languages offered."""
        return list(self._codes)


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def style_plot(plot: pg.PlotItem, title: str, left: str, bottom: str) -> None:
    """Title, axis labels and a light grid for a plot."""
    plot.setTitle(plot_title(title))
    plot.setLabel("left", left)
    plot.setLabel("bottom", bottom)
    plot.showGrid(x=False, y=True, alpha=0.25)
    for ax in ("left", "bottom"):
        plot.getAxis(ax).setTextPen("#333333")
        plot.getAxis(ax).setPen("#888888")


def plot_title(title: str, subtitle: str = "") -> str:
    """HTML for a plot title (dark, semi-bold) with an optional smaller subtitle line."""
    t = f"<span style='font-size:11pt; font-weight:600; color:#24292f'>{title}</span>"
    if subtitle:
        t += f"<br><span style='font-size:9pt; color:#57606a'>{subtitle}</span>"
    return t


def export_plot(item, path: str | Path) -> Path:
    """Save a plot (a ``PlotItem`` or other graphics item) as PNG or SVG by file suffix.

    PNG goes through pyqtgraph's ``ImageExporter`` (at least 1600 px wide). SVG is drawn by Qt's
    own ``QSvgGenerator`` from the plot's scene: pyqtgraph's SVG exporter fails on the path data
    that recent Qt versions write (pyqtgraph issue #3485).
    """
    import pyqtgraph.exporters as ex

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".svg":
        _export_svg(item, path)
    else:
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            path = path.with_suffix(".png")
        exp = ex.ImageExporter(item)
        w = int(exp.parameters()["width"])
        if w < 1200:  # export crisper than the screen
            exp.parameters()["width"] = 1600
        exp.export(str(path))
    if not path.exists():
        raise PolypruneError(f"Could not write {path}", "choose a folder you can write to")
    return path


def _export_svg(item, path: Path) -> None:
    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    scene = item.scene()
    source = item.sceneBoundingRect() if hasattr(item, "sceneBoundingRect") else scene.sceneRect()
    gen = QSvgGenerator()
    gen.setFileName(str(path))
    gen.setSize(source.size().toSize())
    gen.setViewBox(QRectF(0, 0, source.width(), source.height()))
    gen.setTitle(path.stem)
    gen.setDescription("Plot exported by Polyprune")
    painter = QPainter()
    if not painter.begin(gen):
        raise PolypruneError(f"Could not write {path}", "choose a folder you can write to")
    try:
        painter.setRenderHint(QPainter.Antialiasing)
        scene.render(painter, QRectF(0, 0, source.width(), source.height()), source)
    finally:
        painter.end()


def ask_plot_path(parent: QWidget, name: str) -> str | None:
    """Ask where to save a plot (PNG or SVG)."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save plot", f"{name}.png",
                                          "PNG image (*.png);;SVG vector image (*.svg)")
    return path or None


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Write rows as UTF-8 CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r)
    return path


def save_button(tooltip: str, text: str = "Save…") -> QToolButton:
    """A small tool button for saving a plot."""
    b = QToolButton()
    b.setText(text)
    b.setToolTip(tooltip)
    b.setAutoRaise(False)
    return b


class PlotBox(QWidget):
    """A ``PlotWidget`` with a row of small buttons above it (save as PNG/SVG).

    Signals:
        saved(path): the plot was written.
        save_failed(problem, fix): it could not be written.
    """

    saved = Signal(str)
    save_failed = Signal(str, str)

    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = name
        self.plot_widget = pg.PlotWidget(background="w")
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setMenuEnabled(False)
        self.save = save_button("Save this plot as a PNG image or an SVG vector drawing")
        self.save.clicked.connect(self._save)
        self.caption = QLabel("")
        self.caption.setObjectName("help")
        self.caption.setWordWrap(True)
        self.bar = QHBoxLayout()
        self.bar.setContentsMargins(0, 0, 0, 0)
        self.bar.addWidget(self.caption, 1)
        self.bar.addWidget(self.save, 0, Qt.AlignBottom)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(self.bar)
        lay.addWidget(self.plot_widget, 1)

    def save_to(self, path: str | Path) -> Path:
        """Write the plot to ``path`` (``.png`` or ``.svg``)."""
        return export_plot(self.plot, path)

    def _save(self) -> None:
        path = ask_plot_path(self, self.name)
        if not path:
            return
        try:
            self.saved.emit(str(self.save_to(path)))
        except PolypruneError as e:
            self.save_failed.emit(e.problem, e.fix or "")
        except Exception as e:  # noqa: BLE001 - an exporter error must not crash the window
            self.save_failed.emit(f"Could not save the plot: {e}", "try the other format (PNG or SVG)")


def results_table(columns: Sequence[str], tooltip: str = "") -> QTableWidget:
    """A read-only table for results: header sized to contents, last column stretched, alternating rows."""
    t = QTableWidget(0, len(columns))
    t.setHorizontalHeaderLabels(list(columns))
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    t.verticalHeader().setVisible(False)
    t.setEditTriggers(QAbstractItemView.NoEditTriggers)
    t.setAlternatingRowColors(True)
    if tooltip:
        t.setToolTip(tooltip)
    return t


def bar_colors() -> tuple[QColor, QColor]:
    """Dense and pruned bar colours (colour-blind safe blue and orange)."""
    return QColor("#4C78A8"), QColor("#F58518")


def debounce(parent, ms: int, fn) -> QTimer:
    """A single-shot timer that calls ``fn`` ``ms`` after the last ``start()``."""
    t = QTimer(parent)
    t.setSingleShot(True)
    t.setInterval(ms)
    t.timeout.connect(fn)
    return t


def monospace() -> QFont:
    """The monospace font used for prompts and the log."""
    f = QFont("DejaVu Sans Mono")
    f.setStyleHint(QFont.Monospace)
    return f


def expanding(w: QWidget) -> QWidget:
    """Let ``w`` grow in both directions; returns ``w``."""
    w.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    return w


def primary(button: QPushButton) -> QPushButton:
    """Mark a button as the panel's main action (styled by the application style sheet)."""
    button.setObjectName("primary")
    button.setDefault(False)
    return button
