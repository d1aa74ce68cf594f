"""Choosing which tokens to keep for the kept languages (methods.md §10).

Three modes, each returning the old ids to keep (special tokens, byte tokens and the unknown token
are always kept, so every text stays encodable):

* ``script`` — every token that can occur in text written only in the kept scripts (plus the
  shared digits, punctuation and spaces; :mod:`polyprune.slimming.scripts`). Exact: BPE builds a
  text's tokens only from substrings of that text, so on kept-script text every token and every
  merge it fires is kept, and the tokenization is unchanged; a Unigram tokenizer's best
  segmentation uses only substrings too, so it is unchanged.
* ``corpus`` — the tokens the user's corpus is tokenized into, plus for BPE every part of every
  merge that produces a kept token, recursively (a superset of the merges the corpus fires, so the
  corpus is tokenized exactly as before: BPE applies the highest-priority applicable merge at each
  step, and removing merges that never fired does not change that choice).
* ``size`` — the best vocabulary of a given size among the ``script`` tokens: tokens ordered by
  how often the ranking corpus uses them, then by their old id (a BPE tokenizer's ids follow its
  merge order, a proxy for frequency in its training data), each preceded by the parts of the
  merge that first produces it, and the first ``size`` taken. Vocabularies of growing size are
  nested, which makes the trade-off curve (:mod:`polyprune.slimming.report`) a curve.
* ``none`` — keep the vocabulary.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import PolypruneError
from ..progress import Progress, ensure
from .scripts import SCRIPTS, SHARED, TokenScripts, char_scripts, unicode_scripts
from .tokenizer_trim import TokenizerJSON

MODES = ("script", "corpus", "size", "none")


@dataclass
class VocabChoice:
    """The tokens a slimmed model keeps.

    Attributes:
        mode: ``script``, ``corpus``, ``size`` or ``none``.
        keep: old ids kept, ascending (new id = position in this list).
        source_size: tokens of the source tokenizer.
        mandatory: how many of them are special, byte and unknown tokens (kept in every mode).
        scripts: ISO 15924 codes of the kept scripts.
        corpus_tokens: distinct tokens the corpus used (``corpus`` and ``size`` modes).
    """

    mode: str
    keep: list[int]
    source_size: int
    mandatory: int
    scripts: list[str]
    corpus_tokens: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.keep)

    def id_map(self) -> dict[int, int]:
        """``{old id: new id}``."""
        return {old: new for new, old in enumerate(self.keep)}

    def to_dict(self) -> dict:
        return {"mode": self.mode, "size": self.size, "source_size": self.source_size, "mandatory": self.mandatory,
                "scripts": self.scripts, "corpus_tokens": self.corpus_tokens, "notes": self.notes}


def mandatory_ids(tj: TokenizerJSON) -> set[int]:
    """Special added tokens, byte tokens and the unknown token."""
    out = tj.special_ids | tj.byte_ids()
    if tj.unk_id is not None:
        out.add(tj.unk_id)
    return out


def script_ids(tj: TokenizerJSON, classes: list[TokenScripts | None], scripts: list[str]) -> set[int]:
    """Mandatory ids plus every token that can occur in text of the ISO 15924 ``scripts``."""
    kept = unicode_scripts(scripts)
    return mandatory_ids(tj) | {i for i, c in enumerate(classes) if c is not None and c.kept_by(kept)}


def corpus_counts(tokenizer, texts: list[str], progress: Progress | None = None) -> Counter:
    """How often each old id occurs when each text is tokenized alone (no special tokens added)."""
    progress = ensure(progress)
    counts: Counter = Counter()
    step = 256
    for s in range(0, len(texts), step):
        progress.update(s, len(texts), "tokenizing the corpus")
        batch = texts[s:s + step]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


def check_corpus(texts: list[str], scripts: list[str], what: str = "corpus") -> None:
    """Refuse an empty corpus, or one whose letters are mostly outside the kept scripts.

    Raises:
        PolypruneError: no non-empty line; under half of its letters in the kept scripts (the script
            most of them are in is named).
    """
    text = "".join(t for t in texts if t and t.strip())
    if not text.strip():
        raise PolypruneError(f"The {what} is empty", "give a corpus with text in the kept languages (one text per line)")
    kept = unicode_scripts(scripts)
    letters = Counter(s for s in char_scripts(text[:200_000]) if s not in SHARED)
    inside = sum(n for s, n in letters.items() if s in kept)
    total = sum(letters.values())
    if total and inside < total / 2:
        top = letters.most_common(1)[0][0]
        raise PolypruneError(f"The {what} is not written in the kept languages' scripts ({', '.join(scripts)}): "
                             f"{100 * (1 - inside / total):.0f}% of its letters are {top}",
                             "give a corpus in the kept languages, or add its language to the kept languages")


def _size_order(tj: TokenizerJSON, candidates: set[int], counts: Counter, done: set[int]) -> list[int]:
    """Candidates ordered by corpus count then old id, each after the parts of its first merge."""
    splits = tj.splits() if tj.kind == "BPE" else {}
    order: list[int] = []
    seen = set(done)
    for t in sorted(candidates, key=lambda i: (-counts.get(i, 0), i)):
        if t in seen:
            continue
        stack = [(t, False)]
        while stack:
            node, expanded = stack.pop()
            if node in seen:
                continue
            parts = splits.get(node, ())[:1]
            if expanded or not parts:
                seen.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            a, b = parts[0]
            stack.extend((p, False) for p in (b, a) if p not in seen)
    return order


def choose_vocab(tokenizer, tj: TokenizerJSON, mode: str, scripts: list[str], texts: list[str] | None = None,
                 size: int | None = None, classes: list | None = None,
                 progress: Progress | None = None) -> VocabChoice:
    """Choose the tokens to keep (see the module docstring for the modes).

    Args:
        tokenizer: the source Hugging Face tokenizer (used to tokenize the corpus).
        tj: its parsed ``tokenizer.json`` (:func:`~polyprune.slimming.tokenizer_trim.read_tokenizer_json`).
        mode: ``script``, ``corpus``, ``size`` or ``none``.
        scripts: ISO 15924 codes of the kept languages (:data:`~polyprune.slimming.scripts.SCRIPTS`).
        texts: the corpus (``corpus`` mode) or ranking corpus (``size`` mode).
        size: the vocabulary size (``size`` mode).
        classes: :meth:`TokenizerJSON.token_scripts` if already computed.

    Raises:
        PolypruneError: unknown mode or script; an empty corpus or one in other scripts; a size
            smaller than the mandatory tokens or larger than the script vocabulary.
    """
    progress = ensure(progress)
    if mode not in MODES:
        raise PolypruneError(f"Unknown vocabulary mode {mode!r}", f"use one of {', '.join(MODES)}")
    bad = [s for s in scripts if s not in SCRIPTS]
    if bad:
        raise PolypruneError(f"Unknown script {', '.join(bad)}", f"use one of {', '.join(sorted(SCRIPTS))}")
    must = mandatory_ids(tj)
    if mode == "none":
        return VocabChoice(mode, [i for i, p in enumerate(tj.pieces) if p is not None], tj.size, len(must), scripts)
    progress.update(0, 3, "classifying tokens by script")
    classes = classes if classes is not None else tj.token_scripts()
    in_script = script_ids(tj, classes, scripts)
    if mode == "script":
        progress.update(3, 3, "vocabulary chosen")
        return VocabChoice(mode, sorted(in_script), tj.size, len(must), scripts)
    texts = [t for t in (texts or []) if t and t.strip()]
    check_corpus(texts, scripts)
    counts = corpus_counts(tokenizer, texts, progress.sub(0.3, 0.8))
    used = set(counts)
    if mode == "corpus":
        keep = tj.closure(used | must)
        keep |= {i for i in tj.added if i in in_script}  # whole-matched added tokens of the kept scripts
        progress.update(3, 3, "vocabulary chosen")
        return VocabChoice(mode, sorted(keep), tj.size, len(must), scripts, corpus_tokens=len(used))
    if size is None or isinstance(size, bool) or not isinstance(size, int):
        raise PolypruneError("The size mode needs a vocabulary size", "give --vocab-size N")
    if size < len(must):
        raise PolypruneError(f"A vocabulary of {size} tokens is smaller than the {len(must)} special and byte tokens "
                             "every vocabulary keeps",
                             f"give a vocabulary size of at least {len(must)}")
    if size > len(in_script):
        raise PolypruneError(f"A vocabulary of {size} tokens is larger than the {len(in_script)} tokens of the kept "
                             f"scripts ({', '.join(scripts)})",
                             f"give a vocabulary size of at most {len(in_script)}, or use --vocab script")
    order = _size_order(tj, in_script - must, counts, must)
    keep = must | set(order[:size - len(must)])
    progress.update(3, 3, "vocabulary chosen")
    return VocabChoice(mode, sorted(keep), tj.size, len(must), scripts, corpus_tokens=len(used))


def nested_sizes(tj: TokenizerJSON, classes: list, scripts: list[str], counts: Counter) -> tuple[list[int], set[int]]:
    """The ``size``-mode order of all script tokens and the mandatory set: the vocabulary of size
    ``N`` is ``mandatory | set(order[:N - len(mandatory)])`` (used for the trade-off curve)."""
    must = mandatory_ids(tj)
    in_script = script_ids(tj, classes, scripts)
    return _size_order(tj, in_script - must, counts, must), must
