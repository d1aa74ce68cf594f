"""Rebuilding a tokenizer with fewer tokens, by editing its ``tokenizer.json``.

The ``tokenizers`` library stores a fast tokenizer as one JSON document: a normalizer, a
pre-tokenizer, a *model* (BPE: ``vocab`` ``{piece: id}`` and ``merges`` ``[[a, b], ...]`` in
priority order; Unigram: ``vocab`` ``[[piece, log-probability], ...]`` and ``unk_id``), the
``added_tokens`` matched whole before the model runs, and a post-processor that inserts special
tokens by id. Trimming keeps a chosen set of old ids and renumbers them in their old order
(``new id = rank of the old id among the kept``); BPE merges are kept when both parts and the result
are kept (the merge order is unchanged), Unigram pieces keep their scores, and every id in the
post-processor, padding and ``unk_id`` is renumbered. Normalizer, pre-tokenizer and decoder are not
touched, so a text whose tokenization only uses kept pieces and kept merges is tokenized into the
same pieces (methods.md §10).

Token texts (:func:`token_bytes`): SentencePiece-style pieces write a space as ``▁`` and bytes
without a piece as ``<0xNN>`` (byte fallback); byte-level BPE (GPT-2, Llama 3, Qwen, BLOOM) writes
every byte as one printable character (GPT-2's ``bytes_to_unicode`` table).

Supported: BPE (byte-level or SentencePiece-style, with or without byte fallback) and Unigram.
WordPiece, WordLevel and tokenizers without a ``tokenizer.json`` ("slow" ones) are refused by name.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import PolypruneError
from .scripts import TokenScripts, classify_bytes

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPACE = "\u2581"
#: Files a tokenizer may carry next to ``tokenizer.json`` that would describe the old vocabulary.
STALE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
               "vocab.txt", "added_tokens.json")


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte table (the inverse of ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _walk_types(node) -> list[str]:
    """Every ``type`` inside a normalizer/pre-tokenizer/decoder tree."""
    out = []
    if isinstance(node, dict):
        if "type" in node:
            out.append(node["type"])
        for v in node.values():
            out += _walk_types(v)
    elif isinstance(node, list):
        for v in node:
            out += _walk_types(v)
    return out


@dataclass
class TokenizerJSON:
    """A parsed ``tokenizer.json`` and what trimming needs to know about it.

    Attributes:
        data: the JSON document (not modified).
        kind: ``"BPE"`` or ``"Unigram"``.
        byte_level: pieces are GPT-2 byte characters.
        byte_fallback: unknown characters become ``<0xNN>`` pieces.
        pieces: ``[size]`` piece text of each id (``None`` for an unused id).
        added: ``{id: added-token entry}``.
        merges: BPE merges ``(a, b)`` in priority order (empty for Unigram).
        scores: Unigram log-probabilities by id (empty for BPE).
    """

    data: dict
    kind: str
    byte_level: bool
    byte_fallback: bool
    pieces: list
    added: dict
    merges: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.pieces)

    @property
    def special_ids(self) -> set[int]:
        return {i for i, a in self.added.items() if a.get("special")}

    @property
    def unk_id(self) -> int | None:
        m = self.data["model"]
        if self.kind == "Unigram":
            return m.get("unk_id")
        unk = m.get("unk_token")
        return self.piece_ids.get(unk) if unk is not None else None

    @property
    def piece_ids(self) -> dict[str, int]:
        if "_ids" not in self.__dict__:
            self.__dict__["_ids"] = {p: i for i, p in enumerate(self.pieces) if p is not None}
        return self.__dict__["_ids"]

    def byte_ids(self) -> set[int]:
        """The ids that spell single bytes: ``<0xNN>`` pieces (byte fallback) or the 256 one-character
        pieces of a byte-level alphabet. Every text stays encodable with these."""
        out = set()
        dec = byte_decoder()
        for i, p in enumerate(self.pieces):
            if p is None or i in self.added:
                continue
            if self.byte_fallback and BYTE_PIECE.fullmatch(p):
                out.add(i)
            elif self.byte_level and len(p) == 1 and p in dec:
                out.add(i)
        return out

    def token_bytes(self, i: int) -> bytes | None:
        """The text bytes token ``i`` stands for (``None`` for an unused id)."""
        p = self.pieces[i]
        if p is None:
            return None
        if i in self.added:
            return p.encode("utf-8")
        if self.byte_fallback:
            m = BYTE_PIECE.fullmatch(p)
            if m:
                return bytes([int(m.group(1), 16)])
        if self.byte_level:
            dec = byte_decoder()
            if all(c in dec for c in p):
                return bytes(dec[c] for c in p)
            return p.encode("utf-8")
        m = self.data["model"]
        pre, suf = m.get("continuing_subword_prefix"), m.get("end_of_word_suffix")
        if pre and p.startswith(pre) and len(p) > len(pre):
            p = p[len(pre):]
        if suf and p.endswith(suf) and len(p) > len(suf):
            p = p[:-len(suf)]
        return p.replace(SPACE, " ").encode("utf-8")

    def token_scripts(self) -> list[TokenScripts | None]:
        """:class:`~polyprune.slimming.scripts.TokenScripts` of every id (``None`` for unused ids)."""
        out = []
        for i in range(self.size):
            b = self.token_bytes(i)
            out.append(None if b is None else classify_bytes(b))
        return out

    def merge_result(self, a: str, b: str) -> str:
        pre = self.data["model"].get("continuing_subword_prefix")
        if pre and b.startswith(pre):
            b = b[len(pre):]
        return a + b

    def splits(self) -> dict[int, list[tuple[int, int]]]:
        """BPE: ``{result id: [(a id, b id), ...]}`` over every merge, in merge order."""
        if "_splits" not in self.__dict__:
            ids = self.piece_ids
            out: dict[int, list[tuple[int, int]]] = {}
            for a, b in self.merges:
                r = ids.get(self.merge_result(a, b))
                if r is not None and a in ids and b in ids:
                    out.setdefault(r, []).append((ids[a], ids[b]))
            self.__dict__["_splits"] = out
        return self.__dict__["_splits"]

    def closure(self, ids, all_splits: bool = True) -> set[int]:
        """``ids`` plus, recursively, the parts of the merges that produce them (BPE).

        With ``all_splits`` every merge producing a token contributes its parts (a superset of the
        merges any text can fire, so tokenization of text that used only ``ids`` is unchanged);
        otherwise only the first (highest-priority) merge does (enough to make each token reachable).
        """
        keep = set(ids)
        if self.kind != "BPE":
            return keep
        splits = self.splits()
        stack = list(keep)
        while stack:
            t = stack.pop()
            parts = splits.get(t, ())
            for a, b in (parts if all_splits else parts[:1]):
                for p in (a, b):
                    if p not in keep:
                        keep.add(p)
                        stack.append(p)
        return keep


def read_tokenizer_json(tokenizer) -> TokenizerJSON:
    """Parse the ``tokenizer.json`` of a Hugging Face fast tokenizer.

    Raises:
        PolypruneError: a tokenizer without ``tokenizer.json`` (a "slow" tokenizer) or of a kind
            that cannot be rebuilt (WordPiece, WordLevel, ...), named in the message.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PolypruneError(f"The tokenizer ({type(tokenizer).__name__}) has no tokenizer.json, so its vocabulary "
                             "cannot be rebuilt",
                             "use a model whose folder holds tokenizer.json (a fast tokenizer), or choose "
                             "vocabulary: none")
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    kind = model.get("type")
    if kind not in ("BPE", "Unigram"):
        raise PolypruneError(f"The tokenizer is a {kind or 'unknown'} tokenizer; Polyprune can rebuild only BPE and "
                             "Unigram vocabularies",
                             "choose vocabulary: none for this model (blocks and dtype still apply)")
    added = {int(a["id"]): a for a in data.get("added_tokens") or []}
    if kind == "BPE":
        vocab = model["vocab"]
        size = max(list(vocab.values()) + list(added) + [-1]) + 1
        pieces: list = [None] * size
        for p, i in vocab.items():
            pieces[i] = p
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
        if any(len(m) != 2 for m in merges):
            raise PolypruneError("The tokenizer's BPE merges are not pairs", "use the model's own tokenizer.json")
        scores = {}
    else:
        vocab = model["vocab"]
        size = max(len(vocab) - 1, *(list(added) or [-1])) + 1
        pieces = [None] * size
        scores = {}
        for i, (p, s) in enumerate(vocab):
            pieces[i] = p
            scores[i] = float(s)
        merges = []
    for i, a in added.items():
        pieces[i] = a["content"]
    types = _walk_types(data.get("pre_tokenizer")) + _walk_types(data.get("decoder"))
    return TokenizerJSON(data=data, kind=kind, byte_level="ByteLevel" in types,
                         byte_fallback=bool(model.get("byte_fallback")), pieces=pieces, added=added,
                         merges=merges, scores=scores)


def _remap(node, id_map: dict[int, int], piece_ids: dict[str, int]):
    """Renumber ids inside a post-processor / padding tree (``ids``, ``[token, id]`` pairs, ``pad_id``)."""
    if isinstance(node, list):
        if len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], int) and not isinstance(node[1], bool):
            return [node[0], _new(id_map, node[1], node[0])]
        return [_remap(v, id_map, piece_ids) for v in node]
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                out[k] = [_new(id_map, i, str(node.get("tokens"))) for i in v]
            elif k in ("pad_id", "sep_id", "cls_id") and isinstance(v, int):
                out[k] = _new(id_map, v, k)
            else:
                out[k] = _remap(v, id_map, piece_ids)
        return out
    return node


def _new(id_map: dict[int, int], old: int, what: str) -> int:
    if old not in id_map:
        raise PolypruneError(f"The tokenizer's special token {what} (id {old}) would be removed",
                             "keep special tokens (they are kept by every vocabulary mode; report this as a bug)")
    return id_map[old]


def trimmed_json(tj: TokenizerJSON, keep: list[int]) -> dict:
    """The ``tokenizer.json`` document with only the old ids ``keep`` (renumbered in old order).

    Raises:
        PolypruneError: a post-processor special token or the unknown token not in ``keep``.
    """
    keep = sorted(set(keep))
    id_map = {old: new for new, old in enumerate(keep)}
    data = json.loads(json.dumps(tj.data))  # deep copy
    model = data["model"]
    if tj.kind == "BPE":
        old_vocab = model["vocab"]
        model["vocab"] = {p: id_map[i] for p, i in sorted(old_vocab.items(), key=lambda kv: kv[1]) if i in id_map}
        vocab = model["vocab"]
        as_str = bool(model.get("merges")) and isinstance(model["merges"][0], str)
        merges = [(a, b) for a, b in tj.merges if a in vocab and b in vocab and tj.merge_result(a, b) in vocab]
        model["merges"] = [f"{a} {b}" for a, b in merges] if as_str else [[a, b] for a, b in merges]
        unk = model.get("unk_token")
        if unk is not None and unk not in vocab:
            raise PolypruneError(f"The unknown token {unk!r} would be removed", "keep special tokens")
    else:
        model["vocab"] = [[tj.pieces[i], tj.scores[i]] for i in keep if i in tj.scores]
        if model.get("unk_id") is not None:
            model["unk_id"] = _new(id_map, model["unk_id"], "unk")
    data["added_tokens"] = [dict(a, id=id_map[i]) for i, a in sorted(tj.added.items()) if i in id_map]
    for key in ("post_processor", "padding"):
        if data.get(key) is not None:
            data[key] = _remap(data[key], id_map, tj.piece_ids)
    return data


def remap_token_ids(cfg: dict, id_map: dict[int, int]) -> dict:
    """Renumber every ``*_token_id`` / ``*_token_ids`` / ``suppress_tokens`` entry of a config dict
    (``config.json``, ``generation_config.json``, nested ``text_config`` too); ids of removed tokens
    are dropped from lists and set to ``None`` when single."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out[k] = remap_token_ids(v, id_map)
        elif isinstance(k, str) and (k.endswith("token_id") or k.endswith("token_ids") or k in ("suppress_tokens", "begin_suppress_tokens")) \
                and v is not None:
            if isinstance(v, int) and not isinstance(v, bool):
                out[k] = id_map.get(v)
            elif isinstance(v, list):
                out[k] = [id_map[i] for i in v if isinstance(i, int) and i in id_map]
            else:
                out[k] = v
        else:
            out[k] = v
    return out


def build_tokenizer(source_tokenizer, data: dict, id_map: dict[int, int]):
    """A Hugging Face tokenizer with ``tokenizer.json`` = ``data``, loaded back with ``AutoTokenizer``
    so that it behaves (and saves) as the source tokenizer's class does.

    The source tokenizer is saved to a temporary folder, its ``tokenizer.json`` replaced, files that
    describe the old vocabulary (:data:`STALE_FILES`) removed, ``added_tokens_decoder`` ids in
    ``tokenizer_config.json`` renumbered.

    Raises:
        PolypruneError: the rebuilt tokenizer does not load, or loads with another vocabulary size.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    text = json.dumps(data, ensure_ascii=False)
    try:
        Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise PolypruneError(f"The rebuilt tokenizer is not valid: {e}", "report this as a bug with the model name") from e
    tmp = Path(tempfile.mkdtemp(prefix="polyprune-tok-"))
    try:
        source_tokenizer.save_pretrained(tmp)
        for name in STALE_FILES:
            (tmp / name).unlink(missing_ok=True)
        (tmp / "tokenizer.json").write_text(text, encoding="utf-8")
        cfg_path = tmp / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            dec = cfg.get("added_tokens_decoder")
            if isinstance(dec, dict):
                cfg["added_tokens_decoder"] = {str(id_map[int(k)]): v for k, v in dec.items() if int(k) in id_map}
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(str(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(tok) != len(id_map):
        raise PolypruneError(f"The rebuilt tokenizer has {len(tok)} tokens instead of {len(id_map)}",
                             "report this as a bug with the model name")
    if tok.pad_token_id is None and source_tokenizer.pad_token is not None:
        tok.pad_token = source_tokenizer.pad_token
    return tok


def sentencepiece_model(tj: TokenizerJSON) -> bytes:
    """A SentencePiece ``tokenizer.model`` (protobuf) equivalent to a SentencePiece-style
    ``tokenizer.json`` (BPE with ``▁`` spaces, or Unigram), for llama.cpp's converter.

    Piece types: ``<0xNN>`` byte pieces BYTE, special added tokens CONTROL, other added tokens
    USER_DEFINED, the unknown token UNKNOWN, the rest NORMAL. Scores: Unigram log-probabilities; for
    BPE ``-id`` (SentencePiece BPE merges the adjacent pair whose joined piece scores highest, and a
    SentencePiece-style ``tokenizer.json`` lists its pieces, and so its merges, in that order).

    Raises:
        PolypruneError: a byte-level tokenizer (it has no SentencePiece form).
    """
    from sentencepiece import sentencepiece_model_pb2 as spm

    if tj.byte_level:
        raise PolypruneError("A byte-level BPE tokenizer has no SentencePiece form", "report this as a bug")
    proto = spm.ModelProto()
    T = spm.ModelProto.SentencePiece.Type
    unk = tj.unk_id
    for i, p in enumerate(tj.pieces):
        sp = proto.pieces.add()
        sp.piece = p if p is not None else f"<unused-id-{i}>"
        if p is None:
            sp.type, sp.score = T.UNUSED, 0.0
        elif i == unk:
            sp.type, sp.score = T.UNKNOWN, 0.0
        elif i in tj.added:
            sp.type = T.CONTROL if tj.added[i].get("special") else T.USER_DEFINED
            sp.score = 0.0
        elif tj.byte_fallback and BYTE_PIECE.fullmatch(p):
            sp.type, sp.score = T.BYTE, 0.0
        else:
            sp.type = T.NORMAL
            sp.score = tj.scores[i] if tj.kind == "Unigram" else -float(i)
    ts = proto.trainer_spec
    ts.model_type = 1 if tj.kind == "Unigram" else 2
    ts.vocab_size = tj.size
    ts.byte_fallback = tj.byte_fallback
    ts.allow_whitespace_only_pieces = True
    ts.split_by_whitespace = False
    ts.unk_id = unk if unk is not None else 0
    ids = {a["content"]: i for i, a in tj.added.items()}
    for attr, names in (("bos", ("<bos>", "<s>")), ("eos", ("<eos>", "</s>")), ("pad", ("<pad>",))):
        found = next((n for n in names if n in ids), None)
        setattr(ts, f"{attr}_id", ids[found] if found else -1)
        if found:
            setattr(ts, f"{attr}_piece", found)
    if unk is not None:
        ts.unk_piece = tj.pieces[unk]
    ns = proto.normalizer_spec
    ns.name = "identity"
    types = _walk_types(tj.data.get("normalizer")) + _walk_types(tj.data.get("pre_tokenizer"))
    prepend = "Prepend" in types or any(
        isinstance(n, dict) and n.get("type") == "Metaspace" and n.get("prepend_scheme", "always") != "never"
        for n in _nodes(tj.data.get("pre_tokenizer")))
    ns.add_dummy_prefix = bool(prepend)
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return proto.SerializeToString()


def _nodes(node) -> list:
    if isinstance(node, dict):
        return [node] + [n for v in node.values() for n in _nodes(v)]
    if isinstance(node, list):
        return [n for v in node for n in _nodes(v)]
    return []
