"""Tests for polyprune.evaluation.tasks: harness-exact requests for every task, metrics, CIs, RankC, errors."""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_model, save_tiny
from polyprune.errors import Cancelled, PolypruneError
from polyprune.progress import Progress
from polyprune.evaluation import evaluate_tasks
from polyprune.evaluation.stats import bootstrap_ci, rankc, rankc_items
from polyprune.evaluation.tasks import (TASKS, XNLI_WORDS, CustomTask, encode_pair, get_task, load_custom_task,
                                        tok_encode)


def naive(model, ctx, cont):
    """Full-model logits of ctx+cont, float32 log-softmax, summed over cont."""
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ctx + cont])).logits.float().log_softmax(-1)[0]
    pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont))
    return float(logp[pos, torch.tensor(cont)].double().sum())


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


XCOPA_ROWS = [
    {"premise": "L'uomo aprì il rubinetto.", "choice1": "Il gabinetto si riempì d'acqua.",
     "choice2": "L'acqua uscì dal beccuccio.", "question": "effect", "label": 1, "idx": 1},
    {"premise": "La ragazza trovò un insetto nei cereali.", "choice1": "Versò il latte nella ciotola.",
     "choice2": "Perse l'appetito.", "question": "cause", "label": 1, "idx": 2},
    {"premise": "Il cane abbaiò.", "choice1": "Arrivò il postino.", "choice2": "Dormiva.",
     "question": "cause", "label": 0, "idx": 3},
]
XWINO_ROWS = [
    {"sentence": "The trophy doesn't fit into the brown suitcase because the _ is too large.",
     "option1": "trophy", "option2": "suitcase", "answer": "1"},
    {"sentence": "The city councilmen refused the demonstrators a permit because _ feared violence.",
     "option1": "The city councilmen", "option2": "The demonstrators", "answer": "2"},
    {"sentence": "Paul tried to call George, but _ wasn't available.", "option1": "Paul",
     "option2": "George", "answer": 2},
]
# premises repeat as in XNLI (three hypotheses per premise): documents share their prefix work
XNLI_ROWS = [{"premise": f"Sentence number {i // 2} is here.", "hypothesis": f"Claim {i * 7} holds.",
              "label": i % 3} for i in range(6)]
STORY_ROWS = [
    {"story_id": "a", "input_sentence_1": "I became a fan.", "input_sentence_2": "I was ill.",
     "input_sentence_3": "I watched.", "input_sentence_4": "It was hard.", "sentence_quiz1": "I hate it.",
     "sentence_quiz2": "Eventually I watched them all.", "answer_right_ending": 2},
    {"story_id": "b", "input_sentence_1": "Bob was loved.", "input_sentence_2": "Bob hated it.",
     "input_sentence_3": "Jim asked.", "input_sentence_4": "Bob exploded.",
     "sentence_quiz1": "Bob told him to leave.", "sentence_quiz2": "Bob was happy.", "answer_right_ending": 1},
]
PAWS_ROWS = [
    {"sentence1": "From the merger of the Four Rivers Council and the Audubon Council , the Shawnee "
                  "Trails Council was born .",
     "sentence2": "Shawnee Trails Council was formed from the merger of the Four Rivers Council and "
                  "the Audubon Council .", "label": 1},
    {"sentence1": "", "sentence2": "Dropped by the harness .", "label": 0},
    {"sentence1": "Kathy ( Peter Dean ) is n't \" stable \" ;", "sentence2": "Kathy 's fine .", "label": 0},
]


def make_data(root: Path) -> Path:
    write_jsonl(root / "xnli" / "test.en.jsonl", XNLI_ROWS)
    write_jsonl(root / "xnli" / "test.fr.jsonl",
                [{**r, "premise": r["premise"].replace("Sentence", "Phrase")} for r in XNLI_ROWS])
    write_jsonl(root / "xcopa" / "test.it.jsonl", XCOPA_ROWS)
    write_jsonl(root / "xwinograd" / "test.en.jsonl", XWINO_ROWS)
    write_jsonl(root / "xstorycloze" / "eval.en.jsonl", STORY_ROWS)
    write_jsonl(root / "pawsx" / "dev.en.jsonl", PAWS_ROWS)
    return root


# ------------------------------------------------------------------------------------------
# Request construction
# ------------------------------------------------------------------------------------------
def test_encode_pair_follows_hflm(tokenizer):
    bos = tokenizer.bos_token_id
    # empty context: [BOS] + continuation without special tokens
    assert encode_pair(tokenizer, "", " ab") == ([bos], tokenizer.encode(" ab", add_special_tokens=False))
    # continuation already starting with BOS: split it
    ctx, cont = encode_pair(tokenizer, "", "<s> ab")
    assert ctx == [bos] and tokenizer.decode(cont) == " ab"
    # non-empty context: trailing spaces move to the continuation; whole - context
    ctx, cont = encode_pair(tokenizer, "Question: x  ", "yes")
    assert ctx == tokenizer.encode("Question: x") and ctx[0] == bos
    assert ctx + cont == tokenizer.encode("Question: x  yes")
    assert tokenizer.decode(cont) == "  yes"
    # a string already starting with the decoded BOS gets no second BOS
    assert tok_encode(tokenizer, "<s>hi") == tokenizer.encode("<s>hi", add_special_tokens=False)
    assert tok_encode(tokenizer, "hi") == [bos] + tokenizer.encode("hi", add_special_tokens=False)


def xnli_requests(doc, lang, tokenizer):
    """Naive reference: the harness's XNLI requests with an empty context, written out."""
    q, e, n, c = XNLI_WORDS[lang]
    out = []
    for w in (e, n, c):
        cont = tokenizer(f" {doc['premise']}, {q}? {w}, {doc['hypothesis']}", add_special_tokens=False)["input_ids"]
        out.append(([tokenizer.bos_token_id], cont))
    return out


def test_xnli_task_matches_evaluation(tokenizer):
    task = get_task("xnli")
    for lang, doc in (("en", XNLI_ROWS[1]), ("sw", XNLI_ROWS[2])):
        assert task.requests(doc, lang, tokenizer) == xnli_requests(doc, lang, tokenizer)
        inst = task.instance(doc, lang)
        assert task.encode(inst, tokenizer) == xnli_requests(doc, lang, tokenizer)
    inst = task.instance(XNLI_ROWS[0], "fr")
    assert inst.contexts == ["", "", ""]
    assert inst.continuations == [f" Sentence number 0 is here., correct? {w}, Claim 0 holds."
                                  for w in ("Oui", "Aussi", "Non")]
    assert inst.choices[0] == "Sentence number 0 is here., correct? Oui, Claim 0 holds."


def test_pawsx_strings():
    task = get_task("paws-x")
    inst = task.instance(PAWS_ROWS[0], "en")
    s1 = ("From the merger of the Four Rivers Council and the Audubon Council, the Shawnee Trails "
          "Council was born")
    s2 = "shawnee Trails Council was formed from the merger of the Four Rivers Council and the Audubon Council."
    assert inst.choices == [f"{s1}, right? No, {s2}", f"{s1}, right? Yes, {s2}"]
    assert inst.continuations == inst.choices  # target_delimiter ""
    assert inst.contexts == ["", ""] and inst.gold == 1
    inst = task.instance(PAWS_ROWS[2], "fr")
    assert inst.choices[0] == "Kathy (Peter Dean) isn't\"stable\", n'est-ce pas? Non, kathy's fine."
    # ja/ko/zh: raw sentences, no detokenisation
    zh = task.instance({"sentence1": "凯西经济状况稳定 。", "sentence2": "Peter 稳定。", "label": 1}, "zh")
    assert zh.choices == ["凯西经济状况稳定 。, 对吧? 不是, Peter 稳定。", "凯西经济状况稳定 。, 对吧? 是, Peter 稳定。"]
    es = task.instance(PAWS_ROWS[0], "es")
    assert ", verdad? Sí, " in es.choices[1]


def test_pawsx_drops_empty_rows_like_the_harness(tmp_path):
    make_data(tmp_path)
    insts = TASKS["pawsx"].load(tmp_path, "en", limit=2)
    assert [i.where.rsplit(" ", 1)[1] for i in insts] == ["1", "3"]  # line 2 dropped before limit


def test_xcopa_cause_effect(tokenizer):
    task = get_task("xcopa")
    eff = task.instance(XCOPA_ROWS[0], "it")
    assert eff.contexts == ["L'uomo aprì il rubinetto quindi"] * 2
    assert eff.continuations == [" il gabinetto si riempì d'acqua.", " l'acqua uscì dal beccuccio."]
    assert eff.choices == ["il gabinetto si riempì d'acqua.", "l'acqua uscì dal beccuccio."]
    cause = task.instance(XCOPA_ROWS[1], "it")
    assert cause.contexts[0] == "La ragazza trovò un insetto nei cereali perché"
    sw = task.instance({**XCOPA_ROWS[0], "premise": "Mwanamume alifungua bomba. "}, "sw")
    assert sw.contexts[0] == "Mwanamume alifungua bomba kwa hiyo"
    zh = task.instance({**XCOPA_ROWS[1], "premise": "女孩发现了虫子。"}, "zh")
    assert zh.contexts[0] == "女孩发现了虫子 因为"
    (ctx, cont), _ = task.requests(XCOPA_ROWS[0], "it", tokenizer)
    assert tokenizer.decode(ctx) == "<s>L'uomo aprì il rubinetto quindi"
    assert tokenizer.decode(cont) == " il gabinetto si riempì d'acqua."


def test_xstorycloze_joined_context():
    inst = get_task("xstorycloze").instance(STORY_ROWS[0], "en")
    assert inst.contexts == ["I became a fan. I was ill. I watched. It was hard."] * 2
    assert inst.continuations == [" I hate it.", " Eventually I watched them all."]
    assert inst.gold == 1


def test_xwinograd_partial_scoring(tokenizer):
    task = get_task("xwinograd")
    inst = task.instance(XWINO_ROWS[0], "en")
    assert inst.contexts == ["The trophy doesn't fit into the brown suitcase because the trophy",
                             "The trophy doesn't fit into the brown suitcase because the suitcase"]
    assert inst.continuations == [" is too large.", " is too large."]
    assert inst.choices == inst.contexts and inst.gold == 0
    (c1, t1), (c2, t2) = task.requests(XWINO_ROWS[0], "en", tokenizer)
    assert t1 == t2 and c1 != c2 and tokenizer.decode(t1) == " is too large."
    assert task.instance(XWINO_ROWS[2], "en").gold == 1  # int answers accepted too
    assert task.language("ja") == "jp" and task.language("Japanese") == "jp"


def test_language_resolution():
    assert TASKS["xnli"].language("fra_Latn") == "fr"
    assert TASKS["xnli"].language("French") == "fr"
    assert TASKS["xnli"].language("SW") == "sw"
    assert TASKS["xstorycloze"].language("zho_Hans") == "zh"
    with pytest.raises(PolypruneError, match=r"xcopa has no language 'en'.*et, ht, id"):
        TASKS["xcopa"].language("en")
    with pytest.raises(PolypruneError, match="Klingon"):
        TASKS["xnli"].language("Klingon")
    with pytest.raises(PolypruneError, match="Unknown task"):
        get_task("nope")
    assert get_task("PAWS-X") is TASKS["pawsx"] and get_task("ppl").name == "flores_ppl"


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
def test_metrics_match_naive(tmp_path, tokenizer):
    model = make_tiny_model("llama")
    make_data(tmp_path)
    metrics = ("acc", "acc_norm", "acc_bytes", "prompt_mean")
    res = evaluate_tasks(model, tokenizer, "xnli,xcopa,xwinograd,xstorycloze,pawsx", None, tmp_path,
                         metrics=metrics, bootstrap=0, batch_size=3, log_samples=True)
    assert not [r for r in res if r.metric == "error"]
    by = {(r.task, r.language, r.metric): r for r in res}
    for tname, lang in (("xnli", "en"), ("xnli", "fr"), ("xcopa", "it"), ("xwinograd", "en"),
                        ("xstorycloze", "en"), ("pawsx", "en")):
        task = TASKS[tname]
        insts = task.load(tmp_path, lang)
        exp = {m: [] for m in metrics}
        lls_ref = []
        for inst in insts:
            pairs = task.encode(inst, tokenizer)
            lls = [naive(model, c, t) for c, t in pairs]
            lls_ref.append(lls)
            pm = [naive(model, (c + t)[:1], (c + t)[1:]) / (len(c + t) - 1) for c, t in pairs]
            by_len = {"acc": [1] * len(lls), "acc_bytes": [len(s.encode("utf-8")) for s in inst.choices],
                      "acc_norm": [len(s) for s in inst.choices]}
            for m in metrics:
                score = pm if m == "prompt_mean" else [x / n for x, n in zip(lls, by_len[m])]
                exp[m].append(float(int(np.argmax(score)) == inst.gold))
        acc = by[(tname, lang, "acc")]
        assert acc.n == len(insts)
        np.testing.assert_allclose(acc.extra["lls"], lls_ref, atol=1e-4)
        for m in metrics:
            assert by[(tname, lang, m)].value == pytest.approx(sum(exp[m]) / len(exp[m])), (tname, m)
        assert acc.extra["stderr"] == pytest.approx(np.std(exp["acc"], ddof=1) / math.sqrt(len(insts)))
    # RankC between English and French XNLI on the parallel items
    rk = by[("xnli", "fr", "rankc")]
    en = [np.exp(x) / np.exp(x).sum() for x in np.array(by[("xnli", "en", "acc")].extra["lls"])]
    fr = [np.exp(x) / np.exp(x).sum() for x in np.array(by[("xnli", "fr", "acc")].extra["lls"])]
    assert rk.value == pytest.approx(naive_rankc(en, fr)) and rk.n == 6


def test_ties_take_the_first_choice():
    assert int(np.argmax([-1.0, -1.0, -2.0])) == 0  # the convention evaluate_tasks relies on


def test_bootstrap_ci():
    rng = random.Random(0)
    x = [float(rng.random() < 0.6) for _ in range(200)]
    lo, hi = bootstrap_ci(x, iters=500, seed=3)
    assert lo <= np.mean(x) <= hi and 0.0 <= lo < hi <= 1.0
    assert bootstrap_ci(x, iters=500, seed=3) == (lo, hi)
    assert bootstrap_ci(x, iters=500, seed=4) != (lo, hi)
    assert bootstrap_ci([1.0, 1.0], iters=10) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_ci([], iters=10))


def test_runner_cis_are_seeded(tmp_path, tokenizer):
    model = make_tiny_model("gpt2")
    make_data(tmp_path)
    a = evaluate_tasks(model, tokenizer, ["xnli"], ["en"], tmp_path, bootstrap=200, seed=1, run_id="r")
    b = evaluate_tasks(model, tokenizer, ["xnli"], ["en"], tmp_path, bootstrap=200, seed=1, run_id="r")
    assert [(r.metric, r.value, r.ci_low, r.ci_high) for r in a] == \
           [(r.metric, r.value, r.ci_low, r.ci_high) for r in b]
    for r in a:
        assert r.ci_low <= r.value <= r.ci_high and r.run_id == "r"


def naive_rankc(P, Q):
    """Qi et al. 2023 written out: descending ranks, P@j, softmax(Q-1..0) weights."""
    total = 0.0
    for p, q in zip(P, Q):
        k = len(p)
        rp = sorted(range(k), key=lambda i: (-p[i], i))
        rq = sorted(range(k), key=lambda i: (-q[i], i))
        ws = [math.exp(k - 1 - j) for j in range(k)]
        ws = [w / sum(ws) for w in ws]
        total += sum(ws[j - 1] * len(set(rp[:j]) & set(rq[:j])) / j for j in range(1, k + 1))
    return total / len(P)


def test_rankc_vs_naive():
    rng = np.random.default_rng(0)
    for Q in (2, 3, 5):
        P = rng.dirichlet(np.ones(Q), size=20)
        R = rng.dirichlet(np.ones(Q), size=20)
        assert rankc(P, R) == pytest.approx(naive_rankc(P.tolist(), R.tolist()))
    P = rng.dirichlet(np.ones(3), size=10)
    assert rankc(P, P) == pytest.approx(1.0)
    # descending matters: top-1 agreement carries the most weight
    p, q_same_top, q_same_bottom = [0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.1, 0.5, 0.4]
    assert rankc([p], [q_same_top]) > rankc([p], [q_same_bottom])
    assert rankc_items([p], [q_same_top]).shape == (1,)
    with pytest.raises(ValueError):
        rankc([[0.5, 0.5]], [[0.3, 0.3, 0.4]])


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def test_bad_input_messages(tmp_path):
    task = TASKS["xcopa"]
    f = tmp_path / "xcopa" / "test.it.jsonl"
    cases = [
        ([XCOPA_ROWS[0], {k: v for k, v in XCOPA_ROWS[1].items() if k != "choice2"}], r"line 2: field 'choice2' is missing"),
        ([XCOPA_ROWS[0], XCOPA_ROWS[1], {**XCOPA_ROWS[2], "label": 2}], r"line 3: field 'label' is 2, out of range"),
        ([{**XCOPA_ROWS[0], "question": "why"}], r"line 1: field 'question' is 'why'"),
        ([{**XCOPA_ROWS[0], "premise": 5}], r"line 1: field 'premise' is 5, not a string"),
    ]
    for rows, pattern in cases:
        write_jsonl(f, rows)
        with pytest.raises(PolypruneError, match=str(f).replace(".", r"\.") + ", " + pattern):
            task.load(tmp_path, "it")
    f.write_text("\n\n", encoding="utf-8")
    with pytest.raises(PolypruneError, match=r"test\.it\.jsonl is empty"):
        task.load(tmp_path, "it")
    f.write_text('{"premise": "x"\n', encoding="utf-8")
    with pytest.raises(PolypruneError, match=r"line 1: not valid JSON"):
        task.load(tmp_path, "it")
    with pytest.raises(PolypruneError, match=r"No xcopa data for language 'sw'.*test\.sw\.jsonl"):
        task.load(tmp_path, "sw")
    with pytest.raises(PolypruneError, match="has no language"):
        task.load(tmp_path, "en")
    write_jsonl(tmp_path / "xwinograd" / "test.en.jsonl", [{**XWINO_ROWS[0], "sentence": "no blank"}])
    with pytest.raises(PolypruneError, match=r"line 1: field 'sentence' has no blank"):
        TASKS["xwinograd"].load(tmp_path, "en")
    write_jsonl(tmp_path / "xstorycloze" / "eval.en.jsonl", [{**STORY_ROWS[0], "answer_right_ending": 3}])
    with pytest.raises(PolypruneError, match=r"line 1: field 'answer_right_ending' is 3"):
        TASKS["xstorycloze"].load(tmp_path, "en")


def test_multi_task_run_keeps_other_results(tmp_path, tokenizer):
    model = make_tiny_model("llama")
    make_data(tmp_path)
    write_jsonl(tmp_path / "xstorycloze" / "eval.sw.jsonl",
                [STORY_ROWS[0], {**STORY_ROWS[1], "sentence_quiz2": None}])
    res = evaluate_tasks(model, tokenizer, ["xnli", "xcopa", "nope", "xstorycloze"],
                         {"xnli": ["en"], "xcopa": ["it", "sw", "en"], "nope": ["en"], "xstorycloze": ["en", "sw"]},
                         tmp_path, metrics=["acc"], bootstrap=0, on_error="record")
    rows = [(r.task, r.language, r.metric) for r in res]
    assert rows == [("xnli", "en", "acc"), ("xcopa", "it", "acc"), ("xcopa", "sw", "error"),
                    ("xcopa", "en", "error"), ("nope", "*", "error"), ("xstorycloze", "en", "acc"),
                    ("xstorycloze", "sw", "error")]
    err = {(r.task, r.language): r.error for r in res if r.metric == "error"}
    assert "test.sw.jsonl" in err[("xcopa", "sw")]
    assert "has no language" in err[("xcopa", "en")]
    assert "eval.sw.jsonl, line 2: field 'sentence_quiz2'" in err[("xstorycloze", "sw")]
    assert all(math.isnan(r.value) for r in res if r.metric == "error")
    with pytest.raises(PolypruneError, match="test.sw.jsonl"):
        evaluate_tasks(model, tokenizer, ["xcopa"], ["sw"], tmp_path)
    with pytest.raises(PolypruneError, match="Unknown metric"):
        evaluate_tasks(model, tokenizer, ["xnli"], ["en"], tmp_path, metrics=["f1"])


def test_cancel_is_not_recorded(tmp_path, tokenizer):
    model = make_tiny_model("llama")
    make_data(tmp_path)
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        evaluate_tasks(model, tokenizer, ["xnli"], ["en"], tmp_path, progress=p, on_error="record")


# ------------------------------------------------------------------------------------------
# Custom tasks
# ------------------------------------------------------------------------------------------
def test_custom_task(tmp_path, tokenizer):
    rows = [{"q": "Capital of France?", "a": "Paris", "b": "Rome", "gold": 0},
            {"q": "2 + 2 =", "a": "3", "b": "4", "gold": 1}]
    f = write_jsonl(tmp_path / "quiz.jsonl", rows)
    task = CustomTask(f, "Q: {q}\nA:", ["{a}", "{b}"], "gold", name="quiz", language="en")
    inst = task.instance(rows[0], "en")
    assert inst.contexts == ["Q: Capital of France?\nA:"] * 2
    assert inst.continuations == [" Paris", " Rome"] and inst.gold == 0
    model = make_tiny_model("llama")
    res = evaluate_tasks(model, tokenizer, [task], None, None, metrics=["acc"], bootstrap=0)
    assert [(r.task, r.language, r.metric, r.n) for r in res] == [("quiz", "en", "acc", 2)]

    # choices from a list field, answer given as text, per-language files, spec file
    write_jsonl(tmp_path / "mc" / "test.fr.jsonl",
                [{"ctx": "Le ciel est", "options": ["bleu", "vert", "rouge"], "answer": "bleu"}])
    spec = tmp_path / "mc.json"
    spec.write_text(json.dumps({"file": "mc/test.{language}.jsonl", "context": "{ctx}",
                                "choices": "options", "answer": "answer"}), encoding="utf-8")
    task = load_custom_task(spec)
    assert task.name == "mc"
    inst, = task.load(None, "fr")
    assert inst.gold == 0 and inst.continuations == [" bleu", " vert", " rouge"]
    res = evaluate_tasks(model, tokenizer, [str(spec)], ["fr"], tmp_path, metrics=["acc", "acc_norm"],
                         bootstrap=0)
    assert [(r.task, r.language, r.metric) for r in res] == [("mc", "fr", "acc"), ("mc", "fr", "acc_norm")]

    # a template naming an absent field: file, line and field
    write_jsonl(f, rows + [{"q": "x", "a": "y", "gold": 0}])
    with pytest.raises(PolypruneError, match=r"quiz\.jsonl, line 3: field 'b' named by the choice 2 template is missing"):
        task_q = CustomTask(f, "Q: {q}\nA:", ["{a}", "{b}"], "gold", name="quiz", language="en")
        task_q.load(None, "en")
    write_jsonl(f, [{**rows[0], "gold": 2}])
    with pytest.raises(PolypruneError, match=r"line 1: field 'gold' is 2, out of range"):
        task_q.load(None, "en")
    write_jsonl(f, [{**rows[0], "gold": "Berlin"}])
    with pytest.raises(PolypruneError, match=r"line 1: field 'gold' is 'Berlin', which is none of the choices"):
        task_q.load(None, "en")
    with pytest.raises(PolypruneError, match="malformed"):
        CustomTask(f, "Q: {q", ["{a}"], "gold")
    with pytest.raises(PolypruneError, match="has no language"):
        task_q.load(None, "de")


# ------------------------------------------------------------------------------------------
# FLORES tasks through the runner
# ------------------------------------------------------------------------------------------
def test_flores_tasks_in_runner(tmp_path, tokenizer):
    pytest.importorskip("sacrebleu")
    model = make_tiny_model("gpt2")
    for split, n in (("dev", 6), ("devtest", 3)):
        d = tmp_path / "flores200" / split
        d.mkdir(parents=True)
        (d / f"eng_Latn.{split}").write_text("".join(f"Sentence {i}.\n" for i in range(n)), encoding="utf-8")
        (d / f"fra_Latn.{split}").write_text("".join(f"Phrase {i}.\n" for i in range(n)), encoding="utf-8")
    res = evaluate_tasks(model, tokenizer, "flores_ppl,flores_mt", ["en", "French"], tmp_path, limit=2,
                         translation={"shots": 2, "max_new_tokens": 4}, on_error="record")
    rows = [(r.task, r.language, r.metric, r.n) for r in res]
    assert rows == [("flores_ppl", "eng_Latn", "perplexity", 2), ("flores_ppl", "fra_Latn", "perplexity", 2),
                    ("flores_mt", "fra_Latn-eng_Latn", "chrf++", 2), ("flores_mt", "fra_Latn-eng_Latn", "bleu", 2),
                    ("flores_mt", "eng_Latn-fra_Latn", "chrf++", 2), ("flores_mt", "eng_Latn-fra_Latn", "bleu", 2)]
    assert all(math.isfinite(r.value) for r in res)


# ------------------------------------------------------------------------------------------
# Real data
# ------------------------------------------------------------------------------------------
def test_real_data_files(data_dir, tokenizer):
    from conftest import make_config
    from transformers import AutoModelForCausalLM

    cfg = make_config("llama")
    cfg.max_position_embeddings = 4096  # byte-level tokens of real documents exceed 256
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    pairs = [("xnli", "en"), ("xnli", "sw"), ("pawsx", "en"), ("pawsx", "ja"), ("xstorycloze", "en"),
             ("xstorycloze", "my"), ("xcopa", "it"), ("xwinograd", "fr")]
    available = [(t, l) for t, l in pairs
                 if (data_dir / t / f"{TASKS[t].default_split}.{l}.jsonl").is_file()]
    if not available:
        pytest.skip("no task files in the shared data folder")
    first = TASKS["pawsx"].load(data_dir, "en", limit=1)[0] if ("pawsx", "en") in available else None
    if first is not None:
        assert first.choices[1] == ("From the merger of the Four Rivers Council and the Audubon Council, the "
                                    "Shawnee Trails Council was born, right? Yes, shawnee Trails Council was "
                                    "formed from the merger of the Four Rivers Council and the Audubon Council.")
    tasks = sorted({t for t, _ in available})
    res = evaluate_tasks(model, tokenizer, tasks, {t: [l for tt, l in available if tt == t] for t in tasks},
                         data_dir, limit=4, bootstrap=50)
    assert len([r for r in res if r.metric == "acc"]) == len(available)
    for r in res:
        assert r.metric != "error" and 0.0 <= r.value <= 1.0
        if r.metric in ("acc", "acc_norm"):
            assert r.n == 4


# ------------------------------------------------------------------------------------------
# lm-evaluation-harness itself (when installed): same strings, same tokens, same accuracies
# ------------------------------------------------------------------------------------------
def _bench_module():
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    try:
        import bench_eval_vs_harness
    finally:
        sys.path.pop(0)
    return bench_eval_vs_harness


def test_identical_to_lm_eval(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM
    bench = _bench_module()

    data = make_data(tmp_path / "data")
    write_jsonl(data / "xwinograd" / "test.en.jsonl", [{**r, "answer": str(r["answer"])} for r in XWINO_ROWS])
    write_jsonl(data / "xcopa" / "test.zh.jsonl", [{**r, "premise": "女孩发现了虫子。", "choice1": "她哭了。"}
                                                  for r in XCOPA_ROWS])
    write_jsonl(data / "pawsx" / "dev.zh.jsonl", [{"sentence1": "委员会 合并后 。", "sentence2": "Peter 成立。", "label": 1},
                                                  {"sentence1": "凯西稳定。", "sentence2": "彼得稳定 。", "label": 0}])
    task_langs = [("xnli", "en"), ("xnli", "fr"), ("pawsx", "en"), ("pawsx", "zh"), ("xcopa", "it"),
                  ("xcopa", "zh"), ("xstorycloze", "en"), ("xwinograd", "en")]
    files = {(t, l): TASKS[t].file(data, l) for t, l in task_langs}
    mdir = save_tiny(tmp_path, "gemma3")
    lm = HFLM(pretrained=str(mdir), dtype="float32", batch_size=4, device="cpu")
    captured = []
    original = lm._loglikelihood_tokens

    def spy(requests, **kw):
        captured.extend((tuple(c), tuple(t)) for _, c, t in requests)
        return original(requests, **kw)

    monkeypatch.setattr(lm, "_loglikelihood_tokens", spy)
    (tmp_path / "cfg").mkdir()
    theirs, _ = bench.run_harness(lm, task_langs, files, None, tmp_path / "cfg")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(mdir).eval()
    tok = AutoTokenizer.from_pretrained(mdir)
    ours_tokens = []
    for t, l in task_langs:
        for inst in TASKS[t].load(data, l):
            ours_tokens += [(tuple(c), tuple(x)) for c, x in TASKS[t].encode(inst, tok)]
    assert sorted(ours_tokens) == sorted(captured)

    res = evaluate_tasks(model, tok, sorted({t for t, _ in task_langs}),
                         {t: [l for tt, l in task_langs if tt == t] for t, _ in task_langs}, data,
                         metrics=("acc", "acc_norm", "acc_bytes"), bootstrap=0, log_samples=True)
    ours = {}
    for r in res:
        d = ours.setdefault((r.task, r.language), {"n": r.n})
        d[r.metric] = r.value
        if r.metric == "acc":
            d["lls"], d["pred"] = r.extra["lls"], r.extra["pred"]
    rows = bench.compare(ours, theirs)
    for key, row in rows.items():
        assert row["n"] == row["n_harness"], key
        assert row["acc_identical"] and row["acc_norm_identical"] and row["acc_bytes_identical"], (key, row)
        assert row["max_abs_ll_diff"] < 1e-3, (key, row)
