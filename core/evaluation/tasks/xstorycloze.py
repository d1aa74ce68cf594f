"""XStoryCloze (Lin et al. 2022) as lm-evaluation-harness 0.4.13's ``xstorycloze_<lang>``."""
from __future__ import annotations

from .base import Instance, MultipleChoiceTask, int_field, str_field

class XStoryClozeTask(MultipleChoiceTask):
    """XStoryCloze (Lin et al. 2022), harness ``xstorycloze_<lang>``: context = the four
    input sentences joined by single spaces; choices ``sentence_quiz1``/``sentence_quiz2``;
    target delimiter ``" "``; gold = ``answer_right_ending - 1``."""

    name = "xstorycloze"
    aliases = ("xstory_cloze", "xstory-cloze")
    languages = ("ar", "en", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh")
    default_split = "eval"
    fields = ("input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4",
              "sentence_quiz1", "sentence_quiz2", "answer_right_ending")
    hub_path = "juletxara/xstory_cloze"
    harness_task = "xstorycloze_"

    def build(self, row, lang, where):
        fix = self.fix()
        sents = [str_field(row, f"input_sentence_{k}", where, fix) for k in range(1, 5)]
        q1 = str_field(row, "sentence_quiz1", where, fix)
        q2 = str_field(row, "sentence_quiz2", where, fix)
        ans = int_field(row, "answer_right_ending", (1, 2), where, fix)
        ctx = " ".join(sents)
        return Instance([ctx, ctx], [" " + q1, " " + q2], [q1, q2], ans - 1, where,
                        {**{f"input_sentence_{k + 1}": s for k, s in enumerate(sents)},
                         "sentence_quiz1": q1, "sentence_quiz2": q2, "answer_right_ending": ans})
