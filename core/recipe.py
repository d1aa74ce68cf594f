"""Recipes: every setting of a run as plain JSON or YAML, and every settings dataclass.

A recipe is what ``polyprune run RECIPE`` executes, what the GUI's File → Save recipe writes and
what every run stores beside its outputs (resolved, with defaults filled in), so any session can
be replayed headless. Example (YAML)::

    model: demo
    dtype: float32
    demos: {source: builtin, src: eng_Latn, tgt: fra_Latn, shots: 4, samples: 8, seq_len: 128}
    pruning: {method: wanda, sparsity: 0.5, pattern: unstructured}
    evaluation: {ppl: [eng_Latn, fra_Latn], xnli: [en, fr], limit: 100}
    out: runs/demo

This module is a leaf: every default is written once here, in the dataclasses, and it imports no
torch algorithm. Values read from a file are checked against the fields' types
(:func:`polyprune.settings.settings_from_dict`), so a string where a list belongs or a word where a number belongs
is reported with the setting's name instead of failing later. A recipe file is data, not consent:
``trust_remote_code`` from a file is not obeyed (see :func:`load_recipe`).
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .errors import PolypruneError
from .fileio import atomic_write_text, dumps, read_settings_file
from .settings import check_value, settings_from_dict

METHODS = ("magnitude", "wanda", "sparsegpt", "wanda_refined")
PATTERNS = ("unstructured", "2:4", "4:8")
LAYERWISE = ("uniform", "owl")
GROUPS = ("row", "layer")
DIRECTIONS = ("forward", "reverse", "both")
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_TEMPLATE = "{src_name}: {src}{eos}{tgt_name}: {tgt}{eos}"
MONOLINGUAL_TEMPLATE = "{src_name}: {src}{eos}"
MIN_SEQ_LEN = 8
#: Multiple-choice metrics, named exactly as lm-evaluation-harness prints them (``acc_norm`` is
#: by characters, ``acc_bytes`` by UTF-8 bytes), plus Kim et al.'s whole-prompt ``prompt_mean``.
METRICS = ("acc", "acc_norm", "acc_bytes", "prompt_mean")
#: The changes a recipe can make to a model, in the order of ``Recipe.steps``.
STEPS = ("prune", "remove_heads", "lens", "slim")
#: Names used by earlier versions, with the name that replaced them.
RENAMED_METRICS = {"acc_norm_chars": "acc_norm"}


def _positive_int(value, name: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolypruneError(f"{name} must be a whole number of at least 1 (got {value!r})", fix)


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    """Settings for building calibration prompts (Kim et al. 2024, §3; methods.md §1.3).

    Attributes:
        source: pair source string (``builtin``, ``flores:DIR``, ``hub``, ``file:PATH``; see
            :mod:`polyprune.datasets`).
        src, tgt: FLORES-200 codes (names and two-letter codes are resolved).
        direction: ``forward`` (src→tgt), ``reverse`` (tgt→src) or ``both`` (alternating samples).
        shots: sentence pairs per sample (Kim et al.: 4).
        samples: number of calibration samples N.
        seq_len: calibration length in tokens (truncate longer prompts; shorter ones are padded and
            the padding masked). A setting of its own, never the model's context length.
        template: per-pair template with ``{src_name} {src} {tgt_name} {tgt} {eos}``.
        monolingual: drop the target side (``{src_name}: {src}{eos}`` per shot).
        split: FLORES split to read (``dev`` as in the paper).
        shuffle, seed: draw pairs in a seeded random order instead of file order.
        src_column, tgt_column: column names in a user's pairs file.
    """

    source: str = "builtin"
    src: str = "eng_Latn"
    tgt: str = "fra_Latn"
    direction: str = "forward"
    shots: int = 4
    samples: int = 8
    seq_len: int = 256
    template: str = DEFAULT_TEMPLATE
    monolingual: bool = False
    split: str = "dev"
    shuffle: bool = False
    seed: int = 0
    src_column: str | None = None
    tgt_column: str | None = None

    def validate(self) -> None:
        """Raise :class:`PolypruneError` for bad lengths or an unknown direction."""
        validate_lengths(self.samples, self.seq_len, self.shots)
        if self.direction not in DIRECTIONS:
            raise PolypruneError(f"Unknown direction {self.direction!r}", f"use one of {', '.join(DIRECTIONS)}")


def validate_lengths(samples: int, seq_len: int, shots: int = 1) -> None:
    """Raise :class:`PolypruneError` for ``samples < 1``, ``shots < 1`` or ``seq_len < 8``."""
    _positive_int(samples, "The number of samples", "set the number of samples (--samples) to a positive number")
    _positive_int(shots, "The number of shots", "set the shots (--shots) to a positive number")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < MIN_SEQ_LEN:
        raise PolypruneError(f"Calibration length {seq_len!r} is under {MIN_SEQ_LEN} tokens",
                             f"set the calibration length (--seq-len) to {MIN_SEQ_LEN} or more "
                             "(Kim et al. use 512; 128-512 is typical)")


# --------------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------------
@dataclass
class PruneConfig:
    """Pruning settings.

    Attributes:
        method: ``magnitude`` (|W|), ``wanda`` (|W|·||X||), ``sparsegpt`` (OBS updates) or
            ``wanda_refined`` (|W|·a/sqrt(b), needs a contrast set too); all but magnitude need
            calibration data.
        sparsity: share of weights removed in every pruned layer, in [0, 1) (with OWL: the mean
            over the pruned blocks).
        pattern: ``unstructured`` or ``N:M`` (``2:4``, ``4:8``); N:M requires ``sparsity == N/M``.
        group: comparison group for unstructured pruning: ``row`` (each output row, as Wanda) or
            ``layer`` (the whole matrix, as classic magnitude pruning).
        skip: glob patterns of module names never pruned (e.g. ``*.self_attn.*``), matched against
            fully qualified names such as ``model.layers.3.mlp.down_proj``.
        skip_blocks: block indices left dense (0 = the first block).
        batch_size: calibration samples per forward pass.
        damping: SparseGPT damping as a share of the mean Hessian diagonal (reference: 0.01).
        blocksize: SparseGPT columns per lazy-update block (reference: 128).
        layerwise: ``uniform`` (every block at ``sparsity``) or ``owl`` (outlier-weighted).
        owl_m: OWL outlier threshold M (a score is an outlier above M x the block's mean score).
        owl_lambda: OWL λ: block densities span ``2λ`` around ``1 - sparsity``.
    """

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    group: str = "row"
    skip: list[str] = field(default_factory=list)
    skip_blocks: list[int] = field(default_factory=list)
    batch_size: int = 8
    damping: float = 0.01
    blocksize: int = 128
    layerwise: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.layerwise == "owl"

    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, else ``None``."""
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    def validate(self, n_blocks: int | None = None) -> None:
        """Raise :class:`PolypruneError` for any invalid setting (types included); with
        ``n_blocks``, also for a skipped block the model does not have."""
        for f in fields(self):
            check_value(getattr(self, f.name), typing.get_type_hints(PruneConfig)[f.name], f.name, "pruning settings")
        if self.method not in METHODS:
            raise PolypruneError(f"Unknown pruning method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if math.isnan(self.sparsity) or not (0.0 <= self.sparsity < 1.0):
            raise PolypruneError(f"Sparsity ratio {self.sparsity} is outside [0, 1)",
                                 "give the share of weights to remove, below 1: e.g. 0.5 for 50%")
        if self.pattern not in PATTERNS:
            try:
                n, m = (int(v) for v in self.pattern.split(":"))
                ok = 0 < n < m
            except ValueError:
                ok = False
            if not ok:
                raise PolypruneError(f"Unknown sparsity pattern {self.pattern!r}", "use unstructured or N:M such as 2:4 or 4:8")
        nm = self.nm()
        if nm and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise PolypruneError(f"Pattern {self.pattern} removes exactly {nm[0]}/{nm[1]} = {nm[0] / nm[1]:g} of the weights, "
                                 f"but sparsity {self.sparsity:g} was requested",
                                 f"set the sparsity to {nm[0] / nm[1]:g} or use the unstructured pattern")
        if self.group not in GROUPS:
            raise PolypruneError(f"Unknown comparison group {self.group!r}", "use row or layer")
        _positive_int(self.batch_size, "The batch size", "set a positive batch size")
        if not (self.damping >= 0) or math.isinf(self.damping):
            raise PolypruneError(f"SparseGPT damping {self.damping} must be a non-negative number",
                                 "use a small share of the mean Hessian diagonal, e.g. 0.01")
        _positive_int(self.blocksize, "The SparseGPT block size", "use e.g. 128")
        if nm and self.method == "sparsegpt" and self.blocksize % nm[1]:
            raise PolypruneError(f"SparseGPT block size {self.blocksize} is not a multiple of M = {nm[1]}",
                                 f"set blocksize to a multiple of {nm[1]}, e.g. 128")
        if any(not p.strip() for p in self.skip):
            raise PolypruneError("An empty pattern is among the modules to skip", "remove the empty entry")
        if any(p.strip() in ("*", "*.*", "**") for p in self.skip):
            raise PolypruneError(f"The skip pattern {next(p for p in self.skip if p.strip() in ('*', '*.*', '**'))!r} "
                                 "leaves every module dense, so nothing would be pruned",
                                 "skip only some modules (e.g. *.self_attn.*), or do not prune")
        if n_blocks is not None:
            bad = [b for b in self.skip_blocks if not 0 <= b < n_blocks]
            if bad:
                raise PolypruneError(f"The model has no block {bad[0]} (it has blocks 0–{n_blocks - 1})",
                                     f"skip blocks numbered 0 to {n_blocks - 1}")
            if len(set(self.skip_blocks)) >= n_blocks:
                raise PolypruneError("Every block is skipped, so nothing would be pruned", "skip fewer blocks")
        if self.layerwise not in LAYERWISE:
            raise PolypruneError(f"Unknown layer-wise sparsity {self.layerwise!r}", "use uniform or owl")
        if self.layerwise == "owl":
            if nm:
                raise PolypruneError(f"OWL gives every block its own sparsity, but the {self.pattern} pattern "
                                     f"fixes the sparsity of every block at {nm[0]}/{nm[1]}",
                                     "use the unstructured pattern with OWL, or layerwise: uniform with N:M")
            if not (self.owl_m > 0) or math.isinf(self.owl_m):
                raise PolypruneError(f"OWL threshold M = {self.owl_m} must be positive", "use e.g. 5")
            if not (self.owl_lambda >= 0) or self.owl_lambda >= 0.5:
                raise PolypruneError(f"OWL lambda {self.owl_lambda} must be in [0, 0.5)", "use e.g. 0.08")
            if self.sparsity == 0:
                raise PolypruneError("OWL redistributes a mean sparsity, but the sparsity is 0",
                                     "set a sparsity above 0 or use layerwise: uniform")


# --------------------------------------------------------------------------------------------
# evaluation and features
# --------------------------------------------------------------------------------------------
def check_metrics(metrics: list[str]) -> list[str]:
    """The metric names checked against :data:`METRICS` (old names answered with the new one).

    Raises:
        PolypruneError: an unknown or renamed metric, or none.
    """
    for m in metrics:
        if m in RENAMED_METRICS:
            raise PolypruneError(f"The metric {m!r} is now called {RENAMED_METRICS[m]!r} (lm-evaluation-harness's name: "
                                 "accuracy normalised by the answer's length in characters); acc_bytes normalises by bytes",
                                 f"write {RENAMED_METRICS[m]} instead of {m}")
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise PolypruneError(f"Unknown metric(s) {', '.join(bad) or '(none given)'}", "use " + ", ".join(METRICS))
    return list(metrics)


@dataclass
class EvalConfig:
    """Evaluation settings.

    Attributes:
        ppl: FLORES-200 languages for perplexity (the ``flores_ppl`` task).
        xnli: XNLI languages (two-letter codes; the ``xnli`` task).
        limit: first N examples per language of the zero-shot tasks (None = all).
        ppl_limit: first N FLORES sentences per language for perplexity (None = all 1012).
        data: data folder with ``flores200/`` and the task folders (default: ``$POLYPRUNE_DATA`` or
            a ``shared/data`` folder next to the working directory or the repository).
        split: FLORES split for perplexity.
        batch_size: sequences (or documents) per forward pass.
        dense: also evaluate the dense model, for side-by-side changes.
        optional: skip evaluation (with a message) instead of failing when no data folder exists.
        tasks: further tasks (xnli, pawsx, xcopa, xstorycloze, xwinograd, flores_ppl, flores_mt, or
            a custom task spec file), on ``languages`` (empty: every language with a file), split
            ``task_split`` (None: the task's default).
        metrics, bootstrap: multiple-choice metrics (:data:`METRICS`) and bootstrap resamples for
            95% intervals.
        translation: settings of ``flores_mt`` (shots, max_new_tokens, directions, batch_size).
        item_scores: keep every item's score in the results (paired comparisons).
        task_languages: languages per task of :attr:`tasks` (``{"pawsx": ["de", "fr"]}``); a task
            not named here runs on :attr:`languages`.
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
    item_scores: bool = True
    task_languages: dict = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.ppl or self.xnli or self.tasks)

    def validate(self) -> None:
        """Raise :class:`PolypruneError` for a bad type, limit or metric."""
        hints = typing.get_type_hints(EvalConfig)
        for f in fields(self):
            check_value(getattr(self, f.name), hints[f.name], f.name, "evaluation settings")
        for name in ("limit", "ppl_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise PolypruneError(f"The {name.replace('_', ' ')} {v} is not a positive number",
                                     f"give a positive {name} (the first N examples), or leave it empty for all")
        _positive_int(self.batch_size, "The evaluation batch size", "set a positive batch size")
        if self.bootstrap < 0:
            raise PolypruneError(f"bootstrap must be >= 0, got {self.bootstrap}", "use 0 to skip confidence intervals")
        check_metrics(self.metrics)

    def units(self) -> dict[str, list[str] | None]:
        """``{task: languages}`` for the one evaluation runner: ``flores_ppl`` from :attr:`ppl`,
        ``xnli`` from :attr:`xnli`, then :attr:`tasks` on :attr:`languages` (``None``: every
        language with data)."""
        out: dict[str, list[str] | None] = {}
        if self.ppl:
            out["flores_ppl"] = list(self.ppl)
        if self.xnli:
            out["xnli"] = list(self.xnli)
        for t in self.tasks:
            out.setdefault(t, list(self.task_languages.get(t) or self.languages) or None)
        return out


@dataclass
class FeatureConfig:
    """Feature-magnitude settings: ``enabled`` to measure, ``top_k`` dimensions listed per layer,
    ``compare_monolingual`` to also measure monolingual prompts and report the overlap at ``ratio``,
    ``exclude_special`` to leave special tokens (BOS, EOS, padding) out of the statistics."""

    enabled: bool = False
    top_k: int = 20
    compare_monolingual: bool = False
    ratio: float = 0.4
    exclude_special: bool = False


# --------------------------------------------------------------------------------------------
# the recipe
# --------------------------------------------------------------------------------------------
@dataclass
class Recipe:
    """Every setting of a run. Unknown keys are rejected so that typos do not pass silently.

    ``calibration`` (a :mod:`polyprune.calibration` spec) replaces ``demos`` and
    ``calibration_text`` when set; ``contrast`` is the contrast set of ``wanda_refined``.

    ``steps`` are the changes made to the model, in order, before it is evaluated and exported
    (:data:`STEPS`): ``prune`` (``pruning``), ``remove_heads`` (the ``removal`` part of ``heads``,
    a soft cut; :mod:`polyprune.heads`), ``lens`` (``lens``; :mod:`polyprune.subspaces`) and, as
    the last step, ``slim`` (``slim``; :mod:`polyprune.slimming`), which writes its own smaller
    checkpoint instead of the plain export. The feature sections are plain mappings of their
    packages' settings (``HeadsConfig``, ``LensConfig``, ``SlimConfig``), checked when used.

    ``max_memory`` (``"4GB"``) streams the model one block at a time within that budget
    (:mod:`polyprune.pruning.streaming`) instead of loading it whole.
    """

    model: str = "demo"
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    seed: int = 0
    demos: DemoConfig = field(default_factory=DemoConfig)
    calibration_text: str | None = None
    calibration: dict | None = None
    contrast: dict | None = None
    pruning: PruneConfig = field(default_factory=PruneConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None
    export: bool = True
    overwrite: bool = False
    reload_check: bool = True
    steps: list[str] = field(default_factory=lambda: ["prune"])
    heads: dict | None = None
    subspaces: dict | None = None
    lens: dict | None = None
    slim: dict | None = None
    max_memory: str | int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def check_steps(self) -> None:
        """Raise :class:`PolypruneError` for an unknown step, a repeated one, a step without its
        settings, or ``slim`` before the end."""
        for st in self.steps:
            if st not in STEPS:
                raise PolypruneError(f"Unknown step {st!r} in the recipe", f"use steps from {', '.join(STEPS)}")
        if len(set(self.steps)) != len(self.steps):
            raise PolypruneError("A step appears twice in the recipe's steps", "list each step once")
        if "slim" in self.steps and self.steps[-1] != "slim":
            raise PolypruneError("The slim step must come last (it writes its own checkpoint)",
                                 "move slim to the end of steps")
        for st, section in (("remove_heads", self.heads), ("lens", self.lens), ("slim", self.slim)):
            if st in self.steps and not section:
                raise PolypruneError(f"The recipe's steps include {st} but it has no {st.split('_')[-1]} section",
                                     f"add the {st.split('_')[-1]}: settings, or remove {st} from steps")

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> "Recipe":
        """Build from a dict, nested sections as dicts, every value type-checked.

        Raises:
            PolypruneError: an unknown key (named, with the known ones) or a wrong type.
        """
        if isinstance(d, dict) and "report" in d:  # pruning_config.json of an export carries its report
            d = {k: v for k, v in d.items() if k not in ("report", "polyprune")}
        r = settings_from_dict(cls, d, where)
        r.evaluation.validate()
        return r

    def calibration_spec(self) -> dict:
        """The calibration set of this recipe as one :func:`polyprune.calibration.build` spec."""
        if self.calibration:
            return {"samples": self.demos.samples, "seq_len": self.demos.seq_len, **self.calibration}
        if self.calibration_text:
            return {"kind": "text", "file": self.calibration_text, "samples": self.demos.samples,
                    "seq_len": self.demos.seq_len}
        return demos_spec(self.demos)

    def contrast_spec(self) -> dict | None:
        """The contrast set of ``wanda_refined`` as a spec (``None`` when not set)."""
        if not self.contrast:
            return None
        return {"samples": self.demos.samples, "seq_len": self.demos.seq_len, **self.contrast}


def demos_spec(cfg: DemoConfig) -> dict:
    """The :func:`polyprune.calibration.build` spec of demonstration settings."""
    return {"kind": "demos", **asdict(cfg)}


def load_recipe(path: str | Path, trust_remote_code: bool = False) -> Recipe:
    """Read a recipe from ``.json``, ``.yaml`` or ``.yml``.

    Relative paths in the recipe (``out``, ``calibration_text``, ``evaluation.data``, file specs)
    are resolved against the recipe's folder. ``trust_remote_code`` comes only from the caller
    (the command line or a dialog the user answers): a recipe that asks for it gets
    ``requested_trust_remote_code`` set, so the caller can say so.

    Raises:
        PolypruneError: missing file, parse error (with line), unknown keys, wrong types.
    """
    p = Path(path).expanduser()
    data = read_settings_file(p, "recipe")
    recipe = Recipe.from_dict(data or {}, where=f"recipe {p.name}")
    asked = recipe.trust_remote_code
    recipe.trust_remote_code = bool(trust_remote_code)
    recipe.requested_trust_remote_code = asked  # type: ignore[attr-defined]
    base = p.resolve().parent
    resolve_paths(recipe, base)
    return recipe


def resolve_paths(recipe: Recipe, base: Path) -> None:
    """Make the recipe's relative paths absolute against ``base`` (the recipe's folder)."""
    def fix(v: str | None) -> str | None:
        if not v:
            return v
        q = Path(v).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    recipe.out = fix(recipe.out)
    recipe.calibration_text = fix(recipe.calibration_text)
    recipe.evaluation.data = fix(recipe.evaluation.data)
    for spec in (recipe.calibration, recipe.contrast):
        if spec and spec.get("kind") == "text" and isinstance(spec.get("file"), str):
            spec["file"] = fix(spec["file"])
    src = recipe.demos.source
    if src.startswith(("flores:", "file:")):
        kind, _, arg = src.partition(":")
        recipe.demos.source = f"{kind}:{fix(arg)}"
    if recipe.model.startswith((".", "~")):  # demo, hub ids and absolute paths stay as they are
        recipe.model = fix(recipe.model)


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write a recipe as JSON or YAML (by suffix), atomically."""
    p = Path(path).expanduser()
    d = recipe.to_dict()
    text = dumps(d) if p.suffix.lower() == ".json" else yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
    return atomic_write_text(p, text)
