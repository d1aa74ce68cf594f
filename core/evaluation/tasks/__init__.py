"""The task registry: every task the evaluation runner knows, by name.

Multiple-choice tasks scored exactly as lm-evaluation-harness 0.4.13 (:mod:`.base`): ``xnli``,
``pawsx``, ``xcopa``, ``xstorycloze``, ``xwinograd`` and user-defined tasks (:mod:`.custom`);
and two FLORES-200 tasks: ``flores_ppl`` (perplexity, :mod:`polyprune.evaluation.perplexity`)
and ``flores_mt`` (few-shot translation, :mod:`polyprune.evaluation.translation`).
"""
from __future__ import annotations

from ...errors import PolypruneError
from ..perplexity import FloresPerplexityTask
from ..translation import FloresTranslationTask
from .base import Instance, MultipleChoiceTask, encode_pair, model_max_length, tok_encode
from .custom import CustomTask, load_custom_task
from .pawsx import PAWSXTask
from .xcopa import XCOPATask
from .xnli import XNLI_WORDS, XNLITask
from .xstorycloze import XStoryClozeTask
from .xwinograd import XWinogradTask

__all__ = ["TASKS", "TASK_ALIASES", "get_task", "Instance", "MultipleChoiceTask", "CustomTask", "XNLITask",
           "PAWSXTask", "XCOPATask", "XStoryClozeTask", "XWinogradTask", "FloresPerplexityTask",
           "FloresTranslationTask", "encode_pair", "tok_encode", "model_max_length", "load_custom_task", "XNLI_WORDS"]

#: Every built-in task by name.
TASKS = {t.name: t for t in (XNLITask(), PAWSXTask(), XCOPATask(), XStoryClozeTask(), XWinogradTask(),
                             FloresPerplexityTask(), FloresTranslationTask())}
#: Other accepted names.
TASK_ALIASES: dict[str, str] = {a: t.name for t in TASKS.values() for a in t.aliases}


def get_task(task):
    """Resolve a task: a task object is returned as is; a name (or alias) gives the registered
    task; a path to a ``.json``/``.yaml`` spec gives a :class:`CustomTask`.

    Raises:
        PolypruneError: unknown name (the known ones are listed).
    """
    if not isinstance(task, str):
        return task
    name = task.strip()
    key = TASK_ALIASES.get(name.lower(), name.lower())
    if key in TASKS:
        return TASKS[key]
    if name.lower().endswith((".json", ".yaml", ".yml")):
        return load_custom_task(name)
    raise PolypruneError(f"Unknown task {name!r}",
                         "use " + ", ".join(TASKS) + ", or a custom task spec (.json) with file, context, choices and answer")
