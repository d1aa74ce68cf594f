"""OWL: outlier-weighted layer-wise sparsity (Yin et al., ICML 2024, arXiv 2310.05175; methods.md §4).

For every decoder block ``l`` the *layer outlier ratio* is

    ``D_l = |{ A_ij : A_ij > M · mean(A) }| / |A|``

over the Wanda scores ``A = |W| · ||X_j||₂`` of all pruned linears of the block together
(``M`` = ``owl_m`` = 5). As in the OWL code, the scores come from one *dense* pass: every block
reads the output of the unpruned previous block (the pruning pass that follows is sequential as
usual). Blocks with more outliers are pruned less:

    ``x_l = 2λ · (D_l - min D) / (max D - min D)``        (``λ`` = ``owl_lambda`` = 0.08)
    ``density_l = 1 - S + x_l - mean(x)``,   ``s_l = 1 - density_l``

so the densities span an interval of width ``2λ`` centred (in the mean) on ``1 - S``, and the
**plain mean of the block sparsities over the pruned blocks is exactly S** (up to float64
rounding), as in the OWL code; with blocks of equal size (every transformer LM we prune) this is
also the parameter-weighted mean. :class:`~polyprune.pruning.records.PruneResult` reports the per-block
targets and the measured, parameter-weighted overall sparsity. When every ``D_l`` is equal the
allocation is uniform (the OWL code divides by zero there). Inside a layer the comparison group
stays the row (``floor(in · s_l)`` weights per row), so the measured block sparsity is the
floor-rounded target.

N:M patterns have one fixed sparsity (N/M) and cannot take non-uniform layer sparsities:
:meth:`~polyprune.recipe.PruneConfig.validate` rejects that combination.
"""
from __future__ import annotations

import torch
from torch import nn

from ..calibration import CalibrationSet
from ..errors import PolypruneError
from ..models import weight_matrix
from ..progress import Progress, ensure
from . import wanda
from .sequential import BlockSource, Gathered, run, run_block


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """``D = share of entries > m · mean`` over all entries of ``scores`` (tensors of any shape)."""
    total = sum(s.numel() for s in scores)
    if not total:
        return 0.0
    mean = sum(float(s.double().sum()) for s in scores) / total
    return sum(int((s.double() > m * mean).sum()) for s in scores) / total


def allocate(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """Block sparsities from outlier ratios (see the module docstring); plain mean equals ``sparsity``.

    Args:
        ratios: ``D_l`` per pruned block.
        sparsity: the target mean sparsity ``S``.
        lam: ``λ``, half the width of the density range.

    Raises:
        PolypruneError: a resulting block sparsity outside ``[0, 1)`` (λ too large for ``S``).
    """
    if not ratios:
        return []
    d = torch.tensor(ratios, dtype=torch.float64)
    span = float(d.max() - d.min())
    x = (d - d.min()) * (2 * lam / span) if span > 0 else torch.zeros_like(d)
    density = x - x.mean() + (1 - sparsity)
    out = [1.0 - float(v) for v in density]
    bad = [(i, s) for i, s in enumerate(out) if not (0.0 <= s < 1.0)]
    if bad:
        i, s = bad[0]
        raise PolypruneError(f"OWL gives block {i} a sparsity of {s:.3f} at mean sparsity {sparsity:g} and "
                             f"lambda {lam:g}, outside [0, 1)",
                             f"use a smaller owl_lambda (at most {min(sparsity, 1 - sparsity) / 2:.3g} is always safe) "
                             "or a sparsity further from 0 and 1")
    return out


@torch.inference_mode()
def outlier_ratios(model: nn.Module, calibration: CalibrationSet, selected: list[dict[str, nn.Module]],
                   m: float = 5.0, batch_size: int = 8, progress: Progress | None = None,
                   source: BlockSource | None = None) -> list[float | None]:
    """``D_l`` for every block from one dense pass over ``calibration``.

    Args:
        model: the (dense) causal LM; not modified.
        calibration: the calibration set (Wanda statistics ``||X_j||² = (1/N) Σ x²`` per input).
        selected: per block, ``{full module name: module}`` of the linears that will be pruned
            (an empty dict: block not pruned, ratio ``None``).
        m: outlier threshold multiple ``M``.
        batch_size: samples per forward pass.
        source: block streaming (see :func:`polyprune.pruning.prune`).

    Returns:
        ``[D_0, ..., D_{L-1}]`` (``None`` for blocks without pruned linears).
    """
    progress = ensure(progress)
    out: list[float | None] = []

    def per_block(i, block, inputs) -> bool:
        (inp,) = inputs
        sel = selected[i]
        stats = run_block(block, i, inp, progress, wanda.attach, sel, update=True)  # dense: output = next input
        if sel:
            g = Gathered(stats, inp.n_samples)
            out.append(outlier_ratio([wanda.wanda_score(weight_matrix(mod), wanda.column_norms(g, name))
                                      for name, mod in sel.items()], m))
        else:
            out.append(None)
        return True

    run(model, [list(calibration.batches(batch_size))], per_block, progress, "OWL outlier ratios,", source=source)
    return out
