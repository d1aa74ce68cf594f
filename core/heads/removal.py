"""Removing heads: which (the keep/drop rule), soft (zeroed) and hard (deleted) cuts (methods.md §7).

*Soft* removal zeroes a head's columns ``[h·d, (h+1)·d)`` of the output projection's weight (the
bias stays): exactly what gate 0 does, the checkpoint keeps its size and reloads anywhere, and
:meth:`SoftRemoval.restore` puts the columns back bit-exactly.

*Hard* removal deletes the head: rows ``[h·d, (h+1)·d)`` of the query projection (and its bias), the
same columns of the output projection, and a KV head's rows of the key/value projections only when
all its query heads go (query head ``j`` reads KV head ``j // (H/H_kv)``). transformers 5 keeps one
head count for all blocks and validates ``hidden_size % num_attention_heads == 0``, so a stock
``from_pretrained`` reloads only a cut that removes the same number of query heads from every block,
leaves every remaining KV head the same number of query heads, and passes that validation; Gemma 3
and Llama store ``head_dim`` explicitly, XGLM/GPT-2/BLOOM derive it (no stock hard cut).
:func:`stock_problem` checks all of this by building the new config and the stock model skeleton,
:func:`nearest_stock` finds the closest set that passes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import PolypruneError
from ..languages import language_name
from ..models import weight_matrix
from .classify import top_set
from .locate import HeadLayout
from .scoring import HeadScores

Head = tuple[int, int]
Heads = dict[int, list[int]]


def describe_heads(heads: Heads) -> str:
    """``"block 3: heads 0, 2; block 7: head 1"``."""
    return "; ".join(f"block {b}: head{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))}" for b, hs in sorted(heads.items()))


def count_heads(heads: Heads) -> int:
    return sum(len(v) for v in heads.values())


def check_heads(layout: HeadLayout, heads: Heads) -> Heads:
    """Validate a removal ``{block: [heads]}`` against the model; returns it sorted, without empty blocks.

    Raises:
        PolypruneError: a block or head out of range, no head at all, or a block left without heads.
    """
    out: Heads = {}
    for b, hs in heads.items():
        b = int(b)
        if not 0 <= b < layout.n_blocks:
            raise PolypruneError(f"Block {b} does not exist (the model has blocks 0 to {layout.n_blocks - 1})",
                                 "name blocks counting from 0 in the head list")
        for h in hs:
            if not 0 <= int(h) < layout.n_heads:
                raise PolypruneError(f"Head {b}:{h} does not exist (each block has heads 0 to {layout.n_heads - 1})",
                                     "name heads counting from 0 in the head list")
        if hs:
            out[b] = sorted({int(h) for h in hs})
        if len(out.get(b, [])) >= layout.n_heads:
            raise PolypruneError(f"The removal takes all {layout.n_heads} heads of block {b}, which would empty its attention",
                                 f"keep at least one head in block {b}: remove fewer heads there (or lower the top share / "
                                 "add a language to keep)")
    if not out:
        raise PolypruneError("The removal holds no heads", 'give at least one head, e.g. --heads "3:0"')
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# which heads: the keep/drop rule
# ---------------------------------------------------------------------------------------------
@dataclass
class RemovalPlan:
    """Heads proposed for removal and why.

    Attributes:
        heads: ``{block: [heads]}``. order: the same heads, most important for the dropped languages first.
        keep, drop: languages. kind: score kind used. k: top-set size. rule: the rule in words.
        priority: ``[L, H]`` the highest score of each head among the dropped languages.
        predicted: ``{language: Σ taylor over the heads}`` (first-order NLL change, nats/token).
    """

    heads: Heads
    order: list[Head]
    keep: list[str]
    drop: list[str]
    kind: str
    k: int
    rule: str
    priority: np.ndarray
    predicted: dict[str, float] = field(default_factory=dict)


def propose_removal(scores: HeadScores, keep: list[str], drop: list[str], top_share: float, kind: str,
                    max_heads: int = 0) -> RemovalPlan:
    """The heads that matter for the dropped languages and not for the kept ones.

    Rule: with ``k = max(1, round(q·L·H))``, a head is proposed when it is among the ``k`` highest
    ``kind`` scores of at least one dropped language and among the ``k`` highest of no kept
    language; proposed heads are ordered by their highest score among the dropped languages, and
    only the first ``max_heads`` are kept when that is > 0.

    Raises:
        PolypruneError: a kept or dropped language was not scored, or that kind was not computed.
    """
    s = scores.get(kind)
    L, H = scores.shape
    k = max(1, int(round(top_share * L * H)))
    dropped = {x for lang in drop for x in top_set(s[scores.index(lang)], k)}
    kept = {x for lang in keep for x in top_set(s[scores.index(lang)], k)}
    priority = np.max(np.stack([s[scores.index(lang)] for lang in drop]), axis=0)
    order = sorted(dropped - kept, key=lambda x: (-priority[x], x))
    if max_heads:
        order = order[:max_heads]
    heads: Heads = {}
    for l, h in order:
        heads.setdefault(l, []).append(h)
    heads = {b: sorted(v) for b, v in sorted(heads.items())}
    names = lambda langs: ", ".join(language_name(x) for x in langs) or "none"  # noqa: E731
    rule = (f"heads among the {k} highest {kind} scores ({top_share:.1%} of {L * H}) of at least one dropped language "
            f"({names(drop)}) and among those of no kept language ({names(keep)}), ordered by their highest score among "
            f"the dropped languages" + (f", at most {max_heads}" if max_heads else ""))
    plan = RemovalPlan(heads, order, list(keep), list(drop), kind, k, rule, priority)
    plan.predicted = predicted_effects(scores, order)
    return plan


def predicted_effects(scores: HeadScores, heads: list[Head]) -> dict[str, float]:
    """First-order NLL change per scored language for removing ``heads``: ``Σ taylor[l, h]``
    (NaN where taylor was not computed)."""
    return {lang: float(sum(scores.taylor[i][l, h] for l, h in heads)) for i, lang in enumerate(scores.languages)}


# ---------------------------------------------------------------------------------------------
# soft removal
# ---------------------------------------------------------------------------------------------
class SoftRemoval:
    """Zero the removed heads' columns of the output projections; :meth:`restore` undoes it bit-exactly.

    Args:
        model: the causal LM (changed in place). layout: its heads. heads: ``{block: [heads]}``.
    """

    def __init__(self, model: nn.Module, layout: HeadLayout, heads: Heads):
        self.model, self.layout, self.heads = model, layout, check_heads(layout, heads)
        self.saved: list[tuple[torch.Tensor, list[int], torch.Tensor]] = []
        d = layout.head_dim
        with torch.no_grad():
            for b, hs in self.heads.items():
                w = weight_matrix(layout.out_proj(model, b))  # [out, in] view
                cols = [c for h in hs for c in range(h * d, (h + 1) * d)]
                self.saved.append((w, cols, w[:, cols].clone()))
                w[:, cols] = 0

    @property
    def zeroed(self) -> int:
        """Weights set to zero."""
        return sum(int(v.numel()) for _, _, v in self.saved)

    def restore(self) -> None:
        """Put every zeroed column back exactly as it was (idempotent)."""
        with torch.no_grad():
            for w, cols, v in self.saved:
                w[:, cols] = v
        self.saved = []


# ---------------------------------------------------------------------------------------------
# hard removal
# ---------------------------------------------------------------------------------------------
def _out_features(module: nn.Module) -> int:
    return int(weight_matrix(module).shape[0])


def _structure(layout: HeadLayout, heads: Heads) -> tuple[str | None, int, int, dict[int, list[int]]]:
    """``(problem, H', H_kv', {block: removed KV heads})`` of a removal under the stock rules."""
    H, g = layout.n_heads, layout.group_size
    shapes, kv_removed = set(), {}
    for b in range(layout.n_blocks):
        R = set(heads.get(b, []))
        per_group = [sum(1 for h in range(c * g, (c + 1) * g) if h in R) for c in range(layout.n_kv_heads)]
        gone = [c for c, r in enumerate(per_group) if r == g]
        left = {r for r in per_group if r < g}
        if len(left) > 1:
            return (f"block {b} would leave its KV heads different numbers of query heads "
                    f"({', '.join(str(g - r) for r in per_group if r < g)}); every KV head must keep the same number", 0, 0, {})
        kv_removed[b] = gone
        shapes.add((H - len(R), layout.n_kv_heads - len(gone)))
    if len(shapes) > 1:
        counts = sorted({h for h, _ in shapes})
        return (f"the blocks would keep different numbers of heads ({', '.join(map(str, counts))}); a stock config holds "
                "one head count for all blocks", 0, 0, {})
    (Hn, KVn), = shapes
    return None, Hn, KVn, kv_removed


def new_config(model: nn.Module, n_heads: int, n_kv_heads: int):
    """The model's config with new head counts, validated as transformers validates it.

    Raises:
        PolypruneError: the config class cannot express it or rejects it (its message quoted).
    """
    cfg = copy.deepcopy(model.config)
    if n_kv_heads != n_heads and getattr(cfg, "num_key_value_heads", None) is None:
        raise PolypruneError(f"the {cfg.model_type} config has no num_key_value_heads", "")
    try:
        cfg.num_attention_heads = n_heads
        if getattr(cfg, "num_key_value_heads", None) is not None:
            cfg.num_key_value_heads = n_kv_heads
        return type(cfg).from_dict(cfg.to_dict())
    except Exception as e:  # noqa: BLE001 - transformers raises several validation error types
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise PolypruneError(lines[-1] if lines else type(e).__name__, "") from None


def _cut_state(model: nn.Module, layout: HeadLayout, heads: Heads, kv_removed: dict[int, list[int]]) -> tuple[dict, int]:
    """The state dict of the hard-cut model and the number of parameters removed.

    Raises:
        PolypruneError: the attention's input projections are fused (no separate q/k/v).
    """
    d, H, KV = layout.head_dim, layout.n_heads, layout.n_kv_heads
    sd = dict(model.state_dict())
    removed = 0
    for b, att in enumerate(layout.blocks):
        R, K = set(heads.get(b, [])), set(kv_removed.get(b, []))
        q_rows = torch.tensor([c for h in range(H) if h not in R for c in range(h * d, (h + 1) * d)], dtype=torch.long)
        kv_rows = torch.tensor([c for h in range(KV) if h not in K for c in range(h * d, (h + 1) * d)], dtype=torch.long)
        for name in att.in_projs:
            mod = model.get_submodule(name)
            if not isinstance(mod, nn.Linear):
                raise PolypruneError(f"{name} is a {type(mod).__name__} (fused query/key/value), not separate linear "
                                     "query, key and value projections", "")
            out = _out_features(mod)
            if out == H * d:
                rows = q_rows
            elif out == KV * d:
                rows = kv_rows
            else:
                raise PolypruneError(f"{name} has {out} outputs, not separate query ({H}x{d}) or key/value ({KV}x{d}) "
                                     "projections (fused query/key/value)", "")
            for p in ("weight", "bias"):
                t = getattr(mod, p, None)
                if t is not None:
                    key = f"{name}.{p}"
                    sd[key] = t.detach()[rows].clone()
                    removed += t.numel() - sd[key].numel()
        o = model.get_submodule(att.out_proj)
        if not isinstance(o, nn.Linear):
            raise PolypruneError(f"{att.out_proj} is not a plain linear layer", "")
        sd[f"{att.out_proj}.weight"] = o.weight.detach()[:, q_rows].clone()
        removed += o.weight.numel() - sd[f"{att.out_proj}.weight"].numel()
    return sd, removed


def _skeleton_mismatch(model: nn.Module, cfg, sd: dict) -> str | None:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skel = AutoModelForCausalLM.from_config(cfg)
    want = {k: tuple(v.shape) for k, v in skel.state_dict().items()}
    for k, shape in want.items():
        if k in sd and tuple(sd[k].shape) != shape:
            return (f"the stock {cfg.model_type} model built from the new config expects {k} of shape {list(shape)}, "
                    f"the cut gives {list(sd[k].shape)}")
    return None


def stock_problem(model: nn.Module, layout: HeadLayout, heads: Heads) -> str | None:
    """Why ``heads`` cannot be cut into a checkpoint that stock ``from_pretrained`` reloads, or ``None``.

    Checks, in order: uniform head counts and KV grouping (see the module docstring), the config
    class's own validation of the new head counts, separate q/k/v projections, and that the stock
    model skeleton built from the new config has exactly the cut shapes.
    """
    problem, Hn, KVn, kv_removed = _structure(layout, heads)
    if problem:
        return problem
    try:
        cfg = new_config(model, Hn, KVn)
        sd, _ = _cut_state(model, layout, heads, kv_removed)
    except PolypruneError as e:
        return e.problem
    return _skeleton_mismatch(model, cfg, sd)


def nearest_stock(model: nn.Module, layout: HeadLayout, heads: Heads, priority: np.ndarray | None = None) -> Heads | None:
    """The removal closest to ``heads`` (fewest heads added or spared) that a stock checkpoint can hold.

    Candidates keep ``H_kv'`` KV heads with ``g'`` query heads each in every block (every pair
    except "nothing removed" whose config the model's config class accepts). Per block the KV heads
    and query heads to remove are chosen to differ least from ``heads``, preferring heads with a higher
    ``priority [L, H]`` (e.g. the score for the dropped languages; default: lower head index). Ties
    between candidates go to the one removing fewer heads. ``None`` when no candidate exists.
    """
    H, KV, g = layout.n_heads, layout.n_kv_heads, layout.group_size
    pri = np.zeros((layout.n_blocks, H)) if priority is None else np.asarray(priority, dtype=np.float64)
    best = None
    for kv_keep in range(1, KV + 1):
        for g_keep in range(1, g + 1):
            if (kv_keep, g_keep) == (KV, g):
                continue
            try:
                new_config(model, kv_keep * g_keep, kv_keep)
            except PolypruneError:
                continue
            cost, cand = 0, {}
            for b in range(layout.n_blocks):
                R = set(heads.get(b, []))
                groups = []
                for c in range(KV):
                    members = list(range(c * g, (c + 1) * g))
                    r = sum(1 for h in members if h in R)
                    keep_cost, drop_cost = abs(r - (g - g_keep)), g - r
                    groups.append((keep_cost - drop_cost, float(pri[b, members].sum()), c, keep_cost, drop_cost, members))
                groups.sort(key=lambda x: (x[0], x[1], x[2]))
                removed = []
                for i, (_, _, c, kc, dc, members) in enumerate(groups):
                    if i < kv_keep:
                        cost += kc
                        ranked = sorted(members, key=lambda h: (h not in R, -pri[b, h], h))
                        removed += ranked[:g - g_keep]
                    else:
                        cost += dc
                        removed += members
                if removed:
                    cand[b] = sorted(removed)
            key = (cost, count_heads(cand))
            if best is None or key < best[0]:
                best = (key, cand)
    return None if best is None else best[1]


@dataclass
class HardCut:
    """A hard-cut model. model: the new (smaller) causal LM; heads/kv_removed: what went;
    params_removed: parameters fewer than the source; n_heads/n_kv_heads: the new counts."""

    model: nn.Module
    heads: Heads
    kv_removed: dict[int, list[int]]
    params_removed: int
    n_heads: int
    n_kv_heads: int


def hard_cut(model: nn.Module, layout: HeadLayout, heads: Heads) -> HardCut:
    """Build the stock model with ``heads`` physically removed (the source model is not changed).

    Raises:
        PolypruneError: the removal cannot be stored as a stock checkpoint (see :func:`stock_problem`);
            the message names the nearest removal that can, and the fix.
    """
    from transformers import AutoModelForCausalLM

    heads = check_heads(layout, heads)
    problem = stock_problem(model, layout, heads)
    if problem:
        raise not_stock_error(model, layout, heads, problem)
    _, Hn, KVn, kv_removed = _structure(layout, heads)
    cfg = new_config(model, Hn, KVn)
    sd, removed = _cut_state(model, layout, heads, kv_removed)
    dtype = next(model.parameters()).dtype
    new = AutoModelForCausalLM.from_config(cfg, dtype=dtype,
                                           attn_implementation=getattr(model.config, "_attn_implementation", None))
    new.load_state_dict(sd, strict=False)
    missing = set(new.state_dict()) - set(sd)
    if missing:
        raise PolypruneError(f"The cut model misses {sorted(missing)[0]}", "use --cut soft for this model")
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    new.eval()
    return HardCut(new.to(next(model.parameters()).device), heads, kv_removed, removed, Hn, KVn)


def not_stock_error(model, layout: HeadLayout, heads: Heads, problem: str, priority=None) -> PolypruneError:
    """The error for a hard cut that a stock checkpoint cannot hold, naming the nearest one that can."""
    near = nearest_stock(model, layout, heads, priority)
    if near:
        fix = (f"the nearest removal a stock checkpoint can hold takes {count_heads(near)} heads ({describe_heads(near)}): "
               "pass --nearest to remove that instead, or use --cut soft to remove exactly these heads")
    else:
        fix = "use --cut soft: no removal of query heads gives this model a valid stock checkpoint"
    return PolypruneError(f"Removing these {count_heads(heads)} heads cannot be stored as a stock checkpoint: {problem}", fix)
