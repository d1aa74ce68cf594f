"""Small reusable widgets and helpers: language picker, plot export, help labels, glossary."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyqtgraph as pg
import pyqtgraph.exporters as pg_exporters
from PySide6.QtCore import QRectF, QSize, QStringListModel, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QCompleter, QFileDialog, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QListView, QListWidget, QListWidgetItem, QScrollArea, QSizePolicy, QPushButton, QTableWidget, QToolButton, QVBoxLayout,
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
    "variant": ("The dense model or one pruning of it, with the settings that made it. Polyprune keeps every variant "
                "until you delete it; the model holds one at a time and switches between them exactly, bit for bit. "
                "A stored variant costs its mask (one bit per weight) plus, for SparseGPT, the weights it changed."),
    "owl": ("OWL (outlier-weighted layer-wise sparsity, Yin et al. 2024) prunes blocks with many large-magnitude "
            "features less and the others more, keeping the average sparsity."),
    "rankc": ("RankC (Qi et al. 2023): how consistently the model ranks the answers of a question in English and in "
              "another language (1 = the same ranking on every item). Measured on XNLI's parallel items."),
    "dice": ("Mask agreement (Dice): the share of kept weights two prunings have in common, 2·|A∩B| / (|A|+|B|); 1 "
             "means the same mask, about 1 − sparsity for two random masks."),
    "top_share": ("Top share: the share of hidden dimensions compared when two feature settings are compared "
                  "(Kim et al. use the top 40 %): the overlap counts how many of A's largest dimensions are also "
                  "among B's."),
    "interval": ("95 % interval: the range the true value lies in with 95 % confidence, from resampling the examples "
                 "(bootstrap). With few examples it is wide: a difference smaller than it is noise."),
    "paired": ("Paired comparison: dense and pruned are scored on the same examples, and the difference is "
               "resampled example by example. Its interval is much narrower than comparing the two intervals; the "
               "verdict says 'worse than dense' only when the whole interval is on the worse side."),
    "chance": ("Chance level: the accuracy of guessing (1/3 for XNLI's three labels, 1/2 for the two-choice tasks). "
               "A dense model at chance in a language cannot show a loss there."),
    "refined": ("Kim et al.'s refined metric (wanda_refined): scores a weight by its size times how much its input is "
                "used on the base set (the demonstrations) relative to a contrast set (e.g. other languages), so "
                "weights the base set needs more than the contrast set are kept."),
    "mix": ("A mix of languages: calibration samples in several languages, in the proportions you give "
            "(Multilingual Brain Surgeon). Each language reads its own FLORES sentences."),
    "chrf": "chrF++ and BLEU: how close a translation is to the reference, 0–100; higher is better.",
    "special_tokens": ("Special tokens (<bos>, <eos>, padding) are added by the tokenizer, not written by anyone. "
                       "Many models put their largest activations on them, so they are left out of the token lists, "
                       "and on request out of the statistics too."),
}

#: How the glossary names its entries.
GLOSSARY_TITLES = {
    "feature": "feature", "magnitude": "magnitude", "sparsity": "sparsity", "nm": "N:M sparsity",
    "wanda": "Wanda", "magnitude_method": "magnitude pruning", "shots": "shots", "samples": "samples",
    "seq_len": "sequence length", "template": "template", "overlap": "overlap", "trust_remote_code":
    "trust_remote_code", "perplexity": "perplexity", "xnli": "XNLI", "revert": "use the dense model",
    "variant": "variant", "owl": "OWL", "rankc": "RankC", "dice": "Dice (mask agreement)", "top_share": "top share",
    "interval": "95 % interval", "paired": "paired comparison", "chance": "chance level",
    "refined": "refined metric (Kim et al.)", "mix": "mix of languages", "chrf": "chrF++ and BLEU",
    "special_tokens": "special tokens",
}

#: Command-line words in messages of the core, and the control of the window they stand for.
WINDOW_WORDS = [
    (r"pass --overwrite", "tick 'Replace the folder if it already exists' in the Export panel"),
    (r"--overwrite", "'Replace the folder if it already exists' (Export panel)"),
    (r"--calibration-text FILE|--calibration-text", "the source 'Raw text lines' (Demonstrations panel)"),
    (r"--contrast-text FILE|--contrast-text", "the contrast set (Pruning panel)"),
    (r"flores:DIR", "a FLORES-200 folder (Source of pairs, Demonstrations panel)"),
    (r"--samples", "Samples (Demonstrations panel)"),
    (r"--shots", "Shots (Demonstrations panel)"),
    (r"--seq-len", "Sequence length (Demonstrations panel)"),
    (r"--demos", "Source of pairs (Demonstrations panel)"),
    (r"--src", "Source language (Demonstrations panel)"),
    (r"--tgt", "Target language (Demonstrations panel)"),
    (r"--sparsity", "Sparsity (Pruning panel)"),
    (r"--method", "Method (Pruning panel)"),
    (r"--pattern", "Pattern (Pruning panel)"),
    (r"--skip-blocks", "Skip blocks (Pruning panel)"),
    (r"--data DIR|--data", "the Data folder (Evaluation panel)"),
    (r"--limit", "Examples per language (Evaluation panel)"),
    (r"--languages", "the ticked languages (Evaluation panel)"),
    (r"--tasks", "the ticked tasks (Evaluation panel)"),
    (r"--model", "the model field (Model panel)"),
    (r"--trust-remote-code", "'Allow model code from the checkpoint' (Model panel)"),
    (r"set POLYPRUNE_DATA to a folder with flores200/(?: and xnli/)?", "choose the data folder in the Evaluation panel"),
]


def window_words(text: str) -> str:
    """A core message with its command-line options replaced by the controls of the window."""
    for pattern, words in WINDOW_WORDS:
        text = re.sub(rf"(?<![\w-]){pattern}(?![\w-])", words, text)
    return text


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
    if metric.startswith("acc") or metric == "prompt_mean":
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
        self.invalid: str | None = None
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
            self.invalid = text
            return
        if code not in self._codes:
            self.setStyleSheet("QComboBox { border: 1px solid #c62828; }")
            self.setToolTip(f"{display_label(code)} is not available here")
            self.invalid = text
            return
        self._set(code)

    def checked_code(self, what: str) -> str:
        """The chosen code, after taking what is typed in the field.

        Raises:
            PolypruneError: the field holds text that is not a language offered here (``what``
                names the control, e.g. "Source language (Demonstrations panel)").
        """
        text = self.currentText().strip()
        if self._code is None or text != self._labels[self._codes.index(self._code)]:
            self._commit(text)
        if self.invalid is not None:
            raise PolypruneError(f"{what}: '{self.invalid}' is not a language offered there",
                                 f"type part of a language name or code in {what} and pick it from the list")
        return self._code

    def _set(self, code: str) -> None:
        self.invalid = None
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
class LanguageList(QWidget):
    """A language picker with Add and Remove, and the chosen languages as a wrapping list.

    ``codes()`` gives the FLORES codes in the order they were added."""

    def __init__(self, codes: list[str], tooltip: str, first: str = "eng_Latn"):
        super().__init__()
        self.picker = LanguagePicker(first)
        self.picker.setMinimumContentsLength(12)
        self.picker.setToolTip(tooltip + " " + self.picker.toolTip())
        self.add_btn = QPushButton("Add")
        self.add_btn.setToolTip("Add the language chosen on the left")
        self.add_btn.clicked.connect(lambda: self.add_code(self.picker.code()))
        self.remove_btn = QPushButton("Remove")
        self.remove_btn.setToolTip("Remove the languages selected in the list")
        self.remove_btn.clicked.connect(self.remove_selected)
        self.list = QListWidget()
        self.list.setFlow(QListWidget.LeftToRight)
        self.list.setWrapping(True)
        self.list.setResizeMode(QListView.Adjust)  # re-wrap when the panel is resized, no sideways scrolling
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        # the width comes from the column, never from the items: a wrapped list would otherwise ask for
        # the width of all its items in one row and push the buttons beside it out of view
        self.list.setSizePolicy(QSizePolicy.Ignored, self.list.sizePolicy().verticalPolicy())
        self.list.setMinimumWidth(120)
        self.list.setMaximumHeight(52)
        self.list.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.list.setToolTip(tooltip)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.picker, 1)
        row.addWidget(self.add_btn)
        row.addWidget(self.remove_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.list)
        self.set_codes(codes)

    def add_code(self, code: str | None) -> None:
        if code and code not in self.codes():
            it = QListWidgetItem(display_label(code))
            it.setData(Qt.UserRole, code)
            self.list.addItem(it)

    def remove_selected(self) -> None:
        for it in self.list.selectedItems():
            self.list.takeItem(self.list.row(it))

    def codes(self) -> list[str]:
        return [self.list.item(i).data(Qt.UserRole) for i in range(self.list.count())]

    def set_codes(self, codes: list[str]) -> None:
        self.list.clear()
        for c in codes:
            self.add_code(c)


class SettingsColumn(QScrollArea):
    """A vertically scrolling column for a panel's settings, never narrower than its content.

    Its minimum width is the content's minimum width plus the vertical scroll bar, asked each time
    the layout asks (fonts and styles settle after construction), so nothing is cut off at the
    right edge; a fixed minimum of 500 px once hid the Remove buttons and the ends of the
    language lists."""

    def __init__(self, content: QWidget, min_width: int = 500):
        super().__init__()
        self.min_width = min_width
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        bar = self.verticalScrollBar().sizeHint().width()
        need = self.widget().minimumSizeHint().width() + bar + 2 * self.frameWidth()
        return QSize(max(self.min_width, need), hint.height())


def settings_column(content: QWidget, min_width: int = 500) -> SettingsColumn:
    """A :class:`SettingsColumn` holding ``content``."""
    return SettingsColumn(content, min_width)


def style_plot(plot: pg.PlotItem, title: str, left: str, bottom: str) -> None:
    """Title, axis labels and a light grid for a plot; an empty plot spans 0..1 on both axes.

    Axis numbers are shown as they are: pyqtgraph's automatic SI prefix would label an empty plot
    "(x0.001)" and a block axis "block (x0.001)" before any data arrives."""
    plot.setTitle(plot_title(title))
    plot.setLabel("left", left)
    plot.setLabel("bottom", bottom)
    plot.showGrid(x=False, y=True, alpha=0.25)
    for ax in ("left", "bottom"):
        plot.getAxis(ax).enableAutoSIPrefix(False)
        plot.getAxis(ax).setTextPen("#333333")
        plot.getAxis(ax).setPen("#888888")
    plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.05)
    plot.enableAutoRange()  # setRange switched it off; data drawn later must still fit the view


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".svg":
        _export_svg(item, path)
    else:
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            path = path.with_suffix(".png")
        exp = pg_exporters.ImageExporter(item)
        w = int(exp.parameters()["width"])
        if w < 1200:  # export crisper than the screen
            exp.parameters()["width"] = 1600
        exp.export(str(path))
    if not path.exists():
        raise PolypruneError(f"Could not write {path}", "choose a folder you can write to")
    return path


def _export_svg(item, path: Path) -> None:
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
    head = t.horizontalHeader()
    head.setSectionResizeMode(QHeaderView.ResizeToContents)  # every header shown whole; the table scrolls
    head.setStretchLastSection(True)
    head.setMinimumSectionSize(40)
    t.setHorizontalScrollMode(QAbstractItemView.ScrollPerPixel)
    t.setWordWrap(False)
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


def primary(button: QPushButton) -> QPushButton:
    """Mark a button as the panel's main action (styled by the application style sheet)."""
    button.setObjectName("primary")
    button.setDefault(False)
    return button
