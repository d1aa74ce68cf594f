"""Settings of language subspaces and of Lens, with every default written once.

This module imports only the standard library, :mod:`polyprune.errors` and
:mod:`polyprune.languages` (recipes import it). ``validate()`` raises
:class:`~polyprune.errors.PolypruneError` naming the setting to change for every bad value, and
returns the object with languages resolved to FLORES-200 codes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from polyprune.errors import PolypruneError
from polyprune.languages import resolve_language

#: Lens trains the top 2 of Llama-3-8B's 32 blocks (Zhao et al. 2024, §4.1); other depths scale it.
PAPER_TOP_BLOCKS, PAPER_BLOCKS = 2, 32


def _int(name: str, v, low: int, fix: str, high: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        rng = f"at least {low}" if high is None else f"between {low} and {high}"
        raise PolypruneError(f"{name} must be an integer {rng} (got {v!r})", fix)
    return v


def _float(name: str, v, low: float, fix: str, high: float | None = None, low_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise PolypruneError(f"{name} must be a finite number (got {v!r})", fix)
    v = float(v)
    if v < low or (low_open and v == low) or (high is not None and v > high):
        rng = (f"above {low}" if low_open else f"at least {low}") + (f" and at most {high}" if high is not None else "")
        raise PolypruneError(f"{name} must be {rng} (got {v!r})", fix)
    return v


def _str(name: str, v, fix: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise PolypruneError(f"{name} must be a non-empty text (got {v!r})", fix)
    return v.strip()


def _langs(name: str, v, fix: str) -> list[str]:
    if isinstance(v, str):
        v = [x for x in v.split(",") if x.strip()]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise PolypruneError(f"{name} must be a list of languages (got {v!r})", fix)
    out: list[str] = []
    for x in v:
        code = resolve_language(x)
        if code in out:
            raise PolypruneError(f"{name} names {code} twice", "name every language once")
        out.append(code)
    return out


def _from_dict(cls, d: dict, what: str):
    if not isinstance(d, dict):
        raise PolypruneError(f"The {what} settings must be a mapping (got {type(d).__name__})",
                             f"write the {what} settings as key: value pairs")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise PolypruneError(f"Unknown {what} setting(s): {', '.join(unknown)}",
                             f"use {', '.join(sorted(names))}")
    return cls(**d).validate()


@dataclass
class SubspacesConfig:
    """How language subspaces are measured (Zhao et al. 2024, §3; methods.md §8).

    Attributes:
        languages: K >= 2 FLORES-200 languages (codes, names or two-letter codes).
        central: the language directions are measured from (the paper's English); one of ``languages``.
        texts: where sentences come from: ``flores`` (the data folder's FLORES-200), ``flores:DIR``,
            ``builtin``, or ``file:PATH`` (one sentence a line; ``{lang}`` in PATH is replaced by
            the language code). FLORES is parallel across languages.
        split: FLORES split (``dev`` or ``devtest``).
        samples: the first N sentences of every language (the paper: 300).
        seq_len: each sentence is truncated to this many tokens (the paper: 64).
        batch_size: sentences per forward pass.
    """

    languages: list[str] = field(default_factory=lambda: ["eng_Latn", "swh_Latn", "hin_Deva"])
    central: str = "eng_Latn"
    texts: str = "flores"
    split: str = "dev"
    samples: int = 300
    seq_len: int = 64
    batch_size: int = 8

    def validate(self) -> "SubspacesConfig":
        """Check every value and resolve languages to FLORES-200 codes.

        Raises:
            PolypruneError: fewer than two languages, a language named twice or unknown, a central
                language not among them, a bad number or source.
        """
        self.languages = _langs("languages", self.languages, "give languages as FLORES-200 codes, e.g. eng_Latn,swh_Latn")
        if len(self.languages) < 2:
            raise PolypruneError(f"Language subspaces need at least two languages (got {len(self.languages)})",
                                 "add a second language to languages (--languages eng_Latn,swh_Latn)")
        self.central = resolve_language(_str("central", self.central, "give the central language, e.g. eng_Latn"))
        if self.central not in self.languages:
            raise PolypruneError(f"The central language {self.central} is not among the languages "
                                 f"({', '.join(self.languages)})",
                                 "add it to languages, or choose one of them as the central language")
        self.texts = _str("texts", self.texts, "use flores, flores:DIR, builtin or file:PATH")
        if self.split not in ("dev", "devtest"):
            raise PolypruneError(f"Unknown FLORES split {self.split!r}", "use dev or devtest")
        _int("samples", self.samples, 1, "ask for at least 1 sentence per language")
        _int("seq_len", self.seq_len, 2, "use a length of at least 2 tokens")
        _int("batch_size", self.batch_size, 1, "use a batch size of at least 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SubspacesConfig":
        """Settings from a mapping (a recipe's ``subspaces:`` section), validated.

        Raises:
            PolypruneError: an unknown key or a bad value.
        """
        return _from_dict(cls, d, "subspaces")


@dataclass
class LensConfig:
    """Lens: improve target languages by fine-tuning only the top blocks (Zhao et al. 2024, §3.2-3.3,
    §4.1; methods.md §8).

    Three losses on the last block's hidden states (``hidden_states[-1]`` as transformers returns
    it), each multiplied by its weight:

    * *retain*: the central language's hidden states, averaged over its real tokens, stay those of
      the model before Lens;
    * *align*: the target's last-token projection on the language-agnostic direction equals the
      central language's on the parallel sentence;
    * *separate*: the target's last-token projection on the language-specific subspace moves, from
      where the model before Lens put it, by ``direction_scale`` times its direction (the target's
      mean minus the central language's, in that subspace).

    (The public code calls *align* "push" and *separate* "pull"; these names follow the paper.)

    Attributes:
        central: the central language (the paper: English).
        targets: one or more languages to improve.
        top_blocks: how many of the last blocks are trained; ``None``: the paper's 2 of 32 scaled to
            the model's depth (at least 1). Embeddings, the final norm and the LM head stay frozen.
        texts: parallel training sentences: ``flores``, ``flores:DIR``, ``builtin``, ``file:PATH``
            with ``{lang}`` (line-aligned files), or ``file:PATH.jsonl|.tsv|.csv`` with one column
            per language code.
        split: FLORES split of the training sentences.
        samples: training examples (parallel rows; the paper: 200).
        seq_len: training sentences are truncated to this many tokens.
        space_languages: further languages for the subspaces (besides central and targets).
        space_texts: sentences for the subspaces (``None``: ``texts``); space_split, space_samples,
            space_seq_len: as in :class:`SubspacesConfig` (the paper: 300 texts, 64 tokens).
        subspaces: a saved ``subspaces.npz`` to use instead of measuring (must hold central and targets).
        lr, epochs, accumulation, warmup, weight_decay: AdamW with a cosine schedule and linear
            warm-up over that share of the optimizer steps; batch 1 with gradients accumulated over
            ``accumulation`` examples (the paper: 1e-5, 1 epoch, 8, 0.05, 0.1).
        retain_weight, align_weight, separate_weight: loss weights (the paper: 1.0 each).
        direction_scale: how far the separate loss moves the target along its direction (1.0).
        max_grad_norm: gradients are clipped to this total norm before each step (0: no clipping;
            1.0 is the default of the transformers Trainer the public code runs).
        keep_zeros: weights of the trained blocks that are exactly zero stay zero, so a pruned
            model keeps its sparsity (on a dense model this fixes its few exact zeros).
        shuffle, seed: visit the examples in a seeded random order.
        batch_size: sentences per forward pass while measuring the subspaces (training uses batch 1).
    """

    central: str = "eng_Latn"
    targets: list[str] = field(default_factory=lambda: ["swh_Latn"])
    top_blocks: int | None = None
    texts: str = "flores"
    split: str = "dev"
    samples: int = 200
    seq_len: int = 128
    space_languages: list[str] = field(default_factory=list)
    space_texts: str | None = None
    space_split: str = "dev"
    space_samples: int = 300
    space_seq_len: int = 64
    subspaces: str | None = None
    lr: float = 1e-5
    epochs: int = 1
    accumulation: int = 8
    warmup: float = 0.05
    weight_decay: float = 0.1
    retain_weight: float = 1.0
    align_weight: float = 1.0
    separate_weight: float = 1.0
    direction_scale: float = 1.0
    max_grad_norm: float = 1.0
    keep_zeros: bool = True
    shuffle: bool = True
    seed: int = 0
    batch_size: int = 8

    def validate(self) -> "LensConfig":
        """Check every value and resolve languages to FLORES-200 codes.

        Raises:
            PolypruneError: no target, the central language among the targets, a bad number, a
                source or file setting of the wrong type.
        """
        self.central = resolve_language(_str("central", self.central, "give the central language, e.g. eng_Latn"))
        self.targets = _langs("targets", self.targets, "give target languages as FLORES-200 codes, e.g. swh_Latn")
        if not self.targets:
            raise PolypruneError("Lens needs at least one target language", "give --target, e.g. swh_Latn")
        if self.central in self.targets:
            raise PolypruneError(f"The central language {self.central} is also a target",
                                 "choose target languages other than the central language")
        self.space_languages = [c for c in _langs("space_languages", self.space_languages,
                                                  "give further subspace languages as FLORES-200 codes")
                                if c != self.central and c not in self.targets]
        if self.top_blocks is not None:
            _int("top_blocks", self.top_blocks, 1, "train at least the last block (--top-blocks 1)")
        self.texts = _str("texts", self.texts, "use flores, flores:DIR, builtin or file:PATH")
        if self.space_texts is not None:
            self.space_texts = _str("space_texts", self.space_texts, "use flores, flores:DIR, builtin or file:PATH")
        if self.subspaces is not None:
            self.subspaces = _str("subspaces", self.subspaces, "give the path of a subspaces.npz, or none")
        for name in ("split", "space_split"):
            if getattr(self, name) not in ("dev", "devtest"):
                raise PolypruneError(f"Unknown FLORES split {getattr(self, name)!r} for {name}", "use dev or devtest")
        _int("samples", self.samples, 1, "use at least 1 training example (the paper: 200)")
        _int("seq_len", self.seq_len, 2, "use a length of at least 2 tokens")
        _int("space_samples", self.space_samples, 1, "use at least 1 sentence per language for the subspaces")
        _int("space_seq_len", self.space_seq_len, 2, "use a length of at least 2 tokens")
        _int("epochs", self.epochs, 1, "train for at least one epoch")
        _int("accumulation", self.accumulation, 1, "accumulate over at least 1 example")
        _int("batch_size", self.batch_size, 1, "use a batch size of at least 1")
        _int("seed", self.seed, 0, "use a seed of 0 or more")
        _float("lr", self.lr, 0.0, "use a positive learning rate (the paper: 1e-5)", high=1.0, low_open=True)
        _float("warmup", self.warmup, 0.0, "use a warm-up share between 0 and 1 (the paper: 0.05)", high=1.0)
        _float("weight_decay", self.weight_decay, 0.0, "use a weight decay of 0 or more (the paper: 0.1)")
        for name in ("retain_weight", "align_weight", "separate_weight"):
            _float(name, getattr(self, name), 0.0, f"use a {name.replace('_', ' ')} of 0 or more (the paper: 1.0)")
        _float("direction_scale", self.direction_scale, -math.inf, "use a finite number such as 1.0")
        if self.retain_weight == self.align_weight == self.separate_weight == 0:
            raise PolypruneError("Every Lens loss weight is 0, so nothing would be trained",
                                 "give at least one of retain, align and separate weight a positive value")
        _float("max_grad_norm", self.max_grad_norm, 0.0, "use 0 (no clipping) or a positive norm such as 1.0")
        for name in ("shuffle", "keep_zeros"):
            if not isinstance(getattr(self, name), bool):
                raise PolypruneError(f"{name} must be true or false (got {getattr(self, name)!r})", "use true or false")
        return self

    def blocks_for(self, n_blocks: int) -> int:
        """How many top blocks are trained in a model of ``n_blocks`` blocks.

        Raises:
            PolypruneError: ``top_blocks`` larger than the number of blocks.
        """
        if self.top_blocks is None:
            return max(1, round(PAPER_TOP_BLOCKS * n_blocks / PAPER_BLOCKS))
        if self.top_blocks > n_blocks:
            raise PolypruneError(f"top_blocks is {self.top_blocks}, but the model has only {n_blocks} blocks",
                                 f"use --top-blocks between 1 and {n_blocks}")
        return self.top_blocks

    def space_config(self) -> SubspacesConfig:
        """The :class:`SubspacesConfig` of the subspaces Lens measures (central, targets, extras)."""
        return SubspacesConfig(languages=[self.central, *self.targets, *self.space_languages], central=self.central,
                               texts=self.space_texts or self.texts, split=self.space_split,
                               samples=self.space_samples, seq_len=self.space_seq_len,
                               batch_size=self.batch_size).validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LensConfig":
        """Settings from a mapping (a recipe's ``lens:`` section or study step), validated.

        Raises:
            PolypruneError: an unknown key or a bad value.
        """
        return _from_dict(cls, d, "lens")
