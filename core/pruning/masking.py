"""Comparison groups: which weights a score removes (Wanda, Sun et al. 2024, §3; methods.md §2).

The lowest scores are removed within each *comparison group*: every output row (unstructured,
``group="row"``, as Wanda), the whole matrix (``group="layer"``, classic magnitude pruning), or
every block of ``M`` consecutive inputs of a row (N:M). Ties are broken by a stable sort (the lower
column index is removed first).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import PolypruneError


def select_mask(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                group: str = "row") -> torch.Tensor:
    """Boolean mask ``[out, in]``, True where a weight is removed.

    * unstructured, ``group="row"``: the ``floor(in · sparsity)`` lowest scores of every row;
    * unstructured, ``group="layer"``: the ``floor(out · in · sparsity)`` lowest of the matrix;
    * N:M: the N lowest of every M consecutive inputs of a row (``in`` must be divisible by M).

    Ties are broken by a stable sort (lower column index removed first).

    Raises:
        PolypruneError: ``in`` not divisible by ``M``.
    """
    out_f, in_f = score.shape
    mask = torch.zeros_like(score, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        if in_f % m:
            raise PolypruneError(f"A layer with {in_f} inputs cannot be pruned {n}:{m}",
                                 f"N:M needs the input size to be a multiple of {m}; skip that layer or use unstructured")
        grouped = score.reshape(out_f, in_f // m, m)
        idx = torch.sort(grouped, dim=-1, stable=True)[1][..., :n]
        return mask.reshape(out_f, in_f // m, m).scatter_(-1, idx, True).reshape(out_f, in_f)
    if group == "layer":
        k = int(score.numel() * sparsity)
        if k:
            idx = torch.sort(score.flatten(), stable=True)[1][:k]
            mask.view(-1)[idx] = True
        return mask
    k = int(in_f * sparsity)
    if k:
        step = max(1, SELECT_CHUNK_BYTES // (in_f * SELECT_BYTES_PER_WEIGHT))
        for r0 in range(0, out_f, step):
            mask[r0:r0 + step] = lowest_per_row(score[r0:r0 + step], k)
    return mask


#: Working bytes per score of :func:`lowest_per_row` (top-k values and indices, two bool maps).
SELECT_BYTES_PER_WEIGHT = 16
#: Rows are selected in chunks of at most this many working bytes (bounds memory on large layers).
SELECT_CHUNK_BYTES = 64 * 2 ** 20


def lowest_per_row(score: torch.Tensor, k: int) -> torch.Tensor:
    """``[rows, in]`` bool, True at the ``k`` lowest scores of each row, ties broken towards the
    lower column index: exactly the first ``k`` entries of a stable ascending sort, found without
    sorting (a top-k gives the k-th smallest value ``t``; everything below ``t`` is in, and of the
    entries equal to ``t`` the leftmost ones fill the row's quota)."""
    if k >= score.shape[1]:
        return torch.ones_like(score, dtype=torch.bool)
    if score.is_floating_point() and bool(torch.isnan(score).any()):  # NaN sorts last: keep the sort's order
        idx = torch.sort(score, dim=1, stable=True)[1][:, :k]
        return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    if score.device.type == "cpu" and score.dtype in (torch.float32, torch.float64):
        # numpy's introselect finds the k-th smallest of each row several times faster than a top-k
        thr = torch.from_numpy(np.partition(score.contiguous().numpy(), k - 1, axis=1)[:, k - 1:k])
    else:
        thr = score.topk(k, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
    mask = score < thr
    eq = score == thr
    need = k - mask.sum(1, keepdim=True)
    tied = (eq.sum(1, keepdim=True) > need).reshape(-1)  # rows whose ties straddle the quota
    mask |= eq
    if bool(tied.any()):
        e = eq[tied]
        mask[tied] = (mask[tied] & ~e) | (e & (e.cumsum(1) <= need[tied]))
    return mask
