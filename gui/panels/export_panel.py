"""Export panel: which variant, target folder, model card preview, export in the background with
the reload check."""
from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QPushButton, QTabWidget, QTextBrowser, QToolButton, QVBoxLayout,
                               QWidget)

from polyprune.errors import PolypruneError
from polyprune.export import model_card
from polyprune.fileio import check_output
from polyprune.recipe import Recipe
from polyprune.session import export_variant

from ..widgets import group, heading, help_label, monospace, primary

REPLACE_HINT = "tick 'Replace the folder if it already exists' (Export panel)"
#: Where exports go unless the user chooses a folder: ``~/Polyprune exports/<model>-<variant>``.
EXPORT_ROOT = "Polyprune exports"


def default_export_folder(model_name: str, variant_name: str) -> Path:
    """A new folder under ``~/Polyprune exports`` named after the model and the variant (``-2``,
    ``-3``, ... when taken)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{Path(model_name).name}-{variant_name}").strip("-.")[:80] or "model"
    root = Path.home() / EXPORT_ROOT
    out, k = root / slug, 2
    while out.exists():
        out, k = root / f"{slug}-{k}", k + 1
    return out


class ExportPanel(QWidget):
    """Write a variant as a Hugging Face folder with a model card, and check it reloads."""

    title = "Export"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.variant = QComboBox()
        self.variant.setToolTip("Which variant to export (default: the one the model holds); the model holds it "
                                "while it is written and goes back afterwards")
        self.variant.currentIndexChanged.connect(lambda _: (self.suggest_target(), self._mark_dirty()))
        self._picked = None  # the variant the user chose in the list (else: the one the model holds)
        self.variant.activated.connect(lambda _: setattr(self, "_picked", self.variant.currentData()))
        self.target = QLineEdit()
        self._auto_target = ""  # the suggested folder shown while the user has not typed one
        self.target.textEdited.connect(lambda _: setattr(self, "_auto_target", ""))
        self.target.setPlaceholderText("a new folder for the pruned model, e.g. ~/models/gemma3-270m-wanda50")
        self.target.setToolTip("Where the model is written. It must be a new folder (or tick Replace for a folder "
                               "Polyprune wrote before); the source model is never written to")
        browse = QToolButton()
        browse.setText("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.target, 1)
        row.addWidget(browse)
        self.overwrite = QCheckBox("Replace the folder if it already exists")
        self.overwrite.setToolTip("Off: an existing folder is never touched. On: a folder Polyprune wrote before is "
                                  "replaced once the new export is complete (folders Polyprune did not write never are)")
        self.reload = QCheckBox("Check that the export loads again (compares the outputs)")
        self.reload.setChecked(True)
        self.reload.setToolTip("Reload the written folder with transformers and compare its predictions with the "
                               "model in memory before it is moved into place; 0 means identical")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Variant", self.variant)
        form.addRow("Target folder", row)
        form.addRow("", self.overwrite)
        form.addRow("", self.reload)

        self.export_btn = primary(QPushButton("Export"))
        self.export_btn.setToolTip("Write weights (safetensors), tokenizer, model card, recipe, report and masks "
                                   "(Ctrl+Shift+E)")
        self.export_btn.clicked.connect(self.export)
        self.open_btn = QPushButton("Open folder")
        self.open_btn.setEnabled(False)
        self.open_btn.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(self.ctx.state.export_path)))
        btns = QHBoxLayout()
        btns.addWidget(self.export_btn)
        btns.addWidget(self.open_btn)
        btns.addStretch(1)
        self.result = QLabel("Not exported yet.")
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        left = QVBoxLayout()
        left.addLayout(form)
        left.addLayout(btns)
        left.addWidget(self.result)
        left.addWidget(help_label(
            "The folder holds model.safetensors, the tokenizer, README.md (the model card, with the source model's "
            "licence notice), pruning_config.json, recipe.yaml (replay it with 'polyprune run recipe.yaml --out "
            "NEW_FOLDER'), report.json and masks.safetensors. It appears complete or not at all. Pruned weights "
            "are stored as zeros, so the files are as large as the dense model's."))
        left.addStretch(1)

        self.card = QTextBrowser()
        self.card.setOpenExternalLinks(False)
        self.card_src = QPlainTextEdit()
        self.card_src.setReadOnly(True)
        self.card_src.setFont(monospace())
        tabs = QTabWidget()
        tabs.addTab(self.card, "Model card")
        tabs.addTab(self.card_src, "Markdown")
        refresh = QToolButton()
        refresh.setText("Refresh")
        refresh.clicked.connect(self.refresh_card)
        tabs.setCornerWidget(refresh)
        right = QVBoxLayout()
        right.addWidget(tabs)

        body = QHBoxLayout()
        body.addWidget(group("Export", left), 4)
        body.addWidget(group("Model card preview", right), 6)
        lay = QVBoxLayout(self)
        lay.addWidget(heading("6 · Export"))
        lay.addWidget(help_label("Save a variant as a standard Hugging Face folder that any transformers program can "
                                 "load, with a model card that records how it was made."))
        lay.addLayout(body, 1)

        st = ctx.state
        self._card_dirty = True
        for sig in (st.model_loaded, st.evaluated, st.calibration_changed, st.active_changed):
            sig.connect(self._mark_dirty)
        st.variants_changed.connect(self.refresh_variants)
        st.active_changed.connect(lambda _: self.refresh_variants())
        st.busy_changed.connect(self.set_busy)
        self.refresh_card()

    def refresh_variants(self) -> None:
        """List the session's variants; the one the model holds is chosen unless another was."""
        st = self.ctx.state
        self.variant.blockSignals(True)
        self.variant.clear()
        for v in st.variants:
            self.variant.addItem(v.name + ("  (in the model)" if v is st.active else ""), v.id)
        ids = [v.id for v in st.variants]
        want = self._picked if self._picked in ids else (st.active.id if st.active is not None else None)
        i = self.variant.findData(want)
        self.variant.setCurrentIndex(max(0, i))
        self.variant.blockSignals(False)
        self.suggest_target()
        self._mark_dirty()

    def suggest_target(self) -> None:
        """Fill the target folder with a new folder named after the model and variant, unless the
        user typed one."""
        st = self.ctx.state
        typed = self.target.text().strip()
        if st.loaded is None or (typed and typed != self._auto_target):
            return
        v = self.chosen_variant()
        if v is None:
            return
        name = str(st.loaded.meta.get("base_model") or st.loaded.spec)
        self._auto_target = str(default_export_folder(name, v.name))
        self.target.setText(self._auto_target)

    def chosen_variant(self):
        """The variant to export."""
        st = self.ctx.state
        vid = self.variant.currentData()
        try:
            return st.session.get(vid) if vid else st.active
        except PolypruneError:
            return st.active

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose the parent folder; a new folder is created inside")
        if path:
            name = "pruned-model"
            if self.ctx.state.loaded is not None:
                name = Path(str(self.ctx.state.loaded.spec)).name.replace("/", "-") + "-pruned"
            self._auto_target = ""
            self.target.setText(str(Path(path) / name))

    def _mark_dirty(self, *args) -> None:
        # Rendering the card costs a few tens of milliseconds: do it only when it can be seen,
        # and once for several changes in a row.
        self._card_dirty = True
        if self.isVisible():
            QTimer.singleShot(0, self._refresh_if_dirty)

    def _refresh_if_dirty(self) -> None:
        if self._card_dirty:
            self.refresh_card()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Bring the model card up to date when the panel is shown."""
        super().showEvent(event)
        self._refresh_if_dirty()

    def refresh_card(self) -> None:
        """Render the model card the export would write."""
        self._card_dirty = False
        st = self.ctx.state
        if st.loaded is None:
            self.card.setMarkdown("*Load a model to see its model card.*")
            self.card_src.setPlainText("")
            return
        self.ctx.sync_recipe()
        text = model_card(st.report(self.chosen_variant()))
        self.card.setMarkdown(text.split("---", 2)[-1] if text.startswith("---") else text)
        self.card_src.setPlainText(text)

    def export(self):
        """Check the target, then export the chosen variant in a background job."""
        st = self.ctx.state
        if not self.ctx.require_model():
            return None
        target = self.target.text().strip()
        if not target:
            self.ctx.error("No target folder was given",
                           "type or browse to a new folder in Target folder (Export panel)")
            return None
        loaded = st.loaded
        overwrite, check = self.overwrite.isChecked(), self.reload.isChecked()
        try:
            out = check_output(target, sources=[loaded.path], overwrite=overwrite, what="export folder",
                               replace_hint=REPLACE_HINT)
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        variant = self.chosen_variant()
        self.ctx.sync_recipe()
        recipe = st.recipe_for(variant)
        recipe.out = str(out)
        recipe.overwrite = overwrite
        recipe.reload_check = check
        report = st.report(variant)
        session = st.session
        if variant.is_dense:
            self.ctx.log("Note: exporting the dense model (not pruned)")

        def job(progress):
            return export_variant(session, variant, out, recipe, report, overwrite=overwrite, check=check,
                                  progress=progress, replace_hint=REPLACE_HINT)

        def done(res):
            diff = res.reload_diff
            msg = f"Exported “{variant.name}” to {res.path}."
            if diff is not None:
                msg += f" Reload check: largest difference in the outputs {diff:.3g}" + (
                    " (identical)." if diff == 0 else ".")
            self.result.setText(msg)
            self.open_btn.setEnabled(True)
            st.set_exported(str(res.path), report)
            self.ctx.log(msg, "ok")
            self.suggest_target()  # the next export goes to a new folder too

        return self.ctx.run_job("Exporting", job, on_finished=done,
                                on_cancelled=lambda: self.result.setText("Cancelled: nothing was written."),
                                on_failed=lambda *_: self.result.setText("Export failed: nothing was written."))

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.export_btn.setEnabled(not busy)

    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        t = self.target.text().strip()
        if t == self._auto_target:  # a suggestion, not a setting
            t = ""
        recipe.out = t or None
        recipe.export = bool(t)
        recipe.overwrite = self.overwrite.isChecked()
        recipe.reload_check = self.reload.isChecked()

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self._auto_target = ""
        self.target.setText(recipe.out or "")
        self.suggest_target()
        self.overwrite.setChecked(bool(recipe.overwrite))
        self.reload.setChecked(bool(recipe.reload_check))
