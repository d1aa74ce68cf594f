"""Which heads belong to which language (heads issue, "Classification"; LAHIS, methods.md §7).

Per language the *top set* is the ``k = max(1, round(q·L·H))`` heads with the highest score (ties
broken by block, then head). A head is *specific* to a language when it is in that language's top
set only, *shared* when it is in the top sets of at least ``m`` languages, otherwise unimportant.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Head = tuple[int, int]

#: :attr:`HeadClasses.label` values besides a language index.
UNIMPORTANT, SHARED = -1, -2


@dataclass
class HeadClasses:
    """The classification of every head.

    Attributes:
        languages: ``[K]`` codes. kind: the score kind used. top_share (q), min_shared (m), k.
        top: per language, its top set, highest score first.
        specific: per language, its specific heads, highest score first.
        shared: heads in at least m top sets (block, head order).
        count: ``[L, H]`` number of top sets holding each head.
        label: ``[L, H]`` language index for a specific head, ``-2`` shared, ``-1`` unimportant.
    """

    languages: list[str]
    kind: str
    top_share: float
    min_shared: int
    k: int
    top: dict[str, list[Head]]
    specific: dict[str, list[Head]]
    shared: list[Head]
    count: np.ndarray
    label: np.ndarray

    def rows(self) -> list[tuple]:
        """``(layer, head, class, language, n_top_sets)`` per head (class: specific/shared/unimportant)."""
        out = []
        L, H = self.label.shape
        for l in range(L):
            for h in range(H):
                lab = int(self.label[l, h])
                cls = "specific" if lab >= 0 else "shared" if lab == SHARED else "unimportant"
                out.append((l, h, cls, self.languages[lab] if lab >= 0 else "", int(self.count[l, h])))
        return out


def top_set(scores: np.ndarray, k: int) -> list[Head]:
    """The ``k`` heads of ``scores [L, H]`` with the highest score (stable: earlier head first on ties)."""
    flat = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    H = scores.shape[1]
    return [(int(i // H), int(i % H)) for i in order]


def classify(scores: np.ndarray, languages: list[str], top_share: float, min_shared: int, kind: str = "") -> HeadClasses:
    """Classify heads from per-language scores ``[K, L, H]`` (higher = more important).

    Args:
        scores: ablation or taylor scores. languages: ``[K]`` codes.
        top_share: q in (0, 1]. min_shared: m >= 2 (a head in one top set is specific).
    """
    K, L, H = scores.shape
    k = max(1, int(round(top_share * L * H)))
    top = {lang: top_set(scores[i], k) for i, lang in enumerate(languages)}
    count = np.zeros((L, H), dtype=np.int64)
    for heads in top.values():
        for l, h in heads:
            count[l, h] += 1
    label = np.full((L, H), UNIMPORTANT, dtype=np.int64)
    specific: dict[str, list[Head]] = {}
    for i, lang in enumerate(languages):
        specific[lang] = [x for x in top[lang] if count[x] == 1]
        for l, h in specific[lang]:
            label[l, h] = i
    shared = [(l, h) for l in range(L) for h in range(H) if count[l, h] >= max(min_shared, 2)]
    for l, h in shared:
        label[l, h] = SHARED
    return HeadClasses(list(languages), kind, float(top_share), int(min_shared), k, top, specific, shared, count, label)
