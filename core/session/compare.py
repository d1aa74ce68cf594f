"""Evaluating variants side by side: 95% intervals, a paired bootstrap of each change on the same
items, the chance level, and a plain verdict per cell."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import PolypruneError
from ..evaluation import Result, compare
from ..evaluation.stats import paired_difference, seed_for
from ..pipeline import evaluate
from ..progress import Progress, ensure
from ..recipe import EvalConfig
from ..study import lower_is_better

from .variants import ACCURACY_METRICS, BETTER, CHANCE, DENSE_ID, NO_CHANGE, NO_INTERVAL, WORSE, Session, Variant, labelled


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def item_scores(r: Result) -> dict | None:
    """The per-item scores of a result for :func:`~polyprune.evaluation.stats.paired_difference`
    (``None`` when it has none, e.g. corpus BLEU)."""
    x = r.extra or {}
    if "item_correct" in x:
        return {"correct": x["item_correct"]}
    if "item_nll" in x and "item_tokens" in x:
        return {"nll": x["item_nll"], "tokens": x["item_tokens"]}
    return None


def chance_level(task: str, metric: str) -> float | None:
    """Accuracy of guessing for a multiple-choice task and metric (``None`` where it does not apply)."""
    return CHANCE.get(task) if metric in ACCURACY_METRICS else None


def verdict(metric: str, low: float | None, high: float | None) -> str:
    """A plain verdict from the paired 95% interval of ``variant - dense``: worse or better than
    dense when the interval lies on one side of 0, else no detectable change."""
    if low is None or high is None:
        return NO_INTERVAL
    down_is_good = lower_is_better(metric)
    if low > 0:
        return WORSE if down_is_good else BETTER
    if high < 0:
        return BETTER if down_is_good else WORSE
    return NO_CHANGE


def comparison_rows(dense: Sequence[Result], variant: Sequence[Result], *, iters: int = 1000,
                    seed: int = 0) -> list[dict]:
    """:func:`polyprune.evaluation.compare` rows of ``variant`` against ``dense``, each with the
    paired bootstrap of the difference on the same items and a verdict.

    Added keys: ``diff`` (variant − dense, as the paired bootstrap computes it), ``diff_ci``
    (``[low, high]`` or ``None``), ``verdict`` (:func:`verdict`), ``chance`` (:func:`chance_level`)
    and ``at_chance`` (the dense interval reaches down to the chance level: the task cannot show a
    loss for this language and model).
    """
    d_map = {r.key(): r for r in dense if r.ok}
    v_map = {r.key(): r for r in variant if r.ok}
    rows = []
    for row in compare(dense, variant):
        key = (row["task"], row["language"], row["metric"])
        a, b = v_map.get(key), d_map.get(key)
        diff, ci = row["delta"], None
        sa, sb = (item_scores(a), item_scores(b)) if a is not None and b is not None else (None, None)
        if sa is not None and sb is not None and iters > 0:
            try:
                diff, lo, hi = paired_difference(sa, sb, iters=iters, seed=seed_for(seed, *key, "paired"))
                ci = [lo, hi]
            except ValueError:  # different items (e.g. different limits): no paired interval
                ci = None
        chance = chance_level(row["task"], row["metric"])
        lo_dense = (row.get("dense_ci") or [None])[0]
        rows.append(row | {"diff": diff, "diff_ci": ci,
                           "verdict": verdict(row["metric"], *(ci or (None, None))) if row["dense"] is not None
                           and row["pruned"] is not None else NO_INTERVAL,
                           "chance": chance,
                           "at_chance": chance is not None and lo_dense is not None and lo_dense <= chance})
    return rows


@dataclass
class EvaluationTable:
    """Results of several variants on the same settings, and each pruned variant against dense.

    Attributes:
        key: the evaluation settings the results belong to (:func:`eval_key`).
        results: ``{variant id: [Result]}``.
        rows: one :func:`comparison_rows` row per (task, language, metric) and pruned variant, with
            ``variant`` (its id) added; in :func:`polyprune.evaluation.compare` order, variants inner.
        seconds: time the evaluation took.
    """

    key: str
    results: dict[str, list[Result]]
    rows: list[dict]
    seconds: float = 0.0


def eval_key(cfg: EvalConfig) -> str:
    """A key of everything in ``cfg`` that decides the numbers (results are reused by it)."""
    d = asdict(cfg)
    d.pop("dense", None)
    d.pop("optional", None)
    d.pop("batch_size", None)
    return repr(sorted((k, repr(v)) for k, v in d.items()))


def evaluate_variants(session: Session, variants: Sequence[Variant], cfg: EvalConfig,
                      progress: Progress | None = None,
                      known: dict[str, list[Result]] | None = None) -> EvaluationTable:
    """Evaluate variants on ``cfg`` and compare every pruned one with the dense model.

    Each variant is evaluated while the model holds its exact weights (:meth:`Session.holding`);
    afterwards the model holds the variant it held before, bit for bit (SparseGPT included). The
    dense model is always part of the table (it is the reference); results in ``known`` (by variant
    id, made with the same settings) are reused instead of evaluated again. Progress messages name
    the variant, the task and the language.

    Raises:
        PolypruneError: bad settings or data. Cancelled: through ``progress`` (the model holds the
            variant it held before).
    """
    progress = ensure(progress)
    cfg.validate()
    if not cfg.enabled:
        raise PolypruneError("No task is ticked", "tick at least one task and language to evaluate")
    known = dict(known or {})
    wanted = [session.dense] + [v for v in variants if not v.is_dense]
    todo = [v for v in wanted if v.id not in known]
    t0 = time.perf_counter()
    results = {v.id: known[v.id] for v in wanted if v.id in known}
    # dense first: the model moves dense -> v1 -> v2 ... -> back, each move exact
    for k, v in enumerate(todo):
        sub = labelled(progress, k / len(todo), (k + 1) / len(todo), v.name, list(cfg.units()))
        with session.holding(v):
            results[v.id] = evaluate(session.loaded, cfg, sub)
    rows = []
    per_variant = {v.id: comparison_rows(results[DENSE_ID], results[v.id], iters=max(cfg.bootstrap, 0))
                   for v in wanted if not v.is_dense}
    dense_rows = compare(results[DENSE_ID], [])
    for i, base in enumerate(dense_rows):
        key = (base["task"], base["language"], base["metric"])
        for vid, vrows in per_variant.items():
            match = next((r for r in vrows if (r["task"], r["language"], r["metric"]) == key), None)
            if match is not None:
                rows.append(match | {"variant": vid})
    if not per_variant:  # only the dense model: its own rows
        for base in dense_rows:
            chance = chance_level(base["task"], base["metric"])
            lo = (base.get("dense_ci") or [None])[0]
            rows.append(base | {"variant": DENSE_ID, "diff": None, "diff_ci": None, "verdict": NO_INTERVAL,
                                "chance": chance, "at_chance": chance is not None and lo is not None and lo <= chance})
    progress.update(1, 1, "Evaluation done")
    return EvaluationTable(eval_key(cfg), results, rows, time.perf_counter() - t0)
