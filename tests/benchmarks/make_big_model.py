"""Write a randomly initialised Llama-style checkpoint larger than a memory budget, shard by shard.

The block-streaming checks (issue 15) need a model that does not fit the budget they give. This
script writes one: by default hidden 2048, 16 blocks, intermediate 5632, 16 heads (3.3 GB in
float32, 822 M parameters), one safetensors shard per block plus one for the embedding, final norm
and LM head, an index, a config and a byte-level tokenizer (259 tokens). Only one block's tensors
are in memory at a time. Weights are ``N(0, std)`` from a generator seeded per tensor (the same
files every time), norms are ones.

    python tests/benchmarks/make_big_model.py --out /tmp/polyprune-big   # never inside the repository
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_tokenizer  # noqa: E402  (the tests' byte-level tokenizer)

from polyprune.checkpoint import ShardWriter  # noqa: E402


def tensor(name: str, shape: tuple[int, ...], std: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=g, dtype=torch.float32).mul_(std).to(dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=16)
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from transformers import LlamaConfig

    out = Path(a.out)
    if (out / "config.json").exists():
        print(f"{out} exists; remove it first", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, a.dtype)
    tok = make_tokenizer()
    vocab = len(tok)
    d, inter, hd = a.hidden, a.intermediate, a.hidden // a.heads
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_hidden_layers=a.blocks,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=4096,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False, dtype=a.dtype, architectures=["LlamaForCausalLM"])
    writer = ShardWriter(out, a.blocks + 1)
    t0 = time.perf_counter()
    total = 0
    for i in range(a.blocks):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj.weight": (a.heads * hd, d), "self_attn.k_proj.weight": (a.kv_heads * hd, d),
                  "self_attn.v_proj.weight": (a.kv_heads * hd, d), "self_attn.o_proj.weight": (d, a.heads * hd),
                  "mlp.gate_proj.weight": (inter, d), "mlp.up_proj.weight": (inter, d), "mlp.down_proj.weight": (d, inter)}
        ts = {p + k: tensor(p + k, s, a.std, a.seed, dtype) for k, s in shapes.items()}
        ts[p + "input_layernorm.weight"] = torch.ones(d, dtype=dtype)
        ts[p + "post_attention_layernorm.weight"] = torch.ones(d, dtype=dtype)
        writer.write(i + 1, ts)
        total += sum(t.numel() for t in ts.values())
        print(f"block {i + 1}/{a.blocks} written ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        del ts
    rest = {"model.embed_tokens.weight": tensor("model.embed_tokens.weight", (vocab, d), a.std, a.seed, dtype),
            "model.norm.weight": torch.ones(d, dtype=dtype),
            "lm_head.weight": tensor("lm_head.weight", (vocab, d), a.std, a.seed, dtype)}
    writer.write(a.blocks + 1, rest)
    total += sum(t.numel() for t in rest.values())
    writer.finish()
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"Wrote {out}: {total / 1e6:.1f} M parameters, {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
