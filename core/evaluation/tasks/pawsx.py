"""PAWS-X (Yang et al. 2019) as lm-evaluation-harness 0.4.13's ``paws_<lang>`` (methods.md §5)."""
from __future__ import annotations

import re

from ...errors import PolypruneError
from .base import Instance, MultipleChoiceTask, field_value, int_field, lower_first, show

#: PAWS-X ``(question, no, yes)`` words of lm-evaluation-harness 0.4.13 (``paws_<lang>.yaml``).
PAWSX_WORDS: dict[str, tuple[str, str, str]] = {
    "de": ("richtig", "Nein", "Ja"),
    "en": ("right", "No", "Yes"),
    "es": ("verdad", "No", "Sí"),
    "fr": ("n'est-ce pas", "Non", "Oui"),
    "ja": ("ですね", "いいえ", "はい"),
    "ko": ("맞죠", "아니요", "예"),
    "zh": ("对吧", "不是", "是"),
}
#: Languages whose harness config runs ``utils.process_docs_paraphrases``.
PAWSX_PROCESSED = ("de", "en", "es", "fr")


def general_detokenize(text: str) -> str:
    """lm-evaluation-harness ``paws-x/utils.general_detokenize``."""
    text = text.replace(" n't", "n't")
    text = text.replace(" )", ")")
    text = text.replace("( ", "(")
    text = text.replace('" ', '"')
    text = text.replace(' "', '"')
    return re.sub(r" (['.,])", r"\1", text)


class PAWSXTask(MultipleChoiceTask):
    """PAWS-X (Yang et al. 2019), harness ``paws_<lang>``: empty context, target delimiter ``""``,
    choices ``s1 + ", {Q}? {No}, " + s2`` (label 0) and ``... {Yes} ...`` (label 1).

    For de/en/es/fr the harness's ``process_docs_paraphrases`` applies: rows with an empty (or
    null) sentence are dropped (before ``limit`` counts), both sentences are detokenised and
    stripped, sentence 1 loses a final ``.``, ``,`` or ``;``, sentence 2 starts lower-case.
    ja/ko/zh use the raw sentences."""

    name = "pawsx"
    aliases = ("paws-x", "paws_x", "paws")
    languages = tuple(PAWSX_WORDS)
    default_split = "dev"
    fields = ("sentence1", "sentence2", "label")
    target_delimiter = ""
    hub_path = "google-research-datasets/paws-x"
    hub_splits = {"dev": "validation"}
    harness_task = "paws_"

    def build(self, row, lang, where):
        fix = self.fix()
        processed = lang in PAWSX_PROCESSED
        sents = []
        for f in ("sentence1", "sentence2"):
            v = field_value(row, f, where, fix)
            if processed and v in (None, ""):
                return None  # the harness filters such rows out
            if not isinstance(v, str):
                raise PolypruneError(f"{where}: field {f!r} is {show(v)}, not a string", fix)
            sents.append(v)
        label = int_field(row, "label", (0, 1), where, fix)
        s1, s2 = sents
        if processed:
            s1 = general_detokenize(s1).strip()
            s2 = general_detokenize(s2).strip()
            if s1.endswith((".", ",", ";")):
                s1 = s1[:-1]
            if not s2:
                raise PolypruneError(f"{where}: field 'sentence2' is blank", fix)
            s2 = lower_first(s2)
        q, no, yes = PAWSX_WORDS[lang]
        choices = [f"{s1}, {q}? {no}, {s2}", f"{s1}, {q}? {yes}, {s2}"]
        return Instance(["", ""], list(choices), choices, label, where,
                        {"sentence1": s1, "sentence2": s2, "label": label})
