"""Model panel: open a folder, a .gguf file, a hub id or the demo model; show what was loaded."""
from __future__ import annotations

import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget)

from polyprune.models import DEMO_NAME, DEMO_SPEC, DTYPES, load_model
from polyprune.recipe import Recipe

from ..widgets import GLOSSARY, fmt_count, group, heading, help_label, primary

MAX_RECENT = 8


def available_devices() -> list[str]:
    """``cpu`` plus ``cuda`` / ``mps`` when present."""
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    return devs


class ModelPanel(QWidget):
    """Choose and load a model in the background; show its architecture and size."""

    title = "Model"

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        state = ctx.state

        self.spec = QLineEdit()
        self.spec.setPlaceholderText("demo, a model folder, a .gguf file, or a hub id such as facebook/xglm-564M")
        self.spec.setToolTip("What to load: 'demo' for the built-in demo model, a folder with config.json, "
                             "a .gguf file, or a Hugging Face hub id (needs network or a local hub cache)")
        self.spec.returnPressed.connect(self.load_clicked)
        self.btn_folder = QPushButton("Folder…")
        self.btn_folder.setToolTip("Open a Hugging Face model folder (with config.json and weights) (Ctrl+O)")
        self.btn_folder.clicked.connect(self.browse_folder)
        self.btn_gguf = QPushButton(".gguf file…")
        self.btn_gguf.setToolTip("Open a single-file GGUF model; it is converted once and cached")
        self.btn_gguf.clicked.connect(self.browse_gguf)
        self.btn_demo = QPushButton("Demo model")
        self.btn_demo.setToolTip(f"Load {DEMO_NAME} with one click (Ctrl+D); the first load converts it (about a minute), "
                                 "later loads take seconds")
        self.btn_demo.clicked.connect(self.load_demo)
        self.btn_load = primary(QPushButton("Load"))
        self.btn_load.setToolTip("Load the model named on the left in the background")
        self.btn_load.clicked.connect(self.load_clicked)

        row = QHBoxLayout()
        row.addWidget(self.spec, 1)
        row.addWidget(self.btn_folder)
        row.addWidget(self.btn_gguf)
        row.addWidget(self.btn_demo)
        row.addWidget(self.btn_load)

        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.device.setToolTip("Where the model runs: cpu, or a GPU (cuda / mps) when one is present")
        self.dtype = QComboBox()
        self.dtype.addItems(list(DTYPES))
        self.dtype.setToolTip("Number precision of the weights: float32 is exact; bfloat16/float16 halve the memory")
        self.trust = QCheckBox("Allow model code from the checkpoint (trust_remote_code)")
        self.trust.setToolTip(GLOSSARY["trust_remote_code"])
        opts = QFormLayout()
        opts.addRow("Device", self.device)
        opts.addRow("Precision", self.dtype)

        source = QVBoxLayout()
        source.addLayout(row)
        source.addLayout(opts)
        source.addWidget(self.trust)
        source.addWidget(help_label("Off by default. " + GLOSSARY["trust_remote_code"]))

        self.recent = QListWidget()
        self.recent.setToolTip("Models you loaded before; double-click to load one again")
        self.recent.itemActivated.connect(lambda item: self.load(item.data(Qt.UserRole)))
        self.recent.setMinimumHeight(60)
        self.recent.setMaximumHeight(110)
        rec_lay = QVBoxLayout()
        rec_lay.addWidget(self.recent)
        rec_lay.addWidget(help_label("Double-click a model to load it again."))

        self.info_labels: dict[str, QLabel] = {}
        info = QFormLayout()
        info.setLabelAlignment(Qt.AlignRight)
        for key, label in [("name", "Model"), ("architecture", "Architecture"), ("n_blocks", "Decoder blocks"),
                           ("hidden_size", "Hidden size"), ("parameters", "Parameters"),
                           ("prunable_parameters", "Prunable parameters"), ("prunable_modules", "Prunable layers"),
                           ("dtype", "Precision"), ("device", "Device"), ("path", "Loaded from"),
                           ("state", "State")]:
            lab = QLabel("–")
            lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
            lab.setWordWrap(True)
            self.info_labels[key] = lab
            info.addRow(f"{label}:", lab)
        self.info_labels["prunable_parameters"].setToolTip(
            "Weights inside the decoder blocks' linear layers; embeddings, norms and the output head are never pruned")

        steps = help_label(
            "<ol style='margin-left:-20px'>"
            "<li><b>Model</b> — load the demo model (Ctrl+D) or your own (Ctrl+O).</li>"
            "<li><b>Demonstrations</b> — pick the languages of the translation examples (Ctrl+B builds them).</li>"
            "<li><b>Features</b> — see which hidden dimensions light up (Ctrl+M).</li>"
            "<li><b>Pruning</b> — choose a sparsity and prune (Ctrl+R); every pruning is kept as a variant you "
            "can name, compare, export or delete; Esc cancels and changes nothing.</li>"
            "<li><b>Evaluation</b> — compare dense and pruned variants per language, with 95 % intervals and a "
            "verdict per result (Ctrl+E); try them side by side on a prompt.</li>"
            "<li><b>Export</b> — save a variant with its model card (Ctrl+Shift+E).</li></ol>"
            "Further: <b>Studies</b> compare calibration languages and methods on one model; <b>Heads</b> finds "
            "the attention heads of each language and removes those of languages you do not need; "
            "<b>Subspaces</b> shows where the model keeps its languages, and Lens pulls a weak language towards "
            "a strong one; <b>Slim</b> makes a smaller checkpoint for the languages you keep.<br><br>"
            "File → Save recipe (Ctrl+S) stores every setting; <code>polyprune run recipe.yaml</code> replays "
            "the session without the window. Hover over any control for an explanation; F1 opens the glossary.")
        steps_lay = QVBoxLayout()
        steps_lay.addWidget(steps)
        steps_lay.addStretch(1)

        grid = QGridLayout()
        grid.addWidget(group("Open a model", source), 0, 0)
        grid.addWidget(group("Recent models", rec_lay), 1, 0)
        grid.addWidget(group("Workflow", steps_lay), 2, 0)
        grid.addWidget(group("Loaded model", info), 0, 1, 3, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        grid.setRowStretch(2, 1)

        lay = QVBoxLayout(self)
        lay.addWidget(heading("1 · Model"))
        lay.addWidget(help_label(
            "Pick a causal language model to prune. The demo model (Gemma 3 270M) needs no download. "
            "Loading runs in the background; the window stays usable and Esc cancels."))
        lay.addLayout(grid, 1)

        self._load_recent()
        state.model_loaded.connect(self.show_model)
        state.active_changed.connect(lambda _: self._show_state())
        state.busy_changed.connect(self.set_busy)

    # --- actions ------------------------------------------------------------------------
    def browse_folder(self) -> None:
        """Ask for a model folder and load it (Ctrl+O)."""
        path = QFileDialog.getExistingDirectory(self, "Open a model folder (with config.json)")
        if path:
            self.spec.setText(path)
            self.load(path)

    def browse_gguf(self) -> None:
        """Ask for a .gguf file and load it."""
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", "", "GGUF models (*.gguf);;All files (*)")
        if path:
            self.spec.setText(path)
            self.load(path)

    def load_demo(self) -> None:
        """Load the demo model (Ctrl+D)."""
        self.spec.setText(DEMO_SPEC)
        self.load(DEMO_SPEC)

    def load_clicked(self) -> None:
        """Load what the model field names."""
        self.load(self.spec.text())

    def load(self, spec: str | None):
        """Load ``spec`` in a background job; returns the job (``None`` if refused or invalid)."""
        spec = (spec or "").strip()
        if not spec:
            self.ctx.error("No model was given",
                           "type a model folder, a .gguf file or a hub id, or click Demo model")
            return None
        self.spec.setText(spec)
        device, dtype, trust = self.device.currentText(), self.dtype.currentText(), self.trust.isChecked()

        def job(progress):
            return load_model(spec, device=device, dtype=dtype, trust_remote_code=trust, progress=progress)

        def done(loaded):
            self.ctx.state.set_model(loaded)
            self.remember(spec)
            info = loaded.info()
            self.ctx.log(f"Loaded {loaded.meta.get('name', spec)}: {info['architecture']}, {info['n_blocks']} blocks, "
                         f"hidden size {info['hidden_size']}, {info['parameters'] / 1e6:.1f} M parameters "
                         f"({info['prunable_parameters'] / 1e6:.1f} M prunable)")

        return self.ctx.run_job(f"Loading {spec}", job, on_finished=done, while_modified=True)

    # --- recent models --------------------------------------------------------------------
    def recent_models(self) -> list[str]:
        """Model specs loaded before, newest first."""
        val = self.ctx.settings.value("recent_models", [])
        if isinstance(val, str):
            val = [val]
        return [v for v in (val or []) if v]

    def remember(self, spec: str) -> None:
        """Put ``spec`` at the top of the recent models."""
        items = [spec] + [s for s in self.recent_models() if s != spec]
        self.ctx.settings.setValue("recent_models", items[:MAX_RECENT])
        self._load_recent()

    def _load_recent(self) -> None:
        self.recent.clear()
        for spec in self.recent_models():
            item = QListWidgetItem(DEMO_NAME if spec == DEMO_SPEC else spec)
            item.setData(Qt.UserRole, spec)
            item.setToolTip(spec)
            self.recent.addItem(item)

    # --- view ---------------------------------------------------------------------------
    def show_model(self, loaded) -> None:
        """Show the loaded model's facts."""
        if loaded is None:
            for lab in self.info_labels.values():
                lab.setText("–")
            return
        info = self.ctx.state.info or loaded.info()
        vals = {
            "name": loaded.meta.get("name", loaded.spec),
            "architecture": f"{info['architecture']} ({info.get('model_type') or '?'})",
            "n_blocks": str(info["n_blocks"]),
            "hidden_size": str(info["hidden_size"]),
            "parameters": fmt_count(info["parameters"]),
            "prunable_parameters": f"{fmt_count(info['prunable_parameters'])} — "
                                   f"{100 * info['prunable_parameters'] / max(info['parameters'], 1):.0f} % of all",
            "prunable_modules": f"{info['prunable_modules']} linear layers in {info['blocks_path']}",
            "dtype": info["dtype"],
            "device": info["device"],
            "path": info.get("path") or loaded.spec,
        }
        for k, v in vals.items():
            self.info_labels[k].setText(v)
        self._show_state()

    def _show_state(self) -> None:
        st = self.ctx.state
        if st.loaded is None:
            self.info_labels["state"].setText("–")
        elif st.prune_result is not None:
            self.info_labels["state"].setText(f"pruned: holds the variant “{st.active.name}” "
                                              f"({st.active.describe()})")
        else:
            n = len(st.variants) - 1
            self.info_labels["state"].setText("dense (not pruned)" + (f"; {n} pruned variant{'s' if n != 1 else ''} "
                                                                      "kept in the Pruning panel" if n else ""))

    def set_busy(self, busy: bool, name: str = "") -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        for w in (self.btn_folder, self.btn_gguf, self.btn_demo, self.btn_load, self.recent):
            w.setEnabled(not busy)

    # --- recipe -------------------------------------------------------------------------
    def to_recipe(self, recipe: Recipe) -> None:
        """Write this panel's settings into ``recipe``."""
        loaded = self.ctx.state.loaded
        recipe.model = loaded.spec if loaded is not None else (self.spec.text().strip() or DEMO_SPEC)
        recipe.device = self.device.currentText()
        recipe.dtype = self.dtype.currentText()
        recipe.trust_remote_code = self.trust.isChecked()

    def apply_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s settings in this panel."""
        self.spec.setText(recipe.model or "")
        i = self.device.findText(recipe.device.split(":")[0])
        if i >= 0:
            self.device.setCurrentIndex(i)
        i = self.dtype.findText(recipe.dtype)
        if i >= 0:
            self.dtype.setCurrentIndex(i)
        self.trust.setChecked(bool(recipe.trust_remote_code))
