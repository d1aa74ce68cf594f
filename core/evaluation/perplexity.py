"""Perplexity: of any texts, and per language on FLORES-200 (the ``flores_ppl`` task).

Token-level perplexity as methods.md §5 defines it: every text is tokenized with the tokenizer's
own special-token behaviour (BOS for Gemma/Llama; the prefix token is prepended when the first id
is not special, so every real token is predicted), and ``exp(Σ nll / Σ tokens)`` is taken over
all predicted tokens of all texts (token-pooled, nats). FLORES results carry the token count and
a sentence-bootstrap 95% interval (:func:`polyprune.evaluation.stats.perplexity_ci`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from ..datasets import flores_dir as find_flores_dir, flores_file, read_flores
from ..errors import PolypruneError
from ..languages import FLORES_LANGUAGES, resolve_language
from ..progress import Progress, ensure
from .engine import loglikelihoods, prefix_id, special_ids
from .results import Result
from .stats import perplexity_ci, seed_for


def perplexity(model, tokenizer, texts: Iterable[str], *, batch_size: int = 8,
               max_length: int | None = None,
               progress: Progress | None = None, items: list | None = None) -> tuple[float, float, int]:
    """Token-level perplexity of ``texts`` (methods.md section 5, "Perplexity").

    Each text is tokenized with the tokenizer's own special-token behaviour
    (``tokenizer(text)["input_ids"]``, which adds BOS for Gemma/Llama); if the first id is not a
    special token, ``bos_token_id`` (or ``eos_token_id``) is prepended so that every real token
    is predicted. Context = first id, continuation = the rest; all continuation tokens of all
    texts are pooled.

    Args:
        model: causal LM (see :func:`loglikelihoods`).
        tokenizer: its Hugging Face tokenizer.
        texts: strings; empty/whitespace-only texts are skipped.
        batch_size: texts per forward pass.
        max_length: passed to :func:`loglikelihoods` (texts longer than this raise).
        progress: per-batch progress and cancellation.
        items: when a list is given, ``(nll, tokens)`` of each scored text is appended to it.

    Returns:
        ``(perplexity, total_nll, tokens)``: ``exp(total_nll / tokens)``, the summed negative
        log-likelihood in nats, and the number of scored tokens.

    Raises:
        PolypruneError: no text had a token to score, or the tokenizer has no BOS/EOS.
        Cancelled: on cancel.
    """
    special = special_ids(tokenizer)
    requests = []
    for text in texts:
        if not text or not text.strip():
            continue
        ids = list(tokenizer(text)["input_ids"])
        if not ids or ids[0] not in special:
            ids = [prefix_id(tokenizer)] + ids
        if len(ids) < 2:
            continue
        requests.append((ids[:1], ids[1:]))
    if not requests:
        raise PolypruneError("No tokens to score: every text was empty",
                             "pass at least one non-empty text")
    res = loglikelihoods(model, requests, batch_size=batch_size, max_length=max_length,
                         progress=progress)
    nll = -sum(r[0] for r in res)
    tokens = sum(r[1] for r in res)
    if items is not None:
        items.extend((-r[0], int(r[1])) for r in res)
    return math.exp(nll / tokens), nll, tokens



def flores_perplexity(model, tokenizer, flores_dir, languages: Sequence[str], *,
                      split: str = "devtest", limit: int | None = None, batch_size: int = 8,
                      progress: Progress | None = None, bootstrap: int = 0, seed: int = 0,
                      item_scores: bool = False) -> list[Result]:
    """Per-language FLORES-200 perplexity (methods.md section 5, "Perplexity").

    Reads the first ``limit`` lines of ``<flores_dir>/<split>/<code>.<split>`` (``flores_dir`` may
    also be the split folder's parent data folder); codes are FLORES-200 codes (``eng_Latn``),
    other spellings are resolved.

    Args:
        bootstrap: resamples of whole sentences for a 95% interval (0 = none).
        seed: bootstrap seed (each language derives its own).
        item_scores: also store each sentence's ``item_nll`` and ``item_tokens`` in ``extra``
            (for paired comparisons between models).

    Returns:
        One :class:`Result` per language: task ``"flores_ppl"``, metric ``"perplexity"``,
        ``n`` = sentences, ``extra = {"tokens": int, "nll": float (nats), "split": split}``.

    Raises:
        PolypruneError: the folder or a language file is missing, or a file is empty.
        Cancelled: on cancel.
    """
    progress = ensure(progress)
    root = find_flores_dir(flores_dir)
    codes = []
    for lang in languages:
        code = lang if flores_file(root, split, lang) is not None else resolve_language(lang)
        codes.append(code)
    texts = {code: [s for s in read_flores(root, code, split, limit) if s.strip()] for code in codes}
    records = []
    for k, code in enumerate(codes):
        progress.check()
        items: list = []
        ppl, nll, tokens = perplexity(model, tokenizer, texts[code], batch_size=batch_size,
                                      progress=progress.sub(k / len(codes), (k + 1) / len(codes)), items=items)
        lo = hi = None
        if bootstrap:
            lo, hi = perplexity_ci([a for a, _ in items], [b for _, b in items], iters=bootstrap,
                                   seed=seed_for(seed, "flores_ppl", code))
        extra: dict[str, Any] = {"tokens": tokens, "nll": nll, "split": split}
        if item_scores:
            extra["item_nll"] = [a for a, _ in items]
            extra["item_tokens"] = [b for _, b in items]
        records.append(Result("flores_ppl", code, "perplexity", ppl, lo, hi, len(texts[code]), extra=extra))
    return records


class FloresPerplexityTask:
    """The ``flores_ppl`` task: FLORES-200 perplexity per language (split ``devtest`` by default)."""

    name = "flores_ppl"
    aliases = ("perplexity", "ppl", "flores")
    languages = tuple(FLORES_LANGUAGES)
    default_split = "devtest"
    kind = "perplexity"

    def language(self, lang: str) -> str:
        """The FLORES-200 code of ``lang`` (raises for an unknown language)."""
        return resolve_language(str(lang))

    def available_languages(self, data_dir, split: str | None = None) -> list[str]:
        """Languages with a FLORES file under ``data_dir``."""
        if data_dir is None:
            return []
        try:
            root = find_flores_dir(data_dir)
        except PolypruneError:
            return []
        return [c for c in self.languages if flores_file(root, split or self.default_split, c) is not None]

    def run(self, model, tokenizer, lang: str, data_dir, *, split=None, limit=None, ppl_limit=None, batch_size=8,
            bootstrap=0, seed=0, item_scores=False, progress=None, **_) -> list[Result]:
        """FLORES perplexity of one language on the first ``ppl_limit`` sentences (``None``: all;
        ``limit``, the documents of the other tasks, does not apply)."""
        if data_dir is None:
            raise PolypruneError("FLORES-200 is read from local files only",
                                 "give the data folder (--data DIR) with flores200/dev and flores200/devtest")
        return flores_perplexity(model, tokenizer, data_dir, [self.language(lang)], split=split or self.default_split,
                                 limit=ppl_limit, batch_size=batch_size,
                                 progress=progress, bootstrap=bootstrap, seed=seed, item_scores=item_scores)
