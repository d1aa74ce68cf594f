"""SparseGPT against a naive reference (dense inverses, column by column), and on tiny models."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, make_tiny_model, make_tokenizer
from polyprune.calibration import tokenize
from polyprune.errors import Cancelled, PolypruneError
from polyprune.models import all_prunable, weight_matrix
from polyprune.progress import Progress
from polyprune.pruning import prune
from polyprune.recipe import PruneConfig
from polyprune.pruning.sparsegpt import HessianStats, sparsegpt_prune

TEXTS = [
    "English: The cat sleeps on the warm mat.</s>French: Le chat dort sur le tapis chaud.</s>",
    "English: Rain is expected tomorrow.</s>French: De la pluie est prévue demain.</s>",
    "Swahili: Habari za asubuhi, rafiki yangu.</s>",
    "中文：今天天气很好。</s>English: The weather is nice today.</s>",
    "Deutsch: Der Zug fährt um acht Uhr ab.</s>English: The train leaves at eight.</s>",
    "short",
]


def calib(seq_len=48):
    return tokenize(TEXTS, make_tokenizer(), seq_len)


def naive_sparsegpt(W, H, sparsity, nm=None, group="row", blocksize=128, percdamp=0.01):
    """Reference without Cholesky and without lazy batching: for every column j the inverse Hessian
    of the columns not yet processed, ``inv(H[j:, j:])``, is computed densely, and the OBS update
    ``W[:, j:] -= (w_j - q_j) / Hinv_00 · Hinv[0, :]`` is applied to all remaining columns at once.
    The mask of each column block is chosen at the block start from ``w² / [inv(H[j:, j:])]_00``."""
    W = W.double().clone()
    H = H.double().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=torch.float64)
    hinv_jj = [float(torch.linalg.inv(H[j:, j:])[0, 0]) for j in range(cols)]
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if nm is None:
            sal = {(r, j): float(W[r, j]) ** 2 / hinv_jj[j] for r in range(rows) for j in range(i1, i2)}
            if group == "row":
                k = int(i2 * sparsity) - int(i1 * sparsity)
                for r in range(rows):
                    for j in sorted(range(i1, i2), key=lambda j: (sal[(r, j)], j))[:k]:
                        mask[r, j] = True
            else:
                k = int(rows * i2 * sparsity) - int(rows * i1 * sparsity)
                for r, j in sorted(sal, key=lambda rj: (sal[rj], rj[0], rj[1]))[:k]:
                    mask[r, j] = True
        for j in range(i1, i2):
            if nm is not None and (j - i1) % nm[1] == 0:
                for r in range(rows):
                    group_cols = range(j, j + nm[1])
                    for c in sorted(group_cols, key=lambda c: (float(W[r, c]) ** 2 / hinv_jj[c], c))[:nm[0]]:
                        mask[r, c] = True
            Hinv = torch.linalg.inv(H[j:, j:])
            w = W[:, j].clone()
            q = w.clone()
            q[mask[:, j]] = 0
            W[:, j:] -= ((w - q) / Hinv[0, 0])[:, None] * Hinv[0, :][None, :]
            W[:, j] = q
    mask |= dead[None, :]
    W[mask] = 0
    return W, mask


def random_problem(rows=12, cols=40, tokens=200, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    # correlated inputs with unequal scales, like real activations
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g, dtype=torch.float64)
    X *= torch.rand(cols, generator=g, dtype=torch.float64) * 3
    for j in dead:
        X[:, j] = 0
    st = HessianStats(cols, "cpu", torch.float64)
    st.add(X, None)
    return W, st.hessian(), X


@pytest.mark.parametrize("group", ["row", "layer"])
@pytest.mark.parametrize("sparsity,blocksize", [(0.5, 16), (0.3, 16), (0.6, 128), (0.45, 7)])
def test_unstructured_matches_naive_reference(group, sparsity, blocksize):
    W, H, _ = random_problem(seed=int(sparsity * 100) + blocksize)
    ref_w, ref_m = naive_sparsegpt(W, H, sparsity, None, group, blocksize)
    new_w, mask = sparsegpt_prune(W, H, sparsity, None, group, blocksize)
    assert torch.equal(mask, ref_m)
    assert torch.allclose(new_w, ref_w, atol=1e-9, rtol=1e-7)
    if group == "row":
        assert torch.all(mask.sum(1) == int(W.shape[1] * sparsity))  # exact per-row count
    else:
        assert int(mask.sum()) == int(W.numel() * sparsity)


@pytest.mark.parametrize("nm,blocksize", [((2, 4), 16), ((4, 8), 8), ((2, 4), 128)])
def test_nm_matches_naive_reference(nm, blocksize):
    W, H, _ = random_problem(cols=32, seed=3)
    ref_w, ref_m = naive_sparsegpt(W, H, nm[0] / nm[1], nm, "row", blocksize)
    new_w, mask = sparsegpt_prune(W, H, nm[0] / nm[1], nm, "row", blocksize)
    assert torch.equal(mask, ref_m)
    assert torch.allclose(new_w, ref_w, atol=1e-9, rtol=1e-7)
    assert torch.all(mask.reshape(W.shape[0], -1, nm[1]).sum(-1) == nm[0])


def test_dead_inputs_and_float32():
    W, H, X = random_problem(seed=5, dead=(3, 17))
    ref_w, ref_m = naive_sparsegpt(W, H, 0.5, blocksize=16)
    new_w, mask = sparsegpt_prune(W.float(), H.float(), 0.5, blocksize=16)
    assert new_w.dtype == torch.float32
    assert mask[:, [3, 17]].all()  # dead inputs removed (they have zero saliency)
    assert (mask == ref_m).float().mean() > 0.99
    assert torch.allclose(new_w.double(), ref_w, atol=1e-3, rtol=1e-3)
    assert torch.all(mask.sum(1) == 20)


def test_obs_update_beats_plain_masking():
    """SparseGPT's reconstruction error is far below zeroing the same mask without updates."""
    W, H, X = random_problem(cols=64, tokens=400, seed=7)
    new_w, mask = sparsegpt_prune(W, H, 0.5, blocksize=16)
    masked = W.clone()
    masked[mask] = 0
    err_obs = (X @ (W - new_w).t()).norm()
    err_mask = (X @ (W - masked).t()).norm()
    assert err_obs < 0.8 * err_mask


def test_identity_hessian_is_magnitude_pruning():
    """No calibration signal (H = I, used for modules that saw no token): no cross-updates."""
    W = torch.randn(6, 32, dtype=torch.float64)
    new_w, mask = sparsegpt_prune(W, torch.eye(32, dtype=torch.float64), 0.5, blocksize=8)
    assert torch.equal(new_w[~mask], W[~mask])
    for r in range(6):
        for b in range(0, 32, 8):
            kept, removed = W[r, b:b + 8][~mask[r, b:b + 8]].abs(), W[r, b:b + 8][mask[r, b:b + 8]].abs()
            assert len(removed) == 4 and removed.max() <= kept.min()


def test_bad_nm_blocksize():
    W, H, _ = random_problem(cols=32)
    with pytest.raises(PolypruneError, match="multiple of M"):
        sparsegpt_prune(W, H, 0.5, (2, 4), blocksize=6)
    with pytest.raises(PolypruneError, match="multiple of M"):
        PruneConfig(method="sparsegpt", sparsity=0.5, pattern="2:4", blocksize=6).validate()


# --------------------------------------------------------------------------------------------
# whole models
# --------------------------------------------------------------------------------------------
def dense_layer_inputs(model, cal):
    """Inputs of every prunable layer on the dense model, real tokens only: {name: [T, in]}."""
    xs = {}
    mods = all_prunable(model)
    cur = {}

    def mk(n):
        def hook(mod, inp, out):
            x = inp[0].reshape(-1, inp[0].shape[-1])
            xs.setdefault(n, []).append(x[cur["m"].reshape(-1)].detach().clone())
        return hook
    hs = [m.register_forward_hook(mk(n)) for n, m in mods.items()]
    with torch.no_grad():
        for b in range(len(cal)):
            cur["m"] = cal.attention_mask[b:b + 1].bool()
            model(input_ids=cal.input_ids[b:b + 1], attention_mask=cal.attention_mask[b:b + 1])
    for h in hs:
        h.remove()
    return {n: torch.cat(v) for n, v in xs.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsegpt_on_tiny_models(family):
    cal = calib()
    dense = make_tiny_model(family)
    X = dense_layer_inputs(dense, cal)
    W0 = {n: weight_matrix(m).clone() for n, m in all_prunable(dense).items()}
    sg, wd = make_tiny_model(family), make_tiny_model(family)
    r_sg = prune(sg, PruneConfig(method="sparsegpt", sparsity=0.5, blocksize=16, batch_size=2), cal)
    prune(wd, PruneConfig(method="wanda", sparsity=0.5, batch_size=2), cal)
    better = 0
    mods_sg, mods_wd = all_prunable(sg), all_prunable(wd)
    for name, m in mods_sg.items():
        W = weight_matrix(m)
        assert torch.all((W == 0).sum(1) >= W.shape[1] // 2), name
        assert torch.all(r_sg.records[name].mask.sum(1) == W.shape[1] // 2), name
        e_sg = (X[name] @ (W0[name] - W).t()).norm()
        e_wd = (X[name] @ (W0[name] - weight_matrix(mods_wd[name])).t()).norm()
        better += bool(e_sg < e_wd)
    assert better >= 0.8 * len(mods_sg), f"{family}: SparseGPT better on {better}/{len(mods_sg)} layers"
    assert abs(r_sg.overall - 0.5) < 1e-9


def test_sparsegpt_nm_on_model():
    model = make_tiny_model("llama")
    prune(model, PruneConfig(method="sparsegpt", sparsity=0.5, pattern="2:4", blocksize=16), calib())
    for name, m in all_prunable(model).items():
        W = weight_matrix(m)
        assert torch.all((W == 0).reshape(W.shape[0], -1, 4).sum(-1) >= 2), name


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_sparsegpt_cancel_restores_every_weight(family):
    model = make_tiny_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prog = Progress(min_interval=0)

    def cb(frac, msg):
        if "block 2" in msg:
            prog.cancel()
    prog.callback = cb
    with pytest.raises(Cancelled):
        prune(model, PruneConfig(method="sparsegpt", sparsity=0.5), calib(), progress=prog)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_sparsegpt_restore_after_success():
    from polyprune.pruning import restore
    model = make_tiny_model("xglm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = prune(model, PruneConfig(method="sparsegpt", sparsity=0.6), calib())
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    restore(model, res.records)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_hessian_ignores_padding():
    model = make_tiny_model("llama")
    m2 = copy.deepcopy(model)
    cal = calib()
    r1 = prune(model, PruneConfig(method="sparsegpt", sparsity=0.5, batch_size=1), cal)
    pad = torch.zeros(len(cal), 5, dtype=torch.long)
    cal.input_ids = torch.cat([cal.input_ids, pad], 1)
    cal.attention_mask = torch.cat([cal.attention_mask, pad], 1)
    r2 = prune(m2, PruneConfig(method="sparsegpt", sparsity=0.5, batch_size=6), cal)
    for k in r1.records:
        assert (r1.records[k].mask == r2.records[k].mask).float().mean() > 0.999, k


def test_sparsegpt_needs_calibration():
    with pytest.raises(PolypruneError, match="calibration"):
        prune(make_tiny_model("gpt2"), PruneConfig(method="sparsegpt"))
