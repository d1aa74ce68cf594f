"""The stage functions the window and the command line share."""
from __future__ import annotations

import torch

from conftest import save_tiny
from polyprune.evaluation.stats import paired_difference
from polyprune.models import load_model
from polyprune.pipeline import evaluate, evaluate_variant, prune_model
from polyprune.pruning import dense_view
from polyprune.recipe import DemoConfig, EvalConfig, PruneConfig, Recipe


def flores(tmp_path):
    d = tmp_path / "data" / "flores200" / "devtest"
    d.mkdir(parents=True)
    (d / "eng_Latn.devtest").write_text("".join(f"Sentence {i} is here, with words.\n" for i in range(6)))
    return tmp_path / "data"


def test_sparsegpt_dense_and_pruned_evaluation_gives_back_the_very_weights(tmp_path):
    """Evaluating dense and pruned through the stage the window uses leaves every weight exactly
    as SparseGPT made it (it also changes kept weights, so re-applying a mask would not do)."""
    lm = load_model(str(save_tiny(tmp_path, "llama")))
    recipe = Recipe(demos=DemoConfig(shots=1, samples=4, seq_len=16),
                    pruning=PruneConfig(method="sparsegpt", sparsity=0.5, blocksize=16))
    result, _ = prune_model(lm, recipe)
    pruned = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    cfg = EvalConfig(ppl=["eng_Latn"], data=str(flores(tmp_path)), bootstrap=0)
    comp = evaluate_variant(lm, cfg, result)
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, pruned[n]), n
    # and the dense numbers are those of the dense weights (restored exactly inside the view)
    with dense_view(lm.model, result.records):
        dense_again = evaluate(lm, cfg)
    assert comp.dense[0].value == dense_again[0].value
    assert comp.pruned[0].value != comp.dense[0].value
    row, = comp.rows()
    assert row["delta"] == comp.pruned[0].value - comp.dense[0].value
    d, lo, hi = paired_difference({"nll": comp.pruned[0].extra["item_nll"], "tokens": comp.pruned[0].extra["item_tokens"]},
                                  {"nll": comp.dense[0].extra["item_nll"], "tokens": comp.dense[0].extra["item_tokens"]},
                                  iters=200)
    assert lo <= d <= hi
