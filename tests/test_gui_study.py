"""The Studies panel driven with qtbot on a tiny model (offscreen): run, table, heatmap, mask
agreement, resume, bad input, and the heatmap colour scale against a naive reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QSettings  # noqa: E402

from conftest import save_tiny  # noqa: E402
from test_gui import win  # noqa: E402,F401 - the window fixture
from test_study import small_flores  # noqa: E402
from polyprune.gui.main_window import MainWindow  # noqa: E402
from polyprune.gui.panels.study_panel import example_study_text  # noqa: E402
from polyprune.session import study_rows_so_far  # noqa: E402
from polyprune.study import (heat_scores, heatmap_table, load_agreement, load_paired, load_rows, study_from_text,  # noqa: E402
                             study_status)

LONG = 60000


def study_text(model: Path, data: Path, out: Path, calibration: list[dict]) -> str:
    return yaml.safe_dump({
        "model": str(model), "device": "cpu", "seed": 0,
        "calibration": calibration,
        "calibration_defaults": {"samples": 4, "seq_len": 48, "shots": 2, "source": "builtin"},
        "methods": ["wanda"], "sparsities": [0.5],
        "pruning": {"batch_size": 2},
        "evaluation": {"ppl": ["eng_Latn", "fra_Latn"], "data": str(data), "batch_size": 4},
        "out": str(out)}, sort_keys=False, allow_unicode=True)


def run_and_wait(qtbot, w: MainWindow):
    job = w.study_panel.run()
    assert job is not None, w.errors
    with qtbot.waitSignal(job.done, timeout=LONG):
        pass
    qtbot.waitUntil(lambda: not w.runner.active_jobs(), timeout=LONG)
    return job


def test_run_show_resume(qtbot, win, tmp_path):
    model = save_tiny(tmp_path, "llama")
    data = small_flores(tmp_path)
    out = tmp_path / "study"
    sp = win.study_panel
    cal = [{"kind": "translation", "langs": ["fra_Latn"], "direction": "both"},
           {"kind": "monolingual", "lang": "eng_Latn"}]
    sp.editor.setPlainText(study_text(model, data, out, cal))
    sp.update_plan()
    assert "2 cells" in sp.plan_label.text() and "2 to run" in sp.plan_label.text()

    job = run_and_wait(qtbot, win)
    assert job.status == "finished", job.error
    rows = load_rows(out)
    # what the table shows while a study runs (its cells' files) is what the finished tables hold
    so_far = study_rows_so_far(sp.config())
    assert [(r["cell"], r["language"], r["metric"]) for r in so_far] == \
        [(r["cell"], r["language"], r["metric"]) for r in rows]
    assert [r["value"] for r in so_far] == pytest.approx([r["value"] for r in rows])
    # the table shows exactly the study's rows, dense first
    shown = sp.table_values()
    assert len(shown) == len(rows) == 6  # dense + 2 cells, 2 languages each
    assert [r["calibration"] for r in shown][:2] == ["dense", "dense"]
    for s, r in zip(shown, rows):
        assert s["value"] == pytest.approx(r["value"]) and s["language"] == r["language"]
        assert s["delta"] == (None if r["delta"] is None else pytest.approx(r["delta"]))
    # the heatmap is the core's calibration x language table
    sp.heat_mode.setCurrentIndex(sp.heat_mode.findData("value"))
    table = sp.heatmap()
    ref = heatmap_table(rows, "perplexity", "flores_ppl", "wanda", 0.5, "value", include_dense=True)
    assert table.rows == ref.rows == ["dense", "translation fra↔eng", "mono eng"]
    assert table.values == ref.values
    assert len(sp._texts) == 3 * 2
    # mask agreement: one line for the non-reference cell, one point per block
    agree = [r for r in load_agreement(out) if r["level"] == "block"]
    curves = sp.agree_box.plot.listDataItems()
    assert len(curves) == 1
    x, y = curves[0].getData()
    assert np.allclose(y, [r["agreement"] for r in sorted(agree, key=lambda r: r["block"])])
    assert "2 finished, 0 to run" in sp.plan_label.text()
    # paired differences from the reference cell: table and heatmap mode
    paired = load_paired(out)
    assert sp.paired_table.rowCount() == len(paired) == 2
    sp.heat_mode.setCurrentIndex(sp.heat_mode.findData("paired"))
    ph = sp.heatmap()
    assert ph.rows == ["mono eng"] and ph.cols == ["eng_Latn", "fra_Latn"]
    assert ph.values[0] == [pytest.approx(r["difference"]) for r in paired]
    for t, r in zip(sp._texts, paired):
        assert t.textItem.toPlainText().endswith("*") == (not (r["ci_low"] <= 0 <= r["ci_high"]))

    # resume: one more calibration source runs only the new cell
    sp.editor.setPlainText(study_text(model, data, out, cal + [{"kind": "monolingual", "lang": "fra_Latn"}]))
    sp.update_plan()
    assert "2 finished, 1 to run" in sp.plan_label.text()
    ran = []
    win.log_view.textChanged.connect(lambda: ran.append(win.log_view.toPlainText()))
    run_and_wait(qtbot, win)
    log = win.log_view.toPlainText()
    assert "1 cell(s) run, 2 resumed from disk" in log
    assert len(sp.table_values()) == 8
    assert len(sp.agree_box.plot.listDataItems()) == 2

    # showing the folder in a fresh panel puts its study in the editor: Run would resume it
    sp.editor.setPlainText("model: demo\n")
    win.show_study(out)
    assert win.tabs.currentWidget() is sp and sp.out.text() == str(out)
    assert study_from_text(sp.editor.toPlainText()).calibration[-1]["lang"] == "fra_Latn"
    assert "3 finished, 0 to run" in sp.plan_label.text()

    # plots save as PNG
    assert sp.heat_box.save_to(tmp_path / "heat.png").stat().st_size > 0
    assert sp.agree_box.save_to(tmp_path / "agree.png").stat().st_size > 0
    # and the table as CSV that reads back
    csv_path = sp.save_csv(tmp_path / "study.csv")
    assert len(csv_path.read_text(encoding="utf-8").splitlines()) == 9


def test_bad_study_text_explains_and_the_window_keeps_working(qtbot, win, tmp_path):
    sp = win.study_panel
    sp.editor.setPlainText("calibration: [\n  {kind: translation")
    sp.update_plan()
    assert "Could not parse" in sp.plan_label.text()
    assert sp.run() is None
    assert any("Could not parse" in p for p, _ in win.errors)
    sp.editor.setPlainText("calibrations: []\n")
    sp.update_plan()
    assert "Unknown setting" in sp.plan_label.text() and "calibration" in sp.plan_label.text()
    sp.editor.setPlainText(yaml.safe_dump({"calibration": [{"kind": "mix", "proportions": {"eng_Latn": 0.5}}],
                                           "out": str(tmp_path / "s")}))
    sp.update_plan()
    assert "sum" in sp.plan_label.text().lower()
    with pytest.raises(Exception):
        sp.show_folder(tmp_path / "nothing-here")
    win.show_study(tmp_path / "nothing-here")
    assert "No study results" in win.errors[-1][0]
    # the example study parses and plans five cells
    sp.editor.setPlainText(example_study_text())
    sp.out.setText(str(tmp_path / "example"))
    sp.update_plan()
    assert "5 cells" in sp.plan_label.text() and "5 to run" in sp.plan_label.text()


def test_study_text_persists(qtbot, tmp_path):
    ini = str(tmp_path / "settings.ini")
    w = MainWindow(settings=QSettings(ini, QSettings.IniFormat), restore=False)
    qtbot.addWidget(w)
    w.study_panel.editor.setPlainText("model: demo\nmethods: [sparsegpt]\n")
    w.study_panel.out.setText(str(tmp_path / "o"))
    w.study_panel.update_plan()
    w.settings.sync()
    w2 = MainWindow(settings=QSettings(ini, QSettings.IniFormat), restore=True)
    qtbot.addWidget(w2)
    assert w2.study_panel.editor.toPlainText() == "model: demo\nmethods: [sparsegpt]\n"
    assert w2.study_panel.out.text() == str(tmp_path / "o")


def naive_scores(values, lower_better, per_column):
    """Reference colour positions: per column (or overall), best -> 1, worst -> 0, linear between."""
    a = np.array(values, dtype=float)
    g = -a if lower_better else a
    out = np.empty_like(g)
    cols = range(g.shape[1]) if per_column else [slice(None)]
    for j in cols:
        block = g[:, j] if per_column else g
        lo, hi = block.min(), block.max()
        res = (block - lo) / (hi - lo)
        if per_column:
            out[:, j] = res
        else:
            out = res
    return out


def test_heat_scores_match_a_naive_reference():
    ppl = [[50.0, 170.0], [60.0, 150.0], [55.0, 160.0]]
    for per_col in (True, False):
        assert np.allclose(heat_scores(ppl, "perplexity", "value", per_col), naive_scores(ppl, True, per_col))
    acc = [[0.40, 0.30], [0.45, 0.33], [0.42, 0.35]]
    assert np.allclose(heat_scores(acc, "acc", "value", True), naive_scores(acc, False, True))
    # change vs dense spanning zero: "as good as dense" sits in the middle of the scale
    d = [[-0.02, 0.04], [0.01, -0.01]]
    s = heat_scores(d, "acc", "delta", False)
    assert s[0, 1] == pytest.approx(1.0) and s[1, 0] == pytest.approx(0.5 + 0.5 * 0.01 / 0.04)
    # missing values stay missing
    s = heat_scores([[1.0, None], [2.0, 3.0]], "perplexity", "value", True)
    assert np.isnan(s[0, 1]) and s[0, 0] == 1.0 and s[1, 0] == 0.0


def test_study_status_counts_finished_cells(tmp_path):
    cfg = study_from_text(example_study_text())
    cfg.out = str(tmp_path / "none")
    cells, done = study_status(cfg)
    assert len(cells) == 5 and done == set()
