"""Large-magnitude feature statistics (Kim et al. 2024, §4 and figures 1–3; methods.md §1.1).

For calibration samples n = 1..N and the residual stream ``h_l`` of layer l (index 0 is the
embedding output, index l ≥ 1 the output of block l as returned by ``output_hidden_states``; the
last index therefore includes the final norm, exactly as transformers returns it):

    M[l, j] = (1/N) Σ_n ||h_{l,n}[:, j]||₂      (L2 norm over the real tokens of sample n)

giving a ``[n_layers + 1, d_model]`` matrix. Unlike the public code, padding positions are masked.
Alongside, the input-column norms of every prunable linear (the Wanda statistic
``sqrt((1/N) Σ_n Σ_t x²)``, measured on the dense model) and, for every layer and dimension, the
tokens where ``|h|`` is largest (for "which tokens light this feature up").
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .calibration import CalibrationSet
from .errors import PolypruneError
from .evaluation.engine import special_ids
from .fileio import atomic_path, write_json
from .models import all_prunable, base_model
from .progress import Progress, ensure
from .pruning.wanda import attach as attach_column_stats


@dataclass
class FeatureResult:
    """Feature magnitudes of one calibration setting.

    Attributes:
        magnitudes: ``[n_layers + 1, d_model]`` float32, M[l, j] above.
        column_norms: ``{module name: [in_features] float32}`` Wanda input-column norms.
        top_values: ``[n_layers + 1, d_model, K]`` largest ``|h_l[t, j]|`` over all real tokens.
        top_tokens: ``[n_layers + 1, d_model, K, 2]`` int, ``(sample, position)`` of those values.
        settings: how the calibration set was built (for saving with the numbers).
    """

    magnitudes: np.ndarray
    column_norms: dict[str, np.ndarray]
    top_values: np.ndarray
    top_tokens: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.magnitudes.shape[0]

    def save(self, path: str | Path) -> list[Path]:
        """Write ``<path>.npz`` (all arrays + settings JSON), ``<path>.csv`` (columns ``layer``,
        ``dimension``, ``magnitude``; ``pandas.read_csv`` reads it as is) and the settings as
        ``<path>.json`` beside them, each atomically. Layer 0 is the embedding output, layer l the
        output of block l (counted from 1; the last includes the final norm)."""
        stem = Path(path).with_suffix("")
        npz = stem.with_suffix(".npz")
        arrays = {"magnitudes": self.magnitudes, "top_values": self.top_values, "top_tokens": self.top_tokens,
                  "settings": np.array(json.dumps(self.settings, default=str))}
        arrays.update({f"colnorm::{k}": v for k, v in self.column_norms.items()})
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        csv_path = stem.with_suffix(".csv")
        with atomic_path(csv_path) as tmp:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["layer", "dimension", "magnitude"])
                for layer in range(self.magnitudes.shape[0]):
                    for dim, v in enumerate(self.magnitudes[layer]):
                        w.writerow([layer, dim, f"{v:.6g}"])
        settings = write_json(stem.with_suffix(".json"), {"settings": self.settings,
                                                          "layers": "0 = embedding output, l = output of block l "
                                                                    "(the last includes the final norm)",
                                                          "unit": "L2 norm over a sample's tokens, averaged over samples"},
                              kind="feature magnitudes")
        return [npz, csv_path, settings]

    @classmethod
    def load(cls, path: str | Path) -> "FeatureResult":
        """Read a ``.npz`` written by :meth:`save`."""
        with np.load(Path(path).with_suffix(".npz"), allow_pickle=False) as z:
            cols = {k.split("::", 1)[1]: z[k] for k in z.files if k.startswith("colnorm::")}
            return cls(z["magnitudes"], cols, z["top_values"], z["top_tokens"], json.loads(str(z["settings"])))


def top_k(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[n_layers + 1, k]`` of the k largest dimensions per layer, largest first."""
    k = min(int(k), magnitudes.shape[1])
    if k < 1:
        raise PolypruneError(f"k must be at least 1 (got {k})", "choose how many top dimensions to compare")
    return np.argsort(-magnitudes, axis=1, kind="stable")[:, :k]


def overlap(a: np.ndarray, b: np.ndarray, k: int | None = None, ratio: float | None = None) -> np.ndarray:
    """Per-layer overlap of the top features of two settings: ``|topk(A) ∩ topk(B)| / k``.

    Give either ``k`` (a count) or ``ratio`` (a share of d_model, Kim et al. use 0.4; their code
    ignores its own ratio flag — here it is honoured). Returns ``[n_layers + 1]`` in [0, 1].

    Raises:
        PolypruneError: shapes differ (different models) or neither k nor ratio is given.
    """
    if a.shape != b.shape:
        raise PolypruneError(f"Feature matrices have different shapes {a.shape} and {b.shape}",
                             "compare two settings measured on the same model")
    if k is None:
        if ratio is None:
            raise PolypruneError("Give k or ratio for the overlap", "e.g. ratio=0.4 (40% of dimensions)")
        k = max(1, int(round(a.shape[1] * ratio)))
    ta, tb = top_k(a, k), top_k(b, k)
    return np.array([len(set(x.tolist()) & set(y.tolist())) / ta.shape[1] for x, y in zip(ta, tb)])


@torch.inference_mode()
def feature_magnitudes(model, calibration: CalibrationSet, batch_size: int = 8, top: int = 8,
                       column_norms: bool = True, progress: Progress | None = None, tokenizer=None,
                       exclude_special: bool = False) -> FeatureResult:
    """Measure :class:`FeatureResult` on the (dense or pruned) model as it is now.

    Runs ``model.base_model`` (no LM head) with ``output_hidden_states=True`` batch by batch.

    Args:
        model: a causal LM.
        calibration: samples with attention masks; padding is excluded from every statistic.
        batch_size: samples per forward pass.
        top: how many top tokens to keep per layer and dimension.
        column_norms: also gather the Wanda input-column norms of every prunable linear.
        tokenizer: the model's tokenizer; with it, special tokens (BOS, EOS, padding, ...) are left
            out of the top-token lists, where they would crowd out every word (they carry the
            largest activations of many models).
        exclude_special: also leave special tokens out of the magnitudes and column norms
            (recorded in ``settings["exclude_special"]``).

    Raises:
        Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    device = next(model.parameters()).device
    base = base_model(model)
    n = len(calibration)
    mags = None
    top_v = top_i = None
    current_mask: list = [None]
    stats, handles = (attach_column_stats(all_prunable(model), current_mask) if column_norms else ({}, []))
    special = torch.tensor(sorted(special_ids(tokenizer)) if tokenizer is not None else [], dtype=torch.long)
    offset = 0
    total = -(-n // batch_size)
    try:
        for b, (ids, att) in enumerate(calibration.batches(batch_size)):
            progress.update(b, total, f"Measuring features, batch {b + 1}/{total}")
            ids, att = ids.to(device), att.to(device)
            words = att.bool() & ~torch.isin(ids, special.to(device))  # real, non-special tokens
            stat_mask = words if exclude_special else att.bool()
            current_mask[0] = stat_mask
            out = base(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False)
            hs = torch.stack([h.float() for h in out.hidden_states])  # [L+1, B, T, d]
            m = stat_mask.float()[None, :, :, None]
            norms = ((hs * hs) * m).sum(2).sqrt().sum(1)  # [L+1, d], summed over samples
            mags = norms if mags is None else mags + norms
            # top tokens over words only: flatten (sample, position), other positions get -1
            w = words.float()[None, :, :, None]
            absx = (hs.abs() * w - (1 - w)).permute(0, 3, 1, 2).reshape(hs.shape[0], hs.shape[3], -1)
            kk = min(top, absx.shape[-1])
            v, i = absx.topk(kk, dim=-1)
            T = hs.shape[2]
            pos = torch.stack([i // T + offset, i % T], dim=-1)
            if top_v is None:
                top_v, top_i = v, pos
            else:
                cat_v, cat_i = torch.cat([top_v, v], -1), torch.cat([top_i, pos], -2)
                v2, j = cat_v.topk(min(top, cat_v.shape[-1]), dim=-1)
                top_v, top_i = v2, torch.gather(cat_i, -2, j[..., None].expand(*j.shape, 2))
            offset += ids.shape[0]
        progress.update(total, total, "Features measured")
    finally:
        for h in handles:
            h.remove()
    cols = {k: (s.sumsq / n).sqrt().cpu().numpy() for k, s in stats.items()}
    return FeatureResult((mags / n).cpu().numpy(), cols, top_v.cpu().numpy(), top_i.cpu().numpy(),
                         dict(calibration.meta, samples=n, exclude_special=exclude_special))


def token_contexts(result: FeatureResult, calibration: CalibrationSet, tokenizer, layer: int, dim: int,
                   window: int = 8) -> list[dict]:
    """The tokens where feature ``dim`` of ``layer`` is largest, with their sentence context.

    Returns a list (largest first) of ``{"value", "sample", "position", "token", "left", "right"}``
    where ``left``/``right`` are decoded neighbouring text (``window`` tokens each side).
    """
    rows = []
    for v, (s, p) in zip(result.top_values[layer, dim], result.top_tokens[layer, dim]):
        if v < 0:
            continue
        ids = calibration.input_ids[int(s)].tolist()
        p = int(p)
        rows.append({"value": float(v), "sample": int(s), "position": p,
                     "token": tokenizer.decode([ids[p]]),
                     "left": tokenizer.decode(ids[max(0, p - window):p]),
                     "right": tokenizer.decode(ids[p + 1:p + 1 + window])})
    return rows
