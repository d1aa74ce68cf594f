"""Feature magnitudes against a direct computation from output_hidden_states with padding masked."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import FAMILIES, make_tiny_model, make_tokenizer
from polyprune.calibration import tokenize
from polyprune.errors import PolypruneError
from polyprune.features import FeatureResult, feature_magnitudes, overlap, token_contexts, top_k
from polyprune.models import all_prunable

TEXTS = ["English: Good morning.</s>French: Bonjour.</s>", "Hindi: नमस्ते दुनिया</s>",
         "a much longer sample that will be padded less than the others, with numbers 1 2 3", "x y"]


@pytest.mark.parametrize("family", FAMILIES)
def test_magnitudes_equal_direct_computation(family):
    model = make_tiny_model(family)
    tok = make_tokenizer()
    cal = tokenize(TEXTS, tok, 40)
    res = feature_magnitudes(model, cal, batch_size=3)
    # direct: one sample at a time, no padding at all
    expected = 0
    with torch.no_grad():
        for s in range(len(cal)):
            L = int(cal.attention_mask[s].sum())
            out = model(input_ids=cal.input_ids[s:s + 1, :L], output_hidden_states=True)
            hs = torch.stack(out.hidden_states)[:, 0]  # [L+1, T, d]
            expected = expected + hs.double().pow(2).sum(1).sqrt()
    expected = (expected / len(cal)).numpy()
    assert res.magnitudes.shape == expected.shape
    np.testing.assert_allclose(res.magnitudes, expected, rtol=2e-4, atol=1e-5)
    # Wanda column norms exist for every prunable layer with the right sizes
    for name, m in all_prunable(model).items():
        assert res.column_norms[name].ndim == 1 and np.all(res.column_norms[name] >= 0)
    # top tokens point at real tokens whose |h| equals the stored value
    layer, dim = 1, 3
    s, p = res.top_tokens[layer, dim, 0]
    assert cal.attention_mask[s, p] == 1
    with torch.no_grad():
        L = int(cal.attention_mask[s].sum())
        h = model(input_ids=cal.input_ids[s:s + 1, :L], output_hidden_states=True).hidden_states[layer][0]
    assert abs(float(h[p, dim].abs()) - res.top_values[layer, dim, 0]) < 1e-4
    with torch.no_grad():
        largest = max(float(model(input_ids=cal.input_ids[i:i + 1, :int(cal.attention_mask[i].sum())],
                                  output_hidden_states=True).hidden_states[layer][0, :, dim].abs().max())
                      for i in range(len(cal)))
    assert abs(res.top_values[layer, dim, 0] - largest) < 1e-4
    ctx = token_contexts(res, cal, tok, layer, dim)
    assert ctx and ctx[0]["value"] >= ctx[-1]["value"]


def test_column_norms_match_wanda_definition():
    model = make_tiny_model("llama")
    cal = tokenize(TEXTS, make_tokenizer(), 40)
    res = feature_magnitudes(model, cal, batch_size=2)
    name = "model.layers.0.mlp.down_proj"
    mod = dict(model.named_modules())[name]
    acc = []
    h = mod.register_forward_hook(lambda m, i, o: acc.append(i[0][0]))
    with torch.no_grad():
        for s in range(len(cal)):
            L = int(cal.attention_mask[s].sum())
            model(input_ids=cal.input_ids[s:s + 1, :L])
    h.remove()
    expected = torch.sqrt(sum(x.double().pow(2).sum(0) for x in acc) / len(cal)).numpy()
    np.testing.assert_allclose(res.column_norms[name], expected, rtol=1e-4)


def test_topk_overlap_and_save_roundtrip(tmp_path):
    a = np.array([[5, 4, 3, 2, 1.0], [1, 2, 3, 4, 5]])
    b = np.array([[5, 1, 3, 2, 4.0], [1, 2, 3, 4, 5]])
    assert top_k(a, 2).tolist() == [[0, 1], [4, 3]]
    assert overlap(a, b, k=2).tolist() == [0.5, 1.0]
    assert overlap(a, b, ratio=0.4).tolist() == [0.5, 1.0]
    with pytest.raises(PolypruneError):
        overlap(a, b[:, :4], k=2)
    r = FeatureResult(a.astype(np.float32), {"x": np.ones(3, np.float32)}, np.zeros((2, 5, 1)),
                      np.zeros((2, 5, 1, 2), int), {"src": "fra_Latn"})
    files = r.save(tmp_path / "feat")
    assert [f.suffix for f in files] == [".npz", ".csv", ".json"]
    r2 = FeatureResult.load(tmp_path / "feat.npz")
    np.testing.assert_array_equal(r2.magnitudes, r.magnitudes)
    assert r2.settings == {"src": "fra_Latn"} and "x" in r2.column_norms
    text = (tmp_path / "feat.csv").read_text()
    assert text.count("\n") == 1 + a.size and text.startswith("layer,dimension,magnitude\n")  # pandas reads it as is
    assert json.loads((tmp_path / "feat.json").read_text())["settings"] == {"src": "fra_Latn"}
