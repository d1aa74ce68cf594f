"""Effects of removing heads, per language, with bootstrap intervals (LAHIS's ``ppl-cross``, methods.md §7).

The cross-effect matrix: for every language A, remove (gate to 0) the heads specific to A and
measure the token-pooled NLL of every language B on *held-out* sentences (another split than the
scores came from). ``delta[A, B] = NLL_B(A's heads removed) − NLL_B(intact)`` in nats/token, so
``exp(delta)`` is the perplexity ratio. Intervals: percentile bootstrap over B's sentences, the
same resampled sentences for both NLLs (paired). The *specificity* of A, ``delta[A, A] − mean over
B ≠ A of delta[A, B]``, gets an interval from resampling every language's sentences independently;
an interval above 0 means that removing A's heads hurts A significantly more than the others.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..progress import Progress, ensure
from .locate import HeadLayout
from .scoring import LanguageTexts, language_sentence_nll

Head = tuple[int, int]


def as_block_dict(heads: list[Head]) -> dict[int, list[int]]:
    """``[(block, head), ...]`` -> ``{block: [heads]}`` (sorted)."""
    out: dict[int, list[int]] = {}
    for l, h in heads:
        out.setdefault(int(l), []).append(int(h))
    return {b: sorted(hs) for b, hs in sorted(out.items())}


def delta_draws(base: np.ndarray, removed: np.ndarray, tokens: np.ndarray, iters: int, seed: int) -> np.ndarray:
    """Bootstrap draws ``[iters]`` of the pooled NLL difference, resampling sentences (paired)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tokens), size=(iters, len(tokens)))
    return (removed[idx].sum(1) - base[idx].sum(1)) / np.maximum(tokens[idx].sum(1), 1)


def pooled(nll: np.ndarray, tokens: np.ndarray) -> float:
    """Token-pooled NLL (nats/token)."""
    return float(nll.sum() / max(int(tokens.sum()), 1))


@dataclass
class LanguageEffect:
    """The effect of one removal on one language.

    Attributes:
        language: code. nll_base, nll: token-pooled NLL intact and with the heads removed.
        delta: ``nll − nll_base`` (nats/token); ci_low, ci_high: its 95 % bootstrap interval.
        predicted: the first-order estimate ``Σ taylor`` over the removed heads (NaN without taylor).
        sentences, tokens: held-out sentences and predicted tokens.
    """

    language: str
    nll_base: float
    nll: float
    delta: float
    ci_low: float
    ci_high: float
    predicted: float
    sentences: int
    tokens: int

    @property
    def ppl_ratio(self) -> float:
        """Perplexity with the heads removed over intact perplexity, ``exp(delta)``."""
        return float(np.exp(self.delta))


def effects(model: nn.Module, layout: HeadLayout, heldout: list[LanguageTexts], removals: list[list[Head]],
            batch_size: int, pad: int, iters: int, seed: int, predicted: np.ndarray | None = None,
            progress: Progress | None = None) -> tuple[list[list[LanguageEffect]], dict]:
    """Measure each removal (a list of heads) on every held-out language.

    Args:
        heldout: ``[B]`` languages' held-out sentences. removals: ``[A]`` head lists.
        predicted: optional ``[A, B]`` first-order estimates stored with the effects.

    Returns:
        ``(effects[A][B], draws)`` where ``draws`` holds per-sentence arrays for further bootstrap
        statistics: ``{"base": [B arrays], "removed": [[B arrays] per A], "tokens": [B arrays]}``.
    """
    progress = ensure(progress)
    nB = len(heldout)
    steps = nB * (1 + sum(1 for r in removals if r))
    done = 0
    base, toks = [], []
    for lt in heldout:
        nll, tok = language_sentence_nll(model, layout, lt, batch_size, pad, None, progress.sub(done / steps, (done + 1) / steps))
        base.append(nll)
        toks.append(tok)
        done += 1
    out, removed_all = [], []
    for a, heads in enumerate(removals):
        row, rem_row = [], []
        for b, lt in enumerate(heldout):
            if heads:
                nll, _ = language_sentence_nll(model, layout, lt, batch_size, pad, as_block_dict(heads),
                                               progress.sub(done / steps, (done + 1) / steps))
                done += 1
            else:
                nll = base[b]
            rem_row.append(nll)
            d = pooled(nll, toks[b]) - pooled(base[b], toks[b])
            if heads and iters > 0:
                draws = delta_draws(base[b], nll, toks[b], iters, seed + 1000 * b)
                lo, hi = (float(x) for x in np.quantile(draws, [0.025, 0.975]))
            else:
                lo = hi = d if not heads else float("nan")
            pred = float(predicted[a, b]) if predicted is not None else float("nan")
            row.append(LanguageEffect(lt.language, pooled(base[b], toks[b]), pooled(nll, toks[b]), d, lo, hi, pred,
                                      len(lt.ids), int(toks[b].sum())))
        out.append(row)
        removed_all.append(rem_row)
    return out, {"base": base, "removed": removed_all, "tokens": toks}


def specificity(draws: dict, a: int, iters: int, seed: int) -> tuple[float, float, float]:
    """``delta[A, A] − mean_{B≠A} delta[A, B]`` for removal ``a`` (its own language at index ``a``)
    and its 95 % interval (each language's sentences resampled independently)."""
    base, rem, toks = draws["base"], draws["removed"][a], draws["tokens"]
    nB = len(base)
    if nB < 2:
        return float("nan"), float("nan"), float("nan")
    point = [pooled(rem[b], toks[b]) - pooled(base[b], toks[b]) for b in range(nB)]
    est = point[a] - float(np.mean([point[b] for b in range(nB) if b != a]))
    if iters <= 0:
        return est, float("nan"), float("nan")
    d = [delta_draws(base[b], rem[b], toks[b], iters, seed + 7919 * (b + 1)) for b in range(nB)]
    stat = d[a] - np.mean([d[b] for b in range(nB) if b != a], axis=0)
    lo, hi = np.quantile(stat, [0.025, 0.975])
    return est, float(lo), float(hi)


@dataclass
class CrossEffects:
    """The cross-effect matrix.

    Attributes:
        languages: ``[K]``; rows A (whose specific heads are removed) and columns B (measured).
        removed: per A, its specific heads.
        nll_base: ``[K]`` intact held-out NLL per B. nll, delta, ci_low, ci_high, predicted: ``[K, K]``.
        specificity, spec_low, spec_high: ``[K]`` diagonal minus mean off-diagonal effect, with interval.
        sentences, tokens: ``[K]`` held-out sentences and predicted tokens per B. split: held-out split.
    """

    languages: list[str]
    removed: dict[str, list[Head]]
    nll_base: np.ndarray
    nll: np.ndarray
    delta: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    predicted: np.ndarray
    specificity: np.ndarray
    spec_low: np.ndarray
    spec_high: np.ndarray
    sentences: np.ndarray
    tokens: np.ndarray
    split: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def rows(self) -> list[tuple]:
        """CSV rows: removed_language, measured_language, n_removed, nll_base, nll, delta, ci_low,
        ci_high, ppl_ratio, predicted."""
        out = []
        for a, la in enumerate(self.languages):
            for b, lb in enumerate(self.languages):
                out.append((la, lb, len(self.removed[la]), self.nll_base[b], self.nll[a, b], self.delta[a, b],
                            self.ci_low[a, b], self.ci_high[a, b], float(np.exp(self.delta[a, b])), self.predicted[a, b]))
        return out


def cross_effects(model: nn.Module, layout: HeadLayout, specific: dict[str, list[Head]], heldout: list[LanguageTexts],
                  batch_size: int, pad: int, iters: int, seed: int, taylor: np.ndarray | None = None,
                  split: str = "", progress: Progress | None = None) -> CrossEffects:
    """Remove the heads specific to each language A and measure every language B (held-out).

    Args:
        specific: ``{A: [(block, head)]}`` for the languages of ``heldout``, in the same order.
        taylor: optional ``[K, L, H]`` taylor scores, giving the predicted effect ``Σ_{h∈S_A} taylor_B[h]``.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    langs = [lt.language for lt in heldout]
    removals = [specific.get(la, []) for la in langs]
    K = len(langs)
    pred = None
    if taylor is not None and not np.isnan(taylor).all():
        pred = np.array([[sum(float(taylor[b][l, h]) for l, h in removals[a]) for b in range(K)] for a in range(K)])
    eff, draws = effects(model, layout, heldout, removals, batch_size, pad, iters, seed, pred, progress)
    spec = np.array([specificity(draws, a, iters, seed) if removals[a] else (np.nan, np.nan, np.nan) for a in range(K)])
    get = lambda f: np.array([[getattr(eff[a][b], f) for b in range(K)] for a in range(K)], dtype=np.float64)  # noqa: E731
    return CrossEffects(langs, {la: list(r) for la, r in zip(langs, removals)}, get("nll_base")[0], get("nll"), get("delta"),
                        get("ci_low"), get("ci_high"), get("predicted"), spec[:, 0], spec[:, 1], spec[:, 2],
                        np.array([len(lt.ids) for lt in heldout]), np.array([lt.tokens for lt in heldout]), split,
                        time.perf_counter() - t0, time.process_time() - c0)
