"""Translation demonstrations and other calibration data.

Kim et al. (2024, §3 and §1.3 of ``methods.md``) build each calibration sample from ``shots``
consecutive aligned sentence pairs of FLORES-200 *dev*::

    "{SrcName}: {src_1}{eos}{TgtName}: {tgt_1}{eos}" ... x shots

This module reads aligned pairs from four sources, builds such prompts (or monolingual ones, or
takes raw text lines verbatim) and tokenizes them into a :class:`CalibrationSet` whose padding is
masked everywhere downstream.

Pair sources (``source`` argument, a string):

* ``builtin`` — a small parallel set written for Polyprune (36 sentences in 11 languages),
* ``flores:DIR`` — a FLORES-200 folder with ``dev/<code>.dev`` and ``devtest/<code>.devtest``,
* ``hub`` or ``hub:DATASET`` — FLORES+ through ``datasets`` (default ``openlanguagedata/flores_plus``),
* ``file:PATH`` — a TSV, CSV or JSON Lines file with source and target columns.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .errors import PolypruneError

DEFAULT_TEMPLATE = "{src_name}: {src}{eos}{tgt_name}: {tgt}{eos}"
MONOLINGUAL_TEMPLATE = "{src_name}: {src}{eos}"
DIRECTIONS = ("forward", "reverse", "both")
MIN_SEQ_LEN = 8
HUB_DATASET = "openlanguagedata/flores_plus"


def _lang(code: str) -> str:
    from .languages import resolve_language
    return resolve_language(code)


def _name(code: str) -> str:
    from .languages import language_name
    return language_name(code)


# --------------------------------------------------------------------------------------------
# pair sources
# --------------------------------------------------------------------------------------------
def builtin_pairs(src: str, tgt: str) -> list[tuple[str, str]]:
    """Aligned pairs from the built-in set in ``resources/builtin_pairs.jsonl``.

    Raises:
        PolypruneError: if a language is not in the built-in set (the message lists those that are).
    """
    path = resources.files("polyprune.resources") / "builtin_pairs.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    langs = sorted(k for k in rows[0] if k != "id")
    for code in (src, tgt):
        if code not in langs:
            raise PolypruneError(f"The built-in demonstrations have no {code}",
                                 f"use one of {', '.join(langs)}, or a FLORES-200 folder (flores:DIR) for all 204 languages")
    return [(r[src], r[tgt]) for r in rows]


def read_flores(flores_dir: str | Path, code: str, split: str = "dev") -> list[str]:
    """Sentences of one language from a FLORES-200 folder (``<dir>/<split>/<code>.<split>``).

    Raises:
        PolypruneError: folder or file missing, with the fix.
    """
    root = Path(flores_dir).expanduser()
    if not root.is_dir():
        raise PolypruneError(f"FLORES-200 folder {root} does not exist",
                             "give the folder that holds dev/ and devtest/ (e.g. flores:../shared/data/flores200)")
    path = root / split / f"{code}.{split}"
    if not path.exists() and (root / f"{code}.{split}").exists():
        path = root / f"{code}.{split}"
    if not path.exists():
        raise PolypruneError(f"No FLORES-200 file {path}",
                             f"check the language code ({code}) and that {root} has {split}/<code>.{split} files")
    return path.read_text(encoding="utf-8").splitlines()


def flores_pairs(flores_dir: str | Path, src: str, tgt: str, split: str = "dev") -> list[tuple[str, str]]:
    """Aligned pairs from a local FLORES-200 folder (lines of two files zipped)."""
    a, b = read_flores(flores_dir, src, split), read_flores(flores_dir, tgt, split)
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
                             "check your network and hub login (FLORES+ is gated), or use a local FLORES-200 folder with flores:DIR") from e
    return list(zip(a["text"], b["text"]))


def file_pairs(path: str | Path, src_col: str | None = None, tgt_col: str | None = None,
               src: str | None = None, tgt: str | None = None) -> list[tuple[str, str]]:
    """Pairs from a user file: ``.tsv``, ``.csv`` (header row) or ``.jsonl`` (one object a line).

    Columns: ``src_col``/``tgt_col`` if given, else ``source``/``target``, else columns named by
    the language codes ``src``/``tgt``.

    Raises:
        PolypruneError: missing file, empty file, missing columns, or a row with one side empty.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise PolypruneError(f"Demonstration file {p} does not exist", "check the path")
    text = p.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise PolypruneError(f"Demonstration file {p} is empty", "give a file with a header and at least one pair")
    if p.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PolypruneError(f"{p} line {i} is not valid JSON ({e.msg})",
                                         "write one JSON object per line") from e
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
                             "name the columns 'source' and 'target', or by the language codes, or choose them with --src-column/--tgt-column")
    pairs = []
    for i, r in enumerate(rows, 2 if p.suffix.lower() not in (".jsonl", ".json") else 1):
        a, b = (r.get(s) or "").strip(), (r.get(t) or "").strip()
        if bool(a) != bool(b):
            raise PolypruneError(f"{p} row {i}: the {'target' if a else 'source'} side is empty",
                                 "every row needs both a source and a target sentence")
        if a:
            pairs.append((a, b))
    if not pairs:
        raise PolypruneError(f"Demonstration file {p} has no non-empty pairs", "add at least one row")
    return pairs


def load_pairs(source: str, src: str, tgt: str, split: str = "dev", src_col: str | None = None,
               tgt_col: str | None = None) -> list[tuple[str, str]]:
    """Dispatch on a source string (see module docstring); a bare folder means FLORES, a bare file a user file."""
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
    raise PolypruneError(f"Unknown demonstration source {source!r}",
                         "use builtin, flores:DIR, hub[:DATASET] or file:PATH")


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    """Settings for building calibration prompts.

    Attributes:
        source: pair source string (``builtin``, ``flores:DIR``, ``hub``, ``file:PATH``).
        src, tgt: FLORES-200 codes (names and two-letter codes are resolved).
        direction: ``forward`` (src→tgt), ``reverse`` (tgt→src) or ``both`` (alternating samples).
        shots: sentence pairs per sample (Kim et al.: 4).
        samples: number of calibration samples N.
        seq_len: calibration length in tokens (truncate longer prompts; shorter ones are padded and
            the padding masked). A setting of its own, never the model's context length.
        template: per-pair template with ``{src_name} {src} {tgt_name} {tgt} {eos}``.
        monolingual: drop the target side (``{src_name}: {src}{eos}`` per shot).
        split: FLORES split to read (``dev`` as in the paper).
        shuffle, seed: draw pairs in a seeded random order instead of file order.
    """

    source: str = "builtin"
    src: str = "eng_Latn"
    tgt: str = "fra_Latn"
    direction: str = "forward"
    shots: int = 4
    samples: int = 32
    seq_len: int = 256
    template: str = DEFAULT_TEMPLATE
    monolingual: bool = False
    split: str = "dev"
    shuffle: bool = False
    seed: int = 0
    src_column: str | None = None
    tgt_column: str | None = None


def validate_lengths(samples: int, seq_len: int, shots: int = 1) -> None:
    """Raise :class:`PolypruneError` for ``samples < 1``, ``shots < 1`` or ``seq_len < 8``."""
    if samples < 1:
        raise PolypruneError(f"samples must be at least 1 (got {samples})", "set --samples to a positive number")
    if shots < 1:
        raise PolypruneError(f"shots must be at least 1 (got {shots})", "set --shots to a positive number")
    if seq_len < MIN_SEQ_LEN:
        raise PolypruneError(f"Calibration length {seq_len} is under {MIN_SEQ_LEN} tokens",
                             f"set --seq-len to {MIN_SEQ_LEN} or more (Kim et al. use 512; 128-512 is typical)")


def build_prompts(cfg: DemoConfig, eos: str = "", pairs: list[tuple[str, str]] | None = None) -> tuple[list[str], list[list[int]]]:
    """Build ``cfg.samples`` demonstration prompts.

    Returns:
        ``(prompts, indices)``: the prompt strings and, for each, the pair indices it uses (so a run
        records exactly which sentences calibrated it).

    Raises:
        PolypruneError: unknown language, bad template, or fewer than ``samples × shots`` pairs
            (the message says how many pairs there are).
    """
    validate_lengths(cfg.samples, cfg.seq_len, cfg.shots)
    if cfg.direction not in DIRECTIONS:
        raise PolypruneError(f"Unknown direction {cfg.direction!r}", f"use one of {', '.join(DIRECTIONS)}")
    src, tgt = _lang(cfg.src), _lang(cfg.tgt)
    if pairs is None:
        pairs = load_pairs(cfg.source, src, tgt, cfg.split, cfg.src_column, cfg.tgt_column)
    need = cfg.samples * cfg.shots
    if need > len(pairs):
        raise PolypruneError(
            f"{cfg.samples} samples x {cfg.shots} shots need {need} sentence pairs but the source has {len(pairs)}",
            f"use at most {len(pairs) // cfg.shots} samples at {cfg.shots} shots, fewer shots, or a larger source (flores:DIR has 997 dev pairs)")
    order = list(range(len(pairs)))
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(order)
    template = MONOLINGUAL_TEMPLATE if cfg.monolingual and cfg.template == DEFAULT_TEMPLATE else cfg.template
    names = {src: _name(src), tgt: _name(tgt)}
    prompts, used = [], []
    for n in range(cfg.samples):
        idx = order[n * cfg.shots:(n + 1) * cfg.shots]
        flip = cfg.direction == "reverse" or (cfg.direction == "both" and n % 2 == 1)
        a, b = (tgt, src) if flip else (src, tgt)
        parts = []
        for i in idx:
            s, t = (pairs[i][1], pairs[i][0]) if flip else pairs[i]
            try:
                parts.append(template.format(src_name=names[a], src=s, tgt_name=names[b], tgt=t, eos=eos))
            except (KeyError, IndexError, ValueError) as e:
                raise PolypruneError(f"The template {template!r} is invalid ({e})",
                                     "use only the fields {src_name} {src} {tgt_name} {tgt} {eos}; write literal braces as {{ }}") from e
        prompts.append("".join(parts))
        used.append(idx)
    return prompts, used


def read_calibration_text(path: str | Path, samples: int) -> list[str]:
    """The first ``samples`` non-empty lines of a text file, each used verbatim as one sample.

    Raises:
        PolypruneError: missing or empty file, or fewer non-empty lines than ``samples``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise PolypruneError(f"Calibration text file {p} does not exist", "check the path")
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise PolypruneError(f"Calibration text file {p} has no non-empty lines", "give a file with one sample per line")
    if len(lines) < samples:
        raise PolypruneError(f"{p} has {len(lines)} non-empty lines but {samples} samples were requested",
                             f"use --samples {len(lines)} or add lines")
    return lines[:samples]


# --------------------------------------------------------------------------------------------
# tokenized calibration set
# --------------------------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    """Tokenized calibration samples, right-padded to a common length.

    Attributes:
        texts: the N sample strings.
        input_ids: ``[N, L]`` int64, ``L = min(seq_len, longest sample)``.
        attention_mask: ``[N, L]`` int64, 1 on real tokens, 0 on padding (padding never enters a
            statistic).
        truncated: number of samples cut at ``seq_len`` tokens.
        meta: how the set was built (source, languages, shots, pair indices, ...), for reports.
    """

    texts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: int = 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens over all samples."""
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int):
        """Yield ``(input_ids [B, L_b], attention_mask [B, L_b])`` with L_b trimmed to the batch's longest."""
        for i in range(0, len(self), batch_size):
            m = self.attention_mask[i:i + batch_size]
            length = int(m.sum(1).max())
            yield self.input_ids[i:i + batch_size, :length], m[:, :length]


def tokenize(texts: list[str], tokenizer, seq_len: int, meta: dict | None = None) -> CalibrationSet:
    """Tokenize samples with the tokenizer's own special-token behaviour, truncating at ``seq_len``.

    Raises:
        PolypruneError: ``seq_len`` under 8, or a sample that tokenizes to nothing.
    """
    validate_lengths(len(texts) or 1, seq_len)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    truncated = sum(len(x) > seq_len for x in ids)
    ids = [x[:seq_len] for x in ids]
    if any(len(x) == 0 for x in ids):
        raise PolypruneError("A calibration sample tokenized to no tokens", "remove empty samples")
    length = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    meta = dict(meta or {})
    meta.update(seq_len=seq_len, samples=len(texts), truncated=truncated, tokens=int(mask.sum()))
    return CalibrationSet(texts, input_ids, mask, truncated, meta)


def build_calibration(cfg: DemoConfig, tokenizer, calibration_text: str | Path | None = None) -> CalibrationSet:
    """Demonstration prompts (or raw text lines) tokenized into a :class:`CalibrationSet`."""
    validate_lengths(cfg.samples, cfg.seq_len, cfg.shots)
    if calibration_text:
        texts = read_calibration_text(calibration_text, cfg.samples)
        meta = {"kind": "text", "file": str(calibration_text)}
    else:
        texts, used = build_prompts(cfg, eos=tokenizer.eos_token or "")
        meta = {"kind": "monolingual" if cfg.monolingual else "translation", "source": cfg.source,
                "src": _lang(cfg.src), "tgt": _lang(cfg.tgt), "direction": cfg.direction,
                "shots": cfg.shots, "template": cfg.template, "split": cfg.split,
                "shuffle": cfg.shuffle, "seed": cfg.seed, "pair_indices": used}
    return tokenize(texts, tokenizer, cfg.seq_len, meta)
