"""Recipe steps: pruning followed by head removal (and the other steps' settings checked first)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from polyprune.cli import main
from polyprune.errors import PolypruneError
from polyprune.pipeline import check_recipe
from polyprune.recipe import Recipe


def write_recipe(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_prune_then_remove_heads(tmp_path):
    src = save_tiny(tmp_path, "llama")
    r = write_recipe(tmp_path / "r.yaml", f"""
model: {src}
demos: {{shots: 1, samples: 4, seq_len: 16}}
pruning: {{method: wanda, sparsity: 0.5}}
steps: [prune, remove_heads]
heads: {{removal: {{heads: "0:1;1:0,3", cut: soft, measure: false}}}}
""")
    assert main(["run", str(r), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert json.loads((out / "removed_heads.json").read_text()) == {"0": [1], "1": [0, 3]}
    card = (out / "README.md").read_text()
    assert "## Removed attention heads" in card and "## Pruning" in card
    m = AutoModelForCausalLM.from_pretrained(out)
    d = m.config.hidden_size // m.config.num_attention_heads
    for b, hs in {0: [1], 1: [0, 3]}.items():
        w = m.model.layers[b].self_attn.o_proj.weight
        for h in hs:
            assert torch.all(w[:, h * d:(h + 1) * d] == 0)
        kept = [h for h in range(m.config.num_attention_heads) if h not in hs]
        assert all(torch.any(w[:, h * d:(h + 1) * d] != 0) for h in kept)
    rep = json.loads((out / "report.json").read_text())
    assert rep["heads"]["removed"] == {"0": [1], "1": [0, 3]} and rep["pruning"]["overall_sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("kw,needle", [
    (dict(steps=["prune", "prune"]), "twice"),
    (dict(steps=["dance"]), "Unknown step"),
    (dict(steps=["slim", "prune"], slim={"keep": ["eng_Latn"]}), "last"),
    (dict(steps=["remove_heads"]), "no heads section"),
    (dict(steps=["remove_heads"], heads={"removal": {"heads": "0:1", "cut": "hard"}}), "hard cut"),
    (dict(steps=["remove_heads"], heads={"removal": {"heads": "0:1"}, "colour": 3}), "colour"),
])
def test_bad_steps_fail_before_loading(kw, needle):
    with pytest.raises(PolypruneError, match=needle):
        check_recipe(Recipe(model="/nowhere/at/all", **kw))
