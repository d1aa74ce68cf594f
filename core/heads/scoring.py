"""Per-language head scores: ablation (exact) and taylor (first order), heads issue and methods.md §7.

Definitions (token-pooled): the NLL of a language is ``−Σ log p`` over every predicted token of
every sentence divided by the number of predicted tokens (nats/token); each sentence is tokenized
alone with the tokenizer's defaults and cut to ``L`` tokens, its first token is context only.

* ``ablation[l, h] = NLL(g[l,h] = 0, other gates 1) − NLL(all gates 1)`` (Michel et al. 2019, §3
  "masking one head at a time"). Affordable because each block's output is recorded once per batch:
  ablating a head of block ``l`` replays the recorded outputs of blocks ``0..l−1`` (their forwards
  return the recording) and computes only blocks ``l..end`` and the LM head, inside the model's own
  forward (masks, rotary tables, Gemma 3's scaled embeddings and per-layer-type masks unchanged).
* ``taylor[l, h] = −∂NLL/∂g[l, h]`` at all gates 1 (Michel et al. 2019, eq. 2, signed; LAHIS's
  gate gradient without its drifting AdamW update, methods.md §7): one forward and one backward pass
  per batch for every head at once. ``Σ_{h∈S} taylor[h]`` is the first-order estimate of the NLL
  change when the set ``S`` is removed.

The LM head is applied in chunks of :data:`~polyprune.heads.locate.HEAD_CHUNK_ROWS` rows (Gemma 3
has 262,144 entries), with ``final_logit_softcapping`` as the model applies it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import language_texts, tokenize_texts
from ..errors import PolypruneError
from ..languages import language_name
from ..models import find_blocks
from ..progress import Progress, ensure
from .gates import HeadGates
from .locate import HEAD_CHUNK_ROWS, HeadLayout, lm_logits


@dataclass
class LanguageTexts:
    """Tokenized sentences of one language.

    Attributes:
        language: FLORES-200 code. texts: the sentences. ids: token ids per sentence (cut to L).
    """

    language: str
    texts: list[str]
    ids: list[list[int]]

    @property
    def tokens(self) -> int:
        """Predicted tokens (every token but each sentence's first)."""
        return sum(max(len(x) - 1, 0) for x in self.ids)


def load_texts(tokenizer, source: str, languages: list[str], n: int, split: str, seq_len: int) -> list[LanguageTexts]:
    """The first ``n`` sentences of each language, tokenized alone and cut to ``seq_len`` tokens.

    Raises:
        PolypruneError: an unknown language, fewer than ``n`` sentences (named with the count), or a
            language whose sentences leave no token to predict.
    """
    out = []
    for lang in languages:
        texts = language_texts(source, lang, n, split)
        ids = tokenize_texts(tokenizer, texts, seq_len)
        lt = LanguageTexts(lang, texts, ids)
        if lt.tokens == 0:
            raise PolypruneError(f"The {language_name(lang)} sentences leave no token to predict at {seq_len} tokens",
                                 "use a longer sequence length (--seq-len) or other sentences")
        out.append(lt)
    return out


def make_batches(ids: list[list[int]], batch_size: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """Right-padded batches ``(input_ids [B, T], attention_mask [B, T], sentence indices)``;
    sentences with fewer than 2 tokens (nothing to predict) are left out."""
    keep = [i for i, x in enumerate(ids) if len(x) >= 2]
    out = []
    for s in range(0, len(keep), batch_size):
        idx = keep[s:s + batch_size]
        T = max(len(ids[i]) for i in idx)
        inp = torch.full((len(idx), T), pad_id, dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            inp[b, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            att[b, :len(ids[i])] = 1
        out.append((inp, att, idx))
    return out


def _hidden(model: nn.Module, inp: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    out = model.base_model(input_ids=inp, attention_mask=att, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _targets(inp: torch.Tensor, att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows that predict a token: ``(batch index [R], position [R], target id [R])``."""
    b, p = torch.nonzero(att[:, 1:].bool(), as_tuple=True)
    return b, p, inp[b, p + 1]


def token_nll(model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``−log p(target)`` for hidden ``rows [R, d]``, float32 ``[R]`` (LM head in chunks)."""
    parts = [F.cross_entropy(lm_logits(model, rows[c:c + HEAD_CHUNK_ROWS]), targets[c:c + HEAD_CHUNK_ROWS].to(rows.device),
                             reduction="none")
             for c in range(0, rows.shape[0], HEAD_CHUNK_ROWS)]
    return torch.cat(parts) if parts else rows.new_zeros(0)


def sentence_nll(model: nn.Module, inp: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """Summed NLL of each sentence of a batch, float64 ``[B]`` (call under ``inference_mode``)."""
    dev = next(model.parameters()).device
    inp, att = inp.to(dev), att.to(dev)
    h = _hidden(model, inp, att)
    b, p, t = _targets(inp, att)
    nll = token_nll(model, h[b, p], t).double()
    return torch.zeros(inp.shape[0], dtype=torch.float64, device=nll.device).index_add_(0, b, nll).cpu()


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for the duration (dropout off), training flag restored afterwards."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextmanager
def replay_blocks(blocks: nn.ModuleList, outputs: list, upto: int):
    """Blocks ``0..upto−1`` return their recorded ``outputs`` instead of computing (restored on exit)."""
    saved = []
    try:
        for i in range(upto):
            saved.append((blocks[i], blocks[i].__dict__.get("forward")))
            blocks[i].forward = (lambda *a, _o=outputs[i], **k: _o)
        yield
    finally:
        for blk, f in saved:
            if f is None:
                del blk.forward
            else:
                blk.forward = f


def language_sentence_nll(model: nn.Module, layout: HeadLayout, lt: LanguageTexts, batch_size: int, pad: int,
                          removed: dict[int, list[int]] | None = None, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-sentence summed NLL (nats) and predicted tokens of one language, with the heads in
    ``removed`` (``{block: [heads]}``) gated to 0. Returns ``(nll [n], tokens [n])`` float64/int64."""
    progress = ensure(progress)
    nll = np.zeros(len(lt.ids), dtype=np.float64)
    tok = np.array([max(len(x) - 1, 0) for x in lt.ids], dtype=np.int64)
    gates = torch.ones(layout.n_blocks, layout.n_heads)
    for b, hs in (removed or {}).items():
        gates[b, hs] = 0.0
    batches = make_batches(lt.ids, batch_size, pad)
    with eval_mode(model), torch.inference_mode(), HeadGates(model, layout, gates):
        for j, (inp, att, idx) in enumerate(batches):
            progress.update(j, len(batches), f"{lt.language}: batch {j + 1}/{len(batches)}")
            nll[idx] = sentence_nll(model, inp, att).numpy()
    progress.update(len(batches), len(batches), lt.language)
    return nll, tok


def taylor_scores(model: nn.Module, layout: HeadLayout, lt: LanguageTexts, batch_size: int, pad: int,
                  progress: Progress | None = None) -> tuple[np.ndarray, float]:
    """``taylor [L, H] = −∂NLL/∂g`` at all gates 1 for one language, and its NLL (nats/token).

    Per batch one forward and one backward pass; the LM head's gradient is taken chunk by chunk
    into the final hidden rows, then back through the blocks into the gates. Parameters get no
    gradient (their ``requires_grad`` is switched off for the duration and restored).
    """
    progress = ensure(progress)
    dev = next(model.parameters()).device
    grad = torch.zeros(layout.n_blocks, layout.n_heads, dtype=torch.float64)
    total = 0.0
    flags = [(p, p.requires_grad) for p in model.parameters()]
    batches = make_batches(lt.ids, batch_size, pad)
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with eval_mode(model):
            for j, (inp, att, _) in enumerate(batches):
                progress.update(j, len(batches), f"taylor {lt.language}: batch {j + 1}/{len(batches)}")
                inp, att = inp.to(dev), att.to(dev)
                g = torch.ones(layout.n_blocks, layout.n_heads, device=dev, requires_grad=True)
                with torch.enable_grad(), HeadGates(model, layout, g):
                    h = _hidden(model, inp, att)
                    b, pos, t = _targets(inp, att)
                    rows = h[b, pos]
                    r = rows.detach().requires_grad_(True)
                    for c in range(0, r.shape[0], HEAD_CHUNK_ROWS):
                        loss = F.cross_entropy(lm_logits(model, r[c:c + HEAD_CHUNK_ROWS]), t[c:c + HEAD_CHUNK_ROWS],
                                               reduction="sum")
                        loss.backward()
                        total += float(loss.detach())
                    rows.backward(r.grad)
                grad += g.grad.detach().double().cpu()
                del h, rows, r, g
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    progress.update(len(batches), len(batches), f"taylor {lt.language}")
    n = lt.tokens
    return (-grad / n).numpy(), total / n


def ablation_scores(model: nn.Module, layout: HeadLayout, lt: LanguageTexts, batch_size: int, pad: int,
                    progress: Progress | None = None) -> tuple[np.ndarray, float]:
    """``ablation [L, H] = NLL(g[l,h]=0) − NLL(all 1)`` for one language, and its NLL (nats/token).

    Per batch: one full forward records every block's output; then for each block ``l`` and head
    ``h`` the forward replays blocks ``0..l−1`` and computes blocks ``l..end`` with the head gated
    to 0. Cost per batch: ``H·L(L+1)/2`` block passes and ``L·H`` LM-head passes.
    """
    progress = ensure(progress)
    _, blocks = find_blocks(model)
    L, H = layout.n_blocks, layout.n_heads
    diff = np.zeros((L, H), dtype=np.float64)
    base_total = 0.0
    batches = make_batches(lt.ids, batch_size, pad)
    steps, done = len(batches) * L * H, 0
    with eval_mode(model), torch.inference_mode():
        for inp, att, _ in batches:
            outputs = [None] * L
            handles = [blk.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o))
                       for i, blk in enumerate(blocks)]
            try:
                base = float(sentence_nll(model, inp, att).sum())
            finally:
                for hd in handles:
                    hd.remove()
            base_total += base
            for l in range(L):
                with replay_blocks(blocks, outputs, l):
                    for h in range(H):
                        progress.update(done, steps, f"ablation {lt.language}: block {l}, head {h}")
                        gates = torch.ones(L, H)
                        gates[l, h] = 0.0
                        with HeadGates(model, layout, gates, blocks=[l]):
                            diff[l, h] += float(sentence_nll(model, inp, att).sum()) - base
                        done += 1
    progress.update(steps, steps, f"ablation {lt.language}")
    n = lt.tokens
    return diff / n, base_total / n


@dataclass
class HeadScores:
    """Scores of every head for every language.

    Attributes:
        languages: FLORES-200 codes, in order ``[K]``.
        ablation, taylor: ``[K, L, H]`` float64 (NaN where that kind was not computed).
        nll: ``[K]`` NLL of each language with all gates 1 (nats/token).
        tokens, sentences: ``[K]`` predicted tokens and sentences per language.
        seconds: wall time per kind (``{"taylor": s, "ablation": s}``).
        cpu_seconds: CPU time of this process per kind (robust to other processes on the machine).
    """

    languages: list[str]
    ablation: np.ndarray
    taylor: np.ndarray
    nll: np.ndarray
    tokens: np.ndarray
    sentences: np.ndarray
    seconds: dict
    cpu_seconds: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(L, H)``."""
        return tuple(self.taylor.shape[1:])  # type: ignore[return-value]

    def kinds(self) -> list[str]:
        """The kinds actually computed."""
        return [k for k in ("ablation", "taylor") if not np.isnan(getattr(self, k)).all()]

    def get(self, kind: str) -> np.ndarray:
        """``[K, L, H]`` scores of ``kind``.

        Raises:
            PolypruneError: that kind was not computed.
        """
        if kind not in self.kinds():
            raise PolypruneError(f"The {kind} scores were not computed", f"score again with {kind} among the kinds (--kinds)")
        return getattr(self, kind)

    def index(self, language: str) -> int:
        """Position of ``language`` in :attr:`languages`.

        Raises:
            PolypruneError: the language was not scored.
        """
        if language not in self.languages:
            raise PolypruneError(f"{language_name(language)} ({language}) was not scored",
                                 f"score it too (scored: {', '.join(self.languages)})")
        return self.languages.index(language)


def compute_scores(model: nn.Module, layout: HeadLayout, texts: list[LanguageTexts], kinds: list[str], batch_size: int,
                   pad: int, progress: Progress | None = None) -> HeadScores:
    """Ablation and/or taylor scores for every language of ``texts`` (see the module docstring).

    The model is left exactly as it was (hooks removed, no weight written, ``requires_grad`` and
    training flags restored). Progress is split by estimated cost (an ablation pass per head).
    """
    progress = ensure(progress)
    K, L, H = len(texts), layout.n_blocks, layout.n_heads
    abl = np.full((K, L, H), np.nan)
    tay = np.full((K, L, H), np.nan)
    nll = np.zeros(K)
    w_t = 3.0 if "taylor" in kinds else 0.0
    w_a = float(L * H) if "ablation" in kinds else 0.0
    span = w_t + w_a
    seconds, cpu = {}, {}
    pos = 0.0
    for kind, w in (("taylor", w_t), ("ablation", w_a)):
        if not w:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        for k, lt in enumerate(texts):
            sub = progress.sub((pos + w * k / K) / span, (pos + w * (k + 1) / K) / span)
            if kind == "taylor":
                tay[k], nll[k] = taylor_scores(model, layout, lt, batch_size, pad, sub)
            else:
                abl[k], nll[k] = ablation_scores(model, layout, lt, batch_size, pad, sub)
        seconds[kind] = time.perf_counter() - t0
        cpu[kind] = time.process_time() - c0
        pos += w
    return HeadScores([t.language for t in texts], abl, tay, nll, np.array([t.tokens for t in texts]),
                      np.array([len(t.ids) for t in texts]), seconds, cpu)
