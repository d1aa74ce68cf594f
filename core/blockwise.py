"""Block-by-block execution of a decoder, the engine under sequential pruning.

Wanda and SparseGPT (methods.md §1.2, §2) process a decoder one block at a time: cache the
inputs of block 0 for every calibration batch, run block ``i`` to gather statistics, prune it,
run it again to produce the inputs of block ``i + 1``. Memory is one block plus the cached
activations ``[N, L, d_model]``.

Unlike the public Wanda code, nothing here assumes a model layout. :func:`capture` records, for
every block and every batch, all positional and keyword arguments the model passes to that block
(attention masks, position embeddings, ALiBi, cache positions — which differ between layer types,
e.g. Gemma 3's sliding and full attention layers). It does this cheaply: each block's ``forward``
is temporarily replaced by a recorder that passes its input through, so no block computation runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .models import find_blocks


class _Stop(Exception):
    pass


@dataclass
class BlockCall:
    """Arguments of one block call, with the hidden state taken out.

    ``args``/``kwargs`` are the call's arguments except the hidden state, which sits at
    ``args[hidden_index]`` (an int) or ``kwargs["hidden_states"]`` (``hidden_index is None``).
    """

    args: tuple
    kwargs: dict
    hidden_index: int | None

    def call(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on ``hidden`` ``[B, L, d]`` with these arguments; return the new hidden state."""
        if self.hidden_index is None:
            out = block(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            args = list(self.args)
            args.insert(self.hidden_index, hidden)
            out = block(*args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    if args:
        return args[0], BlockCall(tuple(args[1:]), dict(kwargs), 0)
    kw = dict(kwargs)
    hidden = kw.pop("hidden_states")
    return hidden, BlockCall((), kw, None)


@dataclass
class BlockInputs:
    """Everything needed to run the blocks one at a time.

    Attributes:
        hidden: per batch, the current hidden state ``[B, L, d]`` (block 0's input at first).
        calls: ``calls[i][b]`` is the :class:`BlockCall` for block ``i`` on batch ``b``.
        token_masks: per batch, ``[B, L]`` bool, True on real tokens.
        n_samples: number of calibration samples N.
    """

    hidden: list[torch.Tensor]
    calls: list[list[BlockCall]]
    token_masks: list[torch.Tensor]
    n_samples: int


def _base(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else model


def _output_is_tuple(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> tuple[bool, int]:
    if call.hidden_index is None:
        out = block(*call.args, hidden_states=hidden, **call.kwargs)
    else:
        args = list(call.args)
        args.insert(call.hidden_index, hidden)
        out = block(*args, **call.kwargs)
    return isinstance(out, (tuple, list)), (len(out) if isinstance(out, (tuple, list)) else 1)


@torch.inference_mode()
def capture(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> BlockInputs:
    """Record block 0's inputs and every block's call arguments for each batch.

    Args:
        model: a causal LM (its ``base_model`` is run, so the LM head is never computed).
        batches: ``[(input_ids [B, L], attention_mask [B, L])]`` on any device.

    Returns:
        :class:`BlockInputs` with tensors on the model's device.
    """
    device = next(model.parameters()).device
    _, blocks = find_blocks(model)
    base = _base(model)
    hidden, calls = [], [[] for _ in blocks]
    masks = []
    tuple_out: tuple[bool, int] | None = None
    originals = [b.forward for b in blocks]
    try:
        for ids, att in batches:
            ids, att = ids.to(device), att.to(device)
            masks.append(att.bool())
            rec: dict[int, Any] = {}

            def make_recorder(i: int):
                def recorder(*args, **kwargs):
                    h, call = _split_hidden(args, kwargs)
                    calls[i].append(call)
                    if i == 0:
                        rec["h"] = h
                    if i == len(blocks) - 1 or tuple_out is None:
                        raise _Stop
                    return (h,) + (None,) * (tuple_out[1] - 1) if tuple_out[0] else h
                return recorder

            for i, b in enumerate(blocks):
                b.forward = make_recorder(i)
            try:
                base(input_ids=ids, attention_mask=att, use_cache=False)
            except _Stop:
                pass
            if tuple_out is None:
                # First batch: learn the block's output format from one real call, then record the
                # other blocks' arguments with pass-through recorders.
                for b, f in zip(blocks, originals):
                    b.forward = f
                tuple_out = _output_is_tuple(blocks[0], rec["h"], calls[0][0])
                for lst in calls:
                    lst.clear()
                for i, b in enumerate(blocks):
                    b.forward = make_recorder(i)
                try:
                    base(input_ids=ids, attention_mask=att, use_cache=False)
                except _Stop:
                    pass
            hidden.append(rec["h"])
    finally:
        for b, f in zip(blocks, originals):
            if "forward" in b.__dict__:
                del b.forward
    return BlockInputs(hidden, calls, masks, sum(int(m.shape[0]) for m in masks))


class ColumnStats:
    """Running per-input-column statistics of a linear layer's inputs over real tokens.

    ``sumsq[j] = Σ_n Σ_t x_{n,t,j}²`` in float32 whatever the model dtype (Wanda's scaler times N).
    Padding positions are excluded through the token mask of the current batch.
    """

    def __init__(self, in_features: int, device):
        self.sumsq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Accumulate inputs ``x`` ``[..., in]`` with ``mask`` ``[...]`` (bool, True = real token)."""
        x = x.reshape(-1, x.shape[-1]).float()
        if mask is not None and mask.numel() == x.shape[0]:
            m = mask.reshape(-1).float()
            self.sumsq += (x * x).t() @ m
            self.tokens += int(m.sum())
        else:  # e.g. routed MoE experts: every row is a real token
            self.sumsq += (x * x).sum(0)
            self.tokens += x.shape[0]


def attach_stats(modules: dict[str, nn.Module], current_mask: list) -> tuple[dict[str, ColumnStats], list]:
    """Register forward hooks that feed each module's input into a :class:`ColumnStats`.

    ``current_mask[0]`` must hold the token mask of the batch being run. Modules that receive the
    same input tensor (q/k/v projections) share one computation. Returns ``(stats, handles)``.
    """
    stats: dict[str, ColumnStats] = {}
    handles = []
    cache: dict = {}
    for name, m in modules.items():
        w = m.weight
        in_features = w.shape[1] if isinstance(m, nn.Linear) else w.shape[0]
        stats[name] = ColumnStats(in_features, w.device)

        def hook(mod, inp, out, name=name):
            x = inp[0]
            if cache.get("x") is x:  # same tensor object as the previous hook's input (q/k/v)
                s = cache["stat"]
            else:
                s = ColumnStats(x.shape[-1], x.device)
                s.add(x.detach(), current_mask[0])
                cache["x"], cache["stat"] = x, s  # holding x keeps its identity unique
            stats[name].sumsq += s.sumsq
            stats[name].tokens += s.tokens

        handles.append(m.register_forward_hook(hook))
    return stats, handles
