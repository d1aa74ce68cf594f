"""Export panel: target folder, model card preview, export in the background, reload check."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QTabWidget, QTextBrowser, QPlainTextEdit, QToolButton, QVBoxLayout, QWidget)

from polyprune.errors import PolypruneError
from polyprune.export import check_target, export, model_card, reload_check
from polyprune.pipeline import save_masks, write_outputs
from polyprune.recipe import Recipe

from ..widgets import group, heading, help_label, monospace, primary


class ExportPanel(QWidget):
    """Write the (pruned) model as a Hugging Face folder with a model card, and check it reloads."""

    title = "Export"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.target = QLineEdit()
        self.target.setPlaceholderText("a new folder for the pruned model, e.g. ~/models/gemma3-270m-wanda50")
        self.target.setToolTip("Where the pruned model is written. It must be a new folder (or tick Replace); "
                               "the source model is never written to")
        browse = QToolButton()
        browse.setText("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.target, 1)
        row.addWidget(browse)
        self.overwrite = QCheckBox("Replace the folder if it already exists")
        self.overwrite.setToolTip("Off: an existing folder is never touched. On: it is replaced once the new export "
                                  "is complete")
        self.reload = QCheckBox("Check that the export loads again (compares the outputs)")
        self.reload.setChecked(True)
        self.reload.setToolTip("Reload the written folder with transformers and compare its predictions with the "
                               "model in memory; 0 means identical")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.addRow("Target folder", row)
        form.addRow("", self.overwrite)
        form.addRow("", self.reload)

        self.export_btn = primary(QPushButton("Export"))
        self.export_btn.setToolTip("Write weights (safetensors), tokenizer, model card, recipe and masks (Ctrl+Shift+E)")
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
            "The folder holds model.safetensors, the tokenizer, README.md (the model card), pruning_config.json, "
            "recipe.yaml (replay with 'polyprune run recipe.yaml'), report.json and masks.safetensors. Pruned "
            "weights are stored as zeros, so the files are as large as the dense model's."))
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
        lay.addWidget(help_label("Save the pruned model as a standard Hugging Face folder that any transformers "
                                 "program can load, with a model card that records how it was made."))
        lay.addLayout(body, 1)

        st = ctx.state
        self._card_dirty = True
        for sig in (st.model_loaded, st.pruned, st.evaluated, st.calibration_changed, st.reverted):
            sig.connect(self._mark_dirty)
        st.busy_changed.connect(self.set_busy)
        self.refresh_card()

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose the parent folder; a new folder is created inside")
        if path:
            name = "pruned-model"
            if self.ctx.state.loaded is not None:
                name = Path(str(self.ctx.state.loaded.spec)).name.replace("/", "-") + "-pruned"
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
        text = model_card(st.report())
        self.card.setMarkdown(text.split("---", 2)[-1] if text.startswith("---") else text)
        self.card_src.setPlainText(text)

    def export(self):
        """Check the target, then export in a background job."""
        st = self.ctx.state
        if not self.ctx.require_model():
            return None
        target = self.target.text().strip()
        if not target:
            self.ctx.error("No target folder was given", "type or browse to a new folder for the pruned model")
            return None
        loaded = st.loaded
        overwrite, check = self.overwrite.isChecked(), self.reload.isChecked()
        try:
            out = check_target(target, loaded.path, overwrite)
        except PolypruneError as e:
            self.ctx.error(e.problem, e.fix or "")
            return None
        self.ctx.sync_recipe()
        recipe = st.recipe
        recipe.out = str(out)
        recipe.overwrite = overwrite
        recipe.reload_check = check
        report = st.report()
        result = st.prune_result
        if result is None:
            self.ctx.log("Note: the model is not pruned; exporting the dense model")

        def job(progress):
            report["masks"] = str(out / "masks.safetensors") if result is not None else None
            export(loaded.model, loaded.tokenizer, out, report, source=loaded.path, overwrite=overwrite,
                   progress=progress.sub(0, 0.7))
            report["export"] = {"path": str(out)}
            if check:
                progress.update(0, 1, "Reloading the export to check it")
                report["export"]["reload_max_abs_logit_diff"] = reload_check(loaded.model, out, loaded.tokenizer)
            write_outputs(out, recipe, report)
            if result is not None:
                save_masks(result, out / "masks.safetensors")
            progress.update(1, 1, "Exported")
            return report

        def done(rep):
            diff = rep["export"].get("reload_max_abs_logit_diff")
            msg = f"Exported to {out}."
            if diff is not None:
                msg += f" Reload check: largest difference in the outputs {diff:.3g}" + (
                    " (identical)." if diff == 0 else ".")
            self.result.setText(msg)
            self.open_btn.setEnabled(True)
            st.set_exported(str(out), rep)
            self.ctx.log(msg)

        return self.ctx.run_job("Exporting", job, on_finished=done)

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.export_btn.setEnabled(not busy)

    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        t = self.target.text().strip()
        recipe.out = t or None
        recipe.export = bool(t)
        recipe.overwrite = self.overwrite.isChecked()
        recipe.reload_check = self.reload.isChecked()

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.target.setText(recipe.out or "")
        self.overwrite.setChecked(bool(recipe.overwrite))
        self.reload.setChecked(bool(recipe.reload_check))
