"""Tiny tokenizers and models for the slimming tests (trained here on a few sentences, seconds).

* :func:`spm_bpe` — SentencePiece-style BPE like Gemma 3's: ``▁`` spaces, no pre-tokenizer split,
  256 byte-fallback pieces ``<0xNN>``, merges learned on English, French and Russian text.
* :func:`unigram` — a Unigram tokenizer with ``▁`` spaces and byte fallback.
* :func:`byte_bpe` — byte-level BPE (GPT-2 style), merges learned across multi-byte characters.
* :func:`tiny_lm` — a tiny random causal LM whose vocabulary matches a tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

LATIN = [
    "The cat sat on the mat and the dog ran to the park.",
    "Scientists announced a new diagnostic tool that can sort cells by type.",
    "Le café est très bon à Paris, près de la rivière.",
    "Élodie a mangé une crème brûlée, et c'était délicieux.",
    "Habari ya asubuhi, rafiki yangu; tutaonana kesho.",
    "The theory of the thing is that there are three thin threads.",
]
CYRILLIC = [
    "Кошка сидит на ковре, а собака бежит в парк.",
    "Учёные объявили о новом инструменте для диагностики.",
    "Москва — столица России, и это большой город.",
]
CORPUS = LATIN * 3 + CYRILLIC * 3
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def _add_bytes(data: dict) -> dict:
    """Put 256 ``<0xNN>`` pieces after the special tokens and turn byte fallback on (BPE)."""
    model = data["model"]
    old = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    specials = [p for p, _ in old if p in SPECIALS]
    rest = [p for p, _ in old if p not in SPECIALS]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + rest
    model["vocab"] = {p: i for i, p in enumerate(pieces)}
    model["byte_fallback"] = True
    model["fuse_unk"] = True
    data["added_tokens"] = [dict(a, id=model["vocab"][a["content"]]) for a in data["added_tokens"]]
    return data


def spm_bpe(vocab_size: int = 420):
    """A Gemma-like BPE tokenizer (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    data = _add_bytes(json.loads(tok.to_str()))
    data["pre_tokenizer"] = None  # like Gemma: BPE over the whole text, merges may cross spaces
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", 2)])
    return _wrap(tok)


def unigram(vocab_size: int = 300):
    """A SentencePiece-style Unigram tokenizer with byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    specials = [v for v in vocab if v[0] in SPECIALS]
    rest = [v for v in vocab if v[0] not in SPECIALS]
    data["model"]["vocab"] = specials + [[f"<0x{b:02X}>", 0.0] for b in range(256)] + rest
    data["model"]["byte_fallback"] = True
    data["model"]["unk_id"] = 3
    data["added_tokens"] = [dict(a, id=SPECIALS.index(a["content"])) for a in data["added_tokens"]]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return _wrap(tok)


def byte_bpe(vocab_size: int = 420):
    """A GPT-2-style byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return _wrap(tok)


def tiny_lm(family: str, vocab_size: int, seed: int = 0, layer_types: list[str] | None = None):
    """A tiny random causal LM of ``family`` (conftest's configs) with ``vocab_size`` tokens
    (Gemma 3: optionally other ``layer_types``)."""
    from conftest import make_config
    from transformers import AutoModelForCausalLM

    cfg = make_config(family)
    cfg.vocab_size = vocab_size
    if layer_types is not None:
        cfg.num_hidden_layers = len(layer_types)
        cfg.layer_types = list(layer_types)
    cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = 0, 1, 2
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()


def save_lm(path: Path, model, tokenizer) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
