"""Wanda: pruning by weights and activations (Sun et al., ICLR 2024, §3; methods.md §2).

Per linear input column ``j`` the running statistic over all calibration tokens is
``||X_j||₂² = (1/N) Σ_n Σ_t x_{n,t,j}²`` (float32 whatever the model dtype, padding excluded), and
the score is ``S_ij = |W_ij| · ||X_j||₂``; the lowest scores of each comparison group are removed
(:func:`~polyprune.pruning.masking.select_mask`). Kim et al. (2024, §3) use translation
demonstrations as the calibration data: that is this method with a calibration set built from them.
All linears of a block are scored from the block's input before any of them is pruned.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import weight_matrix
from ..recipe import PruneConfig
from .masking import select_mask
from .records import ModuleRecord, apply_mask
from .sequential import Gathered

NEEDS_CALIBRATION = True
CONTRAST = False


class ColumnStats:
    """Running per-input-column statistics of a linear layer's inputs over real tokens.

    ``sumsq[j] = Σ_n Σ_t x_{n,t,j}²`` in float32 whatever the model dtype (Wanda's scaler times N).
    Padding positions are excluded through the token mask of the current batch.
    """

    def __init__(self, in_features: int, device):
        self.sumsq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Accumulate inputs ``x`` ``[..., in]`` with ``mask`` ``[...]`` (bool, True = real token)."""
        x = x.reshape(-1, x.shape[-1]).float()
        if mask is not None and mask.numel() == x.shape[0]:
            m = mask.reshape(-1).float()
            self.sumsq += (x * x).t() @ m
            self.tokens += int(m.sum())
        else:  # e.g. routed MoE experts: every row is a real token
            self.sumsq += (x * x).sum(0)
            self.tokens += x.shape[0]


def attach(modules: dict[str, nn.Module], current_mask: list) -> tuple[dict[str, ColumnStats], list]:
    """Register forward hooks that feed each module's input into a :class:`ColumnStats`.

    ``current_mask[0]`` must hold the token mask of the batch being run. Modules that receive the
    same input tensor (q/k/v projections) share one computation. Returns ``(stats, handles)``.
    """
    stats: dict[str, ColumnStats] = {}
    handles = []
    cache: dict = {}
    for name, m in modules.items():
        w = m.weight
        in_features = w.shape[1] if isinstance(m, nn.Linear) else w.shape[0]
        stats[name] = ColumnStats(in_features, w.device)

        def hook(mod, inp, out, name=name):
            x = inp[0]
            if cache.get("x") is x:  # same tensor object as the previous hook's input (q/k/v)
                s = cache["stat"]
            else:
                s = ColumnStats(x.shape[-1], x.device)
                s.add(x.detach(), current_mask[0])
                cache["x"], cache["stat"] = x, s  # holding x keeps its identity unique
            stats[name].sumsq += s.sumsq
            stats[name].tokens += s.tokens

        handles.append(m.register_forward_hook(hook))
    return stats, handles


def wanda_score(weight: torch.Tensor, col_norm: torch.Tensor | None) -> torch.Tensor:
    """``|W| · ||X_j||`` as float32 ``[out, in]``; plain ``|W|`` when ``col_norm`` is ``None``.

    Args:
        weight: ``[out, in]``.
        col_norm: ``[in]``, the input-column L2 norms ``sqrt((1/N) Σ x²)`` (Wanda §3).
    """
    s = weight.detach().abs().float()
    return s if col_norm is None else s * col_norm.to(s.device, torch.float32)[None, :]


def column_norms(gathered: Gathered, name: str) -> torch.Tensor:
    """``||X_j||₂ = sqrt((1/N) Σ x²)`` ``[in]`` of module ``name`` from gathered statistics."""
    return (gathered.stats[name].sumsq / gathered.n_samples).sqrt()


def prune_block(modules: dict[str, nn.Module], gathered: list[Gathered], sparsity: float, cfg: PruneConfig,
                records: dict[str, ModuleRecord]) -> None:
    """Zero the lowest ``|W| · ||X||`` of every comparison group of each module of a block."""
    (g,) = gathered
    for name, m in modules.items():
        score = wanda_score(weight_matrix(m), column_norms(g, name))
        records[name] = apply_mask(m, select_mask(score, sparsity, cfg.nm(), cfg.group))
