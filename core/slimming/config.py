"""Settings of a slimming run (one dataclass, every default written once here).

Imports only the standard library, :mod:`polyprune.errors` and :mod:`polyprune.languages`, so
recipes can hold a ``slim:`` section (:meth:`SlimConfig.from_dict` / :meth:`SlimConfig.to_dict`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..errors import PolypruneError
from ..languages import resolve_language

VOCAB_MODES = ("script", "corpus", "size", "none")
DTYPES = ("float32", "bfloat16", "float16")
GGUF_TYPES = ("F16", "BF16", "Q8_0")
TASKS = ("xnli", "pawsx", "xcopa", "xstorycloze", "xwinograd")


def _err(name: str, value, want: str) -> PolypruneError:
    return PolypruneError(f"The slimming setting {name} must be {want} (got {value!r})", f"set {name} to {want}")


@dataclass
class SlimConfig:
    """Settings of :func:`polyprune.slimming.run.slim` (CLI ``polyprune slim``, the Slim panel).

    Attributes:
        keep: languages to keep (FLORES-200 codes, names or two-letter codes), e.g.
            ``["eng_Latn", "swh_Latn"]``.
        vocab: ``script`` (every token of the kept scripts; exact on text in them), ``corpus`` (the
            tokens ``corpus`` needs; exact on it), ``size`` (the best ``vocab_size`` tokens) or
            ``none`` (keep the vocabulary).
        corpus: text for ``corpus``/``size`` and block influence: ``flores`` (the data folder's
            FLORES-200 dev split of each kept language), ``flores:DIR``, ``file:PATH`` or a file path
            (one text per line; ``{lang}`` in the path is replaced by each language's code).
        corpus_sentences: sentences per language read from the corpus (``None``: all).
        vocab_size: tokens to keep in ``size`` mode.
        remove_blocks: how many of the least influential blocks (ShortGPT) to remove.
        influence_sentences: sentences per kept language for block influence.
        heads: head removal (hook for ``polyprune.heads``; ``None`` until connected).
        dtype: export dtype, ``float32``, ``bfloat16`` or ``float16``.
        gguf: also write a GGUF file (``F16``, ``BF16`` or ``Q8_0``), or ``None``.
        eval_sentences: held-out FLORES devtest sentences per kept language for the sentence NLL
            before and after (0: skip).
        tasks: zero-shot tasks to evaluate before and after (``xnli``, ...), on the kept languages
            each task has.
        task_limit: documents per task and language.
        translation: evaluate few-shot FLORES translation (kept language <-> English) before and after.
        translation_limit: sentences per translation direction.
        speed: measure generation speed (tokens/s) before and after.
        speed_tokens: new tokens per speed run; speed_runs: runs (the median is reported).
        curve_sizes: vocabulary sizes of the trade-off curve (``None``: eight sizes from small to the
            script vocabulary).
        data: the data folder (``None``: ``$POLYPRUNE_DATA`` or ``shared/data``).
        bootstrap: bootstrap resamples for intervals; seed: their seed.
        out: the output folder; overwrite: replace an existing Polyprune output there.
    """

    keep: list[str] = field(default_factory=list)
    vocab: str = "script"
    corpus: str = "flores"
    corpus_sentences: int | None = None
    vocab_size: int | None = None
    remove_blocks: int = 0
    influence_sentences: int = 32
    heads: object | None = None
    dtype: str = "float32"
    gguf: str | None = None
    eval_sentences: int = 200
    tasks: list[str] = field(default_factory=list)
    task_limit: int = 200
    translation: bool = False
    translation_limit: int = 50
    speed: bool = True
    speed_tokens: int = 64
    speed_runs: int = 3
    curve_sizes: list[int] | None = None
    data: str | None = None
    bootstrap: int = 1000
    seed: int = 0
    out: str | None = None
    overwrite: bool = False

    def languages(self) -> list[str]:
        """The kept languages as FLORES-200 codes, in order, without repeats.

        Raises:
            PolypruneError: an unknown language (close matches suggested).
        """
        out: list[str] = []
        for item in self.keep:
            code = resolve_language(str(item))
            if code not in out:
                out.append(code)
        return out

    def validate(self) -> "SlimConfig":
        """Check every setting (types too); return ``self``.

        Raises:
            PolypruneError: naming the setting and the fix.
        """
        if isinstance(self.keep, str):
            self.keep = [s.strip() for s in self.keep.split(",") if s.strip()]
        if not isinstance(self.keep, list) or not self.keep or not all(isinstance(s, str) for s in self.keep):
            raise PolypruneError("No languages to keep were given", "give --keep with FLORES codes, e.g. eng_Latn,swh_Latn")
        self.languages()
        if self.vocab not in VOCAB_MODES:
            raise _err("vocab", self.vocab, " or ".join(VOCAB_MODES))
        if not isinstance(self.corpus, str) or not self.corpus.strip():
            raise _err("corpus", self.corpus, "flores, flores:DIR, file:PATH or a file path")
        for name in ("corpus_sentences", "vocab_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise _err(name, v, "a whole number of at least 1")
        if self.vocab == "size" and self.vocab_size is None:
            raise PolypruneError("The size vocabulary mode needs a vocabulary size", "give --vocab-size N")
        for name, low in (("remove_blocks", 0), ("influence_sentences", 1), ("eval_sentences", 0), ("task_limit", 1),
                          ("translation_limit", 1), ("speed_tokens", 1), ("speed_runs", 1), ("bootstrap", 0),
                          ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise _err(name, v, f"a whole number of at least {low}")
        if self.dtype not in DTYPES:
            raise _err("dtype", self.dtype, " or ".join(DTYPES))
        if self.gguf is not None:
            g = str(self.gguf).upper()
            if g in ("", "NONE", "OFF"):
                self.gguf = None
            elif g not in GGUF_TYPES:
                raise _err("gguf", self.gguf, " or ".join(GGUF_TYPES) + " (or none)")
            else:
                self.gguf = g
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not isinstance(self.tasks, list):
            raise _err("tasks", self.tasks, "a list of " + ", ".join(TASKS))
        if self.curve_sizes is not None:
            if isinstance(self.curve_sizes, str):
                try:
                    self.curve_sizes = [int(x) for x in self.curve_sizes.split(",") if x.strip()]
                except ValueError:
                    raise _err("curve_sizes", self.curve_sizes, "whole numbers, e.g. 20000,50000") from None
            if not isinstance(self.curve_sizes, list) or not self.curve_sizes or any(
                    isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in self.curve_sizes):
                raise _err("curve_sizes", self.curve_sizes, "a list of whole numbers of at least 1")
        for name in ("translation", "speed", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise _err(name, getattr(self, name), "true or false")
        for name in ("data", "out"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise _err(name, v, "a path")
        return self

    def to_dict(self) -> dict:
        """Strict-JSON settings (for recipes and the report)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SlimConfig":
        """Settings from a dict (a recipe's ``slim:`` section), validated.

        Raises:
            PolypruneError: an unknown key or a bad value.
        """
        if not isinstance(d, dict):
            raise PolypruneError("The slim settings must be a mapping", "write slim: as key: value lines")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PolypruneError(f"Unknown slim setting(s) {', '.join(unknown)}", f"use {', '.join(sorted(names))}")
        return cls(**d).validate()
