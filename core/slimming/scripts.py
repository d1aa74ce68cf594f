"""Which writing system (Unicode script) each vocabulary token belongs to.

A language is kept by its *script*, the ISO 15924 part of its FLORES-200 code (``swh_Latn`` ->
``Latn``). :data:`SCRIPTS` maps each ISO 15924 code used by FLORES-200 (plus ``Kore``) to the
Unicode ``Script`` property values its text uses: ``Latn`` -> Latin, ``Jpan`` -> Han + Hiragana +
Katakana, ``Hans``/``Hant`` -> Han, ``Kore`` -> Hangul + Han, ``Hang`` -> Hangul. Characters of the
scripts ``Common`` (digits, punctuation, spaces, symbols) and ``Inherited`` (combining marks) belong
to every language and are always kept.

Character scripts come from the Unicode ``Script`` property as the ``regex`` package knows it
(``\\p{Script=Latin}``; ``unicodedata`` names are not scripts). A token is classified from the text
it stands for (:func:`polyprune.slimming.tokenizer_trim.token_bytes`): SentencePiece's ``▁`` is a
space, a byte-fallback token ``<0xNN>`` is a byte, a byte-level BPE token is the bytes its GPT-2
characters encode. A byte-level token may begin or end inside a character (its UTF-8 sequence split
between tokens); such a *fragment* could belong to any character whose encoding ends (or begins, or
contains) those bytes, and the fragment counts as kept when any such character is in a kept script.
So a token is kept exactly when it can occur in some text written in the kept scripts, which is
what makes script trimming exact (see :mod:`polyprune.slimming.vocab`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import regex

from ..errors import PolypruneError

#: ISO 15924 code -> Unicode Script property values of that writing system.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "Latn": ("Latin",), "Cyrl": ("Cyrillic",), "Grek": ("Greek",), "Armn": ("Armenian",),
    "Geor": ("Georgian",), "Arab": ("Arabic",), "Hebr": ("Hebrew",), "Ethi": ("Ethiopic",),
    "Tfng": ("Tifinagh",), "Deva": ("Devanagari",), "Beng": ("Bengali",), "Guru": ("Gurmukhi",),
    "Gujr": ("Gujarati",), "Orya": ("Oriya",), "Taml": ("Tamil",), "Telu": ("Telugu",),
    "Knda": ("Kannada",), "Mlym": ("Malayalam",), "Sinh": ("Sinhala",), "Olck": ("Ol_Chiki",),
    "Mtei": ("Meetei_Mayek",), "Tibt": ("Tibetan",), "Mymr": ("Myanmar",), "Khmr": ("Khmer",),
    "Laoo": ("Lao",), "Thai": ("Thai",), "Hans": ("Han",), "Hant": ("Han",),
    "Jpan": ("Han", "Hiragana", "Katakana"), "Hang": ("Hangul",), "Kore": ("Hangul", "Han"),
}
#: Scripts shared by every language: digits, punctuation, spaces, symbols, combining marks.
SHARED = ("Common", "Inherited")
#: Pseudo-scripts: characters of scripts outside :data:`SCRIPTS`, and bytes that are no UTF-8.
OTHER = "Other"
INVALID = "Invalid"

_NAMES = sorted({n for names in SCRIPTS.values() for n in names} | set(SHARED))
_PATTERN = regex.compile("|".join(f"(?P<{n}>\\p{{Script={n}}})" for n in _NAMES))


def scripts_of_languages(codes: list[str]) -> list[str]:
    """ISO 15924 codes of FLORES-200 codes, in first-seen order (``["eng_Latn", "jpn_Jpan"]`` ->
    ``["Latn", "Jpan"]``).

    Raises:
        PolypruneError: a code whose script part is not in :data:`SCRIPTS`.
    """
    out: list[str] = []
    for code in codes:
        script = code.rsplit("_", 1)[-1]
        if script not in SCRIPTS:
            raise PolypruneError(f"The script {script!r} of {code} is not one Polyprune can keep",
                                 f"keep languages written in {', '.join(sorted(SCRIPTS))}")
        if script not in out:
            out.append(script)
    return out


def unicode_scripts(iso_codes: list[str]) -> frozenset[str]:
    """Unicode Script values of ISO 15924 codes, plus :data:`SHARED`."""
    return frozenset(n for c in iso_codes for n in SCRIPTS[c]) | frozenset(SHARED)


def char_scripts(text: str) -> list[str]:
    """Unicode script of every character of ``text`` (``Other`` outside the table)."""
    out = [OTHER] * len(text)
    for m in _PATTERN.finditer(text):
        out[m.start()] = m.lastgroup
    return out


@lru_cache(maxsize=None)
def _script_table() -> tuple[dict[int, str], dict[bytes, frozenset[str]]]:
    """Every assigned code point's script (only those in the table), and for every proper fragment
    of a UTF-8 encoding (a prefix, suffix or infix of 1-3 bytes) the scripts of the characters whose
    encoding holds it. Built once (about a second); needed only for byte-level tokenizers."""
    cps = [c for c in range(0x80, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, cps))
    scripts = dict.fromkeys(cps, OTHER)
    for m in _PATTERN.finditer(text):
        scripts[ord(m.group())] = m.lastgroup
    frag: dict[bytes, set[str]] = {}
    for cp, s in scripts.items():
        if s == OTHER:  # fragments of such characters are never kept: leave them out (faster)
            continue
        e = chr(cp).encode("utf-8")
        n = len(e)
        for i in range(n):
            for j in range(i + 1, n + 1):
                if j - i < n:
                    frag.setdefault(e[i:j], set()).add(s)
    return scripts, {k: frozenset(v) for k, v in frag.items()}


@dataclass(frozen=True)
class TokenScripts:
    """What a token's text needs to be kept.

    Attributes:
        required: scripts of its whole characters, without :data:`SHARED` (empty for digits,
            punctuation and spaces).
        options: for each character fragment at its edges (byte-level tokens only), the scripts
            that fragment could belong to; the token is kept if each option meets the kept scripts.
    """

    required: frozenset[str]
    options: tuple[frozenset[str], ...] = ()

    def kept_by(self, kept: frozenset[str]) -> bool:
        """True when the token can occur in text written only in ``kept`` (Unicode script names,
        :data:`SHARED` included)."""
        return self.required <= kept and all(o & kept for o in self.options)


def classify_text(text: str) -> TokenScripts:
    """Scripts of a token given as whole characters."""
    return TokenScripts(frozenset(char_scripts(text)) - frozenset(SHARED))


def classify_bytes(data: bytes) -> TokenScripts:
    """Scripts of a token given as bytes that may start or end inside a UTF-8 character."""
    try:
        return classify_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    _, frag = _script_table()
    n = len(data)
    i = 0  # leading continuation bytes: the end of a character begun before the token
    while i < n and i < 3 and 0x80 <= data[i] < 0xC0:
        i += 1
    j = n  # trailing incomplete sequence: the start of a character ended after the token
    for k in range(1, min(3, n - i) + 1):
        b = data[n - k]
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            if need > k:
                j = n - k
            break
        if b < 0x80:
            break
    options = []
    if i == n or (i == 0 and j == 0):  # the whole token lies inside one character
        o = frag.get(bytes(data))
        return TokenScripts(frozenset(), (o,)) if o else TokenScripts(frozenset({INVALID}))
    if i:
        o = frag.get(bytes(data[:i]))
        if not o:
            return TokenScripts(frozenset({INVALID}))
        options.append(o)
    if j < n:
        o = frag.get(bytes(data[j:]))
        if not o:
            return TokenScripts(frozenset({INVALID}))
        options.append(o)
    try:
        middle = data[i:j].decode("utf-8")
    except UnicodeDecodeError:
        return TokenScripts(frozenset({INVALID}))
    return TokenScripts(frozenset(char_scripts(middle)) - frozenset(SHARED), tuple(options))
