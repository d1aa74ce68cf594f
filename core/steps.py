"""The changes a recipe can make to a model besides pruning: one function per step of
``Recipe.steps`` (:data:`polyprune.recipe.STEPS`).

* ``remove_heads`` — :func:`polyprune.heads.run.apply_removal`: the heads of ``heads.removal``
  (a list, or the rule for languages to drop and keep) soft-removed in place; the export records
  them in ``removed_heads.json`` and the model card. (A hard cut changes the model's shapes and is
  its own command: ``polyprune remove-heads --cut hard``.)
* ``lens`` — :func:`polyprune.subspaces.lens.apply_lens`: the top blocks fine-tuned to draw the
  target languages towards the central one (Zhao et al. 2024).
* ``slim`` — :func:`polyprune.slimming.run.slim`, the last step: the model as the earlier steps
  left it is slimmed for the kept languages and written as its own, smaller checkpoint.

:func:`polyprune.pipeline.run` calls these in the recipe's order, evaluates the result against the
dense model and exports it; studies use the same steps after a cell's pruning
(:mod:`polyprune.study.run`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import PolypruneError
from .heads.config import HeadsConfig
from .heads.run import apply_removal
from .models import LoadedModel
from .progress import Progress
from .recipe import Recipe
from .slimming.config import SlimConfig
from .subspaces.config import LensConfig
from .subspaces.lens import apply_lens, lens_card
from .slimming.run import slim


@dataclass
class StepChanges:
    """What the steps add to the export: files (``{name: text}``), model-card sections, and the
    objects that undo them (each with ``restore()``), in the order they were made."""

    files: dict = field(default_factory=dict)
    card: list[str] = field(default_factory=list)
    undo: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def restore(self) -> None:
        """Undo every step, last first (bit-exact)."""
        for u in reversed(self.undo):
            u.restore()
        self.undo.clear()


def heads_config(recipe: Recipe) -> HeadsConfig:
    """The recipe's ``heads`` section as a validated :class:`~polyprune.heads.config.HeadsConfig`.

    Raises:
        PolypruneError: bad settings, no removal, or a hard cut (its own command).
    """
    cfg = HeadsConfig.from_dict(dict(recipe.heads or {}))
    if cfg.removal is None:
        raise PolypruneError("The remove_heads step has no heads.removal settings",
                             "give heads: {removal: {drop: [...], keep: [...]}} or removal: {heads: 'BLOCK:H,H'}")
    if cfg.removal.cut == "hard":
        raise PolypruneError("A hard cut changes the model's shapes and cannot be one step of a recipe",
                             "use cut: soft in the recipe, or the command polyprune remove-heads --cut hard")
    return cfg


def slim_config(recipe: Recipe) -> SlimConfig:
    """The recipe's ``slim`` section as a validated :class:`~polyprune.slimming.config.SlimConfig`
    writing to the recipe's output folder."""
    d = dict(recipe.slim or {})
    d.setdefault("out", recipe.out)
    d.setdefault("overwrite", recipe.overwrite)
    return SlimConfig.from_dict(d)


#: Steps a study cell can take after its pruning (``slim`` writes a checkpoint: not a study step).
STUDY_STEPS = ("remove_heads", "lens")


def check_step(name: str, settings) -> dict:
    """Validate one step's settings (a study cell's ``steps`` entry); return them normalized.

    Raises:
        PolypruneError: an unknown step or a bad setting (named).
    """
    if name not in STUDY_STEPS:
        raise PolypruneError(f"Unknown step {name!r}", f"use one of {', '.join(STUDY_STEPS)}")
    if not isinstance(settings, dict):
        raise PolypruneError(f"The settings of step {name} are not a mapping", f"write {name}: {{...}}")
    if name == "remove_heads":
        return heads_config(Recipe(heads=settings)).to_dict()
    return LensConfig.from_dict(dict(settings)).to_dict()


def apply_step(name: str, loaded: LoadedModel, settings: dict, progress: Progress):
    """Apply one step to the loaded model in place; return the object whose ``restore()`` undoes
    it bit-exactly (a study cell undoes its steps after its evaluation)."""
    changes = StepChanges()
    recipe = Recipe(heads=settings) if name == "remove_heads" else Recipe(lens=settings)
    run_step(name, loaded, recipe, changes, {}, progress, log=lambda m: None)
    return changes


def check_step_settings(recipe: Recipe) -> None:
    """Check every step's settings before a model is loaded.

    Raises:
        PolypruneError: the first bad setting (named).
    """
    if "remove_heads" in recipe.steps:
        heads_config(recipe)
    if "slim" in recipe.steps:
        slim_config(recipe)
    if "lens" in recipe.steps:
        LensConfig.from_dict(dict(recipe.lens or {}))


def removed_heads_section(heads: dict[int, list[int]], rule: str) -> str:
    """The model card's section for soft-removed heads."""
    rows = "\n".join(f"| {b} | {', '.join(map(str, hs))} |" for b, hs in sorted(heads.items()))
    n = sum(len(hs) for hs in heads.values())
    return (f"## Removed attention heads\n\n{n} query heads were zeroed in the attention output projections (soft cut, "
            f"Polyprune's remove_heads step; rule: {rule}). They are listed in `removed_heads.json`.\n\n"
            f"| block | heads |\n|---|---|\n{rows}\n")


def run_step(step: str, loaded: LoadedModel, recipe: Recipe, changes: StepChanges, report: dict,
             progress: Progress, log: Callable[[str], None] = print) -> None:
    """Apply one step (``remove_heads`` or ``lens``) to the loaded model in place, recording what
    the export needs in ``changes`` and ``report``.

    Raises:
        PolypruneError: bad settings or data. Cancelled: through ``progress`` (the step is undone).
    """
    t = time.perf_counter()
    if step == "remove_heads":
        cfg = heads_config(recipe)
        soft = apply_removal(loaded, cfg, progress)
        changes.undo.append(soft)
        heads = {int(b): sorted(hs) for b, hs in soft.heads.items()}
        rule = soft.plan.rule if getattr(soft, "plan", None) is not None else "explicit list"
        changes.files["removed_heads.json"] = json.dumps({str(b): hs for b, hs in heads.items()}, indent=2) + "\n"
        changes.card.append(removed_heads_section(heads, rule))
        report["heads"] = {"removed": {str(b): hs for b, hs in heads.items()}, "cut": "soft", "rule": rule,
                           "settings": cfg.to_dict()}
        log(f"Removed {sum(len(h) for h in heads.values())} attention heads (soft cut; {rule})")
    elif step == "lens":
        cfg = LensConfig.from_dict(dict(recipe.lens or {}))
        result = apply_lens(loaded, cfg, progress)
        changes.undo.append(result)
        changes.card.append(lens_card(result))
        report["lens"] = result.summary()
        log(f"Lens: trained block{'s' if len(result.blocks) > 1 else ''} "
            f"{', '.join(str(b + 1) for b in result.blocks)} of {result.subspaces.n_blocks} in {result.steps} steps")
    else:
        raise PolypruneError(f"Unknown step {step!r}", "use prune, remove_heads, lens or slim")
    changes.timings[f"{step}_s"] = time.perf_counter() - t


def slim_step(loaded: LoadedModel, recipe: Recipe, report: dict, progress: Progress,
              log: Callable[[str], None] = print) -> dict:
    """The last step: slim the model as it is now and write the slimmed checkpoint to the
    recipe's output folder; returns the run's report with the slimming report in ``slim``."""
    res = slim(loaded, slim_config(recipe), progress)
    report["slim"] = {"out": str(res.out) if res.out else None, "report": res.report}
    log(f"Slimmed model written to {res.out}" if res.out else "Slim plan measured (no output folder)")
    return report
