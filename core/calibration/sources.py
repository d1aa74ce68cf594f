"""Calibration sources: monolingual text, translation demonstrations, multilingual mixes, raw text.

Which calibration data keeps a pruned model good in other languages is the question of Kim et al.
(2024; methods.md §1) and Kurz et al. (2024; §6). Each builder returns a
:class:`~polyprune.calibration.tokenized.CalibrationSet`; :func:`polyprune.calibration.build` picks the
builder from a spec (see :mod:`polyprune.calibration.specs`).

* monolingual: FLORES-200 text in one language, ``shots`` consecutive sentences per sample, joined
  by a space (``style: text``, as Kurz et al.) or as Kim et al.'s monolingual demonstrations
  (``style: demo``);
* translation: Kim et al.'s translation demonstrations xx↔pivot for one or more languages;
* mix: monolingual samples in given proportions (Multilingual Brain Surgeon, §6); the languages
  read *disjoint* FLORES lines, so a mix is not a set of translations of the same sentences;
* text: the first ``samples`` non-empty lines of a file, each one sample;
* demos: the demonstration settings of a recipe (:class:`~polyprune.recipe.DemoConfig`).
"""
from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

from ..datasets import read_text_lines, resolve_source, sentences
from ..errors import PolypruneError
from ..languages import language_name, resolve_language
from ..recipe import DemoConfig, validate_lengths
from .prompts import build_prompts
from .tokenized import CalibrationSet, tokenize

STYLES = ("text", "demo")
SUM_TOLERANCE = 1e-6


def read_calibration_text(path: str | Path, samples: int) -> list[str]:
    """The first ``samples`` non-empty lines of a text file, each used verbatim as one sample.

    Raises:
        PolypruneError: missing, empty or non-UTF-8 file, a folder, or fewer non-empty lines than
            ``samples``.
    """
    p = Path(path).expanduser()
    lines = read_text_lines(p, samples, what="Calibration text file")
    if not lines:
        raise PolypruneError(f"Calibration text file {p} has no non-empty lines", "give a file with one sample per line")
    if len(lines) < samples:
        raise PolypruneError(f"{p} has {len(lines)} non-empty lines but {samples} samples were requested",
                             f"use {len(lines)} samples or add lines")
    return lines


def file_fingerprint(path: str | Path) -> dict:
    """``{"file", "bytes", "sha256"}`` of a file: what reports record of raw calibration text
    (never the text itself, which may be private)."""
    p = Path(path).expanduser()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"file": str(p), "bytes": p.stat().st_size, "sha256": h.hexdigest()}


def largest_remainder(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` into integers proportional to ``weights`` (Hamilton's method).

    Every key gets ``floor(w · total)``; the remaining units go to the largest fractional parts
    (ties: the order of ``weights``). The counts sum to ``total``.
    """
    s = sum(weights.values())
    quotas = {k: w / s * total for k, w in weights.items()} if s > 0 else {k: 0.0 for k in weights}
    counts = {k: int(math.floor(q)) for k, q in quotas.items()}
    rest = total - sum(counts.values())
    order = sorted(weights, key=lambda k: -(quotas[k] - counts[k]))  # stable: ties keep the given order
    for k in order[:rest]:
        counts[k] += 1
    return counts


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------
def _too_small(what: str, have: int, samples: int, shots: int, need: int, fix_extra: str = "") -> PolypruneError:
    if have == 0:
        return PolypruneError(f"{what} is empty", "choose a language or file that has text" + fix_extra)
    return PolypruneError(f"{what} has {have} sentences, but {samples} samples x {shots} sentences need {need}",
                          f"use at most {have // shots} samples at {shots} sentences each, fewer shots, "
                          f"or a larger source (a FLORES-200 folder has 997 dev sentences per language){fix_extra}")


def _monolingual_texts(sents: list[str], lang: str, samples: int, shots: int, style: str, eos: str,
                       offset: int, order: list[int]) -> tuple[list[str], list[list[int]]]:
    name = language_name(lang)
    texts, used = [], []
    for n in range(samples):
        idx = order[offset + n * shots: offset + (n + 1) * shots]
        if style == "demo":
            texts.append("".join(f"{name}: {sents[i]}{eos}" for i in idx))
        else:
            texts.append(" ".join(sents[i] for i in idx))
        used.append(idx)
    return texts, used


def monolingual(tokenizer, lang: str, samples: int = 32, seq_len: int = 256, shots: int = 4,
                source: str = "auto", split: str = "dev", style: str = "text", shuffle: bool = False,
                seed: int = 0) -> CalibrationSet:
    """Monolingual calibration set: ``samples`` samples of ``shots`` consecutive sentences each.

    Args:
        tokenizer: the model's tokenizer.
        lang: FLORES-200 code (names and two-letter codes are resolved).
        samples: number of samples N.
        seq_len: calibration length in tokens (truncation; padding is masked).
        shots: sentences per sample.
        source: ``auto``, ``flores``, ``flores:DIR``, ``builtin`` or ``hub[:DATASET]``.
        split: FLORES split (``dev``).
        style: ``text`` (sentences joined by spaces) or ``demo`` (``"{Language}: {s}{eos}"`` each).
        shuffle, seed: draw sentences in a seeded random order instead of file order.

    Raises:
        PolypruneError: fewer than ``samples x shots`` sentences (the count is named), bad style.
    """
    validate_lengths(samples, seq_len, shots)
    if style not in STYLES:
        raise PolypruneError(f"Unknown monolingual style {style!r}", "use text or demo")
    lang = resolve_language(lang)
    src = resolve_source(source)
    sents = sentences(src, lang, split)
    need = samples * shots
    if len(sents) < need:
        raise _too_small(f"The {lang} text of {src}", len(sents), samples, shots, need)
    order = list(range(len(sents)))
    if shuffle:
        random.Random(seed).shuffle(order)
    texts, used = _monolingual_texts(sents, lang, samples, shots, style, tokenizer.eos_token or "", 0, order)
    meta = {"kind": "monolingual", "lang": lang, "source": src, "split": split, "shots": shots, "style": style,
            "shuffle": shuffle, "seed": seed, "sentence_indices": used}
    return tokenize(texts, tokenizer, seq_len, meta)


def translation(tokenizer, langs: list[str] | str, samples: int = 32, seq_len: int = 256, shots: int = 4,
                direction: str = "both", pivot: str = "eng_Latn", source: str = "auto", split: str = "dev",
                shuffle: bool = False, seed: int = 0) -> CalibrationSet:
    """Translation demonstrations xx↔pivot (Kim et al. 2024, methods.md §1.3) for one or more languages.

    ``direction``: ``forward`` = xx→pivot, ``reverse`` = pivot→xx, ``both`` = alternating. With several
    languages the samples are split equally by largest remainder (``meta["counts"]``).

    Raises:
        PolypruneError: too few pairs for a language (the count is named), unknown language/direction.
    """
    validate_lengths(samples, seq_len, shots)
    langs = [langs] if isinstance(langs, str) else list(langs)
    if not langs:
        raise PolypruneError("A translation calibration source needs at least one language", "give langs: [fra_Latn]")
    langs = [resolve_language(x) for x in langs]
    pivot = resolve_language(pivot)
    if pivot in langs:
        raise PolypruneError(f"Translation from {pivot} into itself", f"choose languages other than the pivot {pivot}")
    src = resolve_source(source)
    counts = largest_remainder({x: 1.0 for x in langs}, samples)
    texts, used = [], {}
    for x in langs:
        if not counts[x]:
            continue
        cfg = DemoConfig(source=src, src=x, tgt=pivot, direction=direction, shots=shots, samples=counts[x],
                         seq_len=seq_len, split=split, shuffle=shuffle, seed=seed)
        t, u = build_prompts(cfg, eos=tokenizer.eos_token or "")
        texts += t
        used[x] = u
    meta = {"kind": "translation", "langs": langs, "pivot": pivot, "direction": direction, "source": src,
            "split": split, "shots": shots, "shuffle": shuffle, "seed": seed, "counts": counts,
            "pair_indices": used}
    return tokenize(texts, tokenizer, seq_len, meta)


def check_proportions(proportions: dict[str, float]) -> dict[str, float]:
    """Resolve the languages of a mix and check its proportions.

    Raises:
        PolypruneError: empty mix, a negative or non-numeric share, a repeated language, or shares
            that do not sum to 1 within 1e-6 (the sum is named).
    """
    if not isinstance(proportions, dict) or not proportions:
        raise PolypruneError("A mix needs proportions per language",
                             "write proportions: {eng_Latn: 0.5, fra_Latn: 0.25, swh_Latn: 0.25}")
    out: dict[str, float] = {}
    for k, v in proportions.items():
        code = resolve_language(k)
        if code in out:
            raise PolypruneError(f"{code} appears twice in the mix", "give each language once")
        try:
            p = float(v)
        except (TypeError, ValueError):
            raise PolypruneError(f"The share of {k} in the mix is {v!r}, not a number", "write shares such as 0.25") from None
        if not (p >= 0) or math.isinf(p):
            raise PolypruneError(f"The share of {k} in the mix is {p}", "shares must be between 0 and 1")
        out[code] = p
    total = sum(out.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise PolypruneError(f"The mix proportions sum to {total:.6g}, not 1",
                             "make the shares add up to 1, e.g. {eng_Latn: 0.5, fra_Latn: 0.25, swh_Latn: 0.25}")
    return out


def mix(tokenizer, proportions: dict[str, float], samples: int = 32, seq_len: int = 256, shots: int = 4,
        source: str = "auto", split: str = "dev", style: str = "text", shuffle: bool = False,
        seed: int = 0) -> CalibrationSet:
    """Multilingual mix of monolingual samples in given proportions (Multilingual Brain Surgeon, §6).

    Sample counts per language by largest remainder (``meta["counts"]``); languages use disjoint
    sentence lines (see the module docstring); samples are grouped by language in the given order.

    Raises:
        PolypruneError: see :func:`check_proportions`; a language with too few sentences.
    """
    validate_lengths(samples, seq_len, shots)
    if style not in STYLES:
        raise PolypruneError(f"Unknown monolingual style {style!r}", "use text or demo")
    props = check_proportions(proportions)
    counts = largest_remainder(props, samples)
    src = resolve_source(source)
    texts, used, offset = [], {}, 0
    for lang, c in counts.items():
        if not c:
            continue
        sents = sentences(src, lang, split)
        need = offset + c * shots
        if len(sents) < need:
            raise _too_small(f"The {lang} text of {src}", len(sents), c, shots, need,
                             f" (the mix reads lines {offset}..{need - 1} of {lang}, after the lines of the languages before it)")
        order = list(range(len(sents)))
        if shuffle:
            random.Random(seed).shuffle(order)
        t, u = _monolingual_texts(sents, lang, c, shots, style, tokenizer.eos_token or "", offset, order)
        texts += t
        used[lang] = u
        offset += c * shots
    meta = {"kind": "mix", "proportions": props, "counts": counts, "source": src, "split": split,
            "shots": shots, "style": style, "shuffle": shuffle, "seed": seed, "sentence_indices": used}
    return tokenize(texts, tokenizer, seq_len, meta)


def text(tokenizer, file: str | Path, samples: int = 32, seq_len: int = 256) -> CalibrationSet:
    """Raw text: the first ``samples`` non-empty lines of ``file``, one sample each.

    Raises:
        PolypruneError: missing or empty file, or fewer lines than ``samples`` (the count is named).
    """
    validate_lengths(samples, seq_len)
    lines = read_calibration_text(file, samples)
    return tokenize(lines, tokenizer, seq_len, {"kind": "text", **file_fingerprint(file)})


# --------------------------------------------------------------------------------------------


def demos(tokenizer, cfg: DemoConfig) -> CalibrationSet:
    """Kim et al.'s demonstrations as configured in a recipe (:class:`~polyprune.recipe.DemoConfig`).

    Raises:
        PolypruneError: see :func:`polyprune.calibration.prompts.build_prompts`.
    """
    texts, used = build_prompts(cfg, eos=tokenizer.eos_token or "")
    meta = {"kind": "monolingual" if cfg.monolingual else "translation", "source": cfg.source,
            "src": resolve_language(cfg.src), "tgt": resolve_language(cfg.tgt), "direction": cfg.direction,
            "shots": cfg.shots, "template": cfg.template, "split": cfg.split,
            "shuffle": cfg.shuffle, "seed": cfg.seed, "pair_indices": used}
    return tokenize(texts, tokenizer, cfg.seq_len, meta)
