"""Head gates: ``g[l, h]`` multiplies head ``h``'s slice of block ``l``'s output-projection input.

All gates 1 is the model as it is; ``g[l, h] = 0`` removes the head (Michel et al. 2019, §3; LAHIS
gates query heads the same way, methods.md §7). The gates are forward pre-hooks, so no weight is
touched and leaving the ``with`` block leaves the model exactly as it was.
"""
from __future__ import annotations

import torch
from torch import nn

from .locate import HeadLayout


def gate_input(x: torch.Tensor, gate: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``x [..., H·d]`` with head ``h``'s slice multiplied by ``gate[h]`` (``gate [H]``)."""
    shape = x.shape
    g = gate.to(device=x.device, dtype=x.dtype)
    return (x.reshape(*shape[:-1], -1, head_dim) * g[:, None]).reshape(shape)


class HeadGates:
    """Context manager that gates every head with ``gates [L, H]`` (a tensor that may require grad).

    ``gates`` may be replaced between forwards (``hg.gates = new``); blocks whose gates are all 1
    and do not require grad are passed through untouched. Hooks are removed on exit.

    Args:
        model: the causal LM; layout: its :class:`HeadLayout`; gates: ``[L, H]`` (default all 1).
        blocks: only gate these blocks (default all).
    """

    def __init__(self, model: nn.Module, layout: HeadLayout, gates: torch.Tensor | None = None,
                 blocks: list[int] | None = None):
        self.model = model
        self.layout = layout
        self.gates = gates if gates is not None else torch.ones(layout.n_blocks, layout.n_heads)
        self.blocks = list(range(layout.n_blocks)) if blocks is None else list(blocks)
        self.handles: list = []

    def _hook(self, block: int):
        d = self.layout.head_dim

        def hook(module, args, kwargs):
            g = self.gates[block]
            if not g.requires_grad and bool((g == 1).all()):
                return None
            x = args[0] if args else kwargs["input"]
            y = gate_input(x, g, d)
            if args:
                return (y,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "input": y}
        return hook

    def __enter__(self) -> "HeadGates":
        for b in self.blocks:
            mod = self.layout.out_proj(self.model, b)
            self.handles.append(mod.register_forward_pre_hook(self._hook(b), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
