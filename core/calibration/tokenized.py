"""The tokenized calibration set every method and measurement reads.

A :class:`CalibrationSet` holds N samples right-padded to a common length with an attention mask
that keeps padding out of every statistic (the public Wanda and Kim et al. code count pad tokens;
methods.md §1.2). Each sample is tokenized alone with the tokenizer's own special-token behaviour
(BOS for Gemma/Llama) and truncated *while* tokenizing (:func:`polyprune.datasets.tokenize_texts`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..datasets import tokenize_texts
from ..errors import PolypruneError
from ..recipe import validate_lengths


@dataclass
class CalibrationSet:
    """Tokenized calibration samples, right-padded to a common length.

    Attributes:
        texts: the N sample strings.
        input_ids: ``[N, L]`` int64, ``L = min(seq_len, longest sample)``.
        attention_mask: ``[N, L]`` int64, 1 on real tokens, 0 on padding (padding never enters a
            statistic).
        truncated: number of samples cut at ``seq_len`` tokens.
        meta: how the set was built (source, languages, shots, pair indices, ...), for reports.
    """

    texts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: int = 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens over all samples."""
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int):
        """Yield ``(input_ids [B, L_b], attention_mask [B, L_b])`` with L_b trimmed to the batch's longest."""
        for i in range(0, len(self), batch_size):
            m = self.attention_mask[i:i + batch_size]
            length = int(m.sum(1).max())
            yield self.input_ids[i:i + batch_size, :length], m[:, :length]


def tokenize(texts: list[str], tokenizer, seq_len: int, meta: dict | None = None) -> CalibrationSet:
    """Tokenize samples with the tokenizer's own special-token behaviour, truncating at ``seq_len``.

    Raises:
        PolypruneError: ``seq_len`` under 8, or a sample that tokenizes to nothing.
    """
    validate_lengths(len(texts) or 1, seq_len)
    full = tokenize_texts(tokenizer, texts, seq_len + 1)
    truncated = sum(len(x) > seq_len for x in full)
    ids = [x[:seq_len] for x in full]
    if any(len(x) == 0 for x in ids):
        raise PolypruneError("A calibration sample tokenized to no tokens", "remove empty samples")
    length = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    meta = dict(meta or {})
    meta.update(seq_len=seq_len, samples=len(texts), truncated=truncated, tokens=int(mask.sum()))
    return CalibrationSet(texts, input_ids, mask, truncated, meta)
