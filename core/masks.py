"""Mask sets: save, load, apply to another copy of the same model, and compare.

A *mask set* is ``{module name: [out, in] bool}`` with True where a weight is removed (the
convention of :class:`~polyprune.pruning.ModuleRecord`), keyed by fully qualified module names
such as ``model.layers.3.mlp.down_proj``. On disk it is a safetensors file whose tensors are the
masks packed 8 per byte (row-major, most significant bit first; ``numpy.packbits``) — 8x smaller
than bool tensors — and whose metadata records the format, the module shapes and the model it was
made for (architecture, model type and a signature: a hash of the names and shapes of every
prunable layer). Unpacked bool files written by earlier versions load too.

Agreement between two mask sets (used by studies, see :mod:`polyprune.study`) is the share of kept
weights they have in common, measured as the **Dice coefficient of the kept sets**:
``2 |K_a ∩ K_b| / (|K_a| + |K_b|)`` with ``K = ~mask``. When both keep the same number of weights
(the same uniform sparsity: the usual study) this is exactly ``|K_a ∩ K_b| / |K_a|``, the share of
one set's kept weights also kept by the other; it is symmetric, 1 for identical masks, and about
``1 - s`` for two independent random masks at sparsity ``s`` (the chance level). Per block, the
counts of all the block's modules are pooled.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import PolypruneError
from .fileio import atomic_path
from .models import all_prunable, weight_matrix
from .pruning.records import ModuleRecord, apply_mask, popcount

FORMAT = "polyprune-masks"
PACKING = "packbits-rowmajor-msb"


def model_signature(model: nn.Module) -> dict:
    """``{"architecture", "model_type", "signature", "modules"}`` of a model's prunable layers.

    ``signature`` is a SHA-1 prefix of ``name:out×in`` for every prunable layer in order.
    """
    mods = all_prunable(model)
    shapes = {k: list(weight_matrix(m).shape) for k, m in mods.items()}
    cfg = getattr(model, "config", None)
    arch = (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    return {"architecture": arch, "model_type": getattr(cfg, "model_type", None),
            "signature": _signature(shapes), "modules": len(shapes)}


def _signature(shapes: dict[str, list[int]]) -> str:
    text = "\n".join(f"{k}:{v[0]}x{v[1]}" for k, v in shapes.items())
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class MaskSet:
    """Masks ``{module: [out, in] bool}`` (True = removed) and metadata from the file.

    ``packed``/``shapes`` hold the packed bits as read from disk (``load_masks(..., unpack=False)``
    fills only these: enough for :func:`agreement`, which counts bits on the packed bytes).
    """

    masks: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    packed: dict[str, np.ndarray] | None = None
    shapes: dict[str, list[int]] | None = None

    def sparsity(self) -> float:
        if not self.masks and self.packed:
            total = sum(a * b for a, b in self.shapes.values())
            return sum(popcount(v) for v in self.packed.values()) / total if total else 0.0
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0


def as_masks(obj) -> dict[str, torch.Tensor]:
    """Masks from a :class:`MaskSet`, a ``PruneResult``, ``{name: ModuleRecord}`` or ``{name: mask}``."""
    if isinstance(obj, MaskSet):
        return obj.masks
    if hasattr(obj, "records"):
        obj = obj.records
    return {k: (v.mask if isinstance(v, ModuleRecord) else v).bool() for k, v in obj.items()}


def save_masks(masks, path: str | Path, model_info: dict | nn.Module | None = None, extra: dict | None = None) -> Path:
    """Write a mask set as packed safetensors, atomically.

    Args:
        masks: a ``PruneResult``, ``{name: ModuleRecord}``, ``{name: bool mask}`` or :class:`MaskSet`.
        path: the ``.safetensors`` file.
        model_info: the model (its :func:`model_signature` is stored) or that dict.
        extra: further string-able metadata (e.g. the cell settings of a study).

    Returns:
        ``path``.
    """
    packed, shp = packed_view(masks)
    if isinstance(model_info, nn.Module):
        model_info = model_signature(model_info)
    shapes = {k: list(v) for k, v in shp.items()}
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in packed.items()}
    meta = {"format": FORMAT, "true_means": "removed", "packing": PACKING, "shapes": json.dumps(shapes),
            "mask_signature": _signature(shapes)}
    for k, v in (model_info or {}).items():
        meta[f"model_{k}" if not k.startswith("model_") else k] = str(v)
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, default=str)
    p = Path(path).expanduser()
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return p


def _damaged(p: Path, what: str) -> PolypruneError:
    return PolypruneError(f"The mask file {p} is damaged: {what}",
                          "use the masks.safetensors written by a pruning run or study (write it again if needed)")


def _declared_shapes(p: Path, meta: dict, keys: list[str], f) -> dict[str, list[int]]:
    """The module shapes a packed mask file declares, checked against the packed tensors' lengths
    before anything is read or allocated."""
    try:
        shapes = json.loads(meta.get("shapes", ""))
    except json.JSONDecodeError:
        raise _damaged(p, "its list of module shapes is not valid JSON") from None
    if not isinstance(shapes, dict) or set(shapes) != set(keys):
        raise _damaged(p, "its list of module shapes does not match the masks it holds")
    for k, shp in shapes.items():
        if not (isinstance(shp, list) and len(shp) == 2 and all(isinstance(v, int) and 0 < v < 2 ** 31 for v in shp)):
            raise _damaged(p, f"the shape of {k} is {shp!r}, not [rows, columns]")
        got = f.get_slice(k).get_shape()
        if got != [-(-shp[0] * shp[1] // 8)]:
            raise _damaged(p, f"{k} holds {got[0] if got else 0} bytes, but a [{shp[0]}, {shp[1]}] mask needs "
                              f"{-(-shp[0] * shp[1] // 8)} (truncated or altered)")
    return shapes


def load_masks(path: str | Path, unpack: bool = True, model: nn.Module | None = None) -> MaskSet:
    """Read a mask set written by :func:`save_masks` (or an unpacked bool mask file).

    The header is checked before any tensor is read: every declared shape must match the stored
    bytes, and with ``model`` every mask must name one of the model's prunable layers with its
    shape; so a damaged or hostile file never makes Polyprune allocate what it claims.

    ``unpack=False`` keeps a packed file packed (``MaskSet.masks`` stays empty): fast, and enough
    for :func:`agreement` and :meth:`MaskSet.sparsity`.

    Raises:
        PolypruneError: missing file, not a safetensors file, not a Polyprune mask set, a damaged
            file, or masks for another model.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise PolypruneError(f"Mask file {p} does not exist", "give the masks.safetensors written by a pruning run or study")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            if meta.get("format") != FORMAT:
                raise PolypruneError(f"{p} is not a Polyprune mask set (format {meta.get('format')!r})",
                                     "give a masks.safetensors file written by Polyprune")
            packed_file = meta.get("packing") == PACKING
            shapes = _declared_shapes(p, meta, keys, f) if packed_file else \
                {k: list(f.get_slice(k).get_shape()) for k in keys}
            if model is not None:
                check_mask_shapes(shapes, model)
            raw = {k: f.get_tensor(k) for k in keys}
    except PolypruneError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise PolypruneError(f"{p} is not a readable safetensors file ({type(e).__name__})",
                             "give a masks.safetensors file written by Polyprune") from e
    if packed_file:
        packed = {k: t.numpy() for k, t in raw.items()}
        if not unpack:
            return MaskSet({}, meta, packed, shapes)
        masks = {k: torch.from_numpy(np.unpackbits(v, count=shapes[k][0] * shapes[k][1]).astype(bool)
                                     .reshape(shapes[k])) for k, v in packed.items()}
        return MaskSet(masks, meta, packed, shapes)
    return MaskSet({k: t.bool() for k, t in raw.items()}, meta)


def check_mask_shapes(shapes: dict[str, list[int]], model: nn.Module) -> None:
    """Every mask names a prunable layer of ``model`` with the layer's ``[out, in]`` shape.

    Raises:
        PolypruneError: the first mask that does not fit (named).
    """
    mods = all_prunable(model)
    for name, shp in shapes.items():
        if name not in mods:
            raise PolypruneError(f"The mask set has a mask for {name}, which this model does not have "
                                 f"({len(shapes)} masks; the model has {len(mods)} prunable layers)",
                                 "apply masks to the same model architecture they were made for")
        want = list(weight_matrix(mods[name]).shape)
        if list(shp) != want:
            raise PolypruneError(f"Mask {name} has shape {tuple(shp)} but the weight is {tuple(want)} ([out, in])",
                                 "use masks made for this model")


def apply_masks(model: nn.Module, masks, check_model: bool = True) -> dict:
    """Zero the masked weights of ``model`` (another copy of the model the masks were made for).

    Everything is validated before the first weight changes, so on error the model is untouched.

    Args:
        model: the target model.
        masks: :class:`MaskSet` (its stored model signature is checked when ``check_model``), a
            ``PruneResult`` or ``{name: mask}``.
        check_model: compare the stored model signature with the target's.

    Returns:
        ``{name: ModuleRecord}`` — pass to :func:`polyprune.pruning.restore` to undo.

    Raises:
        PolypruneError: a module the model lacks, a shape mismatch (the first one is named), or a
            mask set made for a different model.
    """
    m = as_masks(masks)
    mods = all_prunable(model)
    check_mask_shapes({k: list(v.shape) for k, v in m.items()}, model)
    if check_model and isinstance(masks, MaskSet) and "model_signature" in masks.meta:
        sig = model_signature(model)
        if masks.meta["model_signature"] != sig["signature"]:
            raise PolypruneError(f"The mask set was made for a {masks.meta.get('model_architecture')} with "
                                 f"{masks.meta.get('model_modules')} prunable layers; this model is a "
                                 f"{sig['architecture']} with {sig['modules']} (different layer names or shapes)",
                                 "apply masks to the same model they were made for")
    records = {}
    with torch.no_grad():
        for name, mask in m.items():
            records[name] = apply_mask(mods[name], mask)
    return records


def packed_view(obj) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """``(packed bits, shapes)`` of any mask-set form (records are packed already; bool masks are
    packed here)."""
    if isinstance(obj, MaskSet) and obj.packed is not None:
        return obj.packed, {k: tuple(v) for k, v in obj.shapes.items()}
    recs = obj.records if hasattr(obj, "records") else obj
    if isinstance(recs, dict) and recs and all(isinstance(v, ModuleRecord) for v in recs.values()):
        return {k: r.packed for k, r in recs.items()}, {k: tuple(r.shape) for k, r in recs.items()}
    m = as_masks(obj)
    return ({k: np.packbits(v.detach().cpu().numpy().astype(bool).reshape(-1)) for k, v in m.items()},
            {k: tuple(v.shape) for k, v in m.items()})


def agreement_counts(masks_a, masks_b) -> dict[str, tuple[int, int, int]]:
    """Per common module ``(|K_a ∩ K_b|, |K_a|, |K_b|)``: kept weights in both, in a, in b.

    Counted on packed bits (popcount); the zero padding bits of the last byte count as removed in
    neither set and are excluded by working from the element count: ``|K_a ∩ K_b| = n - pop(a | b)``.

    Raises:
        PolypruneError: no module in common, or a module with different shapes in the two sets.
    """
    pa, sa = packed_view(masks_a)
    pb, sb = packed_view(masks_b)
    common = [k for k in pa if k in pb]
    if not common:
        raise PolypruneError("The two mask sets have no module in common", "compare masks of the same model")
    out = {}
    for k in common:
        if sa[k] != sb[k]:
            raise PolypruneError(f"Mask {k} has shape {sa[k]} in one set and {sb[k]} in the other",
                                 "compare masks of the same model")
        n = sa[k][0] * sa[k][1]
        out[k] = (n - popcount(pa[k] | pb[k]), n - popcount(pa[k]),
                  n - popcount(pb[k]))
    return out


def _dice(both: int, na: int, nb: int) -> float:
    return 2 * both / (na + nb) if na + nb else 1.0


def agreement(masks_a, masks_b, counts: dict | None = None) -> dict[str, float]:
    """Per module, the Dice coefficient of the kept weights (see the module docstring), in [0, 1].

    Modules present in only one set are left out. ``counts``: precomputed :func:`agreement_counts`.

    Raises:
        PolypruneError: no module in common, or a module with different shapes in the two sets.
    """
    counts = counts if counts is not None else agreement_counts(masks_a, masks_b)
    return {k: _dice(*c) for k, c in counts.items()}


def block_of(name: str) -> int | None:
    """Block index of a module name (the first purely numeric path component), or ``None``."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def block_agreement(masks_a, masks_b, counts: dict | None = None) -> dict[int, float]:
    """Per block, the Dice coefficient of the kept weights with the counts of all its modules pooled."""
    counts = counts if counts is not None else agreement_counts(masks_a, masks_b)
    acc: dict[int, list[int]] = {}
    for k, c in counts.items():
        i = block_of(k)
        a = acc.setdefault(-1 if i is None else i, [0, 0, 0])
        for j, v in enumerate(c):
            a[j] += v
    return {i: _dice(*c) for i, c in sorted(acc.items())}
