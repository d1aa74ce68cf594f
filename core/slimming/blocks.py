"""Block influence and block removal (ShortGPT, Men et al. 2024, arXiv 2403.03853, §3; methods.md §10).

Block influence of block ``l``: ``BI_l = 1 - mean over tokens of cos(x_l, x_{l+1})``, where ``x_l``
is the hidden state entering block ``l`` and ``x_{l+1}`` the one leaving it, over every real token
of the kept languages' texts (padding excluded). A block that barely turns its input (BI near 0)
can be removed with the least change; ShortGPT removes the ``k`` blocks of lowest BI.

Removing blocks keeps a stock config: the block count and every per-block list in the config (any
top-level list with one entry per block, e.g. Gemma 3's ``layer_types``) are cut the same way, and
each kept block's ``layer_idx`` (the key-value cache slot) is renumbered.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PolypruneError
from ..models import find_blocks
from ..progress import Progress, ensure

#: Config attributes that count the blocks, by family.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@torch.inference_mode()
def block_influence(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                    progress: Progress | None = None) -> list[float]:
    """ShortGPT block influence of every block.

    Args:
        model: a causal LM (any family :func:`~polyprune.models.find_blocks` knows).
        batches: ``[(input_ids [B, T], attention_mask [B, T]), ...]`` of the kept languages' text.

    Returns:
        ``[n_blocks]`` BI values in [0, 2] (float64 sums of float32 cosines).
    """
    progress = ensure(progress)
    _, blocks = find_blocks(model)
    n = len(blocks)
    sums = torch.zeros(n, dtype=torch.float64)
    count = 0
    inputs: dict[int, torch.Tensor] = {}
    mask_now: list[torch.Tensor] = []

    def pre(i):
        def hook(mod, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i):
        def hook(mod, args, kwargs, out):
            h_out = out[0] if isinstance(out, (tuple, list)) else out
            cos = nn.functional.cosine_similarity(inputs.pop(i).float(), h_out.float(), dim=-1)  # [B, T]
            sums[i] += cos[mask_now[0]].double().sum()
        return hook

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(post(i), with_kwargs=True) for i, b in enumerate(blocks)]
    dev = next(model.parameters()).device
    try:
        for k, (ids, mask) in enumerate(batches):
            progress.update(k, len(batches), "measuring block influence")
            m = mask.to(dev).bool()
            mask_now[:] = [m]
            base = getattr(model, "base_model", model)  # the LM head is not needed
            base(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
            count += int(m.sum())
    finally:
        for h in handles:
            h.remove()
    progress.update(len(batches), len(batches), "block influence measured")
    if count == 0:
        raise PolypruneError("No tokens to measure block influence on", "give texts in the kept languages")
    return [float(1.0 - s / count) for s in sums]


def least_influential(influence: list[float], k: int) -> list[int]:
    """The ``k`` blocks of lowest influence, ascending by index.

    Raises:
        PolypruneError: ``k`` negative, or removing every block.
    """
    n = len(influence)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise PolypruneError(f"The number of blocks to remove must be a whole number >= 0 (got {k!r})",
                             "give --remove-blocks 0 or more")
    if k >= n:
        raise PolypruneError(f"Removing {k} of the model's {n} blocks would leave none",
                             f"remove at most {n - 1} blocks")
    return sorted(sorted(range(n), key=lambda i: (influence[i], i))[:k])


def layer_count_key(config) -> str:
    """The config attribute that holds the block count."""
    for key in LAYER_COUNT_KEYS:
        if isinstance(getattr(config, key, None), int):
            return key
    raise PolypruneError(f"Cannot find the block count in the {type(config).__name__}",
                         "block removal supports configs with num_hidden_layers, n_layer or num_layers")


def remove_blocks(model: nn.Module, remove: list[int]) -> None:
    """Remove blocks ``remove`` from ``model`` in place and make its config consistent.

    The blocks' ``nn.ModuleList`` keeps the others in order; the config's block count and every
    top-level list with one entry per block (``layer_types``, ...) are cut the same way; every
    ``layer_idx`` attribute inside the kept blocks is renumbered.

    Raises:
        PolypruneError: an index out of range, or removing every block.
    """
    prefix, blocks = find_blocks(model)
    n = len(blocks)
    remove = sorted(set(remove))
    if any(not 0 <= i < n for i in remove):
        raise PolypruneError(f"Block indices {remove} are outside 0..{n - 1}", f"give blocks between 0 and {n - 1}")
    if len(remove) >= n:
        raise PolypruneError(f"Removing {len(remove)} of the model's {n} blocks would leave none",
                             f"remove at most {n - 1} blocks")
    if not remove:
        return
    keep = [i for i in range(n) if i not in remove]
    cfgs = [model.config] + [c for c in (getattr(model.config, "text_config", None),) if c is not None]
    for cfg in cfgs:
        key = layer_count_key(cfg) if any(isinstance(getattr(cfg, k, None), int) for k in LAYER_COUNT_KEYS) else None
        if key is None:
            continue
        lists = {k: v for k, v in vars(cfg).items() if isinstance(v, (list, tuple)) and len(v) == n
                 and not k.startswith("_") and k != "architectures"}
        setattr(cfg, key, len(keep))
        for k, v in lists.items():
            setattr(cfg, k, type(v)(v[i] for i in keep))
    new = nn.ModuleList([blocks[i] for i in keep])
    for j, block in enumerate(new):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = j
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    setattr(parent, prefix.rsplit(".", 1)[-1], new)
