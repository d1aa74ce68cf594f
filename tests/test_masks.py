"""Mask sets: save/load round trip, apply to a fresh copy, bad input, agreement."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model, make_tokenizer
from polyprune.calibration import tokenize
from polyprune.errors import PolypruneError
from polyprune.masks import (agreement, apply_masks, block_agreement, load_masks, model_signature, save_masks)
from polyprune.models import all_prunable, weight_matrix
from polyprune.pruning import prune, restore
from polyprune.recipe import PruneConfig

TEXTS = ["English: The cat sleeps.</s>French: Le chat dort.</s>", "Habari za asubuhi, rafiki yangu.", "short"]


def cal():
    return tokenize(TEXTS, make_tokenizer(), 32)


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_round_trip_and_apply_to_copy(tmp_path, family):
    model = make_tiny_model(family)
    res = prune(model, PruneConfig(method="wanda", sparsity=0.4), cal())
    path = save_masks(res, tmp_path / "m.safetensors", model, extra={"note": "test"})
    ms = load_masks(path)
    assert set(ms.masks) == set(res.records)
    for k, r in res.records.items():
        assert torch.equal(ms.masks[k], r.mask)
    assert ms.meta["model_signature"] == model_signature(model)["signature"]
    assert ms.meta["note"] == "test"
    assert ms.sparsity() == pytest.approx(res.overall)
    # packed: about 1 bit per weight
    assert path.stat().st_size < sum(m.numel() for m in ms.masks.values()) / 8 + 4096

    other = make_tiny_model(family)
    before = {n: p.detach().clone() for n, p in other.named_parameters()}
    records = apply_masks(other, ms)
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(p, q), n  # Wanda only zeroes: the copy becomes the pruned model
    restore(other, records)
    for n, p in other.named_parameters():
        assert torch.equal(p, before[n]), n


def test_mask_from_another_model_is_refused_and_nothing_changes(tmp_path):
    res = prune(make_tiny_model("llama"), PruneConfig(method="magnitude", sparsity=0.5))
    path = save_masks(res, tmp_path / "m.safetensors", make_tiny_model("llama"))
    target = make_tiny_model("gpt2")
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    with pytest.raises(PolypruneError, match="this model does not have"):
        apply_masks(target, load_masks(path))
    for n, p in target.named_parameters():
        assert torch.equal(p, before[n])


def test_shape_mismatch_names_the_module(tmp_path):
    model = make_tiny_model("llama")
    masks = {k: torch.zeros_like(weight_matrix(m), dtype=torch.bool) for k, m in all_prunable(model).items()}
    first = next(iter(masks))
    masks[first] = torch.zeros(3, 3, dtype=torch.bool)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(PolypruneError, match=f"Mask {first} has shape"):
        apply_masks(model, masks)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_signature_mismatch(tmp_path):
    """Same module names and shapes but a model with an extra block: refused through the signature."""
    from transformers import AutoModelForCausalLM
    from conftest import make_config
    small = make_tiny_model("llama")
    cfg = make_config("llama")
    cfg.num_hidden_layers = 3
    big = AutoModelForCausalLM.from_config(cfg)
    res = prune(small, PruneConfig(method="magnitude", sparsity=0.5))
    path = save_masks(res, tmp_path / "m.safetensors", small)
    with pytest.raises(PolypruneError, match="made for a"):
        apply_masks(big, load_masks(path))
    apply_masks(big, load_masks(path), check_model=False)  # explicit opt-out works


def test_bad_files(tmp_path):
    with pytest.raises(PolypruneError, match="does not exist"):
        load_masks(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(PolypruneError, match="not a readable"):
        load_masks(bad)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PolypruneError, match="not a Polyprune mask set"):
        load_masks(tmp_path / "other.safetensors")


def test_legacy_unpacked_file(tmp_path):
    from safetensors.torch import save_file
    m = {"a.0.x": torch.rand(4, 6) > 0.5}
    save_file(m, str(tmp_path / "old.safetensors"), metadata={"format": "polyprune-masks", "true_means": "removed"})
    ms = load_masks(tmp_path / "old.safetensors")
    assert torch.equal(ms.masks["a.0.x"], m["a.0.x"])


def test_agreement_definition():
    a = torch.tensor([[True, False, False, True]])  # keeps 1, 2
    b = torch.tensor([[False, True, False, True]])  # keeps 0, 2
    c = torch.tensor([[True, True, True, False]])   # keeps 3
    assert agreement({"l.0.x": a}, {"l.0.x": a})["l.0.x"] == 1.0
    assert agreement({"l.0.x": a}, {"l.0.x": b})["l.0.x"] == pytest.approx(0.5)  # 1 of 2 kept in common
    assert agreement({"l.0.x": a}, {"l.0.x": c})["l.0.x"] == 0.0
    assert agreement({"l.0.x": b}, {"l.0.x": c}) == agreement({"l.0.x": c}, {"l.0.x": b})  # symmetric
    # pooled per block
    blk = block_agreement({"l.0.x": a, "l.0.y": a, "l.1.x": a}, {"l.0.x": a, "l.0.y": b, "l.1.x": c})
    assert blk == {0: pytest.approx(3 / 4), 1: 0.0}
    with pytest.raises(PolypruneError, match="no module in common"):
        agreement({"x": a}, {"y": a})
    with pytest.raises(PolypruneError, match="shape"):
        agreement({"x": a}, {"x": a.t()})


def test_random_masks_agree_at_chance():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, 300, generator=g) < 0.5
    b = torch.rand(200, 300, generator=g) < 0.5
    assert agreement({"x": a}, {"x": b})["x"] == pytest.approx(0.5, abs=0.01)


def test_packed_agreement_equals_unpacked(tmp_path):
    g = torch.Generator().manual_seed(1)
    a = {"m.0.x": torch.rand(7, 13, generator=g) < 0.4, "m.1.x": torch.rand(5, 3, generator=g) < 0.6}
    b = {"m.0.x": torch.rand(7, 13, generator=g) < 0.5, "m.1.x": torch.rand(5, 3, generator=g) < 0.6}
    save_masks(a, tmp_path / "a.safetensors")
    save_masks(b, tmp_path / "b.safetensors")
    pa, pb = load_masks(tmp_path / "a.safetensors", unpack=False), load_masks(tmp_path / "b.safetensors", unpack=False)
    assert pa.masks == {} and pa.sparsity() == pytest.approx(sum(int(v.sum()) for v in a.values()) / (91 + 15))
    ref = {}
    for k in a:
        ka, kb = ~a[k], ~b[k]
        ref[k] = 2 * int((ka & kb).sum()) / (int(ka.sum()) + int(kb.sum()))
    assert agreement(pa, pb) == pytest.approx(ref)
    assert agreement(a, b) == pytest.approx(ref)
