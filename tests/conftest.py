"""Shared fixtures: tiny random models of five families, a byte-level tokenizer, shared data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

FAMILIES = ["xglm", "bloom", "gpt2", "llama", "gemma3"]


def shared_data_dir() -> Path | None:
    """``$POLYPRUNE_DATA`` or ``../shared/data`` beside the repository, if it exists."""
    env = os.environ.get("POLYPRUNE_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data not found: set POLYPRUNE_DATA or place shared/data beside the repository")
    return path


def make_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <pad>, <s>, </s>) that handles every script."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


VOCAB = 259


def make_config(family: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "xglm":
        return tf.XGLMConfig(d_model=32, ffn_dim=64, num_layers=2, attention_heads=4,
                             max_position_embeddings=256, **common)
    if family == "bloom":
        return tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=256, **common)
    if family == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                   max_position_embeddings=256, sliding_window=16,
                                   layer_types=["sliding_attention", "sliding_attention",
                                                "full_attention"], **common)
    raise ValueError(family)


def make_tiny_model(family: str, seed: int = 0):
    """A randomly initialised causal LM of ``family`` (float32, eval mode, CPU)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family), attn_implementation="eager")
    # Random init leaves some weights tiny; widen the spread so activations are non-trivial.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny_model(family):
    return make_tiny_model(family)


def save_tiny(tmp_path: Path, family: str = "llama") -> Path:
    """Save a tiny model + tokenizer as a local Hugging Face folder and return its path."""
    path = tmp_path / f"tiny-{family}"
    make_tiny_model(family).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


#: Tests whose outcome the summary names on its own line, so a CI log shows they ran (a skip would
#: otherwise hide among the dots): the lm-evaluation-harness parity test above all.
NAMED_IN_SUMMARY = ("tests/test_tasks.py::test_identical_to_lm_eval",)


def pytest_terminal_summary(terminalreporter):
    for nodeid in NAMED_IN_SUMMARY:
        outcome = "not collected"
        for key in ("passed", "failed", "error", "skipped"):
            if any(getattr(r, "nodeid", "") == nodeid for r in terminalreporter.stats.get(key, [])):
                outcome = key
                break
        whole_suite = not terminalreporter.config.args or terminalreporter.config.args == ["tests"]
        if outcome != "not collected" or whole_suite:
            terminalreporter.write_line(f"{nodeid}: {outcome}")
