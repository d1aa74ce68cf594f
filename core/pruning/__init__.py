"""Pruning: one file per method, one sequential engine that names no method.

Methods (``PruneConfig.method``, see :mod:`polyprune.recipe`):

* ``magnitude`` — :mod:`.magnitude`, ``|W|``, no calibration data;
* ``wanda`` — :mod:`.wanda` (Sun et al. 2024), ``|W| · ||X||``; with translation demonstrations as
  calibration data this is Kim et al. (2024);
* ``wanda_refined`` — :mod:`.wanda_refined`, Kim et al.'s ``|W| · a / sqrt(b)`` with a base and a
  contrast calibration set;
* ``sparsegpt`` — :mod:`.sparsegpt` (Frantar & Alistarh 2023), OBS updates of the kept weights.

A method module provides ``NEEDS_CALIBRATION``, ``CONTRAST`` (needs a second set), ``attach(modules,
current_mask) -> (stats, handles)`` (forward hooks gathering its statistics) and
``prune_block(modules, gathered, sparsity, cfg, records)``. The engine
(:mod:`.sequential`) captures block inputs, gathers each block's statistics from the block's
input *before* any of its linears is pruned, calls ``prune_block`` and propagates the pruned
block's outputs. Layer-wise sparsity (``layerwise``): ``uniform`` or ``owl`` (:mod:`.owl`, Yin et
al. 2024) over any method. Statistics are float32 whatever the model dtype. Cancelling (through
:class:`~polyprune.progress.Progress`) restores every weight bit for bit before
:class:`~polyprune.errors.Cancelled` propagates.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict

import torch
from torch import nn

from ..calibration import CalibrationSet
from ..errors import PolypruneError
from ..models import find_blocks, prunable_linears
from ..progress import Progress, ensure
from ..recipe import PruneConfig
from . import magnitude, owl, sparsegpt, wanda, wanda_refined
from .records import ModuleRecord, PruneResult, dense_view, detach, reapply, restore
from .sequential import BlockSource, Gathered, run, run_block

__all__ = ["prune", "selected_modules", "METHODS", "PruneResult", "ModuleRecord", "restore", "detach", "reapply",
           "dense_view"]

#: The method modules by name.
METHODS = {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt, "wanda_refined": wanda_refined}


def selected_modules(model: nn.Module, cfg: PruneConfig) -> list[dict[str, nn.Module]]:
    """Per block, ``{full module name: module}`` of the linears ``cfg`` prunes (skips applied)."""
    prefix, blocks = find_blocks(model)
    out = []
    for i, block in enumerate(blocks):
        sel = {}
        if i not in cfg.skip_blocks:
            for name, m in prunable_linears(block).items():
                full = f"{prefix}.{i}.{name}"
                if not any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(name, p) for p in cfg.skip):
                    sel[full] = m
        out.append(sel)
    return out


def prune(model: nn.Module, cfg: PruneConfig, calibration: CalibrationSet | None = None,
          progress: Progress | None = None, contrast: CalibrationSet | None = None,
          outlier_ratios: list[float | None] | None = None, source: BlockSource | None = None,
          keep_dense: bool = True) -> PruneResult:
    """Prune ``model`` in place.

    Args:
        model: a causal LM (any layout :func:`~polyprune.models.find_blocks` understands).
        cfg: the settings; validated first.
        calibration: required for every method but ``magnitude`` (and for OWL); for
            ``wanda_refined`` this is the *base* set.
        progress: per-block progress and cooperative cancel.
        contrast: the contrast set of ``wanda_refined``.
        outlier_ratios: precomputed OWL ratios ``D_l`` per block (from
            :func:`polyprune.pruning.owl.outlier_ratios` on the same model and calibration set),
            e.g. shared by the cells of a study; computed here when ``None``.
        source: block streaming (:class:`~polyprune.pruning.stream_source.BlockStream`): ``model`` is a
            skeleton whose blocks ``source`` opens (reads) and closes (writes, frees) one at a time;
            the records then keep masks only (:meth:`ModuleRecord.drop_values`).
        keep_dense: keep what is needed to give the dense weights back (restore, dense views,
            cancel). ``False`` keeps masks only — for callers that discard the model afterwards
            (the command line), it saves the removed values (half the pruned weights at 50%) or
            SparseGPT's dense copies; a cancelled or failed call then leaves the model partly pruned.

    Returns:
        :class:`PruneResult` with masks per module and measured sparsities.

    Raises:
        PolypruneError: invalid settings, a method without the calibration data it needs, a
            selection that prunes nothing.
        Cancelled: the user cancelled; the model is then exactly as it was before the call
            (streaming: the source checkpoint is never written).
    """
    prefix, blocks = find_blocks(model)
    cfg.validate(len(blocks))
    progress = ensure(progress)
    method = METHODS[cfg.method]
    if cfg.needs_calibration and calibration is None:
        what = "OWL layer-wise sparsity" if cfg.method == "magnitude" else cfg.method.replace("_", " ").title()
        raise PolypruneError(f"{what} needs calibration data",
                             "choose demonstrations or a calibration text file, or use the magnitude method")
    if calibration is not None and cfg.needs_calibration and len(calibration) == 0:
        raise PolypruneError("The calibration set is empty", "give at least one calibration sample")
    if method.CONTRAST and (contrast is None or len(contrast) == 0):
        raise PolypruneError("The refined metric (wanda_refined) needs a contrast calibration set besides the base set",
                             "give a contrast set (e.g. code or text in another language), or use the wanda method")
    t0 = time.perf_counter()
    selected = selected_modules(model, cfg)
    if not any(selected):
        raise PolypruneError("The skip settings leave no module to prune", "skip fewer modules or blocks")
    records: dict[str, ModuleRecord] = {}
    targets: list[float | None] = [cfg.sparsity if sel else None for sel in selected]

    def done(i: int) -> None:  # streaming (the dense values stay on disk) or no way back asked for: masks only
        if source is not None or not keep_dense:
            for name in selected[i]:
                records[name].drop_values()
    try:
        with torch.inference_mode():
            if cfg.layerwise == "owl":
                if outlier_ratios is None:
                    outlier_ratios = owl.outlier_ratios(model, calibration, selected, cfg.owl_m, cfg.batch_size,
                                                        progress.sub(0.0, 0.3), source=source)
                    progress = progress.sub(0.3, 1.0)
                if len(outlier_ratios) != len(blocks):
                    raise PolypruneError(f"{len(outlier_ratios)} OWL ratios given for {len(blocks)} blocks",
                                         "compute the ratios on the same model")
                pruned = [i for i, sel in enumerate(selected) if sel]
                for i, sp in zip(pruned, owl.allocate([float(outlier_ratios[i]) for i in pruned], cfg.sparsity,
                                                      cfg.owl_lambda)):
                    targets[i] = sp
            if not method.NEEDS_CALIBRATION or (cfg.sparsity == 0 and cfg.layerwise == "uniform"):
                for i in range(len(blocks)):
                    progress.update(i, len(blocks), f"Pruning block {i + 1}/{len(blocks)}")
                    if source is not None:
                        source.open(i)
                    if selected[i]:
                        magnitude.prune_block(selected[i], None, targets[i], cfg, records)
                    done(i)
                    if source is not None:
                        source.close(i)
                progress.update(len(blocks), len(blocks), "Pruning done")
            else:
                sets = [calibration] + ([contrast] if method.CONTRAST else [])

                def per_block(i, block, inputs) -> bool:
                    sel = selected[i]
                    if sel:
                        gathered = [Gathered(run_block(block, i, inp, progress, method.attach, sel), inp.n_samples)
                                    for inp in inputs]
                        method.prune_block(sel, gathered, targets[i], cfg, records)
                        done(i)
                    return False

                run(model, [list(s.batches(cfg.batch_size)) for s in sets], per_block, progress, source=source)
    except BaseException:  # Cancelled, KeyboardInterrupt or a failure: leave the model as it was
        if source is None and keep_dense:
            restore(model, records)
        raise
    res = _result(prefix, len(blocks), records, cfg, calibration, time.perf_counter() - t0)
    res.target_sparsity = targets
    if cfg.layerwise == "owl":
        res.outlier_ratios = [None if r is None else float(r) for r in outlier_ratios]
    if method.CONTRAST:
        res.contrast = dict(contrast.meta)
    return res


def _result(prefix: str, n_blocks: int, records: dict[str, ModuleRecord], cfg: PruneConfig,
            calibration: CalibrationSet | None, seconds: float) -> PruneResult:
    sp = {k: r.sparsity for k, r in records.items()}
    block_sp = []
    for i in range(n_blocks):
        keys = [k for k in records if k.startswith(f"{prefix}.{i}.")]
        total = sum(records[k].numel for k in keys)
        block_sp.append(sum(records[k].n_removed for k in keys) / total if total else 0.0)
    total = sum(r.numel for r in records.values())
    overall = sum(r.n_removed for r in records.values()) / total if total else 0.0
    calib = dict(calibration.meta) if calibration is not None and cfg.needs_calibration else None
    return PruneResult(records, sp, block_sp, overall, seconds, asdict(cfg), calib)
