"""The sequential engine: block inputs captured once, then one block at a time.

Wanda, SparseGPT and OWL (methods.md §1.2-§4) process a decoder one block at a time: cache the
inputs of block 0 for every calibration batch, run block ``i`` with hooks to gather statistics,
prune it, run it again to produce the inputs of block ``i + 1``. Memory is one block plus the
cached activations ``[N, L, d_model]``. This module knows no method: a method plugs in with two
functions (see :mod:`polyprune.pruning`), ``attach(modules, current_mask) -> (stats, handles)``
and ``prune_block(modules, gathered, sparsity, cfg, records)``.

Nothing here assumes a model layout. :func:`capture` records, for every block and every batch,
all positional and keyword arguments the model passes to that block (attention masks, position
embeddings, ALiBi, cache positions — which differ between layer types, e.g. Gemma 3's sliding and
full attention layers). It does this cheaply: each block's ``forward`` is temporarily replaced by a
recorder that passes its input through, so no block computation runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..models import base_model, find_blocks
from ..progress import Progress


class StopCapture(Exception):
    """Raised by the recorders to stop the model's forward after the last block was recorded."""




@dataclass
class BlockCall:
    """Arguments of one block call, with the hidden state taken out.

    ``args``/``kwargs`` are the call's arguments except the hidden state, which sits at
    ``args[hidden_index]`` (an int) or ``kwargs["hidden_states"]`` (``hidden_index is None``).
    """

    args: tuple
    kwargs: dict
    hidden_index: int | None

    def raw(self, block: nn.Module, hidden: torch.Tensor):
        """Run ``block`` on ``hidden`` ``[B, L, d]`` with these arguments; return its output as is."""
        if self.hidden_index is None:
            return block(*self.args, hidden_states=hidden, **self.kwargs)
        args = list(self.args)
        args.insert(self.hidden_index, hidden)
        return block(*args, **self.kwargs)

    def call(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on ``hidden`` ``[B, L, d]`` with these arguments; return the new hidden state."""
        out = self.raw(block, hidden)
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


def _output_is_tuple(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> tuple[bool, int]:
    out = call.raw(block, hidden)
    return isinstance(out, (tuple, list)), (len(out) if isinstance(out, (tuple, list)) else 1)


@torch.inference_mode()
def capture(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
            device: torch.device | str | None = None) -> BlockInputs:
    """Record block 0's inputs and every block's call arguments for each batch.

    Args:
        model: a causal LM (its ``base_model`` is run, so the LM head is never computed).
        batches: ``[(input_ids [B, L], attention_mask [B, L])]`` on any device.
        device: where the inputs go (default: the device of the model's first parameter).

    Returns:
        :class:`BlockInputs` with tensors on the model's device.
    """
    device = device if device is not None else next(model.parameters()).device
    _, blocks = find_blocks(model)
    base = base_model(model)
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
                        raise StopCapture
                    return (h,) + (None,) * (tuple_out[1] - 1) if tuple_out[0] else h
                return recorder

            for i, b in enumerate(blocks):
                b.forward = make_recorder(i)
            try:
                base(input_ids=ids, attention_mask=att, use_cache=False)
            except StopCapture:
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
                except StopCapture:
                    pass
            hidden.append(rec["h"])
    finally:
        for b, f in zip(blocks, originals):
            if "forward" in b.__dict__:
                del b.forward
    return BlockInputs(hidden, calls, masks, sum(int(m.shape[0]) for m in masks))


def capture_bytes(n_samples: int, length: int, hidden: int, dtype_bytes: int, batch_size: int) -> int:
    """Memory the engine holds for one calibration set: the cached hidden states ``[N, L, d]`` in
    the model's dtype, the attention masks recorded per batch (at most ``[B, 1, L, L]`` float32
    each), and one batch's block activations in flight (about ``8 x [B, L, d]`` float32)."""
    batches = -(-n_samples // batch_size)
    hidden_states = n_samples * length * hidden * dtype_bytes
    masks = batches * batch_size * length * length * 4
    in_flight = 8 * batch_size * length * hidden * 4
    return hidden_states + masks + in_flight


@dataclass
class Gathered:
    """Statistics of one calibration set for the modules of one block.

    Attributes:
        stats: ``{module name: statistic}`` as the method's ``attach`` made them.
        n_samples: calibration samples N of the set (Wanda divides its sums by N).
    """

    stats: dict
    n_samples: int


def run_block(block: nn.Module, i: int, inputs: BlockInputs, progress: Progress,
              attach: Callable | None = None, modules: dict[str, nn.Module] | None = None,
              update: bool = False) -> dict:
    """Run block ``i`` over every cached batch.

    Args:
        attach: ``attach(modules, current_mask) -> (stats, handles)``: hooks gathering statistics
            of ``modules`` while the batches run (``current_mask[0]`` holds the batch's token mask).
        update: replace the cached hidden states by the block's outputs (propagation).

    Returns:
        The statistics (``{}`` without ``attach``).
    """
    current_mask: list = [None]
    stats, handles = attach(modules, current_mask) if attach is not None and modules else ({}, [])
    try:
        for b, h in enumerate(inputs.hidden):
            progress.check()
            current_mask[0] = inputs.token_masks[b]
            out = inputs.calls[i][b].call(block, h)
            if update:
                inputs.hidden[b] = out
    finally:
        for hd in handles:
            hd.remove()
    return stats


PerBlock = Callable[[int, nn.Module, list[BlockInputs]], bool]


class BlockSource(Protocol):
    """Where the blocks' weights come from when they are not all in memory (block streaming,
    :class:`polyprune.pruning.stream_source.BlockStream`): ``capture`` replaces :func:`capture`,
    ``open(i)`` makes block ``i``'s weights real (returns the block), ``close(i)`` writes and frees them."""

    def capture(self, model: nn.Module, batches: list) -> BlockInputs: ...

    def open(self, i: int) -> nn.Module: ...

    def close(self, i: int) -> None: ...


def run(model: nn.Module, batch_sets: list[list[tuple[torch.Tensor, torch.Tensor]]], per_block: PerBlock,
        progress: Progress, what: str = "Pruning", source: BlockSource | None = None) -> None:
    """Capture block-0 inputs of each batch set, then for every block call
    ``per_block(i, block, inputs)`` and propagate the block's outputs to the next block.

    ``per_block`` returns True when it already moved the inputs to the block's outputs (a dense
    pass that gathered statistics with ``update=True``), so the block is not run again. With a
    ``source`` (block streaming) each block is opened before and closed after its turn.
    """
    _, blocks = find_blocks(model)
    progress.update(0, len(blocks) + 1, "Capturing block inputs")
    inputs = [capture(model, batches) if source is None else source.capture(model, batches) for batches in batch_sets]
    for i, block in enumerate(blocks):
        progress.update(i, len(blocks), f"{what} block {i + 1}/{len(blocks)}")
        if source is not None:
            block = source.open(i)
        if not per_block(i, block, inputs):
            for inp in inputs:
                run_block(block, i, inp, progress, update=True)
        if source is not None:
            source.close(i)
    progress.update(len(blocks), len(blocks), f"{what} done")
