"""The one place that knows where data lives: the data folder, FLORES-200 files, sentence pairs,
JSON Lines files, and per-language text sets.

Sources of sentences and pairs are named by a *source string*:

* ``builtin`` — the parallel set shipped in ``resources/builtin_pairs.jsonl`` (36 sentences in
  11 languages, written for Polyprune),
* ``flores:DIR`` — a FLORES-200 folder with ``dev/<code>.dev`` and ``devtest/<code>.devtest``,
* ``flores`` — the FLORES-200 folder of the data folder (:func:`default_data_dir`), else an error,
* ``auto`` — that folder when there is one, else ``builtin``,
* ``hub`` or ``hub:DATASET`` — FLORES+ through ``datasets`` (default ``openlanguagedata/flores_plus``),
* ``file:PATH`` — a user file: pairs from TSV/CSV/JSON Lines columns (:func:`file_pairs`), or
  plain text, one sentence a line (:func:`language_texts`; ``{lang}`` in the path is replaced by
  the language code).

Nothing here imports torch; tokenization helpers take the tokenizer as an argument.
"""
from __future__ import annotations

import csv
import json
import os
from importlib import resources
from pathlib import Path
from typing import Iterator

from .errors import PolypruneError
from .languages import resolve_language

HUB_DATASET = "openlanguagedata/flores_plus"
FLORES_SPLITS = ("dev", "devtest")
#: Folder names under a data folder that hold FLORES-200.
FLORES_FOLDERS = ("flores200", "flores", "flores-200")


# --------------------------------------------------------------------------------------------
# the data folder
# --------------------------------------------------------------------------------------------
def default_data_dir() -> Path | None:
    """``$POLYPRUNE_DATA``, else ``shared/data`` beside the working directory or the repository.

    Returns ``None`` when none of them exists.
    """
    env = os.environ.get("POLYPRUNE_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *Path.cwd().parents[:2], here.parents[1], here.parents[2]):
        cand = base / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def data_dir(given: str | Path | None = None) -> Path:
    """The evaluation data folder: ``given`` or :func:`default_data_dir`.

    Raises:
        PolypruneError: no such folder.
    """
    d = Path(given).expanduser() if given else default_data_dir()
    if d is None or not d.is_dir():
        raise PolypruneError("No evaluation data folder found" + (f" at {d}" if d else ""),
                             "set the data folder (--data DIR, evaluation.data in a recipe, or the Data folder "
                             "field) to a folder with flores200/ and the task folders, or set POLYPRUNE_DATA")
    return d


def flores_dir(root: str | Path | None = None) -> Path:
    """The FLORES-200 folder (the one holding ``dev/`` and ``devtest/``).

    ``root`` may be that folder itself or a data folder holding ``flores200/`` (``None``: the
    default data folder).

    Raises:
        PolypruneError: no FLORES-200 folder there.
    """
    base = Path(root).expanduser() if root is not None else default_data_dir()
    if base is None:
        raise PolypruneError("No FLORES-200 folder found",
                             "set POLYPRUNE_DATA to a folder with flores200/, or give flores:DIR")
    for cand in (base, *(base / n for n in FLORES_FOLDERS)):
        if any((cand / s).is_dir() for s in FLORES_SPLITS):
            return cand
    if not base.is_dir():
        raise PolypruneError(f"FLORES-200 folder {base} does not exist",
                             "give the folder that holds dev/ and devtest/ (e.g. flores:../shared/data/flores200)")
    return base


def flores_file(root: str | Path, split: str, code: str) -> Path | None:
    """``<root>/<split>/<code>.<split>`` (or ``<root>/<code>.<split>``) when it exists, else ``None``."""
    root = Path(root).expanduser()
    for folder in (root / split, root):
        f = folder / f"{code}.{split}"
        if f.is_file():
            return f
    return None


def read_flores(root: str | Path, code: str, split: str = "dev", limit: int | None = None) -> list[str]:
    """Sentences of one language from a FLORES-200 folder, in file order (first ``limit``).

    Args:
        root: the FLORES-200 folder or a data folder holding ``flores200/``.
        code: a FLORES-200 code (``eng_Latn``); names and two-letter codes are resolved.
        split: ``dev`` (997 sentences) or ``devtest`` (1012).
        limit: first N lines (``None``: all).

    Raises:
        PolypruneError: folder or file missing, or an empty file.
    """
    folder = flores_dir(root)
    f = flores_file(folder, split, code)
    if f is None:
        try:
            code = resolve_language(code)
        except PolypruneError:
            pass
        f = flores_file(folder, split, code)
    if f is None:
        raise PolypruneError(f"No FLORES-200 file {folder / split / f'{code}.{split}'}",
                             f"check the language code ({code}; FLORES-200 codes look like eng_Latn, zho_Hans) "
                             f"and that {folder} has {split}/<code>.{split} files")
    with open(f, encoding="utf-8") as fh:
        lines = [ln.rstrip("\r\n") for ln in fh]
    if limit is not None:
        lines = lines[:limit]
    if not any(s.strip() for s in lines):
        raise PolypruneError(f"FLORES file {f} is empty (no sentences)", "check the file, or use a positive limit")
    return lines


# --------------------------------------------------------------------------------------------
# JSON Lines
# --------------------------------------------------------------------------------------------
def iter_jsonl(path: str | Path, what: str = "row") -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file.

    Raises:
        PolypruneError: missing file, a line that is not valid JSON or not a JSON object, or a
            file without any row (file and line are named).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PolypruneError(f"File not found: {path}", f"give a JSON Lines file with one {what} per line")
    any_row = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PolypruneError(f"{path}, line {lineno}: not valid JSON ({exc.msg})",
                                     f"each line must be one JSON object ({what})") from None
            if not isinstance(row, dict):
                raise PolypruneError(f"{path}, line {lineno}: not a JSON object",
                                     f"each line must be one JSON object ({what})")
            any_row = True
            yield lineno, row
    if not any_row:
        raise PolypruneError(f"{path} is empty: no rows", f"the file needs one JSON object per line ({what})")


# --------------------------------------------------------------------------------------------
# sentence pairs
# --------------------------------------------------------------------------------------------
def builtin_rows() -> list[dict]:
    """The rows of ``resources/builtin_pairs.jsonl`` (``id`` plus one key per language)."""
    path = resources.files("polyprune.resources") / "builtin_pairs.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def builtin_languages() -> list[str]:
    """FLORES codes of the built-in parallel set."""
    return sorted(k for k in builtin_rows()[0] if k != "id")


def builtin_pairs(src: str, tgt: str) -> list[tuple[str, str]]:
    """Aligned pairs from the built-in set.

    Raises:
        PolypruneError: a language the built-in set lacks (the message lists those it has).
    """
    rows = builtin_rows()
    langs = sorted(k for k in rows[0] if k != "id")
    for code in (src, tgt):
        if code not in langs:
            raise PolypruneError(f"The built-in demonstrations have no {code}",
                                 f"use one of {', '.join(langs)}, or a FLORES-200 folder for all 204 languages")
    return [(r[src], r[tgt]) for r in rows]


def flores_pairs(root: str | Path, src: str, tgt: str, split: str = "dev") -> list[tuple[str, str]]:
    """Aligned pairs from a local FLORES-200 folder (lines of two files zipped).

    Raises:
        PolypruneError: a missing file, or files of different lengths.
    """
    a, b = read_flores(root, src, split), read_flores(root, tgt, split)
    if len(a) != len(b):
        raise PolypruneError(f"FLORES files for {src} and {tgt} have {len(a)} and {len(b)} lines",
                             "use an unmodified FLORES-200 folder: the files must be line-aligned")
    return list(zip(a, b))


def hub_pairs(src: str, tgt: str, split: str = "dev", dataset: str = HUB_DATASET) -> list[tuple[str, str]]:
    """Aligned pairs from FLORES+ on the Hugging Face hub through ``datasets`` (configs are FLORES codes).

    Raises:
        PolypruneError: when the hub cannot be reached or the dataset is gated.
    """
    try:
        import datasets
        a = datasets.load_dataset(dataset, src, split=split)
        b = datasets.load_dataset(dataset, tgt, split=split)
    except Exception as e:  # datasets raises many types for network/auth problems
        raise PolypruneError(f"Could not load {dataset} ({src}, {tgt}) from the hub: {type(e).__name__}: {str(e)[:200]}",
                             "check your network and hub login (FLORES+ is gated), or use a local FLORES-200 folder") from e
    return list(zip(a["text"], b["text"]))


def _user_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise PolypruneError(f"{what} {p} does not exist", "check the path")
    if p.is_dir():
        raise PolypruneError(f"{what} {p} is a folder, not a file", "choose a file")
    return p


def file_pairs(path: str | Path, src_col: str | None = None, tgt_col: str | None = None,
               src: str | None = None, tgt: str | None = None) -> list[tuple[str, str]]:
    """Pairs from a user file: ``.tsv``/``.txt`` (tab), ``.csv`` (header row) or ``.jsonl``.

    Columns: ``src_col``/``tgt_col`` if given, else ``source``/``target``, else columns named by
    the language codes ``src``/``tgt``.

    Raises:
        PolypruneError: missing, empty or undecodable file, missing columns, or a row with one side
            empty.
    """
    p = _user_file(path, "Demonstration file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PolypruneError(f"Demonstration file {p} is not UTF-8 text ({e.reason})",
                             "save the file as UTF-8 (TSV, CSV or JSON Lines)") from None
    if not text.strip():
        raise PolypruneError(f"Demonstration file {p} is empty", "give a file with a header and at least one pair")
    if p.suffix.lower() in (".jsonl", ".json"):
        rows = [row for _, row in iter_jsonl(p, "pair")]
        header = list(rows[0].keys()) if rows else []
    else:
        delim = "\t" if p.suffix.lower() in (".tsv", ".tab", ".txt") else ","
        reader = csv.DictReader(text.splitlines(), delimiter=delim)
        rows = list(reader)
        header = reader.fieldnames or []
    if not rows:
        raise PolypruneError(f"Demonstration file {p} has a header but no pairs", "add at least one row")
    candidates = [(src_col, tgt_col)] if src_col or tgt_col else [("source", "target"), (src, tgt)]
    for s, t in candidates:
        if s in header and t in header:
            break
    else:
        want = " and ".join(repr(c) for c in (candidates[0] if src_col or tgt_col else ("source", "target")))
        raise PolypruneError(f"{p} has no columns {want} (it has: {', '.join(map(str, header))})",
                             "name the columns 'source' and 'target', or by the language codes, or choose the "
                             "source and target columns")
    pairs = []
    for i, r in enumerate(rows, 2 if p.suffix.lower() not in (".jsonl", ".json") else 1):
        a, b = str(r.get(s) or "").strip(), str(r.get(t) or "").strip()
        if bool(a) != bool(b):
            raise PolypruneError(f"{p} row {i}: the {'target' if a else 'source'} side is empty",
                                 "every row needs both a source and a target sentence")
        if a:
            pairs.append((a, b))
    if not pairs:
        raise PolypruneError(f"Demonstration file {p} has no non-empty pairs", "add at least one row")
    return pairs


def resolve_source(source: str) -> str:
    """Turn ``auto``/``flores`` into ``flores:DIR`` (or ``builtin`` for ``auto`` without data).

    Raises:
        PolypruneError: ``flores`` without a data folder holding FLORES-200.
    """
    if source not in ("auto", "flores"):
        return source
    data = default_data_dir()
    if data is not None:
        try:
            return f"flores:{flores_dir(data)}"
        except PolypruneError:
            pass
    if source == "flores":
        raise PolypruneError("No FLORES-200 folder found",
                             "set POLYPRUNE_DATA to a folder with flores200/, or give flores:DIR")
    return "builtin"


def load_pairs(source: str, src: str, tgt: str, split: str = "dev", src_col: str | None = None,
               tgt_col: str | None = None) -> list[tuple[str, str]]:
    """Pairs from a source string (see the module docstring); a bare folder means FLORES, a bare
    file a user file.

    Raises:
        PolypruneError: an unknown source, or any error of the source's reader.
    """
    source = resolve_source(source)
    kind, _, arg = source.partition(":")
    if kind == "builtin":
        return builtin_pairs(src, tgt)
    if kind == "flores":
        return flores_pairs(arg, src, tgt, split)
    if kind == "hub":
        return hub_pairs(src, tgt, split, arg or HUB_DATASET)
    if kind == "file":
        return file_pairs(arg, src_col, tgt_col, src, tgt)
    p = Path(source).expanduser()
    if p.is_dir():
        return flores_pairs(p, src, tgt, split)
    if p.is_file():
        return file_pairs(p, src_col, tgt_col, src, tgt)
    raise PolypruneError(f"Unknown sentence source {source!r}", "use builtin, flores:DIR, hub[:DATASET] or file:PATH")


# --------------------------------------------------------------------------------------------
# per-language text sets
# --------------------------------------------------------------------------------------------
def read_text_lines(path: str | Path, limit: int | None = None, what: str = "Text file") -> list[str]:
    """Non-empty lines of a UTF-8 text file (first ``limit``), stripped of line ends.

    Raises:
        PolypruneError: a missing file, a folder, or a file that is not UTF-8.
    """
    p = _user_file(path, what)
    out = []
    try:
        with open(p, encoding="utf-8-sig") as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if line.strip():
                    out.append(line)
                    if limit is not None and len(out) >= limit:
                        break
    except UnicodeDecodeError as e:
        raise PolypruneError(f"{what} {p} is not UTF-8 text ({e.reason})", "save it as UTF-8, one text per line") from None
    return out


def sentences(source: str, lang: str, split: str = "dev") -> list[str]:
    """Non-empty sentences of one language from a source string (see the module docstring).

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
        lines = [a for a, _ in hub_pairs(lang, lang, split, arg or HUB_DATASET)]
    elif kind == "file":
        lines = read_text_lines(arg.replace("{lang}", lang))
    elif Path(source).expanduser().is_dir():
        lines = read_flores(source, lang, split)
    else:
        raise PolypruneError(f"Unknown sentence source {source!r}",
                             "use auto, flores, flores:DIR, builtin, hub[:DATASET] or file:PATH")
    return [s.strip() for s in lines if s.strip()]


def language_texts(source: str, lang: str, n: int, split: str = "dev") -> list[str]:
    """The first ``n`` sentences of one language (FLORES split, built-in set or a user file).

    Args:
        source: a source string (``flores:DIR``, ``auto``, ``builtin``, ``file:PATH`` where ``PATH``
            may contain ``{lang}``).
        lang: a FLORES-200 code (names and two-letter codes are resolved).
        n: how many sentences.
        split: FLORES split.

    Raises:
        PolypruneError: an unknown language, ``n < 1``, or fewer sentences than ``n`` (the count is
            named).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PolypruneError(f"The number of sentences must be a positive integer (got {n!r})",
                             "ask for at least 1 sentence per language")
    code = resolve_language(lang)
    sents = sentences(source, code, split)
    if len(sents) < n:
        raise PolypruneError(f"{resolve_source(source)} has {len(sents)} {code} sentences, but {n} were asked for",
                             f"ask for at most {len(sents)} sentences, or use a larger source "
                             "(a FLORES-200 split has about 1000 per language)")
    return sents[:n]


#: Characters kept per requested token before tokenizing a long text (see :func:`tokenize_texts`).
CHARS_PER_TOKEN_GUARD = 16


def tokenize_texts(tokenizer, texts: list[str], max_tokens: int | None) -> list[list[int]]:
    """Token ids of each text, tokenized alone with the tokenizer's defaults (BOS where it adds
    one), truncated to ``max_tokens``.

    A very long text is cut to ``max_tokens x 16`` characters before tokenizing (and cut longer
    again when that yields too few tokens), so a 50 MB line never reaches the tokenizer whole;
    the first ``max_tokens`` tokens are kept only when the cut text yields at least 16 more, so
    the cut never changes them.

    Returns:
        ``[[ids...], ...]``, one list per text (possibly empty for an empty text).
    """
    out = []
    for t in texts:
        if max_tokens is None:
            out.append(list(tokenizer(t)["input_ids"]))
            continue
        limit = max(64, max_tokens * CHARS_PER_TOKEN_GUARD)
        while True:
            piece = t if len(t) <= limit else t[:limit]
            ids = list(tokenizer(piece)["input_ids"])
            if piece is t or len(ids) >= max_tokens + 16:
                break
            limit *= 4
        out.append(ids[:max_tokens])
    return out
