"""Settings of head scoring, classification, cross-effects and head removal (one place for defaults).

Recipes import this module, so it imports only the standard library, :mod:`polyprune.errors` and
:mod:`polyprune.languages`. Definitions follow the heads issue and ``methods.md`` §7.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from ..errors import PolypruneError
from ..languages import resolve_language

KINDS = ("ablation", "taylor")
RANK_BY = ("auto", "ablation", "taylor")
CUTS = ("soft", "hard")
#: Six languages of five scripts (the finding's set; Japanese can be added).
DEFAULT_LANGUAGES = ["eng_Latn", "fra_Latn", "swh_Latn", "zho_Hans", "arb_Arab", "hin_Deva"]


def _int(name: str, v, lo: int, hi: int | None = None, fix: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise PolypruneError(f"The setting {name} must be an integer {rng} (got {v!r})", fix or f"set {name} to an integer {rng}")


def _bool(name: str, v) -> None:
    if not isinstance(v, bool):
        raise PolypruneError(f"The setting {name} must be true or false (got {v!r})", f"set {name} to true or false")


def _str(name: str, v, allowed=None) -> None:
    if not isinstance(v, str) or not v.strip():
        raise PolypruneError(f"The setting {name} must be a non-empty text (got {v!r})", f"set {name}")
    if allowed is not None and v not in allowed:
        raise PolypruneError(f"Unknown {name} {v!r}", f"use one of: {', '.join(allowed)}")


def _langs(name: str, v, fix: str) -> list[str]:
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",") if x.strip()]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise PolypruneError(f"The setting {name} must be a list of languages (got {v!r})", fix)
    out = []
    for x in v:
        code = resolve_language(x)
        if code not in out:
            out.append(code)
    return out


def parse_heads_spec(spec: str) -> dict[int, list[int]]:
    """Parse ``"BLOCK:H,H;BLOCK:H"`` (e.g. ``"3:0,2;7:1"``) into ``{3: [0, 2], 7: [1]}``.

    Blocks and heads count from 0. An empty text gives ``{}``.

    Raises:
        PolypruneError: malformed text, a negative number, or a head listed twice.
    """
    out: dict[int, list[int]] = {}
    fix = 'write blocks and heads as "BLOCK:H,H;BLOCK:H", e.g. "3:0,2;7:1" (counting from 0)'
    for part in (spec or "").split(";"):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)", part)
        if m is None:
            raise PolypruneError(f"Cannot read the head list {part!r}", fix)
        b = int(m.group(1))
        heads = [int(x) for x in m.group(2).split(",")]
        have = out.setdefault(b, [])
        for h in heads:
            if h in have:
                raise PolypruneError(f"Head {b}:{h} is listed twice", fix)
            have.append(h)
    return {b: sorted(hs) for b, hs in sorted(out.items())}


def format_heads_spec(heads: dict[int, list[int]]) -> str:
    """Inverse of :func:`parse_heads_spec`: ``{3: [0, 2], 7: [1]}`` -> ``"3:0,2;7:1"``."""
    return ";".join(f"{b}:{','.join(map(str, sorted(hs)))}" for b, hs in sorted(heads.items()) if hs)


@dataclass
class RemovalConfig:
    """Which heads to remove and how (the heads issue, "Removal for unwanted languages").

    Attributes:
        heads: explicit heads ``"BLOCK:H,H;BLOCK:H"``; when set, ``drop``/``keep`` are not used.
        drop: languages the deployment does not need; their heads are proposed for removal.
        keep: languages that must stay intact; their heads are never proposed.
        cut: ``soft`` (zero the heads' columns of the output projection; same size, reloads
            anywhere) or ``hard`` (delete the heads' rows/columns; smaller stock checkpoint).
        nearest: for a hard cut whose set cannot be stored as a stock checkpoint, remove the
            nearest set that can (shown) instead of stopping with an error.
        measure: measure the effect on every kept and dropped language (held-out split) before export.
        max_heads: at most this many proposed heads (the most important for the dropped
            languages first); 0 = no limit.
    """

    heads: str | None = None
    drop: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    cut: str = "soft"
    nearest: bool = False
    measure: bool = True
    max_heads: int = 0

    def validate(self) -> "RemovalConfig":
        """Check types and values; languages are resolved to FLORES-200 codes.

        Raises:
            PolypruneError: a bad value (named), an unknown language, no heads and no languages to
                drop, or a language both kept and dropped.
        """
        if self.heads is not None and not isinstance(self.heads, str):
            raise PolypruneError(f"The setting heads must be a text like \"3:0,2;7:1\" (got {self.heads!r})",
                                 'write heads as "BLOCK:H,H;BLOCK:H"')
        self.drop = _langs("drop", self.drop, "list the languages to drop, e.g. drop: [swh_Latn, hin_Deva]")
        self.keep = _langs("keep", self.keep, "list the languages to keep, e.g. keep: [eng_Latn, fra_Latn]")
        _str("cut", self.cut, CUTS)
        _bool("nearest", self.nearest)
        _bool("measure", self.measure)
        _int("max_heads", self.max_heads, 0)
        if self.heads and self.heads.strip():
            if not parse_heads_spec(self.heads):
                raise PolypruneError("The head list is empty", 'give at least one head, e.g. --heads "3:0"')
        else:
            self.heads = None
            if not self.drop:
                raise PolypruneError("No heads to remove: neither a head list nor languages to drop were given",
                                     'give --heads "BLOCK:H,H" or --drop LANGS (with --keep LANGS)')
            both = sorted(set(self.drop) & set(self.keep))
            if both:
                raise PolypruneError(f"{', '.join(both)} is both kept and dropped",
                                     "name each language in either the keep list or the drop list")
        return self


@dataclass
class HeadsConfig:
    """Settings of per-language head scores (Michel et al. 2019; LAHIS, Liu et al. 2026, methods.md §7).

    Attributes:
        languages: FLORES-200 codes (names and two-letter codes are accepted and resolved).
        texts: sentence source: ``flores`` (the data folder), ``flores:DIR``, ``file:PATH`` (one
            sentence a line; ``{lang}`` in PATH is replaced by the code), ``builtin`` or ``auto``.
        split: FLORES split the scores are computed on.
        samples: first N sentences per language; fewer available is an error.
        seq_len: each sentence is cut to at most this many tokens (L).
        batch_size: sentences per forward pass.
        kinds: which scores to compute: ``ablation`` (one pass per head) and/or ``taylor`` (one
            forward and backward pass for all heads).
        rank_by: the score that ranks heads for classification and removal (``auto``: ablation
            when computed, else taylor).
        top_share: q, the share of all heads that form a language's top set.
        min_shared: m, a head in the top set of at least m languages is *shared*.
        cross: also measure the cross-effect matrix (remove the heads specific to language A,
            measure perplexity on every language B) on held-out sentences.
        cross_split, cross_samples: the held-out split and sentences per language for effects.
        bootstrap: resamples for 95 % intervals (sentences resampled).
        seed: bootstrap seed.
        removal: head removal settings (used by ``remove-heads`` and study cells).
    """

    languages: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    texts: str = "flores"
    split: str = "dev"
    samples: int = 32
    seq_len: int = 64
    batch_size: int = 8
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    rank_by: str = "auto"
    top_share: float = 0.05
    min_shared: int = 2
    cross: bool = False
    cross_split: str = "devtest"
    cross_samples: int = 32
    bootstrap: int = 1000
    seed: int = 0
    removal: RemovalConfig | None = None

    def validate(self, need_languages: bool = True) -> "HeadsConfig":
        """Check every setting (types too) and resolve languages to FLORES-200 codes.

        Raises:
            PolypruneError: a bad value, naming the setting and the fix.
        """
        self.languages = _langs("languages", self.languages,
                                "list FLORES-200 languages, e.g. --languages eng_Latn,swh_Latn")
        if need_languages and not self.languages:
            raise PolypruneError("No languages were given", "name at least one language, e.g. --languages eng_Latn,swh_Latn")
        _str("texts", self.texts)
        _str("split", self.split)
        _str("cross_split", self.cross_split)
        _int("samples", self.samples, 1, fix="ask for at least 1 sentence per language (--samples)")
        _int("seq_len", self.seq_len, 2, fix="use at least 2 tokens per sentence (--seq-len)")
        _int("batch_size", self.batch_size, 1)
        _int("cross_samples", self.cross_samples, 1, fix="use at least 1 held-out sentence per language (--cross-samples)")
        _int("bootstrap", self.bootstrap, 0)
        _int("seed", self.seed, 0)
        _int("min_shared", self.min_shared, 2, fix="set min_shared (m, --min-shared) to at least 2: a head in one "
                                                  "language's top set only is specific to it")
        _bool("cross", self.cross)
        if isinstance(self.kinds, str):
            self.kinds = [x.strip() for x in self.kinds.split(",") if x.strip()]
        if not isinstance(self.kinds, (list, tuple)) or not self.kinds:
            raise PolypruneError(f"The setting kinds must list ablation and/or taylor (got {self.kinds!r})",
                                 "use --kinds ablation,taylor")
        for k in self.kinds:
            _str("score kind", k, KINDS)
        self.kinds = [k for k in KINDS if k in self.kinds]
        _str("rank_by", self.rank_by, RANK_BY)
        if self.rank_by != "auto" and self.rank_by not in self.kinds:
            raise PolypruneError(f"Heads are to be ranked by {self.rank_by} scores, which are not computed",
                                 f"add {self.rank_by} to kinds (--kinds), or rank by auto")
        q = self.top_share
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q <= 1:
            raise PolypruneError(f"The top share q must be a number in (0, 1] (got {q!r})",
                                 "set the top share (--top-share) to e.g. 0.05 for the top 5 % of heads")
        self.top_share = float(q)
        if isinstance(self.removal, dict):
            known = {f.name for f in fields(RemovalConfig)}
            bad = set(self.removal) - known
            if bad:
                raise PolypruneError(f"Unknown setting(s) {', '.join(sorted(bad))} in heads.removal",
                                     f"known: {', '.join(sorted(known))}")
            self.removal = RemovalConfig(**self.removal)
        if self.removal is not None:
            if not isinstance(self.removal, RemovalConfig):
                raise PolypruneError("The setting removal must be a mapping of removal settings", "write removal: {drop: [...], keep: [...]}")
            self.removal.validate()
        return self

    def ranking_kind(self) -> str:
        """The score kind that ranks heads: ``rank_by``, or for ``auto`` ablation when computed."""
        if self.rank_by != "auto":
            return self.rank_by
        return "ablation" if "ablation" in self.kinds else "taylor"

    def to_dict(self) -> dict:
        """Plain JSON-ready settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadsConfig":
        """Build and validate from a mapping (a recipe section or a saved settings file).

        Raises:
            PolypruneError: not a mapping, an unknown key (named, with the known ones), a bad value.
        """
        if not isinstance(d, dict):
            raise PolypruneError("The heads settings are not a mapping", "write heads: {languages: [...], ...}")
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise PolypruneError(f"Unknown heads setting(s) {', '.join(sorted(bad))}", f"known: {', '.join(sorted(known))}")
        return cls(**d).validate(need_languages=False)
