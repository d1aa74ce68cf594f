"""Demonstration sources, prompt building and calibration sets."""
from __future__ import annotations

import json

import pytest

from conftest import make_tokenizer
from polyprune.calibration import build, tokenize
from polyprune.calibration.prompts import build_prompts
from polyprune.calibration.sources import read_calibration_text
from polyprune.datasets import builtin_pairs, file_pairs, flores_pairs
from polyprune.recipe import DemoConfig, Recipe
from polyprune.errors import PolypruneError


def test_builtin_prompt_format_kim():
    cfg = DemoConfig(source="builtin", src="fra_Latn", tgt="eng_Latn", shots=2, samples=3)
    prompts, used = build_prompts(cfg, eos="</s>")
    pairs = builtin_pairs("fra_Latn", "eng_Latn")
    assert used == [[0, 1], [2, 3], [4, 5]]
    assert prompts[0] == f"French: {pairs[0][0]}</s>English: {pairs[0][1]}</s>French: {pairs[1][0]}</s>English: {pairs[1][1]}</s>"


def test_directions_and_monolingual():
    p = build_prompts(DemoConfig(src="eng_Latn", tgt="swh_Latn", shots=1, samples=2, direction="reverse"), eos="|")[0]
    assert p[0].startswith("Swahili: ") and "|English: " in p[0]
    p = build_prompts(DemoConfig(src="eng_Latn", tgt="swh_Latn", shots=1, samples=2, direction="both"), eos="|")[0]
    assert p[0].startswith("English: ") and p[1].startswith("Swahili: ")
    p = build_prompts(DemoConfig(src="swh_Latn", tgt="eng_Latn", shots=2, samples=1, monolingual=True), eos="|")[0]
    assert p[0].count("Swahili: ") == 2 and "English" not in p[0]


def test_names_and_two_letter_codes_resolve():
    p = build_prompts(DemoConfig(src="German", tgt="en", shots=1, samples=1), eos="")[0]
    assert p[0].startswith("German: ")


def test_too_many_samples_says_how_many_pairs():
    with pytest.raises(PolypruneError, match="has 36"):
        build_prompts(DemoConfig(shots=4, samples=10))


@pytest.mark.parametrize("kw,needle", [(dict(seq_len=4), "under 8"), (dict(samples=0), "at least 1"),
                                        (dict(src="xyz_Latn"), "xyz_Latn"), (dict(direction="up"), "direction"),
                                        (dict(template="{src} {oops}"), "template")])
def test_bad_settings(kw, needle):
    with pytest.raises(PolypruneError, match=needle):
        build_prompts(DemoConfig(**kw | dict(samples=kw.get("samples", 2), shots=1)), eos="")


def test_user_files(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("source\ttarget\nHello\tBonjour\nCat\tChat\n", encoding="utf-8")
    assert file_pairs(tsv) == [("Hello", "Bonjour"), ("Cat", "Chat")]
    csvf = tmp_path / "p.csv"
    csvf.write_text("eng_Latn,fra_Latn\nHello,Bonjour\n", encoding="utf-8")
    assert file_pairs(csvf, src="eng_Latn", tgt="fra_Latn") == [("Hello", "Bonjour")]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"en": "Hi", "fr": "Salut"}) + "\n", encoding="utf-8")
    assert file_pairs(jl, "en", "fr") == [("Hi", "Salut")]
    (tmp_path / "e.tsv").write_text("", encoding="utf-8")
    with pytest.raises(PolypruneError, match="empty"):
        file_pairs(tmp_path / "e.tsv")
    (tmp_path / "c.tsv").write_text("a\tb\nx\ty\n", encoding="utf-8")
    with pytest.raises(PolypruneError, match="no columns"):
        file_pairs(tmp_path / "c.tsv")
    (tmp_path / "u.tsv").write_text("source\ttarget\nx\t\n", encoding="utf-8")
    with pytest.raises(PolypruneError, match="target side is empty"):
        file_pairs(tmp_path / "u.tsv")
    cfg = DemoConfig(source=f"file:{tsv}", shots=1, samples=2)
    assert len(build_prompts(cfg, eos="")[0]) == 2


def test_calibration_text_and_tokenize(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("first line\n\n  \nsecond line is longer than the limit of tokens\nthird\n", encoding="utf-8")
    assert read_calibration_text(f, 2) == ["first line", "second line is longer than the limit of tokens"]
    with pytest.raises(PolypruneError, match="3 non-empty lines"):
        read_calibration_text(f, 5)
    tok = make_tokenizer()
    cal = build(Recipe(demos=DemoConfig(samples=2, seq_len=16), calibration_text=str(f)).calibration_spec(), tok)
    assert cal.input_ids.shape == (2, 16) and cal.truncated == 1
    assert cal.attention_mask[0].sum() == len(tok("first line")["input_ids"])
    assert cal.input_ids[0, 0] == tok.bos_token_id  # the tokenizer's own special tokens


def test_padding_is_masked():
    tok = make_tokenizer()
    cal = tokenize(["a", "abcdef"], tok, 32)
    assert cal.attention_mask.tolist()[0] == [1, 1, 0, 0, 0, 0, 0]
    assert [ids.shape[1] for ids, _ in cal.batches(1)] == [2, 7]


@pytest.mark.data
def test_flores_demonstrations(data_dir):
    pairs = flores_pairs(data_dir / "flores200", "eng_Latn", "fra_Latn")
    assert len(pairs) == 997
    cfg = DemoConfig(source=f"flores:{data_dir / 'flores200'}", src="eng_Latn", tgt="fra_Latn", shots=4, samples=32, seq_len=256)
    prompts, used = build_prompts(cfg, eos="<eos>")
    assert len(prompts) == 32 and used[-1] == [124, 125, 126, 127]
    assert prompts[0].startswith("English: " + pairs[0][0] + "<eos>French: " + pairs[0][1])
    with pytest.raises(PolypruneError, match="No FLORES-200 file"):
        flores_pairs(data_dir / "flores200", "eng_Latn", "fra_Latx")
    with pytest.raises(PolypruneError, match="has 997"):
        build_prompts(DemoConfig(source=f"flores:{data_dir / 'flores200'}", shots=4, samples=300))


def test_hub_source_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PolypruneError, match="hub"):
        build_prompts(DemoConfig(source="hub", shots=1, samples=1), eos="")
