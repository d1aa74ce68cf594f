"""Tests for polyprune.evaluation: the log-likelihood engine, perplexity, FLORES and XNLI."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from conftest import FAMILIES, make_tiny_model, make_tokenizer
from polyprune.errors import Cancelled, PolypruneError
from polyprune.evaluation import (Result, compare, evaluate_tasks, flores_perplexity, loglikelihoods,
                                  perplexity)
from polyprune.evaluation.tasks import TASKS, XNLI_WORDS
from polyprune.progress import Progress


def xnli_requests(doc, lang, tokenizer):
    """XNLI requests through the one task implementation."""
    return TASKS["xnli"].requests(doc, lang, tokenizer)


def xnli_accuracy(model, tokenizer, folder, languages, limit=None, batch_size=8):
    """XNLI accuracy through the one evaluation path."""
    return evaluate_tasks(model, tokenizer, ["xnli"], languages, folder, limit=limit, batch_size=batch_size,
                          metrics=["acc"], bootstrap=0)


def naive(model, ctx, cont):
    """Reference: full-model logits of ctx+cont, float32 log-softmax, summed over cont."""
    with torch.no_grad():
        ids = torch.tensor([ctx + cont])
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[0]
    L = len(ctx)
    pos = torch.arange(L - 1, L - 1 + len(cont))
    t = torch.tensor(cont)
    lp = logp[pos, t]
    return float(lp.double().sum()), len(cont), bool((logp[pos].argmax(-1) == t).all())


def random_requests(n=7, seed=0):
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        ctx = [1] + [rng.randrange(3, 259) for _ in range(rng.randrange(0, 20))]
        cont = [rng.randrange(3, 259) for _ in range(rng.randrange(1, 12))]
        reqs.append((ctx, cont))
    return reqs


@pytest.mark.parametrize("family", FAMILIES)
def test_loglikelihoods_match_naive(family):
    model = make_tiny_model(family)
    reqs = random_requests()
    reqs.append(([5], [7]))  # shortest possible
    reqs.append(([1, 4, 4], []))  # empty continuation
    calls = []
    progress = Progress(lambda f, m: calls.append(f), min_interval=0.0)
    got = loglikelihoods(model, reqs, batch_size=3, progress=progress)
    assert len(got) == len(reqs)
    for (ctx, cont), (lp, n, greedy) in zip(reqs, got):
        if not cont:
            assert (lp, n, greedy) == (0.0, 0, True)
            continue
        ref_lp, ref_n, ref_greedy = naive(model, ctx, cont)
        assert n == ref_n
        assert lp == pytest.approx(ref_lp, abs=1e-4)
        assert greedy == ref_greedy
    assert calls and calls[-1] == pytest.approx(1.0)
    assert not model.training


def test_loglikelihoods_softcapping_and_greedy():
    model = make_tiny_model("gemma3")
    model.config.final_logit_softcapping = 0.5  # strong cap so it matters
    reqs = random_requests(4, seed=1)
    got = loglikelihoods(model, reqs, batch_size=2)
    for (ctx, cont), (lp, _, _) in zip(reqs, got):
        assert lp == pytest.approx(naive(model, ctx, cont)[0], abs=1e-4)
    # A continuation made of the model's own greedy tokens is greedy.
    ctx = [1, 40, 41]
    with torch.no_grad():
        nxt = int(model(input_ids=torch.tensor([ctx])).logits[0, -1].argmax())
    assert loglikelihoods(model, [(ctx, [nxt])])[0][2] is True


def test_loglikelihoods_truncation_and_errors():
    model = make_tiny_model("llama")
    ctx, cont = list(range(3, 40)), [50, 51, 52]
    (lp, n, _), = loglikelihoods(model, [(ctx, cont)], max_length=10)
    # harness: input = (ctx + cont)[-(max_length + 1):][:-1]
    kept = (ctx + cont)[-11:]
    assert n == 3 and lp == pytest.approx(naive(model, kept[:-3], cont)[0], abs=1e-4)
    with pytest.raises(ValueError):
        loglikelihoods(model, [([], [5])])
    with pytest.raises(ValueError):
        loglikelihoods(model, [([1], [5] * 5)], max_length=3)
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        loglikelihoods(model, random_requests(3), progress=p)


def test_loglikelihoods_bfloat16():
    model = make_tiny_model("llama").to(torch.bfloat16)
    reqs = random_requests(3)
    got = loglikelihoods(model, reqs, batch_size=2)
    for (ctx, cont), (lp, _, _) in zip(reqs, got):
        assert math.isfinite(lp)
        assert lp == pytest.approx(naive(model, ctx, cont)[0], abs=0.2)


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_perplexity_matches_loss(family, tokenizer):
    model = make_tiny_model(family)
    texts = ["Hello world, this is a test.", "", "Grüße 你好 สวัสดี"]
    ppl, nll, tokens = perplexity(model, tokenizer, texts, batch_size=2)
    ref_nll, ref_tokens = 0.0, 0
    for t in texts:
        if not t:
            continue
        ids = tokenizer(t)["input_ids"]  # the byte tokenizer adds <s>
        assert ids[0] == tokenizer.bos_token_id
        x = torch.tensor([ids])
        with torch.no_grad():
            loss = model(input_ids=x, labels=x).loss
        ref_nll += float(loss) * (len(ids) - 1)
        ref_tokens += len(ids) - 1
    assert tokens == ref_tokens
    assert nll == pytest.approx(ref_nll, rel=1e-5)
    assert ppl == pytest.approx(math.exp(ref_nll / ref_tokens), rel=1e-5)


def test_perplexity_prepends_bos_when_missing(tokenizer):
    model = make_tiny_model("llama")
    ids = tokenizer("abc", add_special_tokens=False)["input_ids"]

    class NoBos:
        bos_token_id, eos_token_id, all_special_ids = 1, 2, [0, 1, 2]

        def __call__(self, text):
            return {"input_ids": list(ids)}

    _, nll, tokens = perplexity(model, NoBos(), ["abc"])
    assert tokens == len(ids)
    assert -nll == pytest.approx(naive(model, [1], ids)[0], abs=1e-4)
    with pytest.raises(PolypruneError):
        perplexity(model, tokenizer, ["", "  "])


def test_xnli_requests(tokenizer):
    doc = {"premise": "A cat sat.", "hypothesis": "An animal sat.", "label": 0}
    reqs = xnli_requests(doc, "en", tokenizer)
    assert len(reqs) == 3
    for (ctx, cont), word in zip(reqs, ["Yes", "Also", "No"]):
        assert ctx == [tokenizer.bos_token_id]
        text = tokenizer.decode(cont)
        assert text == f" A cat sat., right? {word}, An animal sat."
    sw = xnli_requests(doc, "sw", tokenizer)
    assert [tokenizer.decode(c) for _, c in sw] == [
        f" A cat sat., sahihi? {w}, An animal sat." for w in ("Ndiyo", "Hivyo", "Hapana")]
    assert len(XNLI_WORDS) == 15
    with pytest.raises(PolypruneError, match="sw"):
        xnli_requests(doc, "xx", tokenizer)


def test_xnli_requests_continuation_starting_with_bos():
    class BosTok:
        bos_token_id, eos_token_id = 1, 2

        def encode(self, text, add_special_tokens=True):
            return [1, 10, 11, 12]

        def decode(self, ids):
            return "<s>"

    reqs = xnli_requests({"premise": "p", "hypothesis": "h", "label": 0}, "en", BosTok())
    assert reqs[0] == ([1], [10, 11, 12])


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")


def test_xnli_accuracy_matches_naive(tmp_path, tokenizer):
    model = make_tiny_model("bloom")
    rows = [{"premise": f"Sentence number {i} here.", "hypothesis": f"Claim {i * 7}.",
             "label": i % 3} for i in range(7)]
    _write_jsonl(tmp_path / "test.en.jsonl", rows)
    rec, = xnli_accuracy(model, tokenizer, tmp_path, ["en"], limit=5, batch_size=4)
    correct = []
    for doc in rows[:5]:
        scores = [naive(model, ctx, cont)[0] for ctx, cont in xnli_requests(doc, "en", tokenizer)]
        correct.append(float(max(range(3), key=lambda j: scores[j]) == doc["label"]))
    acc = sum(correct) / 5
    assert (rec.task, rec.language, rec.metric, rec.n) == ("xnli", "en", "acc", 5)
    assert rec.value == pytest.approx(acc)
    std = math.sqrt(sum((c - acc) ** 2 for c in correct) / 4)
    assert rec.extra["stderr"] == pytest.approx(std / math.sqrt(5))
    d = rec.to_dict()
    assert d["metric"] == "acc" and d["extra"]["stderr"] == rec.extra["stderr"]


def test_xnli_bad_files(tmp_path, tokenizer):
    model = make_tiny_model("gpt2")
    good = {"premise": "p", "hypothesis": "h", "label": 1}
    with pytest.raises(PolypruneError, match="fr"):
        xnli_accuracy(model, tokenizer, tmp_path, ["xx"])
    with pytest.raises(PolypruneError, match=r"test\.en\.jsonl"):
        xnli_accuracy(model, tokenizer, tmp_path, ["en"])
    with pytest.raises(PolypruneError, match="No xnli data"):
        xnli_accuracy(model, tokenizer, tmp_path / "nope", ["en"])
    _write_jsonl(tmp_path / "test.en.jsonl", [good, {"premise": "p", "label": 0}])
    with pytest.raises(PolypruneError, match=r"line 2.*hypothesis"):
        xnli_accuracy(model, tokenizer, tmp_path, ["en"])
    _write_jsonl(tmp_path / "test.en.jsonl", [good, good, {**good, "label": 3}])
    with pytest.raises(PolypruneError, match=r"test\.en\.jsonl, line 3.*label"):
        xnli_accuracy(model, tokenizer, tmp_path, ["en"])
    (tmp_path / "test.en.jsonl").write_text('{"premise": \n', encoding="utf-8")
    with pytest.raises(PolypruneError, match="line 1"):
        xnli_accuracy(model, tokenizer, tmp_path, ["en"])


def test_flores_local_and_errors(tmp_path, tokenizer):
    model = make_tiny_model("xglm")
    split = tmp_path / "devtest"
    split.mkdir()
    (split / "eng_Latn.devtest").write_text("One sentence.\nTwo sentences here.\nThree.\n",
                                            encoding="utf-8")
    for where in (tmp_path, split):
        rec, = flores_perplexity(model, tokenizer, where, ["eng_Latn"], limit=2)
        ppl, nll, tokens = perplexity(model, tokenizer, ["One sentence.", "Two sentences here."])
        assert (rec.task, rec.language, rec.metric, rec.n) == ("flores_ppl", "eng_Latn",
                                                               "perplexity", 2)
        assert rec.value == pytest.approx(ppl) and rec.extra["tokens"] == tokens
        assert rec.extra["nll"] == pytest.approx(nll)
    with pytest.raises(PolypruneError, match="devtest"):
        flores_perplexity(model, tokenizer, tmp_path, ["fra_Latn"])
    with pytest.raises(PolypruneError, match="FLORES"):
        flores_perplexity(model, tokenizer, tmp_path / "missing", ["eng_Latn"])


def test_compare():
    dense = [Result("xnli", "en", "acc", 0.5, n=10), Result("flores_ppl", "eng_Latn", "perplexity", 10.0, n=4)]
    pruned = [Result("flores_ppl", "eng_Latn", "perplexity", 12.5, n=4), Result("xnli", "sw", "acc", 0.4, n=10)]
    rows = compare(dense, pruned)
    assert {k: rows[0][k] for k in ("task", "language", "metric", "dense", "pruned", "delta")} == {
        "task": "xnli", "language": "en", "metric": "acc", "dense": 0.5, "pruned": None, "delta": None}
    assert rows[1]["delta"] == pytest.approx(2.5)
    assert rows[2]["language"] == "sw" and rows[2]["dense"] is None


def test_real_data(data_dir, tokenizer):
    model = make_tiny_model("gemma3")
    recs = flores_perplexity(model, tokenizer, data_dir / "flores200",
                             ["eng_Latn", "swh_Latn", "zho_Hans"], limit=4)
    assert [r.language for r in recs] == ["eng_Latn", "swh_Latn", "zho_Hans"]
    for r in recs:
        assert r.n == 4 and r.extra["tokens"] > 0 and math.isfinite(r.value) and r.value > 1
    rec, = xnli_accuracy(model, tokenizer, data_dir / "xnli", ["en"], limit=4)  # row 5 exceeds the tiny context
    assert rec.n == 4 and 0.0 <= rec.value <= 1.0 and math.isfinite(rec.extra["stderr"])


def test_flores_resolves_language_names(tmp_path, tokenizer):
    pytest.importorskip("polyprune.languages")
    model = make_tiny_model("llama")
    (tmp_path / "devtest").mkdir()
    (tmp_path / "devtest" / "swh_Latn.devtest").write_text("Habari ya asubuhi.\n", encoding="utf-8")
    rec, = flores_perplexity(model, tokenizer, tmp_path, ["sw"])
    assert rec.language == "swh_Latn" and rec.n == 1


# --- shared-prefix engine -------------------------------------------------------------------
def _grouped_requests(tok):
    import random
    rnd = random.Random(0)

    def enc(s):
        return tok(s, add_special_tokens=False)["input_ids"]
    reqs, groups = [], []
    for d in range(5):  # XNLI-like: empty context, shared premise
        prem = f" premise {d} {'x' * rnd.randint(0, 9)}"
        for w in ("Yes", "Also", "No"):
            reqs.append(([1], enc(f"{prem}, right? {w}, hyp {'y' * rnd.randint(0, 4)}")))
            groups.append(("x", d))
    for d in range(2):  # XWinograd-like: different contexts, one continuation
        for opt in ("the dog", "the cat sat"):
            reqs.append(([1] + enc("When " + opt), enc(" ran away")))
            groups.append(("w", d))
    for d in range(2):  # XCOPA-like: shared context, short choices
        ctx = [1] + enc("The man broke his toe because")
        for c in (" he dropped a hammer", " he got a hole"):
            reqs.append((ctx, enc(c)))
            groups.append(("c", d))
    reqs += [([1] + enc("abc"), enc("d")), ([1] + enc("abc"), enc("e")), ([1], [])]
    groups += ["s", "s", "s"]
    return reqs, groups


@pytest.mark.parametrize("family", FAMILIES + ["gemma3-window"])
def test_grouped_engine_matches_naive(family):
    tok = make_tokenizer()
    if family == "gemma3-window":  # sliding window longer than the inputs: KV path on Gemma 3
        import transformers as tf
        from conftest import make_config
        cfg = make_config("gemma3")
        cfg.sliding_window = 128
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.2)
    else:
        model = make_tiny_model(family)
    reqs, groups = _grouped_requests(tok)
    with torch.no_grad():
        naive = []
        for ctx, cont in reqs:
            lp = model(input_ids=torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
            naive.append(sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont)))
    for bs in (1, 5, 32):
        got = loglikelihoods(model, reqs, batch_size=bs, groups=groups)
        for (s, n, _), ref, (ctx, cont) in zip(got, naive, reqs):
            assert n == len(cont)
            assert abs(s - ref) < 1e-4
