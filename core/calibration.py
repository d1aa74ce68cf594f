"""Calibration sources: monolingual text, translation demonstrations, multilingual mixes, raw text.

Which calibration data keeps a pruned model good in other languages is the question of Kim et al.
(2024; methods.md §1) and Kurz et al. (2024; §6). This module builds every kind of calibration set
they compare as a :class:`~polyprune.demos.CalibrationSet`, from a small *spec* language used by
studies (:mod:`polyprune.study`) and recipes:

* ``{"kind": "monolingual", "lang": "eng_Latn"}`` — FLORES-200 text in one language. Each sample is
  ``shots`` consecutive sentences (default 4, as Kim et al.'s demonstrations) joined by a space
  (``style: text``, plain running text as Kurz et al. use), or Kim et al.'s monolingual
  demonstrations ``"{Language}: {sentence}{eos}" x shots`` (``style: demo``). Samples longer than
  ``seq_len`` tokens are truncated, shorter ones padded and masked.
* ``{"kind": "translation", "langs": ["fra_Latn"], "direction": "both", "pivot": "eng_Latn"}`` —
  Kim et al.'s translation demonstrations (:func:`polyprune.demos.build_prompts`): ``forward`` is
  xx→pivot, ``reverse`` pivot→xx, ``both`` alternates. Several languages share the samples equally
  (largest remainder).
* ``{"kind": "mix", "proportions": {"eng_Latn": 0.5, "fra_Latn": 0.25, "swh_Latn": 0.25}}`` —
  monolingual samples in given proportions, as Multilingual Brain Surgeon does (§6). Proportions
  must be non-negative and sum to 1 (within 1e-6); sample counts are allocated by the largest
  remainder method and recorded in ``meta["counts"]``. The languages read *disjoint* FLORES lines
  (language k starts after the lines used by languages 0..k-1), so a mix is not a set of
  translations of the same sentences.
* ``{"kind": "text", "file": "code.txt"}`` — the first ``samples`` non-empty lines of a file, each
  one sample (:func:`polyprune.demos.read_calibration_text`).

Common keys (defaults from the study or :data:`DEFAULTS`): ``samples``, ``seq_len``, ``shots``,
``source`` (``auto`` = the FLORES-200 folder of the data directory when there is one, else the
built-in parallel set; ``flores`` = that folder or an error; ``flores:DIR``; ``builtin``;
``hub[:DATASET]``), ``split`` (``dev``), ``shuffle``/``seed`` and ``label`` (the short name used in
tables; made from the spec when absent: ``translation fra↔eng``, ``mono eng``,
``mix eng50 fra25 swh25``, ``text code.txt``).

Every builder raises :class:`~polyprune.errors.PolypruneError` for an empty or too-small source
(saying how many sentences or lines there are), unknown languages, bad proportions or unknown keys.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from .demos import (DemoConfig, CalibrationSet, build_prompts, builtin_pairs, hub_pairs, read_calibration_text,
                    read_flores, tokenize, validate_lengths)
from .errors import PolypruneError

KINDS = ("monolingual", "translation", "mix", "text")
STYLES = ("text", "demo")
DEFAULTS = {"samples": 32, "seq_len": 256, "shots": 4, "source": "auto", "split": "dev",
            "shuffle": False, "seed": 0}
_COMMON = set(DEFAULTS) | {"kind", "label"}
_KEYS = {
    "monolingual": _COMMON | {"lang", "style"},
    "translation": _COMMON | {"langs", "lang", "direction", "pivot"},
    "mix": _COMMON | {"proportions", "style"},
    "text": _COMMON | {"file"},
}
SUM_TOLERANCE = 1e-6


def _lang(code: str) -> str:
    from .languages import resolve_language
    return resolve_language(code)


def _name(code: str) -> str:
    from .languages import language_name
    return language_name(code)


def short_code(code: str) -> str:
    """``fra_Latn`` → ``fra``; the full code where the language has several scripts (``zho_Hant``)."""
    from .languages import FLORES_LANGUAGES
    iso = code.split("_")[0]
    same = [c for c in FLORES_LANGUAGES if c.split("_")[0] == iso]
    return code if len(same) > 1 else iso


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
def resolve_source(source: str) -> str:
    """Turn ``auto``/``flores`` into ``flores:DIR`` (or ``builtin`` for ``auto`` without data).

    Raises:
        PolypruneError: ``flores`` without a data directory holding ``flores200/``.
    """
    if source not in ("auto", "flores"):
        return source
    from .recipe import default_data_dir
    data = default_data_dir()
    for cand in ((data / "flores200") if data else None, data):
        if cand is not None and (cand / "dev").is_dir():
            return f"flores:{cand}"
    if source == "flores":
        raise PolypruneError("No FLORES-200 folder found for calibration",
                             "set POLYPRUNE_DATA to a folder with flores200/, or give source: flores:DIR")
    return "builtin"


def sentences(source: str, lang: str, split: str = "dev") -> list[str]:
    """Non-empty sentences of one language from a pair source (``builtin``, ``flores:DIR``, ``hub``).

    Raises:
        PolypruneError: an unknown source, a missing folder/file, a language not in the source.
    """
    source = resolve_source(source)
    kind, _, arg = source.partition(":")
    if kind == "builtin":
        lines = [a for a, _ in builtin_pairs(lang, lang)]
    elif kind == "flores":
        lines = read_flores(arg, lang, split)
    elif kind == "hub":
        lines = [a for a, _ in (hub_pairs(lang, lang, split, arg) if arg else hub_pairs(lang, lang, split))]
    elif Path(source).expanduser().is_dir():
        lines = read_flores(source, lang, split)
    else:
        raise PolypruneError(f"Unknown sentence source {source!r} for monolingual calibration",
                             "use auto, flores, flores:DIR, builtin or hub[:DATASET] (for your own text use kind: text)")
    return [s.strip() for s in lines if s.strip()]


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
    name = _name(lang)
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
    lang = _lang(lang)
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
    langs = [_lang(x) for x in langs]
    pivot = _lang(pivot)
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
        code = _lang(k)
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
    return tokenize(lines, tokenizer, seq_len, {"kind": "text", "file": str(file)})


# --------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------
def normalize_spec(spec: dict, defaults: dict | None = None) -> dict:
    """Validate a spec and fill in defaults; languages become FLORES codes, ``source`` is resolved.

    The result fully determines the calibration set (it is hashed into study cell ids).

    Raises:
        PolypruneError: not a mapping, unknown kind or key, missing language/file/proportions.
    """
    if not isinstance(spec, dict):
        raise PolypruneError(f"A calibration spec must be a mapping, got {spec!r}",
                             'write e.g. {kind: monolingual, lang: eng_Latn}')
    kind = spec.get("kind")
    if kind not in KINDS:
        raise PolypruneError(f"Unknown calibration kind {kind!r}", f"use one of {', '.join(KINDS)}")
    bad = set(spec) - _KEYS[kind]
    if bad:
        raise PolypruneError(f"Unknown key(s) {', '.join(sorted(bad))} in a {kind} calibration spec",
                             f"known keys: {', '.join(sorted(_KEYS[kind]))}")
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (defaults or {}).items() if k in DEFAULTS})
    out.update(spec)
    if kind == "text":
        for k in ("shots", "source", "split", "shuffle", "seed"):
            out.pop(k, None)
        if not out.get("file"):
            raise PolypruneError("A text calibration spec needs a file", "write {kind: text, file: PATH}")
        out["file"] = str(Path(out["file"]).expanduser())
    else:
        out["source"] = resolve_source(out["source"])
    if kind == "monolingual":
        if not out.get("lang"):
            raise PolypruneError("A monolingual calibration spec needs a language", "write {kind: monolingual, lang: eng_Latn}")
        out["lang"] = _lang(out["lang"])
        out.setdefault("style", "text")
    elif kind == "translation":
        langs = out.pop("langs", None) or ([out.pop("lang")] if out.get("lang") else None)
        out.pop("lang", None)
        if not langs:
            raise PolypruneError("A translation calibration spec needs languages", "write {kind: translation, langs: [fra_Latn]}")
        out["langs"] = [_lang(x) for x in ([langs] if isinstance(langs, str) else langs)]
        out.setdefault("direction", "both")
        out["pivot"] = _lang(out.get("pivot", "eng_Latn"))
        if out["direction"] not in ("forward", "reverse", "both"):
            raise PolypruneError(f"Unknown direction {out['direction']!r}", "use forward (xx→pivot), reverse or both")
    elif kind == "mix":
        out["proportions"] = check_proportions(out.get("proportions"))
        out.setdefault("style", "text")
    out["label"] = spec.get("label") or spec_label(out)
    return out


def spec_label(spec: dict) -> str:
    """Short name of a (normalized) spec for tables: ``translation fra↔eng``, ``mono eng``, ..."""
    if spec.get("label"):
        return str(spec["label"])
    kind = spec["kind"]
    if kind == "monolingual":
        return f"mono {short_code(spec['lang'])}"
    if kind == "translation":
        xs = "+".join(short_code(x) for x in spec["langs"])
        p = short_code(spec.get("pivot", "eng_Latn"))
        d = spec.get("direction", "both")
        return f"translation {xs}↔{p}" if d == "both" else (f"translation {xs}→{p}" if d == "forward" else f"translation {p}→{xs}")
    if kind == "mix":
        return "mix " + " ".join(f"{short_code(k)}{100 * v:.3g}" for k, v in spec["proportions"].items())
    return f"text {Path(spec['file']).name}"


def build(spec: dict, tokenizer, defaults: dict | None = None) -> CalibrationSet:
    """The :class:`CalibrationSet` of a spec (normalized first); ``meta`` gets ``label`` and ``spec``.

    Raises:
        PolypruneError: see :func:`normalize_spec` and the builders.
    """
    s = normalize_spec(spec, defaults)
    kind = s["kind"]
    common = {"samples": s["samples"], "seq_len": s["seq_len"]}
    if kind == "text":
        cal = text(tokenizer, s["file"], **common)
    else:
        common.update(shots=s["shots"], source=s["source"], split=s["split"], shuffle=s["shuffle"], seed=s["seed"])
        if kind == "monolingual":
            cal = monolingual(tokenizer, s["lang"], style=s["style"], **common)
        elif kind == "translation":
            cal = translation(tokenizer, s["langs"], direction=s["direction"], pivot=s["pivot"], **common)
        else:
            cal = mix(tokenizer, s["proportions"], style=s["style"], **common)
    cal.meta["label"] = s["label"]
    cal.meta["spec"] = s
    return cal
