"""Lens (issue 13): losses and optimizer steps against a naive reference, reversibility (restore,
cancel, divergence), bad input, the export (reloads with stock transformers; everything outside
the top blocks bit-identical to the source), half precision, pruned models."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tiny_model, save_tiny
from polyprune.errors import Cancelled, PolypruneError
from polyprune.models import LoadedModel, find_blocks, load_model
from polyprune.progress import Progress
from polyprune.subspaces import LensConfig, SubspacesConfig, apply_lens, compute_subspaces, export_lens, load_subspaces
from polyprune.subspaces.lens import lr_factor, training_rows
from test_subspaces import LANGS, TEXTS, naive_decomposition, naive_means, write_texts

SEQ = 24


def loaded_tiny(family, tokenizer):
    return LoadedModel(make_tiny_model(family), tokenizer, f"tiny-{family}", None, "cpu", "float32")


def small_cfg(source, **kw) -> LensConfig:
    base = dict(central="eng_Latn", targets=["swh_Latn", "hin_Deva"], top_blocks=1, texts=source, samples=4,
                seq_len=SEQ, space_samples=5, space_seq_len=SEQ, lr=1e-3, accumulation=2, shuffle=False)
    return LensConfig(**(base | kw))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def test_two_steps_match_naive(family, tokenizer, tmp_path):
    """Loss values of every example and the weights after two AdamW steps, written out by hand."""
    loaded = loaded_tiny(family, tokenizer)
    model0 = copy.deepcopy(loaded.model)
    cfg = small_cfg(write_texts(tmp_path), samples=2, accumulation=1, warmup=0.0, max_grad_norm=1.0,
                    keep_zeros=False, lr=1e-3, weight_decay=0.1, retain_weight=0.7, align_weight=1.3,
                    separate_weight=0.9, direction_scale=1.5)
    res = apply_lens(loaded, cfg)

    # naive subspaces at the last block
    means = naive_means(model0, tokenizer, TEXTS, SEQ)[-1]  # [K, d], float64
    a, P = naive_decomposition(means)
    ahat = torch.tensor(a / np.linalg.norm(a), dtype=torch.float32)
    Pt = torch.tensor(P, dtype=torch.float32)
    dirs = {g: torch.tensor(P @ (means[LANGS.index(g)] - means[0]), dtype=torch.float32) for g in LANGS[1:]}

    def last_hidden(model, text):
        ids = tokenizer(text)["input_ids"][:SEQ]
        return model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]

    with torch.no_grad():
        h0 = {g: [last_hidden(model0, TEXTS[g][i]) for i in range(2)] for g in LANGS}
    m = copy.deepcopy(model0)
    _, blocks = find_blocks(m)
    params = list(blocks[-1].parameters())
    for p in m.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_sq = [torch.zeros_like(p) for p in params]
    # Adam divides by |g| + 1e-8: where the true gradient is 0 (e.g. a key bias, which softmax ignores)
    # the update is rounding noise over 1e-8, so such elements are not compared
    noise = {id(p): torch.ones_like(p, dtype=torch.bool) for p in params}
    for step, (i, lr) in enumerate([(0, 1e-3), (1, 0.5e-3)]):  # cosine without warm-up over 2 steps
        hc = last_hidden(m, TEXTS["eng_Latn"][i])
        retain = ((hc.mean(0) - h0["eng_Latn"][i].mean(0)) ** 2).mean()
        align = sep = 0.0
        for g in LANGS[1:]:
            ht = last_hidden(m, TEXTS[g][i])[-1]
            gap = ht @ ahat - hc[-1] @ ahat
            align = align + ((gap * ahat) ** 2).mean()
            sep = sep + ((Pt @ ht - Pt @ h0[g][i][-1] - 1.5 * dirs[g]) ** 2).mean()
        total = 0.7 * retain + 1.3 * align + 0.9 * sep
        row = res.history[step]
        assert (row["example"], row["step"], row["lr"]) == (i, step, pytest.approx(lr))
        assert row["retain"] == pytest.approx(float(retain.detach()), rel=1e-4, abs=1e-9)
        assert row["align"] == pytest.approx(float(align.detach()), rel=1e-4, abs=1e-9)
        assert row["separate"] == pytest.approx(float(sep.detach()), rel=1e-4, abs=1e-9)
        assert row["loss"] == pytest.approx(float(total.detach()), rel=1e-4)
        if step == 0:
            assert row["retain"] == pytest.approx(0.0, abs=1e-10)  # nothing has moved yet
        grads = torch.autograd.grad(total, params)
        for p, g in zip(params, grads):
            noise[id(p)] &= g.abs() < 1e-6
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        coef = min(1.0, 1.0 / (float(norm) + 1e-6))
        with torch.no_grad():
            t = step + 1
            for p, g, ea, es in zip(params, grads, exp_avg, exp_sq):
                g = g * coef
                if p.dim() >= 2:
                    p.mul_(1 - lr * 0.1)  # decoupled weight decay, matrices only
                ea.mul_(0.9).add_(0.1 * g)
                es.mul_(0.999).add_(0.001 * g * g)
                denom = (es / (1 - 0.999 ** t)).sqrt() + 1e-8
                p.sub_(lr * (ea / (1 - 0.9 ** t)) / denom)
    got = dict(loaded.model.named_parameters())
    compared = 0
    for name, p in m.named_parameters():
        keep = ~noise.get(id(p), torch.zeros_like(p, dtype=torch.bool))
        compared += int(keep.sum())
        np.testing.assert_allclose(got[name].detach()[keep].numpy(), p.detach()[keep].numpy(), rtol=1e-4, atol=2e-6,
                                   err_msg=name)
    assert compared > 0.9 * sum(p.numel() for p in m.parameters())
    assert res.steps == 2 and res.blocks == [len(blocks) - 1]
    assert res.before["swh_Latn"]["shift"] == 0.0 and res.after["swh_Latn"]["retain_drift"] > 0


def test_lr_schedule_is_transformers_cosine():
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_cosine_schedule_with_warmup(opt, 2, 25)
    for step in range(25):
        assert lr_factor(step, 25, 2) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_restore_is_bit_exact_and_only_top_blocks_change(tokenizer, tmp_path):
    loaded = loaded_tiny("gemma3", tokenizer)
    snap = snapshot(loaded.model)
    flags = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
    res = apply_lens(loaded, small_cfg(write_texts(tmp_path), top_blocks=2))
    prefix, _ = find_blocks(loaded.model)
    assert res.blocks == [1, 2]
    changed = {k for k, v in loaded.model.state_dict().items() if not torch.equal(v, snap[k])}
    assert changed and all(k.startswith((f"{prefix}.1.", f"{prefix}.2.")) for k in changed)
    assert {n: p.requires_grad for n, p in loaded.model.named_parameters()} == flags
    assert all(p.grad is None for p in loaded.model.parameters())
    res.restore()
    assert_same(loaded.model, snap)


def test_cancel_leaves_model_as_it_was(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    snap = snapshot(loaded.model)
    seen = []

    def cb(frac, msg):
        seen.append(msg)
        if "example 3/" in msg:
            prog.cancel()

    prog = Progress(cb, min_interval=0.0)
    with pytest.raises(Cancelled):
        apply_lens(loaded, small_cfg(write_texts(tmp_path), accumulation=1), prog)
    assert any("step 2/" in m for m in seen)  # two optimizer steps had changed the weights
    assert_same(loaded.model, snap)
    assert all(p.requires_grad for p in loaded.model.parameters())
    assert all(p.grad is None for p in loaded.model.parameters())


def test_divergence_restores_and_explains(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    snap = snapshot(loaded.model)
    with pytest.raises(PolypruneError, match="Lens training diverged: the loss became inf") as e:
        apply_lens(loaded, small_cfg(write_texts(tmp_path), direction_scale=1e30))
    assert "lower the learning rate" in e.value.fix
    assert_same(loaded.model, snap)


def test_divergence_after_steps_restores(tokenizer, tmp_path, monkeypatch):
    """A loss that turns NaN after the weights have moved still leaves the model as it was."""
    from polyprune.subspaces import lens

    loaded = loaded_tiny("llama", tokenizer)
    snap = snapshot(loaded.model)
    real, calls = lens.mse, {"n": 0}

    def flaky(x, y):
        calls["n"] += 1
        out = real(x, y)
        return out * float("nan") if calls["n"] > 15 else out

    monkeypatch.setattr(lens, "mse", flaky)
    with pytest.raises(PolypruneError, match="the loss became nan at example 4"):
        apply_lens(loaded, small_cfg(write_texts(tmp_path), accumulation=1))
    assert_same(loaded.model, snap)


def test_top_blocks_larger_than_model(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    snap = snapshot(loaded.model)
    with pytest.raises(PolypruneError, match="top_blocks is 3, but the model has only 2 blocks") as e:
        apply_lens(loaded, small_cfg(write_texts(tmp_path), top_blocks=3))
    assert "between 1 and 2" in e.value.fix
    assert_same(loaded.model, snap)


def test_only_warm_up_steps_is_refused(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    with pytest.raises(PolypruneError, match="1 optimizer step\\(s\\), all of them warm-up steps") as e:
        apply_lens(loaded, small_cfg(write_texts(tmp_path), samples=4, accumulation=8, warmup=0.05))
    assert "warmup to 0" in e.value.fix


def test_default_top_blocks_scale_with_depth():
    cfg = LensConfig().validate()
    assert [cfg.blocks_for(n) for n in (2, 18, 24, 32, 80)] == [1, 1, 2, 2, 5]


def test_fewer_training_rows_than_asked(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    snap = snapshot(loaded.model)
    with pytest.raises(PolypruneError, match="5 eng_Latn sentences, but 6 were asked for"):
        apply_lens(loaded, small_cfg(write_texts(tmp_path), samples=6))
    assert_same(loaded.model, snap)


def test_subspaces_without_a_target(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    src = write_texts(tmp_path)
    sub = compute_subspaces(loaded, SubspacesConfig(languages=["eng_Latn", "swh_Latn"], texts=src, samples=5, seq_len=SEQ))
    path = sub.save(tmp_path / "s.npz")
    snap = snapshot(loaded.model)
    with pytest.raises(PolypruneError, match="hin_Deva is not among the subspace languages"):
        apply_lens(loaded, small_cfg(src, subspaces=str(path)))
    assert_same(loaded.model, snap)
    # with the right languages, a saved file is used as it is
    res = apply_lens(loaded, small_cfg(src, targets=["swh_Latn"], subspaces=str(path)))
    np.testing.assert_array_equal(res.subspaces.specific, sub.specific)


@pytest.mark.parametrize("change, message", [
    ({"targets": []}, "at least one target"),
    ({"targets": ["eng_Latn"]}, "central language eng_Latn is also a target"),
    ({"lr": 0}, "lr must be above 0"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"top_blocks": 0}, "top_blocks must be an integer at least 1"),
    ({"epochs": 0}, "epochs must be an integer at least 1"),
    ({"warmup": 1.5}, "warmup must be at least 0.0 and at most 1.0"),
    ({"retain_weight": 0, "align_weight": 0, "separate_weight": 0}, "Every Lens loss weight is 0"),
    ({"align_weight": -1}, "align_weight must be at least 0"),
    ({"keep_zeros": "yes"}, "keep_zeros must be true or false"),
    ({"central": "xx_Yyyy"}, "Unknown language"),
])
def test_lens_config_rejects(change, message):
    with pytest.raises(PolypruneError, match=message):
        LensConfig(**change).validate()


def test_training_rows_from_a_column_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({g: TEXTS[g][i] for g in LANGS}, ensure_ascii=False) for i in range(5)) + "\n",
                    encoding="utf-8")
    rows = training_rows(small_cfg(f"file:{path}", samples=3).validate())
    assert rows == [{g: TEXTS[g][i] for g in LANGS} for i in range(3)]
    with pytest.raises(PolypruneError, match="has 5 parallel rows, but 9 were asked for"):
        training_rows(small_cfg(f"file:{path}", samples=9).validate())


def test_keep_zeros_keeps_a_pruned_block_pruned(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    _, blocks = find_blocks(loaded.model)
    w = blocks[-1].mlp.up_proj.weight
    with torch.no_grad():
        w[:, ::2] = 0
    zero = w == 0
    before = w.detach().clone()
    apply_lens(loaded, small_cfg(write_texts(tmp_path)))
    assert torch.all(w[zero] == 0)
    assert not torch.equal(w[~zero], before[~zero])


def test_bfloat16_trains_float32_masters(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    loaded.model.to(torch.bfloat16)
    snap = snapshot(loaded.model)
    res = apply_lens(loaded, small_cfg(write_texts(tmp_path), lr=1e-2))
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    assert any(not torch.equal(v, snap[k]) for k, v in loaded.model.state_dict().items())
    assert np.isfinite(res.history[-1]["loss"])
    res.restore()
    assert_same(loaded.model, snap)


def test_export_reloads_and_keeps_everything_outside_the_top_blocks(family, tokenizer, tmp_path):
    """The issue's check: a Lens export reloads with stock transformers, and every tensor outside the
    top k blocks is bit-identical to the source checkpoint."""
    src_dir = save_tiny(tmp_path, family)
    loaded = load_model(str(src_dir))
    res = apply_lens(loaded, small_cfg(write_texts(tmp_path), top_blocks=1, lr=1e-2))
    out = export_lens(loaded, res, tmp_path / "lens-out")
    source = AutoModelForCausalLM.from_pretrained(str(src_dir)).state_dict()
    reloaded_model = AutoModelForCausalLM.from_pretrained(str(out))
    reloaded = reloaded_model.state_dict()
    prefix, blocks = find_blocks(reloaded_model)
    top = f"{prefix}.{len(blocks) - 1}."
    assert set(reloaded) == set(source)
    inside = [k for k in source if k.startswith(top)]
    assert inside
    for k, v in source.items():
        if k.startswith(top):
            assert torch.equal(reloaded[k], loaded.model.state_dict()[k]), k
        else:
            assert torch.equal(reloaded[k], v), k
    assert any(not torch.equal(reloaded[k], source[k]) for k in inside)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Lens (language subspaces)" in card and "| lr | 0.01 |" in card and "Swahili (swh_Latn)" in card
    summary = json.loads((out / "lens_config.json").read_text(encoding="utf-8"))
    assert summary["config"]["targets"] == ["swh_Latn", "hin_Deva"] and summary["blocks"] == [len(blocks) - 1]
    assert load_subspaces(out / "subspaces.npz").languages == LANGS
    assert (out / "lens_history.csv").read_text().startswith("epoch,step,example,lr,retain,align,separate,loss")


def test_export_refuses_the_source_folder(tokenizer, tmp_path):
    src_dir = save_tiny(tmp_path, "llama")
    loaded = load_model(str(src_dir))
    res = apply_lens(loaded, small_cfg(write_texts(tmp_path), samples=2, warmup=0.0))
    before = sorted(p.name for p in src_dir.iterdir())
    with pytest.raises(PolypruneError, match="would overwrite the source"):
        export_lens(loaded, res, src_dir)
    assert sorted(p.name for p in src_dir.iterdir()) == before
