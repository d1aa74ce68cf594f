"""Few-shot translation on FLORES-200 with greedy decoding, scored with sacreBLEU.

Reference: ``methods.md`` §1.4 (Kim et al. 2024, table 1: xx->en translation with 4-shot FLORES
``dev`` demonstrations shorter than 100 characters, greedy decoding, 64 new tokens, sacreBLEU)
and §1.3 (their demonstration format ``"{SrcName}: {src}{sep}{TgtName}: {tgt}{sep}"``).

Prompt template (our choice of separators, documented so results can be reproduced)::

    {SrcName}: {demo_src_1}\\n{TgtName}: {demo_tgt_1}\\n\\n
    ...                                               (k demonstrations)
    {SrcName}: {source}\\n{TgtName}:

with English language names from :mod:`polyprune.languages` (``"French"``, ``"English"``).
The prompt is tokenized with the tokenizer's default special tokens (BOS for Gemma/Llama); the
model continues greedily (``do_sample=False``) for at most ``max_new_tokens`` tokens, batched
with left padding, and a row stops at its first newline; the hypothesis is the generated text
up to the first newline, stripped. Demonstrations: ``shots`` pairs drawn once (seeded) from the
dev pairs whose source and target are both shorter than ``max_demo_chars`` characters, kept in
file order, the same for every test sentence. Scores: corpus chrF++ (``sacrebleu.CHRF(
word_order=2)``) and corpus BLEU (``sacrebleu.BLEU()``, default 13a tokenization), both 0-100,
over the first ``limit`` devtest sentences.

Qt-free. Long functions take ``progress`` and stop with :class:`~polyprune.errors.Cancelled`.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from transformers import StoppingCriteriaList

from ..datasets import read_flores
from ..errors import PolypruneError
from ..languages import FLORES_LANGUAGES, resolve_language
from ..progress import Progress, ensure
from .results import Result


#: One demonstration: source line, target line, blank line.
PROMPT_TEMPLATE = "{src_name}: {src}\n{tgt_name}: {tgt}\n\n"


def select_demo_indices(src: Sequence[str], tgt: Sequence[str], shots: int, *,
                        max_chars: int | None = 100, seed: int = 0) -> list[int]:
    """0-based line numbers of ``shots`` aligned demonstration pairs (sorted).

    Eligible pairs have both sides non-empty and shorter than ``max_chars`` characters (Kim et
    al. 2024: shorter than 100; ``None`` = any length); ``shots`` of them are drawn with
    ``random.Random(seed)``; fewer only if fewer pairs are eligible.

    Raises:
        PolypruneError: ``src`` and ``tgt`` differ in length (files not aligned), or ``shots < 0``.
    """
    if len(src) != len(tgt):
        raise PolypruneError(f"Demonstration files are not aligned: {len(src)} vs {len(tgt)} lines",
                             "use FLORES-200 dev files of the same release")
    if shots < 0:
        raise PolypruneError(f"shots must be >= 0, got {shots}", "use 0 for zero-shot")
    ok = [i for i, (s, t) in enumerate(zip(src, tgt))
          if s.strip() and t.strip() and (max_chars is None or (len(s) < max_chars and len(t) < max_chars))]
    return sorted(random.Random(seed).sample(ok, min(shots, len(ok))))


def build_prompt(demos: Sequence[tuple[str, str]], source: str, src_name: str, tgt_name: str) -> str:
    """The few-shot prompt of :data:`PROMPT_TEMPLATE` demonstrations followed by
    ``"{src_name}: {source}\\n{tgt_name}:"``."""
    head = "".join(PROMPT_TEMPLATE.format(src_name=src_name, src=s, tgt_name=tgt_name, tgt=t)
                   for s, t in demos)
    return head + f"{src_name}: {source}\n{tgt_name}:"


class _StopOnSubstring:
    """Stopping criterion: a row is done once a generated token's text contains ``stop``."""

    def __init__(self, tokenizer, stop: str):
        self.tokenizer = tokenizer
        self.stop = stop
        self.cache: dict[int, bool] = {}

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        out = []
        for t in last:
            hit = self.cache.get(t)
            if hit is None:
                hit = self.stop in self.tokenizer.decode([t])
                self.cache[t] = hit
            out.append(hit)
        return torch.tensor(out, dtype=torch.bool, device=input_ids.device)


def generate_greedy(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 8,
                    max_new_tokens: int = 64, stop: str | None = "\n",
                    progress: Progress | None = None) -> list[str]:
    """Greedy continuations of ``prompts``.

    Prompts are sorted by token length (longest first) and batched with LEFT padding
    (``attention_mask`` marks the padding); ``model.generate(do_sample=False,
    max_new_tokens=...)`` runs on the model's device in its dtype; a row stops when a generated
    token contains ``stop``. Each output is the decoded new text (special tokens skipped), cut
    before the first ``stop``, stripped.

    Args:
        model: causal LM with ``generate``.
        tokenizer: its tokenizer (its ``padding_side`` is restored afterwards).
        prompts: strings.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: at most this many new tokens per prompt.
        stop: stop string (``None``: run to ``max_new_tokens`` or EOS).
        progress: per-batch progress; cancel raises :class:`~polyprune.errors.Cancelled`.

    Returns:
        One string per prompt, in input order.
    """
    progress = ensure(progress)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    enc = [list(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    device = next(model.parameters()).device
    outs: list[str | None] = [None] * len(prompts)
    criteria = StoppingCriteriaList([_StopOnSubstring(tokenizer, stop)]) if stop else None
    was_training = model.training
    model.eval()
    progress.update(0, len(prompts), "translating")
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                progress.check()
                idx = order[start:start + batch_size]
                T = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), T), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), T), dtype=torch.long)
                for b, i in enumerate(idx):
                    L = len(enc[i])
                    ids[b, T - L:] = torch.tensor(enc[i], dtype=torch.long)
                    mask[b, T - L:] = 1
                kw = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                          temperature=None, top_p=None, top_k=None)
                if criteria is not None:
                    kw["stopping_criteria"] = criteria
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
                new = gen[:, T:].cpu()
                for b, i in enumerate(idx):
                    text = tokenizer.decode(new[b].tolist(), skip_special_tokens=True)
                    if stop:
                        text = text.split(stop, 1)[0]
                    outs[i] = text.strip()
                progress.update(start + len(idx), len(prompts), f"translated {start + len(idx)}/{len(prompts)}")
    finally:
        model.train(was_training)
    return outs  # type: ignore[return-value]


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus chrF++ and BLEU (sacreBLEU; 0-100).

    Returns:
        ``{"chrf++": float, "bleu": float}``.

    Raises:
        PolypruneError: sacrebleu is not installed, or the lists differ in length.
    """
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError as exc:
        raise PolypruneError("sacrebleu is not installed", "pip install sacrebleu") from exc
    if len(hypotheses) != len(references):
        raise PolypruneError(f"{len(hypotheses)} hypotheses for {len(references)} references",
                             "give one hypothesis per reference")
    hyps, refs = list(hypotheses), [list(references)]
    return {"chrf++": float(CHRF(word_order=2).corpus_score(hyps, refs).score),
            "bleu": float(BLEU().corpus_score(hyps, refs).score)}


def flores_translation(model, tokenizer, flores_dir, src: str, tgt: str, *, shots: int = 4,
                       limit: int | None = 100, split: str = "devtest", demo_split: str = "dev",
                       batch_size: int = 8, max_new_tokens: int = 64, max_demo_chars: int | None = 100,
                       seed: int = 0, progress: Progress | None = None, model_name: str = "",
                       run_id: str = "", keep_outputs: int = 5) -> list[Result]:
    """k-shot FLORES-200 translation ``src -> tgt`` scored with chrF++ and BLEU.

    Args:
        model, tokenizer: causal LM and its tokenizer.
        flores_dir: FLORES-200 folder with ``dev/`` and ``devtest/``.
        src, tgt: languages (FLORES-200 codes, two-letter codes or English names).
        shots: number of demonstrations (Kim et al.: 4).
        limit: first N test sentences (``None`` = all 1012).
        split: test split (``devtest``); ``demo_split``: demonstration split (``dev``).
        batch_size, max_new_tokens: decoding settings (greedy).
        max_demo_chars: demonstrations shorter than this many characters (``None``: any).
        seed: demonstration draw.
        progress: progress and cancellation.
        model_name, run_id: stored in the results.
        keep_outputs: how many (source, hypothesis, reference) triples to keep in ``extra``.

    Returns:
        Two :class:`Result` rows, task ``"flores_mt"``, language ``"<src>-<tgt>"`` (FLORES
        codes), metrics ``"chrf++"`` and ``"bleu"`` (0-100), ``n`` = sentences; ``extra`` has
        ``shots``, ``demos`` (the demonstration line numbers, 0-based), ``max_new_tokens`` and
        ``examples``.

    Raises:
        PolypruneError: unknown language, missing FLORES files, sacrebleu missing.
        Cancelled: on cancel.
    """
    s_code, t_code = resolve_language(src), resolve_language(tgt)
    s_name, t_name = FLORES_LANGUAGES[s_code], FLORES_LANGUAGES[t_code]
    dev_s = read_flores(flores_dir, s_code, demo_split)
    dev_t = read_flores(flores_dir, t_code, demo_split)
    demo_idx = select_demo_indices(dev_s, dev_t, shots, max_chars=max_demo_chars, seed=seed)
    demos = [(dev_s[i], dev_t[i]) for i in demo_idx]
    sources = read_flores(flores_dir, s_code, split, limit)
    refs = read_flores(flores_dir, t_code, split, limit)
    if len(sources) != len(refs):
        raise PolypruneError(f"FLORES {split} files of {s_code} and {t_code} differ in length",
                             "use files of the same FLORES-200 release")
    keep = [i for i, s in enumerate(sources) if s.strip()]
    sources, refs = [sources[i] for i in keep], [refs[i] for i in keep]
    prompts = [build_prompt(demos, s, s_name, t_name) for s in sources]
    hyps = generate_greedy(model, tokenizer, prompts, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, stop="\n", progress=progress)
    scores = score_translations(hyps, refs)
    extra = {"shots": len(demos), "demos": demo_idx, "max_new_tokens": max_new_tokens,
             "split": split, "examples": [{"source": s, "hypothesis": h, "reference": r}
                                          for s, h, r in list(zip(sources, hyps, refs))[:keep_outputs]]}
    lang = f"{s_code}-{t_code}"
    return [Result("flores_mt", lang, m, scores[m], None, None, len(sources), model_name, run_id, dict(extra))
            for m in ("chrf++", "bleu")]


class FloresTranslationTask:
    """The ``flores_mt`` task: few-shot translation between English and a language, both
    directions by default (``directions``: ``both``, ``xx-en`` or ``en-xx``), chrF++ and BLEU."""

    name = "flores_mt"
    aliases = ("translation", "mt")
    languages = tuple(FLORES_LANGUAGES)
    default_split = "devtest"
    kind = "translation"

    def language(self, lang: str) -> str:
        """The FLORES-200 code of ``lang`` (raises for an unknown language)."""
        return resolve_language(str(lang))

    def available_languages(self, data_dir, split: str | None = None) -> list[str]:
        """Every FLORES language (the files are checked when the task runs)."""
        return []

    def run(self, model, tokenizer, lang: str, data_dir, *, split=None, limit=None, translation=None,
            progress=None, model_name="", run_id="", **_) -> list[Result]:
        """Translation between English and ``lang`` (English itself gives no rows)."""
        if data_dir is None:
            raise PolypruneError("FLORES-200 is read from local files only",
                                 "give the data folder (--data DIR) with flores200/dev and flores200/devtest")
        progress = ensure(progress)
        opts = dict(translation or {})
        code = self.language(lang)
        if code == "eng_Latn":
            return []  # English is the pivot of every direction
        directions = opts.get("directions", "both")
        if directions not in ("both", "xx-en", "en-xx"):
            raise PolypruneError(f"Unknown translation directions {directions!r}", "use both, xx-en or en-xx")
        pairs = ([(code, "eng_Latn")] if directions in ("both", "xx-en") else []) + \
                ([("eng_Latn", code)] if directions in ("both", "en-xx") else [])
        out = []
        for k, (s, t) in enumerate(pairs):
            out.extend(flores_translation(
                model, tokenizer, data_dir, s, t, shots=int(opts.get("shots", 4)),
                limit=limit if limit is not None else opts.get("limit"), split=split or self.default_split,
                batch_size=int(opts.get("batch_size", 8)), max_new_tokens=int(opts.get("max_new_tokens", 64)),
                max_demo_chars=opts.get("max_demo_chars", 100), seed=int(opts.get("seed", 0)),
                progress=progress.sub(k / len(pairs), (k + 1) / len(pairs)), model_name=model_name, run_id=run_id))
        return out

