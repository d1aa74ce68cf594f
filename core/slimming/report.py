"""What slimming costs and gains: sizes, per-language quality, speed, and the vocabulary trade-off.

* **Sizes**: parameters per part (:func:`~polyprune.slimming.plan.part_sizes`) and bytes
  (parameters x bytes per element of the dtype; the written files are measured too).
* **Sentence NLL** per kept language, on held-out FLORES-200 devtest sentences: the summed negative
  log-likelihood (nats) of each sentence, every token after BOS predicted. Because a slimmed
  vocabulary may split a sentence into more tokens, a per-token perplexity would not be comparable;
  the per-sentence sum is. Change ``= sum(after) / sum(before) - 1``; its 95% interval is the
  percentile bootstrap of the mean paired difference ``after_i - before_i`` over sentences
  (:func:`polyprune.evaluation.stats.bootstrap_ci`), scaled by ``n / sum(before)``.
* **Speed**: greedy generation of ``speed_tokens`` new tokens (batch 1, no early stop) after a
  kept-language prompt, median tokens/s over runs, on this machine.
* **Trade-off curve** (:func:`tradeoff_curve`): held-out sentence-NLL change per kept language
  against vocabulary size, for nested ``size``-mode vocabularies plus the ``script`` and ``corpus``
  vocabularies. It needs no slimmed model: a vocabulary-trimmed model's log-probability of kept
  token ``j`` after hidden state ``h`` is ``log softmax(h W[keep]^T)_j`` with the source's final
  hidden state ``h`` of the same token sequence, so the source model runs once per distinct
  tokenization and only the softmax is restricted (checked against a really slimmed model in the
  tests).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ..errors import PolypruneError
from ..evaluation import perplexity
from ..progress import Progress, ensure
from ..evaluation.stats import bootstrap_ci

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def sizes_table(before: dict[str, int], after: dict[str, int], dtype_before: str, dtype_after: str) -> list[dict]:
    """Rows ``{part, params_before, params_after, bytes_before, bytes_after, ratio}`` plus a ``total`` row."""
    rows = []
    for part in list(before) + ["total"]:
        pb = sum(before.values()) if part == "total" else before[part]
        pa = sum(after.values()) if part == "total" else after.get(part, 0)
        rows.append({"part": part, "params_before": pb, "params_after": pa,
                     "bytes_before": pb * BYTES[dtype_before], "bytes_after": pa * BYTES[dtype_after],
                     "ratio": pa / pb if pb else None})
    return rows


def sentence_nll(model, tokenizer, texts: list[str], batch_size: int = 8,
                 progress: Progress | None = None) -> list[float]:
    """Summed NLL (nats) of each text (:func:`polyprune.evaluation.perplexity`'s per-text items)."""
    items: list = []
    perplexity(model, tokenizer, texts, batch_size=batch_size, items=items, progress=progress)
    if len(items) != len(texts):
        raise PolypruneError("Some held-out sentences had no token to score", "use non-empty sentences")
    return [float(n) for n, _ in items]


def nll_change(before: list[float], after: list[float], iters: int = 1000, seed: int = 0) -> dict:
    """``{nll_before, nll_after, change_pct, ci_low, ci_high, n}`` for paired per-sentence NLLs."""
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    n, total = b.size, float(b.sum())
    change = 100.0 * (float(a.sum()) / total - 1.0)
    lo = hi = None
    if iters:
        lo, hi = bootstrap_ci(a - b, iters=iters, seed=seed)
        lo, hi = 100.0 * lo * n / total, 100.0 * hi * n / total
    return {"nll_before": total, "nll_after": float(a.sum()), "change_pct": change, "ci_low": lo, "ci_high": hi,
            "n": int(n)}


@torch.inference_mode()
def generation_speed(model, tokenizer, prompt: str, new_tokens: int = 64, runs: int = 3,
                     progress: Progress | None = None) -> dict:
    """Median greedy decoding speed ``{tokens_per_s, runs, new_tokens, seconds}`` (batch 1)."""
    progress = ensure(progress)
    dev = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(dev)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    times = []
    for r in range(runs):
        progress.update(r, runs, "measuring generation speed")
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, temperature=None, top_p=None,
                       top_k=None)
        times.append(time.perf_counter() - t0)
    progress.update(runs, runs, "speed measured")
    sec = statistics.median(times)
    return {"tokens_per_s": new_tokens / sec, "seconds": sec, "runs": runs, "new_tokens": new_tokens}


def _softcap(model) -> float | None:
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        cap = getattr(cfg, "final_logit_softcapping", None) if cfg is not None else None
        if cap:
            return float(cap)
    return None


@torch.inference_mode()
def restricted_nll(model, sequences: list[list[int]], keep: torch.Tensor | None, cache: dict,
                   batch_size: int = 8, progress: Progress | None = None) -> list[float]:
    """Summed NLL (nats) of each old-id sequence under the source model with the softmax restricted
    to the rows ``keep`` (``None``: the whole vocabulary); every token after the first is scored.

    Args:
        model: the source causal LM.
        sequences: ``[[old id, ...], ...]`` (BOS first); every id must be in ``keep``.
        keep: ``[K]`` old ids of the kept vocabulary.
        cache: ``{tuple(ids): final hidden states [T, H]}``, filled and reused across calls.
    """
    progress = ensure(progress)
    dev = next(model.parameters()).device
    base = getattr(model, "base_model", model)
    todo = [s for s in dict.fromkeys(tuple(s) for s in sequences) if s not in cache]
    todo.sort(key=len, reverse=True)
    for k in range(0, len(todo), batch_size):
        progress.update(k, len(todo) + 1, "running the source model")
        batch = todo[k:k + batch_size]
        T = len(batch[0])
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for b, s in enumerate(batch):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        h = base(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).last_hidden_state
        for b, s in enumerate(batch):
            cache[s] = h[b, :len(s) - 1].float().cpu()
    W = model.get_output_embeddings().weight
    bias = getattr(model.get_output_embeddings(), "bias", None)
    if keep is not None:
        W = W.index_select(0, keep.to(W.device))
        bias = bias.index_select(0, keep.to(W.device)) if bias is not None else None
        pos = torch.full((model.get_output_embeddings().weight.shape[0],), -1, dtype=torch.long)
        pos[keep.cpu()] = torch.arange(keep.numel())
    W = W.float()
    cap = _softcap(model)
    out = []
    for s in sequences:
        h = cache[tuple(s)].to(W.device)
        logits = h @ W.T
        if bias is not None:
            logits = logits + bias.float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        tgt = torch.tensor(s[1:])
        if keep is not None:
            tgt = pos[tgt]
            if bool((tgt < 0).any()):
                raise PolypruneError("A held-out token is outside the kept vocabulary", "report this as a bug")
        lp = torch.log_softmax(logits, dim=-1).gather(1, tgt.to(W.device)[:, None])
        out.append(-float(lp.double().sum()))
    progress.update(1, 1, "scored")
    return out


def model_card(report: dict) -> str:
    """The model card (README.md) of a slimmed model: a header and :func:`card_section`."""
    m = report.get("model", {})
    head = ["---", "tags: [polyprune, slimmed, " + ", ".join(report.get("plan", {}).get("languages", [])) + "]",
            f"base_model: {m.get('spec', '')}", "---", f"# {m.get('name', 'Model')} — slimmed with Polyprune", "",
            "A smaller model for the kept languages: tokens of other scripts, the least influential blocks and/or",
            "precision were removed structurally, so the files are smaller and generation is faster. Settings are in",
            "`slim_config.json`, every measurement in `report.json`, the kept token ids (old ids in new-id order) in",
            "`kept_tokens.json`."]
    return "\n".join(head) + "\n" + card_section(report)


def card_section(report: dict) -> str:
    """Markdown for the model card: what was removed, sizes, quality change, speed, GGUF."""
    lines = ["", "## Slimming (Polyprune)", ""]
    plan = report.get("plan", {})
    v = plan.get("vocab") or {}
    lines.append(f"Kept languages: {', '.join(plan.get('languages', []))} (scripts {', '.join(plan.get('scripts', []))}).")
    if v and v.get("mode") != "none":
        lines.append(f"Vocabulary: {v.get('mode')} mode, {v.get('size'):,} of {v.get('source_size'):,} tokens kept.")
    if plan.get("remove_blocks"):
        lines.append(f"Removed blocks (least ShortGPT influence): {', '.join(map(str, plan['remove_blocks']))}.")
    lines.append(f"Weights stored as {plan.get('dtype')}.")
    lines += ["", "| part | parameters before | after | MB before | MB after |", "|---|---|---|---|---|"]
    for r in report.get("sizes", []):
        lines.append(f"| {r['part']} | {r['params_before']:,} | {r['params_after']:,} | "
                     f"{r['bytes_before'] / 1e6:.1f} | {r['bytes_after'] / 1e6:.1f} |")
    q = report.get("quality") or []
    if q:
        lines += ["", "| language | held-out sentence NLL change | 95% interval | sentences |", "|---|---|---|---|"]
        for r in q:
            ci = f"{r['ci_low']:+.2f} % to {r['ci_high']:+.2f} %" if r.get("ci_low") is not None else ""
            lines.append(f"| {r['language']} | {r['change_pct']:+.2f} % | {ci} | {r['n']} |")
    sp = report.get("speed")
    if sp:
        lines.append("")
        lines.append(f"Generation speed on the slimming machine: {sp['before']['tokens_per_s']:.1f} -> "
                     f"{sp['after']['tokens_per_s']:.1f} tokens/s ({sp['new_tokens']} new tokens, batch 1, {sp['dtype']}).")
    g = report.get("gguf")
    if g:
        lines.append("")
        lines.append(f"GGUF: `{g['file']}` ({g['type']}, {g['bytes'] / 1e6:.1f} MB); round trip through transformers: "
                     f"max |Δlogit| {g['check']['max_abs']:.4g} (format rounding alone: "
                     f"{g['check']['reference_max_abs']:.4g}), same tokens: {g['check']['tokens_equal']}.")
    return "\n".join(lines) + "\n"
