"""User-defined multiple-choice tasks: a JSON Lines file and a small template."""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Mapping, Sequence

from ...errors import PolypruneError
from ...fileio import read_settings_file
from .base import Instance, MultipleChoiceTask, field_value, int_field, show

def template_fields(template: str, what: str) -> list[str]:
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
        self.ctx_fields = template_fields(context_template, "context")
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
            self.choice_fields = [template_fields(t, f"choice {k + 1}") for k, t in enumerate(choices)]
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
            v = field_value(row, self.choices_field, where, f"field {self.choices_field!r} must be a list of strings")
            if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v):
                raise PolypruneError(f"{where}: field {self.choices_field!r} is {show(v)}, "
                                     "not a non-empty list of strings",
                                     f"field {self.choices_field!r} must be a list of choice strings")
            choices = list(v)
        else:
            choices = [self._fill(t, f, row, where, f"choice {k + 1}")
                       for k, (t, f) in enumerate(zip(self.choice_templates, self.choice_fields))]
        fix = (f"field {self.answer_field!r} must be a choice index from {self.answer_base} "
               f"or the text of one of the choices")
        a = field_value(row, self.answer_field, where, fix)
        if isinstance(a, str) and not a.strip().lstrip("-").isdigit():
            if a not in choices:
                raise PolypruneError(f"{where}: field {self.answer_field!r} is {show(a)}, "
                                     "which is none of the choices", fix)
            gold = choices.index(a)
        else:
            allowed = tuple(range(self.answer_base, self.answer_base + len(choices)))
            gold = int_field(row, self.answer_field, allowed, where, fix) - self.answer_base
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
        spec = read_settings_file(p, "custom task spec")
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
