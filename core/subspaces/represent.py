"""Sentence representations: the hidden state at a sentence's last token after every block.

Zhao et al. 2024 (Lens, §3.1) represent a text by the hidden state at its last position in every
block output (``hidden_states[1:]`` of transformers). Here each sentence is tokenized alone with
the tokenizer's defaults and truncated to ``seq_len`` tokens (:func:`polyprune.datasets.tokenize_texts`);
sentences are then run in batches padded on the *right*, and each row is read at its last *real*
token. Right padding leaves every real token's position and attention unchanged (positions count
from the first token, the padding lies after it and is masked), so a batch gives the states a
sentence would get alone — also for rotary (Llama, Gemma), ALiBi (BLOOM) and learned or sinusoidal
positions (GPT-2, XGLM). Sentences are grouped by length to keep padding small.

Note: transformers returns, as its last entry, the last block's output *after* the final norm
(for all five test families in transformers 5); entries ``1..n_blocks-1`` are raw block outputs.
Lens's losses use the same last entry, so they live in the same space as the subspaces.
"""
from __future__ import annotations

import torch

from polyprune.errors import PolypruneError
from polyprune.models import base_model, find_blocks, pad_id
from polyprune.progress import Progress, ensure


def right_padded(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [B, T], attention_mask [B, T], last [B])``: rows padded on the right with ``pad``;
    ``last[b]`` is the index of row b's last real token."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        att[b, :len(s)] = 1
    last = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)
    return ids.to(device), att.to(device), last.to(device)


@torch.inference_mode()
def last_token_states(model, token_ids: list[list[int]], *, batch_size: int = 8, pad: int | None = None,
                      progress: Progress | None = None) -> torch.Tensor:
    """Hidden states at every sentence's last real token, after every block.

    Args:
        model: a causal LM (its ``base_model`` runs with ``output_hidden_states=True``).
        token_ids: ``N`` token-id lists (each sentence tokenized alone; none empty).
        batch_size: sentences per forward pass (right-padded).
        pad: padding id (default :func:`pad_id`).

    Returns:
        ``[n_blocks, N, d]`` float32 on the CPU: entry ``l`` is ``hidden_states[l + 1]`` of
        transformers at the sentence's last token.

    Raises:
        PolypruneError: an empty sentence, or a model whose hidden states do not match its blocks.
        Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    if any(len(s) == 0 for s in token_ids):
        raise PolypruneError("A sentence has no tokens", "remove empty lines from the texts")
    device = next(model.parameters()).device
    n_blocks = len(find_blocks(model)[1])
    base = base_model(model)
    pad = pad_id(model) if pad is None else pad
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    out: torch.Tensor | None = None
    total = -(-len(order) // batch_size)
    for b in range(total):
        progress.update(b, total, f"Sentence representations, batch {b + 1}/{total}")
        idx = order[b * batch_size:(b + 1) * batch_size]
        ids, att, last = right_padded([token_ids[i] for i in idx], pad, device)
        hs = base(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False).hidden_states
        if len(hs) != n_blocks + 1:
            raise PolypruneError(f"The model returned {len(hs)} hidden states for {n_blocks} blocks",
                                 "use a model whose output_hidden_states gives the embeddings and every block output")
        rows = torch.arange(len(idx), device=device)
        states = torch.stack([h[rows, last] for h in hs[1:]]).float().cpu()  # [n_blocks, B, d]
        if out is None:
            out = torch.empty(n_blocks, len(token_ids), states.shape[-1], dtype=torch.float32)
        out[:, torch.tensor(idx)] = states
    progress.update(total, total, "Sentence representations done")
    return out
