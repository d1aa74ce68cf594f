"""OWL layer-wise sparsity against a naive reference: outlier ratios, allocation, exact mean."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, make_tiny_model, make_tokenizer
from polyprune.calibration import tokenize
from polyprune.errors import PolypruneError
from polyprune.models import find_blocks, prunable_linears, weight_matrix
from polyprune.pruning.owl import allocate, outlier_ratio
from polyprune.pruning import prune
from polyprune.recipe import PruneConfig

TEXTS = [
    "English: The cat sleeps on the warm mat.</s>French: Le chat dort sur le tapis chaud.</s>",
    "English: Rain is expected tomorrow.</s>French: De la pluie est prévue demain.</s>",
    "Swahili: Habari za asubuhi, rafiki yangu.</s>",
    "中文：今天天气很好。</s>English: The weather is nice today.</s>",
    "short",
]
M = 2.0  # tiny random models have few 5x-mean outliers; a lower M makes the ratios differ


def calib():
    return tokenize(TEXTS, make_tokenizer(), 48)


def naive_ratios(model, cal, m):
    """Dense model, one sample at a time, all hooks at once; Wanda scores per block in float64,
    counted one by one against m x their mean."""
    prefix, blocks = find_blocks(model)
    sums, cur = {}, {}
    mods = {}
    for i, b in enumerate(blocks):
        for n, mod in prunable_linears(b).items():
            mods[(i, n)] = mod

    def mk(key):
        def hook(mod, inp, out):
            x = inp[0].double().reshape(-1, inp[0].shape[-1])
            keep = cur["mask"].reshape(-1).bool()
            sums[key] = sums.get(key, 0) + (x[keep] ** 2).sum(0)
        return hook
    hs = [mod.register_forward_hook(mk(k)) for k, mod in mods.items()]
    with torch.no_grad():
        for s in range(len(cal)):
            L = int(cal.attention_mask[s].sum())
            cur["mask"] = cal.attention_mask[s:s + 1, :L]
            model(input_ids=cal.input_ids[s:s + 1, :L], attention_mask=cal.attention_mask[s:s + 1, :L])
    for h in hs:
        h.remove()
    ratios = []
    for i in range(len(blocks)):
        vals = []
        for (bi, n), mod in mods.items():
            if bi == i:
                score = weight_matrix(mod).double().abs() * torch.sqrt(sums[(bi, n)] / len(cal))[None, :]
                vals += score.flatten().tolist()
        mean = sum(vals) / len(vals)
        ratios.append(sum(1 for v in vals if v > m * mean) / len(vals))
    return ratios


def naive_allocate(ratios, s, lam):
    """OWL code: normalise to [0, 2λ], shift to mean 1 - s (densities), sparsity = 1 - density."""
    lo, hi = min(ratios), max(ratios)
    x = [(r - lo) * (1 / (hi - lo) * lam * 2) for r in ratios]
    mean = sum(x) / len(x)
    return [1 - (v - mean + (1 - s)) for v in x]


@pytest.mark.parametrize("family", FAMILIES)
def test_outlier_ratios_match_naive(family):
    from polyprune.pruning.owl import outlier_ratios
    model = make_tiny_model(family)
    cal = calib()
    prefix, blocks = find_blocks(model)
    selected = [{f"{prefix}.{i}.{n}": m for n, m in prunable_linears(b).items()} for i, b in enumerate(blocks)]
    got = outlier_ratios(model, cal, selected, M, batch_size=2)
    ref = naive_ratios(model, cal, M)
    assert got == pytest.approx(ref, abs=2e-3)  # a float32 score exactly at the threshold may flip


def test_allocation_matches_naive_and_mean_is_exact():
    ratios = [0.01, 0.03, 0.02, 0.08, 0.05, 0.011]
    for s, lam in [(0.5, 0.08), (0.7, 0.08), (0.3, 0.1), (0.55, 0.0)]:
        got = allocate(ratios, s, lam)
        if lam:
            assert got == pytest.approx(naive_allocate(ratios, s, lam), abs=1e-12)
        assert sum(got) / len(got) == pytest.approx(s, abs=1e-12)
        assert max(got) - min(got) == pytest.approx(2 * lam, abs=1e-12)
        # more outliers, lower sparsity
        order = sorted(range(len(ratios)), key=lambda i: ratios[i])
        assert all(got[a] >= got[b] for a, b in zip(order, order[1:]))


def test_equal_ratios_give_uniform():
    assert allocate([0.02, 0.02, 0.02], 0.5, 0.08) == [0.5, 0.5, 0.5]


def test_outlier_ratio_definition():
    s = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 50.0])
    # mean = 5.9; 5 x mean = 29.5; one outlier of ten
    assert outlier_ratio([s], 5.0) == pytest.approx(0.1)
    assert outlier_ratio([s[:5], s[5:]], 5.0) == pytest.approx(0.1)  # pooled over the linears


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_owl_pruning_targets(method, family):
    model = make_tiny_model(family)
    cal = calib()
    S = 0.5
    res = prune(model, PruneConfig(method=method, sparsity=S, layerwise="owl", owl_m=M, owl_lambda=0.1,
                                   blocksize=16), cal)
    targets = res.target_sparsity
    assert len(targets) == len(find_blocks(model)[1])
    assert sum(targets) / len(targets) == pytest.approx(S, abs=1e-12)  # plain mean preserved exactly
    assert max(targets) - min(targets) > 0.01  # the ratios did differ
    ref = naive_allocate(naive_ratios(make_tiny_model(family), cal, M), S, 0.1)
    assert targets == pytest.approx(ref, abs=1e-9)
    prefix, blocks = find_blocks(model)
    for i, b in enumerate(blocks):
        removed = total = 0
        for n, m in prunable_linears(b).items():
            W = weight_matrix(m)
            mask = res.records[f"{prefix}.{i}.{n}"].mask
            k = int(W.shape[1] * targets[i])
            assert torch.all(mask.sum(1) == k), (i, n)  # floor-rounded target in every row
            removed += W.shape[0] * k
            total += W.numel()
        assert res.block_sparsity[i] == pytest.approx(removed / total)


def test_owl_with_skipped_block_and_precomputed_ratios():
    model = make_tiny_model("gemma3")
    cal = calib()
    cfg = PruneConfig(method="wanda", sparsity=0.6, layerwise="owl", owl_m=M, skip_blocks=[1])
    res = prune(copy.deepcopy(model), cfg, cal)
    assert res.target_sparsity[1] is None and res.outlier_ratios[1] is None
    pruned = [t for t in res.target_sparsity if t is not None]
    assert sum(pruned) / len(pruned) == pytest.approx(0.6, abs=1e-12)
    res2 = prune(model, cfg, cal, outlier_ratios=res.outlier_ratios)
    for k in res.records:
        assert torch.equal(res.records[k].mask, res2.records[k].mask)


def test_owl_with_nm_is_refused():
    with pytest.raises(PolypruneError, match="unstructured"):
        PruneConfig(method="wanda", sparsity=0.5, pattern="2:4", layerwise="owl").validate()


def test_owl_lambda_too_large_leaves_model_untouched():
    model = make_tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(PolypruneError, match="owl_lambda"):
        prune(model, PruneConfig(method="wanda", sparsity=0.05, layerwise="owl", owl_m=M, owl_lambda=0.2), calib())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_owl_needs_calibration():
    with pytest.raises(PolypruneError, match="calibration"):
        prune(make_tiny_model("gpt2"), PruneConfig(method="magnitude", layerwise="owl"))


def test_owl_over_magnitude():
    model = make_tiny_model("xglm")
    res = prune(model, PruneConfig(method="magnitude", sparsity=0.5, layerwise="owl", owl_m=M), calib())
    assert sum(res.target_sparsity) / 2 == pytest.approx(0.5, abs=1e-12)
    assert res.overall == pytest.approx(sum(r.mask.sum().item() for r in res.records.values())
                                        / sum(r.mask.numel() for r in res.records.values()))
