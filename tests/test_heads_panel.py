"""The Heads panel driven with qtbot on a tiny model (offscreen): what the plots hold is compared with
the core's numbers; removal proposal, export, saving, errors and cancel go through the panel."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402
from shiboken6 import Shiboken  # noqa: E402

from conftest import make_tokenizer, make_tiny_model  # noqa: E402
from test_heads import SENTENCES, write_texts  # noqa: E402
from polyprune.gui.main_window import MainWindow  # noqa: E402
from polyprune.gui.panels.heads_panel import HeadsPanel, head_map_image  # noqa: E402
from polyprune.heads import HeadsConfig, load_results, score_heads  # noqa: E402
from polyprune.heads.removal import propose_removal  # noqa: E402
from polyprune.models import LoadedModel  # noqa: E402

LONG = 60000


@pytest.fixture
def win(qtbot, tmp_path):
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat), restore=False)
    qtbot.addWidget(w)
    panel = HeadsPanel(w)
    w.tabs.addTab(panel, panel.title)
    w.heads_panel = panel
    w.show()
    yield w
    runner = w.runner  # kept: the window's C++ object is sometimes gone by now (see below)
    runner.cancel_all()
    runner.wait(LONG)
    qtbot.waitUntil(lambda: not runner.active_jobs(), timeout=LONG)
    # Run alone, this module's first window is at times deleted by Qt during teardown, after every
    # assertion (PySide6 6.11, a garbage collection at the right moment; not seen in the real window
    # or in the full suite). There is nothing left to close then.
    if Shiboken.isValid(w):
        for box in w.findChildren(QMessageBox):
            box.close()


def idle(qtbot, w):
    qtbot.waitUntil(lambda: not w.runner.active_jobs(), timeout=LONG)


def setup(w, tmp_path, **kw):
    loaded = LoadedModel(make_tiny_model("llama"), make_tokenizer(), "tiny-llama", None, "cpu", "float32")
    w.state.set_model(loaded)
    p = w.heads_panel
    cfg = HeadsConfig(languages=list(SENTENCES), texts=write_texts(tmp_path), split="dev", samples=3, seq_len=12,
                      top_share=0.25, cross=True, cross_split="dev", cross_samples=4, **kw)
    p.set_config(cfg)
    return loaded, p, cfg


def test_scores_plots_match_core(qtbot, win, tmp_path):
    loaded, p, cfg = setup(win, tmp_path)
    qtbot.mouseClick(p.score_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: p.result is not None, timeout=LONG)
    idle(qtbot, win)
    ref = score_heads(loaded, cfg)  # the core's numbers, computed again
    res = p.result
    np.testing.assert_allclose(res.scores.ablation, ref.scores.ablation, atol=1e-9)
    # heatmap: selected language and kind
    p.show_lang.setCurrentIndex(1)
    p.show_kind.setCurrentText("taylor")
    np.testing.assert_allclose(p.heat_img.image, ref.scores.taylor[1].astype(np.float32))
    # head map colours follow the classification
    np.testing.assert_array_equal(p.map_img.image, head_map_image(ref.classes.label))
    # scatter: (ablation, taylor) of every head and language
    x, y = p.scatter.getData()
    np.testing.assert_allclose(np.sort(x), np.sort(ref.scores.ablation.ravel()), atol=1e-6)
    np.testing.assert_allclose(np.sort(y), np.sort(ref.scores.taylor.ravel()), atol=1e-6)
    # cross-effect matrix: rows measured language, columns removed language; intervals in the cells
    np.testing.assert_allclose(p.cross_img.image, ref.cross.delta.T.astype(np.float32), atol=1e-6)
    assert len(p.cross_texts) == 9
    assert any("[" in t.textItem.toPlainText() for t in p.cross_texts)
    a_txt = p.cross_texts[0].textItem.toPlainText()  # removed language 0, measured language 0
    assert a_txt.startswith(f"{ref.cross.delta[0, 0]:+.3f}") or a_txt == "no heads"
    # save: CSV, npz, settings and four PNGs; the folder opens again
    out = p.save_to(tmp_path / "saved")
    for name in ("head_scores.csv", "head_scores.npz", "head_settings.json", "classification.csv", "cross_effects.csv",
                 "head_scores.png", "head_languages.png", "ablation_vs_taylor.png", "cross_effects.png"):
        assert (out / name).exists(), name
    p.result = None
    p.open_folder(out)
    np.testing.assert_allclose(p.result.scores.taylor, ref.scores.taylor)
    assert np.allclose(load_results(out).cross.delta, ref.cross.delta)


def test_propose_and_export(qtbot, win, tmp_path):
    loaded, p, cfg = setup(win, tmp_path)
    p.k_ablation.setChecked(False)
    p.cross.setChecked(False)
    qtbot.mouseClick(p.score_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: p.result is not None, timeout=LONG)
    idle(qtbot, win)
    p.keep.set_codes(["eng_Latn", "fra_Latn"])
    p.k_taylor.setChecked(True)
    p.drop.set_codes(["zho_Hans"])
    qtbot.mouseClick(p.propose_btn, Qt.LeftButton)
    plan = propose_removal(p.result.scores, ["eng_Latn", "fra_Latn"], ["zho_Hans"], 0.25, "taylor")
    assert p.plan.heads == plan.heads
    assert "heads</b>" in p.proposal.text() and p.effects.rowCount() == 3
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    p.export_to(tmp_path / "exp")
    qtbot.waitUntil(lambda: hasattr(p, "last_removal"), timeout=LONG)
    idle(qtbot, win)
    assert json.loads((tmp_path / "exp" / "removed_heads.json").read_text()) == {str(b): h for b, h in plan.heads.items()}
    assert p.effects.rowCount() == 3 and p.effects.item(0, 3).text().startswith(("+", "-"))
    assert all((before[k] == v).all() for k, v in loaded.model.state_dict().items())
    # hard cut of a set that no stock checkpoint holds: the proposal says so and names the nearest set
    p.heads_edit.setText("0:1")
    p.cut.setCurrentIndex(1)
    qtbot.mouseClick(p.propose_btn, Qt.LeftButton)
    assert "Hard cut not possible" in p.proposal.text() and "Nearest set" in p.proposal.text()


def test_errors_name_the_control(qtbot, win, tmp_path):
    _, p, _ = setup(win, tmp_path)
    p.samples.setValue(50)
    qtbot.mouseClick(p.score_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: bool(win.errors), timeout=LONG)
    idle(qtbot, win)
    assert "but 50 were asked for" in win.errors[-1][0]
    assert p.result is None
    p.k_ablation.setChecked(False)
    p.k_taylor.setChecked(False)
    qtbot.mouseClick(p.score_btn, Qt.LeftButton)
    assert win.errors[-1] == ("No score is chosen", "tick ablation, taylor or both")
    p.k_taylor.setChecked(True)
    p.drop.set_codes(["zho_Hans"])
    qtbot.mouseClick(p.propose_btn, Qt.LeftButton)
    assert "no head scores" in win.errors[-1][0]


def test_cancel_leaves_model_unchanged(qtbot, win, tmp_path):
    loaded, p, _ = setup(win, tmp_path)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    p.samples.setValue(4)
    job = p.score()
    qtbot.waitUntil(lambda: p.cancel_btn.isEnabled(), timeout=LONG)
    qtbot.mouseClick(p.cancel_btn, Qt.LeftButton)
    assert job.cancel_requested
    idle(qtbot, win)
    assert p.result is None
    assert all((before[k] == v).all() for k, v in loaded.model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in loaded.model.modules())
    assert all(prm.requires_grad for prm in loaded.model.parameters())


def test_recipe_round_trip(win, tmp_path):
    _, p, cfg = setup(win, tmp_path)

    from polyprune.recipe import Recipe
    r = Recipe()
    p.to_recipe(r)
    assert r.heads["languages"] == cfg.languages and r.heads["cross"] is True
    r.heads["samples"] = 7
    p.apply_recipe(r)
    assert p.samples.value() == 7
