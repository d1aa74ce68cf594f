"""What a pruning did to each module, and how to undo, redo and look behind it exactly.

A :class:`ModuleRecord` keeps a module's mask as packed bits (8 weights per byte, row-major, most
significant bit first, as ``numpy.packbits``) plus what is needed to move between the dense and
the pruned weights bit for bit:

* *applied* (the model holds the pruned weights): mask-only methods (magnitude, Wanda, refined)
  keep the removed dense values (``removed``, the values at the mask positions); methods that also
  change kept weights (SparseGPT, ``updates_weights``) keep the whole dense weight (``original``);
* *detached* (the model holds the dense weights again, see :func:`detach`): mask-only methods
  keep only the mask; weight-changing methods keep their values at the kept positions (``kept``).

:func:`restore` goes back to dense for good (cancel, revert); :func:`detach` / :func:`reapply`
move between the two states any number of times, and :func:`dense_view` is the context in which
the model is dense and after which the *very* pruned weights are back (SparseGPT included).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..models import weight_matrix

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(bits: np.ndarray) -> int:
    """Number of set bits in a uint8 array."""
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(bits).sum(dtype=np.int64))
    return int(_POPCOUNT[bits].sum(dtype=np.int64))


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """``[out, in]`` bool -> packed uint8 bits (row-major, most significant bit first)."""
    return np.packbits(mask.detach().cpu().numpy().astype(bool, copy=False).reshape(-1))


def unpack_mask(packed: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Packed bits -> ``[out, in]`` bool tensor."""
    n = int(shape[0]) * int(shape[1])
    return torch.from_numpy(np.unpackbits(packed, count=n).astype(bool).reshape(shape))


@dataclass
class ModuleRecord:
    """A pruned module (see the module docstring for the states).

    Attributes:
        packed: the mask ``[out, in]`` (True = removed) as packed bits.
        shape: ``(out, in)``.
        removed: dense values at the mask positions (mask-only methods, while applied), in the
            weight's dtype, on the CPU.
        original: the whole dense ``[out, in]`` weight (weight-changing methods, while applied).
        kept: the pruned values at the kept positions (weight-changing methods, while detached).
        updates_weights: the method changed kept weights too (SparseGPT).
        applied: whether the model holds the pruned weights.
    """

    packed: np.ndarray
    shape: tuple[int, int]
    removed: torch.Tensor | None = None
    original: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    updates_weights: bool = False
    applied: bool = True
    _count: int | None = field(default=None, repr=False)

    @property
    def mask(self) -> torch.Tensor:
        """The mask ``[out, in]`` bool (True = removed), unpacked."""
        return unpack_mask(self.packed, self.shape)

    @property
    def n_removed(self) -> int:
        if self._count is None:
            self._count = popcount(self.packed)
        return self._count

    @property
    def numel(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    @property
    def sparsity(self) -> float:
        return self.n_removed / self.numel if self.numel else 0.0

    def drop_values(self) -> None:
        """Keep only the mask (block streaming: the dense weights stay in the source checkpoint and
        the pruned ones are in the output; nothing in memory can be restored or re-applied)."""
        self.removed = self.original = self.kept = None

    def nbytes(self) -> int:
        """Bytes this record holds in memory (mask bits and kept values)."""
        n = self.packed.nbytes
        for t in (self.removed, self.original, self.kept):
            if t is not None:
                n += t.numel() * t.element_size()
        return n


def apply_mask(module: nn.Module, mask: torch.Tensor) -> ModuleRecord:
    """Zero the masked weights of ``module`` in place and return what is needed to undo it."""
    w = weight_matrix(module)
    m = mask.to(w.device)
    if w.device.type == "cpu" and w.dtype != torch.bfloat16:  # numpy's boolean indexing is about twice as fast
        removed = torch.from_numpy(w.numpy()[m.numpy()])  # a copy, in the same (row-major) order as w[m]
    else:
        removed = w[m].cpu()  # a new tensor (boolean indexing copies)
    w.masked_fill_(m, 0)
    return ModuleRecord(pack_mask(m), tuple(w.shape), removed=removed)


def write_weight(module: nn.Module, new: torch.Tensor, mask: torch.Tensor) -> ModuleRecord:
    """Replace the ``[out, in]`` weight of ``module`` by ``new`` (zeros at ``mask``), keeping the
    dense weight. The record is complete before the weight is touched, so a failure midway can
    still be undone."""
    w = weight_matrix(module)
    rec = ModuleRecord(pack_mask(mask), tuple(w.shape), original=w.detach().cpu().clone(), updates_weights=True)
    w.copy_(new.to(w.device, w.dtype))
    return rec


def _modules(model: nn.Module, records: dict[str, ModuleRecord]) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    return {k: mods[k] for k in records}


@torch.no_grad()
def restore(model: nn.Module, records: dict[str, ModuleRecord]) -> None:
    """Put back every dense weight (bit-identical), e.g. after cancel or for *revert to dense*.
    Records that are not applied are skipped."""
    for name, module in _modules(model, records).items():
        rec = records[name]
        if not rec.applied:
            continue
        w = weight_matrix(module)
        if rec.original is not None:
            w.copy_(rec.original.to(w.device, w.dtype))
        else:
            w[rec.mask.to(w.device)] = rec.removed.to(w.device, w.dtype)
        rec.applied = False


@torch.no_grad()
def detach(model: nn.Module, records: dict[str, ModuleRecord]) -> None:
    """Make the model dense again while keeping what :func:`reapply` needs (see the module docstring)."""
    for name, module in _modules(model, records).items():
        rec = records[name]
        if not rec.applied:
            continue
        w = weight_matrix(module)
        mask = rec.mask.to(w.device)
        if rec.updates_weights:
            rec.kept = w[~mask].cpu().clone()
            w.copy_(rec.original.to(w.device, w.dtype))
            rec.original = None
        else:
            w[mask] = rec.removed.to(w.device, w.dtype)
            rec.removed = None
        rec.applied = False


@torch.no_grad()
def reapply(model: nn.Module, records: dict[str, ModuleRecord]) -> None:
    """Put a detached pruning back onto the (dense) model, bit for bit."""
    for name, module in _modules(model, records).items():
        rec = records[name]
        if rec.applied:
            continue
        w = weight_matrix(module)
        mask = rec.mask.to(w.device)
        if rec.updates_weights:
            rec.original = w.detach().cpu().clone()
            w[~mask] = rec.kept.to(w.device, w.dtype)
            w[mask] = 0
            rec.kept = None
        else:
            rec.removed = w[mask].cpu().clone()
            w[mask] = 0
        rec.applied = True


@contextmanager
def dense_view(model: nn.Module, records: dict[str, ModuleRecord]) -> Iterator[nn.Module]:
    """Inside the block the model holds its dense weights; afterwards the very pruned weights are
    back, whatever happened inside (SparseGPT's updated weights included)."""
    detach(model, records)
    try:
        yield model
    finally:
        reapply(model, records)


@dataclass
class PruneResult:
    """Outcome of :func:`polyprune.pruning.prune`.

    Attributes:
        records: ``{module name: ModuleRecord}`` for every pruned layer.
        sparsity: measured share of zeros per pruned layer.
        block_sparsity: share of removed weights per block index (pooled over its modules).
        overall: sparsity over all pruned parameters.
        seconds: wall time of the pruning (capture + blocks).
        config: the :class:`~polyprune.recipe.PruneConfig` used, as a dict.
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
        """``{module: [out, in] bool}`` (unpacked)."""
        return {k: r.mask for k, r in self.records.items()}

    def nbytes(self) -> int:
        """Memory the result holds (mask bits plus the values needed to undo or redo it)."""
        return sum(r.nbytes() for r in self.records.values())

    def summary(self) -> dict:
        return {"overall_sparsity": self.overall, "block_sparsity": self.block_sparsity,
                "module_sparsity": self.sparsity, "seconds": self.seconds, "config": self.config,
                "calibration": self.calibration, "target_sparsity": self.target_sparsity,
                "outlier_ratios": self.outlier_ratios, "contrast": self.contrast}
