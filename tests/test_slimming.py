"""Slimming core: script detection, tokenizer rebuild (BPE with byte fallback, Unigram, byte-level),
vocabulary modes, model surgery, block influence and removal, the report's numbers, the stage."""
from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyprune.errors import PolypruneError
from polyprune.evaluation import perplexity
from polyprune.slimming.blocks import block_influence, least_influential, remove_blocks
from polyprune.slimming.config import SlimConfig
from polyprune.slimming.plan import SlimPlan, apply_plan, part_sizes
from polyprune.slimming.report import nll_change, restricted_nll
from polyprune.slimming.scripts import char_scripts, classify_bytes, unicode_scripts
from polyprune.slimming.tokenizer_trim import build_tokenizer, read_tokenizer_json, trimmed_json
from polyprune.slimming.vocab import choose_vocab, mandatory_ids
from slim_helpers import CYRILLIC, LATIN, byte_bpe, save_lm, spm_bpe, tiny_lm, unigram

HELDOUT_LATIN = ["The three cats ran to the café near the river.", "Théo a dit: c'est très bien!",
                 "Rafiki yangu anakula chakula.", "Numbers 12, 345 and 6.78 — fine?"]
KINDS = {"spm_bpe": spm_bpe, "unigram": unigram, "byte_bpe": byte_bpe}


@pytest.fixture(scope="module", params=list(KINDS))
def tok(request):
    return KINDS[request.param]()


def _has_cyrillic(text: str) -> bool:
    return any("CYRILLIC" in unicodedata.name(c, "") for c in text)


# --------------------------------------------------------------------------------------------
# scripts
# --------------------------------------------------------------------------------------------
def test_char_scripts():
    assert char_scripts("aé Ж中あア한1,\u0301") == ["Latin", "Latin", "Common", "Cyrillic", "Han", "Hiragana",
                                                  "Katakana", "Hangul", "Common", "Common", "Inherited"]


def test_scripts_of_languages():
    from polyprune.slimming.scripts import scripts_of_languages

    assert scripts_of_languages(["eng_Latn", "swh_Latn", "jpn_Jpan"]) == ["Latn", "Jpan"]
    assert unicode_scripts(["Jpan"]) >= {"Han", "Hiragana", "Katakana", "Common", "Inherited"}
    with pytest.raises(PolypruneError, match="script 'Zzzz'"):
        scripts_of_languages(["xxx_Zzzz"])


def test_byte_fragments():
    latin = unicode_scripts(["Latn"])
    cyr = unicode_scripts(["Cyrl"])
    assert classify_bytes("é".encode()[:1]).kept_by(latin)          # lead byte of é (U+00C0..U+00FF)
    assert not classify_bytes("Ж".encode()[:1]).kept_by(latin)      # lead byte 0xD0: Cyrillic only
    assert classify_bytes("Ж".encode()[:1]).kept_by(cyr)
    assert classify_bytes(b" " + "Ж".encode()[:1]).kept_by(cyr)
    assert classify_bytes("Ж".encode()[1:] + b"1").kept_by(cyr)     # end of Ж (0x96 ends Cyrillic letters), a digit
    assert classify_bytes("Ж".encode()[1:] + b"a").kept_by(cyr | latin)
    assert not classify_bytes("Ж".encode()[1:] + b"a").kept_by(cyr)
    assert not classify_bytes(b"\xff").kept_by(latin | cyr)         # never UTF-8


# --------------------------------------------------------------------------------------------
# vocabulary and tokenizer rebuild
# --------------------------------------------------------------------------------------------
def _old_ids(tokenizer, text):
    return list(tokenizer(text)["input_ids"])


def test_script_mode_keeps_latin_text_exact(tok):
    tj = read_tokenizer_json(tok)
    choice = choose_vocab(tok, tj, "script", ["Latn"])
    keep = set(choice.keep)
    # naive reference: a token is kept iff its text can occur in text without Cyrillic letters
    for i in range(tj.size):
        b = tj.token_bytes(i)
        if i in mandatory_ids(tj):
            assert i in keep
            continue
        text = b.decode("utf-8", errors="ignore")
        if _has_cyrillic(text):
            assert i not in keep, tj.pieces[i]
        elif b.isascii():
            assert i in keep, tj.pieces[i]
    assert len(keep) < tj.size
    new = build_tokenizer(tok, trimmed_json(tj, choice.keep), choice.id_map())
    id_map = choice.id_map()
    for text in LATIN + HELDOUT_LATIN:
        assert _old_ids(new, text) == [id_map[i] for i in _old_ids(tok, text)], text
    for text in CYRILLIC:  # other scripts are still encoded (bytes), and decode back
        ids = _old_ids(new, text)
        assert new.decode(ids, skip_special_tokens=True) == text


def test_corpus_mode_exact_on_corpus(tok):
    tj = read_tokenizer_json(tok)
    corpus = LATIN[:3]
    choice = choose_vocab(tok, tj, "corpus", ["Latn"], corpus)
    script = choose_vocab(tok, tj, "script", ["Latn"])
    assert choice.size < script.size
    assert {i for t in corpus for i in _old_ids(tok, t)} <= set(choice.keep)
    new = build_tokenizer(tok, trimmed_json(tj, choice.keep), choice.id_map())
    for text in corpus:
        assert _old_ids(new, text) == [choice.id_map()[i] for i in _old_ids(tok, text)]
    for text in LATIN[3:]:  # other text still round-trips through the smaller vocabulary
        assert new.decode(_old_ids(new, text), skip_special_tokens=True) == text


def test_size_mode(tok):
    tj = read_tokenizer_json(tok)
    must = mandatory_ids(tj)
    script = choose_vocab(tok, tj, "script", ["Latn"])
    n = len(must) + 40
    choice = choose_vocab(tok, tj, "size", ["Latn"], LATIN, size=n)
    assert choice.size == n and must <= set(choice.keep) and set(choice.keep) <= set(script.keep)
    bigger = choose_vocab(tok, tj, "size", ["Latn"], LATIN, size=n + 30)
    assert set(choice.keep) <= set(bigger.keep)  # nested
    # BPE: every kept merged token is reachable (the parts of its first merge are kept)
    if tj.kind == "BPE":
        splits = tj.splits()
        for t in choice.keep:
            if t in splits:
                a, b = splits[t][0]
                assert a in choice.keep and b in choice.keep
    new = build_tokenizer(tok, trimmed_json(tj, choice.keep), choice.id_map())
    for text in HELDOUT_LATIN:
        assert new.decode(_old_ids(new, text), skip_special_tokens=True) == text
    with pytest.raises(PolypruneError, match="smaller than the"):
        choose_vocab(tok, tj, "size", ["Latn"], LATIN, size=len(must) - 1)
    with pytest.raises(PolypruneError, match="larger than the"):
        choose_vocab(tok, tj, "size", ["Latn"], LATIN, size=script.size + 1)


def test_bad_corpus(tok):
    tj = read_tokenizer_json(tok)
    with pytest.raises(PolypruneError, match="corpus is empty"):
        choose_vocab(tok, tj, "corpus", ["Latn"], ["", "  "])
    with pytest.raises(PolypruneError, match="not written in the kept languages"):
        choose_vocab(tok, tj, "corpus", ["Latn"], CYRILLIC)


def test_wordpiece_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    wp = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(PolypruneError, match="WordPiece tokenizer"):
        read_tokenizer_json(wp)


def test_rebuilt_tokenizer_reloads(tmp_path):
    tok = spm_bpe()
    tj = read_tokenizer_json(tok)
    choice = choose_vocab(tok, tj, "script", ["Latn"])
    new = build_tokenizer(tok, trimmed_json(tj, choice.keep), choice.id_map())
    new.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert len(back) == choice.size and back.bos_token == "<bos>" and back.bos_token_id == choice.id_map()[2]
    for text in HELDOUT_LATIN:
        assert _old_ids(back, text) == _old_ids(new, text)


# --------------------------------------------------------------------------------------------
# the slimmed model
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gemma3", "llama"])  # tied and untied embeddings
def test_vocab_trim_logits_equal(family):
    tok = spm_bpe()
    model = tiny_lm(family, len(tok))
    tj = read_tokenizer_json(tok)
    choice = choose_vocab(tok, tj, "script", ["Latn"])
    slim = apply_plan(model, SlimPlan(["eng_Latn"], ["Latn"], choice))
    new = build_tokenizer(tok, trimmed_json(tj, choice.keep), choice.id_map())
    sizes = part_sizes(slim)
    hidden = model.config.hidden_size
    assert sizes["embedding"] == choice.size * hidden
    assert sizes["lm_head"] == (0 if family == "gemma3" else choice.size * hidden)
    assert slim.config.vocab_size == choice.size and model.config.vocab_size == len(tok)  # source unchanged
    keep = torch.tensor(choice.keep)
    for text in HELDOUT_LATIN:
        with torch.inference_mode():
            ref = model(input_ids=torch.tensor([_old_ids(tok, text)])).logits[0][:, keep]
            got = slim(input_ids=torch.tensor([_old_ids(new, text)])).logits[0]
        assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()


def _identity_forward(model, removed, ids):
    """Naive reference: the source model with the removed blocks replaced by the identity."""
    from polyprune.models import find_blocks

    _, blocks = find_blocks(model)

    def skip(mod, args, kwargs, out):
        h = args[0] if args else kwargs["hidden_states"]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    hs = [blocks[i].register_forward_hook(skip, with_kwargs=True) for i in removed]
    try:
        with torch.inference_mode():
            return model(input_ids=ids).logits
    finally:
        for h in hs:
            h.remove()


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2", "bloom", "xglm"])
def test_block_removal(family, tmp_path):
    from conftest import make_tiny_model

    model = make_tiny_model(family)
    n = model.config.num_hidden_layers
    removed = [0] if n == 2 else [1]
    slim = apply_plan(model, SlimPlan(["eng_Latn"], ["Latn"], None, removed))
    assert slim.config.num_hidden_layers == n - 1 and model.config.num_hidden_layers == n
    if family == "gemma3":
        assert slim.config.layer_types == [t for i, t in enumerate(model.config.layer_types) if i not in removed]
    ids = torch.tensor([[1, 5, 9, 33, 70, 200, 7]])
    ref = _identity_forward(model, removed, ids)
    with torch.inference_mode():
        got = slim(input_ids=ids).logits
    assert torch.allclose(got, ref, atol=1e-5)
    # saved, the folder reloads with a stock class and gives the same logits; cached generation works
    slim.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.inference_mode():
        assert torch.allclose(back(input_ids=ids).logits, ref, atol=1e-5)
        cached = slim.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        plain = ids
        for _ in range(5):
            nxt = _identity_forward(model, removed, plain)[:, -1].argmax(-1, keepdim=True)
            plain = torch.cat([plain, nxt], 1)
    assert torch.equal(cached, plain)


def test_block_influence_matches_naive():
    from conftest import make_tiny_model, make_tokenizer

    model = make_tiny_model("llama")
    tok = make_tokenizer()
    texts = ["hello world, this is a test", "ok", "another sentence of some length here"]
    enc = [tok(t)["input_ids"] for t in texts]
    T = max(map(len, enc))
    ids = torch.zeros(len(enc), T, dtype=torch.long)
    mask = torch.zeros(len(enc), T, dtype=torch.long)
    for b, s in enumerate(enc):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
    bi = block_influence(model, [(ids, mask)])
    # naive: each text alone, hidden states entering / leaving each block (last block: before the norm)
    n = model.config.num_hidden_layers
    cos_sum, count = [0.0] * n, 0
    for s in enc:
        with torch.inference_mode():
            hs = model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states
        for i in range(n - 1):
            cos_sum[i] += torch.nn.functional.cosine_similarity(hs[i][0], hs[i + 1][0], dim=-1).sum().item()
        count += len(s)
    for i in range(n - 1):
        assert bi[i] == pytest.approx(1 - cos_sum[i] / count, abs=1e-5)
    assert 0 <= bi[-1] <= 2
    assert least_influential([0.3, 0.1, 0.2], 2) == [1, 2]
    with pytest.raises(PolypruneError, match="would leave none"):
        least_influential([0.3, 0.1], 2)
    with pytest.raises(PolypruneError, match="would leave none"):
        remove_blocks(model, [0, 1])


# --------------------------------------------------------------------------------------------
# report numbers
# --------------------------------------------------------------------------------------------
def test_nll_change_and_restricted_nll():
    before, after = [10.0, 20.0, 30.0], [11.0, 19.0, 33.0]
    r = nll_change(before, after, iters=500, seed=1)
    assert r["change_pct"] == pytest.approx(100 * (63 / 60 - 1))
    assert r["ci_low"] <= r["change_pct"] <= r["ci_high"]
    # restricted NLL equals the NLL of a really trimmed model (perplexity items)
    tok = spm_bpe()
    model = tiny_lm("gemma3", len(tok))
    tj = read_tokenizer_json(tok)
    choice = choose_vocab(tok, tj, "size", ["Latn"], LATIN, size=len(mandatory_ids(tj)) + 60)
    slim = apply_plan(model, SlimPlan(["eng_Latn"], ["Latn"], choice))
    new = build_tokenizer(tok, trimmed_json(tj, choice.keep), choice.id_map())
    items: list = []
    perplexity(slim, new, HELDOUT_LATIN, items=items)
    seqs = [[choice.keep[i] for i in _old_ids(new, t)] for t in HELDOUT_LATIN]
    got = restricted_nll(model, seqs, torch.tensor(choice.keep), {})
    assert np.allclose(got, [n for n, _ in items], rtol=1e-4)
    full_items: list = []
    perplexity(model, tok, HELDOUT_LATIN, items=full_items)
    full = restricted_nll(model, [_old_ids(tok, t) for t in HELDOUT_LATIN], None, {})
    assert np.allclose(full, [n for n, _ in full_items], rtol=1e-4)


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
def test_config_validation():
    assert SlimConfig(keep="en, Swahili").validate().languages() == ["eng_Latn", "swh_Latn"]
    for bad, msg in [(dict(keep=[]), "No languages"), (dict(keep=["klingon"]), "Unknown language"),
                     (dict(keep=["en"], vocab="tiny"), "vocab must be"), (dict(keep=["en"], vocab="size"), "vocabulary size"),
                     (dict(keep=["en"], remove_blocks=-1), "remove_blocks"), (dict(keep=["en"], dtype="int8"), "dtype"),
                     (dict(keep=["en"], gguf="Q4_K"), "gguf"), (dict(keep=["en"], tasks=["mmlu"]), "tasks"),
                     (dict(keep=["en"], speed="yes"), "speed")]:
        with pytest.raises(PolypruneError, match=msg):
            SlimConfig(**bad).validate()
    d = SlimConfig(keep=["en"], gguf="q8_0").validate().to_dict()
    assert json.loads(json.dumps(d))["gguf"] == "Q8_0"
    assert SlimConfig.from_dict(d).gguf == "Q8_0"
    with pytest.raises(PolypruneError, match="Unknown slim setting"):
        SlimConfig.from_dict({"keep": ["en"], "colour": 1})


# --------------------------------------------------------------------------------------------
# the stage, end to end on a tiny model
# --------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_folder(tmp_path):
    tok = spm_bpe()
    return save_lm(tmp_path / "src", tiny_lm("gemma3", len(tok)), tok)


def _loaded(path):
    from polyprune.models import load_model

    return load_model(str(path))


def test_slim_stage_writes_a_stock_folder(tiny_folder, tmp_path, data_dir):
    from polyprune.slimming.run import slim

    loaded = _loaded(tiny_folder)
    out = tmp_path / "out"
    cfg = SlimConfig(keep=["eng_Latn", "swh_Latn"], vocab="script", eval_sentences=5, speed_runs=1,
                     speed_tokens=4, bootstrap=100, data=str(data_dir), out=str(out))
    res = slim(loaded, cfg)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    keep = json.loads((out / "kept_tokens.json").read_text())
    assert model.config.vocab_size == len(tok) == len(keep) < len(loaded.tokenizer)
    report = json.loads((out / "report.json").read_text())
    assert [r["language"] for r in report["quality"]] == ["eng_Latn", "swh_Latn"]
    assert report["sizes"][-1]["params_after"] == sum(p.numel() for p in model.parameters())
    assert report["reload_max_abs_logit"] == 0.0
    assert res.report["speed"]["after"]["tokens_per_s"] > 0
    assert "Slimming (Polyprune)" in (out / "README.md").read_text()
    sents = (data_dir / "flores200" / "dev" / "swh_Latn.dev").read_text().splitlines()[:5]
    for s in sents:  # same pieces, same logits at those tokens
        a = loaded.tokenizer(s)["input_ids"]
        b = tok(s)["input_ids"]
        assert b == [keep.index(i) for i in a]
        with torch.inference_mode():
            ref = loaded.model(input_ids=torch.tensor([a])).logits[0][:, torch.tensor(keep)]
            got = model(input_ids=torch.tensor([b])).logits[0]
        assert torch.allclose(got, ref, atol=1e-5)
    for r in report["quality"]:  # script mode on Latin text: the NLL does not grow
        assert r["change_pct"] <= 1e-6


def test_slim_stage_blocks_and_dtype(tiny_folder, tmp_path, data_dir):
    from polyprune.slimming.run import project, slim

    loaded = _loaded(tiny_folder)
    cfg = SlimConfig(keep=["eng_Latn"], vocab="none", remove_blocks=1, influence_sentences=4, dtype="bfloat16",
                     eval_sentences=3, speed=False, bootstrap=0, data=str(data_dir), out=str(tmp_path / "o"))
    proj = project(loaded, cfg)
    assert len(proj.plan.remove_blocks) == 1 and len(proj.plan.influence) == 3
    res = slim(loaded, cfg)
    assert res.plan.remove_blocks == proj.plan.remove_blocks
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 2
    assert len(model.config.layer_types) == 2
    total = next(r for r in res.report["sizes"] if r["part"] == "total")
    assert total["params_after"] == sum(r["params_after"] for r in proj.sizes if r["part"] != "total")
    assert total["bytes_after"] == 2 * total["params_after"]


@pytest.mark.parametrize("bad,msg", [
    (dict(keep=["xyz_Qqqq"]), "Unknown language"),
    (dict(keep=["eng_Latn"], vocab="corpus", corpus="file:EMPTY"), "corpus is empty"),
    (dict(keep=["eng_Latn"], vocab="corpus", corpus="file:CYR"), "not written in the kept"),
    (dict(keep=["eng_Latn"], vocab="size", vocab_size=5, corpus="file:LAT"), "smaller than the"),
    (dict(keep=["eng_Latn"], remove_blocks=3, corpus="file:LAT"), "would leave none"),
    (dict(keep=["eng_Latn"], heads={"0": [1]}), "Head removal is not connected"),
])
def test_bad_input_writes_nothing(tiny_folder, tmp_path, bad, msg):
    from polyprune.slimming.run import slim

    files = {"EMPTY": "\n \n", "CYR": "\n".join(CYRILLIC), "LAT": "\n".join(LATIN)}
    for k, v in files.items():
        (tmp_path / k).write_text(v)
    if "corpus" in bad:
        bad = dict(bad, corpus="file:" + str(tmp_path / bad["corpus"][5:]))
    loaded = _loaded(tiny_folder)
    out = tmp_path / "out"
    with pytest.raises(PolypruneError, match=msg):
        slim(loaded, SlimConfig(eval_sentences=0, speed=False, out=str(out), **bad))
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_output_rules(tiny_folder, tmp_path):
    from polyprune.slimming.run import slim

    loaded = _loaded(tiny_folder)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PolypruneError, match="not written by Polyprune"):
        slim(loaded, SlimConfig(keep=["en"], eval_sentences=0, speed=False, out=str(tmp_path / "mine")))
    with pytest.raises(PolypruneError, match="source"):
        slim(loaded, SlimConfig(keep=["en"], eval_sentences=0, speed=False, out=str(tiny_folder / "x")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_slim_stage_tasks_and_translation(tiny_folder, tmp_path, data_dir):
    from polyprune.slimming.run import slim
    from polyprune.evaluation import evaluate_tasks

    loaded = _loaded(tiny_folder)
    cfg = SlimConfig(keep=["eng_Latn", "swh_Latn"], vocab="script", eval_sentences=2, tasks=["xnli"], task_limit=4,
                     translation=True, translation_limit=2, speed=False, bootstrap=50, data=str(data_dir))
    res = slim(loaded, cfg)  # out=None: measured, nothing written
    assert res.out is None
    rows = res.report["tasks"]
    xnli = {(r["language"], r["metric"]): r for r in rows if r["task"] == "xnli"}
    assert set(xnli) == {("en", "acc"), ("en", "acc_norm"), ("sw", "acc"), ("sw", "acc_norm"), ("sw", "rankc")}
    ref = evaluate_tasks(loaded.model, loaded.tokenizer, ["xnli"], ["en"], str(data_dir), limit=4, bootstrap=0)
    assert xnli[("en", "acc")]["before"] == next(r.value for r in ref if r.metric == "acc")
    mt = [r for r in rows if r["task"] == "flores_mt"]
    assert {r["language"] for r in mt} == {"swh_Latn-eng_Latn", "eng_Latn-swh_Latn"} and all(r["n"] == 2 for r in mt)
