"""The Studies panel's Ray option (issue 15): the check box and address reach the Ray runner, and
an address that does not answer is reported as an error, nothing written.

The panel is built on a small stand-in for the main window (the window itself is being reworked);
``run_job`` runs the job at once and reports as the window does.
"""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("ray", reason="ray is not installed (pip install 'polyprune[cluster]')")

import yaml  # noqa: E402
from PySide6.QtCore import QObject, QSettings, Signal  # noqa: E402

from conftest import save_tiny  # noqa: E402
from test_study import small_flores  # noqa: E402
from polyprune.errors import PolypruneError  # noqa: E402
from polyprune.gui.panels.study_panel import StudyPanel  # noqa: E402
from polyprune.progress import Progress  # noqa: E402


class State(QObject):
    busy_changed = Signal(bool, str)
    model_loaded = Signal(object)
    loaded = None


class Ctx:
    """What the panel uses of the main window."""

    def __init__(self, settings):
        self.settings = settings
        self.errors, self.logs = [], []
        self.state = State()

    def log(self, message, level="info"):
        self.logs.append(message)

    def error(self, problem, fix=""):
        self.errors.append((problem, fix))

    def run_job(self, name, fn, on_finished=None, on_failed=None, on_cancelled=None):
        try:
            res = fn(Progress())
        except PolypruneError as e:
            self.error(e.problem, e.fix)
            if on_failed:
                on_failed(e)
            return "failed"
        if on_finished:
            on_finished(res)
        return "finished"


def test_ray_option_reaches_the_runner(qtbot, tmp_path):
    ctx = Ctx(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    sp = StudyPanel(ctx)
    qtbot.addWidget(sp)
    assert not sp.use_ray.isChecked() and not sp.ray_address.isEnabled()
    sp.use_ray.setChecked(True)
    assert sp.ray_address.isEnabled()
    sp.ray_address.setText("127.0.0.1:9")
    out = tmp_path / "study"
    sp.editor.setPlainText(yaml.safe_dump({
        "model": str(save_tiny(tmp_path, "llama")), "device": "cpu",
        "calibration": [{"kind": "monolingual", "lang": "eng_Latn"}],
        "calibration_defaults": {"samples": 4, "seq_len": 48, "shots": 2, "source": "builtin"},
        "methods": ["wanda"], "sparsities": [0.5],
        "evaluation": {"ppl": ["eng_Latn"], "data": str(small_flores(tmp_path)), "batch_size": 4}, "out": str(out)}))
    sp.update_plan()
    assert sp.run() == "failed"
    assert any("does not answer" in p for p, _ in ctx.errors)
    assert not (out / "results.jsonl").exists()
    assert ctx.settings.value("study/ray_address") == "127.0.0.1:9"
    sp2 = StudyPanel(ctx)  # the choice is remembered
    qtbot.addWidget(sp2)
    assert sp2.use_ray.isChecked() and sp2.ray_address.text() == "127.0.0.1:9"
