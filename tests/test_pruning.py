"""Pruning against a naive reference, N:M validity, exact sparsity, cancel restores weights."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, make_tiny_model, make_tokenizer
from polyprune.calibration import tokenize
from polyprune.errors import Cancelled, PolypruneError
from polyprune.models import all_prunable, find_blocks, prunable_linears, weight_matrix
from polyprune.progress import Progress
from polyprune.pruning import prune
from polyprune.pruning.masking import select_mask
from polyprune.recipe import PruneConfig

TEXTS = [
    "English: The cat sleeps on the warm mat.</s>French: Le chat dort sur le tapis chaud.</s>",
    "English: Rain is expected tomorrow.</s>French: De la pluie est prévue demain.</s>",
    "Swahili: Habari za asubuhi, rafiki yangu.</s>",
    "中文：今天天气很好。</s>English: The weather is nice today.</s>",
    "short",
]


def calib(seq_len=48):
    return tokenize(TEXTS, make_tokenizer(), seq_len)


def naive_wanda(model, cal, sparsity, nm=None):
    """Reference: for each block, a whole-model forward (earlier blocks already pruned) with hooks,
    padding masked by hand, then a per-row (or per-group) sort."""
    prefix, blocks = find_blocks(model)
    masks = {}
    for i, block in enumerate(blocks):
        lin = prunable_linears(block)
        sums = {n: 0 for n in lin}
        cur = {}

        def mk(n):
            def hook(mod, inp, out):
                x = inp[0].double().reshape(-1, inp[0].shape[-1])
                m = cur["mask"].reshape(-1).double()
                total = torch.zeros(x.shape[1], dtype=torch.float64)
                for r in range(x.shape[0]):
                    if m[r] > 0:
                        total += x[r] ** 2
                sums[n] = sums[n] + total
            return hook
        hs = [m.register_forward_hook(mk(n)) for n, m in lin.items()]
        with torch.no_grad():
            for s in range(len(cal)):  # one sample at a time, full model forward
                ids = cal.input_ids[s:s + 1]
                att = cal.attention_mask[s:s + 1]
                L = int(att.sum())
                cur["mask"] = att[:, :L]
                model(input_ids=ids[:, :L], attention_mask=att[:, :L])
        for h in hs:
            h.remove()
        for n, m in lin.items():
            W = weight_matrix(m)
            score = W.abs().double() * torch.sqrt(sums[n] / len(cal))[None, :]
            out_f, in_f = score.shape
            mask = torch.zeros_like(score, dtype=torch.bool)
            for r in range(out_f):
                if nm is None:
                    k = int(in_f * sparsity)
                    order = sorted(range(in_f), key=lambda j: float(score[r, j]))
                    mask[r, order[:k]] = True
                else:
                    N, M = nm
                    for g in range(0, in_f, M):
                        order = sorted(range(g, g + M), key=lambda j: float(score[r, j]))
                        mask[r, order[:N]] = True
            with torch.no_grad():
                W[mask] = 0
            masks[f"{prefix}.{i}.{n}"] = mask
    return masks


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wanda_matches_naive_reference(family, pattern):
    model = make_tiny_model(family)
    ref_model = copy.deepcopy(model)
    cal = calib()
    sparsity = 0.5
    nm = None if pattern == "unstructured" else (2, 4)
    ref = naive_wanda(ref_model, cal, sparsity, nm)
    res = prune(model, PruneConfig(method="wanda", sparsity=sparsity, pattern=pattern, batch_size=2), cal)
    assert set(res.records) == set(ref)
    for name, rec in res.records.items():
        agree = (rec.mask == ref[name]).float().mean().item()
        assert agree > 0.995, f"{family} {name}: mask agreement {agree:.4f}"
    # and the models end up (almost) the same
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.allclose(p1, p2, atol=1e-5) or (p1 - p2).abs().gt(0).float().mean() < 0.01, n1


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_row_sparsity_and_untouched_rest(family):
    model = make_tiny_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = prune(model, PruneConfig(method="wanda", sparsity=0.3), calib())
    pruned = all_prunable(model)
    assert set(res.records) == set(pruned)
    for name, m in pruned.items():
        W = weight_matrix(m)
        zeros = (W == 0).sum(1)
        assert torch.all(zeros == int(W.shape[1] * 0.3)), name
    pruned_params = {f"{n}.weight" for n in pruned}
    for n, p in model.named_parameters():
        if n not in pruned_params:
            assert torch.equal(p, before[n]), f"{n} changed but is not prunable"


@pytest.mark.parametrize("pattern,N,M", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_validity(pattern, N, M):
    model = make_tiny_model("llama")
    prune(model, PruneConfig(method="wanda", sparsity=N / M, pattern=pattern), calib())
    for name, m in all_prunable(model).items():
        W = weight_matrix(m)
        groups = (W == 0).reshape(W.shape[0], -1, M).sum(-1)
        assert torch.all(groups == N), name


def test_magnitude_layer_group():
    w = torch.randn(6, 10)
    mask = select_mask(w.abs(), 0.5, group="layer")
    assert int(mask.sum()) == 30
    assert w.abs()[mask].max() <= w.abs()[~mask].min()


def test_padding_never_enters_statistics():
    """Appending padding to a sample must not change the masks."""
    model = make_tiny_model("llama")
    m2 = copy.deepcopy(model)
    cal = calib()
    r1 = prune(model, PruneConfig(method="wanda", sparsity=0.5, batch_size=1), cal)
    pad = torch.zeros(len(cal), 7, dtype=torch.long)
    cal.input_ids = torch.cat([cal.input_ids, pad], 1)
    cal.attention_mask = torch.cat([cal.attention_mask, pad], 1)
    r2 = prune(m2, PruneConfig(method="wanda", sparsity=0.5, batch_size=5), cal)
    for k in r1.records:
        assert (r1.records[k].mask == r2.records[k].mask).float().mean() > 0.999, k


@pytest.mark.parametrize("family", FAMILIES)
def test_cancel_restores_every_weight(family):
    model = make_tiny_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prog = Progress()
    calls = {"n": 0}

    def cb(frac, msg):
        calls["n"] += 1
        if "block 2" in msg:
            prog.cancel()
    prog.callback = cb
    prog.min_interval = 0
    with pytest.raises(Cancelled):
        prune(model, PruneConfig(method="wanda", sparsity=0.5), calib(), progress=prog)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("kwargs,needle", [
    (dict(sparsity=1.0), "outside [0, 1)"),
    (dict(sparsity=-0.1), "outside [0, 1)"),
    (dict(sparsity=0.6, pattern="2:4"), "2/4"),
    (dict(method="obs"), "Unknown pruning method"),
    (dict(pattern="3:2"), "Unknown sparsity pattern"),
])
def test_bad_settings(kwargs, needle):
    with pytest.raises(PolypruneError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        PruneConfig(**kwargs).validate()


def test_wanda_without_calibration():
    with pytest.raises(PolypruneError, match="calibration"):
        prune(make_tiny_model("gpt2"), PruneConfig(method="wanda"))
