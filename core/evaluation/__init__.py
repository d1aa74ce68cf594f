"""Evaluation: zero-shot tasks, perplexity and translation, scored like lm-evaluation-harness.

* :mod:`.engine` — the log-likelihood engine (shared prefixes run once, LM head only where scored);
* :mod:`.tasks` — the task registry (XNLI, PAWS-X, XCOPA, XStoryCloze, XWinograd, custom tasks,
  FLORES perplexity, FLORES translation);
* :mod:`.runner` — the one evaluation path (:func:`evaluate`, :func:`evaluate_tasks`);
* :mod:`.results` — the one result type (:class:`Result`) and :func:`compare`;
* :mod:`.stats` — the one bootstrap, paired differences, RankC;
* :mod:`.perplexity`, :mod:`.translation` — the FLORES tasks.
"""
from __future__ import annotations

from .engine import loglikelihoods
from .perplexity import flores_perplexity, perplexity
from .results import Result, compare, load_results, save_results
from .runner import evaluate, evaluate_tasks
from .stats import bootstrap_ci, paired_difference, perplexity_ci
from .tasks import TASKS, get_task

__all__ = ["loglikelihoods", "perplexity", "flores_perplexity", "Result", "compare", "load_results", "save_results",
           "evaluate", "evaluate_tasks", "bootstrap_ci", "paired_difference", "perplexity_ci", "TASKS", "get_task"]
