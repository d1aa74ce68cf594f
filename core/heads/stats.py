"""How well taylor ranks heads compared with ablation: Spearman rank correlation and top-set overlap."""
from __future__ import annotations

import numpy as np

from .classify import top_set


def rankdata(x) -> np.ndarray:
    """Ranks 1..n of ``x`` (flattened), ties given their average rank."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two score arrays of the same size (NaN when one is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def agreement(ablation: np.ndarray, taylor: np.ndarray, languages: list[str], k: int) -> dict[str, dict]:
    """Per language: ``{"spearman": rho, "top_overlap": |top_k(abl) ∩ top_k(tay)| / k}`` over all heads
    (``ablation``/``taylor`` ``[K, L, H]``)."""
    out = {}
    for i, lang in enumerate(languages):
        a, t = ablation[i], taylor[i]
        if np.isnan(a).all() or np.isnan(t).all():
            continue
        out[lang] = {"spearman": spearman(a, t),
                     "top_overlap": len(set(top_set(a, k)) & set(top_set(t, k))) / k}
    return out
