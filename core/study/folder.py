"""A study folder on disk: the cells' files, the tables, heatmaps, paired differences and mask
agreement (read by the CLI's ``--show`` and the Studies panel, written by :mod:`.run`)."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PolypruneError
from ..evaluation.stats import paired_difference, seed_for
from ..fileio import atomic_write_text, dumps
from ..masks import agreement, agreement_counts, block_agreement, block_of, load_masks
from .config import Cell


COLUMNS = ["cell", "calibration", "calibration_kind", "method", "sparsity", "pattern", "task", "language",
           "metric", "value", "ci_low", "ci_high", "n", "dense", "delta", "overall_sparsity", "prune_seconds", "eval_seconds"]


def record_fields(r) -> dict:
    d = r.to_dict() if hasattr(r, "to_dict") else dict(r)
    out = {k: d.get(k) for k in ("task", "language", "metric", "value", "ci_low", "ci_high", "n")}
    return out


def item_scores(records) -> dict[str, dict]:
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


def write_tables(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """Write ``results.jsonl`` and ``results.csv`` (columns :data:`COLUMNS`) atomically."""
    jl = "".join(dumps(r, indent=None) + "\n" for r in rows)
    atomic_write_text(out / "results.jsonl", jl)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    atomic_write_text(out / "results.csv", buf.getvalue())
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


def read_table(out: str | Path, name: str, floats: tuple[str, ...], ints: tuple[str, ...]) -> list[dict]:
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
    return read_table(out, "mask_agreement.csv", ("agreement", "sparsity"), ("block",))


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


def cell_dir(out: Path, cid: str) -> Path:
    return out / "cells" / cid


def finished_rows(out: Path, cid: str, eval_sig: str) -> list[dict] | None:
    """The rows of a finished cell, or ``None`` when the cell must run (again): no results yet,
    results of other evaluation settings, or a damaged cell (unreadable results, item scores or
    masks — a cell is never trusted on its results file alone)."""
    d = cell_dir(out, cid)
    p = d / "results.json"
    if not p.is_file():
        return None
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
        rows = res["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) and {"task", "language", "metric", "value"} <= set(r)
                                                 for r in rows):
            return None
        if (d / "items.json").exists():
            json.loads((d / "items.json").read_text(encoding="utf-8"))
        if cid != "dense":
            load_masks(d / "masks.safetensors", unpack=False)
    except (OSError, ValueError, KeyError, TypeError, PolypruneError):
        return None
    return rows if res.get("eval_signature") == eval_sig else None


def write_cell(out: Path, cid: str, info: dict, rows: list[dict], eval_sig: str,
                items: dict | None = None) -> None:
    d = cell_dir(out, cid)
    atomic_write_text(d / "cell.json", dumps(info))
    if items:
        atomic_write_text(d / "items.json", dumps(items, indent=None))
    atomic_write_text(d / "results.json", dumps({"eval_signature": eval_sig, "rows": rows}))


def mask_agreement_rows(out: Path, cells: list[Cell], ref: Cell, done: set[str] | None = None) -> list[dict]:
    """Agreement of every finished cell's masks with the reference cell's, per module and per block.

    ``done``: ids of the finished cells (default: every cell whose masks are on disk).
    """
    ref_path = cell_dir(out, ref.id) / "masks.safetensors"
    if not ref_path.is_file() or (done is not None and ref.id not in done):
        return []
    ref_masks = load_masks(ref_path, unpack=False)
    rows = []
    for c in cells:
        p = cell_dir(out, c.id) / "masks.safetensors"
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


def load_items(out: Path, cid: str) -> dict:
    p = cell_dir(out, cid) / "items.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def paired_rows(out: Path, cells: list[Cell], ref: Cell, done: set[str] | None = None, iters: int = 1000,
                seed: int = 0) -> list[dict]:
    """Every finished cell against the reference cell, per ``(task, language, metric)``, with paired
    bootstrap 95% intervals of the difference (:func:`paired_difference`); rows for ``paired.csv``.

    The interval is much narrower than the two cells' own intervals when the cells get mostly
    the same items right: it answers "is this calibration better than the reference on these items".
    """
    ref_items = load_items(out, ref.id)
    if not ref_items or (done is not None and ref.id not in done):
        return []
    rows = []
    for c in cells:
        if c.id == ref.id or (done is not None and c.id not in done):
            continue
        items = load_items(out, c.id)
        for key, a in items.items():
            b = ref_items.get(key)
            if b is None:
                continue
            task, lang, metric = key.split("|")
            try:
                diff, lo, hi = paired_difference(a, b, iters, seed_for(seed, key))
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
    return read_table(out, "paired.csv", ("sparsity", "value", "reference_value", "difference", "ci_low", "ci_high"),
                       ("n",))


def write_paired(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PAIRED_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(out / "paired.csv", buf.getvalue())


def write_agreement(out: Path, rows: list[dict]) -> None:
    cols = ["reference", "cell", "calibration", "method", "sparsity", "level", "block", "module", "agreement"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    atomic_write_text(out / "mask_agreement.csv", buf.getvalue())


def lower_is_better(metric: str) -> bool:
    """Perplexity-like metrics improve downwards; accuracies upwards."""
    return metric in ("perplexity", "ppl", "loss", "bits_per_byte")


def heat_scores(values: list[list[float | None]], metric: str, mode: str, per_column: bool) -> np.ndarray:
    """Colour positions in [0, 1] for a heatmap: 1 = best, 0 = worst, 0.5 = middle (NaN where missing).

    With ``per_column`` each evaluation language is scaled on its own (which calibration is best
    *for this language*); otherwise one scale for the whole table. In ``delta``/``ratio`` modes
    the neutral point (0 or 1: as good as dense) is placed at 0.5 when the range spans it.

    Args:
        values: ``[n_calibrations][n_languages]`` (``None`` where missing).
        metric: decides the direction (perplexity: lower is better).
        mode: ``value``, ``delta``, ``ratio`` or ``paired`` (a difference, like ``delta``).
        per_column: scale each column separately.

    Returns:
        ``[n_calibrations, n_languages]`` float array.
    """
    a = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    if a.size == 0:
        return a
    sign = -1.0 if lower_is_better(metric) else 1.0
    neutral = {"delta": 0.0, "ratio": 1.0, "paired": 0.0}.get(mode)
    good = sign * (a - (neutral if neutral is not None else 0.0))  # larger = better

    def scale(block: np.ndarray) -> np.ndarray:
        finite = block[np.isfinite(block)]
        if finite.size == 0:
            return np.full_like(block, np.nan)
        lo, hi = float(finite.min()), float(finite.max())
        if neutral is not None and lo < 0 < hi:  # centre "as good as dense" on the neutral colour
            m = max(-lo, hi)
            return 0.5 + 0.5 * block / m
        if hi - lo < 1e-12:
            return np.where(np.isfinite(block), 0.5, np.nan)
        return (block - lo) / (hi - lo)

    if per_column:
        return np.stack([scale(good[:, j]) for j in range(good.shape[1])], axis=1)
    return scale(good)


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
