"""Magnitude and Wanda pruning, unstructured and N:M, sequential block by block.

Wanda (Sun et al., ICLR 2024, §3; methods.md §2) scores ``S_ij = |W_ij| · ||X_j||₂`` with
``||X_j||₂² = (1/N) Σ_n Σ_t x_{n,t,j}²`` over the calibration tokens, and removes the lowest
scores within each *comparison group*: every output row (unstructured) or every block of ``M``
consecutive inputs of a row (N:M). Kim et al. (2024, §3) use translation demonstrations as the
calibration data; that is Wanda with a :class:`~polyprune.demos.CalibrationSet` built from them.

All prunable layers of a block are scored from the block's input *before* any of them is pruned;
the pruned block then produces the next block's input. Statistics are accumulated in float32
whatever the model dtype. Cancelling (through :class:`~polyprune.progress.Progress`) restores
every weight bit for bit before :class:`~polyprune.errors.Cancelled` propagates.
"""
from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .blockwise import attach_stats, capture
from .demos import CalibrationSet
from .errors import Cancelled, PolypruneError
from .models import find_blocks, prunable_linears, weight_matrix
from .progress import Progress, ensure

METHODS = ("magnitude", "wanda")
PATTERNS = ("unstructured", "2:4", "4:8")


@dataclass
class PruneConfig:
    """Pruning settings.

    Attributes:
        method: ``magnitude`` (|W|) or ``wanda`` (|W|·||X||, needs calibration data).
        sparsity: share of weights removed in every pruned layer, in [0, 1).
        pattern: ``unstructured`` or ``N:M`` (``2:4``, ``4:8``); N:M requires ``sparsity == N/M``.
        group: comparison group for unstructured pruning: ``row`` (each output row, as Wanda) or
            ``layer`` (the whole matrix, as classic magnitude pruning).
        skip: glob patterns of module names never pruned (e.g. ``*.self_attn.*``), matched against
            fully qualified names such as ``model.layers.3.mlp.down_proj``.
        skip_blocks: block indices left dense.
        batch_size: calibration samples per forward pass.
    """

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    group: str = "row"
    skip: list[str] = field(default_factory=list)
    skip_blocks: list[int] = field(default_factory=list)
    batch_size: int = 8

    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, else ``None``."""
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    def validate(self) -> None:
        """Raise :class:`PolypruneError` for an unknown method/pattern or an invalid sparsity."""
        if self.method not in METHODS:
            raise PolypruneError(f"Unknown pruning method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if not (0.0 <= self.sparsity < 1.0) or math.isnan(self.sparsity):
            raise PolypruneError(f"Sparsity ratio {self.sparsity} is outside [0, 1)",
                                 "give the share of weights to remove, e.g. 0.5 for 50%")
        if self.pattern not in PATTERNS:
            try:
                n, m = (int(v) for v in self.pattern.split(":"))
                ok = 0 < n < m
            except ValueError:
                ok = False
            if not ok:
                raise PolypruneError(f"Unknown sparsity pattern {self.pattern!r}",
                                     "use unstructured or N:M such as 2:4 or 4:8")
        nm = self.nm()
        if nm and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise PolypruneError(f"Pattern {self.pattern} removes exactly {nm[0]}/{nm[1]} = {nm[0] / nm[1]:g} of the weights, "
                                 f"but sparsity {self.sparsity:g} was requested",
                                 f"set the sparsity to {nm[0] / nm[1]:g} or use the unstructured pattern")
        if self.group not in ("row", "layer"):
            raise PolypruneError(f"Unknown comparison group {self.group!r}", "use row or layer")
        if self.batch_size < 1:
            raise PolypruneError("batch_size must be at least 1", "set a positive batch size")


# --------------------------------------------------------------------------------------------
# scores and masks (pure functions on [out, in] matrices)
# --------------------------------------------------------------------------------------------
def wanda_score(weight: torch.Tensor, col_norm: torch.Tensor | None) -> torch.Tensor:
    """``|W| · ||X_j||`` as float32 ``[out, in]``; plain ``|W|`` when ``col_norm`` is ``None``.

    Args:
        weight: ``[out, in]``.
        col_norm: ``[in]``, the input-column L2 norms ``sqrt((1/N) Σ x²)`` (Wanda §3).
    """
    s = weight.detach().abs().float()
    return s if col_norm is None else s * col_norm.to(s.device, torch.float32)[None, :]


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


# --------------------------------------------------------------------------------------------
# applying and undoing
# --------------------------------------------------------------------------------------------
@dataclass
class ModuleRecord:
    """A pruned module: its mask (``[out, in]`` bool, True = removed) and the removed values."""

    mask: torch.Tensor
    removed: torch.Tensor  # values of the weight at mask positions, in the weight's dtype

    @property
    def sparsity(self) -> float:
        return float(self.mask.float().mean())


def apply_mask(module: nn.Module, mask: torch.Tensor) -> ModuleRecord:
    """Zero the masked weights of ``module`` in place and return what is needed to undo it."""
    w = weight_matrix(module)
    m = mask.to(w.device)
    removed = w[m].clone()
    w[m] = 0
    return ModuleRecord(m.cpu(), removed.cpu())


def restore(model: nn.Module, records: dict[str, ModuleRecord]) -> None:
    """Put back every removed weight (bit-identical), e.g. after cancel or for *revert to dense*."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, rec in records.items():
            w = weight_matrix(modules[name])
            w[rec.mask.to(w.device)] = rec.removed.to(w.device, w.dtype)


def measured_sparsity(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Share of exactly-zero weights of every prunable layer (or of ``names``)."""
    from .models import all_prunable
    mods = all_prunable(model)
    if names is not None:
        mods = {k: mods[k] for k in names}
    return {k: float((m.weight == 0).float().mean()) for k, m in mods.items()}


@dataclass
class PruneResult:
    """Outcome of :func:`prune`.

    Attributes:
        records: ``{module name: ModuleRecord}`` for every pruned layer (masks kept per module).
        sparsity: measured share of zeros per pruned layer.
        block_sparsity: mean sparsity per block index (weighted by parameters).
        overall: sparsity over all pruned parameters.
        seconds: wall time of the pruning (capture + blocks).
        config: the :class:`PruneConfig` used, as a dict.
        calibration: the calibration set's metadata (``None`` for magnitude).
    """

    records: dict[str, ModuleRecord]
    sparsity: dict[str, float]
    block_sparsity: list[float]
    overall: float
    seconds: float
    config: dict
    calibration: dict | None = None

    def masks(self) -> dict[str, torch.Tensor]:
        return {k: r.mask for k, r in self.records.items()}

    def summary(self) -> dict:
        return {"overall_sparsity": self.overall, "block_sparsity": self.block_sparsity,
                "module_sparsity": self.sparsity, "seconds": self.seconds, "config": self.config,
                "calibration": self.calibration}


def _selected(prefix: str, i: int, linears: dict[str, nn.Module], cfg: PruneConfig) -> dict[str, nn.Module]:
    if i in cfg.skip_blocks:
        return {}
    out = {}
    for name, m in linears.items():
        full = f"{prefix}.{i}.{name}"
        if not any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(name, p) for p in cfg.skip):
            out[full] = m
    return out


def prune(model: nn.Module, cfg: PruneConfig, calibration: CalibrationSet | None = None,
          progress: Progress | None = None) -> PruneResult:
    """Prune ``model`` in place.

    Args:
        model: a causal LM (any layout :func:`~polyprune.models.find_blocks` understands).
        cfg: the settings; validated first.
        calibration: required for ``wanda``; the calibration set (demonstrations or text).
        progress: per-block progress and cooperative cancel.

    Returns:
        :class:`PruneResult` with masks per module and measured sparsities.

    Raises:
        PolypruneError: invalid settings, or ``wanda`` without calibration data.
        Cancelled: the user cancelled; the model is then exactly as it was before the call.
    """
    cfg.validate()
    progress = ensure(progress)
    if cfg.method == "wanda" and calibration is None:
        raise PolypruneError("Wanda needs calibration data", "give demonstrations or --calibration-text, or use --method magnitude")
    t0 = time.perf_counter()
    prefix, blocks = find_blocks(model)
    records: dict[str, ModuleRecord] = {}
    nm = cfg.nm()
    try:
        with torch.inference_mode():
            if cfg.method == "magnitude" or cfg.sparsity == 0:
                for i, block in enumerate(blocks):
                    progress.update(i, len(blocks), f"Pruning block {i + 1}/{len(blocks)}")
                    for name, m in _selected(prefix, i, prunable_linears(block), cfg).items():
                        records[name] = apply_mask(m, select_mask(wanda_score(weight_matrix(m), None), cfg.sparsity, nm, cfg.group))
            else:
                progress.update(0, len(blocks) + 1, "Capturing block inputs")
                batches = list(calibration.batches(cfg.batch_size))
                inputs = capture(model, batches)
                current_mask: list = [None]
                for i, block in enumerate(blocks):
                    progress.update(i, len(blocks), f"Pruning block {i + 1}/{len(blocks)}")
                    selected = _selected(prefix, i, prunable_linears(block), cfg)
                    if selected:
                        stats, handles = attach_stats(selected, current_mask)
                        try:
                            for b, h in enumerate(inputs.hidden):
                                progress.check()
                                current_mask[0] = inputs.token_masks[b]
                                inputs.calls[i][b].call(block, h)
                        finally:
                            for hd in handles:
                                hd.remove()
                            current_mask[0] = None
                        for name, m in selected.items():
                            col = (stats[name].sumsq / inputs.n_samples).sqrt()
                            records[name] = apply_mask(m, select_mask(wanda_score(weight_matrix(m), col), cfg.sparsity, nm, cfg.group))
                    for b, h in enumerate(inputs.hidden):
                        progress.check()
                        inputs.hidden[b] = inputs.calls[i][b].call(block, h)
                del inputs
            progress.update(len(blocks), len(blocks), "Pruning done")
    except BaseException:  # Cancelled, KeyboardInterrupt or a failure: leave the model as it was
        restore(model, records)
        raise
    return _result(model, prefix, blocks, records, cfg, calibration, time.perf_counter() - t0)


def _result(model, prefix, blocks, records, cfg, calibration, seconds) -> PruneResult:
    sp = {k: r.sparsity for k, r in records.items()}
    block_sp = []
    for i in range(len(blocks)):
        keys = [k for k in records if k.startswith(f"{prefix}.{i}.")]
        total = sum(records[k].mask.numel() for k in keys)
        block_sp.append(sum(int(records[k].mask.sum()) for k in keys) / total if total else 0.0)
    total = sum(r.mask.numel() for r in records.values())
    overall = sum(int(r.mask.sum()) for r in records.values()) / total if total else 0.0
    calib = None
    if calibration is not None and cfg.method != "magnitude":
        calib = {k: v for k, v in calibration.meta.items()}
    return PruneResult(records, sp, block_sp, overall, seconds, asdict(cfg), calib)
