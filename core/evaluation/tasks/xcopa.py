"""XCOPA (Ponti et al. 2020) as lm-evaluation-harness 0.4.13's ``xcopa_<lang>`` (methods.md §5)."""
from __future__ import annotations

from ...errors import PolypruneError
from .base import Instance, MultipleChoiceTask, int_field, lower_first, str_field

#: XCOPA ``(cause, effect)`` connectors of lm-evaluation-harness 0.4.13 (``xcopa/utils.py``).
XCOPA_CONNECTORS: dict[str, tuple[str, str]] = {
    "et": ("sest", "seetõttu"),
    "ht": ("poukisa", "donk sa"),
    "id": ("karena", "maka"),
    "it": ("perché", "quindi"),
    "qu": ("imataq", "chaymi"),
    "sw": ("kwa sababu", "kwa hiyo"),
    "ta": ("காரணமாக", "எனவே"),
    "th": ("เพราะ", "ดังนั้น"),
    "tr": ("çünkü", "bu yüzden"),
    "vi": ("bởi vì", "vì vậy"),
    "zh": ("因为", "所以"),
}


class XCOPATask(MultipleChoiceTask):
    """XCOPA (Ponti et al. 2020), harness ``xcopa_<lang>``: context
    ``premise.strip()[:-1] + " " + connector`` (the last character, normally the period, is
    dropped), connector by ``question`` (``cause``/``effect``); choices ``choice1``/``choice2``
    with a lower-case first letter; target delimiter ``" "``; label 0/1."""

    name = "xcopa"
    languages = tuple(XCOPA_CONNECTORS)
    default_split = "test"
    fields = ("premise", "choice1", "choice2", "question", "label")
    hub_path = "cambridgeltl/xcopa"
    harness_task = "xcopa_"

    def build(self, row, lang, where):
        fix = self.fix()
        premise = str_field(row, "premise", where, fix)
        c1 = str_field(row, "choice1", where, fix)
        c2 = str_field(row, "choice2", where, fix)
        question = str_field(row, "question", where, fix)
        if question not in ("cause", "effect"):
            raise PolypruneError(f"{where}: field 'question' is {question!r}, not 'cause' or 'effect'", fix)
        label = int_field(row, "label", (0, 1), where, fix)
        for f, v in (("choice1", c1), ("choice2", c2)):
            if not v:
                raise PolypruneError(f"{where}: field {f!r} is empty", fix)
        conn = XCOPA_CONNECTORS[lang][0 if question == "cause" else 1]
        ctx = premise.strip()[:-1] + f" {conn}"
        choices = [lower_first(c1), lower_first(c2)]
        return Instance([ctx, ctx], [" " + c for c in choices], choices, label, where,
                        {"premise": premise, "choice1": c1, "choice2": c2, "question": question,
                         "label": label})
