"""The desktop application driven with qtbot on a tiny model (offscreen).

The whole workflow goes through the panels' own buttons: load, demonstrations, features, prune,
evaluate, export. What the plots and tables show is compared with the core's numbers, cancel in the
middle of pruning must restore every weight, bad input must open a dialog and leave the window
usable, a second job is refused while one runs, and closing during a job cancels, waits, then closes.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from dataclasses import replace

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

import pyqtgraph as pg  # noqa: E402

from conftest import save_tiny, shared_data_dir  # noqa: E402
from polyprune.calibration import build  # noqa: E402
from polyprune.evaluation import compare  # noqa: E402
from polyprune.features import feature_magnitudes, overlap, token_contexts, top_k  # noqa: E402
from polyprune.gui.main_window import MainWindow  # noqa: E402
from polyprune.pipeline import evaluate  # noqa: E402
from polyprune.pruning import wanda as core_wanda  # noqa: E402
from polyprune.recipe import DEFAULT_TEMPLATE, demos_spec, load_recipe  # noqa: E402

LONG = 30000


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("gui-model"), "llama")


def save_tiny_long(tmp_path: Path) -> Path:
    """The tiny Llama with a 4096-token context (rotary positions), so that real XNLI documents, which
    a byte tokenizer makes a few hundred tokens long, fit as they do in real models."""
    path = save_tiny(tmp_path, "llama")
    cfg = json.loads((path / "config.json").read_text())
    cfg["max_position_embeddings"] = 4096
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_long_path(tmp_path_factory) -> Path:
    return save_tiny_long(tmp_path_factory.mktemp("gui-model-long"))


def _make_window(qtbot, tmp_path, name="settings.ini") -> MainWindow:
    settings = QSettings(str(tmp_path / name), QSettings.IniFormat)
    win = MainWindow(settings=settings, restore=True)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


@pytest.fixture
def win(qtbot, tmp_path):
    w = _make_window(qtbot, tmp_path)
    yield w
    w.runner.cancel_all()
    w.runner.wait(LONG)
    qtbot.waitUntil(lambda: not w.runner.active_jobs(), timeout=LONG)
    for box in w.findChildren(QMessageBox):
        box.close()


def idle(qtbot, w: MainWindow, timeout=LONG) -> None:
    """Wait until no job thread runs (model jobs and previews), then let deferred redraws run."""
    qtbot.waitUntil(lambda: not w.runner.active_jobs(), timeout=timeout)
    qtbot.wait(20)


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def load_tiny(qtbot, w: MainWindow, path: Path) -> None:
    w.model_panel.spec.setText(str(path))
    click(qtbot, w.model_panel.btn_load)
    qtbot.waitUntil(lambda: w.state.loaded is not None, timeout=LONG)
    idle(qtbot, w)


def small_demos(w: MainWindow, **kw) -> None:
    w.demos_panel.set_values(**({"source": "builtin", "src": "eng_Latn", "tgt": "fra_Latn", "shots": 2,
                                 "samples": 4, "seq_len": 64} | kw))


def visible_boxes(w: MainWindow) -> list[QMessageBox]:
    return [b for b in w.findChildren(QMessageBox) if b.isVisible()]


def expect_dialog(qtbot, w: MainWindow, words: str) -> None:
    """A dialog naming the problem opened (and is closed again); the window stays usable."""
    qtbot.waitUntil(lambda: any(words.lower() in p.lower() for p, _ in w.errors), timeout=LONG)
    problem, fix = next((p, f) for p, f in reversed(w.errors) if words.lower() in p.lower())
    assert fix, f"no fix given for {problem!r}"
    boxes = visible_boxes(w)
    assert any(words.lower() in b.text().lower() for b in boxes)
    for b in boxes:
        b.done(0)
    assert w.isEnabled()


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, ref: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    for k, v in ref.items():
        assert torch.equal(now[k], v), f"{k} changed"


# ------------------------------------------------------------------------------------------
# the whole workflow
# ------------------------------------------------------------------------------------------
def test_workflow_plots_equal_core_numbers(qtbot, win, tiny_path, tmp_path):
    w = win
    load_tiny(qtbot, w, tiny_path)
    info = w.state.loaded.info()
    assert w.model_panel.info_labels["n_blocks"].text() == str(info["n_blocks"])
    assert w.model_panel.info_labels["hidden_size"].text() == str(info["hidden_size"])
    assert "cpu" in w.device_label.text() and "float32" in w.dtype_label.text()
    assert w.model_panel.recent.count() == 1

    # demonstrations: preview with token counts and a truncation warning
    small_demos(w, seq_len=32)
    w.demos_panel.refresh_preview()
    idle(qtbot, w)
    assert "tokens" in w.demos_panel.preview.toPlainText()
    assert not w.demos_panel.warning.isHidden() and "cut" in w.demos_panel.warning.text()
    small_demos(w)
    click(qtbot, w.demos_panel.build_btn)
    qtbot.waitUntil(lambda: w.state.calibration is not None, timeout=LONG)
    idle(qtbot, w)
    cfg, _ = w.demos_panel.config()
    model, tok = w.state.loaded.model, w.state.loaded.tokenizer
    cal = build(demos_spec(cfg), tok)
    assert torch.equal(w.state.calibration.input_ids, cal.input_ids)

    # features: heatmap = log10 of the core's magnitudes
    click(qtbot, w.features_panel.measure_btn)
    qtbot.waitUntil(lambda: w.state.features is not None, timeout=LONG)
    idle(qtbot, w)
    fp = w.features_panel
    ref = feature_magnitudes(model, cal, batch_size=8)
    np.testing.assert_allclose(w.state.features.magnitudes, ref.magnitudes, rtol=1e-5)
    np.testing.assert_allclose(fp.heatmap.image, np.log10(ref.magnitudes), rtol=1e-5)
    assert fp.heatmap.image.shape == (info["n_blocks"] + 1, info["hidden_size"])
    dims, heights = fp.topk_data()
    layer = fp.layer.value()
    np.testing.assert_array_equal(dims, top_k(ref.magnitudes, fp.k.value())[layer])
    np.testing.assert_allclose(heights, ref.magnitudes[layer, dims], rtol=1e-5)
    # hover and click on a heatmap cell
    vb = fp.heat_box.plot.getViewBox()
    scene_pos = vb.mapViewToScene(QPointF(5.5, 1.5))
    fp._on_hover((scene_pos,))
    assert fp.hover.text().startswith("after block 0 · dimension 5 ·")  # row 1: the output of block 0
    assert f"{ref.magnitudes[1, 5]:.4g}" in fp.hover.text()

    class Click:
        def scenePos(self):
            return scene_pos
    fp._on_click(Click())
    assert fp.selected == (1, 5)
    expected = token_contexts(w.state.features, w.state.features_calibration, tok, 1, 5)
    assert fp.last_contexts == expected and expected
    assert expected[0]["token"].strip() in fp.tokens.toPlainText()
    # compare with monolingual prompts: overlap per layer = the core's
    click(qtbot, fp.compare_btn)
    qtbot.waitUntil(lambda: w.state.comparison is not None, timeout=LONG)
    idle(qtbot, w)
    mono = feature_magnitudes(model, build(demos_spec(replace(cfg, monolingual=True)), tok), batch_size=8)
    np.testing.assert_allclose(w.state.comparison.overlap, overlap(ref.magnitudes, mono.magnitudes, ratio=0.4))
    np.testing.assert_allclose(fp.ov_bars.opts["height"], w.state.comparison.overlap)
    files = fp.save_data(tmp_path / "feat.csv")
    assert all(Path(f).exists() for f in files)
    assert fp.heat_box.save_to(tmp_path / "heat.png").stat().st_size > 1000
    assert fp.heat_box.save_to(tmp_path / "heat.svg").read_text().lstrip().startswith("<?xml")

    # pruning: the sparsity plot = PruneResult.block_sparsity; revert is bit-identical
    dense = weights(model)
    pp = w.pruning_panel
    pp.sparsity.setValue(0.5)
    click(qtbot, pp.prune_btn)
    qtbot.waitUntil(lambda: w.state.prune_result is not None, timeout=LONG)
    idle(qtbot, w)
    res = w.state.prune_result
    np.testing.assert_allclose(pp.sparsity_data(), res.block_sparsity)
    assert res.overall == pytest.approx(0.5, abs=0.01)
    assert pp.revert_btn.isEnabled()
    assert "pruned" in w.model_panel.info_labels["state"].text()
    pruned_weights = weights(model)

    # evaluation: the table = compare(dense records, pruned records) = the core's numbers
    data = shared_data_dir()
    if data is not None and (data / "flores200").is_dir() and (data / "xnli").is_dir():
        ep = w.evaluation_panel
        ep.data.setText(str(data))
        ep.set_checked(["eng_Latn", "fra_Latn"], ["en"])
        ep.limit.setValue(3)
        click(qtbot, ep.eval_btn)
        qtbot.waitUntil(lambda: bool(w.state.variant_results()), timeout=LONG)
        idle(qtbot, w)
        dense_res, pruned_res = w.state.dense_results(), w.state.variant_results()
        assert len(dense_res) == len(pruned_res) == 2 + 2  # perplexity in 2 languages, XNLI acc and acc_norm
        rows = ep.table_values()
        keys = ("task", "language", "metric", "dense", "pruned", "delta")
        want = [{k: r[k] for k in keys} for r in compare(dense_res, pruned_res)]
        assert [{k: r[k] for k in keys} for r in rows] == want
        direct = evaluate(w.state.loaded, ep.config())  # on the (still pruned) model
        assert [r.value for r in direct] == pytest.approx([r.value for r in pruned_res])
        assert_same_weights(model, pruned_weights)  # dense evaluation put the masks back
        heights = [it.opts["height"] for it in ep.ppl_box.plot.items if isinstance(it, pg.BarGraphItem)]
        np.testing.assert_allclose(heights[0], [r.value for r in dense_res if r.metric == "perplexity"])
        np.testing.assert_allclose(heights[1], [r.value for r in pruned_res if r.metric == "perplexity"])
        assert ep.save_csv(tmp_path / "eval.csv").read_text().count("\n") == 1 + len(rows)
    else:  # pragma: no cover - depends on the machine
        print("evaluation part skipped: no ../shared/data with flores200/ and xnli/ (set POLYPRUNE_DATA)")

    # export in the background with the reload check
    xp = w.export_panel
    out = tmp_path / "export" / "pruned"
    xp.target.setText(str(out))
    w.tabs.setCurrentWidget(xp)  # the model card is rendered when the panel is shown
    assert "## Pruning" in xp.card_src.toPlainText() and "wanda" in xp.card_src.toPlainText()
    click(qtbot, xp.export_btn)
    qtbot.waitUntil(lambda: w.state.export_path is not None, timeout=LONG)
    idle(qtbot, w)
    for name in ("config.json", "README.md", "pruning_config.json", "recipe.yaml", "report.json",
                 "masks.safetensors"):
        assert (out / name).exists(), name
    assert w.state.export_report["export"]["reload_max_abs_logit_diff"] == 0.0
    assert "identical" in xp.result.text()
    rec = load_recipe(out / "recipe.yaml")
    assert rec.pruning.sparsity == 0.5 and rec.demos.samples == 4 and rec.model == str(tiny_path)

    # revert to dense without reloading: every weight back, bit for bit
    click(qtbot, pp.revert_btn)
    qtbot.waitUntil(lambda: w.state.prune_result is None, timeout=LONG)
    idle(qtbot, w)
    assert_same_weights(model, dense)
    assert len(pp.sparsity_data()) == 0 and not pp.revert_btn.isEnabled()


# ------------------------------------------------------------------------------------------
# cancel, refusal, closing
# ------------------------------------------------------------------------------------------
class Gate:
    """Holds pruning after its first pruned layer until released (makes cancel deterministic)."""

    def __init__(self, monkeypatch):
        self.reached = threading.Event()
        self.release = threading.Event()
        original = core_wanda.apply_mask

        def gated(module, mask):
            rec = original(module, mask)
            self.reached.set()
            self.release.wait(20)
            return rec

        monkeypatch.setattr(core_wanda, "apply_mask", gated)


def test_cancel_mid_prune_restores_every_weight_and_second_job_is_refused(qtbot, win, tiny_path, monkeypatch):
    w = win
    load_tiny(qtbot, w, tiny_path)
    small_demos(w)
    idle(qtbot, w)
    model = w.state.loaded.model
    before = weights(model)
    gate = Gate(monkeypatch)
    click(qtbot, w.pruning_panel.prune_btn)
    qtbot.waitUntil(gate.reached.is_set, timeout=LONG)
    # busy: the controls say so
    assert w.state.busy and "Pruning" in w.busy_label.text()
    assert not w.pruning_panel.prune_btn.isEnabled() and w.pruning_panel.cancel_btn.isEnabled()
    assert not w.features_panel.measure_btn.isEnabled()
    # a second model job is refused with a message (through the shortcut's action)
    w.actions_by_name["features"].setEnabled(True)
    w.actions_by_name["features"].trigger()
    expect_dialog(qtbot, w, "A job is running: Pruning")
    # some weights are zero right now; cancel (Esc), then let the job reach its next check
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    click(qtbot, w.pruning_panel.cancel_btn)
    gate.release.set()
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    idle(qtbot, w)
    assert w.state.prune_result is None
    assert_same_weights(model, before)
    assert "Cancelled" in w.pruning_panel.progress_label.text()
    assert "cancelled" in w.log_view.toPlainText()
    # the window still works: prune for real
    monkeypatch.undo()
    click(qtbot, w.pruning_panel.prune_btn)
    qtbot.waitUntil(lambda: w.state.prune_result is not None, timeout=LONG)
    idle(qtbot, w)


def test_closing_during_a_job_cancels_waits_then_closes(qtbot, tmp_path, tiny_path, monkeypatch):
    w = _make_window(qtbot, tmp_path)
    load_tiny(qtbot, w, tiny_path)
    small_demos(w)
    idle(qtbot, w)
    model = w.state.loaded.model
    before = weights(model)
    gate = Gate(monkeypatch)
    w.pruning_panel.prune()
    qtbot.waitUntil(gate.reached.is_set, timeout=LONG)
    w.close()
    assert w.isVisible()  # not yet: the job is cancelled first
    assert w.runner.current.cancel_requested
    gate.release.set()
    qtbot.waitUntil(lambda: not w.isVisible(), timeout=LONG)
    assert not w.runner.active_jobs()
    assert_same_weights(model, before)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_bad_input_opens_dialogs_and_the_window_keeps_working(qtbot, win, tiny_path, tmp_path):
    w = win
    # nothing loaded yet
    click(qtbot, w.features_panel.measure_btn)
    expect_dialog(qtbot, w, "No model is loaded")
    # an empty and a missing model folder
    w.model_panel.spec.setText("")
    click(qtbot, w.model_panel.btn_load)
    expect_dialog(qtbot, w, "No model was given")
    w.model_panel.spec.setText(str(tmp_path / "no-such-model"))
    click(qtbot, w.model_panel.btn_load)
    expect_dialog(qtbot, w, "does not exist")
    # a folder that is not a model
    (tmp_path / "empty").mkdir()
    w.model_panel.spec.setText(str(tmp_path / "empty"))
    click(qtbot, w.model_panel.btn_load)
    expect_dialog(qtbot, w, "has no config.json")
    assert w.state.loaded is None and not w.state.busy
    load_tiny(qtbot, w, tiny_path)  # still usable

    # more demonstrations than the built-in set has pairs
    small_demos(w, shots=4, samples=20)
    click(qtbot, w.features_panel.measure_btn)
    expect_dialog(qtbot, w, "sentence pairs")
    assert w.state.features is None
    # the live preview explains the same problem inline, without a dialog
    n = len(w.errors)
    w.demos_panel.refresh_preview()
    idle(qtbot, w)
    assert "sentence pairs" in w.demos_panel.preview.toPlainText() and len(w.errors) == n
    small_demos(w)

    # a template with an unknown field
    w.demos_panel.template.setPlainText("{source}: {src}")
    click(qtbot, w.features_panel.measure_btn)
    expect_dialog(qtbot, w, "template")
    w.demos_panel.template.setPlainText(DEFAULT_TEMPLATE)

    # an unknown language typed into a picker: marked, not taken
    picker = w.demos_panel.src
    picker.lineEdit().setText("Klingon")
    picker._commit()
    assert picker.code() == "eng_Latn" and "Unknown language" in picker.toolTip()

    # N:M pattern with a sparsity that does not match it
    pp = w.pruning_panel
    pp.pattern.setCurrentIndex(pp.pattern.findData("2:4"))
    assert pp.sparsity.value() == pytest.approx(0.5)  # chosen for the user
    pp.sparsity.setValue(0.6)
    click(qtbot, pp.prune_btn)
    expect_dialog(qtbot, w, "2:4")
    pp.skip_blocks.setText("7")
    pp.pattern.setCurrentIndex(pp.pattern.findData("unstructured"))
    click(qtbot, pp.prune_btn)
    expect_dialog(qtbot, w, "no block 7")
    pp.skip_blocks.setText("")
    assert w.state.prune_result is None

    # an export folder that exists already, and one inside the source model
    (tmp_path / "exists").mkdir()
    w.export_panel.target.setText(str(tmp_path / "exists"))
    click(qtbot, w.export_panel.export_btn)
    expect_dialog(qtbot, w, "already exists")
    w.export_panel.target.setText(str(tiny_path / "inside"))
    click(qtbot, w.export_panel.export_btn)
    expect_dialog(qtbot, w, "would overwrite the source")

    # evaluation without a data folder
    w.evaluation_panel.data.setText(str(tmp_path / "no-data"))
    click(qtbot, w.evaluation_panel.eval_btn)
    expect_dialog(qtbot, w, "does not exist")

    # a broken recipe file
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruning: {sparsity: 0.5, colour: red}\n")
    assert w.open_recipe(bad) is None
    expect_dialog(qtbot, w, "Unknown setting")

    # after all that, the workflow still runs
    small_demos(w)
    click(qtbot, w.features_panel.measure_btn)
    qtbot.waitUntil(lambda: w.state.features is not None, timeout=LONG)
    idle(qtbot, w)


# ------------------------------------------------------------------------------------------
# recipes, settings, languages, screenshots
# ------------------------------------------------------------------------------------------
def test_recipe_round_trip_and_settings_persist(qtbot, tmp_path):
    w = _make_window(qtbot, tmp_path, "persist.ini")
    small_demos(w, src="swh_Latn", tgt="eng_Latn", samples=7, seq_len=96)
    w.pruning_panel.sparsity.setValue(0.35)
    w.evaluation_panel.set_checked(["swh_Latn"], ["sw"])
    path = w.save_recipe(tmp_path / "r.yaml")
    rec = load_recipe(path)
    assert (rec.demos.src, rec.demos.tgt, rec.demos.samples, rec.demos.seq_len) == ("swh_Latn", "eng_Latn", 7, 96)
    assert rec.pruning.sparsity == pytest.approx(0.35)
    assert rec.evaluation.ppl == ["swh_Latn"] and rec.evaluation.xnli == ["sw"]
    # change the widgets, then open the recipe: they come back
    small_demos(w, samples=3)
    w.pruning_panel.sparsity.setValue(0.7)
    w.open_recipe(path)
    assert w.demos_panel.samples.value() == 7 and w.demos_panel.src.code() == "swh_Latn"
    assert w.pruning_panel.sparsity.value() == pytest.approx(0.35)
    assert w.current_recipe().to_dict() == rec.to_dict() | {"model": w.current_recipe().model}
    w.settings.setValue("recent_models", ["demo"])
    w.tabs.setCurrentIndex(3)
    w.close()
    idle(qtbot, w)
    # a new window restores the last settings and layout
    w2 = _make_window(qtbot, tmp_path, "persist.ini")
    assert w2.demos_panel.samples.value() == 7 and w2.demos_panel.tgt.code() == "eng_Latn"
    assert w2.pruning_panel.sparsity.value() == pytest.approx(0.35)
    assert w2.tabs.currentIndex() == 3
    assert w2.model_panel.recent.count() == 1
    w2.close()
    idle(qtbot, w2)


def test_language_picker_searches_all_flores_languages(qtbot, win):
    picker = win.demos_panel.tgt
    assert len(picker.codes()) == 204
    picker._search("swa")
    first = picker.completer().model().stringList()[0]
    assert first == "Swahili — swh_Latn"
    picker._search("zho")
    assert all("zho" in s.lower() or "chinese" in s.lower() for s in picker.completer().model().stringList()[:2])
    got = []
    picker.language_changed.connect(got.append)
    picker._commit("Swahili — swh_Latn")
    assert picker.code() == "swh_Latn" and got == ["swh_Latn"]
    picker.set_code("fr")
    assert picker.code() == "fra_Latn" and picker.currentText() == "French — fra_Latn"


def test_keyboard_shortcuts_and_tooltips(qtbot, win):
    a = win.actions_by_name
    assert a["demo"].shortcut().toString() == "Ctrl+D"
    assert a["prune"].shortcut().toString() == "Ctrl+R"
    assert a["evaluate"].shortcut().toString() == "Ctrl+E"
    assert a["save_recipe"].shortcut().toString() == "Ctrl+S"
    assert a["cancel"].shortcut().toString() == "Esc"
    assert "N of" in win.pruning_panel.pattern.toolTip() or "2:4" in win.pruning_panel.pattern.toolTip()
    assert "large-magnitude" in win.features_panel.heat_box.toolTip()
    qtbot.keyClick(win, Qt.Key_3, Qt.ControlModifier)
    assert win.tabs.currentWidget() is win.features_panel


def test_screenshots_mode_writes_one_png_per_panel(qtbot, tmp_path, tiny_long_path):
    from polyprune.gui.app import launch
    from polyprune.gui.screenshots import MAIN_NAME, SHOT_NAMES

    out = tmp_path / "shots"
    threads = torch.get_num_threads()
    try:
        assert launch(str(tiny_long_path), str(out)) == 0
    finally:
        torch.set_num_threads(threads)  # launch() leaves a core to the window; undo for other tests
    for name in [MAIN_NAME, *SHOT_NAMES]:
        assert (out / name).stat().st_size > 5000, name


def test_empty_plot_then_data_fits(qtbot):
    """An empty plot spans 0..1 with plain numbers; data drawn later is in view (the empty range
    once stuck, squeezing the heads scatter into a corner)."""
    import pyqtgraph as pg

    from polyprune.gui.widgets import PlotBox, style_plot

    box = PlotBox("x")
    qtbot.addWidget(box)
    style_plot(box.plot, "t", "y", "x")
    box.resize(400, 300)
    box.show()
    (x0, x1), (y0, y1) = box.plot.viewRange()
    assert x0 < 0 < 1 < x1 and y0 < 0 < 1 < y1
    assert not box.plot.getAxis("left").autoSIPrefix
    box.plot.addItem(pg.ScatterPlotItem(x=[0, 5], y=[0, 30]))
    qtbot.waitUntil(lambda: box.plot.viewRange()[1][1] >= 30, timeout=3000)
    assert box.plot.viewRange()[0][1] >= 5


def test_skip_blocks_field_follows_the_command_line_rule():
    """The Pruning panel reads Skip blocks with the same rule as --skip-blocks; its messages name the field."""
    from polyprune.arguments import block_list
    from polyprune.errors import PolypruneError
    from polyprune.gui.panels.pruning_panel import parse_blocks

    for text in ["0, 3-5;17", "2", "", "4-4, 1"]:
        assert parse_blocks(text, 18) == block_list(text)
    with pytest.raises(PolypruneError, match="not a block number") as e:
        parse_blocks("first", 18)
    assert "Skip blocks" in e.value.fix
    with pytest.raises(PolypruneError, match="no block 18"):
        parse_blocks("0, 18", 18)
