"""Head removal: soft (zeroed columns), hard (deleted heads, stock checkpoint), the keep/drop rule,
the nearest stock set, and bad input (nothing modified, nothing written)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from test_heads import loaded_tiny, write_texts
from transformers import AutoModelForCausalLM, LlamaConfig

from polyprune.errors import PolypruneError
from polyprune.heads import HeadsConfig, RemovalConfig, apply_removal, find_heads, remove_heads, score_heads
from polyprune.heads.removal import SoftRemoval, nearest_stock, propose_removal, stock_problem
from polyprune.heads.scoring import HeadScores

IDS = torch.tensor([[1, 40, 41, 42, 99, 120, 7, 77, 200, 13]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def zero_columns_reference(model, oproj, heads, d):
    """Naive soft removal on a deep copy: zero the columns by hand."""
    import copy
    m = copy.deepcopy(model)
    with torch.no_grad():
        for b, hs in heads.items():
            mod = m.get_submodule(oproj.format(b))
            w = mod.weight
            for h in hs:
                if isinstance(mod, torch.nn.Linear):  # [out, in]
                    w[:, h * d:(h + 1) * d] = 0
                else:  # Conv1D [in, out]
                    w[h * d:(h + 1) * d, :] = 0
    return m


@pytest.mark.parametrize("fam", ["llama", "gpt2", "bloom"])
def test_soft_removal_matches_reference_and_restores(fam):
    from test_heads import OPROJ
    model = make_tiny_model(fam)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads = {0: [1, 3], 1: [0]}
    ref = logits(zero_columns_reference(model, OPROJ[fam], heads, 8))
    soft = SoftRemoval(model, find_heads(model), heads)
    assert torch.allclose(logits(model), ref, atol=1e-6)
    assert soft.zeroed == 3 * 8 * 32
    soft.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def param_count(model):
    return sum({id(p): p.numel() for p in model.parameters()}.values())


@pytest.mark.parametrize("heads,kv_gone", [({0: [1, 3], 1: [0, 2]}, 0),     # one query head per KV group
                                           ({0: [2, 3], 1: [0, 1]}, 1)])    # a whole KV group
def test_hard_cut_reloads_stock_with_fewer_params_and_same_logits(tmp_path, heads, kv_gone):
    loaded = loaded_tiny("llama")  # 4 query heads, 2 KV heads, head_dim 8, hidden 32, 2 blocks
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n0 = param_count(model)
    soft_ref = logits(zero_columns_reference(model, "model.layers.{}.self_attn.o_proj", heads, 8))
    cfg = HeadsConfig(languages=["eng_Latn"], texts=write_texts(tmp_path), samples=2, seq_len=10, cross_split="dev",
                      cross_samples=2, bootstrap=20,
                      removal=RemovalConfig(heads="0:%s;1:%s" % (",".join(map(str, heads[0])), ",".join(map(str, heads[1]))),
                                            cut="hard", measure=False))
    res = remove_heads(loaded, cfg, tmp_path / "cut")
    # the source model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
    assert re.config.num_attention_heads == 2 and re.config.num_key_value_heads == 2 - kv_gone
    # per removed query head: d rows of q_proj and d columns of o_proj; per removed KV head: d rows of k and v
    expected = 2 * 2 * (8 * 32 + 32 * 8) + 2 * kv_gone * 2 * (8 * 32)
    assert n0 - param_count(re) == expected == res.params_before - res.params_after
    assert torch.allclose(logits(re), soft_ref, atol=1e-5)
    assert res.reload_diff < 1e-5
    assert json.loads((tmp_path / "cut" / "removed_heads.json").read_text()) == {str(b): hs for b, hs in heads.items()}
    card = (tmp_path / "cut" / "README.md").read_text()
    assert "## Removed attention heads" in card and "Hard cut" in card


def test_soft_export_reloads_with_zeroed_columns(tmp_path):
    loaded = loaded_tiny("gemma3")
    heads = {0: [1], 2: [0, 3]}
    ref = logits(zero_columns_reference(loaded.model, "model.layers.{}.self_attn.o_proj", heads, 8))
    cfg = HeadsConfig(removal=RemovalConfig(heads="0:1;2:0,3", cut="soft", measure=False))
    res = remove_heads(loaded, cfg, tmp_path / "soft")
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "soft")
    assert param_count(re) == param_count(loaded.model)
    assert torch.allclose(logits(re), ref, atol=1e-5)
    assert json.loads((tmp_path / "soft" / "removed_heads.json").read_text()) == {"0": [1], "2": [0, 3]}
    assert res.heads == heads


def test_gemma_three_heads_not_stock_nearest_offered(tmp_path):
    """Gemma 3: 4 query heads, 1 KV head. 3 heads left fails hidden_size % heads (32 % 3); 2 left is stock."""
    loaded = loaded_tiny("gemma3")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    cfg = HeadsConfig(removal=RemovalConfig(heads="0:1;1:2;2:3", cut="hard", measure=False))
    with pytest.raises(PolypruneError, match=r"not a multiple of the number of attention heads \(3\)") as e:
        remove_heads(loaded, cfg, tmp_path / "x")
    assert "--nearest" in e.value.fix and "6 heads" in e.value.fix
    assert not (tmp_path / "x").exists()
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    cfg.removal.nearest = True
    res = remove_heads(loaded, cfg, tmp_path / "x")
    assert all(len(v) == 2 for v in res.heads.values()) and res.requested == {0: [1], 1: [2], 2: [3]}
    assert all(h in res.heads[b] for b, hs in res.requested.items() for h in hs)
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert re.config.num_attention_heads == 2
    assert torch.allclose(logits(re), logits(zero_columns_reference(loaded.model, "model.layers.{}.self_attn.o_proj",
                                                                     res.heads, 8)), atol=1e-5)


def test_non_uniform_and_fused_and_derived_head_dim_not_stock():
    llama = make_tiny_model("llama")
    assert "different numbers of heads" in stock_problem(llama, find_heads(llama), {0: [0, 1]})
    assert "different numbers of query heads" in stock_problem(llama, find_heads(llama), {0: [0], 1: [0]})
    xglm = make_tiny_model("xglm")  # head_dim derived from d_model / heads
    assert "expects" in stock_problem(xglm, find_heads(xglm), {0: [0, 1], 1: [0, 1]})
    gpt2 = make_tiny_model("gpt2")
    assert stock_problem(gpt2, find_heads(gpt2), {0: [0, 1], 1: [0, 1]}) is not None


def test_nearest_stock_minimises_difference():
    cfg = LlamaConfig(hidden_size=48, intermediate_size=32, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=8, vocab_size=64)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    lay = find_heads(model)
    # cost 3 for "1 of 3 per KV group" (4 heads) and for "drop a KV group" (6 heads): fewer heads wins
    assert nearest_stock(model, lay, {0: [0], 1: [0, 1]}) == {0: [0, 3], 1: [0, 3]}
    pri = np.zeros((2, 6))
    pri[:, 5] = 1.0  # prefer removing head 5 when adding heads
    assert nearest_stock(model, lay, {0: [0], 1: [0, 1]}, pri) == {0: [0, 5], 1: [0, 5]}
    assert nearest_stock(model, lay, {0: [3, 4, 5], 1: [3, 4, 5]}) == {0: [3, 4, 5], 1: [3, 4, 5]}


def test_empty_block_refused_nothing_written(tmp_path):
    loaded = loaded_tiny("llama")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    cfg = HeadsConfig(removal=RemovalConfig(heads="1:0,1,2,3", cut="soft"))
    with pytest.raises(PolypruneError, match="all 4 heads of block 1, which would empty its attention") as e:
        remove_heads(loaded, cfg, tmp_path / "x")
    assert "keep at least one head in block 1" in e.value.fix
    assert not (tmp_path / "x").exists()
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


@pytest.mark.parametrize("spec,msg", [("9:0", "Block 9 does not exist"), ("0:7", "Head 0:7 does not exist"),
                                      ("0-1", "Cannot read the head list"), ("0:1;0:1", "listed twice")])
def test_bad_head_lists(tmp_path, spec, msg):
    loaded = loaded_tiny("llama")
    with pytest.raises(PolypruneError, match=msg):
        remove_heads(loaded, HeadsConfig(removal=RemovalConfig(heads=spec)), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_keep_drop_rule():
    L, H = 2, 4
    s = np.zeros((3, L, H))
    s[0, 0, 0], s[0, 0, 1] = 5, 4   # eng (kept): top (0,0), (0,1)
    s[1, 0, 1], s[1, 1, 2] = 5, 4   # swh (dropped): top (0,1), (1,2)
    s[2, 1, 3], s[2, 0, 0] = 6, 5   # hin (dropped): top (1,3), (0,0)
    nan = np.full_like(s, np.nan)
    taylor = s * 0.1
    sc = HeadScores(["eng_Latn", "swh_Latn", "hin_Deva"], s, taylor, np.zeros(3), np.ones(3), np.ones(3), {})
    plan = propose_removal(sc, keep=["eng_Latn"], drop=["swh_Latn", "hin_Deva"], top_share=0.25, kind="ablation")
    assert plan.k == 2
    assert plan.order == [(1, 3), (1, 2)] and plan.heads == {1: [2, 3]}
    assert plan.predicted["hin_Deva"] == pytest.approx(0.6) and plan.predicted["eng_Latn"] == pytest.approx(0.0)
    assert propose_removal(sc, ["eng_Latn"], ["swh_Latn", "hin_Deva"], 0.25, "ablation", max_heads=1).heads == {1: [3]}
    sc2 = HeadScores(sc.languages, nan, taylor, np.zeros(3), np.ones(3), np.ones(3), {})
    with pytest.raises(PolypruneError, match="ablation scores were not computed"):
        propose_removal(sc2, ["eng_Latn"], ["swh_Latn"], 0.25, "ablation")
    with pytest.raises(PolypruneError, match=r"Yoruba \(yor_Latn\) was not scored"):
        propose_removal(sc, ["eng_Latn"], ["yor_Latn"], 0.25, "ablation")


def test_drop_keep_end_to_end_and_study_cell(tmp_path):
    loaded = loaded_tiny("llama")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    src = write_texts(tmp_path)
    cfg = HeadsConfig(texts=src, samples=3, seq_len=12, cross_split="dev", cross_samples=4, bootstrap=50, top_share=0.25,
                      kinds=["taylor"], removal=RemovalConfig(drop=["zho_Hans"], keep=["eng_Latn", "fra_Latn"]))
    res = remove_heads(loaded, cfg, tmp_path / "out")
    assert res.plan is not None and res.heads == res.plan.heads
    assert [e.language for e in res.effects] == ["zho_Hans", "eng_Latn", "fra_Latn"]
    for e in res.effects:
        assert e.ci_low <= e.delta <= e.ci_high
        assert np.isfinite(e.predicted)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    # the same heads through the study-cell stage, reversibly
    soft = apply_removal(loaded, cfg)
    assert soft.heads == res.heads
    zeroed = logits(loaded.model)
    soft.restore()
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    assert not torch.allclose(zeroed, logits(loaded.model))
    # scores computed once and passed in give the same plan
    scores = score_heads(loaded, HeadsConfig(languages=["zho_Hans", "eng_Latn", "fra_Latn"], texts=src, samples=3,
                                             seq_len=12, kinds=["taylor"], top_share=0.25))
    assert apply_removal(loaded, cfg, scores=scores).heads == res.heads


def test_removal_config_validation():
    with pytest.raises(PolypruneError, match="neither a head list nor languages to drop"):
        RemovalConfig().validate()
    with pytest.raises(PolypruneError, match="both kept and dropped"):
        RemovalConfig(drop=["swh_Latn"], keep=["Swahili"]).validate()
    with pytest.raises(PolypruneError, match="Unknown cut"):
        RemovalConfig(heads="0:1", cut="medium").validate()
    with pytest.raises(PolypruneError, match="Unknown language"):
        RemovalConfig(drop=["elvish"]).validate()
