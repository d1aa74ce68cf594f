"""Calibration data: one entry point, :func:`build` (spec) -> :class:`CalibrationSet`.

A *spec* is a small mapping that fully determines a calibration set (studies hash it into cell
ids; recipes store it):

* ``{"kind": "monolingual", "lang": "eng_Latn", "style": "text"}`` — FLORES-200 text in one language;
* ``{"kind": "translation", "langs": ["fra_Latn"], "direction": "both", "pivot": "eng_Latn"}`` —
  Kim et al.'s translation demonstrations;
* ``{"kind": "mix", "proportions": {"eng_Latn": 0.5, "fra_Latn": 0.25, "swh_Latn": 0.25}}``;
* ``{"kind": "text", "file": "code.txt"}`` — the first ``samples`` lines of a file;
* ``{"kind": "demos", ...DemoConfig fields}`` — the Demonstrations panel's and the CLI's settings.

Common keys (defaults :data:`DEFAULTS`): ``samples``, ``seq_len``, ``shots``, ``source`` (``auto`` =
the FLORES-200 folder of the data folder when there is one, else the built-in set; ``flores``;
``flores:DIR``; ``builtin``; ``hub[:DATASET]``), ``split``, ``shuffle``/``seed`` and ``label``
(the short name used in tables, made from the spec when absent: ``translation fra↔eng``,
``mono eng``, ``mix eng50 fra25 swh25``, ``text code.txt``).

Every builder raises :class:`~polyprune.errors.PolypruneError` for an empty or too-small source
(saying how many sentences or lines there are), unknown languages, bad proportions or unknown keys.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..datasets import resolve_source
from ..errors import PolypruneError
from ..languages import FLORES_LANGUAGES, resolve_language
from ..recipe import DemoConfig, settings_from_dict
from . import sources
from .tokenized import CalibrationSet, tokenize

__all__ = ["build", "check", "normalize_spec", "spec_label", "short_code", "CalibrationSet", "tokenize", "KINDS",
           "DEFAULTS"]

KINDS = ("monolingual", "translation", "mix", "text", "demos")
DEFAULTS = {"samples": 32, "seq_len": 256, "shots": 4, "source": "auto", "split": "dev",
            "shuffle": False, "seed": 0}
COMMON_KEYS = set(DEFAULTS) | {"kind", "label"}
KEYS = {
    "monolingual": COMMON_KEYS | {"lang", "style"},
    "translation": COMMON_KEYS | {"langs", "lang", "direction", "pivot"},
    "mix": COMMON_KEYS | {"proportions", "style"},
    "text": COMMON_KEYS | {"file"},
    "demos": {"kind", "label"} | {f.name for f in fields(DemoConfig)},
}


def short_code(code: str) -> str:
    """``fra_Latn`` → ``fra``; the full code where the language has several scripts (``zho_Hant``)."""
    iso = code.split("_")[0]
    same = [c for c in FLORES_LANGUAGES if c.split("_")[0] == iso]
    return code if len(same) > 1 else iso


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
    bad = set(spec) - KEYS[kind]
    if bad:
        raise PolypruneError(f"Unknown key(s) {', '.join(sorted(bad))} in a {kind} calibration spec",
                             f"known keys: {', '.join(sorted(KEYS[kind]))}")
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
        out["lang"] = resolve_language(out["lang"])
        out.setdefault("style", "text")
    elif kind == "translation":
        langs = out.pop("langs", None) or ([out.pop("lang")] if out.get("lang") else None)
        out.pop("lang", None)
        if not langs:
            raise PolypruneError("A translation calibration spec needs languages", "write {kind: translation, langs: [fra_Latn]}")
        out["langs"] = [resolve_language(x) for x in ([langs] if isinstance(langs, str) else langs)]
        out.setdefault("direction", "both")
        out["pivot"] = resolve_language(out.get("pivot", "eng_Latn"))
        if out["direction"] not in ("forward", "reverse", "both"):
            raise PolypruneError(f"Unknown direction {out['direction']!r}", "use forward (xx→pivot), reverse or both")
    elif kind == "demos":
        out["src"], out["tgt"] = resolve_language(out.get("src", "eng_Latn")), resolve_language(out.get("tgt", "fra_Latn"))
    elif kind == "mix":
        out["proportions"] = sources.check_proportions(out.get("proportions"))
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
    if kind == "demos":
        a, b = short_code(spec["src"]), short_code(spec["tgt"])
        if spec.get("monolingual"):
            return f"demos {a}"
        d = spec.get("direction", "forward")
        return f"demos {a}→{b}" if d == "forward" else (f"demos {b}→{a}" if d == "reverse" else f"demos {a}↔{b}")
    return f"text {Path(spec['file']).name}"


def build(spec: dict, tokenizer, defaults: dict | None = None) -> CalibrationSet:
    """The :class:`CalibrationSet` of a spec (normalized first); ``meta`` gets ``label`` and ``spec``.

    Raises:
        PolypruneError: see :func:`normalize_spec` and the builders in :mod:`.sources`.
    """
    s = normalize_spec(spec, defaults)
    kind = s["kind"]
    if kind == "demos":
        cfg = settings_from_dict(DemoConfig, {k: v for k, v in s.items() if k not in ("kind", "label")},
                                 "demonstration settings")
        cal = sources.demos(tokenizer, cfg)
    elif kind == "text":
        cal = sources.text(tokenizer, s["file"], samples=s["samples"], seq_len=s["seq_len"])
    else:
        common = dict(samples=s["samples"], seq_len=s["seq_len"], shots=s["shots"], source=s["source"],
                      split=s["split"], shuffle=s["shuffle"], seed=s["seed"])
        if kind == "monolingual":
            cal = sources.monolingual(tokenizer, s["lang"], style=s["style"], **common)
        elif kind == "translation":
            cal = sources.translation(tokenizer, s["langs"], direction=s["direction"], pivot=s["pivot"], **common)
        else:
            cal = sources.mix(tokenizer, s["proportions"], style=s["style"], **common)
    cal.meta["label"] = s["label"]
    cal.meta["spec"] = s
    return cal


class DryTokenizer:
    """Stands in for a tokenizer when a spec's data is checked before any model is loaded: it
    gives every text a few made-up ids, so every file, language and count is read and checked."""

    eos_token = "</s>"
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __call__(self, text: str, **_) -> dict:
        return {"input_ids": [1] + [3] * max(1, len(text) // 4)}


def check(spec: dict, defaults: dict | None = None) -> dict:
    """Check a spec and its data (files, languages, enough sentences) without a model; return the
    normalized spec.

    Raises:
        PolypruneError: anything :func:`build` would raise for the data.
    """
    build(spec, DryTokenizer(), defaults)
    return normalize_spec(spec, defaults)

