"""Evaluation of a streamed model: log-likelihoods, FLORES perplexity and logits computed one block
at a time from the checkpoint (:class:`~polyprune.pruning.stream_source.BlockStream`), so a model
larger than memory can be evaluated before and after pruning."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..datasets import flores_dir as find_flores_dir
from ..datasets import flores_file, read_flores
from ..errors import PolypruneError
from ..evaluation.engine import prefix_id, special_ids
from ..evaluation.results import Result
from ..evaluation.stats import perplexity_ci, seed_for
from ..languages import resolve_language
from ..models import base_model
from ..progress import Progress, ensure
from ..pruning.sequential import BlockInputs, run
from ..pruning.stream_source import BlockStream, CompactEmbedding

# --------------------------------------------------------------------------------------------
# streamed evaluation: perplexity without the model in memory
# --------------------------------------------------------------------------------------------
#: Rows of scored positions sent through the LM head at once.
HEAD_ROWS = 2048
#: Vocabulary rows of the LM head read at once (bounds the float32 logits to ``HEAD_ROWS x 4096``).
HEAD_VOCAB_ROWS = 4096


def _final_hidden(stream: BlockStream, batches: list, inputs: BlockInputs) -> list[torch.Tensor]:
    """The base model's output (final norm applied) per batch, from the last block's outputs in
    ``inputs.hidden``: the base model is run with every block replaced by a pass-through that
    returns, at the last block, the stored output — so whatever the model does after its blocks
    (final norm, scaling) is its own code."""
    model = stream.model
    base = base_model(model)
    last = len(stream.blocks) - 1
    block = stream.open(last)
    out0 = inputs.calls[last][0].raw(block, inputs.hidden[0])
    as_tuple, width = isinstance(out0, (tuple, list)), (len(out0) if isinstance(out0, (tuple, list)) else 1)
    del out0
    stream.close(last)
    emb = model.get_input_embeddings()
    ids_all = torch.unique(torch.cat([b[0].reshape(-1) for b in batches]))
    rows = stream.reader.read_rows(stream.names[stream.embedding_key], ids_all, stream.dtype).to(stream.device)
    for k in stream.pre_keys:
        stream._load(k)
    compact = CompactEmbedding(emb, ids_all.to(stream.device), rows)
    model.set_input_embeddings(compact)
    results = []
    try:
        for b, (ids, att) in enumerate(batches):
            h = inputs.hidden[b]

            def make(i: int, h: torch.Tensor = h):
                def forward(*args, **kwargs):
                    x = args[0] if args else kwargs["hidden_states"]
                    v = h if i == last else x
                    return (v,) + (None,) * (width - 1) if as_tuple else v
                return forward

            for i, blk in enumerate(stream.blocks):
                blk.forward = make(i)
            try:
                o = base(input_ids=ids.to(stream.device), attention_mask=att.to(stream.device), use_cache=False)
            finally:
                for blk in stream.blocks:
                    if "forward" in blk.__dict__:
                        del blk.forward
            results.append((o.last_hidden_state if hasattr(o, "last_hidden_state") else o[0]).to("cpu"))
    finally:
        model.set_input_embeddings(compact.release())
        for k in stream.pre_keys:
            stream._unload(k)
    return results


def _head_name(stream: BlockStream) -> tuple[str, str | None]:
    """Checkpoint names of the LM head's weight (the embedding's when tied) and bias."""
    head = stream.model.get_output_embeddings()
    state = stream.model.state_dict(keep_vars=True)
    wkey = next(k for k, v in state.items() if v is head.weight)
    bkey = next((k for k, v in state.items() if getattr(head, "bias", None) is not None and v is head.bias), None)
    cfgm = stream.config
    tied = any(getattr(c, "tie_word_embeddings", False) for c in (cfgm, getattr(cfgm, "text_config", None)) if c is not None)
    if wkey not in stream.names and tied:
        return stream.names[stream.embedding_key], None
    if wkey not in stream.names:
        raise PolypruneError(f"Block streaming cannot find the LM head {wkey} in {stream.folder}",
                             "evaluate without --max-memory")
    return stream.names[wkey], (stream.names.get(bkey) if bkey else None)


def streamed_hidden(stream: BlockStream, batches: list, progress: Progress | None = None) -> list[torch.Tensor]:
    """The base model's output (``last_hidden_state``, final norm applied) for each batch
    ``(input_ids [B, T], attention_mask [B, T])``, on the CPU, with one block in memory at a time."""

    holder: dict = {}

    def per_block(i, block, inputs) -> bool:
        holder["inputs"] = inputs[0]
        return False

    run(stream.model, [batches], per_block, ensure(progress), "Evaluating,", source=stream)
    return _final_hidden(stream, batches, holder["inputs"])


def head_logits(stream: BlockStream, rows: torch.Tensor, progress: Progress | None = None):
    """Yield ``(v0, r0, logits)``: float32 logits ``[<=HEAD_ROWS, <=HEAD_VOCAB_ROWS]`` of hidden ``rows``
    ``[R, d]`` (rows ``r0...``) for vocabulary entries ``v0...``, with the LM head read from the
    checkpoint in chunks (bias and final logit soft-capping applied as the model does)."""
    progress = ensure(progress)
    wname, bname = _head_name(stream)
    cfgm = stream.config
    cap = next((float(c.final_logit_softcapping) for c in (cfgm, getattr(cfgm, "text_config", None))
                if c is not None and getattr(c, "final_logit_softcapping", None) is not None), None)
    vocab = stream.reader.tensors[wname].shape[0]
    bias = stream.reader.read(bname, stream.dtype) if bname else None
    chunks = list(range(0, vocab, HEAD_VOCAB_ROWS))
    for n, v0 in enumerate(chunks):
        progress.update(n, len(chunks), "Applying the LM head")
        v1 = min(v0 + HEAD_VOCAB_ROWS, vocab)
        W = stream.reader.read_slice(wname, v0, v1, stream.dtype).to(stream.device)
        bb = bias[v0:v1].to(stream.device) if bias is not None else None
        for r0 in range(0, rows.shape[0], HEAD_ROWS):
            x = rows[r0:r0 + HEAD_ROWS].to(stream.device)
            logits = (x @ W.t() if bb is None else torch.addmm(bb, x, W.t())).float()
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            yield v0, r0, logits.cpu()
        del W
    progress.update(len(chunks), len(chunks), "LM head applied")


@torch.inference_mode()
def streamed_logits(folder: str | Path, input_ids: torch.Tensor, device: str = "cpu", dtype: str = "float32",
                    trust_remote_code: bool = False) -> torch.Tensor:
    """Logits ``[T, vocab]`` (float32) of one text ``input_ids`` ``[T]`` under the checkpoint in
    ``folder``, read one block at a time (a reload check that needs one block's memory)."""
    stream = BlockStream(folder, device, dtype, trust_remote_code)
    ids = input_ids.reshape(1, -1).to(torch.long)
    (h,) = streamed_hidden(stream, [(ids, torch.ones_like(ids))])
    rows = h[0]
    out = torch.empty(rows.shape[0], stream.reader.tensors[_head_name(stream)[0]].shape[0])
    for v0, r0, logits in head_logits(stream, rows):
        out[r0:r0 + logits.shape[0], v0:v0 + logits.shape[1]] = logits
    return out


@torch.inference_mode()
def streamed_loglikelihoods(stream: BlockStream, requests: list[tuple[list[int], list[int]]], batch_size: int = 8,
                            progress: Progress | None = None) -> list[tuple[float, int, bool]]:
    """:func:`polyprune.evaluation.engine.loglikelihoods` (ungrouped, no truncation) with one block
    in memory at a time: requests sorted by length (longest first) and batched, every block run over
    all batches, then the LM head applied in vocabulary chunks read from the checkpoint
    (``log p = logit - logsumexp``, accumulated chunk by chunk in float32). Equal to the in-memory
    numbers up to float rounding of the chunked log-sum-exp.

    Returns:
        ``(logprob_sum [nats], n_continuation_tokens, is_greedy)`` per request, in input order.
    """
    progress = ensure(progress)
    inputs_ids, targets = [], []
    for i, (ctx, cont) in enumerate(requests):
        if not ctx:
            raise ValueError(f"request {i} has an empty context; pass [bos_token_id] instead")
        tokens = list(ctx) + list(cont)
        inputs_ids.append(tokens[:-1])
        targets.append(list(cont))
    todo = sorted((i for i in range(len(requests)) if targets[i]), key=lambda i: -len(inputs_ids[i]))
    results: list = [(0.0, 0, True) if not targets[i] else None for i in range(len(requests))]
    if not todo:
        return results
    pad = getattr(stream.config, "pad_token_id", None)
    pad = pad if isinstance(pad, int) and pad >= 0 else 0
    batches, where = [], []  # where: per scored row (request, batch, position)
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        T = max(len(inputs_ids[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            L, C = len(inputs_ids[i]), len(targets[i])
            ids[b, :L] = torch.tensor(inputs_ids[i])
            att[b, :L] = 1
            where.extend((i, len(batches), b, p, t) for p, t in zip(range(L - C, L), targets[i]))
        batches.append((ids, att))
    final = streamed_hidden(stream, batches, progress.sub(0, 0.85))
    rows = torch.stack([final[bi][b, p] for _, bi, b, p, _ in where])  # [R, d]
    tgt = torch.tensor([t for *_, t in where], dtype=torch.long)
    del final
    R = rows.shape[0]
    lse = torch.full((R,), float("-inf"))
    tlog = torch.empty(R)
    best = torch.full((R,), float("-inf"))
    arg = torch.zeros(R, dtype=torch.long)
    for v0, r0, logits in head_logits(stream, rows, progress.sub(0.85, 1.0)):
        sl = slice(r0, r0 + logits.shape[0])
        v1 = v0 + logits.shape[1]
        lse[sl] = torch.logaddexp(lse[sl], torch.logsumexp(logits, 1))
        t = tgt[sl]
        inside = (t >= v0) & (t < v1)
        if bool(inside.any()):
            tlog[sl][inside] = logits[inside, t[inside] - v0]
        m, a = logits.max(1)
        better = m > best[sl]
        best[sl] = torch.where(better, m, best[sl])
        arg[sl] = torch.where(better, a + v0, arg[sl])
    lp = (tlog - lse).double()
    greedy = arg == tgt
    acc: dict[int, list] = {}
    for k, (i, *_rest) in enumerate(where):
        a = acc.setdefault(i, [0.0, 0, True])
        a[0] += float(lp[k]); a[1] += 1; a[2] = a[2] and bool(greedy[k])
    for i, (s_, n_, g_) in acc.items():
        results[i] = (s_, n_, g_)
    progress.update(1, 1, "Evaluated")
    return results


def streamed_flores_perplexity(stream: BlockStream, data_dir, languages: list[str], *, split: str = "devtest",
                               limit: int | None = None, batch_size: int = 8, bootstrap: int = 0, seed: int = 0,
                               item_scores: bool = False, progress: Progress | None = None) -> list:
    """:func:`polyprune.evaluation.perplexity.flores_perplexity` with one block in memory at a time,
    every language in one streamed pass (methods.md §5: token-level perplexity, sentence-bootstrap
    interval). Returns one ``flores_ppl`` :class:`~polyprune.evaluation.Result` per language."""

    root = find_flores_dir(data_dir)
    codes = [lang if flores_file(root, split, lang) is not None else resolve_language(lang) for lang in languages]
    tok = stream.tokenizer
    special = special_ids(tok)
    requests, owner = [], []
    n_texts = {}
    for code in codes:
        texts = [s for s in read_flores(root, code, split, limit) if s.strip()]
        n_texts[code] = len(texts)
        for text in texts:
            ids = list(tok(text)["input_ids"])
            if not ids or ids[0] not in special:
                ids = [prefix_id(tok)] + ids
            if len(ids) >= 2:
                requests.append((ids[:1], ids[1:]))
                owner.append(code)
    res = streamed_loglikelihoods(stream, requests, batch_size, progress)
    out = []
    for code in codes:
        items = [(-r[0], int(r[1])) for r, o in zip(res, owner) if o == code]
        nll, tokens = sum(a for a, _ in items), sum(b for _, b in items)
        if not tokens:
            raise PolypruneError(f"No tokens to score in FLORES {code}", "check the data folder")
        lo = hi = None
        if bootstrap:
            lo, hi = perplexity_ci([a for a, _ in items], [b for _, b in items], iters=bootstrap,
                                   seed=seed_for(seed, "flores_ppl", code))
        extra = {"tokens": tokens, "nll": nll, "split": split, "streamed": True}
        if item_scores:
            extra["item_nll"] = [a for a, _ in items]
            extra["item_tokens"] = [b for _, b in items]
        out.append(Result("flores_ppl", code, "perplexity", math.exp(nll / tokens), lo, hi, n_texts[code], extra=extra))
    return out
