"""Finding the attention heads of any decoder, generically (no per-family table).

A *head* is query head ``h`` of block ``l``; its output is the slice ``[h·d, (h+1)·d)`` of the input
of the block's attention output projection (Llama/Gemma/Qwen ``o_proj``, XGLM ``out_proj``, BLOOM
``self_attention.dense``, GPT-2 ``attn.c_proj``), ``d`` the head dimension (heads issue; methods.md §7).

How the output projection is found: in every block, the attention submodule is the outermost
submodule whose attribute or class name contains ``attn``/``attention`` and which holds at least two
linear layers; one probe forward with hooks records the order in which its linear layers are
called, and the *last* one is the output projection (the ones before it are the input projections:
``q/k/v_proj`` or a fused ``query_key_value``/``c_attn``). Head counts come from the config
(``num_attention_heads``, which transformers maps from ``n_head``/``attention_heads``), the head
dimension from ``head_dim`` or ``in_features / H``, KV heads from ``num_key_value_heads`` (default H).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PolypruneError
from ..models import find_blocks, is_prunable

#: Rows of the LM head applied at once (float32 logits ``[rows, vocab]``: 256 MiB for Gemma 3).
HEAD_CHUNK_ROWS = 256

_ATTN_NAME = re.compile(r"attn|attention", re.IGNORECASE)
EXPECTED = ("an attention submodule (named like self_attn, attn, attention or self_attention) whose last "
            "linear layer, the output projection (o_proj, out_proj, dense or c_proj), reads "
            "num_attention_heads x head_dim inputs")


@dataclass
class BlockAttention:
    """Where the heads of one block live.

    Attributes:
        block: block index (0 = first decoder block).
        attention: qualified name of the attention submodule (``model.layers.3.self_attn``).
        out_proj: qualified name of its output projection.
        in_projs: qualified names of the linear layers called before it, in call order.
    """

    block: int
    attention: str
    out_proj: str
    in_projs: list[str]


@dataclass
class HeadLayout:
    """The attention heads of a model.

    Attributes:
        n_blocks: decoder blocks L.
        n_heads: query heads per block H.
        n_kv_heads: key/value heads per block (``H`` without grouped-query attention).
        head_dim: d, the width of one head's slice.
        hidden_size: the model width (output width of the output projection).
        blocks: one :class:`BlockAttention` per block.
    """

    n_blocks: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    blocks: list[BlockAttention]

    @property
    def group_size(self) -> int:
        """Query heads per KV head (query head ``j`` reads KV head ``j // group_size``)."""
        return self.n_heads // self.n_kv_heads

    @property
    def n_total(self) -> int:
        """All heads of the model, ``L·H``."""
        return self.n_blocks * self.n_heads

    def out_proj(self, model: nn.Module, block: int) -> nn.Module:
        """The output projection module of ``block``."""
        return model.get_submodule(self.blocks[block].out_proj)

    def to_dict(self) -> dict:
        return {"n_blocks": self.n_blocks, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "head_dim": self.head_dim, "hidden_size": self.hidden_size,
                "out_proj": [b.out_proj for b in self.blocks]}


def _config(model: nn.Module):
    cfg = model.config
    text = getattr(cfg, "text_config", None)
    return text if text is not None and getattr(cfg, "num_attention_heads", None) is None else cfg


def _in_out(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    return (w.shape[1], w.shape[0]) if isinstance(module, nn.Linear) else (w.shape[0], w.shape[1])


def attention_module(block: nn.Module) -> tuple[str, nn.Module] | None:
    """The attention submodule of a block: the outermost one named like ``attn``/``attention``
    (attribute or class name) that holds at least two linear layers; ``None`` if there is none."""
    best = None
    for name, m in block.named_modules():
        if not name:
            continue
        if not (_ATTN_NAME.search(name.rsplit(".", 1)[-1]) or _ATTN_NAME.search(type(m).__name__)):
            continue
        if sum(1 for x in m.modules() if is_prunable(x)) < 2:
            continue
        if best is None or name.count(".") < best[0].count("."):
            best = (name, m)
    return best


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states ``[..., d]`` as the model's own forward computes them:
    the output embedding, then ``final_logit_softcapping`` (``tanh(x / c)·c``) when the config has it.
    Returns float32 ``[..., V]``."""
    head = model.get_output_embeddings()
    logits = head(hidden.to(head.weight.dtype)).float()
    cap = None
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None and getattr(cfg, "final_logit_softcapping", None) is not None:
            cap = float(cfg.final_logit_softcapping)
            break
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def find_heads(model: nn.Module, check_logits: bool = True) -> HeadLayout:
    """Locate every block's attention output projection and the head geometry.

    One probe forward (4 tokens) records the call order of the attention linears; with
    ``check_logits`` it also checks that :func:`lm_logits` of the base model's last hidden state
    reproduces ``model(...).logits`` (so NLLs computed from hidden states are the model's own).

    Raises:
        PolypruneError: no attention submodule in a block, no head count in the config, an output
            projection whose input width is not ``H·d``, a KV head count that does not divide H,
            or logits that are not the LM head of the last hidden state. The message names the
            module that was expected.
    """
    prefix, blocks = find_blocks(model)
    cfg = _config(model)
    family = getattr(cfg, "model_type", type(model).__name__)
    attn = []
    for i, block in enumerate(blocks):
        found = attention_module(block)
        if found is None:
            raise PolypruneError(f"Could not find the attention heads of block {i} ({type(block).__name__}) of this "
                                 f"{family} model: expected {EXPECTED}",
                                 "use a model with standard attention blocks (Llama, Gemma, Qwen, XGLM, BLOOM, GPT-2, "
                                 "...); head scoring cannot be used on this one")
        attn.append((f"{prefix}.{i}.{found[0]}", found[1]))
    H = getattr(cfg, "num_attention_heads", None)
    if not isinstance(H, int) or H < 1:
        raise PolypruneError(f"The config of this {family} model names no head count (num_attention_heads, n_head or "
                             "attention_heads)", "add num_attention_heads to config.json")
    n_kv = getattr(cfg, "num_key_value_heads", None) or H
    # probe forward: call order of the attention linears
    order: list[list[str]] = [[] for _ in blocks]
    handles = []
    for i, (aname, amod) in enumerate(attn):
        for lname, lin in amod.named_modules():
            if lname and is_prunable(lin):
                handles.append(lin.register_forward_hook(
                    lambda m, a, o, i=i, n=f"{aname}.{lname}": order[i].append(n)))
    vocab = int(getattr(cfg, "vocab_size", 8) or 8)
    device = next(model.parameters()).device
    ids = torch.tensor([[min(t, vocab - 1) for t in (2, 5, 7, 11)]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=False, output_hidden_states=False)
            hidden = model.base_model(input_ids=ids, use_cache=False)
            hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
            mine = lm_logits(model, hidden)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if check_logits and not torch.allclose(mine, out.logits.float(), atol=1e-4, rtol=1e-4):
        raise PolypruneError(f"This {family} model's logits are not its output embedding applied to the last hidden "
                             "state (with final_logit_softcapping), so head scores would not be its own NLL",
                             "use a causal LM whose head is a plain linear layer (Llama, Gemma, Qwen, XGLM, BLOOM, GPT-2)")
    layout_blocks = []
    d = None
    hidden_size = None
    for i, calls in enumerate(order):
        if not calls:
            raise PolypruneError(f"The attention of block {i} ({attn[i][0]}) called no linear layer in a forward pass: "
                                 f"expected {EXPECTED}", "use a model with standard attention blocks")
        seen = list(dict.fromkeys(calls))
        out_name = calls[-1]
        in_f, out_f = _in_out(model.get_submodule(out_name))
        if in_f % H:
            raise PolypruneError(f"The output projection {out_name} reads {in_f} inputs, which is not "
                                 f"num_attention_heads ({H}) x head_dim: expected {EXPECTED}",
                                 "check num_attention_heads in config.json; this model's heads cannot be located")
        di = in_f // H
        cfg_d = getattr(cfg, "head_dim", None)
        if isinstance(cfg_d, int) and cfg_d != di:
            raise PolypruneError(f"The output projection {out_name} reads {in_f} inputs, not num_attention_heads ({H}) "
                                 f"x head_dim ({cfg_d}): expected {EXPECTED}",
                                 "check num_attention_heads and head_dim in config.json")
        if d is not None and (di != d or out_f != hidden_size):
            raise PolypruneError(f"Block {i} has heads of width {di} but block 0 of width {d}",
                                 "Polyprune scores heads of models whose blocks all have the same head count")
        d, hidden_size = di, out_f
        layout_blocks.append(BlockAttention(i, attn[i][0], out_name, [n for n in seen if n != out_name]))
    if H % n_kv:
        raise PolypruneError(f"num_key_value_heads ({n_kv}) does not divide num_attention_heads ({H})",
                             "check config.json")
    return HeadLayout(len(blocks), H, int(n_kv), int(d), int(hidden_size), layout_blocks)
