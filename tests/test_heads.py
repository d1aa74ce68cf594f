"""Head scores against naive references on tiny models of five families (heads issue, methods.md §7).

The references here use no code of ``polyprune.heads``: the output projection comes from a
per-family table, ablation zeroes that projection's input columns in the weight and runs one full
forward per sentence and head, taylor multiplies the weight columns by explicit gates inside
``torch.func.functional_call`` and takes the autograd gradient.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, make_tokenizer

from polyprune.errors import PolypruneError
from polyprune.heads import HeadsConfig, find_heads, score_heads
from polyprune.heads.classify import classify
from polyprune.heads.results import load_results, save_results
from polyprune.models import LoadedModel

OPROJ = {"llama": "model.layers.{}.self_attn.o_proj", "gemma3": "model.layers.{}.self_attn.o_proj",
         "xglm": "model.layers.{}.self_attn.out_proj", "bloom": "transformer.h.{}.self_attention.dense",
         "gpt2": "transformer.h.{}.attn.c_proj"}
SENTENCES = {
    "eng_Latn": ["The cat sat on the mat today.", "A short one.", "Rain falls in the north every spring.",
                 "Numbers like 42 and 7 appear here."],
    "fra_Latn": ["Le chat dort sur le tapis.", "Il pleut beaucoup en automne.", "Une phrase courte.",
                 "Les enfants jouent dans le jardin."],
    "zho_Hans": ["今天天气很好。", "我们去公园散步吧。", "这是一个短句。", "猫在垫子上睡觉。"],
}


def write_texts(tmp_path, langs=SENTENCES):
    for lang, lines in langs.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"file:{tmp_path}/{{lang}}.txt"


def loaded_tiny(family, seed=0):
    return LoadedModel(make_tiny_model(family, seed), make_tokenizer(), f"tiny-{family}", None, "cpu", "float32")


@torch.no_grad()
def naive_nll(model, tok, texts, seq_len):
    """Token-pooled NLL: one forward per sentence, log_softmax of the model's own logits."""
    total, n = 0.0, 0
    for t in texts:
        ids = tok(t)["input_ids"][:seq_len]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids])
        lp = torch.log_softmax(model(input_ids=x).logits.float()[0, :-1], -1)
        total -= float(lp.gather(1, x[0, 1:, None]).sum())
        n += len(ids) - 1
    return total / n


def naive_ablation(model, family, tok, texts, seq_len, L, H):
    d = model.config.hidden_size // H if family != "xglm" else model.config.d_model // H
    base = naive_nll(model, tok, texts, seq_len)
    out = np.zeros((L, H))
    for l in range(L):
        mod = model.get_submodule(OPROJ[family].format(l))
        for h in range(H):
            w = mod.weight.data
            saved = w.clone()
            with torch.no_grad():
                if family == "gpt2":  # Conv1D weight [in, out]
                    w[h * d:(h + 1) * d, :] = 0
                else:
                    w[:, h * d:(h + 1) * d] = 0
                out[l, h] = naive_nll(model, tok, texts, seq_len) - base
                w.copy_(saved)
    return out


def naive_taylor(model, family, tok, texts, seq_len, L, H):
    d = model.config.hidden_size // H if family != "xglm" else model.config.d_model // H
    g = torch.ones(L, H, requires_grad=True)
    params = dict(model.named_parameters())
    n = 0
    loss = torch.zeros(())
    for t in texts:
        ids = tok(t)["input_ids"][:seq_len]
        if len(ids) < 2:
            continue
        p = dict(params)
        for l in range(L):
            name = OPROJ[family].format(l) + ".weight"
            gexp = g[l].repeat_interleave(d)
            p[name] = params[name] * (gexp[:, None] if family == "gpt2" else gexp[None, :])
        x = torch.tensor([ids])
        logits = torch.func.functional_call(model, p, (x,)).logits.float()[0, :-1]
        loss = loss - torch.log_softmax(logits, -1).gather(1, x[0, 1:, None]).sum()
        n += len(ids) - 1
    (grad,) = torch.autograd.grad(loss / n, g)
    return -grad.numpy()


@pytest.mark.parametrize("fam", ["llama", "gemma3", "gpt2", "bloom", "xglm"])
def test_scores_match_naive_reference(tmp_path, fam):
    loaded = loaded_tiny(fam)
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = write_texts(tmp_path)
    cfg = HeadsConfig(languages=list(SENTENCES), texts=src, samples=4, seq_len=12, batch_size=3, top_share=0.25)
    res = score_heads(loaded, cfg)
    L, H = res.layout.n_blocks, res.layout.n_heads
    tok = loaded.tokenizer
    for k, lang in enumerate(SENTENCES):
        texts = SENTENCES[lang]
        ref_a = naive_ablation(model, fam, tok, texts, 12, L, H)
        ref_t = naive_taylor(model, fam, tok, texts, 12, L, H)
        np.testing.assert_allclose(res.scores.ablation[k], ref_a, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(res.scores.taylor[k], ref_t, atol=2e-5, rtol=1e-4)
        assert res.scores.nll[k] == pytest.approx(naive_nll(model, tok, texts, 12), abs=1e-5)
        assert np.abs(ref_a).max() > 1e-3  # the heads matter at all
    # the model is left exactly as it was
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert not any("forward" in m.__dict__ for m in model.modules())
    # head_scores.csv holds exactly these numbers
    out = save_results(res, tmp_path / "out")
    rows = list(csv.DictReader(open(out / "head_scores.csv", encoding="utf-8")))
    assert list(rows[0]) == ["language", "layer", "head", "ablation", "taylor"]
    assert len(rows) == len(SENTENCES) * L * H
    for r in rows:
        k = list(SENTENCES).index(r["language"])
        assert float(r["ablation"]) == pytest.approx(res.scores.ablation[k, int(r["layer"]), int(r["head"])], abs=1e-9)
        assert float(r["taylor"]) == pytest.approx(res.scores.taylor[k, int(r["layer"]), int(r["head"])], abs=1e-9)


def test_ablation_recomputes_only_later_blocks(tmp_path, monkeypatch):
    """Ablating a head of block l runs blocks l..end only: per batch L + H·L(L+1)/2 block forwards."""
    loaded = loaded_tiny("gemma3")  # 3 blocks, 4 heads
    cls = type(loaded.model.model.layers[0])
    calls = []
    orig = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    cfg = HeadsConfig(languages=["eng_Latn"], texts=write_texts(tmp_path), samples=4, seq_len=12, batch_size=4,
                      kinds=["ablation"])
    score_heads(loaded, cfg)
    probe = 3 * 2  # find_heads: one model forward and one base forward
    assert len(calls) - probe == 3 + 4 * (3 + 2 + 1)


def test_layout_generic_and_gqa():
    for fam, (H, kv) in {"llama": (4, 2), "gemma3": (4, 1), "gpt2": (4, 4), "bloom": (4, 4), "xglm": (4, 4)}.items():
        model = make_tiny_model(fam)
        lay = find_heads(model)
        assert (lay.n_heads, lay.n_kv_heads, lay.head_dim, lay.hidden_size) == (H, kv, 8, 32)
        assert [b.out_proj for b in lay.blocks] == [OPROJ[fam].format(i) for i in range(lay.n_blocks)]


def test_results_reload_and_settings(tmp_path):
    loaded = loaded_tiny("llama")
    src = write_texts(tmp_path)
    cfg = HeadsConfig(languages=list(SENTENCES), texts=src, samples=3, seq_len=10, kinds=["taylor"], cross=True,
                      cross_split="dev", cross_samples=3, bootstrap=50, top_share=0.25)
    res = score_heads(loaded, cfg)
    out = save_results(res, tmp_path / "r")
    back = load_results(out)
    np.testing.assert_array_equal(back.scores.taylor, res.scores.taylor)
    assert np.isnan(back.scores.ablation).all()
    rows = list(csv.DictReader(open(out / "head_scores.csv", encoding="utf-8")))
    assert rows[0]["ablation"] == ""
    settings = json.loads((out / "head_settings.json").read_text())
    assert settings["settings"]["languages"] == list(SENTENCES)
    assert back.cross is not None
    np.testing.assert_allclose(back.cross.delta, res.cross.delta)
    assert (out / "classification.csv").exists() and (out / "cross_effects.csv").exists()
    with pytest.raises(PolypruneError, match="already exists"):
        save_results(res, out)


def test_classification_rule():
    """q = 2/8 → 2 heads per top set; m = 2."""
    s = np.zeros((3, 2, 4))
    s[0, 0, 0], s[0, 0, 1] = 5, 4      # eng top: (0,0), (0,1)
    s[1, 0, 0], s[1, 1, 3] = 5, 4      # fra top: (0,0), (1,3)
    s[2, 1, 2], s[2, 1, 1] = 5, 4      # zho top: (1,2), (1,1)
    c = classify(s, ["eng_Latn", "fra_Latn", "zho_Hans"], top_share=0.25, min_shared=2)
    assert c.k == 2
    assert c.specific == {"eng_Latn": [(0, 1)], "fra_Latn": [(1, 3)], "zho_Hans": [(1, 2), (1, 1)]}
    assert c.shared == [(0, 0)]
    assert c.label[0, 0] == -2 and c.label[0, 1] == 0 and c.label[1, 3] == 1 and c.label[0, 2] == -1
    c3 = classify(s, ["eng_Latn", "fra_Latn", "zho_Hans"], top_share=0.25, min_shared=3)
    assert c3.shared == [] and c3.label[0, 0] == -1  # in 2 top sets: neither specific nor shared


# ---------------------------------------------------------------------------------------------
# bad input: one clear message, nothing modified
# ---------------------------------------------------------------------------------------------
def test_unknown_language(tmp_path):
    loaded = loaded_tiny("llama")
    with pytest.raises(PolypruneError, match="Unknown language 'klingon'"):
        score_heads(loaded, HeadsConfig(languages=["eng_Latn", "klingon"], texts=write_texts(tmp_path)))


def test_fewer_sentences_than_asked(tmp_path):
    loaded = loaded_tiny("llama")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with pytest.raises(PolypruneError, match="has 4 eng_Latn sentences, but 10 were asked for") as e:
        score_heads(loaded, HeadsConfig(languages=["eng_Latn"], texts=write_texts(tmp_path), samples=10))
    assert "at most 4" in e.value.fix
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_heldout_sentences_checked_before_work(tmp_path):
    loaded = loaded_tiny("llama")
    with pytest.raises(PolypruneError, match="but 9 were asked for"):
        score_heads(loaded, HeadsConfig(languages=["eng_Latn"], texts=write_texts(tmp_path), samples=2, cross=True,
                                        cross_split="dev", cross_samples=9))


def test_attention_not_found_names_expected_module():
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = nn.Linear(8, 8)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.mixer(x))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_attention_heads": 2, "model_type": "toy"})()
            self.layers = nn.ModuleList([Block(), Block()])

    with pytest.raises(PolypruneError, match="expected an attention submodule .*o_proj, out_proj, dense or c_proj"):
        find_heads(Tiny())


def test_head_count_mismatch_names_projection():
    model = make_tiny_model("gpt2")
    model.config.num_attention_heads = 5
    with pytest.raises(PolypruneError, match=r"transformer.h.0.attn.c_proj reads 32 inputs"):
        find_heads(model)


@pytest.mark.parametrize("bad,msg", [
    (dict(top_share=0), "top share"), (dict(top_share=1.5), "top share"), (dict(samples=0), "samples"),
    (dict(seq_len=1), "seq_len"), (dict(kinds=["gradient"]), "score kind"), (dict(min_shared=0), "min_shared"),
    (dict(rank_by="ablation", kinds=["taylor"]), "ranked by ablation"), (dict(batch_size="8"), "batch_size"),
    (dict(languages=[]), "No languages"), (dict(cross="yes"), "cross"),
])
def test_config_validation(bad, msg):
    with pytest.raises(PolypruneError, match=msg):
        HeadsConfig(**bad).validate()
