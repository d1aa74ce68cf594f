"""Magnitude, Wanda, Kim et al.'s refined metric and SparseGPT, unstructured and N:M, block by block.

Wanda (Sun et al., ICLR 2024, §3; methods.md §2) scores ``S_ij = |W_ij| · ||X_j||₂`` with
``||X_j||₂² = (1/N) Σ_n Σ_t x_{n,t,j}²`` over the calibration tokens, and removes the lowest
scores within each *comparison group*: every output row (unstructured) or every block of ``M``
consecutive inputs of a row (N:M). Kim et al. (2024, §3) use translation demonstrations as the
calibration data; that is Wanda with a :class:`~polyprune.demos.CalibrationSet` built from them.

Further methods (``PruneConfig.method``):

* ``wanda_refined`` — Kim et al.'s refined metric (methods.md §1.2): two calibration sets, the
  *base* (the ``calibration`` argument, e.g. translation demonstrations) and the *contrast* (the
  ``contrast`` argument, e.g. code or another language), named explicitly, never by set order.
  ``a_j = (1/N_a) Σ ||X^base_j||²``, ``b_j = (1/N_b) Σ ||X^contrast_j||²`` and
  ``S_ij = |W_ij| · a_j / sqrt(max(b_j, REFINED_EPS))``; ``REFINED_EPS`` = 1e-12 only guards
  inputs that are exactly zero on the contrast set (they then score very high and are kept).
  Both sets are read by each block in the same sequential pass and **both are propagated through
  the pruned blocks** (as Kim et al.'s code does), so ``a`` and ``b`` of block ``i`` describe the
  inputs the pruned prefix really produces for each kind of data.
* ``sparsegpt`` — :mod:`polyprune.sparsegpt` (Frantar & Alistarh 2023): the same sequential
  engine, with one Hessian ``2XXᵀ/T`` per distinct input of the block (only the current block's
  Hessians are in memory) and OBS updates of the remaining weights. Because it changes unmasked
  weights too, its :class:`ModuleRecord` keeps a full copy of the original weight so that cancel
  and :func:`restore` are still bit-identical.

Layer-wise sparsity (``PruneConfig.layerwise``): ``uniform`` or ``owl`` (:mod:`polyprune.owl`,
Yin et al. 2024), over any method; OWL needs calibration data and an unstructured pattern.

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

METHODS = ("magnitude", "wanda", "sparsegpt", "wanda_refined")
PATTERNS = ("unstructured", "2:4", "4:8")
LAYERWISE = ("uniform", "owl")
REFINED_EPS = 1e-12


@dataclass
class PruneConfig:
    """Pruning settings.

    Attributes:
        method: ``magnitude`` (|W|), ``wanda`` (|W|·||X||), ``sparsegpt`` (OBS updates) or
            ``wanda_refined`` (|W|·a/sqrt(b), needs a contrast set too); all but magnitude need
            calibration data.
        sparsity: share of weights removed in every pruned layer, in [0, 1) (with OWL: the mean
            over the pruned blocks).
        pattern: ``unstructured`` or ``N:M`` (``2:4``, ``4:8``); N:M requires ``sparsity == N/M``.
        group: comparison group for unstructured pruning: ``row`` (each output row, as Wanda) or
            ``layer`` (the whole matrix, as classic magnitude pruning).
        skip: glob patterns of module names never pruned (e.g. ``*.self_attn.*``), matched against
            fully qualified names such as ``model.layers.3.mlp.down_proj``.
        skip_blocks: block indices left dense.
        batch_size: calibration samples per forward pass.
        damping: SparseGPT damping as a share of the mean Hessian diagonal (reference: 0.01).
        blocksize: SparseGPT columns per lazy-update block (reference: 128).
        layerwise: ``uniform`` (every block at ``sparsity``) or ``owl`` (outlier-weighted).
        owl_m: OWL outlier threshold M (a score is an outlier above M x the block's mean score).
        owl_lambda: OWL λ: block densities span ``2λ`` around ``1 - sparsity``.
    """

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    group: str = "row"
    skip: list[str] = field(default_factory=list)
    skip_blocks: list[int] = field(default_factory=list)
    batch_size: int = 8
    damping: float = 0.01
    blocksize: int = 128
    layerwise: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.layerwise == "owl"

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
        if not (self.damping >= 0) or math.isinf(self.damping):
            raise PolypruneError(f"SparseGPT damping {self.damping} must be a non-negative number",
                                 "use a small share of the mean Hessian diagonal, e.g. 0.01")
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise PolypruneError(f"SparseGPT block size {self.blocksize} must be a positive integer", "use e.g. 128")
        if nm and self.method == "sparsegpt" and self.blocksize % nm[1]:
            raise PolypruneError(f"SparseGPT block size {self.blocksize} is not a multiple of M = {nm[1]}",
                                 f"set blocksize to a multiple of {nm[1]}, e.g. 128")
        if self.layerwise not in LAYERWISE:
            raise PolypruneError(f"Unknown layer-wise sparsity {self.layerwise!r}", "use uniform or owl")
        if self.layerwise == "owl":
            if nm:
                raise PolypruneError(f"OWL gives every block its own sparsity, but the {self.pattern} pattern "
                                     f"fixes the sparsity of every block at {nm[0]}/{nm[1]}",
                                     "use the unstructured pattern with OWL, or layerwise: uniform with N:M")
            if not (self.owl_m > 0) or math.isinf(self.owl_m):
                raise PolypruneError(f"OWL threshold M = {self.owl_m} must be positive", "use e.g. 5")
            if not (self.owl_lambda >= 0) or self.owl_lambda >= 0.5:
                raise PolypruneError(f"OWL lambda {self.owl_lambda} must be in [0, 0.5)", "use e.g. 0.08")
            if self.sparsity == 0:
                raise PolypruneError("OWL redistributes a mean sparsity, but the sparsity is 0",
                                     "set a sparsity above 0 or use layerwise: uniform")


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
    """A pruned module: its mask (``[out, in]`` bool, True = removed) and the removed values.

    ``original`` is a full copy of the ``[out, in]`` weight before pruning, kept (on the CPU) only by
    methods that also change unmasked weights (SparseGPT); :func:`restore` then copies it back.
    """

    mask: torch.Tensor
    removed: torch.Tensor  # values of the weight at mask positions, in the weight's dtype
    original: torch.Tensor | None = None

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


def write_weight(module: nn.Module, new: torch.Tensor, mask: torch.Tensor) -> ModuleRecord:
    """Replace the ``[out, in]`` weight of ``module`` by ``new`` (zeros at ``mask``), keeping a full copy.

    The record is complete before the weight is touched, so a failure midway can still be undone.
    """
    w = weight_matrix(module)
    m = mask.to(w.device)
    rec = ModuleRecord(m.cpu(), w[m].cpu(), w.detach().clone().cpu())
    w.copy_(new.to(w.device, w.dtype))
    return rec


def restore(model: nn.Module, records: dict[str, ModuleRecord]) -> None:
    """Put back every removed weight (bit-identical), e.g. after cancel or for *revert to dense*."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, rec in records.items():
            w = weight_matrix(modules[name])
            if rec.original is not None:
                w.copy_(rec.original.to(w.device, w.dtype))
            else:
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
        target_sparsity: per block, the sparsity asked of it (``None`` for blocks not pruned); the
            OWL allocation when ``layerwise == "owl"``.
        outlier_ratios: OWL's ``D_l`` per block (``None`` unless OWL).
        contrast: the contrast set's metadata (``wanda_refined`` only).
    """

    records: dict[str, ModuleRecord]
    sparsity: dict[str, float]
    block_sparsity: list[float]
    overall: float
    seconds: float
    config: dict
    calibration: dict | None = None
    target_sparsity: list[float | None] | None = None
    outlier_ratios: list[float | None] | None = None
    contrast: dict | None = None

    def masks(self) -> dict[str, torch.Tensor]:
        return {k: r.mask for k, r in self.records.items()}

    def summary(self) -> dict:
        return {"overall_sparsity": self.overall, "block_sparsity": self.block_sparsity,
                "module_sparsity": self.sparsity, "seconds": self.seconds, "config": self.config,
                "calibration": self.calibration, "target_sparsity": self.target_sparsity,
                "outlier_ratios": self.outlier_ratios, "contrast": self.contrast}


def _selected(prefix: str, i: int, linears: dict[str, nn.Module], cfg: PruneConfig) -> dict[str, nn.Module]:
    if i in cfg.skip_blocks:
        return {}
    out = {}
    for name, m in linears.items():
        full = f"{prefix}.{i}.{name}"
        if not any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(name, p) for p in cfg.skip):
            out[full] = m
    return out


def selected_modules(model: nn.Module, cfg: PruneConfig) -> list[dict[str, nn.Module]]:
    """Per block, ``{full module name: module}`` of the linears ``cfg`` prunes (skips applied)."""
    prefix, blocks = find_blocks(model)
    return [_selected(prefix, i, prunable_linears(b), cfg) for i, b in enumerate(blocks)]


def prune(model: nn.Module, cfg: PruneConfig, calibration: CalibrationSet | None = None,
          progress: Progress | None = None, contrast: CalibrationSet | None = None,
          outlier_ratios: list[float | None] | None = None) -> PruneResult:
    """Prune ``model`` in place.

    Args:
        model: a causal LM (any layout :func:`~polyprune.models.find_blocks` understands).
        cfg: the settings; validated first.
        calibration: required for every method but ``magnitude`` (and for OWL); the calibration
            set (demonstrations or text). For ``wanda_refined`` this is the *base* set.
        progress: per-block progress and cooperative cancel.
        contrast: the contrast set of ``wanda_refined`` (e.g. code, or text in another language).
        outlier_ratios: precomputed OWL ratios ``D_l`` per block (from
            :func:`polyprune.owl.outlier_ratios` on the same model and calibration set), e.g. shared
            by the cells of a study; computed here when ``None``.

    Returns:
        :class:`PruneResult` with masks per module and measured sparsities.

    Raises:
        PolypruneError: invalid settings, a method without the calibration data it needs.
        Cancelled: the user cancelled; the model is then exactly as it was before the call.
    """
    cfg.validate()
    progress = ensure(progress)
    if cfg.needs_calibration and calibration is None:
        what = "OWL layer-wise sparsity" if cfg.method == "magnitude" else cfg.method.replace("_", " ").title()
        raise PolypruneError(f"{what} needs calibration data",
                             "give demonstrations or --calibration-text, or use --method magnitude")
    if calibration is not None and cfg.needs_calibration and len(calibration) == 0:
        raise PolypruneError("The calibration set is empty", "give at least one calibration sample")
    if cfg.method == "wanda_refined" and (contrast is None or len(contrast) == 0):
        raise PolypruneError("The refined metric (wanda_refined) needs a contrast calibration set besides the base set",
                             "give a contrast set (e.g. code or text in another language), or use --method wanda")
    t0 = time.perf_counter()
    prefix, blocks = find_blocks(model)
    selected = selected_modules(model, cfg)
    records: dict[str, ModuleRecord] = {}
    nm = cfg.nm()
    targets: list[float | None] = [cfg.sparsity if sel else None for sel in selected]
    try:
        with torch.inference_mode():
            if cfg.layerwise == "owl":
                from .owl import allocate, outlier_ratios as owl_ratios
                if outlier_ratios is None:
                    outlier_ratios = owl_ratios(model, calibration, selected, cfg.owl_m, cfg.batch_size,
                                                progress.sub(0.0, 0.3))
                    progress = progress.sub(0.3, 1.0)
                if len(outlier_ratios) != len(blocks):
                    raise PolypruneError(f"{len(outlier_ratios)} OWL ratios given for {len(blocks)} blocks",
                                         "compute the ratios on the same model")
                pruned = [i for i, sel in enumerate(selected) if sel]
                alloc = allocate([float(outlier_ratios[i]) for i in pruned], cfg.sparsity, cfg.owl_lambda)
                for i, sp in zip(pruned, alloc):
                    targets[i] = sp
            if cfg.method == "magnitude" or (cfg.sparsity == 0 and cfg.layerwise == "uniform"):
                for i in range(len(blocks)):
                    progress.update(i, len(blocks), f"Pruning block {i + 1}/{len(blocks)}")
                    for name, m in selected[i].items():
                        records[name] = apply_mask(m, select_mask(wanda_score(weight_matrix(m), None), targets[i], nm, cfg.group))
            else:
                _sequential(model, blocks, selected, targets, cfg, calibration, contrast, records, progress)
            progress.update(len(blocks), len(blocks), "Pruning done")
    except BaseException:  # Cancelled, KeyboardInterrupt or a failure: leave the model as it was
        restore(model, records)
        raise
    res = _result(model, prefix, blocks, records, cfg, calibration, time.perf_counter() - t0)
    res.target_sparsity = targets
    if cfg.layerwise == "owl":
        res.outlier_ratios = [None if r is None else float(r) for r in outlier_ratios]
    if cfg.method == "wanda_refined" and contrast is not None:
        res.contrast = dict(contrast.meta)
    return res


def _run_with(block: nn.Module, i: int, inputs, attach, modules: dict[str, nn.Module], progress: Progress) -> dict:
    """Run block ``i`` over every cached batch with ``attach``'s hooks on ``modules``; return the stats."""
    current_mask: list = [None]
    stats, handles = attach(modules, current_mask)
    try:
        for b, h in enumerate(inputs.hidden):
            progress.check()
            current_mask[0] = inputs.token_masks[b]
            inputs.calls[i][b].call(block, h)
    finally:
        for hd in handles:
            hd.remove()
    return stats


def _sequential(model, blocks, selected, targets, cfg: PruneConfig, calibration: CalibrationSet,
                contrast: CalibrationSet | None, records: dict[str, ModuleRecord], progress: Progress) -> None:
    """The block-by-block engine shared by Wanda, the refined metric and SparseGPT.

    Capture block 0's inputs (of the base and, for ``wanda_refined``, the contrast set); then per
    block: gather statistics of every selected linear in one dense pass with hooks, prune each
    linear, and re-run the pruned block to produce the next block's inputs (for both sets).
    """
    nm = cfg.nm()
    progress.update(0, len(blocks) + 1, "Capturing block inputs")
    inputs = capture(model, list(calibration.batches(cfg.batch_size)))
    cinputs = capture(model, list(contrast.batches(cfg.batch_size))) if cfg.method == "wanda_refined" else None
    for i, block in enumerate(blocks):
        progress.update(i, len(blocks), f"Pruning block {i + 1}/{len(blocks)}")
        sel = selected[i]
        if sel:
            if cfg.method == "sparsegpt" and not targets[i]:  # an OWL block at 0: nothing to update
                for name, m in sel.items():
                    records[name] = apply_mask(m, torch.zeros_like(weight_matrix(m), dtype=torch.bool))
            elif cfg.method == "sparsegpt":
                from .sparsegpt import attach_hessians, sparsegpt_prune
                hess = _run_with(block, i, inputs, attach_hessians, sel, progress)
                # Modules reading the same input (q/k/v, gate/up) share one Hessian. Rows are
                # independent for row and N:M masks, so such modules are pruned as one stacked
                # matrix (fewer, larger column updates); layer masks stay per module.
                # A module that saw no calibration token (e.g. an MoE expert nobody was routed to)
                # gets H = I: SparseGPT then reduces to magnitude pruning without cross-updates.
                groups: dict = {}
                for name in sel:
                    st = hess.get(name)
                    groups.setdefault(id(st) if st is not None and st.tokens else ("none", name), []).append(name)
                for names in groups.values():
                    progress.check()
                    st = hess.get(names[0])
                    if st is not None and st.tokens:
                        H = st.hessian()
                    else:
                        w0 = weight_matrix(sel[names[0]])
                        H = torch.eye(w0.shape[1], dtype=torch.float32, device=w0.device)
                    parts = [names] if cfg.group == "row" or nm else [[n] for n in names]
                    for part in parts:
                        Ws = [weight_matrix(sel[n]) for n in part]
                        new, mask = sparsegpt_prune(torch.cat(Ws) if len(Ws) > 1 else Ws[0], H, targets[i], nm,
                                                    cfg.group, cfg.blocksize, cfg.damping)
                        r0 = 0
                        for n, w in zip(part, Ws):
                            r1 = r0 + w.shape[0]
                            records[n] = write_weight(sel[n], new[r0:r1], mask[r0:r1])
                            r0 = r1
                    del H
                del hess
            else:
                stats = _run_with(block, i, inputs, attach_stats, sel, progress)
                cstats = _run_with(block, i, cinputs, attach_stats, sel, progress) if cinputs is not None else None
                for name, m in sel.items():
                    a = stats[name].sumsq / inputs.n_samples
                    if cstats is None:
                        score = wanda_score(weight_matrix(m), a.sqrt())
                    else:
                        score = refined_score(weight_matrix(m), a, cstats[name].sumsq / cinputs.n_samples)
                    records[name] = apply_mask(m, select_mask(score, targets[i], nm, cfg.group))
        for inp in (inputs, cinputs):
            if inp is None:
                continue
            for b, h in enumerate(inp.hidden):
                progress.check()
                inp.hidden[b] = inp.calls[i][b].call(block, h)


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
    if calibration is not None and cfg.needs_calibration:
        calib = {k: v for k, v in calibration.meta.items()}
    return PruneResult(records, sp, block_sp, overall, seconds, asdict(cfg), calib)
