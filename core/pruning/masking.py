"""Comparison groups: which weights a score removes (Wanda, Sun et al. 2024, §3; methods.md §2).

The lowest scores are removed within each *comparison group*: every output row (unstructured,
``group="row"``, as Wanda), the whole matrix (``group="layer"``, classic magnitude pruning), or
every block of ``M`` consecutive inputs of a row (N:M). Ties are broken by a stable sort (the lower
column index is removed first).
"""
from __future__ import annotations

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
        idx = torch.sort(score, dim=1, stable=True)[1][:, :k]
        mask.scatter_(1, idx, True)
    return mask
