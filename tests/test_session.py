"""Sessions and their variants (``polyprune.session``), without Qt, on a tiny Llama.

Every check compares weights bit for bit with the weights saved right after each pruning, numbers
with a naive reference written here (a paired bootstrap with explicit loops; an evaluation of a
separate copy of the model holding the expected weights), and bad input with the message and an
unchanged model.
"""
from __future__ import annotations

import copy
import json
import math
import threading

import numpy as np
import pytest
import torch

from conftest import make_tiny_model, make_tokenizer, save_tiny
from polyprune.datasets import builtin_pairs
from polyprune.errors import Cancelled, PolypruneError
from polyprune.evaluation import Result
from polyprune.evaluation.translation import generate_greedy
from polyprune.models import LoadedModel, load_model
from polyprune.pipeline import evaluate
from polyprune.progress import Progress
from polyprune.recipe import DemoConfig, EvalConfig, PruneConfig, Recipe
from polyprune.session import (BETTER, NO_CHANGE, WORSE, Session, comparison_rows, evaluate_variants,
                               export_variant, prune_variant, try_variants, variant_report, verdict)

SMALL_DEMOS = DemoConfig(source="builtin", src="eng_Latn", tgt="fra_Latn", shots=2, samples=4, seq_len=48)


def loaded_tiny(seed: int = 0) -> LoadedModel:
    return LoadedModel(make_tiny_model("llama", seed), make_tokenizer(), "tiny", None, "cpu", "float32")


def recipe(**prune) -> Recipe:
    return Recipe(demos=SMALL_DEMOS, pruning=PruneConfig(**({"batch_size": 2, "blocksize": 16} | prune)))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_weights(model, ref) -> None:
    now = model.state_dict()
    for k, v in ref.items():
        assert torch.equal(now[k], v), f"{k} differs"


def small_data(tmp_path, n: int = 12):
    """A data folder with FLORES dev/devtest for English and French and an English XNLI file."""
    root = tmp_path / "data"
    for split in ("dev", "devtest"):
        d = root / "flores200" / split
        d.mkdir(parents=True)
        for lang in ("eng_Latn", "fra_Latn"):
            pairs = builtin_pairs(lang, "eng_Latn" if lang != "eng_Latn" else "fra_Latn")
            lines = [a for a, _ in pairs][:n]
            (d / f"{lang}.{split}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    x = root / "xnli"
    x.mkdir()
    en = [a for a, _ in builtin_pairs("eng_Latn", "fra_Latn")]
    rows = [{"premise": en[i], "hypothesis": en[(i + 1) % len(en)], "label": i % 3} for i in range(n)]
    (x / "test.en.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------
# variants: keep several, move between them exactly
# ------------------------------------------------------------------------------------------
def test_variants_move_bit_exactly_between_dense_wanda_and_sparsegpt():
    s = Session(loaded_tiny())
    model = s.loaded.model
    dense = weights(model)
    a, _ = prune_variant(s, recipe(method="wanda"))
    s.add(a)
    w_a = weights(model)
    b, _ = prune_variant(s, recipe(method="sparsegpt", sparsity=0.6))
    s.add(b)
    w_b = weights(model)
    assert s.active is b and [v.id for v in s.variants] == ["dense", "v1", "v2"]
    # SparseGPT changed kept weights too: its weights differ from dense beyond the mask
    rec = next(iter(b.result.records.values()))
    assert rec.updates_weights
    for target, ref in ((a, w_a), (s.dense, dense), (b, w_b), (a, w_a), (b, w_b), (s.dense, dense)):
        s.activate(target)
        assert_weights(model, ref)
    # the second pruning started from the dense weights, not from the first pruning
    assert b.result.overall == pytest.approx(0.6, abs=0.02)
    # memory: a stored mask-only variant is its mask bits only
    s.activate(b)
    assert a.nbytes() == sum(math.ceil(r.numel / 8) for r in a.result.records.values())
    assert b.nbytes() > a.nbytes()  # SparseGPT keeps the dense weights while it is in the model


class CancelAfter(Progress):
    """Cancels itself once ``n`` progress updates have been made (mid-pruning)."""

    def __init__(self, n: int):
        super().__init__(None, min_interval=0.0)
        self.n = n
        self.calls = 0

    def update(self, done, total, message=""):
        self.calls += 1
        if self.calls >= self.n:
            self.cancel()
        super().update(done, total, message)

    def sub(self, start, end):
        return self  # one counter for every stage


def test_cancel_or_failure_of_a_new_pruning_leaves_every_variant_as_it_was():
    s = Session(loaded_tiny())
    model = s.loaded.model
    dense = weights(model)
    a, _ = prune_variant(s, recipe(method="wanda"))
    s.add(a)
    w_a = weights(model)
    b, _ = prune_variant(s, recipe(method="sparsegpt", sparsity=0.5))
    s.add(b)
    w_b = weights(model)
    with pytest.raises(Cancelled):
        prune_variant(s, recipe(method="wanda", sparsity=0.7), progress=CancelAfter(6))
    assert s.active is b and len(s.variants) == 3
    assert_weights(model, w_b)
    # a failure (refined metric without a contrast set) changes nothing either
    with pytest.raises(PolypruneError, match="contrast"):
        prune_variant(s, recipe(method="wanda_refined"))
    assert s.active is b
    assert_weights(model, w_b)
    # sparsity 1.0 is refused with a clear message before anything happens
    with pytest.raises(PolypruneError, match=r"outside \[0, 1\)"):
        prune_variant(s, recipe(method="wanda", sparsity=1.0))
    assert_weights(model, w_b)
    s.activate(a)
    assert_weights(model, w_a)
    s.activate(s.dense)
    assert_weights(model, dense)


def test_rename_remove_and_names():
    s = Session(loaded_tiny())
    a, _ = prune_variant(s, recipe(method="magnitude"))
    s.add(a)
    assert a.name == "Magnitude 50%"
    b, _ = prune_variant(s, recipe(method="magnitude"))
    s.add(b)
    assert b.name == "Magnitude 50% (2)"
    with pytest.raises(PolypruneError, match="already called"):
        s.rename(b.id, "Magnitude 50%")
    with pytest.raises(PolypruneError, match="needs a name"):
        s.rename(b.id, "   ")
    s.rename(b.id, "  second   try ")
    assert b.name == "second try"
    with pytest.raises(PolypruneError, match="cannot be deleted"):
        s.remove("dense")
    dense = None
    s.activate(s.dense)
    dense = weights(s.loaded.model)
    s.activate(b)
    s.remove(b.id)  # held by the model: the model goes back to dense
    assert s.active is s.dense
    assert_weights(s.loaded.model, dense)
    with pytest.raises(PolypruneError, match="no variant"):
        s.get(b.id)


# ------------------------------------------------------------------------------------------
# evaluation: exact dense view, intervals, paired verdicts
# ------------------------------------------------------------------------------------------
def test_sparsegpt_evaluated_dense_and_pruned_keeps_every_weight_bit_identical(tmp_path):
    """The stage the window's Evaluate uses gives back the very SparseGPT weights (issue 9)."""
    data = small_data(tmp_path)
    s = Session(loaded_tiny())
    model = s.loaded.model
    dense = weights(model)
    v, _ = prune_variant(s, recipe(method="sparsegpt"))
    s.add(v)
    pruned = weights(model)
    cfg = EvalConfig(ppl=["eng_Latn", "fra_Latn"], xnli=["en"], data=str(data), batch_size=4, bootstrap=200)
    table = evaluate_variants(s, [v], cfg)
    assert s.active is v
    assert_weights(model, pruned)  # every weight, not only the masked ones
    # reference: separate copies of the model holding the dense and the pruned weights
    ref_dense = loaded_tiny()
    ref_dense.model.load_state_dict(dense)
    ref_pruned = loaded_tiny()
    ref_pruned.model.load_state_dict(pruned)
    want_d = evaluate(ref_dense, cfg)
    want_p = evaluate(ref_pruned, cfg)
    assert [r.value for r in table.results["dense"]] == [r.value for r in want_d]
    assert [r.value for r in table.results[v.id]] == [r.value for r in want_p]
    # the table: one row per (task, language, metric) with n, both intervals and a verdict
    assert [(r["task"], r["language"], r["metric"]) for r in table.rows] == [r.key() for r in want_d]
    for r in table.rows:
        assert r["variant"] == v.id and r["n"] == 12 and r["verdict"] in (WORSE, BETTER, NO_CHANGE)
        assert r["dense_ci"] is not None and r["pruned_ci"] is not None and r["diff_ci"] is not None
    xnli = next(r for r in table.rows if r["task"] == "xnli" and r["metric"] == "acc")
    assert xnli["chance"] == pytest.approx(1 / 3)
    # evaluating again with the dense results known evaluates only the variant
    again = evaluate_variants(s, [v], cfg, known={"dense": table.results["dense"]})
    assert [r.value for r in again.results[v.id]] == [r.value for r in want_p]
    assert_weights(model, pruned)


def naive_paired(a, b, iters, seed):
    """Paired percentile bootstrap of mean(a) - mean(b), one resample at a time."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(iters, len(a)))
    diffs = []
    for row in idx:
        diffs.append(sum(a[i] - b[i] for i in row) / len(row))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return sum(a) / len(a) - sum(b) / len(b), lo, hi


def test_comparison_rows_match_a_naive_paired_bootstrap_and_give_plain_verdicts():
    from polyprune.evaluation.stats import seed_for

    rng = np.random.default_rng(1)
    dense_items = rng.integers(0, 2, 80).tolist()
    worse_items = [x if i % 3 else 0 for i, x in enumerate(dense_items)]  # loses a third of its hits
    same_items = list(dense_items)

    def res(task, lang, items, metric="acc"):
        return Result(task, lang, metric, float(np.mean(items)), 0.0, 1.0, len(items), extra={"item_correct": items})

    dense = [res("xnli", "sw", dense_items), res("pawsx", "fr", dense_items)]
    variant = [res("xnli", "sw", worse_items), res("pawsx", "fr", same_items)]
    rows = comparison_rows(dense, variant, iters=300, seed=0)
    d, lo, hi = naive_paired(worse_items, dense_items, 300, seed_for(0, "xnli", "sw", "acc", "paired"))
    assert rows[0]["diff"] == pytest.approx(d) and rows[0]["diff_ci"] == pytest.approx([lo, hi])
    assert rows[0]["verdict"] == WORSE and hi < 0
    assert rows[1]["verdict"] == NO_CHANGE and rows[1]["diff_ci"] == [0.0, 0.0]
    assert rows[0]["chance"] == pytest.approx(1 / 3) and rows[1]["chance"] == 0.5
    # perplexity: lower is better
    assert verdict("perplexity", 1.0, 3.0) == WORSE and verdict("perplexity", -3.0, -1.0) == BETTER
    assert verdict("acc", 0.01, 0.2) == BETTER and verdict("acc", -0.1, 0.1) == NO_CHANGE


# ------------------------------------------------------------------------------------------
# try it, export
# ------------------------------------------------------------------------------------------
def test_try_variants_gives_each_variants_own_output(tmp_path):
    data = small_data(tmp_path)
    s = Session(loaded_tiny())
    v, _ = prune_variant(s, recipe(method="wanda", sparsity=0.7))
    s.add(v)
    pruned = weights(s.loaded.model)
    ref = loaded_tiny()  # dense copy
    got = try_variants(s, [s.dense, v], "English: Hello\nFrench:", max_new_tokens=6)
    assert got.outputs["dense"] == generate_greedy(ref.model, ref.tokenizer, ["English: Hello\nFrench:"],
                                                   max_new_tokens=6, stop=None)[0]
    ref.model.load_state_dict(pruned)
    assert got.outputs[v.id] == generate_greedy(ref.model, ref.tokenizer, ["English: Hello\nFrench:"],
                                                max_new_tokens=6, stop=None)[0]
    assert_weights(s.loaded.model, pruned)
    flo = try_variants(s, [v], flores={"data": str(data), "src": "fra_Latn", "tgt": "eng_Latn", "index": 2},
                       max_new_tokens=4)
    assert flo.source and flo.reference and flo.prompt.endswith(f"French: {flo.source}\nEnglish:")
    with pytest.raises(PolypruneError, match="sentences 1 to 12"):
        try_variants(s, [v], flores={"data": str(data), "src": "fra_Latn", "tgt": "eng_Latn", "index": 40})
    with pytest.raises(PolypruneError, match="prompt is empty"):
        try_variants(s, [v], "  ")


def test_export_a_variant_that_the_model_does_not_hold(tmp_path):
    path = save_tiny(tmp_path, "llama")
    loaded = load_model(str(path))
    s = Session(loaded)
    a, _ = prune_variant(s, recipe(method="wanda"))
    s.add(a)
    w_a = weights(loaded.model)
    b, _ = prune_variant(s, recipe(method="magnitude", sparsity=0.3))
    s.add(b)
    w_b = weights(loaded.model)
    rec = copy.deepcopy(a.recipe)
    rec.model = str(path)
    out = tmp_path / "exported"
    res = export_variant(s, a, out, rec, variant_report(s, a, rec))
    assert res.reload_diff == 0.0 and s.active is b
    assert_weights(loaded.model, w_b)
    back = load_model(str(out))
    assert_weights(back.model, w_a)
    report = json.loads((out / "report.json").read_text())
    assert report["variant"]["name"] == a.name and report["pruning"]["config"]["method"] == "wanda"
    # an existing folder is not replaced unless asked, in the window's words
    with pytest.raises(PolypruneError, match="tick 'Replace"):
        export_variant(s, a, out, rec, variant_report(s, a, rec), replace_hint="tick 'Replace the folder'")
    assert_weights(loaded.model, w_b)


def test_cancel_from_another_thread_during_evaluation_keeps_the_pruned_weights(tmp_path):
    data = small_data(tmp_path, n=12)
    s = Session(loaded_tiny())
    v, _ = prune_variant(s, recipe(method="sparsegpt"))
    s.add(v)
    pruned = weights(s.loaded.model)
    p = Progress(None)
    seen = threading.Event()

    def cb(frac, msg):
        seen.set()
        p.cancel()
    p.callback = cb
    with pytest.raises(Cancelled):
        evaluate_variants(s, [v], EvalConfig(ppl=["eng_Latn"], data=str(data), batch_size=2), p)
    assert seen.is_set() and s.active is v
    assert_weights(s.loaded.model, pruned)
