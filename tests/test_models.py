"""Generic block/linear discovery, loading and its errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import FAMILIES, make_tiny_model, make_tokenizer, save_tiny
from polyprune.errors import PolypruneError
from polyprune.models import all_prunable, find_blocks, is_prunable, load_model, model_info, weight_matrix

EXPECTED = {  # what a per-family table would say; we find it generically
    "xglm": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"},
    "bloom": {"self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
    "gpt2": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
    "llama": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "gemma3": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_generic_discovery(family):
    model = make_tiny_model(family)
    prefix, blocks = find_blocks(model)
    assert len(blocks) == model.config.num_hidden_layers
    mods = all_prunable(model)
    names = {k.split(f"{prefix}.0.", 1)[1] for k in mods if k.startswith(f"{prefix}.0.")}
    assert names == EXPECTED[family]
    # embeddings and LM head are never among the prunable layers
    head = model.get_output_embeddings()
    assert all(m is not head for m in mods.values())
    info = model_info(model)
    assert info["n_blocks"] == len(blocks) and info["prunable_parameters"] < info["parameters"]


def test_conv1d_weight_view_is_transposed_and_shared():
    model = make_tiny_model("gpt2")
    m = dict(model.named_modules())["transformer.h.0.mlp.c_fc"]
    w = weight_matrix(m)
    assert w.shape == (m.nf, m.weight.shape[0])  # [out, in]
    w[0, 1] = 123.0
    assert m.weight[1, 0] == 123.0
    assert is_prunable(m) and not is_prunable(nn.LayerNorm(4))


def test_load_local_folder(tmp_path):
    path = save_tiny(tmp_path, "llama")
    lm = load_model(str(path))
    assert lm.info()["n_blocks"] == 2 and lm.tokenizer.pad_token_id is not None
    assert lm.path == path


@pytest.mark.parametrize("setup,needle", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no config.json"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "not a .gguf"),
])
def test_bad_model_paths(tmp_path, setup, needle):
    with pytest.raises(PolypruneError, match=needle):
        load_model(str(setup(tmp_path)))


def test_hub_id_offline_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PolypruneError, match="hub"):
        load_model("facebook/xglm-564M-not-cached")


def test_bert_is_rejected(tmp_path):
    import transformers as tf
    cfg = tf.BertConfig(vocab_size=259, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64)
    tf.BertForMaskedLM(cfg).save_pretrained(tmp_path / "bert")
    make_tokenizer().save_pretrained(tmp_path / "bert")
    with pytest.raises(PolypruneError, match="not a causal language model"):
        load_model(str(tmp_path / "bert"))


def test_bad_dtype_and_device(tmp_path):
    path = save_tiny(tmp_path, "gpt2")
    with pytest.raises(PolypruneError, match="dtype"):
        load_model(str(path), dtype="float8")
    with pytest.raises(PolypruneError, match="device"):
        load_model(str(path), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PolypruneError, match="CUDA"):
            load_model(str(path), device="cuda")


def test_bfloat16_load_and_prune_statistics_in_float32(tmp_path):
    from polyprune.calibration import tokenize
    from polyprune.pruning import prune
    from polyprune.recipe import PruneConfig
    lm = load_model(str(save_tiny(tmp_path, "llama")), dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    cal = tokenize(["hello world, bonjour le monde", "habari dunia"], lm.tokenizer, 16)
    res = prune(lm.model, PruneConfig(sparsity=0.5), cal)
    assert abs(res.overall - 0.5) < 1e-9
