"""Recipes: every setting of a run as plain JSON or YAML.

A recipe is what ``polyprune run RECIPE`` executes, what the GUI's File → Save recipe writes and
what every run stores beside its outputs (resolved, with defaults filled in), so any session can
be replayed headless. Example (YAML)::

    model: demo
    dtype: float32
    demos: {source: builtin, src: eng_Latn, tgt: fra_Latn, shots: 4, samples: 8, seq_len: 128}
    pruning: {method: wanda, sparsity: 0.5, pattern: unstructured}
    evaluation: {ppl: [eng_Latn, fra_Latn], xnli: [en, fr], limit: 100}
    out: runs/demo
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .demos import DemoConfig
from .errors import PolypruneError
from .pruning import PruneConfig


@dataclass
class EvalConfig:
    """Evaluation settings.

    Attributes:
        ppl: FLORES-200 languages for perplexity (codes, names or two-letter codes).
        xnli: XNLI languages (two-letter codes, any of the 15).
        limit: first N examples per language of the zero-shot tasks (None = all).
        ppl_limit: first N FLORES sentences per language for perplexity (None = all 1012).
        data: data folder with ``flores200/`` and ``xnli/`` (default: ``$POLYPRUNE_DATA`` or a
            ``shared/data`` folder next to the working directory or the repository).
        split: FLORES split for perplexity.
        batch_size: sequences per forward pass.
        dense: also evaluate the dense model before pruning, for side-by-side deltas.
        optional: skip evaluation (with a message) instead of failing when no data folder exists.
        tasks: further tasks of :mod:`polyprune.tasks` (xnli, pawsx, xcopa, xstorycloze, xwinograd,
            flores_ppl, flores_mt, or a custom task spec file), on ``languages`` (empty: every
            language with a file), split ``task_split`` (None: the task's default).
        metrics, bootstrap: multiple-choice metrics and bootstrap resamples for 95% intervals.
        translation: settings of ``flores_mt`` (shots, max_new_tokens, directions, batch_size).
        item_scores: keep every item's score in the records (studies set it for paired comparisons).
    """

    ppl: list[str] = field(default_factory=list)
    xnli: list[str] = field(default_factory=list)
    limit: int | None = None
    ppl_limit: int | None = None
    data: str | None = None
    split: str = "devtest"
    batch_size: int = 16
    dense: bool = True
    optional: bool = False
    tasks: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    task_split: str | None = None
    metrics: list[str] = field(default_factory=lambda: ["acc", "acc_norm"])
    bootstrap: int = 1000
    translation: dict = field(default_factory=dict)
    item_scores: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.ppl or self.xnli or self.tasks)


@dataclass
class FeatureConfig:
    """Feature-magnitude settings: ``enabled`` to measure, ``top_k`` dimensions listed per layer,
    ``compare_monolingual`` to also measure monolingual prompts and report the overlap at ``ratio``."""

    enabled: bool = False
    top_k: int = 20
    compare_monolingual: bool = False
    ratio: float = 0.4


@dataclass
class Recipe:
    """Every setting of a run. Unknown keys are rejected so that typos do not pass silently."""

    model: str = "demo"
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    seed: int = 0
    demos: DemoConfig = field(default_factory=DemoConfig)
    calibration_text: str | None = None
    calibration: dict | None = None  # a polyprune.calibration spec; replaces demos/calibration_text when set
    contrast: dict | None = None  # calibration spec of the contrast set (method wanda_refined)
    pruning: PruneConfig = field(default_factory=PruneConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None
    export: bool = True
    overwrite: bool = False
    reload_check: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> "Recipe":
        """Build from a dict, nested sections as dicts.

        Raises:
            PolypruneError: an unknown key (named, with the known ones) or a wrong type of section.
        """
        if not isinstance(d, dict):
            raise PolypruneError(f"The {where} is not a mapping of settings", "write key: value pairs (YAML) or a JSON object")
        nested = {"demos": DemoConfig, "pruning": PruneConfig, "features": FeatureConfig, "evaluation": EvalConfig}
        kwargs = {}
        top = {f.name for f in fields(cls)}
        for k, v in d.items():
            if k == "report":  # pruning_config.json of an export carries its report; ignore it
                continue
            if k not in top:
                raise PolypruneError(f"Unknown setting {k!r} in the {where}", f"known settings: {', '.join(sorted(top))}")
            if k in nested:
                if v is None:
                    continue
                if not isinstance(v, dict):
                    raise PolypruneError(f"Section {k!r} of the {where} must be a mapping", f"write {k}: {{...}}")
                known = {f.name for f in fields(nested[k])}
                bad = set(v) - known
                if bad:
                    raise PolypruneError(f"Unknown setting(s) {', '.join(sorted(bad))} in section {k!r} of the {where}",
                                         f"known: {', '.join(sorted(known))}")
                kwargs[k] = nested[k](**v)
            else:
                kwargs[k] = v
        return cls(**kwargs)


def read_settings_file(p: Path, what: str):
    """Parse a JSON (``.json``) or YAML (anything else) settings file.

    Raises:
        PolypruneError: missing file, or a parse error with its position.
    """
    if not p.is_file():
        raise PolypruneError(f"The {what} file {p} does not exist", "check the path")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        import yaml
        return yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError or yaml.YAMLError, both carry the position
        raise PolypruneError(f"Could not parse {what} {p}: {e}", "fix the syntax (JSON or YAML)") from e


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from ``.json``, ``.yaml`` or ``.yml``.

    Raises:
        PolypruneError: missing file, parse error (with line), unknown keys.
    """
    p = Path(path).expanduser()
    data = read_settings_file(p, "recipe")
    return Recipe.from_dict(data or {}, where=f"recipe {p.name}")


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write a recipe as JSON or YAML (by suffix), atomically."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    d = recipe.to_dict()
    if p.suffix.lower() == ".json":
        text = json.dumps(d, indent=2, ensure_ascii=False)
    else:
        import yaml
        text = yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


def default_data_dir() -> Path | None:
    """``$POLYPRUNE_DATA``, else ``shared/data`` beside the working directory or the repository."""
    env = os.environ.get("POLYPRUNE_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *Path.cwd().parents[:2], here.parents[1], here.parents[2]):
        cand = base / "shared" / "data"
        if cand.is_dir():
            return cand
    return None
