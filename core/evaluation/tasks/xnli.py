"""XNLI (Conneau et al. 2018) as lm-evaluation-harness 0.4.13's ``xnli_<lang>`` (methods.md §5)."""
from __future__ import annotations

from .base import Instance, MultipleChoiceTask, int_field, str_field

#: Per language ``(question, entailment, neutral, contradiction)`` words of
#: lm-evaluation-harness 0.4.x XNLI prompts (methods.md section 5).
XNLI_WORDS: dict[str, tuple[str, str, str, str]] = {
    "ar": ("صحيح", "نعم", "لذا", "رقم"),
    "bg": ("правилно", "да", "така", "не"),
    "de": ("richtig", "Ja", "Auch", "Nein"),
    "el": ("σωστός", "Ναί", "Έτσι", "όχι"),
    "en": ("right", "Yes", "Also", "No"),
    "es": ("correcto", "Sí", "Asi que", "No"),
    "fr": ("correct", "Oui", "Aussi", "Non"),
    "hi": ("सही", "हाँ", "इसलिए", "नहीं"),
    "ru": ("правильно", "Да", "Так", "Нет"),
    "sw": ("sahihi", "Ndiyo", "Hivyo", "Hapana"),
    "th": ("ถูกต้อง", "ใช่", "ดังนั้น", "ไม่"),
    "tr": ("doğru", "Evet", "Böylece", "Hayır"),
    "ur": ("صحیح", "جی ہاں", "اس لئے", "نہیں"),
    "vi": ("đúng", "Vâng", "Vì vậy", "Không"),
    "zh": ("正确", "是的", "所以", "不是的"),
}


class XNLITask(MultipleChoiceTask):
    """XNLI (Conneau et al. 2018), harness ``xnli_<lang>``: empty context; choices
    ``premise + ", {Q}? {E|N|C}, " + hypothesis``; target delimiter ``" "``; labels 0
    entailment, 1 neutral, 2 contradiction (methods.md §5)."""

    name = "xnli"
    languages = tuple(XNLI_WORDS)
    default_split = "test"
    fields = ("premise", "hypothesis", "label")
    hub_path = "facebook/xnli"
    harness_task = "xnli_"

    def build(self, row, lang, where):
        fix = self.fix()
        p = str_field(row, "premise", where, fix)
        h = str_field(row, "hypothesis", where, fix)
        label = int_field(row, "label", (0, 1, 2), where, fix)
        q, e, n, c = XNLI_WORDS[lang]
        choices = [f"{p}, {q}? {w}, {h}" for w in (e, n, c)]
        return Instance(["", "", ""], [" " + s for s in choices], choices, label, where,
                        {"premise": p, "hypothesis": h, "label": label})
