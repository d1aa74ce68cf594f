"""Multilingual zero-shot tasks scored exactly as lm-evaluation-harness 0.4.13 scores them.

Reference: ``methods.md`` section 5 (task templates), section 1.4 (Kim et al.'s whole-prompt
scoring and RankC, Qi et al. 2023), and lm-evaluation-harness 0.4.13: the task YAML/``utils.py``
files of ``xnli``, ``paws-x``, ``xcopa``, ``xstorycloze``, ``xwinograd``;
``ConfigurableTask.construct_requests``/``process_results`` (``lm_eval/api/task.py``);
``LM.loglikelihood``/``_encode_pair`` (``lm_eval/api/model.py``) and ``HFLM.tok_encode``
(``lm_eval/models/huggingface.py``).

How a multiple-choice document becomes numbers (as the harness does it):

1. The task turns a row into an :class:`Instance`: one ``(context, continuation)`` string pair
   per choice. Normally the context is shared and ``continuation = target_delimiter + choice``
   (``" "`` by default, ``""`` for PAWS-X); XWinograd is "multiple input": the contexts differ
   (``sentence[:blank] + option``) and the continuation (the text after the blank) is shared.
2. :func:`encode_pair` tokenizes like ``HFLM``: with an empty context the continuation is
   encoded without special tokens and the context is ``[BOS]`` (else ``[EOS]``), unless the
   continuation already starts with that id; otherwise trailing spaces of the context move to
   the continuation, ``whole = enc(ctx + cont)``, ``ctx_ids = enc(ctx)``,
   ``cont_ids = whole[len(ctx_ids):]``, where ``enc`` is the tokenizer's default encoding
   (adds BOS for Gemma/Llama) unless the string already starts with the decoded BOS.
3. :func:`~polyprune.evaluation.loglikelihoods` sums the continuation log-probabilities; all
   choices of a document form one ``group`` so their shared prefix is run once, and documents
   with the same shared prefix (XNLI's three hypotheses per premise) share one group, so
   ``BOS + premise + ", right?"`` is run once for up to nine requests. The numbers equal the
   per-request computation up to float rounding.
4. ``acc`` = argmax of the sums (first maximum on ties, like ``numpy.argmax``);
   ``acc_norm`` = argmax of ``sum / len(choice.encode("utf-8"))`` (bytes; the harness calls this
   ``acc_bytes``); ``acc_norm_chars`` = argmax of ``sum / len(choice)`` (the harness's
   ``acc_norm``); ``prompt_mean`` = argmax of the mean log-probability of every predicted token
   of the whole prompt (Kim et al. 2024). "choice" is the harness's ``doc_to_choice`` string
   (without the target delimiter; for XWinograd the per-option context).

:func:`evaluate_tasks` runs any mix of these tasks (plus FLORES perplexity ``flores_ppl`` and
few-shot translation ``flores_mt``) over languages, with bootstrap 95% confidence intervals,
RankC between English and each XNLI language, and per-(task, language) error isolation.

Qt-free. Long functions take ``progress`` and stop with :class:`~polyprune.errors.Cancelled`.
"""
from __future__ import annotations

import json
import math
import re
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import Cancelled, PolypruneError
from .evaluation import (XNLI_WORDS, _lcp, _prefix_id, flores_perplexity, iter_jsonl, loglikelihoods,
                         xnli_requests)
from .progress import Progress, ensure
from .results import Result, from_eval_record, new_run_id

__all__ = [
    "Instance",
    "MultipleChoiceTask",
    "XNLITask",
    "PAWSXTask",
    "XCOPATask",
    "XStoryClozeTask",
    "XWinogradTask",
    "CustomTask",
    "TASKS",
    "TASK_ALIASES",
    "METRICS",
    "get_task",
    "load_custom_task",
    "encode_pair",
    "tok_encode",
    "bootstrap_ci",
    "rankc",
    "evaluate_tasks",
]

#: Metrics :func:`evaluate_tasks` computes for multiple-choice tasks.
METRICS = ("acc", "acc_norm", "acc_norm_chars", "prompt_mean")

#: Non-multiple-choice task names handled by :func:`evaluate_tasks`.
FLORES_PPL = "flores_ppl"
FLORES_MT = "flores_mt"


# ------------------------------------------------------------------------------------------
# Tokenization exactly as HFLM
# ------------------------------------------------------------------------------------------
def tok_encode(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """``HFLM.tok_encode`` (lm-evaluation-harness 0.4.13, ``add_bos_token`` unset).

    ``add_special_tokens=None`` uses the tokenizer's default (Gemma and Llama tokenizers add
    BOS), except that a string already starting with the decoded prefix token
    (``tokenizer.decode(bos_or_eos_id)``, e.g. ``"<bos>"``) is encoded without special tokens.

    Returns:
        Token ids (a new list).
    """
    if add_special_tokens is None:
        kwargs = {}
        if text.startswith(_prefix_str(tokenizer)):
            kwargs["add_special_tokens"] = False
    else:
        kwargs = {"add_special_tokens": add_special_tokens}
    return list(tokenizer.encode(text, **kwargs))


def _prefix_str(tokenizer) -> str:
    return tokenizer.decode(_prefix_id(tokenizer))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` of one request, as ``HFLM.loglikelihood`` builds them.

    * Empty context: ``cont = tok_encode(continuation, add_special_tokens=False)``; the context
      is ``[prefix_id]`` (BOS, else EOS) unless ``cont[0] == prefix_id``, in which case the pair
      is ``(cont[:1], cont[1:])``.
    * Otherwise (``LM._encode_pair``): trailing whitespace of the context moves to the start of
      the continuation; ``whole = tok_encode(ctx + cont)``, ``ctx_ids = tok_encode(ctx)``,
      ``cont_ids = whole[len(ctx_ids):]``.

    Deviation (only where the harness would fail): a context that encodes to no ids at all
    (whitespace only, with a tokenizer that adds no BOS) is treated like an empty context.
    """
    if context != "":
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        ctx_ids = tok_encode(tokenizer, context)
        if ctx_ids:
            whole = tok_encode(tokenizer, context + continuation)
            return ctx_ids, whole[len(ctx_ids):]
        continuation = context + continuation
    prefix = _prefix_id(tokenizer)
    cont = tok_encode(tokenizer, continuation, add_special_tokens=False)
    if cont and cont[0] == prefix:
        return cont[:1], cont[1:]
    return [prefix], cont


def _model_max_length(model, tokenizer) -> int:
    """``lm_eval.models.utils.resolve_max_length``: n_positions / max_position_embeddings / n_ctx
    of the (text) config, else the tokenizer's model_max_length, else 2048."""
    cfg = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, attr, None)
        if v is not None:
            return int(v)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml < int(1e29):
        return int(mml)
    return 2048


# ------------------------------------------------------------------------------------------
# Documents
# ------------------------------------------------------------------------------------------
@dataclass
class Instance:
    """One multiple-choice document as the harness sees it.

    Attributes:
        contexts: context string per choice (all equal unless "multiple input").
        continuations: scored string per choice (target delimiter included).
        choices: the harness's ``doc_to_choice`` strings (lengths for ``acc_norm``).
        gold: index of the right choice.
        where: ``"<file>, line <k>"`` (or the hub row) for messages.
        doc: the processed row.
    """

    contexts: list[str]
    continuations: list[str]
    choices: list[str]
    gold: int
    where: str = ""
    doc: dict = field(default_factory=dict)


def _field(row: Mapping, name: str, where: str, fix: str):
    if name not in row:
        raise PolypruneError(f"{where}: field {name!r} is missing", fix)
    return row[name]


def _str_field(row: Mapping, name: str, where: str, fix: str) -> str:
    v = _field(row, name, where, fix)
    if not isinstance(v, str):
        raise PolypruneError(f"{where}: field {name!r} is {_show(v)}, not a string", fix)
    return v


def _int_field(row: Mapping, name: str, allowed: Sequence[int], where: str, fix: str) -> int:
    v = _field(row, name, where, fix)
    x = v
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        x = int(x.strip())
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, int) or x not in allowed:
        raise PolypruneError(f"{where}: field {name!r} is {_show(v)}, out of range "
                             f"(expected one of {', '.join(map(str, allowed))})", fix)
    return x


def _show(v) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


# ------------------------------------------------------------------------------------------
# Tasks
# ------------------------------------------------------------------------------------------
class MultipleChoiceTask:
    """A zero-shot multiple-choice task of lm-evaluation-harness, per language.

    Subclasses set the class attributes and implement :meth:`build`.

    Attributes:
        name: registry name and data folder name (``xnli``).
        aliases: other accepted names / folder names (``paws-x``).
        languages: the dataset's language codes.
        default_split: split used when none is given (file ``<split>.<lang>.jsonl``).
        fields: the row fields the task needs (for messages).
        target_delimiter: string between context and choice (harness ``target_delimiter``).
        hub_path: Hugging Face dataset id (configs named by language).
        hub_splits: our split name -> hub split name.
    """

    name = ""
    aliases: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    default_split = "test"
    fields: tuple[str, ...] = ()
    target_delimiter = " "
    hub_path = ""
    hub_splits: dict[str, str] = {}
    harness_task = ""  # harness task name prefix, e.g. "xnli_" -> xnli_en

    # --- languages ---------------------------------------------------------------------------
    def language(self, lang: str) -> str:
        """Map a language given as the dataset's code, a FLORES-200 code or an English name to
        this task's code (``"fra_Latn"``/``"French"`` -> ``"fr"``; ``"ja"`` -> ``"jp"`` for
        XWinograd).

        Raises:
            PolypruneError: the task has no such language; the supported ones are listed.
        """
        key = str(lang).strip()
        if key.lower() in self.languages:
            return key.lower()
        from .languages import TASK_TO_FLORES, resolve_language
        try:
            flores = resolve_language(key)
        except PolypruneError:
            flores = None
        if flores is not None:
            for code in self.languages:
                if TASK_TO_FLORES.get(code) == flores:
                    return code
        raise PolypruneError(f"{self.name} has no language {lang!r}" + (f" ({flores})" if flores else ""),
                             f"{self.name} supports {', '.join(self.languages)}")

    def available_languages(self, data_dir, split: str | None = None) -> list[str]:
        """Languages with a data file under ``data_dir`` (all languages when ``data_dir`` is
        ``None``, i.e. the hub)."""
        if data_dir is None:
            return list(self.languages)
        out = []
        for lang in self.languages:
            try:
                self.file(data_dir, lang, split)
            except PolypruneError:
                continue
            out.append(lang)
        return out

    # --- documents ---------------------------------------------------------------------------
    def fix(self) -> str:
        return (f"each {self.name} row is a JSON object with fields {', '.join(self.fields)} "
                f"(the published format)")

    def build(self, row: Mapping, lang: str, where: str) -> Instance | None:
        """Validate ``row`` and turn it into an :class:`Instance`; ``None`` drops the row (as the
        harness's ``process_docs`` filter does).

        Raises:
            PolypruneError: a field is missing, has the wrong type, or is out of range (the
                message names ``where`` and the field).
        """
        raise NotImplementedError

    def instance(self, doc: Mapping, lang: str, where: str = "document") -> Instance:
        """:meth:`build` for a single document; a dropped row raises :class:`PolypruneError`."""
        inst = self.build(doc, self.language(lang), where)
        if inst is None:
            raise PolypruneError(f"{where}: {self.name} drops this row (empty sentence)",
                                 "give both sentences")
        return inst

    def encode(self, inst: Instance, tokenizer) -> list[tuple[list[int], list[int]]]:
        """Token-id pairs of an instance (:func:`encode_pair` per choice; the shared context is
        encoded once)."""
        out = []
        memo: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for ctx, cont in zip(inst.contexts, inst.continuations):
            key = (ctx, cont)
            if key not in memo:
                memo[key] = encode_pair(tokenizer, ctx, cont)
            c, t = memo[key]
            out.append((list(c), list(t)))
        return out

    def requests(self, doc: Mapping, lang: str, tokenizer) -> list[tuple[list[int], list[int]]]:
        """``(context_ids, continuation_ids)`` for every choice of ``doc``, encoded as HFLM does.

        Raises:
            PolypruneError: bad document or unknown language.
        """
        return self.encode(self.instance(doc, lang), tokenizer)

    # --- files -------------------------------------------------------------------------------
    def folders(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def file(self, data_dir, lang: str, split: str | None = None) -> Path:
        """``<data_dir>/<task>/<split>.<lang>.jsonl`` (also accepts ``data_dir`` being the task
        folder itself, and the aliases as folder names).

        Raises:
            PolypruneError: no such file (the expected path is named).
        """
        split = split or self.default_split
        root = Path(data_dir).expanduser()
        candidates = [root / f / f"{split}.{lang}.jsonl" for f in self.folders()]
        if root.name in self.folders():
            candidates.insert(0, root / f"{split}.{lang}.jsonl")
        for c in candidates:
            if c.is_file():
                return c
        raise PolypruneError(f"No {self.name} data for language {lang!r}: expected {candidates[0]}",
                             f"put the {split} split of {self.name} in {root / self.name}/{split}.<lang>.jsonl "
                             f"({', '.join(self.fields)}), or choose another split")

    def load(self, data_dir, lang: str, split: str | None = None,
             limit: int | None = None) -> list[Instance]:
        """The first ``limit`` instances of one language (file order, after the harness's
        filters), from local files, or from the hub through ``datasets`` when ``data_dir`` is
        ``None``.

        Raises:
            PolypruneError: unknown language, missing/empty file, bad row (file, line, field).
        """
        lang = self.language(lang)
        split = split or self.default_split
        if limit is not None and limit < 1:
            raise PolypruneError(f"limit must be at least 1, got {limit}", "use a positive --limit or none")
        rows: Iterable[tuple[str, Mapping]]
        if data_dir is None and self.hub_path:
            rows = self._hub_rows(lang, split)
            source = f"{self.hub_path} ({lang}, {split})"
        else:
            path = self.file(data_dir, lang, split)
            rows = ((f"{path}, line {k}", row) for k, row in iter_jsonl(path, f"{self.name} row"))
            source = str(path)
        out = []
        for where, row in rows:
            if limit is not None and len(out) >= limit:
                break
            inst = self.build(row, lang, where)
            if inst is not None:
                out.append(inst)
        if not out:
            raise PolypruneError(f"{source}: no usable {self.name} rows", self.fix())
        return out

    def _hub_rows(self, lang: str, split: str) -> Iterator[tuple[str, Mapping]]:
        try:
            import datasets
            ds = datasets.load_dataset(self.hub_path, lang, split=self.hub_splits.get(split, split))
        except Exception as exc:  # noqa: BLE001 - anything from the hub is a user environment problem
            raise PolypruneError(f"Could not load {self.hub_path} ({lang}, split {split}) from the "
                                 f"Hugging Face hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                 f"check the network, or give a local folder (--data DIR with "
                                 f"{self.name}/{split}.{lang}.jsonl)") from exc
        for i, row in enumerate(ds):
            yield f"{self.hub_path} ({lang}, {split}) row {i + 1}", row


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
        p = _str_field(row, "premise", where, fix)
        h = _str_field(row, "hypothesis", where, fix)
        label = _int_field(row, "label", (0, 1, 2), where, fix)
        q, e, n, c = XNLI_WORDS[lang]
        choices = [f"{p}, {q}? {w}, {h}" for w in (e, n, c)]
        return Instance(["", "", ""], [" " + s for s in choices], choices, label, where,
                        {"premise": p, "hypothesis": h, "label": label})

    def requests(self, doc, lang, tokenizer):
        """As :func:`polyprune.evaluation.xnli_requests` (validated first)."""
        inst = self.instance(doc, lang)
        return xnli_requests(inst.doc, self.language(lang), tokenizer)


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
            v = _field(row, f, where, fix)
            if processed and v in (None, ""):
                return None  # the harness filters such rows out
            if not isinstance(v, str):
                raise PolypruneError(f"{where}: field {f!r} is {_show(v)}, not a string", fix)
            sents.append(v)
        label = _int_field(row, "label", (0, 1), where, fix)
        s1, s2 = sents
        if processed:
            s1 = general_detokenize(s1).strip()
            s2 = general_detokenize(s2).strip()
            if s1.endswith((".", ",", ";")):
                s1 = s1[:-1]
            if not s2:
                raise PolypruneError(f"{where}: field 'sentence2' is blank", fix)
            s2 = _lower_first(s2)
        q, no, yes = PAWSX_WORDS[lang]
        choices = [f"{s1}, {q}? {no}, {s2}", f"{s1}, {q}? {yes}, {s2}"]
        return Instance(["", ""], list(choices), choices, label, where,
                        {"sentence1": s1, "sentence2": s2, "label": label})


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
        premise = _str_field(row, "premise", where, fix)
        c1 = _str_field(row, "choice1", where, fix)
        c2 = _str_field(row, "choice2", where, fix)
        question = _str_field(row, "question", where, fix)
        if question not in ("cause", "effect"):
            raise PolypruneError(f"{where}: field 'question' is {question!r}, not 'cause' or 'effect'", fix)
        label = _int_field(row, "label", (0, 1), where, fix)
        for f, v in (("choice1", c1), ("choice2", c2)):
            if not v:
                raise PolypruneError(f"{where}: field {f!r} is empty", fix)
        conn = XCOPA_CONNECTORS[lang][0 if question == "cause" else 1]
        ctx = premise.strip()[:-1] + f" {conn}"
        choices = [_lower_first(c1), _lower_first(c2)]
        return Instance([ctx, ctx], [" " + c for c in choices], choices, label, where,
                        {"premise": premise, "choice1": c1, "choice2": c2, "question": question,
                         "label": label})


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
        sents = [_str_field(row, f"input_sentence_{k}", where, fix) for k in range(1, 5)]
        q1 = _str_field(row, "sentence_quiz1", where, fix)
        q2 = _str_field(row, "sentence_quiz2", where, fix)
        ans = _int_field(row, "answer_right_ending", (1, 2), where, fix)
        ctx = " ".join(sents)
        return Instance([ctx, ctx], [" " + q1, " " + q2], [q1, q2], ans - 1, where,
                        {**{f"input_sentence_{k + 1}": s for k, s in enumerate(sents)},
                         "sentence_quiz1": q1, "sentence_quiz2": q2, "answer_right_ending": ans})


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
        sentence = _str_field(row, "sentence", where, fix)
        o1 = _str_field(row, "option1", where, fix)
        o2 = _str_field(row, "option2", where, fix)
        ans = _int_field(row, "answer", (1, 2), where, fix)
        if "_" not in sentence:
            raise PolypruneError(f"{where}: field 'sentence' has no blank '_'", fix)
        idx = sentence.index("_")
        contexts = [sentence[:idx] + o1, sentence[:idx] + o2]
        target = " " + sentence[idx + 1:].strip()
        return Instance(contexts, [target, target], list(contexts), ans - 1, where,
                        {"sentence": sentence, "option1": o1, "option2": o2, "answer": str(ans)})


# ------------------------------------------------------------------------------------------
# User-defined tasks
# ------------------------------------------------------------------------------------------
def _template_fields(template: str, what: str) -> list[str]:
    """Field names used by a ``{field}`` template (``str.format`` syntax, ``{{``/``}}`` escape).

    Raises:
        PolypruneError: the template is malformed (unbalanced braces, empty or positional field).
    """
    names = []
    try:
        for _lit, name, _spec, _conv in string.Formatter().parse(template):
            if name is None:
                continue
            base = re.split(r"[.\[]", name, maxsplit=1)[0]
            if not base or base.isdigit():
                raise ValueError(f"empty or positional field {{{name}}}")
            names.append(base)
    except ValueError as exc:
        raise PolypruneError(f"{what} template {template!r} is malformed: {exc}",
                             "name fields as {field}; write literal braces as {{ and }}") from None
    return names


class CustomTask(MultipleChoiceTask):
    """A user-defined multiple-choice task from a JSON Lines file and a small template.

    Every row is scored like a harness ``multiple_choice`` task: context =
    ``context_template.format(**row)``; for each choice, continuation =
    ``target_delimiter + choice``; the gold choice index comes from ``answer_field``.

    Args:
        file: the JSON Lines file; it may contain ``{language}`` (e.g.
            ``"data/mytask/test.{language}.jsonl"``), then the task runs for any language given
            to :func:`evaluate_tasks`; otherwise it has the single language ``language``.
        context_template: e.g. ``"Question: {question}\\nAnswer:"`` (``""`` for no context).
        choices: the name of a field holding a list of strings, or a list of templates (one per
            choice, e.g. ``["{ending1}", "{ending2}"]``).
        answer_field: field with the gold choice: an integer index (``answer_base`` is the first
            index, 0 or 1) or a string equal to one of the choices.
        name: task name in results.
        language: language label when ``file`` has no ``{language}``.
        target_delimiter: string put between context and choice (harness default ``" "``).
        answer_base: index of the first choice in ``answer_field`` (0 or 1).

    Raises:
        PolypruneError: a malformed template (at construction); when loading, a template naming
            a field the row lacks, a missing/invalid answer, or an answer out of range (file, line
            and field are named).
    """

    def __init__(self, file, context_template: str, choices: str | Sequence[str], answer_field: str, *,
                 name: str = "custom", language: str = "und", target_delimiter: str = " ",
                 answer_base: int = 0):
        self.name = name
        self.file_pattern = str(file)
        self.context_template = context_template
        self.target_delimiter = target_delimiter
        self.answer_field = answer_field
        self.answer_base = int(answer_base)
        self.per_language = "{language}" in self.file_pattern
        self.languages = () if self.per_language else (language,)
        self.default_split = ""
        self.ctx_fields = _template_fields(context_template, "context")
        if isinstance(choices, str):
            self.choices_field: str | None = choices
            self.choice_templates: list[str] = []
            self.choice_fields: list[list[str]] = []
        else:
            if not choices:
                raise PolypruneError(f"Custom task {name!r} has no choices",
                                     "give a field name or a list of choice templates")
            self.choices_field = None
            self.choice_templates = list(choices)
            self.choice_fields = [_template_fields(t, f"choice {k + 1}") for k, t in enumerate(choices)]
        self.fields = tuple(dict.fromkeys(self.ctx_fields + sum(self.choice_fields, [])
                                          + ([self.choices_field] if self.choices_field else [])
                                          + [answer_field]))

    def language(self, lang: str) -> str:
        if self.per_language:
            key = str(lang).strip()
            if not key or any(c in key for c in "/\\"):
                raise PolypruneError(f"Invalid language {lang!r} for custom task {self.name!r}",
                                     "use a plain language code")
            return key
        if str(lang).strip() in self.languages:
            return str(lang).strip()
        raise PolypruneError(f"Custom task {self.name!r} has no language {lang!r}",
                             f"it is defined for {self.languages[0]!r} only; put {{language}} in its "
                             "file name to run it per language")

    def available_languages(self, data_dir, split=None) -> list[str]:
        """The single language of a file without ``{language}``; else none (give them)."""
        return [] if self.per_language else list(self.languages)

    def file(self, data_dir, lang, split=None) -> Path:
        """The task's file for ``lang``; a relative path is tried as given, then under
        ``data_dir``."""
        p = Path(self.file_pattern.replace("{language}", lang)).expanduser()
        if not p.is_absolute() and data_dir is not None and not p.exists():
            p = Path(data_dir).expanduser() / p
        if not p.is_file():
            raise PolypruneError(f"Data file of custom task {self.name!r} not found: {p}",
                                 "give the path of a JSON Lines file")
        return p

    def _fill(self, template: str, names: list[str], row: Mapping, where: str, what: str) -> str:
        for n in names:
            if n not in row:
                raise PolypruneError(f"{where}: field {n!r} named by the {what} template is missing",
                                     f"every row needs the fields {', '.join(self.fields)}")
        try:
            return template.format_map(row)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise PolypruneError(f"{where}: the {what} template {template!r} could not be filled ({exc})",
                                 "check the template against the row's fields") from None

    def build(self, row, lang, where):
        ctx = self._fill(self.context_template, self.ctx_fields, row, where, "context")
        if self.choices_field is not None:
            v = _field(row, self.choices_field, where, f"field {self.choices_field!r} must be a list of strings")
            if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v):
                raise PolypruneError(f"{where}: field {self.choices_field!r} is {_show(v)}, "
                                     "not a non-empty list of strings",
                                     f"field {self.choices_field!r} must be a list of choice strings")
            choices = list(v)
        else:
            choices = [self._fill(t, f, row, where, f"choice {k + 1}")
                       for k, (t, f) in enumerate(zip(self.choice_templates, self.choice_fields))]
        fix = (f"field {self.answer_field!r} must be a choice index from {self.answer_base} "
               f"or the text of one of the choices")
        a = _field(row, self.answer_field, where, fix)
        if isinstance(a, str) and not a.strip().lstrip("-").isdigit():
            if a not in choices:
                raise PolypruneError(f"{where}: field {self.answer_field!r} is {_show(a)}, "
                                     "which is none of the choices", fix)
            gold = choices.index(a)
        else:
            allowed = tuple(range(self.answer_base, self.answer_base + len(choices)))
            gold = _int_field(row, self.answer_field, allowed, where, fix) - self.answer_base
        return Instance([ctx] * len(choices), [self.target_delimiter + c for c in choices], choices,
                        gold, where, dict(row))


def load_custom_task(spec) -> CustomTask:
    """A :class:`CustomTask` from a JSON (or YAML) file or a dict with keys ``file``,
    ``context``, ``choices`` (field name or list of templates), ``answer``, and optionally
    ``name``, ``language``, ``target_delimiter``, ``answer_base``. A relative ``file`` is taken
    relative to the spec file's folder.

    Raises:
        PolypruneError: unreadable spec, missing keys, malformed template.
    """
    base = None
    if not isinstance(spec, Mapping):
        p = Path(spec).expanduser()
        if not p.is_file():
            raise PolypruneError(f"Custom task spec not found: {p}",
                                 "give a JSON file with file, context, choices and answer")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml
                spec = yaml.safe_load(text)
            else:
                spec = json.loads(text)
        except Exception as exc:  # noqa: BLE001
            raise PolypruneError(f"{p}: not a valid task spec ({exc})",
                                 "write a JSON object with file, context, choices and answer") from None
        base = p.parent
        if not isinstance(spec, Mapping):
            raise PolypruneError(f"{p}: not a JSON object", "write a JSON object with file, context, choices and answer")
        spec = dict(spec)
        spec.setdefault("name", p.stem)
    missing = [k for k in ("file", "choices", "answer") if k not in spec]
    if missing:
        raise PolypruneError(f"Custom task spec lacks {', '.join(missing)}",
                             "give file, context, choices (field or templates) and answer")
    file = str(spec["file"])
    if base is not None and not Path(file).expanduser().is_absolute():
        file = str(base / file)
    return CustomTask(file, spec.get("context", ""), spec["choices"], spec["answer"],
                      name=spec.get("name", "custom"), language=spec.get("language", "und"),
                      target_delimiter=spec.get("target_delimiter", " "),
                      answer_base=spec.get("answer_base", 0))


#: The built-in multiple-choice tasks by name.
TASKS: dict[str, MultipleChoiceTask] = {t.name: t for t in (XNLITask(), PAWSXTask(), XCOPATask(),
                                                             XStoryClozeTask(), XWinogradTask())}
#: Other accepted names.
TASK_ALIASES: dict[str, str] = {a: t.name for t in TASKS.values() for a in t.aliases}
TASK_ALIASES.update({"perplexity": FLORES_PPL, "ppl": FLORES_PPL, "flores": FLORES_PPL,
                     "translation": FLORES_MT, "mt": FLORES_MT})


def get_task(task) -> MultipleChoiceTask | str:
    """Resolve a task: a :class:`MultipleChoiceTask` is returned as is; a name (or alias) gives
    the registered task, or the string ``"flores_ppl"``/``"flores_mt"``; a path to a ``.json``/
    ``.yaml`` spec gives a :class:`CustomTask`.

    Raises:
        PolypruneError: unknown name (the known ones are listed).
    """
    if isinstance(task, MultipleChoiceTask):
        return task
    name = str(task).strip()
    key = name.lower()
    key = TASK_ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    if key in (FLORES_PPL, FLORES_MT):
        return key
    if name.lower().endswith((".json", ".yaml", ".yml")):
        return load_custom_task(name)
    raise PolypruneError(f"Unknown task {name!r}",
                         "use " + ", ".join([*TASKS, FLORES_PPL, FLORES_MT]) +
                         ", or a custom task spec (.json) with file, context, choices and answer")


# ------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------
def bootstrap_ci(values: Sequence[float], *, iters: int = 1000, seed: int | Sequence[int] = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``.

    Resamples ``len(values)`` values with replacement ``iters`` times (numpy ``default_rng(seed)``,
    so the result is deterministic for a seed) and returns the ``(1-level)/2`` and
    ``(1+level)/2`` percentiles of the resampled means.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no values.

    Raises:
        ValueError: ``iters < 1``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(iters)
    chunk = max(1, min(iters, 2_000_000 // n))
    for s in range(0, iters, chunk):
        k = min(chunk, iters - s)
        means[s:s + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def _rankc_item(p: np.ndarray, q: np.ndarray, w: np.ndarray) -> float:
    Q = p.shape[-1]
    rp = np.argsort(-p, kind="stable")
    rq = np.argsort(-q, kind="stable")
    total = 0.0
    for j in range(1, Q + 1):
        total += w[j - 1] * len(set(rp[:j].tolist()) & set(rq[:j].tolist())) / j
    return total


def rankc_items(en_probs, xx_probs) -> np.ndarray:
    """Per-item RankC (see :func:`rankc`), shape ``[N]``."""
    p = np.asarray(en_probs, dtype=np.float64)
    q = np.asarray(xx_probs, dtype=np.float64)
    if p.ndim == 1:
        p, q = p[None], q[None]
    if p.shape != q.shape or p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"en_probs and xx_probs must both be [N, Q], got {p.shape} and {q.shape}")
    Q = p.shape[1]
    e = np.exp(np.arange(Q - 1, -1, -1, dtype=np.float64))
    w = e / e.sum()
    return np.array([_rankc_item(p[i], q[i], w) for i in range(p.shape[0])])


def rankc(en_probs, xx_probs) -> float:
    """RankC consistency (Qi et al. 2023; methods.md §1.4) between English and language xx.

    For each parallel item with label probabilities ``p`` (English) and ``q`` (xx) over ``Q``
    labels: rank the labels by *descending* probability (ties: lower index first),
    ``P@j = |top_j(p) ∩ top_j(q)| / j`` and ``RankC = Σ_j w_j P@j`` with
    ``w = softmax(Q-1, ..., 0)`` (largest weight on j = 1). Averaged over items.

    Args:
        en_probs, xx_probs: ``[N, Q]`` (or ``[Q]``) label probabilities of parallel items.

    Returns:
        Mean RankC in [0, 1] (1 = same ranking on every item).

    Raises:
        ValueError: shapes differ or are not ``[N, Q]``.
    """
    return float(rankc_items(en_probs, xx_probs).mean())


def _softmax(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    a = np.exp(a - a.max())
    return a / a.sum()


def _seed_for(seed: int, *parts: str) -> list[int]:
    return [int(seed), zlib.crc32("/".join(parts).encode("utf-8"))]


# ------------------------------------------------------------------------------------------
# Runner
# ------------------------------------------------------------------------------------------
def _as_list(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [s.strip() for s in x.split(",") if s.strip()]
    return list(x)


def _score_mc(model, tokenizer, task: MultipleChoiceTask, insts: list[Instance], metrics, *,
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
        key = tuple(fulls[0][:_lcp(fulls)])
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
    limit = _model_max_length(model, tokenizer)
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
            elif m == "acc_norm":
                p = int(np.argmax(ll / np.array([max(len(c.encode("utf-8")), 1) for c in inst.choices], float)))
            elif m == "acc_norm_chars":
                p = int(np.argmax(ll / np.array([max(len(c), 1) for c in inst.choices], float)))
            else:  # prompt_mean
                pm = np.array([res[pm_base + j][0] / max(res[pm_base + j][1], 1) for j in range(k)])
                p = int(np.argmax(pm))
            correct[m].append(1.0 if p == inst.gold else 0.0)
    return {"lls": lls, "correct": correct, "preds": preds, "gold": [i.gold for i in insts]}


def _mean_stderr(x: Sequence[float]) -> tuple[float, float]:
    n = len(x)
    mean = float(np.mean(x))
    if n < 2:
        return mean, float("nan")
    return mean, float(np.std(x, ddof=1) / math.sqrt(n))


def evaluate_tasks(model, tokenizer, tasks, languages, data_dir, *, split: str | None = None,
                   limit: int | None = None, batch_size: int = 16,
                   metrics: Sequence[str] = ("acc", "acc_norm"), bootstrap: int = 1000,
                   seed: int = 0, progress: Progress | None = None, on_error: str = "raise",
                   model_name: str | None = None, run_id: str | None = None,
                   log_samples: bool = False, translation: Mapping[str, Any] | None = None,
                   item_scores: bool = False) -> list[Result]:
    """Evaluate a model on several tasks and languages; one :class:`Result` per number.

    Multiple-choice tasks (:data:`TASKS`, custom tasks): per language, the first ``limit``
    documents of ``<data_dir>/<task>/<split>.<lang>.jsonl`` are scored with
    :func:`~polyprune.evaluation.loglikelihoods` (choices of a document grouped so their shared
    prefix is computed once) and give one row per metric with a bootstrap 95% CI (``extra`` holds
    the harness-style ``stderr``). With XNLI in English and other languages, RankC between
    English and each language on the parallel items is added (metric ``"rankc"``; label
    probabilities = softmax of the three summed log-likelihoods).
    ``"flores_ppl"``: FLORES-200 perplexity (``<data_dir>/flores200/<split>/<code>.<split>``,
    split ``devtest``), metric ``"perplexity"``. ``"flores_mt"``: few-shot translation between
    English and each other language (see :func:`polyprune.generation.flores_translation`),
    metrics ``"chrf++"`` and ``"bleu"``.

    Args:
        model: causal LM (any dtype/device; evaluation runs where it is).
        tokenizer: its tokenizer.
        tasks: names (``"xnli,pawsx"`` or a list), aliases, :class:`MultipleChoiceTask` objects,
            or paths of custom task specs (``.json``).
        languages: codes/names for every task (a list or ``"en,fr"``), a dict ``{task: langs}``,
            or ``None`` for every language of each task that has a file under ``data_dir`` (all
            of them from the hub). A language a task lacks is an error of that
            ``(task, language)``.
        data_dir: folder with one sub-folder per task (``xnli/``, ``pawsx/``, ``flores200/``);
            ``None`` loads multiple-choice data from the Hugging Face hub via ``datasets``.
        split: split name for all tasks (default: each task's, e.g. test for XNLI, dev for
            PAWS-X, eval for XStoryCloze).
        limit: first N documents (sentences) per file, in file order; ``None`` = all.
        batch_size: multiple-choice documents per forward pass (each with all its choices; the
            engine's batch is ``batch_size x`` requests per document, memory stays low because
            no ``[batch, tokens, vocab]`` logits are formed); sentences per pass for
            ``flores_ppl``.
        metrics: subset of :data:`METRICS`.
        bootstrap: bootstrap resamples for the CIs (0 = no CI).
        seed: bootstrap seed (each row derives its own from it and its names).
        progress: overall progress and cancellation.
        on_error: ``"raise"`` (first error stops the run) or ``"record"`` (a failed
            ``(task, language)`` becomes a row with ``metric="error"`` and the message, and the
            run goes on).
        model_name: stored in every result (default: the model's ``name_or_path``).
        run_id: stored in every result (default: :func:`~polyprune.results.new_run_id`).
        log_samples: add per-document ``lls``, ``pred`` and ``gold`` lists to the ``extra`` of
            each ``acc`` row.
        translation: options for ``flores_mt``: ``shots`` (4), ``max_new_tokens`` (64),
            ``max_demo_chars`` (100), ``directions`` (``"both"``, ``"xx-en"`` or ``"en-xx"``),
            ``batch_size``, ``seed``.
        item_scores: add each document's score to ``extra`` (``item_correct``: 0/1 per document
            for accuracies; ``item_nll``/``item_tokens`` per sentence for perplexity), so that two
            models evaluated on the same items can be compared pairwise
            (:func:`polyprune.study.paired_differences`).

    Returns:
        Results in task order, then language order; RankC rows come last.

    Raises:
        PolypruneError: bad arguments (unknown metric, bad ``on_error``); with
            ``on_error="raise"`` also any data problem (file, line and field named).
        Cancelled: on cancel (always raised).
    """
    progress = ensure(progress)
    if on_error not in ("raise", "record"):
        raise PolypruneError(f"on_error must be 'raise' or 'record', got {on_error!r}", "use raise or record")
    metrics = tuple(_as_list(metrics))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise PolypruneError(f"Unknown metric(s) {', '.join(bad) or '(none given)'}",
                             "use " + ", ".join(METRICS))
    if limit is not None and limit < 1:
        raise PolypruneError(f"limit must be at least 1, got {limit}", "use a positive --limit or none")
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

    # resolve tasks and their languages into units; a task that cannot be resolved becomes an
    # error unit in its place, so rows keep the order of ``tasks``
    units: list[tuple[Any, str, str]] = []  # (task or exception, task name, language)
    seen: set[tuple[str, str]] = set()
    for t in _as_list(tasks):
        try:
            task = get_task(t)
        except PolypruneError as exc:
            units.append((exc, str(t), "*"))
            continue
        tname = task if isinstance(task, str) else task.name
        if isinstance(languages, Mapping):
            given = languages.get(tname, languages.get(str(t)))
        else:
            given = languages
        langs = _as_list(given)
        if given is None and not isinstance(task, str):
            langs = task.available_languages(data_dir, split)
        if not langs:
            units.append((PolypruneError(f"No languages given for {tname}",
                                         "give --languages (codes or names)"), tname, "*"))
            continue
        for lang in langs:
            key = (tname, str(lang).strip().lower())
            if key not in seen:  # a task or language named twice is evaluated once
                seen.add(key)
                units.append((task, tname, lang))
    if not units:
        raise PolypruneError("Nothing to evaluate", "give --tasks and --languages")

    n_units = len(units)
    xnli_lls: dict[str, list[list[float]]] = {}
    tr = dict(translation or {})
    for u, (task, tname, lang) in enumerate(units):
        progress.check()
        sub = progress.sub(u / n_units, (u + 1) / n_units)
        code = str(lang)
        if isinstance(task, Exception):
            err_row(tname, code, task)
            continue
        try:
            if task == FLORES_PPL:
                code, rows = _flores_ppl_unit(model, tokenizer, data_dir, lang, split, limit, batch_size, sub,
                                              bootstrap, seed, item_scores)
                for r in rows:
                    r.model, r.run_id = model_name, run_id
                results.extend(rows)
                continue
            if task == FLORES_MT:
                results.extend(_flores_mt_unit(model, tokenizer, data_dir, lang, split, limit, tr, sub,
                                               model_name, run_id))
                continue
            code = task.language(lang)
            insts = task.load(data_dir, code, split, limit)
            scored = _score_mc(model, tokenizer, task, insts, metrics, batch_size=batch_size, progress=sub)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated per (task, language) when recording
            err_row(tname, code, exc)
            continue
        n = len(insts)
        for m in metrics:
            x = scored["correct"][m]
            value, stderr = _mean_stderr(x)
            lo = hi = None
            if bootstrap:
                lo, hi = bootstrap_ci(x, iters=bootstrap, seed=_seed_for(seed, tname, code, m))
            extra: dict[str, Any] = {"stderr": stderr, "split": split or task.default_split}
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
            items = rankc_items([_softmax(v) for v in en[:m]], [_softmax(v) for v in lls[:m]])
            lo = hi = None
            if bootstrap:
                lo, hi = bootstrap_ci(items, iters=bootstrap, seed=_seed_for(seed, "xnli", code, "rankc"))
            results.append(Result("xnli", code, "rankc", float(items.mean()), lo, hi, m, model_name, run_id,
                                  {"reference": "en"}))
    progress.update(1, 1, "evaluation done")
    return results


def _flores_dir(data_dir) -> Path:
    if data_dir is None:
        raise PolypruneError("FLORES-200 is read from local files only",
                             "give --data DIR with flores200/dev and flores200/devtest")
    root = Path(data_dir).expanduser()
    for name in ("flores200", "flores", "flores-200"):
        if (root / name).is_dir():
            return root / name
    return root


def _flores_ppl_unit(model, tokenizer, data_dir, lang, split, limit, batch_size, progress, bootstrap=0, seed=0,
                     item_scores=False):
    from .languages import resolve_language
    code = resolve_language(str(lang))
    recs = flores_perplexity(model, tokenizer, _flores_dir(data_dir), [code], split=split or "devtest",
                             limit=limit, batch_size=batch_size, progress=progress, bootstrap=bootstrap, seed=seed,
                             item_scores=item_scores)
    return code, [from_eval_record(r) for r in recs]


def _flores_mt_unit(model, tokenizer, data_dir, lang, split, limit, opts, progress, model_name, run_id):
    from .generation import flores_translation
    from .languages import resolve_language
    code = resolve_language(str(lang))
    if code == "eng_Latn":
        return []  # English is the pivot of every direction
    directions = opts.get("directions", "both")
    if directions not in ("both", "xx-en", "en-xx"):
        raise PolypruneError(f"Unknown translation directions {directions!r}", "use both, xx-en or en-xx")
    pairs = []
    if directions in ("both", "xx-en"):
        pairs.append((code, "eng_Latn"))
    if directions in ("both", "en-xx"):
        pairs.append(("eng_Latn", code))
    out = []
    for k, (s, t) in enumerate(pairs):
        out.extend(flores_translation(
            model, tokenizer, _flores_dir(data_dir), s, t, shots=int(opts.get("shots", 4)),
            limit=limit if limit is not None else opts.get("limit"), split=split or "devtest",
            batch_size=int(opts.get("batch_size", 8)), max_new_tokens=int(opts.get("max_new_tokens", 64)),
            max_demo_chars=opts.get("max_demo_chars", 100), seed=int(opts.get("seed", 0)),
            progress=progress.sub(k / len(pairs), (k + 1) / len(pairs)), model_name=model_name,
            run_id=run_id))
    return out
