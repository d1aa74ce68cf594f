"""Tests for polyprune.generation: few-shot FLORES prompts, batched greedy decoding, chrF++/BLEU."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from polyprune.errors import PolypruneError
from polyprune.evaluation.translation import (build_prompt, flores_translation, generate_greedy, score_translations,
                                  select_demo_indices)

pytest.importorskip("sacrebleu")


def test_build_prompt():
    p = build_prompt([("Bonjour.", "Hello."), ("Merci.", "Thanks.")], "Oui.", "French", "English")
    assert p == "French: Bonjour.\nEnglish: Hello.\n\nFrench: Merci.\nEnglish: Thanks.\n\nFrench: Oui.\nEnglish:"
    assert build_prompt([], "x", "A", "B") == "A: x\nB:"


def test_select_demos():
    src = ["short a", "x" * 120, "short b", "short c", "", "short d"]
    tgt = ["kurz a", "kurz", "y" * 100, "kurz c", "leer", "kurz d"]
    idx = select_demo_indices(src, tgt, 2, seed=0)
    assert idx == sorted(idx) and set(idx) <= {0, 3, 5}  # both sides < 100 chars, non-empty
    assert select_demo_indices(src, tgt, 2, seed=0) == idx
    assert select_demo_indices(src, tgt, 10) == [0, 3, 5]
    assert len(select_demo_indices(src, tgt, 10, max_chars=None)) == 5
    assert select_demo_indices(src, tgt, 0) == []
    with pytest.raises(PolypruneError, match="aligned"):
        select_demo_indices(src, tgt[:-1], 2)


def manual_greedy(model, ids, steps, eos):
    """Unbatched greedy decoding up to ``steps`` tokens or EOS."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
            if nxt == eos:
                break
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_greedy_left_padding(family, tokenizer):
    model = make_tiny_model(family)
    prompts = ["French: Bonjour.\nEnglish:", "A:", "Some longer prompt with more bytes in it:"]
    batched = generate_greedy(model, tokenizer, prompts, batch_size=3, max_new_tokens=5, stop=None)
    single = [generate_greedy(model, tokenizer, [p], batch_size=1, max_new_tokens=5, stop=None)[0]
              for p in prompts]
    assert batched == single
    for p, out in zip(prompts, single):
        ref = tokenizer.decode(manual_greedy(model, tokenizer(p)["input_ids"], 5, tokenizer.eos_token_id), skip_special_tokens=True)
        assert out == ref.strip()
    assert not model.training


def test_generate_stops_at_newline(tokenizer):
    model = make_tiny_model("llama")
    nl = tokenizer.encode("\n", add_special_tokens=False)[0]
    calls = []

    def force_newline_on_third_step(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:
            output = output.clone()
            output[..., nl] += 1e4
            return output

    ref = manual_greedy(model, tokenizer("abc")["input_ids"], 2, tokenizer.eos_token_id)
    handle = model.lm_head.register_forward_hook(force_newline_on_third_step)
    try:
        out = generate_greedy(model, tokenizer, ["abc"], max_new_tokens=8)
    finally:
        handle.remove()
    assert len(calls) == 3  # stopped right after the newline instead of running 8 steps
    assert out == [tokenizer.decode(ref, skip_special_tokens=True).strip()]


def test_score_translations():
    s = score_translations(["The cat sat on the mat."], ["The cat sat on the mat."])
    assert s["chrf++"] == pytest.approx(100.0) and s["bleu"] == pytest.approx(100.0)
    s = score_translations(["A dog."], ["The cat sat on the mat."])
    assert 0 <= s["chrf++"] < 50 and 0 <= s["bleu"] < 50
    with pytest.raises(PolypruneError):
        score_translations(["a"], ["a", "b"])


def test_flores_translation_tiny(tmp_path, tokenizer):
    for split, n in (("dev", 8), ("devtest", 4)):
        d = tmp_path / split
        d.mkdir()
        (d / f"eng_Latn.{split}").write_text("".join(f"This is sentence {i}.\n" for i in range(n)), encoding="utf-8")
        (d / f"fra_Latn.{split}").write_text("".join(f"Voici la phrase {i}.\n" for i in range(n)), encoding="utf-8")
    model = make_tiny_model("llama")
    rows = flores_translation(model, tokenizer, tmp_path, "fra_Latn", "en", shots=4, limit=3,
                              max_new_tokens=6, batch_size=2, model_name="tiny", run_id="r")
    assert [(r.task, r.language, r.metric, r.n) for r in rows] == [
        ("flores_mt", "fra_Latn-eng_Latn", "chrf++", 3), ("flores_mt", "fra_Latn-eng_Latn", "bleu", 3)]
    for r in rows:
        assert math.isfinite(r.value) and 0 <= r.value <= 100
        assert r.extra["shots"] == 4 and len(r.extra["demos"]) == 4 and r.model == "tiny"
        assert r.extra["examples"][0]["source"] == "Voici la phrase 0."
    with pytest.raises(PolypruneError, match="deu_Latn"):
        flores_translation(model, tokenizer, tmp_path, "German", "en", limit=1)


def test_flores_translation_real(data_dir, tokenizer):
    model = make_tiny_model("llama")  # rotary positions: byte-level prompts exceed 256 tokens
    rows = flores_translation(model, tokenizer, data_dir / "flores200", "eng_Latn", "fra_Latn", limit=2,
                              max_new_tokens=4)
    assert all(math.isfinite(r.value) for r in rows)
    for i in rows[0].extra["demos"]:
        assert i < 997
