"""The one evaluation path: tasks x languages -> :class:`~polyprune.evaluation.results.Result` rows.

Every task of the registry (:mod:`polyprune.evaluation.tasks`) runs here: multiple-choice tasks are
scored with the shared-prefix engine and give one row per metric with a bootstrap 95% interval;
``flores_ppl`` and ``flores_mt`` run their own ``run``. :func:`evaluate` takes an
:class:`~polyprune.recipe.EvalConfig` (what recipes, studies, the CLI and the GUI hold) and calls
:func:`evaluate_tasks` once.

Qt-free. Long functions take ``progress`` and stop with :class:`~polyprune.errors.Cancelled`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..datasets import data_dir as resolve_data_dir, read_flores
from ..errors import Cancelled, PolypruneError
from ..progress import Progress, ensure
from ..recipe import EvalConfig, check_metrics
from .engine import common_prefix_len, loglikelihoods
from .results import Result, new_run_id
from .stats import bootstrap_ci, mean_stderr, rankc_items, seed_for, softmax
from .tasks import MultipleChoiceTask, XNLITask, get_task, model_max_length
from .tasks.base import Instance


def as_list(x) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (``None`` -> ``[]``)."""
    if x is None:
        return []
    if isinstance(x, str):
        return [s.strip() for s in x.split(",") if s.strip()]
    return list(x)


def score_multiple_choice(model, tokenizer, task: MultipleChoiceTask, insts: list[Instance], metrics, *,
              batch_size: int, progress: Progress) -> dict[str, Any]:
    """Log-likelihoods of every choice of ``insts`` and per-document correctness per metric.

    ``batch_size`` counts documents: the engine gets ``batch_size x`` (requests per document)
    requests per forward pass. That costs little memory because the engine never materialises
    ``[batch, tokens, vocab]`` logits (the LM head runs on at most 2,048 scored rows at a time).

    Sharing: the choices of a document form one group of
    :func:`~polyprune.evaluation.loglikelihoods`, and documents whose shared token prefix is
    identical (XNLI rows that repeat a premise: ``BOS + premise + ", right?"``) are merged into
    one group, up to the engine's batch, so that prefix is run once for all of them.
    """
    reqs, groups, slots = [], [], []
    want_pm = "prompt_mean" in metrics
    open_groups: dict[tuple[int, ...], tuple[int, int]] = {}  # prefix -> (group id, requests)
    n_groups = 0
    per_doc = max(len(i.continuations) for i in insts) * (2 if want_pm else 1)
    engine_batch = max(1, batch_size) * per_doc
    for d, inst in enumerate(insts):
        pairs = task.encode(inst, tokenizer)
        k = len(pairs) * (2 if want_pm else 1)
        fulls = [c + t for c, t in pairs]
        key = tuple(fulls[0][:common_prefix_len(fulls)])
        gid, used = open_groups.get(key, (-1, 0))
        if gid < 0 or used + k > max(engine_batch, k):
            gid, used = n_groups, 0
            n_groups += 1
        open_groups[key] = (gid, used + k)
        base = len(reqs)
        for ctx, cont in pairs:
            reqs.append((ctx, cont))
            groups.append(gid)
        pm_base = len(reqs)
        if want_pm:
            for full in fulls:
                reqs.append((full[:1], full[1:]))
                groups.append(gid)
        slots.append((base, len(pairs), pm_base))
    limit = model_max_length(model, tokenizer)
    too_long = any(len(c) + len(t) > limit + 1 for c, t in reqs)
    if too_long:  # the harness left-truncates the context; a continuation must still fit
        for inst, (base, k, _) in zip(insts, slots):
            for j in range(k):
                if len(reqs[base + j][1]) > limit:
                    raise PolypruneError(f"{inst.where}: choice {j + 1} is {len(reqs[base + j][1])} tokens, "
                                         f"longer than the model's context of {limit} tokens",
                                         "shorten the document or use a model with a longer context")
    res = loglikelihoods(model, reqs, batch_size=engine_batch, progress=progress,
                         max_length=limit if too_long else None, groups=None if too_long else groups)
    lls, correct = [], {m: [] for m in metrics}
    preds = []
    for inst, (base, k, pm_base) in zip(insts, slots):
        ll = np.array([res[base + j][0] for j in range(k)], dtype=np.float64)
        lls.append(ll.tolist())
        pred = int(np.argmax(ll))
        preds.append(pred)
        for m in metrics:
            if m == "acc":
                p = pred
            elif m == "acc_norm":  # the harness's acc_norm: by characters
                p = int(np.argmax(ll / np.array([max(len(c), 1) for c in inst.choices], float)))
            elif m == "acc_bytes":
                p = int(np.argmax(ll / np.array([max(len(c.encode("utf-8")), 1) for c in inst.choices], float)))
            else:  # prompt_mean
                pm = np.array([res[pm_base + j][0] / max(res[pm_base + j][1], 1) for j in range(k)])
                p = int(np.argmax(pm))
            correct[m].append(1.0 if p == inst.gold else 0.0)
    return {"lls": lls, "correct": correct, "preds": preds, "gold": [i.gold for i in insts]}


def evaluate_tasks(model, tokenizer, tasks, languages, data_dir, *, split: str | Mapping[str, str | None] | None = None,
                   limit: int | None = None, ppl_limit=..., batch_size: int = 16,
                   metrics: Sequence[str] = ("acc", "acc_norm"), bootstrap: int = 1000,
                   seed: int = 0, progress: Progress | None = None, on_error: str = "raise",
                   model_name: str | None = None, run_id: str | None = None,
                   log_samples: bool = False, translation: Mapping[str, Any] | None = None,
                   item_scores: bool = False) -> list[Result]:
    """Evaluate a model on several tasks and languages; one :class:`Result` per number.

    Multiple-choice tasks: per language, the first ``limit`` documents of
    ``<data_dir>/<task>/<split>.<lang>.jsonl`` are scored with
    :func:`~polyprune.evaluation.engine.loglikelihoods` (choices of a document grouped so their
    shared prefix is computed once) and give one row per metric with a bootstrap 95% CI (``extra``
    holds the harness-style ``stderr``). With XNLI in English and other languages, RankC between
    English and each language on the parallel items is added (metric ``"rankc"``; label
    probabilities = softmax of the three summed log-likelihoods). ``flores_ppl``: FLORES-200
    perplexity on the first ``ppl_limit`` sentences, metric ``"perplexity"``; ``flores_mt``:
    few-shot translation between English and each other language, metrics ``"chrf++"`` and
    ``"bleu"``.

    Args:
        model: causal LM (any dtype/device; evaluation runs where it is).
        tokenizer: its tokenizer.
        tasks: names (``"xnli,pawsx"`` or a list), aliases, task objects, or paths of custom task
            specs (``.json``).
        languages: codes/names for every task (a list or ``"en,fr"``), a dict ``{task: langs}``,
            or ``None`` for every language of each task that has a file under ``data_dir``. A
            language a task lacks is an error of that ``(task, language)``.
        data_dir: folder with one sub-folder per task (``xnli/``, ``pawsx/``, ``flores200/``);
            ``None`` loads multiple-choice data from the Hugging Face hub via ``datasets``.
        split: split name for all tasks, or ``{task: split}`` (``None``: each task's default, e.g.
            test for XNLI, dev for PAWS-X, eval for XStoryCloze, devtest for FLORES).
        limit: first N documents per file, in file order; ``None`` = all.
        ppl_limit: first N FLORES sentences for ``flores_ppl`` (``None`` = all; not given: ``limit``).
        batch_size: multiple-choice documents per forward pass (each with all its choices);
            sentences per pass for ``flores_ppl``.
        metrics: subset of :data:`~polyprune.recipe.METRICS`.
        bootstrap: bootstrap resamples for the CIs (0 = no CI).
        seed: bootstrap seed (each row derives its own from it and its names).
        progress: overall progress and cancellation.
        on_error: ``"raise"`` (first error stops the run) or ``"record"`` (a failed
            ``(task, language)`` becomes a row with ``metric="error"`` and the message).
        model_name, run_id: stored in every result.
        log_samples: add per-document ``lls``, ``pred`` and ``gold`` to the ``acc`` rows.
        translation: options for ``flores_mt`` (shots, max_new_tokens, max_demo_chars, directions,
            batch_size, seed).
        item_scores: add each item's score to ``extra`` (``item_correct`` 0/1 per document;
            ``item_nll``/``item_tokens`` per sentence), for paired comparisons.

    Returns:
        Results in task order, then language order; RankC rows come last.

    Raises:
        PolypruneError: bad arguments; with ``on_error="raise"`` also any data problem.
        Cancelled: on cancel (always raised).
    """
    progress = ensure(progress)
    if on_error not in ("raise", "record"):
        raise PolypruneError(f"on_error must be 'raise' or 'record', got {on_error!r}", "use raise or record")
    metrics = tuple(check_metrics(as_list(metrics)))
    if ppl_limit is ...:
        ppl_limit = limit
    for name, v in (("limit", limit), ("ppl_limit", ppl_limit)):
        if v is not None and v < 1:
            raise PolypruneError(f"{name} must be at least 1, got {v}", f"use a positive {name} or none")
    if bootstrap < 0:
        raise PolypruneError(f"bootstrap must be >= 0, got {bootstrap}", "use 0 to skip confidence intervals")
    model_name = model_name if model_name is not None else str(getattr(model.config, "_name_or_path", "") or "")
    run_id = run_id or new_run_id()
    results: list[Result] = []

    def err_row(task_name: str, lang: str, exc: BaseException) -> None:
        if on_error == "raise":
            raise exc
        msg = str(exc) if isinstance(exc, PolypruneError) else f"{type(exc).__name__}: {exc}"
        results.append(Result(task_name, str(lang), "error", float("nan"), n=0, model=model_name,
                              run_id=run_id, error=msg))

    def split_of(tname: str) -> str | None:
        return split.get(tname) if isinstance(split, Mapping) else split

    # resolve tasks and their languages into units; a task that cannot be resolved becomes an
    # error unit in its place, so rows keep the order of ``tasks``
    units: list[tuple[Any, str, str]] = []  # (task or exception, task name, language)
    seen: set[tuple[str, str]] = set()
    for t in as_list(tasks) if isinstance(tasks, str) else list(tasks):
        try:
            task = get_task(t)
        except PolypruneError as exc:
            units.append((exc, str(t), "*"))
            continue
        given = languages.get(task.name, languages.get(str(t))) if isinstance(languages, Mapping) else languages
        langs = as_list(given)
        if given is None:
            langs = task.available_languages(data_dir, split_of(task.name))
        if not langs:
            units.append((PolypruneError(f"No languages given for {task.name}",
                                         "give the languages (--languages, codes or names)"), task.name, "*"))
            continue
        for lang in langs:
            key = (task.name, str(lang).strip().lower())
            if key not in seen:  # a task or language named twice is evaluated once
                seen.add(key)
                units.append((task, task.name, lang))
    if not units:
        raise PolypruneError("Nothing to evaluate", "give the tasks (--tasks) and languages (--languages)")

    n_units = len(units)
    xnli_lls: dict[str, list[list[float]]] = {}
    for u, (task, tname, lang) in enumerate(units):
        progress.check()
        sub = progress.sub(u / n_units, (u + 1) / n_units)
        code = str(lang)
        if isinstance(task, Exception):
            err_row(tname, code, task)
            continue
        try:
            code = task.language(lang)
            sub.update(0, 1, f"{tname} {code}")
            if not isinstance(task, MultipleChoiceTask):
                rows = task.run(model, tokenizer, code, data_dir, split=split_of(tname), limit=limit,
                                ppl_limit=ppl_limit, batch_size=batch_size, bootstrap=bootstrap, seed=seed,
                                item_scores=item_scores, translation=translation, progress=sub,
                                model_name=model_name, run_id=run_id)
                for r in rows:
                    r.model, r.run_id = model_name, run_id
                results.extend(rows)
                continue
            insts = task.load(data_dir, code, split_of(tname), limit)
            scored = score_multiple_choice(model, tokenizer, task, insts, metrics, batch_size=batch_size, progress=sub)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated per (task, language) when recording
            err_row(tname, code, exc)
            continue
        n = len(insts)
        for m in metrics:
            x = scored["correct"][m]
            value, stderr = mean_stderr(x)
            lo = hi = None
            if bootstrap:
                lo, hi = bootstrap_ci(x, iters=bootstrap, seed=seed_for(seed, tname, code, m))
            extra: dict[str, Any] = {"stderr": stderr, "split": split_of(tname) or task.default_split}
            if item_scores:
                extra["item_correct"] = [int(round(float(v))) for v in x]
            if m == "acc" and log_samples:
                extra.update(lls=scored["lls"], pred=scored["preds"], gold=scored["gold"])
            results.append(Result(tname, code, m, value, lo, hi, n, model_name, run_id, extra))
        if isinstance(task, XNLITask):
            xnli_lls[code] = scored["lls"]

    # RankC between English and each other XNLI language, on parallel items
    if "en" in xnli_lls and len(xnli_lls) > 1:
        en = xnli_lls["en"]
        for code, lls in xnli_lls.items():
            if code == "en":
                continue
            m = min(len(en), len(lls))
            items = rankc_items([softmax(v) for v in en[:m]], [softmax(v) for v in lls[:m]])
            lo = hi = None
            if bootstrap:
                lo, hi = bootstrap_ci(items, iters=bootstrap, seed=seed_for(seed, "xnli", code, "rankc"))
            results.append(Result("xnli", code, "rankc", float(items.mean()), lo, hi, m, model_name, run_id,
                                  {"reference": "en"}))
    progress.update(1, 1, "evaluation done")
    return results


def evaluate(model, tokenizer, cfg: EvalConfig, progress: Progress | None = None, model_name: str = "",
             on_error: str = "raise") -> list[Result]:
    """Evaluate a model on everything an :class:`~polyprune.recipe.EvalConfig` asks for.

    FLORES tasks use ``cfg.split`` and ``cfg.ppl_limit`` (sentences); the other tasks use
    ``cfg.task_split`` and ``cfg.limit`` (documents).

    Raises:
        PolypruneError: no data folder, bad settings, or (``on_error="raise"``) a data problem.
        Cancelled: on cancel.
    """
    cfg.validate()
    units = cfg.units()
    if not units:
        return []
    data = resolve_data_dir(cfg.data)
    splits = {t: (cfg.split if t in ("flores_ppl", "flores_mt") else cfg.task_split) for t in units}
    return evaluate_tasks(model, tokenizer, list(units), units, data, split=splits, limit=cfg.limit,
                          ppl_limit=cfg.ppl_limit, batch_size=cfg.batch_size, metrics=cfg.metrics,
                          bootstrap=cfg.bootstrap, progress=progress, on_error=on_error, model_name=model_name,
                          translation=cfg.translation, item_scores=cfg.item_scores)


def check_data(cfg: EvalConfig) -> None:
    """Check, before a model is loaded, that every file the evaluation will read exists.

    Raises:
        PolypruneError: no data folder, an unknown task or language, a missing file (named).
    """
    cfg.validate()
    units = cfg.units()
    if not units:
        return
    data = resolve_data_dir(cfg.data)
    for tname, langs in units.items():
        task = get_task(tname)
        split = cfg.split if task.name in ("flores_ppl", "flores_mt") else cfg.task_split
        for lang in langs or []:
            code = task.language(lang)
            if isinstance(task, MultipleChoiceTask):
                task.file(data, code, split)
            elif task.name == "flores_ppl":
                read_flores(data, code, split or task.default_split, limit=1)
            else:
                for c in {code, "eng_Latn"}:
                    read_flores(data, c, "dev", limit=1)
                    read_flores(data, c, split or task.default_split, limit=1)


def check_tasks(tasks: list[str], languages, data, split: str | None) -> None:
    """Before a model is loaded: every task is known and every (task, language) has its files.

    Args:
        tasks: task names; languages: a list for every task, ``{task: languages}`` or ``None``
            (every language with data: only the task is checked); data: the data folder;
            split: the split for every task (``None``: each task's default).

    Raises:
        PolypruneError: an unknown task or language, or a missing file (named).
    """
    per = languages if isinstance(languages, Mapping) else {t: languages for t in tasks}
    for t in tasks:
        given = per.get(t)
        if not given:
            get_task(t)
            continue
        check_data(EvalConfig(tasks=[t], languages=list(given), data=str(data), task_split=split,
                              split=split or EvalConfig().split))

