"""Magnitude pruning: remove the weights of smallest ``|W|`` in each comparison group.

No calibration data; the baseline of Wanda's table (methods.md §2: LLaMA-2-7B at 50%, WikiText-2
perplexity 14.89 against 6.42 for Wanda).
"""
from __future__ import annotations

from torch import nn

from ..models import weight_matrix
from ..recipe import PruneConfig
from .masking import select_mask
from .records import ModuleRecord, apply_mask

NEEDS_CALIBRATION = False
CONTRAST = False
attach = None


def prune_block(modules: dict[str, nn.Module], gathered, sparsity: float, cfg: PruneConfig,
                records: dict[str, ModuleRecord]) -> None:
    """Zero the ``floor(in · s)`` smallest ``|W|`` of every row (or layer / N:M group) of each module."""
    for name, m in modules.items():
        records[name] = apply_mask(m, select_mask(weight_matrix(m).detach().abs().float(), sparsity, cfg.nm(), cfg.group))
