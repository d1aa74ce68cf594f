"""Studies on a tiny model: grid, tables, heatmap, mask agreement, stop and resume, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import save_tiny
from polyprune import study as S
from polyprune.datasets import builtin_pairs
from polyprune.errors import Cancelled, PolypruneError
from polyprune.cli import main
from polyprune.progress import Progress


def small_flores(tmp_path, langs=("eng_Latn", "fra_Latn")):
    """A user-defined FLORES-like folder: devtest/<code>.devtest with a few sentences."""
    root = tmp_path / "data" / "flores200" / "devtest"
    root.mkdir(parents=True)
    for lang in langs:
        lines = [a for a, _ in builtin_pairs(lang, lang)][-6:]
        (root / f"{lang}.devtest").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "data"


def config(tmp_path, model, data, **kw) -> S.StudyConfig:
    d = dict(model=str(model), device="cpu",
             calibration=[{"kind": "translation", "langs": ["fra_Latn"], "direction": "both"},
                          {"kind": "monolingual", "lang": "eng_Latn"}],
             calibration_defaults={"samples": 4, "seq_len": 64, "shots": 2, "source": "builtin"},
             methods=["wanda", "sparsegpt"], sparsities=[0.5], pruning={"blocksize": 16, "batch_size": 2},
             evaluation={"ppl": ["eng_Latn", "fra_Latn"], "data": str(data), "batch_size": 4},
             out=str(tmp_path / "study"))
    d.update(kw)
    return S.StudyConfig(**d)


class Counter:
    def __init__(self, stop_after=None, progress=None):
        from polyprune.pipeline import evaluate
        self.evaluate, self.calls, self.stop_after, self.progress = evaluate, 0, stop_after, progress

    def __call__(self, loaded, ev, progress):
        self.calls += 1
        out = self.evaluate(loaded, ev, progress)
        if self.stop_after is not None and self.calls >= self.stop_after:
            self.progress.cancel()
        return out


@pytest.fixture
def tiny(tmp_path):
    from polyprune.models import load_model
    path = save_tiny(tmp_path, "llama")
    return path, load_model(str(path), "cpu")


def test_study_stop_resume_tables_and_dense_weights(tmp_path, tiny, monkeypatch):
    path, loaded = tiny
    data = small_flores(tmp_path)
    cfg = config(tmp_path, path, data)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    prunes = {"n": 0}
    import polyprune.study.run as study_run
    real_prune = study_run.prune

    def counting_prune(*a, **k):
        prunes["n"] += 1
        return real_prune(*a, **k)
    monkeypatch.setattr(study_run, "prune", counting_prune)

    # 1) stop after the first cell: dense evaluation + one cell
    prog = Progress()
    ev = Counter(stop_after=2, progress=prog)
    with pytest.raises(Cancelled):
        S.run_study(cfg, prog, log=lambda m: None, loaded=loaded, evaluate_fn=ev)
    assert ev.calls == 2 and prunes["n"] == 1
    out = tmp_path / "study"
    done = [p for p in (out / "cells").iterdir() if (p / "results.json").exists()]
    assert len(done) == 2  # dense + first cell
    assert len(S.load_rows(out)) == 2 + 2  # dense rows + the first cell's rows, written on stop
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, before[n]), n

    # 2) resume: only the three remaining cells run, the dense model is not evaluated again
    prunes["n"] = 0
    ev2 = Counter()
    res = S.run_study(cfg, Progress(), log=lambda m: None, loaded=loaded, evaluate_fn=ev2)
    assert ev2.calls == 3 and prunes["n"] == 3
    assert len(res.skipped) == 1 and len(res.ran) == 3
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, before[n]), n  # dense weights bit-identical after the study

    # the table: dense + 4 cells, 2 languages each
    rows = S.load_rows(out)
    assert len(rows) == 2 + 4 * 2
    assert [r["cell"] for r in rows[:2]] == ["dense", "dense"]
    assert {r["method"] for r in rows[2:]} == {"wanda", "sparsegpt"}
    assert all(r["overall_sparsity"] == pytest.approx(0.5) for r in rows[2:])
    assert all(r["delta"] == pytest.approx(r["value"] - r["dense"]) for r in rows[2:])
    csv_text = (out / "results.csv").read_text()
    assert csv_text.splitlines()[0].split(",")[:4] == ["cell", "calibration", "calibration_kind", "method"]
    assert len(csv_text.strip().splitlines()) == 1 + 10

    # heatmap: calibration label x evaluation language
    hm = S.heatmap_table(rows, "perplexity", method="sparsegpt", sparsity=0.5)
    assert hm.rows == ["translation fra↔eng", "mono eng"] and hm.cols == ["eng_Latn", "fra_Latn"]
    assert all(v is not None and v > 1 for row in hm.values for v in row)
    ratio = S.heatmap_table(rows, "perplexity", method="wanda", sparsity=0.5, mode="ratio")
    dense = {r["language"]: r["value"] for r in rows if r["cell"] == "dense"}
    wanda = {(r["calibration"], r["language"]): r["value"] for r in rows if r["method"] == "wanda"}
    assert ratio.values[1][0] == pytest.approx(wanda[("mono eng", "eng_Latn")] / dense["eng_Latn"])
    with pytest.raises(PolypruneError, match="combinations"):
        S.heatmap_table(rows, "perplexity")
    assert "mono eng" in hm.format()
    assert len(S.heatmaps(rows)) == 2

    # mask agreement: every other cell against the first one, per block and per module
    agr = S.load_agreement(out)
    cells = {r["cell"] for r in agr}
    assert len(cells) == 3 and res.cells[0].id not in cells
    blocks = [r for r in agr if r["level"] == "block"]
    assert len(blocks) == 3 * 2  # two blocks in the tiny llama
    assert all(0.5 <= r["agreement"] <= 1.0 for r in agr)  # same sparsity: at least chance level

    # masks are stored per cell and reproduce the cell
    from polyprune.masks import load_masks
    ms = load_masks(out / "cells" / res.cells[0].id / "masks.safetensors")
    assert ms.sparsity() == pytest.approx(0.5)

    # perplexity rows carry bootstrap intervals around their value; every cell has paired rows
    assert all(r["ci_low"] < r["value"] < r["ci_high"] for r in rows)
    paired = S.load_paired(out)
    assert len(paired) == 3 * 2
    for r in paired:
        mine = next(x for x in rows if x["cell"] == r["cell"] and x["language"] == r["language"])
        ref = next(x for x in rows if x["cell"] == res.cells[0].id and x["language"] == r["language"])
        assert r["difference"] == pytest.approx(mine["value"] - ref["value"])
        assert r["ci_low"] <= r["difference"] <= r["ci_high"]

    # 3) a third run does nothing (no pruning, no evaluation)
    prunes["n"] = 0
    ev3 = Counter()
    res3 = S.run_study(cfg, Progress(), log=lambda m: None, loaded=loaded, evaluate_fn=ev3)
    assert ev3.calls == 0 and prunes["n"] == 0 and len(res3.skipped) == 4
    assert len(res3.rows) == 10


def test_cancel_inside_a_cell_keeps_nothing_of_it(tmp_path, tiny):
    path, loaded = tiny
    cfg = config(tmp_path, path, small_flores(tmp_path), methods=["sparsegpt"],
                 calibration=[{"kind": "monolingual", "lang": "eng_Latn"}])
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    prog = Progress()

    def evaluate(loaded_, ev, progress):
        from polyprune.pipeline import evaluate as real
        out = real(loaded_, ev, progress)
        if any(not torch.equal(p, before[n]) for n, p in loaded_.model.named_parameters()):
            prog.cancel()  # inside the pruned cell's evaluation
            progress.check()
        return out

    with pytest.raises(Cancelled):
        S.run_study(cfg, prog, log=lambda m: None, loaded=loaded, evaluate_fn=evaluate)
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, before[n]), n
    cells = [p.name for p in (tmp_path / "study" / "cells").iterdir() if (p / "results.json").exists()]
    assert cells == ["dense"]


def test_cell_ids_are_stable_and_settings_sensitive(tmp_path):
    cfg = config(tmp_path, "some/model", tmp_path)
    a, b = S.plan(cfg), S.plan(cfg)
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == 4
    cfg2 = config(tmp_path, "some/model", tmp_path, pruning={"blocksize": 32, "batch_size": 2})
    ids2 = [c.id for c in S.plan(cfg2)]
    assert ids2[0] == a[0].id  # wanda does not depend on the SparseGPT block size ...
    assert ids2[1] != a[1].id  # ... SparseGPT does


@pytest.mark.parametrize("kw,needle", [
    (dict(methods=["wanda+owl"], pattern="2:4"), "unstructured"),
    (dict(methods=["wanda_refined"]), "contrast"),
    (dict(methods=["wanda+foo"]), "suffix"),
    (dict(methods=[{"method": "wanda", "dampning": 0.1}]), "Unknown pruning setting"),
    (dict(calibration=[{"kind": "monolingual", "lang": "eng_Latn"}] * 2), "label"),
    (dict(calibration=[{"kind": "mix", "proportions": {"eng_Latn": 0.6, "fra_Latn": 0.3}}]), "sum to 0.9"),
    (dict(calibration=[]), "no calibration"),
    (dict(sparsities=[1.5]), "outside"),
    (dict(reference=9), "out of range"),
    (dict(evaluation={"pp": ["eng_Latn"]}), "Unknown evaluation setting"),
])
def test_bad_studies_fail_before_loading(tmp_path, kw, needle):
    cfg = config(tmp_path, tmp_path / "no-such-model", tmp_path, **kw)
    with pytest.raises(PolypruneError, match=needle):
        S.run_study(cfg, log=lambda m: None)


def test_load_study_rejects_unknown_keys(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("model: demo\nmethod: [wanda]\n")
    with pytest.raises(PolypruneError, match="Unknown setting"):
        S.load_study(p)


def test_refined_and_owl_cells(tmp_path, tiny):
    path, loaded = tiny
    code = tmp_path / "code.txt"
    code.write_text("def f(x):\n    return x * 2\nfor i in range(3):\n    print(f(i))\n")
    cfg = config(tmp_path, path, small_flores(tmp_path), methods=["wanda_refined", {"method": "wanda", "layerwise": "owl", "owl_m": 2}],
                 calibration=[{"kind": "translation", "langs": ["fra_Latn"], "direction": "forward"}],
                 contrast={"kind": "text", "file": str(code)}, evaluation={})
    res = S.run_study(cfg, log=lambda m: None, loaded=loaded)
    assert len(res.ran) == 2 and res.rows == []
    info = json.loads((res.out / "cells" / res.cells[1].id / "cell.json").read_text())
    targets = info["pruning"]["target_sparsity"]
    assert sum(targets) / len(targets) == pytest.approx(0.5, abs=1e-12)
    info0 = json.loads((res.out / "cells" / res.cells[0].id / "cell.json").read_text())
    assert info0["contrast"]["label"] == "text code.txt"
    assert len(S.load_agreement(res.out)) > 0


def test_study_main_cli(tmp_path, tiny, capsys):
    import yaml
    path, _ = tiny
    cfg = config(tmp_path, path, small_flores(tmp_path), methods=["wanda"])
    recipe = tmp_path / "study.yaml"
    recipe.write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True), encoding="utf-8")
    assert main(["study", str(recipe), "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "translation fra↔eng" in printed and "eng_Latn" in printed and "Mask agreement" in printed
    assert main(["study", str(tmp_path / "cli"), "--show"]) == 0
    assert "mono eng" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: demo\nmethods: [wanda+owl]\npattern: '2:4'\ncalibration: [{kind: monolingual, lang: eng_Latn}]\n")
    assert main(["study", str(bad)]) == 2
    assert "unstructured" in capsys.readouterr().err


def test_study_on_shared_flores(tmp_path, tiny, data_dir):
    """FLORES perplexity from the shared data, calibration from the shared FLORES dev split."""
    path, loaded = tiny
    cfg = config(tmp_path, path, data_dir, methods=["wanda"],
                 calibration=[{"kind": "monolingual", "lang": "swh_Latn"},
                              {"kind": "mix", "proportions": {"eng_Latn": 0.5, "swh_Latn": 0.5}}],
                 calibration_defaults={"samples": 4, "seq_len": 64, "shots": 2, "source": f"flores:{data_dir / 'flores200'}"},
                 evaluation={"ppl": ["eng_Latn", "swh_Latn"], "ppl_limit": 8, "data": str(data_dir), "batch_size": 8})
    res = S.run_study(cfg, log=lambda m: None, loaded=loaded)
    hm = S.heatmap_table(res.rows, "perplexity", include_dense=True)
    assert hm.rows == ["dense", "mono swh", "mix eng50 swh50"]
    assert all(v is not None for row in hm.values for v in row)


def naive_bootstrap(stat, n, iters, seed):
    """Reference: resample item indices one resample at a time."""
    import numpy as np
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(iters, n))
    return np.array([stat(i) for i in idx])


def test_paired_difference_matches_a_naive_bootstrap():
    import numpy as np
    rng = np.random.default_rng(1)
    a = (rng.random(60) < 0.55).astype(int).tolist()
    b = [x if rng.random() < 0.8 else 1 - x for x in a]  # mostly the same items right
    diff, lo, hi = S.paired_difference({"correct": a}, {"correct": b}, iters=500, seed=7)
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    boots = naive_bootstrap(lambda i: np.mean(np.array(a)[i]) - np.mean(np.array(b)[i]), 60, 500, 7)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    # paired intervals are narrower than the difference of independent intervals would suggest
    unpaired = naive_bootstrap(lambda i: np.mean(np.array(a)[i]), 60, 500, 8) - \
        naive_bootstrap(lambda i: np.mean(np.array(b)[i]), 60, 500, 9)
    assert hi - lo < np.subtract(*np.quantile(unpaired, [0.975, 0.025]))

    nll_a, nll_b = rng.random(30) * 40 + 10, rng.random(30) * 40 + 12
    tok = rng.integers(5, 30, size=30)
    diff, lo, hi = S.paired_difference({"nll": nll_a.tolist(), "tokens": tok.tolist()},
                                       {"nll": nll_b.tolist(), "tokens": tok.tolist()}, iters=300, seed=3)
    assert diff == pytest.approx(np.exp(nll_a.sum() / tok.sum()) - np.exp(nll_b.sum() / tok.sum()))
    boots = naive_bootstrap(lambda i: np.exp(nll_a[i].sum() / tok[i].sum()) - np.exp(nll_b[i].sum() / tok[i].sum()),
                            30, 300, 3)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    with pytest.raises(ValueError, match="different item counts"):
        S.paired_difference({"correct": [1, 0]}, {"correct": [1]})
    with pytest.raises(ValueError, match="different kinds"):
        S.paired_difference({"correct": [1]}, {"nll": [1.0], "tokens": [1]})


def test_perplexity_interval_matches_a_naive_bootstrap():
    import numpy as np
    from polyprune.evaluation.stats import perplexity_ci
    rng = np.random.default_rng(0)
    nll, tok = rng.random(40) * 50, rng.integers(3, 40, size=40)
    lo, hi = perplexity_ci(nll.tolist(), tok.tolist(), iters=400, seed=5)
    boots = naive_bootstrap(lambda i: np.exp(nll[i].sum() / tok[i].sum()), 40, 400, 5)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    assert lo < np.exp(nll.sum() / tok.sum()) < hi
