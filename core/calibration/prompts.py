"""Kim et al.'s translation demonstrations (2024, §3; methods.md §1.3).

Each calibration sample concatenates ``shots`` consecutive aligned sentence pairs::

    "{SrcName}: {src_1}{eos}{TgtName}: {tgt_1}{eos}" ... x shots

(:data:`~polyprune.recipe.DEFAULT_TEMPLATE`; monolingual prompts drop the target side). The
direction is ``forward`` (src→tgt), ``reverse`` or ``both`` (alternating samples).
"""
from __future__ import annotations

import random

from ..datasets import load_pairs
from ..errors import PolypruneError
from ..languages import language_name, resolve_language
from ..recipe import DEFAULT_TEMPLATE, MONOLINGUAL_TEMPLATE, DemoConfig


def build_prompts(cfg: DemoConfig, eos: str = "", pairs: list[tuple[str, str]] | None = None) -> tuple[list[str], list[list[int]]]:
    """Build ``cfg.samples`` demonstration prompts.

    Returns:
        ``(prompts, indices)``: the prompt strings and, for each, the pair indices it uses (so a run
        records exactly which sentences calibrated it).

    Raises:
        PolypruneError: unknown language, bad template, or fewer than ``samples × shots`` pairs
            (the message says how many pairs there are).
    """
    cfg.validate()
    src, tgt = resolve_language(cfg.src), resolve_language(cfg.tgt)
    if pairs is None:
        pairs = load_pairs(cfg.source, src, tgt, cfg.split, cfg.src_column, cfg.tgt_column)
    need = cfg.samples * cfg.shots
    if need > len(pairs):
        raise PolypruneError(
            f"{cfg.samples} samples x {cfg.shots} shots need {need} sentence pairs but the source has {len(pairs)}",
            f"use at most {len(pairs) // cfg.shots} samples at {cfg.shots} shots, fewer shots, or a larger source (a FLORES-200 folder has 997 dev pairs)")
    order = list(range(len(pairs)))
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(order)
    template = MONOLINGUAL_TEMPLATE if cfg.monolingual and cfg.template == DEFAULT_TEMPLATE else cfg.template
    names = {src: language_name(src), tgt: language_name(tgt)}
    prompts, used = [], []
    for n in range(cfg.samples):
        idx = order[n * cfg.shots:(n + 1) * cfg.shots]
        flip = cfg.direction == "reverse" or (cfg.direction == "both" and n % 2 == 1)
        a, b = (tgt, src) if flip else (src, tgt)
        parts = []
        for i in idx:
            s, t = (pairs[i][1], pairs[i][0]) if flip else pairs[i]
            try:
                parts.append(template.format(src_name=names[a], src=s, tgt_name=names[b], tgt=t, eos=eos))
            except (KeyError, IndexError, ValueError) as e:
                raise PolypruneError(f"The template {template!r} is invalid ({e})",
                                     "use only the fields {src_name} {src} {tgt_name} {tgt} {eos}; write literal braces as {{ }}") from e
        prompts.append("".join(parts))
        used.append(idx)
    return prompts, used
