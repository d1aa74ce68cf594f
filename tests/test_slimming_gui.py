"""The Slim panel driven with qtbot on a tiny model: the table and plots show the core's numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from polyprune.gui.main_window import MainWindow  # noqa: E402
from polyprune.gui.panels.slim_panel import SlimPanel  # noqa: E402
from polyprune.models import load_model  # noqa: E402
from polyprune.slimming.config import SlimConfig  # noqa: E402
from polyprune.slimming.run import project, tradeoff  # noqa: E402
from slim_helpers import save_lm, spm_bpe, tiny_lm  # noqa: E402

LONG = 60000


@pytest.fixture
def setup(qtbot, tmp_path):
    tok = spm_bpe()
    path = save_lm(tmp_path / "src", tiny_lm("gemma3", len(tok)), tok)
    win = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat), restore=False)
    qtbot.addWidget(win)
    panel = SlimPanel(win)
    win.tabs.addTab(panel, panel.title)
    loaded = load_model(str(path))
    win.state.set_model(loaded)
    yield win, panel, loaded
    qtbot.waitUntil(lambda: not win.runner.active_jobs(), timeout=LONG)


def _idle(qtbot, win):
    qtbot.waitUntil(lambda: not win.runner.active_jobs(), timeout=LONG)


def test_projection_shows_core_numbers(qtbot, setup, tmp_path):
    win, panel, loaded = setup
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat on the mat.\nLe café est bon.\n" * 5)
    panel.corpus.setText(f"file:{corpus}")
    panel.blocks.setValue(1)
    qtbot.mouseClick(panel.btn_project, Qt.LeftButton)
    _idle(qtbot, win)
    assert panel.projection is not None, win.errors
    core = project(loaded, SlimConfig(keep=["eng_Latn", "swh_Latn"], corpus=f"file:{corpus}", remove_blocks=1))
    shown = [[panel.sizes.item(i, j).text() for j in range(3)] for i in range(panel.sizes.rowCount())]
    assert shown == [[r["part"], f"{r['params_before']:,}", f"{r['params_after']:,}"] for r in core.sizes]
    bars = [it for it in panel.size_plot.plot.items if hasattr(it, "opts") and "height" in it.opts]
    after = [r["params_after"] / 1e6 for r in core.sizes if r["part"] != "total"]
    assert np.allclose(bars[1].opts["height"], after)
    infl = [it for it in panel.influence_plot.plot.items if hasattr(it, "opts") and "height" in it.opts][0]
    assert np.allclose(infl.opts["height"], core.plan.influence)


def test_slim_and_curve(qtbot, setup, tmp_path, data_dir):
    win, panel, loaded = setup
    panel.sentences.setValue(3)
    panel.speed.setChecked(False)
    panel.out.setText(str(tmp_path / "out"))
    import os
    os.environ["POLYPRUNE_DATA"] = str(data_dir)
    qtbot.mouseClick(panel.btn_slim, Qt.LeftButton)
    _idle(qtbot, win)
    assert panel.result is not None, win.errors
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    q = report["quality"][0]
    assert panel.quality.item(0, 0).text() == q["language"]
    assert panel.quality.item(0, 4).text() == f"{q['change_pct']:+.2f} %"
    panel.vocab.setCurrentText("script")
    qtbot.mouseClick(panel.btn_curve, Qt.LeftButton)
    _idle(qtbot, win)
    assert panel.curve_rows, win.errors
    core = tradeoff(loaded, SlimConfig(keep=["eng_Latn", "swh_Latn"], eval_sentences=3))
    assert [(r["vocab"], r["size"], r["language"]) for r in panel.curve_rows] == \
        [(r["vocab"], r["size"], r["language"]) for r in core]
    assert np.allclose([r["change_pct"] for r in panel.curve_rows], [r["change_pct"] for r in core])


def test_bad_input_opens_dialog(qtbot, setup, tmp_path):
    win, panel, _ = setup
    panel.langs.clear()
    qtbot.mouseClick(panel.btn_project, Qt.LeftButton)
    assert any("No languages to keep" in p for p, _ in win.errors)
    panel.add_language("eng_Latn")
    qtbot.mouseClick(panel.btn_slim, Qt.LeftButton)
    assert any("No output folder" in p for p, _ in win.errors)
    panel.vocab.setCurrentText("size")
    panel.vocab_size.setValue(3)
    panel.out.setText(str(tmp_path / "o"))
    qtbot.mouseClick(panel.btn_slim, Qt.LeftButton)
    _idle(qtbot, win)
    qtbot.waitUntil(lambda: any("smaller than the" in p for p, _ in win.errors), timeout=LONG)
    assert not (tmp_path / "o").exists()
    assert panel.btn_slim.isEnabled()


def test_recipe_round_trip(setup):
    win, panel, _ = setup

    class R:
        slim = None

    panel.blocks.setValue(1)
    panel.gguf.setCurrentText("Q8_0")
    r = R()
    panel.to_recipe(r)
    panel.blocks.setValue(0)
    panel.apply_recipe(r)
    assert panel.blocks.value() == 1 and panel.gguf.currentText() == "Q8_0"
