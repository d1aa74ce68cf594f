"""Studies: calibration sources x methods x sparsities on one model, evaluated, in one table.

Kim et al. (2024) and Kurz et al. (2024) ask which calibration data keeps a pruned model good in
other languages, and find that no method and no language wins everywhere (methods.md §1, §6). A
study runs that comparison on the user's own model and languages in one go::

    model: demo
    calibration:
      - {kind: translation, langs: [fra_Latn], direction: both}
      - {kind: monolingual, lang: eng_Latn}
      - {kind: mix, proportions: {eng_Latn: 0.5, fra_Latn: 0.25, swh_Latn: 0.25}}
    calibration_defaults: {samples: 32, seq_len: 256, shots: 4, source: auto}
    methods: [wanda, sparsegpt, wanda+owl]      # or {method: sparsegpt, damping: 0.02, label: ...}
    sparsities: [0.5]
    pattern: unstructured
    pruning: {batch_size: 8}                     # shared PruneConfig settings
    evaluation: {ppl: [eng_Latn, fra_Latn, swh_Latn], ppl_limit: 200}
    reference: 0                                 # the cell masks are compared with (index, id or dict)
    out: runs/study

How it runs (:func:`run_study`): every setting is validated before the model is loaded; the model
is loaded once and evaluated dense once; for each *cell* (calibration spec, method, sparsity in
that order) the model is pruned, evaluated, its masks saved, and the dense weights put back from
the pruning records (bit-identical, checked against a fingerprint; never reloaded from disk).
Calibration sets are built once per spec and OWL's outlier ratios once per calibration set.

Output folder::

    study.json                  the resolved configuration
    cells/<cell id>/cell.json   settings, calibration metadata, sparsities, timings
    cells/<cell id>/results.json    the cell's rows (written last: a cell is done when it exists)
    cells/<cell id>/masks.safetensors
    results.jsonl, results.csv  one row per (cell, task, language, metric), dense rows first
    mask_agreement.csv          per module and per block, every cell against the reference cell
    paired.csv                  every cell minus the reference cell per task, language and metric, with a
                                paired bootstrap 95% interval (same items resampled for both cells)
    cells/<cell id>/items.json  each item's score (0/1 per document, nll and tokens per sentence)

Resume and stop: a cell id is a hash of everything that determines its pruned model (model, dtype,
seed, normalized calibration spec, contrast spec, pruning settings). Running a study again skips
cells whose ``results.json`` exists for the same evaluation settings (a changed evaluation
re-runs the cells). Cancelling through ``progress`` stops between or within cells; the current
cell is abandoned (its weights restored), finished cells stay on disk and the tables are written.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .calibration import build as build_calibration_spec, normalize_spec
from .errors import Cancelled, PolypruneError
from .progress import Progress, ensure, tqdm_progress
from .pruning import PruneConfig, restore

EvaluateFn = Callable[[Any, Any, Progress], list]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "study") -> "StudyConfig":
        """Build from a mapping; unknown keys are rejected.

        Raises:
            PolypruneError: not a mapping, or an unknown key (the known ones are listed).
        """
        if not isinstance(d, dict):
            raise PolypruneError(f"The {where} is not a mapping of settings", "write key: value pairs (YAML) or a JSON object")
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise PolypruneError(f"Unknown setting(s) {', '.join(sorted(bad))} in the {where}",
                                 f"known settings: {', '.join(sorted(known))}")
        return cls(**d)


def load_study(path: str | Path) -> StudyConfig:
    """Read a study from ``.json``, ``.yaml`` or ``.yml``.

    Raises:
        PolypruneError: missing file, parse error, unknown keys.
    """
    from .recipe import read_settings_file

    p = Path(path).expanduser()
    data = read_settings_file(p, "study")
    return StudyConfig.from_dict(data or {}, where=f"study {p.name}")


# --------------------------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------------------------
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
    """

    index: int
    calibration: dict
    method: str
    sparsity: float
    prune: dict
    contrast: dict | None
    id: str

    @property
    def label(self) -> str:
        return f"{self.calibration['label']} | {self.method} | {self.sparsity:g}"

    def config(self) -> PruneConfig:
        return PruneConfig(**self.prune)


def _slug(text: str) -> str:
    text = text.replace("↔", "-").replace("→", "-")
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-")[:40] or "x"


def _hash(obj) -> str:
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

    Raises:
        PolypruneError: an unknown setting or a malformed entry.
    """
    known = {f.name for f in fields(PruneConfig)}
    if isinstance(entry, str):
        name, _, suffix = entry.partition("+")
        d = {"method": name}
        if suffix:
            if suffix != "owl":
                raise PolypruneError(f"Unknown method suffix {'+' + suffix!r} in {entry!r}", "only +owl is known (e.g. sparsegpt+owl)")
            d["layerwise"] = "owl"
        label = entry
    elif isinstance(entry, dict) and "method" in entry:
        d = {k: v for k, v in entry.items() if k != "label"}
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
    return label, settings


def _eval_config(d: dict):
    from .recipe import EvalConfig
    known = {f.name for f in fields(EvalConfig)}
    bad = set(d or {}) - known
    if bad:
        raise PolypruneError(f"Unknown evaluation setting(s) {', '.join(sorted(bad))} in the study",
                             f"known: {', '.join(sorted(known))}")
    ev = EvalConfig(**(d or {}))
    ev.item_scores = True  # every cell keeps its item scores for paired comparisons
    return ev


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
    for spec, contrast in zip(specs, contrasts):
        for label, settings in methods:
            for s in cfg.sparsities:
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
                key = {"model": cfg.model, "dtype": cfg.dtype, "seed": cfg.seed, "calibration": spec,
                       "contrast": contrast if refined else None, "prune": _relevant(asdict(pc))}
                cid = f"{_slug(spec['label'])}__{_slug(label)}__{s:g}__{_hash(key)[:10]}"
                cells.append(Cell(len(cells), spec, label, s, asdict(pc), contrast if refined else None, cid))
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


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
COLUMNS = ["cell", "calibration", "calibration_kind", "method", "sparsity", "pattern", "task", "language",
           "metric", "value", "ci_low", "ci_high", "n", "dense", "delta", "overall_sparsity", "prune_seconds", "eval_seconds"]


def _record_fields(r) -> dict:
    d = r.to_dict() if hasattr(r, "to_dict") else dict(r) if isinstance(r, dict) else vars(r)
    extra = d.get("extra") or {}
    out = {k: d.get(k) for k in ("task", "language", "metric", "value", "ci_low", "ci_high", "n")}
    for k in ("ci_low", "ci_high"):  # an EvalRecord carries its interval in extra
        if out[k] is None and extra.get(k) is not None:
            out[k] = extra[k]
    return out


def _item_scores(records) -> dict[str, dict]:
    """``{"task|language|metric": {"correct": [...]} or {"nll": [...], "tokens": [...]}}`` of records
    that carry item scores (``EvalConfig.item_scores``)."""
    items = {}
    for r in records:
        d = r.to_dict() if hasattr(r, "to_dict") else dict(r)
        extra = d.get("extra") or {}
        key = f"{d['task']}|{d['language']}|{d['metric']}"
        if "item_correct" in extra:
            items[key] = {"correct": list(extra["item_correct"])}
        elif "item_nll" in extra:
            items[key] = {"nll": list(extra["item_nll"]), "tokens": list(extra["item_tokens"])}
    return items


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_safe(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_tables(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """Write ``results.jsonl`` and ``results.csv`` (columns :data:`COLUMNS`) atomically."""
    jl = "".join(json.dumps({k: _json_safe(v) for k, v in r.items()}, ensure_ascii=False) + "\n" for r in rows)
    _atomic_text(out / "results.jsonl", jl)
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    _atomic_text(out / "results.csv", buf.getvalue())
    return out / "results.jsonl", out / "results.csv"


def load_rows(out: str | Path) -> list[dict]:
    """Rows of ``results.jsonl`` in a study folder (for the GUI and the CLI).

    Raises:
        PolypruneError: the folder has no ``results.jsonl``.
    """
    p = Path(out).expanduser() / "results.jsonl"
    if not p.is_file():
        raise PolypruneError(f"No study results in {p.parent}", "run the study first (polyprune study RECIPE)")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_table(out: str | Path, name: str, floats: tuple[str, ...], ints: tuple[str, ...]) -> list[dict]:
    """Rows of the CSV ``name`` in a study folder with the given columns converted, or ``[]``."""
    p = Path(out).expanduser() / name
    if not p.is_file():
        return []
    with open(p, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in floats:
            r[k] = float(r[k])
        for k in ints:
            r[k] = int(r[k]) if r[k] not in ("", None) else None
    return rows


def load_agreement(out: str | Path) -> list[dict]:
    """Rows of ``mask_agreement.csv`` (``agreement`` as float, ``block`` as int), or ``[]``."""
    return _read_table(out, "mask_agreement.csv", ("agreement", "sparsity"), ("block",))


@dataclass
class HeatmapTable:
    """Calibration label x evaluation language matrix of one metric.

    Attributes:
        rows: calibration labels (grid order; ``dense`` first when included).
        cols: evaluation languages (first-seen order).
        values: ``values[i][j]`` (``None`` where missing).
        title: what the numbers are (metric, task, method, sparsity, mode).
    """

    rows: list[str]
    cols: list[str]
    values: list[list[float | None]]
    title: str

    def format(self, digits: int = 4) -> str:
        """A plain-text table for the terminal."""
        w0 = max([len(r) for r in self.rows] + [11])
        wc = max([len(c) for c in self.cols] + [digits + 5])
        lines = [self.title, " " * w0 + "  " + "  ".join(c.rjust(wc) for c in self.cols)]
        for r, vals in zip(self.rows, self.values):
            cells = ["" if v is None else f"{v:.{digits}g}" for v in vals]
            lines.append(r.ljust(w0) + "  " + "  ".join(c.rjust(wc) for c in cells))
        return "\n".join(lines)


def heatmap_table(rows: list[dict], metric: str = "perplexity", task: str | None = None,
                  method: str | None = None, sparsity: float | None = None, mode: str = "value",
                  include_dense: bool = False) -> HeatmapTable:
    """Calibration label x evaluation language for one metric of one (method, sparsity).

    Args:
        rows: study rows (:func:`load_rows` or ``StudyResult.rows``).
        metric: e.g. ``perplexity`` or ``acc``.
        task: restrict to one task (e.g. ``flores_ppl``) when a metric is shared by several.
        method, sparsity: which cells; may be left out when the rows hold only one.
        mode: ``value``, ``delta`` (value - dense) or ``ratio`` (value / dense).
        include_dense: add the dense model as a first row (in ``value`` mode).

    Raises:
        PolypruneError: no rows for the metric, several methods/sparsities left to choose from,
            or an unknown mode.
    """
    if mode not in ("value", "delta", "ratio"):
        raise PolypruneError(f"Unknown heatmap mode {mode!r}", "use value, delta or ratio")
    sel = [r for r in rows if r.get("metric") == metric and (task is None or r.get("task") == task)]
    pruned = [r for r in sel if r.get("cell") != "dense"]
    if method is not None:
        pruned = [r for r in pruned if r.get("method") == method]
    if sparsity is not None:
        pruned = [r for r in pruned if abs(float(r.get("sparsity")) - float(sparsity)) < 1e-12]
    if not pruned:
        raise PolypruneError(f"No study results for metric {metric!r}" + (f" of task {task}" if task else "")
                             + (f", method {method}" if method else "") + (f", sparsity {sparsity}" if sparsity is not None else ""),
                             "check the metric name (perplexity, acc) and the filters")
    combos = sorted({(r["method"], float(r["sparsity"])) for r in pruned}, key=str)
    if len(combos) > 1:
        raise PolypruneError(f"The results hold {len(combos)} method/sparsity combinations",
                             "choose one with method= and sparsity= (or use heatmaps())")
    tasks = sorted({r["task"] for r in pruned})
    if len(tasks) > 1 and task is None:
        raise PolypruneError(f"Metric {metric!r} comes from several tasks ({', '.join(tasks)})", "choose one with task=")
    cal_labels = list(dict.fromkeys(r["calibration"] for r in pruned))
    cols = list(dict.fromkeys(r["language"] for r in pruned))
    dense = {r["language"]: r["value"] for r in sel if r.get("cell") == "dense"}
    grid: dict[tuple[str, str], float] = {(r["calibration"], r["language"]): r["value"] for r in pruned}

    def show(v, lang):
        if v is None or mode == "value":
            return v
        d = dense.get(lang)
        if d is None:
            return None
        return v - d if mode == "delta" else (v / d if d else None)

    values = [[show(grid.get((c, lang)), lang) for lang in cols] for c in cal_labels]
    if include_dense and mode == "value":
        cal_labels = ["dense"] + cal_labels
        values = [[dense.get(lang) for lang in cols]] + values
    m, s = combos[0]
    title = f"{metric}{f' ({tasks[0]})' if tasks else ''} — {m} at sparsity {s:g}" + ("" if mode == "value" else f", {mode} vs dense")
    return HeatmapTable(cal_labels, cols, values, title)


def heatmaps(rows: list[dict], mode: str = "value") -> list[HeatmapTable]:
    """Every heatmap a set of rows holds: one per (task, metric, method, sparsity)."""
    out = []
    combos = list(dict.fromkeys((r["task"], r["metric"], r["method"], float(r["sparsity"]))
                                for r in rows if r.get("cell") != "dense"))
    for task, metric, method, s in combos:
        out.append(heatmap_table(rows, metric, task, method, s, mode, include_dense=(mode == "value")))
    return out


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
@dataclass
class StudyResult:
    """Outcome of :func:`run_study`.

    Attributes:
        out: the output folder.
        cells: every cell of the grid.
        ran: ids of the cells pruned and evaluated in this call.
        skipped: ids of cells already done (resumed).
        rows: all result rows (dense first, grid order).
        agreement: rows of ``mask_agreement.csv``.
        seconds: wall time of this call.
        paired: rows of ``paired.csv``: every cell against the reference cell with paired intervals.
    """

    out: Path
    cells: list[Cell]
    ran: list[str]
    skipped: list[str]
    rows: list[dict]
    agreement: list[dict]
    seconds: float
    paired: list[dict] = field(default_factory=list)


def _fingerprint(model) -> dict[str, float]:
    from .models import all_prunable
    return {k: float(m.weight.detach().double().sum()) for k, m in all_prunable(model).items()}


def _cell_dir(out: Path, cid: str) -> Path:
    return out / "cells" / cid


def _done(out: Path, cid: str, eval_sig: str) -> list[dict] | None:
    p = _cell_dir(out, cid) / "results.json"
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return d["rows"] if d.get("eval_signature") == eval_sig else None


def _write_cell(out: Path, cid: str, info: dict, rows: list[dict], eval_sig: str,
                items: dict | None = None) -> None:
    d = _cell_dir(out, cid)
    _atomic_text(d / "cell.json", json.dumps(info, indent=2, ensure_ascii=False, default=str))
    if items:
        _atomic_text(d / "items.json", json.dumps(items, ensure_ascii=False))
    _atomic_text(d / "results.json", json.dumps({"eval_signature": eval_sig, "rows": rows}, indent=2,
                                                ensure_ascii=False, default=_json_default))


def _json_default(v):
    return str(v)


def mask_agreement_rows(out: Path, cells: list[Cell], ref: Cell, done: set[str] | None = None) -> list[dict]:
    """Agreement of every finished cell's masks with the reference cell's, per module and per block.

    ``done``: ids of the finished cells (default: every cell whose masks are on disk).
    """
    from .masks import agreement, agreement_counts, block_agreement, block_of, load_masks
    ref_path = _cell_dir(out, ref.id) / "masks.safetensors"
    if not ref_path.is_file() or (done is not None and ref.id not in done):
        return []
    ref_masks = load_masks(ref_path, unpack=False)
    rows = []
    for c in cells:
        p = _cell_dir(out, c.id) / "masks.safetensors"
        if c.id == ref.id or not p.is_file() or (done is not None and c.id not in done):
            continue
        counts = agreement_counts(ref_masks, load_masks(p, unpack=False))
        base = {"reference": ref.id, "cell": c.id, "calibration": c.calibration["label"], "method": c.method,
                "sparsity": c.sparsity}
        for i, v in block_agreement(None, None, counts).items():
            rows.append(base | {"level": "block", "block": i, "module": "", "agreement": v})
        for k, v in agreement(None, None, counts).items():
            rows.append(base | {"level": "module", "block": block_of(k), "module": k, "agreement": v})
    return rows


PAIRED_COLUMNS = ["reference", "cell", "calibration", "method", "sparsity", "task", "language", "metric", "n",
                  "value", "reference_value", "difference", "ci_low", "ci_high"]


def _load_items(out: Path, cid: str) -> dict:
    p = _cell_dir(out, cid) / "items.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def paired_difference(a: dict, b: dict, iters: int = 1000, seed=0, level: float = 0.95) -> tuple[float, float, float]:
    """Difference ``metric(a) - metric(b)`` of two models scored on the same items, with a paired
    percentile-bootstrap interval (both resampled with the same item indices).

    Args:
        a, b: item scores of one ``(task, language, metric)``: ``{"correct": [n] 0/1}`` (accuracy:
            difference of means) or ``{"nll": [n] nats, "tokens": [n]}`` (perplexity: difference of
            ``exp(sum nll / sum tokens)``).
        iters, seed, level: bootstrap resamples, numpy seed, coverage.

    Returns:
        ``(difference, low, high)``.

    Raises:
        ValueError: the two sides have different numbers of items or different kinds of scores.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    q = ((1 - level) / 2, (1 + level) / 2)
    if "correct" in a and "correct" in b:
        x, y = np.asarray(a["correct"], float), np.asarray(b["correct"], float)
        if x.size != y.size:
            raise ValueError(f"different item counts: {x.size} vs {y.size}")
        d = x - y
        idx = rng.integers(0, d.size, size=(iters, d.size))
        boots = d[idx].mean(1)
        lo, hi = np.quantile(boots, q)
        return float(d.mean()), float(lo), float(hi)
    if "nll" in a and "nll" in b:
        na, ta = np.asarray(a["nll"], float), np.asarray(a["tokens"], float)
        nb, tb = np.asarray(b["nll"], float), np.asarray(b["tokens"], float)
        if na.size != nb.size:
            raise ValueError(f"different item counts: {na.size} vs {nb.size}")
        idx = rng.integers(0, na.size, size=(iters, na.size))
        boots = np.exp(na[idx].sum(1) / ta[idx].sum(1)) - np.exp(nb[idx].sum(1) / tb[idx].sum(1))
        lo, hi = np.quantile(boots, q)
        return float(math.exp(na.sum() / ta.sum()) - math.exp(nb.sum() / tb.sum())), float(lo), float(hi)
    raise ValueError("the two sides hold different kinds of item scores")


def paired_rows(out: Path, cells: list[Cell], ref: Cell, done: set[str] | None = None, iters: int = 1000,
                seed: int = 0) -> list[dict]:
    """Every finished cell against the reference cell, per ``(task, language, metric)``, with paired
    bootstrap 95% intervals of the difference (:func:`paired_difference`); rows for ``paired.csv``.

    The interval is much narrower than the two cells' own intervals when the cells get mostly
    the same items right: it answers "is this calibration better than the reference on these items".
    """
    import zlib

    ref_items = _load_items(out, ref.id)
    if not ref_items or (done is not None and ref.id not in done):
        return []
    rows = []
    for c in cells:
        if c.id == ref.id or (done is not None and c.id not in done):
            continue
        items = _load_items(out, c.id)
        for key, a in items.items():
            b = ref_items.get(key)
            if b is None:
                continue
            task, lang, metric = key.split("|")
            try:
                diff, lo, hi = paired_difference(a, b, iters, [seed, zlib.crc32(key.encode("utf-8"))])
            except ValueError:
                continue
            n = len(a.get("correct") or a.get("nll") or [])
            if "correct" in a:
                va, vb = sum(a["correct"]) / n, sum(b["correct"]) / n
            else:
                va = math.exp(sum(a["nll"]) / sum(a["tokens"]))
                vb = math.exp(sum(b["nll"]) / sum(b["tokens"]))
            rows.append({"reference": ref.calibration["label"], "cell": c.id, "calibration": c.calibration["label"],
                         "method": c.method, "sparsity": c.sparsity, "task": task, "language": lang,
                         "metric": metric, "n": n, "value": va, "reference_value": vb, "difference": diff,
                         "ci_low": lo, "ci_high": hi})
    return rows


def load_paired(out: str | Path) -> list[dict]:
    """Rows of ``paired.csv`` (numbers as floats, ``n`` as int), or ``[]``."""
    return _read_table(out, "paired.csv", ("sparsity", "value", "reference_value", "difference", "ci_low", "ci_high"),
                       ("n",))


def _write_paired(out: Path, rows: list[dict]) -> None:
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PAIRED_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    _atomic_text(out / "paired.csv", buf.getvalue())


def _write_agreement(out: Path, rows: list[dict]) -> None:
    import io
    cols = ["reference", "cell", "calibration", "method", "sparsity", "level", "block", "module", "agreement"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    _atomic_text(out / "mask_agreement.csv", buf.getvalue())


def run_study(cfg: StudyConfig, progress: Progress | None = None, log: Callable[[str], None] = print,
              loaded=None, evaluate_fn: EvaluateFn | None = None) -> StudyResult:
    """Run (or resume) a study; see the module docstring.

    Args:
        cfg: the study.
        progress: overall progress and cooperative cancel.
        log: receives one line per event.
        loaded: an already loaded :class:`~polyprune.models.LoadedModel` (else ``cfg.model`` is loaded).
        evaluate_fn: ``evaluate_fn(loaded, eval_config, progress) -> [records]`` where a record has
            ``task, language, metric, value, n`` (:class:`~polyprune.evaluation.EvalRecord` or
            :class:`~polyprune.results.Result`); default :func:`polyprune.pipeline.evaluate`.

    Returns:
        :class:`StudyResult`.

    Raises:
        PolypruneError: invalid settings (before any work), missing data.
        Cancelled: stopped through ``progress``; finished cells and the tables are on disk and the
            model holds its dense weights.
    """
    progress = ensure(progress)
    t_start = time.perf_counter()
    cells = plan(cfg)
    ev = _eval_config(cfg.evaluation)
    eval_sig = _hash(asdict(ev))[:16]
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "study.json", json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False, default=str))
    ref = reference_cell(cells, cfg.reference)
    done = {c.id: _done(out, c.id, eval_sig) for c in cells}
    dense_rows = _done(out, "dense", eval_sig) if ev.enabled else []
    todo = [c for c in cells if done[c.id] is None]
    skipped = [c.id for c in cells if done[c.id] is not None]
    log(f"Study: {len(cells)} cells ({len(cfg.calibration)} calibration sources x {len(cfg.methods)} methods x "
        f"{len(cfg.sparsities)} sparsities); {len(skipped)} done, {len(todo)} to run; output in {out}")
    if not ev.enabled:
        log("No evaluation tasks given: the study saves masks and mask agreement only")
    ran: list[str] = []

    def collect_rows() -> list[dict]:
        rows = list((_done(out, "dense", eval_sig) or []) if ev.enabled else [])
        for c in cells:
            if done.get(c.id):
                rows += done[c.id]
        return rows

    try:
        if todo or dense_rows is None:
            ran = _run_cells(cfg, cells, todo, ev, eval_sig, out, done, progress, log, loaded, evaluate_fn,
                             dense_rows)
    finally:
        rows = collect_rows()
        write_tables(out, rows)
        finished = {c.id for c in cells if done.get(c.id) is not None}
        agreement_rows = mask_agreement_rows(out, cells, ref, finished)
        _write_agreement(out, agreement_rows)
        paired = paired_rows(out, cells, ref, finished, iters=max(ev.bootstrap, 1), seed=cfg.seed)
        _write_paired(out, paired)
    progress.update(1, 1, "Study done")
    return StudyResult(out, cells, ran, skipped, rows, agreement_rows, time.perf_counter() - t_start, paired)


def study_status(cfg: StudyConfig) -> tuple[list[Cell], set[str]]:
    """The grid of a study and which of its cells are already finished on disk (for resume displays).

    A cell counts as finished when its ``results.json`` exists for the study's current evaluation
    settings, exactly as :func:`run_study` decides what to skip.

    Returns:
        ``(cells, finished cell ids)``.

    Raises:
        PolypruneError: invalid settings (as :func:`plan`).
    """
    cells = plan(cfg)
    eval_sig = _hash(asdict(_eval_config(cfg.evaluation)))[:16]
    out = Path(cfg.out).expanduser()
    return cells, {c.id for c in cells if out.is_dir() and _done(out, c.id, eval_sig) is not None}


def study_from_text(text: str, where: str = "study") -> StudyConfig:
    """Parse a study written as YAML (or JSON) text, e.g. from an editor.

    Raises:
        PolypruneError: a syntax error (with its line) or unknown settings.
    """
    import yaml

    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise PolypruneError(f"Could not parse the {where}: {e}", "fix the YAML syntax at the line shown") from e
    return StudyConfig.from_dict(data or {}, where=where)


def _run_cells(cfg, cells, todo, ev, eval_sig, out, done, progress, log, loaded, evaluate_fn, dense_rows) -> list[str]:
    from .masks import model_signature, save_masks
    from .models import default_device, load_model
    from .owl import outlier_ratios
    from .pruning import selected_modules

    if evaluate_fn is None:
        from .pipeline import evaluate as evaluate_fn  # noqa: N811 - the default hook
        if ev.enabled:
            from .pipeline import _data_dir
            _data_dir(ev)  # no data folder: fail before the model is loaded
    torch.manual_seed(cfg.seed)
    if loaded is None:
        loaded = load_model(cfg.model, cfg.device or default_device(), cfg.dtype, cfg.trust_remote_code,
                            progress.sub(0, 0.05))
    model = loaded.model
    sig = model_signature(model)
    dense_fp = _fingerprint(model)
    n_units = len(todo) + (1 if dense_rows is None else 0)
    unit = 0.95 / max(n_units, 1)
    pos = 0.05
    cals: dict[str, Any] = {}
    ratios_cache: dict[str, list] = {}

    def calibration(spec: dict):
        key = _hash(spec)
        if key not in cals:
            cals[key] = build_calibration_spec(spec, loaded.tokenizer)
        return cals[key]

    if dense_rows is None:
        log("Evaluating the dense model")
        t = time.perf_counter()
        recs = evaluate_fn(loaded, ev, progress.sub(pos, pos + unit))
        rows = [{"cell": "dense", "calibration": "dense", "calibration_kind": "", "method": "dense", "sparsity": 0.0,
                 "pattern": "", **_record_fields(r), "dense": None, "delta": None, "overall_sparsity": 0.0,
                 "prune_seconds": 0.0, "eval_seconds": time.perf_counter() - t} for r in recs]
        _write_cell(out, "dense", {"model": cfg.model, "model_info": sig}, rows, eval_sig, _item_scores(recs))
        pos += unit
        dense_rows = rows
    dense_val = {(r["task"], r["language"], r["metric"]): r["value"] for r in dense_rows}
    ran = []
    for cell in todo:
        progress.check()
        sub = progress.sub(pos, pos + unit)
        pos += unit
        log(f"Cell {cell.index + 1}/{len(cells)}: {cell.label}")
        pc = cell.config()
        cal = calibration(cell.calibration) if pc.needs_calibration else None
        contrast = calibration(cell.contrast) if cell.contrast is not None else None
        ratios = None
        if pc.layerwise == "owl":
            key = _hash([cell.calibration, pc.owl_m, pc.skip, pc.skip_blocks, pc.batch_size])
            if key not in ratios_cache:
                ratios_cache[key] = outlier_ratios(model, cal, selected_modules(model, pc), pc.owl_m, pc.batch_size,
                                                   sub.sub(0, 0.1))
            ratios = ratios_cache[key]
        t = time.perf_counter()
        res = prune(model, pc, cal, sub.sub(0.1, 0.5), contrast=contrast, outlier_ratios=ratios)
        prune_s = time.perf_counter() - t
        try:
            log(f"  pruned in {prune_s:.1f} s, sparsity {res.overall:.4f}; evaluating")
            t = time.perf_counter()
            recs = evaluate_fn(loaded, ev, sub.sub(0.5, 0.98)) if ev.enabled else []
            eval_s = time.perf_counter() - t
            d = _cell_dir(out, cell.id)
            save_masks(res, d / "masks.safetensors", sig, extra={"cell": cell.id, "label": cell.label})
            rows = []
            for r in recs:
                f = _record_fields(r)
                dv = dense_val.get((f["task"], f["language"], f["metric"]))
                rows.append({"cell": cell.id, "calibration": cell.calibration["label"],
                             "calibration_kind": cell.calibration["kind"], "method": cell.method,
                             "sparsity": cell.sparsity, "pattern": pc.pattern, **f, "dense": dv,
                             "delta": (f["value"] - dv) if dv is not None and f["value"] is not None else None,
                             "overall_sparsity": res.overall, "prune_seconds": prune_s, "eval_seconds": eval_s})
            info = {"id": cell.id, "index": cell.index, "label": cell.label, "model": cfg.model, "dtype": cfg.dtype,
                    "seed": cfg.seed, "calibration": cell.calibration, "contrast": cell.contrast,
                    "calibration_meta": {k: v for k, v in (cal.meta if cal is not None else {}).items()},
                    "pruning": res.summary() | {"module_sparsity": None}, "evaluation": asdict(ev),
                    "prune_seconds": prune_s, "eval_seconds": eval_s}
            _write_cell(out, cell.id, info, rows, eval_sig, _item_scores(recs))
            done[cell.id] = rows
            ran.append(cell.id)
        finally:
            restore(model, res.records)
            del res
            if _fingerprint(model) != dense_fp:  # pragma: no cover - would be a bug in restore()
                raise RuntimeError("the dense weights were not restored exactly after a study cell")
    return ran


def prune(model, cfg, calibration, progress, contrast=None, outlier_ratios=None):
    """:func:`polyprune.pruning.prune` (a module attribute so tests can count the calls)."""
    from .pruning import prune as _prune
    return _prune(model, cfg, calibration, progress, contrast=contrast, outlier_ratios=outlier_ratios)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def print_summary(result_rows: list[dict], agreement_rows: list[dict], write=print,
                  paired: list[dict] | None = None) -> None:
    """Print every heatmap (values and change vs dense), the paired differences from the reference
    cell and the mask agreement per block."""
    for table in heatmaps(result_rows):
        write("\n" + table.format())
    cis = [r for r in result_rows if r.get("ci_low") is not None]
    if cis:
        write("\n95% bootstrap intervals (task, language, metric: calibration value [low, high]):")
        for key in dict.fromkeys((r["task"], r["language"], r["metric"]) for r in cis):
            rs = [r for r in cis if (r["task"], r["language"], r["metric"]) == key]
            write(f"  {key[0]} {key[1]} {key[2]}: " + "; ".join(
                f"{r['calibration']} {r['value']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]" for r in rs))
    if paired:
        write(f"\nPaired differences from the reference cell ({paired[0]['reference']}), 95% paired bootstrap; * the interval excludes 0:")
        for r in paired:
            sig = "" if r["ci_low"] <= 0 <= r["ci_high"] else "  *"
            write(f"  {r['task']:<12} {r['language']:<9} {r['metric']:<10} {r['calibration']:<22} "
                  f"{r['difference']:+.4g} [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]  (n={r['n']}){sig}")
    for table in heatmaps(result_rows, mode="delta"):
        if any(v is not None for row in table.values for v in row):
            write("\n" + table.format())
    blocks = [r for r in agreement_rows if r["level"] == "block"]
    if blocks:
        write("\nMask agreement with the reference cell (Dice of kept weights) per block:")
        cells = list(dict.fromkeys(r["cell"] for r in blocks))
        for c in cells:
            rs = [r for r in blocks if r["cell"] == c]
            write(f"  {rs[0]['calibration']} | {rs[0]['method']} | {rs[0]['sparsity']:g}: "
                  + " ".join(f"{r['agreement']:.3f}" for r in rs))


def study_main(argv: list[str] | None = None) -> int:
    """``polyprune study RECIPE [--out DIR] [--device D] [--show]``: run or resume a study, print its tables.

    ``--show`` prints the tables of a finished study folder without running anything. Exit codes:
    0 done, 2 bad input (one plain message), 130 stopped (finished cells are kept; run again to resume).
    """
    ap = argparse.ArgumentParser(prog="polyprune study",
                                 description="Grid of calibration sources x methods x sparsities, evaluated, in one table.")
    ap.add_argument("recipe", help="study file (YAML or JSON), or a study folder with --show")
    ap.add_argument("--out", default=None, help="override the study's output folder")
    ap.add_argument("--device", default=None, help="cpu, cuda[:N] or mps")
    ap.add_argument("--show", action="store_true", help="only print the tables of an existing study folder")
    a = ap.parse_args(argv)
    try:
        if a.show:
            folder = Path(a.recipe)
            if folder.is_file():
                folder = Path(a.out or load_study(folder).out)
            print_summary(load_rows(folder), load_agreement(folder), paired=load_paired(folder))
            return 0
        cfg = load_study(a.recipe)
        if a.out:
            cfg.out = a.out
        if a.device:
            cfg.device = a.device
        prog = tqdm_progress("study")
        try:
            res = run_study(cfg, prog, log=lambda m: prog.bar.write(m, file=sys.stderr))
        finally:
            prog.bar.close()
        print_summary(res.rows, res.agreement, paired=res.paired)
        print(f"\nWrote {res.out / 'results.csv'}, {res.out / 'results.jsonl'}, {res.out / 'paired.csv'} and "
              f"{res.out / 'mask_agreement.csv'}",
              file=sys.stderr)
    except PolypruneError as e:
        print(f"\npolyprune: error: {e.problem}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("\npolyprune: study stopped; finished cells are kept, run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0
