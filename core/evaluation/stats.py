"""Statistics of evaluation results: one bootstrap, paired differences, RankC.

Every interval in Polyprune comes from :func:`bootstrap`: a percentile bootstrap that draws
``iters`` resamples of the ``n`` items with replacement (numpy ``default_rng(seed)``, so a seed
gives the same interval every time) and takes the ``(1 - level) / 2`` and ``(1 + level) / 2``
quantiles of the statistic over the resamples. Accuracy resamples documents
(:func:`bootstrap_ci`); perplexity resamples whole sentences and recomputes the pooled
``exp(Σ nll / Σ tokens)`` (:func:`perplexity_ci`), so a long sentence weighs as much as its tokens;
two models scored on the same items are compared with the *same* resampled indices
(:func:`paired_difference`).
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import numpy as np

#: Items drawn per chunk of resamples (bounds the index array to about 16 MB).
CHUNK_ITEMS = 2_000_000


def seed_for(seed: int, *parts: str) -> list[int]:
    """A bootstrap seed derived from ``seed`` and names (task, language, metric), so every row of
    a table has its own stream and the same row always gets the same interval."""
    return [int(seed), zlib.crc32("/".join(parts).encode("utf-8"))]


def bootstrap(stat: Callable[[np.ndarray], np.ndarray], n: int, *, iters: int = 1000,
              seed: int | Sequence[int] = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of ``n`` items.

    Args:
        stat: maps resampled indices ``[k, n]`` (int) to the statistic of each resample ``[k]``.
        n: number of items.
        iters: resamples; seed: numpy seed; level: coverage (0.95 for a 95% interval).

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no items.

    Raises:
        ValueError: ``iters < 1``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(iters)
    chunk = max(1, min(iters, CHUNK_ITEMS // n))
    for s in range(0, iters, chunk):
        k = min(chunk, iters - s)
        values[s:s + k] = stat(rng.integers(0, n, size=(k, n)))
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float], *, iters: int = 1000, seed: int | Sequence[int] = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (e.g. 0/1 correctness
    per document); see :func:`bootstrap`."""
    x = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda idx: x[idx].mean(axis=1), x.size, iters=iters, seed=seed, level=level)


def pooled_perplexity(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``exp(Σ nll / Σ tokens)`` over the last axis (nats, token counts)."""
    return np.exp(nll.sum(-1) / np.maximum(tokens.sum(-1), 1))


def perplexity_ci(item_nll: Sequence[float], item_tokens: Sequence[int], *, iters: int = 1000,
                  seed: int | Sequence[int] = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of a pooled perplexity, resampling whole texts (sentences).

    Args:
        item_nll: ``[n]`` summed negative log-likelihood of each text, in nats.
        item_tokens: ``[n]`` scored tokens of each text.
    """
    nll = np.asarray(item_nll, dtype=np.float64)
    tok = np.asarray(item_tokens, dtype=np.float64)
    return bootstrap(lambda idx: pooled_perplexity(nll[idx], tok[idx]), nll.size, iters=iters, seed=seed, level=level)


def paired_difference(a: dict, b: dict, iters: int = 1000, seed=0, level: float = 0.95) -> tuple[float, float, float]:
    """Difference ``metric(a) - metric(b)`` of two models scored on the same items, with a paired
    percentile-bootstrap interval (both resampled with the same item indices).

    Args:
        a, b: item scores of one ``(task, language, metric)``: ``{"correct": [n] 0/1}`` (accuracy:
            difference of means) or ``{"nll": [n] nats, "tokens": [n]}`` (perplexity: difference of
            ``exp(sum nll / sum tokens)``).
        iters, seed, level: bootstrap resamples, numpy seed, coverage.

    Returns:
        ``(difference, low, high)``.

    Raises:
        ValueError: the two sides have different numbers of items or different kinds of scores.
    """
    if "correct" in a and "correct" in b:
        x, y = np.asarray(a["correct"], float), np.asarray(b["correct"], float)
        if x.size != y.size:
            raise ValueError(f"different item counts: {x.size} vs {y.size}")
        d = x - y
        lo, hi = bootstrap(lambda idx: d[idx].mean(1), d.size, iters=iters, seed=seed, level=level)
        return float(d.mean()), lo, hi
    if "nll" in a and "nll" in b:
        na, ta = np.asarray(a["nll"], float), np.asarray(a["tokens"], float)
        nb, tb = np.asarray(b["nll"], float), np.asarray(b["tokens"], float)
        if na.size != nb.size:
            raise ValueError(f"different item counts: {na.size} vs {nb.size}")
        lo, hi = bootstrap(lambda idx: pooled_perplexity(na[idx], ta[idx]) - pooled_perplexity(nb[idx], tb[idx]),
                           na.size, iters=iters, seed=seed, level=level)
        return float(math.exp(na.sum() / ta.sum()) - math.exp(nb.sum() / tb.sum())), lo, hi
    raise ValueError("the two sides hold different kinds of item scores")


def mean_stderr(x: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); NaN for n < 2), as the
    harness reports ``acc_stderr``."""
    n = len(x)
    mean = float(np.mean(x))
    if n < 2:
        return mean, float("nan")
    return mean, float(np.std(x, ddof=1) / math.sqrt(n))


def softmax(x: Sequence[float]) -> np.ndarray:
    """Softmax of a vector of log-likelihoods (label probabilities for RankC)."""
    a = np.asarray(x, dtype=np.float64)
    a = np.exp(a - a.max())
    return a / a.sum()


def _rankc_item(p: np.ndarray, q: np.ndarray, w: np.ndarray) -> float:
    Q = p.shape[-1]
    rp = np.argsort(-p, kind="stable")
    rq = np.argsort(-q, kind="stable")
    total = 0.0
    for j in range(1, Q + 1):
        total += w[j - 1] * len(set(rp[:j].tolist()) & set(rq[:j].tolist())) / j
    return total


def rankc_items(en_probs, xx_probs) -> np.ndarray:
    """Per-item RankC (see :func:`rankc`), shape ``[N]``."""
    p = np.asarray(en_probs, dtype=np.float64)
    q = np.asarray(xx_probs, dtype=np.float64)
    if p.ndim == 1:
        p, q = p[None], q[None]
    if p.shape != q.shape or p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"en_probs and xx_probs must both be [N, Q], got {p.shape} and {q.shape}")
    Q = p.shape[1]
    e = np.exp(np.arange(Q - 1, -1, -1, dtype=np.float64))
    w = e / e.sum()
    return np.array([_rankc_item(p[i], q[i], w) for i in range(p.shape[0])])


def rankc(en_probs, xx_probs) -> float:
    """RankC consistency (Qi et al. 2023; methods.md §1.4) between English and language xx.

    For each parallel item with label probabilities ``p`` (English) and ``q`` (xx) over ``Q``
    labels: rank the labels by *descending* probability (ties: lower index first),
    ``P@j = |top_j(p) ∩ top_j(q)| / j`` and ``RankC = Σ_j w_j P@j`` with
    ``w = softmax(Q-1, ..., 0)`` (largest weight on j = 1). Averaged over items.

    Args:
        en_probs, xx_probs: ``[N, Q]`` (or ``[Q]``) label probabilities of parallel items.

    Returns:
        Mean RankC in [0, 1] (1 = same ranking on every item).

    Raises:
        ValueError: shapes differ or are not ``[N, Q]``.
    """
    return float(rankc_items(en_probs, xx_probs).mean())
