"""The log-likelihood engine: every number of the evaluation rests on :func:`loglikelihoods`.

It scores ``(context, continuation)`` token-id pairs the way lm-evaluation-harness 0.4.13's
``HFLM.loglikelihood`` does (methods.md §5), but applies the LM head only to the hidden states
that predict continuation tokens: with a 262,144-entry vocabulary (Gemma 3) the full logits of a
batch would otherwise dominate time and memory. With ``groups`` (the choices of a document),
shared token prefixes are run once and their KV cache reused for each distinct suffix.

Qt-free. Long functions take ``progress`` (a :class:`~polyprune.progress.Progress` or ``None``),
report per batch and stop with :class:`~polyprune.errors.Cancelled` on request.
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from ..errors import PolypruneError
from ..models import base_model
from ..progress import Progress, ensure

#: Rows of the LM head applied at once (bounds the float32 logits to ``2048 x vocab``).
HEAD_CHUNK_ROWS = 2048


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
    base = base_model(model)
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



def special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            ids.add(v)
    return ids


def prefix_id(tokenizer) -> int:
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


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
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
        P = min(common_prefix_len([full[i] for i in members]), min(len(full[i]) for i in members) - 1)
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
    base = base_model(model)
    head = model.get_output_embeddings()
    cap = _softcap(model.config)
    pad = _pad_id(model)
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
