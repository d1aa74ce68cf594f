"""A slimming plan (which tokens, blocks and heads go) and building the slimmed model from it.

The plan is data: the kept token ids (:class:`~polyprune.slimming.vocab.VocabChoice`), the removed
blocks with their influence, the heads to remove (a hook for ``polyprune.heads``, see
:func:`apply_heads`) and the export dtype. :func:`apply_plan` builds a new model from a loaded one
without changing it: the embedding rows (and LM head rows, tied or not) of the kept tokens are
selected in new-id order, the removed blocks dropped (:func:`~polyprune.slimming.blocks.remove_blocks`),
the config's vocabulary size and token ids renumbered. The slimmed model's logits at a kept token
are the source's logits at that token (the same hidden state times the same head row); only the
softmax over the smaller vocabulary differs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import PolypruneError
from ..models import DTYPES, find_blocks
from .blocks import remove_blocks
from .tokenizer_trim import remap_token_ids
from .vocab import VocabChoice

#: Parts of a model whose size the report counts.
PARTS = ("embedding", "lm_head", "blocks", "other")


@dataclass
class SlimPlan:
    """What a slimming run removes.

    Attributes:
        languages: kept FLORES-200 codes; scripts: their ISO 15924 scripts.
        vocab: the kept tokens (``None``: vocabulary unchanged).
        remove_blocks: removed block indices; influence: every block's ShortGPT influence.
        heads: HOOK for head removal (``polyprune.heads``), e.g. ``{block: [query heads]}``; the
            projection counts it (:func:`head_params` per head), :func:`apply_heads` applies it.
        dtype: export dtype.
    """

    languages: list[str]
    scripts: list[str]
    vocab: VocabChoice | None = None
    remove_blocks: list[int] = field(default_factory=list)
    influence: list[float] | None = None
    heads: object | None = None
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"languages": self.languages, "scripts": self.scripts,
                "vocab": self.vocab.to_dict() if self.vocab else None, "remove_blocks": self.remove_blocks,
                "block_influence": self.influence, "heads": self.heads, "dtype": self.dtype}


def apply_heads(model: nn.Module, heads) -> None:
    """HOOK: remove attention heads (the hard cut of ``polyprune.heads``) in place.

    To connect (after merging the heads branch): call the heads helper's hard cut here, e.g.
    ``polyprune.heads.<cut>(model, heads)`` removing ``q_proj`` rows and ``o_proj`` columns with a
    uniform count per block. It runs after vocabulary and block removal, on the new block indices
    (map old -> new with the kept blocks). Until then a plan with heads stops here with a clear
    message, before anything is written.

    Raises:
        PolypruneError: always, while head removal is not connected.
    """
    raise PolypruneError("Head removal is not connected to slimming yet",
                         "remove heads with the Heads panel / 'polyprune heads' first, then slim the exported model")


def part_sizes(model: nn.Module) -> dict[str, int]:
    """Parameters per part: ``embedding`` (input embedding), ``lm_head`` (0 when tied to the
    embedding), ``blocks`` (all decoder blocks), ``other`` (final norm, position embeddings...).
    Tied tensors are counted once."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    _, blocks = find_blocks(model)
    seen: set[int] = set()

    def count(params) -> int:
        n = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    out = {"embedding": count(emb.parameters()),
           "lm_head": count(head.parameters()) if head is not None else 0,
           "blocks": count(blocks.parameters())}
    out["other"] = count(model.parameters())
    return out


def head_params(model: nn.Module) -> int:
    """Parameters of one query head: its rows of ``q_proj`` and columns of ``o_proj`` (for the
    projection of head removal; the heads helper's hard cut removes exactly these)."""
    cfg = model.config
    hidden = int(getattr(cfg, "hidden_size", 0) or model.get_input_embeddings().weight.shape[1])
    heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
    head_dim = int(getattr(cfg, "head_dim", 0) or (hidden // heads if heads else 0))
    return 2 * hidden * head_dim


def apply_plan(model: nn.Module, plan: SlimPlan) -> nn.Module:
    """A new model with the plan applied (the source model is not changed; weights are copied).

    Args:
        model: the source causal LM.
        plan: what to remove.

    Returns:
        The slimmed model in eval mode, in the source's dtype (cast with
        ``model.to(DTYPES[plan.dtype])`` to export).

    Raises:
        PolypruneError: see :func:`~polyprune.slimming.blocks.remove_blocks` and :func:`apply_heads`.
    """
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    _, blocks = find_blocks(model)
    placeholder = nn.Parameter(torch.empty(0), requires_grad=False)
    memo = {id(emb.weight): placeholder}
    if head is not None and not tied:
        memo[id(head.weight)] = nn.Parameter(torch.empty(0), requires_grad=False)
    for i in plan.remove_blocks:
        for p in blocks[i].parameters():
            memo[id(p)] = placeholder
    new = copy.deepcopy(model, memo)
    n_emb = new.get_input_embeddings()
    n_head = new.get_output_embeddings()
    if plan.vocab is not None:
        keep = torch.tensor(plan.vocab.keep, dtype=torch.long, device=emb.weight.device)
        if int(keep.max()) >= emb.weight.shape[0]:
            raise PolypruneError(f"The tokenizer has ids up to {int(keep.max())} but the embedding only "
                                 f"{emb.weight.shape[0]} rows", "use the tokenizer that belongs to the model")
        id_map = plan.vocab.id_map()
        n_emb.weight = nn.Parameter(emb.weight.detach().index_select(0, keep).clone(), requires_grad=False)
        n_emb.num_embeddings = len(plan.vocab.keep)
        if getattr(n_emb, "padding_idx", None) is not None:
            n_emb.padding_idx = id_map.get(n_emb.padding_idx)
        if n_head is not None:
            if tied:
                n_head.weight = n_emb.weight
            else:
                n_head.weight = nn.Parameter(head.weight.detach().index_select(0, keep).clone(), requires_grad=False)
            if getattr(n_head, "bias", None) is not None:
                n_head.bias = nn.Parameter(head.bias.detach().index_select(0, keep).clone(), requires_grad=False)
            if hasattr(n_head, "out_features"):
                n_head.out_features = len(plan.vocab.keep)
        for cfg in (new.config, getattr(new.config, "text_config", None)):
            if cfg is not None and getattr(cfg, "vocab_size", None) is not None:
                cfg.vocab_size = len(plan.vocab.keep)
        _remap_config(new.config, id_map)
        if getattr(new, "generation_config", None) is not None:
            _remap_config(new.generation_config, id_map)
    else:
        n_emb.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        if n_head is not None:
            n_head.weight = n_emb.weight if tied else nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    if plan.remove_blocks:
        remove_blocks(new, plan.remove_blocks)
    if plan.heads:
        apply_heads(new, plan.heads)
    return new.eval()


def _remap_config(cfg, id_map: dict[int, int]) -> None:
    """Renumber the token ids of a config object in place."""
    d = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    new = remap_token_ids(d, id_map)
    for k, v in new.items():
        if v != d[k] and not isinstance(d[k], dict):
            setattr(cfg, k, v)
    sub = getattr(cfg, "text_config", None)
    if sub is not None and not isinstance(sub, dict):
        _remap_config(sub, id_map)


def cast(model: nn.Module, dtype: str) -> nn.Module:
    """``model.to(dtype)`` (in place) with the config's dtype recorded.

    Raises:
        PolypruneError: an unknown dtype.
    """
    if dtype not in DTYPES:
        raise PolypruneError(f"Unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    model.to(DTYPES[dtype])
    model.config.dtype = DTYPES[dtype]
    return model
