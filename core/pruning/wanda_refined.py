"""Kim et al.'s refined metric (2024, "mt_code"; methods.md §1.2).

Two calibration sets, named explicitly (never by set order): the *base* (e.g. translation
demonstrations) and the *contrast* (e.g. code, or another language). Per input column
``a_j = (1/N_a) Σ ||X^base_j||²`` and ``b_j = (1/N_b) Σ ||X^contrast_j||²``, and the score is
``S_ij = |W_ij| · a_j / sqrt(max(b_j, REFINED_EPS))``, boosting inputs that are large for the base
set but small for the contrast set. ``REFINED_EPS`` = 1e-12 only guards inputs that are exactly
zero on the contrast set (they then score very high and are kept). Both sets are read by each
block in the same sequential pass and both are propagated through the pruned blocks (as Kim et
al.'s code does), so ``a`` and ``b`` of block ``i`` describe the inputs the pruned prefix produces.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import weight_matrix
from ..recipe import PruneConfig
from .masking import select_mask
from .records import ModuleRecord, apply_mask
from .sequential import Gathered
from .wanda import attach  # noqa: F401 - the same column statistics as Wanda

NEEDS_CALIBRATION = True
CONTRAST = True
REFINED_EPS = 1e-12


def refined_score(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kim et al.'s refined metric ``|W| · a / sqrt(max(b, REFINED_EPS))`` as float32 ``[out, in]``.

    Args:
        weight: ``[out, in]``.
        a: ``[in]`` mean squared input norm over the base set, ``(1/N_a) Σ_n Σ_t x²``.
        b: ``[in]`` the same over the contrast set.
    """
    s = weight.detach().abs().float()
    a = a.to(s.device, torch.float32)
    b = b.to(s.device, torch.float32).clamp_min(REFINED_EPS)
    return s * (a / b.sqrt())[None, :]


def prune_block(modules: dict[str, nn.Module], gathered: list[Gathered], sparsity: float, cfg: PruneConfig,
                records: dict[str, ModuleRecord]) -> None:
    """Zero the lowest refined scores; ``gathered`` = ``[base, contrast]`` statistics."""
    base, contrast = gathered
    for name, m in modules.items():
        score = refined_score(weight_matrix(m), base.stats[name].sumsq / base.n_samples,
                              contrast.stats[name].sumsq / contrast.n_samples)
        records[name] = apply_mask(m, select_mask(score, sparsity, cfg.nm(), cfg.group))
