"""The Subspaces panel driven with qtbot on a tiny model (offscreen): plots hold the core's numbers,
hover shows the sentence, bad input opens a dialog naming the control, Lens runs, cancels, undoes
and exports, data and plots are saved."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from conftest import make_tiny_model  # noqa: E402
from polyprune.gui.main_window import MainWindow  # noqa: E402
from polyprune.gui.panels.subspaces_panel import SubspacesPanel  # noqa: E402
from polyprune.models import LoadedModel  # noqa: E402
from polyprune.subspaces import LensConfig, SubspacesConfig, compute_subspaces, load_subspaces  # noqa: E402
from test_subspaces import LANGS, TEXTS, write_texts  # noqa: E402

#: 16 sentences per language (enough for two optimizer steps of Lens at accumulation 8)
MORE = {g: [f"{TEXTS[g][i % 5]} {i}" for i in range(16)] for g in LANGS}

LONG = 30000


@pytest.fixture
def win(qtbot, tmp_path, tokenizer):
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat), restore=False)
    qtbot.addWidget(w)
    panel = SubspacesPanel(w)
    w.tabs.addTab(panel, panel.title)
    w.tabs.setCurrentWidget(panel)
    w.subspaces = panel
    w.show()
    qtbot.waitExposed(w)
    w.state.set_model(LoadedModel(make_tiny_model("llama"), tokenizer, "tiny-llama", None, "cpu", "float32"))
    yield w
    w.runner.cancel_all()
    w.runner.wait(LONG)
    qtbot.waitUntil(lambda: not w.runner.active_jobs(), timeout=LONG)
    try:
        boxes = w.findChildren(QMessageBox)
    except RuntimeError:  # the window was already deleted
        boxes = []
    for box in boxes:
        box.close()


def idle(qtbot, w):
    qtbot.waitUntil(lambda: not w.runner.active_jobs(), timeout=LONG)


def setup(panel, source, langs=LANGS):
    panel.languages.set_codes(langs)
    panel.texts.setText(source)
    panel.samples.setValue(5)
    panel.seq_len.setValue(24)
    panel.batch.setValue(2)


def expect_dialog(qtbot, w, words):
    qtbot.waitUntil(lambda: any(words.lower() in p.lower() for p, _ in w.errors), timeout=LONG)
    for b in w.findChildren(QMessageBox):
        b.done(0)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model, ref):
    return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_plots_hold_the_core_numbers(qtbot, win, tmp_path):
    p = win.subspaces
    src = write_texts(tmp_path)
    setup(p, src)
    p.languages.picker.set_code("Swahili")
    p.languages.add_btn.click()  # already listed: not added twice
    assert p.languages.codes() == LANGS
    p.central.setCurrentIndex(p.central.findData("swh_Latn"))
    qtbot.mouseClick(p.measure_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: p.subspaces is not None, timeout=LONG)
    idle(qtbot, win)
    ref = compute_subspaces(win.state.loaded, SubspacesConfig(languages=LANGS, central="swh_Latn", texts=src,
                                                              samples=5, seq_len=24, batch_size=2))
    assert p.block.maximum() == ref.n_blocks and p.block.value() == ref.n_blocks
    for block in range(1, ref.n_blocks + 1):
        p.block.setValue(block)
        x, y = p.scatter.getData()
        np.testing.assert_allclose(np.stack([x, y], 1), ref.specific_coords[block - 1][:, :2], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(p.dist_img.image, ref.distances()[block - 1], rtol=1e-6, atol=1e-8)
        assert p.share_line.value() == block
    x, y = p.share_curve.getData()
    np.testing.assert_allclose(y, ref.specific_share(), rtol=1e-6)
    assert set(p.dir_curves) == {"eng_Latn", "hin_Deva"}
    np.testing.assert_allclose(p.dir_curves["hin_Deva"].getData()[1], ref.direction_sizes()[:, 2], rtol=1e-6)

    # hover over a point shows its sentence
    p.block.setValue(1)
    qtbot.wait(50)
    pts = p.block_points(0)
    vb = p.scatter_box.plot.getViewBox()
    scene_pos = vb.mapViewToScene(QPointF(float(pts[7, 0]), float(pts[7, 1])))
    p._on_hover((scene_pos,))
    assert p.scatter_box.caption.toolTip() == f"<b>Swahili</b> — {ref.sentences[7]}"
    assert ref.sentences[7] in p.scatter_box.caption.text()

    # data and plots saved; the file shows the same numbers when opened again
    out = p.save_to(tmp_path / "saved")
    names = {f.name for f in out.iterdir()}
    assert {"subspaces.npz", "blocks.csv", "distances.csv", "subspaces.json", "specific_share.png",
            "directions.png", "subspace_scatter_block1.png", "language_distances_block1.png"} <= names
    back = load_subspaces(out / "subspaces.npz")
    np.testing.assert_array_equal(back.means, p.subspaces.means)
    p.subspaces = None
    p.open_file(out / "subspaces.npz")
    np.testing.assert_allclose(p.share_curve.getData()[1], ref.specific_share(), rtol=1e-6)


def test_two_languages_use_the_agnostic_axis(qtbot, win, tmp_path):
    p = win.subspaces
    setup(p, write_texts(tmp_path), ["eng_Latn", "hin_Deva"])
    p.measure()
    qtbot.waitUntil(lambda: p.subspaces is not None, timeout=LONG)
    idle(qtbot, win)
    _, y = p.scatter.getData()
    np.testing.assert_allclose(y, p.subspaces.agnostic_coords[-1])


def test_bad_input_opens_a_dialog_and_starts_nothing(qtbot, win, tmp_path):
    p = win.subspaces
    setup(p, write_texts(tmp_path), ["eng_Latn"])
    assert p.measure() is None
    expect_dialog(qtbot, win, "at least two languages")
    setup(p, write_texts(tmp_path))
    p.samples.setValue(50)
    p.measure()
    expect_dialog(qtbot, win, "but 50 were asked for")
    assert p.subspaces is None
    p.samples.setValue(5)
    p.targets.set_codes([])
    assert p.run_lens() is None
    expect_dialog(qtbot, win, "at least one target")
    p.targets.set_codes(["swh_Latn"])
    p.top_blocks.setValue(7)
    assert p.run_lens() is None
    expect_dialog(qtbot, win, "Top blocks trained is 7")
    assert win.isEnabled()


def test_lens_runs_undoes_cancels_and_exports(qtbot, win, tmp_path):
    p = win.subspaces
    model = win.state.loaded.model
    setup(p, write_texts(tmp_path, MORE))
    p.targets.set_codes(["swh_Latn", "hin_Deva"])
    p.lens_samples.setValue(16)
    p.lr.setValue(0.01)
    before = weights(model)

    # cancel at once: the model is left as it was
    job = p.run_lens()
    assert job is not None
    win.cancel()
    idle(qtbot, win)
    assert p.lens_result is None and same(model, before)

    p.run_lens()
    qtbot.waitUntil(lambda: p.lens_result is not None, timeout=LONG)
    idle(qtbot, win)
    assert not same(model, before)
    assert p.lens_table.rowCount() == 2 and p.lens_table.item(0, 0).text() == "Swahili"
    assert float(p.lens_table.item(0, 1).text()) == pytest.approx(p.lens_result.before["swh_Latn"]["align_gap"], rel=1e-3)
    assert p.undo_btn.isEnabled() and p.export_btn.isEnabled()
    assert p.subspaces is p.lens_result.subspaces  # the subspaces Lens used are shown
    assert p.run_lens() is None
    expect_dialog(qtbot, win, "already applied")

    # the model is no variant now: the status says so and other panels' jobs are refused
    assert win.variant_label.text().endswith("+ Lens")
    assert win.run_job("Pruning", lambda progress: None) is None
    expect_dialog(qtbot, win, "holds Lens")

    p.export_to(tmp_path / "lens-model")
    idle(qtbot, win)
    card = (tmp_path / "lens-model" / "README.md").read_text(encoding="utf-8")
    assert "## Lens (language subspaces)" in card and "| lr | 0.01 |" in card

    qtbot.mouseClick(p.undo_btn, Qt.LeftButton)
    idle(qtbot, win)
    assert same(model, before) and p.lens_result is None and not p.undo_btn.isEnabled()
    assert "Lens" not in win.variant_label.text() and win.state.model_note is None


def test_recipe_round_trip(win):
    class R:
        pass

    p = win.subspaces
    p.languages.set_codes(["eng_Latn", "fra_Latn"])
    p.samples.setValue(42)
    p.targets.set_codes(["fra_Latn"])
    p.lr.setValue(2e-5)
    r = R()
    p.to_recipe(r)
    assert isinstance(r.subspaces, SubspacesConfig) and r.subspaces.samples == 42
    assert isinstance(r.lens, LensConfig) and r.lens.targets == ["fra_Latn"] and r.lens.lr == pytest.approx(2e-5)
    p.set_configs(SubspacesConfig(), LensConfig())
    assert p.samples.value() == 300
    p.apply_recipe(r)
    assert p.samples.value() == 42 and p.languages.codes() == ["eng_Latn", "fra_Latn"]
    assert p.targets.codes() == ["fra_Latn"]
