"""Zero-shot evaluation: per-language perplexity and XNLI accuracy, scored like lm-evaluation-harness.

Reference: ``methods.md`` section 1.4 (evaluation in Kim et al. 2024) and section 5 (zero-shot
evaluation as lm-evaluation-harness 0.4.x does it). Everything rests on one primitive,
:func:`loglikelihoods`, which scores ``(context, continuation)`` token-id pairs the way the
harness's ``HFLM.loglikelihood`` does, but applies the LM head only to the hidden states that
predict continuation tokens: with a 262,144-entry vocabulary (Gemma 3) the full logits of a
batch would otherwise dominate time and memory.

This module is Qt-free. Long functions take ``progress`` (a :class:`~polyprune.progress.Progress`
or ``None``), report per batch and stop with :class:`~polyprune.errors.Cancelled` on request.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from .errors import PolypruneError
from .progress import Progress, ensure

__all__ = [
    "EvalRecord",
    "loglikelihoods",
    "perplexity",
    "flores_perplexity",
    "XNLI_WORDS",
    "XNLI_LANGUAGES",
    "xnli_requests",
    "xnli_accuracy",
    "compare",
]

#: Rows of the LM head applied at once (bounds the float32 logits to ``2048 x vocab``).
HEAD_CHUNK_ROWS = 2048


# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------
@dataclass
class EvalRecord:
    """One evaluation result.

    Attributes:
        task: ``"flores_ppl"``, ``"xnli"``, ...
        language: the language code the result belongs to (FLORES-200 code for perplexity,
            the dataset's two-letter code for XNLI).
        metric: ``"perplexity"`` or ``"acc"``.
        value: the metric's value (perplexity: ``exp(nats per token)``; acc: fraction in [0, 1]).
        n: number of examples (sentences, documents).
        extra: further numbers, e.g. ``{"tokens": int, "nll": float}`` (nll in nats) or
            ``{"stderr": float}``.
    """

    task: str
    language: str
    metric: str
    value: float
    n: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready plain ``dict`` of all fields."""
        return asdict(self)


# ------------------------------------------------------------------------------------------
# Engine primitive
# ------------------------------------------------------------------------------------------
def _softcap(config) -> float | None:
    """``final_logit_softcapping`` of ``config`` (or of its text config), or ``None``."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap is not None:
            return float(cap)
    return None


def _pad_id(model) -> int:
    cfg = model.config
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(cfg, name, None)
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if isinstance(v, int) and v >= 0:
            return v
    return 0


def _loglikelihoods_simple(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                           batch_size: int = 8, max_length: int | None = None,
                           progress: Progress | None = None) -> list[tuple[float, int, bool]]:
    """Sum of continuation log-probabilities for each ``(context_ids, continuation_ids)`` pair.

    Equivalent to, for each request separately,
    ``model(input_ids=ctx + cont).logits.float().log_softmax(-1)`` gathered at the continuation
    tokens and summed (lm-evaluation-harness ``loglikelihood``; methods.md section 5), but
    computed in batches with right padding and the LM head applied only to the positions that
    predict continuation tokens (in chunks of at most :data:`HEAD_CHUNK_ROWS` rows).

    Processing: requests are sorted by input length (descending) and batched; each batch of
    ``B`` requests is right-padded to ``T`` tokens (``input_ids``/``attention_mask`` of shape
    ``[B, T]``) and run through ``model.base_model`` (no head). From
    ``last_hidden_state [B, T, H]`` the ``R`` rows predicting continuation tokens are selected
    (``[R, H]``), projected with ``model.get_output_embeddings()`` to ``[<=2048, V]``, soft-capped
    (``tanh(x / c) * c``) when the config has ``final_logit_softcapping``, log-softmaxed in
    float32 and gathered. Sums are accumulated in float64. Runs under ``torch.inference_mode()``
    on ``next(model.parameters()).device`` for any model dtype; the model is put in eval mode
    for the call and its training flag restored afterwards.

    Args:
        model: a Hugging Face causal LM (``*ForCausalLM``) with ``base_model`` and
            ``get_output_embeddings()``.
        requests: ``(context_ids, continuation_ids)`` lists of token ids; the context must be
            non-empty (use BOS/EOS for an empty context, as the harness does).
        batch_size: requests per forward pass.
        max_length: if set, at most this many input tokens per request: like the harness,
            the model sees ``(ctx + cont)[-(max_length + 1):][:-1]`` (the context is
            left-truncated). ``None``: no limit.
        progress: receives ``update(done_requests, total_requests)`` per batch; cancel raises
            :class:`~polyprune.errors.Cancelled`.

    Returns:
        One ``(logprob_sum, n_continuation_tokens, is_greedy)`` per request, in input order;
        ``logprob_sum`` is in nats (a Python float, <= 0), ``is_greedy`` is True when every
        continuation token is the argmax of its prediction. An empty continuation gives
        ``(0.0, 0, True)``.

    Raises:
        ValueError: a request has an empty context, or a continuation longer than
            ``max_length`` (it could not be scored), or ``batch_size < 1``.
        Cancelled: ``progress.cancel()`` was called.
    """
    progress = ensure(progress)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1 or None, got {max_length}")

    # Per request: the model input (all tokens but the last, possibly left-truncated).
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = list(ctx), list(cont)
        if not ctx:
            raise ValueError(f"request {i} has an empty context; pass [bos_token_id] instead")
        if max_length is not None and len(cont) > max_length:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds "
                             f"max_length={max_length}")
        tokens = ctx + cont
        if max_length is not None:
            tokens = tokens[-(max_length + 1):]
        inputs.append(tokens[:-1])
        targets.append(cont)

    results: list[tuple[float, int, bool] | None] = [None] * len(inputs)
    todo = [i for i in range(len(inputs)) if targets[i]]
    for i in range(len(inputs)):
        if not targets[i]:
            results[i] = (0.0, 0, True)
    # Longest first (as the harness), so the first batch shows out-of-memory problems early.
    todo.sort(key=lambda i: -len(inputs[i]))
    total = len(inputs)
    done = total - len(todo)
    progress.update(done, total, "scoring")
    if not todo:
        return results  # type: ignore[return-value]

    device = next(model.parameters()).device
    base = model.base_model
    head = model.get_output_embeddings()
    cap = _softcap(model.config)
    pad = _pad_id(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                progress.check()
                idx = todo[start:start + batch_size]
                T = max(len(inputs[i]) for i in idx)
                ids = torch.full((len(idx), T), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), T), dtype=torch.long)
                b_rows, p_rows, tgt, counts = [], [], [], []
                for b, i in enumerate(idx):
                    inp, cont = inputs[i], targets[i]
                    L, C = len(inp), len(cont)
                    ids[b, :L] = torch.tensor(inp, dtype=torch.long)
                    mask[b, :L] = 1
                    # input position L-C+k predicts cont[k]
                    b_rows.extend([b] * C)
                    p_rows.extend(range(L - C, L))
                    tgt.extend(cont)
                    counts.append(C)
                out = base(input_ids=ids.to(device), attention_mask=mask.to(device),
                           use_cache=False)
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                b_t = torch.tensor(b_rows, device=hidden.device)
                p_t = torch.tensor(p_rows, device=hidden.device)
                rows = hidden[b_t, p_t]  # [R, H]
                del out, hidden
                lp_all, gr_all = _head_logprobs(head, rows, torch.tensor(tgt, dtype=torch.long), cap)
                off = 0
                for i, C in zip(idx, counts):
                    results[i] = (float(lp_all[off:off + C].sum()), C,
                                  bool(gr_all[off:off + C].all()))
                    off += C
                done += len(idx)
                progress.update(done, total, f"scored {done}/{total}")
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# Perplexity
# ------------------------------------------------------------------------------------------
def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            ids.add(v)
    return ids


def _prefix_id(tokenizer) -> int:
    """``bos_token_id`` or, without one, ``eos_token_id`` (the harness's ``prefix_token_id``)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        return int(bos)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        return int(eos)
    raise PolypruneError("The tokenizer has neither a BOS nor an EOS token, so the first token "
                         "of a text cannot be scored",
                         "use the tokenizer that belongs to the model (tokenizer_config.json "
                         "should define bos_token or eos_token)")


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
    special = _special_ids(tokenizer)
    requests = []
    for text in texts:
        if not text or not text.strip():
            continue
        ids = list(tokenizer(text)["input_ids"])
        if not ids or ids[0] not in special:
            ids = [_prefix_id(tokenizer)] + ids
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


def perplexity_ci(item_nll: Sequence[float], item_tokens: Sequence[int], *, iters: int = 1000,
                  seed: int | Sequence[int] = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a pooled perplexity, resampling whole texts (sentences).

    Each resample draws ``len(item_nll)`` texts with replacement and computes
    ``exp(sum nll / sum tokens)`` over them, so a long sentence weighs as much as its tokens.

    Args:
        item_nll: ``[n]`` summed negative log-likelihood of each text, in nats.
        item_tokens: ``[n]`` scored tokens of each text.
        iters: resamples; seed: numpy ``default_rng`` seed; level: coverage.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no texts.
    """
    import numpy as np

    nll = np.asarray(item_nll, dtype=np.float64)
    tok = np.asarray(item_tokens, dtype=np.float64)
    n = nll.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(iters, n))
    ppl = np.exp(nll[idx].sum(1) / np.maximum(tok[idx].sum(1), 1))
    a = (1 - level) / 2
    return float(np.quantile(ppl, a)), float(np.quantile(ppl, 1 - a))


def _flores_file(flores_dir: Path, split: str, code: str) -> Path | None:
    for folder in (flores_dir / split, flores_dir):
        f = folder / f"{code}.{split}"
        if f.is_file():
            return f
    return None


def _resolve_flores_code(code: str) -> str:
    """Map ``code`` to a FLORES-200 code via :mod:`polyprune.languages` when it is available."""
    try:
        from .languages import resolve_language  # lazy: module may be absent
    except Exception:  # noqa: BLE001 - optional dependency inside the package
        return code
    try:
        lang = resolve_language(code)
    except Exception:  # noqa: BLE001 - unknown to the table: keep the code as given
        return code
    if isinstance(lang, str):
        return lang
    for attr in ("flores", "flores_code", "flores200", "code"):
        v = getattr(lang, attr, None)
        if isinstance(v, str) and v:
            return v
    if isinstance(lang, dict):
        for key in ("flores", "flores_code", "flores200", "code"):
            if isinstance(lang.get(key), str):
                return lang[key]
    return code


def flores_perplexity(model, tokenizer, flores_dir, languages: Sequence[str], *,
                      split: str = "devtest", limit: int | None = None, batch_size: int = 8,
                      progress: Progress | None = None, bootstrap: int = 0, seed: int = 0,
                      item_scores: bool = False) -> list[EvalRecord]:
    """Per-language FLORES-200 perplexity (methods.md section 5, "Perplexity").

    Reads ``<flores_dir>/<split>/<code>.<split>`` (or ``<flores_dir>/<code>.<split>`` when
    ``flores_dir`` is the split folder itself), one sentence a line, the first ``limit`` lines.
    Codes are FLORES-200 codes (``eng_Latn``); other spellings are mapped with
    ``polyprune.languages.resolve_language`` when that module is present.

    Args:
        bootstrap: resamples of whole sentences for a 95% interval (:func:`perplexity_ci`; 0 = none),
            stored as ``extra["ci_low"]``, ``extra["ci_high"]``.
        seed: bootstrap seed (each language derives its own).
        item_scores: also store each sentence's ``item_nll`` and ``item_tokens`` in ``extra``
            (for paired comparisons between models, e.g. in studies).

    Returns:
        One :class:`EvalRecord` per language: task ``"flores_ppl"``, metric ``"perplexity"``,
        ``n`` = sentences, ``extra = {"tokens": int, "nll": float (nats)}``.

    Raises:
        PolypruneError: the folder or a language file is missing, or a file is empty.
        Cancelled: on cancel.
    """
    progress = ensure(progress)
    root = Path(flores_dir).expanduser()
    fix = ("point the FLORES folder at a FLORES-200 directory that contains dev/ and devtest/ "
           "(files such as devtest/eng_Latn.devtest)")
    if not root.is_dir():
        raise PolypruneError(f"FLORES folder not found: {root}", fix)
    files = []
    for lang in languages:
        code = lang
        f = _flores_file(root, split, code)
        if f is None:
            code = _resolve_flores_code(lang)
            f = _flores_file(root, split, code)
        if f is None:
            raise PolypruneError(
                f"No FLORES-200 file for language {lang!r}: expected "
                f"{root / split / f'{code}.{split}'}",
                fix + "; use FLORES-200 codes such as eng_Latn, fra_Latn, zho_Hans")
        files.append((code, f))
    records = []
    n_lang = max(len(files), 1)
    for k, (code, f) in enumerate(files):
        progress.check()
        with open(f, encoding="utf-8") as fh:
            lines = [line.rstrip("\r\n") for line in fh]
        if limit is not None:
            lines = lines[:limit]
        lines = [s for s in lines if s.strip()]
        if not lines:
            raise PolypruneError(f"FLORES file {f} has no sentences",
                                 "check the file, or use a positive limit")
        sub = progress.sub(k / n_lang, (k + 1) / n_lang)
        items: list = []
        ppl, nll, tokens = perplexity(model, tokenizer, lines, batch_size=batch_size,
                                      progress=sub, items=items)
        extra: dict[str, Any] = {"tokens": tokens, "nll": nll}
        if bootstrap:
            import zlib
            extra["ci_low"], extra["ci_high"] = perplexity_ci(
                [a for a, _ in items], [b for _, b in items], iters=bootstrap,
                seed=[int(seed), zlib.crc32(f"flores_ppl/{code}".encode("utf-8"))])
        if item_scores:
            extra["item_nll"] = [a for a, _ in items]
            extra["item_tokens"] = [b for _, b in items]
        records.append(EvalRecord("flores_ppl", code, "perplexity", ppl, len(lines), extra))
    return records


# ------------------------------------------------------------------------------------------
# XNLI
# ------------------------------------------------------------------------------------------
#: Per language ``(question, entailment, neutral, contradiction)`` words of
#: lm-evaluation-harness 0.4.x XNLI prompts (methods.md section 5).
XNLI_WORDS: dict[str, tuple[str, str, str, str]] = {
    "ar": ("صحيح", "نعم", "لذا", "رقم"),
    "bg": ("правилно", "да", "така", "не"),
    "de": ("richtig", "Ja", "Auch", "Nein"),
    "el": ("σωστός", "Ναί", "Έτσι", "όχι"),
    "en": ("right", "Yes", "Also", "No"),
    "es": ("correcto", "Sí", "Asi que", "No"),
    "fr": ("correct", "Oui", "Aussi", "Non"),
    "hi": ("सही", "हाँ", "इसलिए", "नहीं"),
    "ru": ("правильно", "Да", "Так", "Нет"),
    "sw": ("sahihi", "Ndiyo", "Hivyo", "Hapana"),
    "th": ("ถูกต้อง", "ใช่", "ดังนั้น", "ไม่"),
    "tr": ("doğru", "Evet", "Böylece", "Hayır"),
    "ur": ("صحیح", "جی ہاں", "اس لئے", "نہیں"),
    "vi": ("đúng", "Vâng", "Vì vậy", "Không"),
    "zh": ("正确", "是的", "所以", "不是的"),
}
XNLI_LANGUAGES = tuple(XNLI_WORDS)


def _xnli_lang(lang: str) -> str:
    key = lang.strip().lower()
    if key not in XNLI_WORDS:
        raise PolypruneError(f"XNLI has no language {lang!r}",
                             "use one of " + ", ".join(XNLI_LANGUAGES))
    return key


def xnli_choices(doc: dict, lang: str) -> list[str]:
    """The three XNLI continuation strings (entailment, neutral, contradiction), each with the
    harness's leading target delimiter ``" "``: ``" " + premise + ", Q? E, " + hypothesis``."""
    q, e, n, c = XNLI_WORDS[_xnli_lang(lang)]
    return [f" {doc['premise']}, {q}? {w}, {doc['hypothesis']}" for w in (e, n, c)]


def xnli_requests(doc: dict, lang: str, tokenizer) -> list[tuple[list[int], list[int]]]:
    """``(context_ids, continuation_ids)`` for the three XNLI choices of ``doc``.

    As lm-evaluation-harness 0.4.13 with an empty context: the continuation is encoded with
    ``add_special_tokens=False``; the context is ``[prefix_token_id]`` (BOS, else EOS), unless
    the continuation already starts with that id, in which case context = ``cont[:1]`` and
    continuation = ``cont[1:]``.

    Raises:
        PolypruneError: ``lang`` is not one of the 15 XNLI languages.
    """
    prefix = _prefix_id(tokenizer)
    out = []
    for s in xnli_choices(doc, lang):
        cont = list(tokenizer(s, add_special_tokens=False)["input_ids"])
        if cont and cont[0] == prefix:
            out.append((cont[:1], cont[1:]))
        else:
            out.append(([prefix], cont))
    return out


def iter_jsonl(path: Path, what: str = "row") -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file.

    Raises:
        PolypruneError: missing file, a line that is not valid JSON or not a JSON object, or a
            file without any row (file and line are named).
    """
    path = Path(path)
    if not path.is_file():
        raise PolypruneError(f"File not found: {path}", f"give a JSON Lines file with one {what} per line")
    any_row = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PolypruneError(f"{path}, line {lineno}: not valid JSON ({exc.msg})",
                                     f"each line must be one JSON object ({what})") from None
            if not isinstance(row, dict):
                raise PolypruneError(f"{path}, line {lineno}: not a JSON object",
                                     f"each line must be one JSON object ({what})")
            any_row = True
            yield lineno, row
    if not any_row:
        raise PolypruneError(f"{path} is empty: no rows", f"the file needs one JSON object per line ({what})")


def _read_xnli(path: Path, limit: int | None) -> list[dict]:
    docs = []
    for lineno, row in iter_jsonl(path, "premise, hypothesis and label"):
        if limit is not None and len(docs) >= limit:
            break
        for fld in ("premise", "hypothesis"):
            if not isinstance(row.get(fld), str):
                raise PolypruneError(
                    f"{path}, line {lineno}: field {fld!r} is missing or not a string",
                    "each row needs string fields premise and hypothesis")
        label = row.get("label")
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1, 2):
            raise PolypruneError(
                f"{path}, line {lineno}: field 'label' is {row.get('label')!r}, "
                "not 0, 1 or 2",
                "labels must be 0 (entailment), 1 (neutral) or 2 (contradiction)")
        docs.append({"premise": row["premise"], "hypothesis": row["hypothesis"],
                     "label": label})
    return docs


def _xnli_file(xnli_dir: Path, split: str, lang: str) -> Path:
    f = xnli_dir / f"{split}.{lang}.jsonl"
    if not f.is_file():
        raise PolypruneError(f"XNLI file not found: {f}",
                             f"point the XNLI folder at a directory with files "
                             f"{split}.<lang>.jsonl (premise, hypothesis, label)")
    return f


def xnli_accuracy(model, tokenizer, xnli_dir, languages: Sequence[str], *, split: str = "test",
                  limit: int | None = None, batch_size: int = 8,
                  progress: Progress | None = None) -> list[EvalRecord]:
    """Zero-shot XNLI accuracy per language, as lm-evaluation-harness 0.4.13 (methods.md §5).

    Reads ``<xnli_dir>/<split>.<lang>.jsonl`` (first ``limit`` rows in file order), scores the
    three choices of each document with :func:`loglikelihoods` (summed continuation
    log-probability) and predicts their argmax.

    Returns:
        One :class:`EvalRecord` per language: task ``"xnli"``, metric ``"acc"``, ``n`` = rows,
        ``extra = {"stderr": sample_std / sqrt(n)}`` (NaN for ``n < 2``).

    Raises:
        PolypruneError: unknown language (the 15 supported are listed), missing folder/file,
            empty file, or a bad row (file, line number and field are named).
        Cancelled: on cancel.
    """
    progress = ensure(progress)
    root = Path(xnli_dir).expanduser()
    if not root.is_dir():
        raise PolypruneError(f"XNLI folder not found: {root}",
                             f"point the XNLI folder at a directory with {split}.<lang>.jsonl files")
    langs = [_xnli_lang(lang) for lang in languages]
    files = [(lang, _xnli_file(root, split, lang)) for lang in langs]
    records = []
    n_lang = max(len(files), 1)
    for k, (lang, f) in enumerate(files):
        progress.check()
        docs = _read_xnli(f, limit)
        if not docs:
            raise PolypruneError(f"XNLI file {f} has no rows", "check the file")
        requests = []
        for doc in docs:
            requests.extend(xnli_requests(doc, lang, tokenizer))
        res = loglikelihoods(model, requests, batch_size=batch_size,
                             progress=progress.sub(k / n_lang, (k + 1) / n_lang),
                             groups=[d for d in range(len(docs)) for _ in range(3)])
        correct = []
        for d, doc in enumerate(docs):
            scores = [res[3 * d + j][0] for j in range(3)]
            pred = max(range(3), key=lambda j: scores[j])  # first max on ties, like argmax
            correct.append(1.0 if pred == doc["label"] else 0.0)
        n = len(correct)
        acc = sum(correct) / n
        if n > 1:
            var = sum((c - acc) ** 2 for c in correct) / (n - 1)
            stderr = math.sqrt(var) / math.sqrt(n)
        else:
            stderr = float("nan")
        records.append(EvalRecord("xnli", lang, "acc", acc, n, {"stderr": stderr}))
    return records


# ------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------
def compare(dense: Sequence[EvalRecord], pruned: Sequence[EvalRecord]) -> list[dict]:
    """Side-by-side rows of dense and pruned results, matched on (task, language, metric).

    Returns:
        Dicts with keys ``task, language, metric, dense, pruned, delta`` (``delta = pruned -
        dense``), in the order of ``dense`` followed by records only in ``pruned``; a value
        missing on one side is ``None`` and so is its delta.
    """
    def key(r: EvalRecord):
        return (r.task, r.language, r.metric)

    p_map = {key(r): r for r in pruned}
    rows, seen = [], set()
    for r in dense:
        k = key(r)
        seen.add(k)
        p = p_map.get(k)
        pv = p.value if p is not None else None
        rows.append({"task": r.task, "language": r.language, "metric": r.metric,
                     "dense": r.value, "pruned": pv,
                     "delta": (pv - r.value) if pv is not None else None})
    for r in pruned:
        if key(r) not in seen:
            seen.add(key(r))
            rows.append({"task": r.task, "language": r.language, "metric": r.metric,
                         "dense": None, "pruned": r.value, "delta": None})
    return rows


# ------------------------------------------------------------------------------------------
# Shared-prefix engine (KV-cache reuse)
# ------------------------------------------------------------------------------------------
def _lcp(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    first = seqs[0]
    n = min(len(x) for x in seqs)
    for k in range(n):
        t = first[k]
        if any(x[k] != t for x in seqs[1:]):
            return k
    return n


def _head_logprobs(head, rows: torch.Tensor, targets: torch.Tensor, cap: float | None):
    """log p(target) and whether target is the argmax, for hidden ``rows [R, H]``.

    The LM head runs in chunks of :data:`HEAD_CHUNK_ROWS` rows (float32 logits ``[<=2048, V]``);
    ``log p = logit[target] - logsumexp(logits)``, which is the gathered log-softmax without
    materialising it. Returns ``([R] float64, [R] bool)`` on the CPU.
    """
    lps, greedy = [], []
    for c0 in range(0, rows.shape[0], HEAD_CHUNK_ROWS):
        logits = head(rows[c0:c0 + HEAD_CHUNK_ROWS].to(head.weight.device)).float()
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        t = targets[c0:c0 + HEAD_CHUNK_ROWS].to(logits.device)
        lp = logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        lps.append(lp.double().cpu())
        greedy.append((logits.argmax(dim=-1) == t).cpu())
        del logits
    if not lps:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    return torch.cat(lps), torch.cat(greedy)


def _kv_supported(model, longest: int) -> bool:
    """Whether the shared-prefix path is safe: a Cache object that can be re-indexed and no
    sliding window shorter than the sequences."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if isinstance(window, int) and window > 0 and longest >= window:
        return False
    return True


def loglikelihoods(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                   batch_size: int = 8, max_length: int | None = None,
                   progress: Progress | None = None,
                   groups: Sequence[int] | None = None) -> list[tuple[float, int, bool]]:
    """Sum of continuation log-probabilities for each ``(context_ids, continuation_ids)`` pair.

    The numbers are those of lm-evaluation-harness's ``loglikelihood`` (methods.md §5): for each
    request separately, ``log_softmax(model(ctx + cont).logits)`` gathered at the continuation
    tokens and summed. Without ``groups`` every request is computed on its own (see
    :func:`_loglikelihoods_simple`: length-sorted batches, LM head only where tokens are scored).

    With ``groups`` (one group id per request, e.g. the document a multiple-choice option belongs
    to), the requests of a group share work: their longest common token prefix (context plus any
    shared start of the continuations, such as XNLI's premise) is run once with the KV cache
    kept, its scored positions go through the LM head once, and only each request's distinct
    suffix is run, on top of the re-indexed cache, with explicit position ids and an attention
    mask that hides the padding of shorter prefixes. The result equals the ungrouped computation
    up to float rounding (tests compare against the naive per-request reference on five model
    families). Falls back to the plain path when ``max_length`` truncation applies, when the
    model's sliding window is shorter than the sequences, or when a group shares no prefix.

    Args:
        model: causal LM with ``base_model`` and ``get_output_embeddings()``.
        requests: ``(context_ids, continuation_ids)``; non-empty contexts.
        batch_size: requests per forward pass (suffix pass; the prefix pass has at most as many).
        max_length: left-truncate inputs to this many tokens (harness behaviour); disables sharing.
        progress: per-batch progress; cancel raises :class:`~polyprune.errors.Cancelled`.
        groups: group id per request (same length as ``requests``) or ``None``.

    Returns:
        ``(logprob_sum [nats], n_continuation_tokens, is_greedy)`` per request, in input order.

    Raises:
        ValueError: empty context, continuation longer than ``max_length``, ``batch_size < 1``,
            or ``groups`` of the wrong length.
    """
    if groups is None or max_length is not None:
        return _loglikelihoods_simple(model, requests, batch_size=batch_size, max_length=max_length,
                                      progress=progress)
    if len(groups) != len(requests):
        raise ValueError(f"groups has {len(groups)} entries for {len(requests)} requests")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    progress = ensure(progress)
    full = []
    for i, (ctx, cont) in enumerate(requests):
        if not ctx:
            raise ValueError(f"request {i} has an empty context; pass [bos_token_id] instead")
        full.append(list(ctx) + list(cont))
    by_group: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    results: list[tuple[float, int, bool] | None] = [None] * len(requests)
    shared, plain = [], []
    longest = max(len(x) for x in full) if full else 0
    kv_ok = _kv_supported(model, longest)
    for g, members in by_group.items():
        for i in members:
            if not requests[i][1]:
                results[i] = (0.0, 0, True)
        members = [i for i in members if requests[i][1]]
        if not members:
            continue
        P = min(_lcp([full[i] for i in members]), min(len(full[i]) for i in members) - 1)
        if kv_ok and P >= 1:
            shared.append((P, members))
        else:
            plain.extend(members)
    total = len(requests)
    done = sum(r is not None for r in results)
    if plain:
        sub = _loglikelihoods_simple(model, [requests[i] for i in plain], batch_size=batch_size)
        for i, r in zip(plain, sub):
            results[i] = r
        done += len(plain)
    progress.update(done, total, "scoring")
    if not shared:
        return results  # type: ignore[return-value]

    device = next(model.parameters()).device
    base = model.base_model
    head = model.get_output_embeddings()
    cap = _softcap(model.config)
    pad = _pad_id(model)
    import inspect
    takes_pos = "position_ids" in inspect.signature(base.forward).parameters
    # longest groups first; pack groups until the members fill a batch
    shared.sort(key=lambda pm: -max(len(full[i]) for i in pm[1]))
    batches, cur, n_cur = [], [], 0
    for P, members in shared:
        if cur and n_cur + len(members) > max(batch_size, len(members)):
            batches.append(cur)
            cur, n_cur = [], 0
        cur.append((P, members))
        n_cur += len(members)
    if cur:
        batches.append(cur)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                progress.check()
                G = len(batch)
                Pmax = max(P for P, _ in batch)
                ids = torch.full((G, Pmax), pad, dtype=torch.long)
                pmask = torch.zeros((G, Pmax), dtype=torch.long)
                for gi, (P, members) in enumerate(batch):
                    ids[gi, :P] = torch.tensor(full[members[0]][:P])
                    pmask[gi, :P] = 1
                member_list = [(gi, i) for gi, (_, members) in enumerate(batch) for i in members]
                need_suffix = any(len(full[i]) - 1 > batch[gi][0] for gi, i in member_list)
                out = base(input_ids=ids.to(device), attention_mask=pmask.to(device), use_cache=need_suffix)
                hid = out.last_hidden_state
                cache = out.past_key_values if need_suffix else None
                if need_suffix and not hasattr(cache, "reorder_cache"):
                    raise RuntimeError("model returned no re-indexable KV cache")
                # prefix rows: positions p (0 <= p < P) predicting token p+1 scored by any member
                rows_g, rows_p, tgt = [], [], []
                for gi, (P, members) in enumerate(batch):
                    c_min = min(len(requests[i][0]) for i in members)
                    for p in range(max(c_min - 1, 0), P - 1):
                        rows_g.append(gi); rows_p.append(p); tgt.append(full[members[0]][p + 1])
                # the last prefix position predicts each member's first distinct token
                last_rows = []
                for gi, i in member_list:
                    P = batch[gi][0]
                    if P >= len(requests[i][0]):
                        last_rows.append((gi, i))
                rg = torch.tensor(rows_g + [gi for gi, _ in last_rows], dtype=torch.long)
                rp = torch.tensor(rows_p + [batch[gi][0] - 1 for gi, _ in last_rows], dtype=torch.long)
                tt = torch.tensor(tgt + [full[i][batch[gi][0]] for gi, i in last_rows], dtype=torch.long)
                lp, gr = _head_logprobs(head, hid[rg.to(hid.device), rp.to(hid.device)], tt, cap)
                # per-group table of shared log-probs by position p+1
                shared_lp: dict[tuple[int, int], tuple[float, bool]] = {}
                for k in range(len(rows_g)):
                    shared_lp[(rows_g[k], rows_p[k] + 1)] = (float(lp[k]), bool(gr[k]))
                acc = {i: [0.0, 0, True] for _, i in member_list}
                for k, (gi, i) in enumerate(last_rows):
                    a = acc[i]
                    a[0] += float(lp[len(rows_g) + k]); a[1] += 1; a[2] = a[2] and bool(gr[len(rows_g) + k])
                for gi, i in member_list:
                    P, c = batch[gi][0], len(requests[i][0])
                    a = acc[i]
                    for t in range(max(c, 1), P):
                        v, g_ = shared_lp[(gi, t)]
                        a[0] += v; a[1] += 1; a[2] = a[2] and g_
                del hid, out
                if need_suffix:
                    sfx = [(gi, i) for gi, i in member_list if len(full[i]) - 1 > batch[gi][0]]
                    M = len(sfx)
                    Smax = max(len(full[i]) - 1 - batch[gi][0] for gi, i in sfx)
                    sids = torch.full((M, Smax), pad, dtype=torch.long)
                    smask = torch.zeros((M, Pmax + Smax), dtype=torch.long)
                    pos = torch.zeros((M, Smax), dtype=torch.long)
                    for m, (gi, i) in enumerate(sfx):
                        P = batch[gi][0]
                        s = full[i][P:len(full[i]) - 1]
                        sids[m, :len(s)] = torch.tensor(s)
                        smask[m, :P] = 1
                        smask[m, Pmax:Pmax + len(s)] = 1
                        pos[m] = torch.arange(P, P + Smax)
                    cache.reorder_cache(torch.tensor([gi for gi, _ in sfx], dtype=torch.long, device=device))
                    kw = {"position_ids": pos.to(device)} if takes_pos else {}
                    o2 = base(input_ids=sids.to(device), attention_mask=smask.to(device), past_key_values=cache,
                              use_cache=True, **kw)
                    h2 = o2.last_hidden_state
                    r_m, r_s, t2, owner = [], [], [], []
                    for m, (gi, i) in enumerate(sfx):
                        P, c, n = batch[gi][0], len(requests[i][0]), len(full[i])
                        for p in range(P, n - 1):  # hidden at position p predicts token p+1
                            if p + 1 >= c:
                                r_m.append(m); r_s.append(p - P); t2.append(full[i][p + 1]); owner.append(i)
                    lp2, gr2 = _head_logprobs(head, h2[torch.tensor(r_m, device=h2.device), torch.tensor(r_s, device=h2.device)],
                                              torch.tensor(t2, dtype=torch.long), cap)
                    for k, i in enumerate(owner):
                        a = acc[i]
                        a[0] += float(lp2[k]); a[1] += 1; a[2] = a[2] and bool(gr2[k])
                    del o2, h2, cache
                for _, i in member_list:
                    s_, n_, g_ = acc[i]
                    results[i] = (s_, n_, g_)
                done += len(member_list)
                progress.update(done, total, f"scored {done}/{total}")
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
