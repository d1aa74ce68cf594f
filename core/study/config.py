"""A study's settings and grid: calibration sources x methods x sparsities, validated before any
model is loaded (:func:`plan`). See :mod:`polyprune.study` for what a study is and writes."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..calibration import normalize_spec
from ..errors import PolypruneError
from ..fileio import parse_settings, read_settings_file
from ..memory import parse_size
from ..recipe import EvalConfig, PruneConfig, settings_from_dict
from ..steps import check_step

#: Bumped when the meaning of evaluation rows changes (2: harness metric names), so cells
#: evaluated by an earlier version are evaluated again instead of mixing meanings.
EVAL_VERSION = 2


@dataclass
class RayConfig:
    """How a study runs on a Ray cluster (``ray:`` in a study file; used by ``polyprune study --ray``).

    Attributes:
        address: the cluster (``host:port``, ``ray://host:port`` or ``auto``); ``None``: the
            address given to ``--ray``, else a local cluster started on this machine.
        num_cpus: CPU cores each cell asks for (its torch threads).
        num_gpus: GPUs each cell asks for (0: CPU only; a cell with a GPU runs on it).
        memory: memory each cell asks for (``"16GB"``; ``None``: no request).
        max_retries: times a cell is started again when its worker dies (a failing cell is not
            retried: its error is recorded and the other cells go on).
    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: str | None = None
    max_retries: int = 2

    def validate(self) -> None:
        """Raise :class:`PolypruneError` for a bad request."""
        if not self.num_cpus > 0:
            raise PolypruneError(f"ray.num_cpus {self.num_cpus} must be positive", "ask for at least a fraction of a core, e.g. 1")
        if not self.num_gpus >= 0:
            raise PolypruneError(f"ray.num_gpus {self.num_gpus} must not be negative", "use 0 for CPU-only cells, or e.g. 1")
        if self.max_retries < 0:
            raise PolypruneError(f"ray.max_retries {self.max_retries} must not be negative", "use e.g. 2")
        if self.memory is not None:
            parse_size(self.memory)


@dataclass
class StudyConfig:
    """Settings of a study (see the module docstring for an example).

    Attributes:
        model, device, dtype, trust_remote_code: as in a recipe (device ``None``: cuda if present).
        seed: torch seed set before the study.
        calibration: calibration specs (:mod:`polyprune.calibration`); their labels must differ.
        calibration_defaults: ``samples``, ``seq_len``, ``shots``, ``source``, ``split``, ... for
            every spec that does not set them.
        contrast: the contrast spec of ``wanda_refined`` (a spec may carry its own ``contrast``).
        methods: ``"wanda"``, ``"sparsegpt"``, ``"magnitude"``, ``"wanda_refined"``, with ``+owl``
            for OWL layer sparsities, or dicts of :class:`PruneConfig` settings with ``method`` and
            an optional ``label``.
        sparsities: sparsities to try (the mean sparsity with OWL).
        pattern: ``unstructured`` or N:M for every cell.
        pruning: further :class:`PruneConfig` settings shared by all cells.
        evaluation: :class:`~polyprune.recipe.EvalConfig` settings (tasks, languages, limits, data).
        reference: the cell masks are compared with: grid index, cell id, or a dict with any of
            ``calibration`` (label), ``method`` (label), ``sparsity``; default the first cell.
        out: output folder.
        ray: :class:`RayConfig`, per-cell requests when the study runs on Ray (never part of a cell id).
    """

    model: str = "demo"
    device: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    seed: int = 0
    calibration: list[dict] = field(default_factory=list)
    calibration_defaults: dict = field(default_factory=dict)
    contrast: dict | None = None
    methods: list = field(default_factory=lambda: ["wanda"])
    sparsities: list[float] = field(default_factory=lambda: [0.5])
    pattern: str = "unstructured"
    pruning: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    reference: Any = None
    out: str = "runs/study"
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "study") -> "StudyConfig":
        """Build from a mapping; unknown keys and values of the wrong type are rejected.

        Raises:
            PolypruneError: not a mapping, an unknown key (the known ones are listed), a wrong type.
        """
        return settings_from_dict(cls, d, where)


def load_study(path: str | Path) -> StudyConfig:
    """Read a study from ``.json``, ``.yaml`` or ``.yml``.

    ``trust_remote_code`` from the file is not obeyed (``requested_trust_remote_code`` says it
    was asked for); the caller sets it from the command line or a dialog.

    Raises:
        PolypruneError: missing file, parse error, unknown keys.
    """
    p = Path(path).expanduser()
    data = read_settings_file(p, "study")
    cfg = StudyConfig.from_dict(data or {}, where=f"study {p.name}")
    cfg.requested_trust_remote_code = cfg.trust_remote_code  # type: ignore[attr-defined]
    cfg.trust_remote_code = False  # a study file is data, not consent: only the command line or a dialog
    return cfg


def study_from_text(text: str, where: str = "study") -> StudyConfig:
    """Parse a study written as YAML (or JSON) text, e.g. from an editor.

    Raises:
        PolypruneError: a syntax error (with its line) or unknown settings.
    """
    return StudyConfig.from_dict(parse_settings(text, where) or {}, where=where)


@dataclass
class Cell:
    """One pruning run of the grid.

    Attributes:
        index: position in grid order (calibration, then method, then sparsity).
        calibration: the normalized calibration spec (with ``label``).
        method: method label (``wanda+owl``).
        sparsity: the (mean) sparsity.
        prune: the :class:`PruneConfig` settings as a dict.
        contrast: the normalized contrast spec (``wanda_refined``), else ``None``.
        id: stable id derived from the settings (folder name under ``cells/``).
        steps: ``[[name, settings], ...]`` applied after the pruning (:mod:`polyprune.steps`).
        no_pruning: the cell only runs its steps (``method: none``).
    """

    index: int
    calibration: dict
    method: str
    sparsity: float
    prune: dict
    contrast: dict | None
    id: str
    steps: list = field(default_factory=list)
    no_pruning: bool = False

    @property
    def label(self) -> str:
        return f"{self.calibration['label']} | {self.method} | {self.sparsity:g}"

    def config(self) -> PruneConfig:
        return PruneConfig(**self.prune)


def _slug(text: str) -> str:
    text = text.replace("↔", "-").replace("→", "-")
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-")[:40] or "x"


def settings_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _relevant(settings: dict) -> dict:
    """The pruning settings that can change the result of a cell (for its id)."""
    d = dict(settings)
    if d.get("method") != "sparsegpt":
        d.pop("damping", None)
        d.pop("blocksize", None)
    if d.get("layerwise") != "owl":
        d.pop("owl_m", None)
        d.pop("owl_lambda", None)
    return d


def parse_method(entry, pruning: dict, pattern: str) -> tuple[str, dict]:
    """``(label, PruneConfig settings without sparsity)`` of a method entry.

    A dict entry may carry ``steps`` (changes made after the pruning, evaluated with it:
    ``[{remove_heads: {...}}, {lens: {...}}]``, see :mod:`polyprune.steps`); they are returned in
    the settings under ``"steps"``. ``method: none`` prunes nothing (only its steps run), once per
    study whatever the sparsities.

    Raises:
        PolypruneError: an unknown setting or a malformed entry.
    """
    known = set(PruneConfig.__dataclass_fields__)
    if isinstance(entry, str):
        name, _, suffix = entry.partition("+")
        d = {"method": name}
        if suffix:
            if suffix != "owl":
                raise PolypruneError(f"Unknown method suffix {'+' + suffix!r} in {entry!r}", "only +owl is known (e.g. sparsegpt+owl)")
            d["layerwise"] = "owl"
        label = entry
    elif isinstance(entry, dict) and "method" in entry:
        d = {k: v for k, v in entry.items() if k not in ("label", "steps")}
        label = entry.get("label") or d["method"] + ("+owl" if d.get("layerwise") == "owl" else "")
    else:
        raise PolypruneError(f"Cannot read the method entry {entry!r}",
                             "write a method name (wanda, sparsegpt, wanda+owl) or {method: ..., label: ..., <settings>}")
    for src, where in ((pruning, "pruning"), (d, f"method {label!r}")):
        bad = set(src) - known - {"sparsity"}
        if bad:
            raise PolypruneError(f"Unknown pruning setting(s) {', '.join(sorted(bad))} in {where}",
                                 f"known: {', '.join(sorted(known - {'sparsity'}))}")
    settings = {**pruning, "pattern": pattern, **d}
    settings.pop("sparsity", None)
    steps = entry.get("steps") if isinstance(entry, dict) else None
    settings["steps"] = parse_steps(steps, label)
    return label, settings


def parse_steps(steps, label: str) -> list[list]:
    """A method entry's ``steps`` as ``[[name, normalized settings], ...]``.

    Raises:
        PolypruneError: not a list of one-key mappings, or a bad step (named).
    """
    if steps is None:
        return []
    if not isinstance(steps, list) or not all(isinstance(x, dict) and len(x) == 1 for x in steps):
        raise PolypruneError(f"The steps of method {label!r} are not a list of single steps",
                             "write steps: [{remove_heads: {...}}, {lens: {...}}]")
    return [[name, check_step(name, value)] for step in steps for name, value in step.items()]


def eval_config(d: dict) -> EvalConfig:
    """The study's evaluation settings (every cell keeps its item scores for paired comparisons).

    Raises:
        PolypruneError: an unknown setting, a wrong type, a renamed metric.
    """
    ev = settings_from_dict(EvalConfig, d or {}, "study", kind="evaluation")
    ev.item_scores = True
    ev.validate()
    return ev


def eval_signature(ev: EvalConfig) -> str:
    """Hash of the evaluation settings (and :data:`EVAL_VERSION`): cells evaluated with another
    signature are evaluated again."""
    return settings_hash([asdict(ev), EVAL_VERSION])[:16]


def plan(cfg: StudyConfig) -> list[Cell]:
    """Validate the whole study and list its cells in grid order (no model is loaded).

    Raises:
        PolypruneError: no calibration spec/method/sparsity, a bad spec, duplicate labels, invalid
            pruning settings for some cell (e.g. N:M with OWL), ``wanda_refined`` without a contrast.
    """
    if not cfg.calibration:
        raise PolypruneError("The study has no calibration sources", "list at least one under calibration:")
    if not cfg.methods:
        raise PolypruneError("The study has no methods", "list e.g. methods: [wanda, sparsegpt]")
    if not cfg.sparsities:
        raise PolypruneError("The study has no sparsities", "list e.g. sparsities: [0.5]")
    specs, contrasts = [], []
    for raw in cfg.calibration:
        raw = dict(raw) if isinstance(raw, dict) else raw
        c = raw.pop("contrast", None) if isinstance(raw, dict) else None
        c = c if c is not None else cfg.contrast
        specs.append(normalize_spec(raw, cfg.calibration_defaults))
        contrasts.append(normalize_spec(c, cfg.calibration_defaults) if c is not None else None)
    labels = [s["label"] for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise PolypruneError(f"Two calibration sources have the label {dup[0]!r}",
                             "give each a distinct label: (e.g. label: mono eng 64)")
    methods = [parse_method(m, cfg.pruning or {}, cfg.pattern) for m in cfg.methods]
    mlabels = [m[0] for m in methods]
    dup = sorted({x for x in mlabels if mlabels.count(x) > 1})
    if dup:
        raise PolypruneError(f"Two methods have the label {dup[0]!r}", "give each method entry a distinct label")
    cells = []
    for k, (spec, contrast) in enumerate(zip(specs, contrasts)):
        for label, settings in methods:
            settings = dict(settings)
            steps = settings.pop("steps")
            nothing = settings.get("method") == "none"
            if nothing:  # only the steps run: one cell, whatever the calibration sources and sparsities
                if k:
                    continue
                settings["method"] = "magnitude"
            for s in ([0.0] if nothing else cfg.sparsities):
                try:
                    s = float(s)
                except (TypeError, ValueError):
                    raise PolypruneError(f"Sparsity {s!r} is not a number", "write sparsities such as [0.5, 0.6]") from None
                pc = PruneConfig(**settings, sparsity=s)
                pc.validate()
                refined = pc.method == "wanda_refined"
                if refined and contrast is None:
                    raise PolypruneError(f"Method {label} (the refined metric) needs a contrast calibration set",
                                         "add contrast: {kind: text, file: code.txt} to the study or to the calibration spec")
                key = {"model": cfg.model, "dtype": cfg.dtype, "seed": cfg.seed,
                       "calibration": None if nothing else spec, "contrast": contrast if refined else None,
                       "prune": None if nothing else _relevant(asdict(pc))}
                if steps:  # (kept out of the key otherwise, so earlier study folders resume)
                    key["steps"] = steps
                cid = f"{_slug(spec['label'])}__{_slug(label)}__{s:g}__{settings_hash(key)[:10]}"
                cells.append(Cell(len(cells), spec, label, s, asdict(pc), contrast if refined else None, cid, steps,
                                  nothing))
    reference_cell(cells, cfg.reference)  # validates
    return cells


def reference_cell(cells: list[Cell], ref) -> Cell:
    """The reference cell of the mask agreement (see :class:`StudyConfig`).

    Raises:
        PolypruneError: no cell matches, or a dict matches several.
    """
    if ref is None:
        return cells[0]
    if isinstance(ref, int) and not isinstance(ref, bool):
        if not 0 <= ref < len(cells):
            raise PolypruneError(f"Reference cell {ref} is out of range", f"use an index from 0 to {len(cells) - 1}")
        return cells[ref]
    if isinstance(ref, str):
        hits = [c for c in cells if c.id == ref or c.label == ref]
    elif isinstance(ref, dict):
        hits = [c for c in cells if (ref.get("calibration") in (None, c.calibration["label"])
                                     and ref.get("method") in (None, c.method)
                                     and (ref.get("sparsity") is None or abs(float(ref["sparsity"]) - c.sparsity) < 1e-12))]
    else:
        hits = []
    if len(hits) != 1:
        raise PolypruneError(f"The reference {ref!r} matches {len(hits)} cells",
                             "give a cell index, a cell id, or {calibration: LABEL, method: LABEL, sparsity: S} matching one cell")
    return hits[0]
