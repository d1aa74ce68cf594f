"""XWinograd (Tikhonov & Ryabinin 2021) as lm-evaluation-harness 0.4.13's ``xwinograd_<lang>``."""
from __future__ import annotations

from ...errors import PolypruneError
from .base import Instance, MultipleChoiceTask, int_field, str_field

class XWinogradTask(MultipleChoiceTask):
    """XWinograd (Tikhonov & Ryabinin 2021; hub ``Muennighoff/xwinograd``), harness
    ``xwinograd_<lang>``, "multiple input": the blank ``_`` splits ``sentence``; the contexts are
    ``sentence[:blank] + option1`` and ``... + option2``; the shared continuation is
    ``" " + sentence[blank + 1:].strip()``; gold = ``answer - 1`` (answer ``"1"``/``"2"``).
    For ``acc_norm`` the harness's choice strings are the two contexts."""

    name = "xwinograd"
    languages = ("en", "fr", "jp", "pt", "ru", "zh")
    default_split = "test"
    fields = ("sentence", "option1", "option2", "answer")
    hub_path = "Muennighoff/xwinograd"
    harness_task = "xwinograd_"

    def build(self, row, lang, where):
        fix = self.fix()
        sentence = str_field(row, "sentence", where, fix)
        o1 = str_field(row, "option1", where, fix)
        o2 = str_field(row, "option2", where, fix)
        ans = int_field(row, "answer", (1, 2), where, fix)
        if "_" not in sentence:
            raise PolypruneError(f"{where}: field 'sentence' has no blank '_'", fix)
        idx = sentence.index("_")
        contexts = [sentence[:idx] + o1, sentence[:idx] + o2]
        target = " " + sentence[idx + 1:].strip()
        return Instance(contexts, [target, target], list(contexts), ans - 1, where,
                        {"sentence": sentence, "option1": o1, "option2": o2, "answer": str(ans)})


# ------------------------------------------------------------------------------------------
