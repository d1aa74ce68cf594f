"""Multiple-choice tasks scored exactly as lm-evaluation-harness 0.4.13 scores them: the base.

Reference: ``methods.md`` section 5 (task templates) and lm-evaluation-harness 0.4.13:
``ConfigurableTask.construct_requests``/``process_results`` (``lm_eval/api/task.py``),
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
3. :func:`~polyprune.evaluation.engine.loglikelihoods` sums the continuation log-probabilities
   (see :mod:`polyprune.evaluation.runner` for how documents share prefixes).
4. ``acc`` = argmax of the sums (first maximum on ties, like ``numpy.argmax``);
   ``acc_norm`` = argmax of ``sum / len(choice)`` (characters, the harness's ``acc_norm``);
   ``acc_bytes`` = argmax of ``sum / len(choice.encode("utf-8"))`` (the harness's
   ``acc_bytes``); ``prompt_mean`` = argmax of the mean log-probability of every predicted token
   of the whole prompt (Kim et al. 2024). "choice" is the harness's ``doc_to_choice`` string
   (without the target delimiter; for XWinograd the per-option context).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from ...datasets import iter_jsonl
from ...errors import PolypruneError
from ...languages import TASK_TO_FLORES, resolve_language
from ..engine import prefix_id


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
    return tokenizer.decode(prefix_id(tokenizer))


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
    prefix = prefix_id(tokenizer)
    cont = tok_encode(tokenizer, continuation, add_special_tokens=False)
    if cont and cont[0] == prefix:
        return cont[:1], cont[1:]
    return [prefix], cont


def model_max_length(model, tokenizer) -> int:
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


def field_value(row: Mapping, name: str, where: str, fix: str):
    if name not in row:
        raise PolypruneError(f"{where}: field {name!r} is missing", fix)
    return row[name]


def str_field(row: Mapping, name: str, where: str, fix: str) -> str:
    v = field_value(row, name, where, fix)
    if not isinstance(v, str):
        raise PolypruneError(f"{where}: field {name!r} is {show(v)}, not a string", fix)
    return v


def int_field(row: Mapping, name: str, allowed: Sequence[int], where: str, fix: str) -> int:
    v = field_value(row, name, where, fix)
    x = v
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        x = int(x.strip())
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, int) or x not in allowed:
        raise PolypruneError(f"{where}: field {name!r} is {show(v)}, out of range "
                             f"(expected one of {', '.join(map(str, allowed))})", fix)
    return x


def show(v) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


# ------------------------------------------------------------------------------------------
# Tasks

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
        else:  # the task's own folder given as the data folder
            candidates.append(root / f"{split}.{lang}.jsonl")
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
