"""Running (and resuming) a study: every unfinished cell pruned, evaluated, written; the dense
weights put back between cells from the pruning records (bit-identical, never reloaded)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..calibration import build as build_calibration
from ..calibration import check as check_spec
from ..evaluation import evaluate
from ..evaluation.runner import check_data
from ..errors import PolypruneError
from ..fileio import atomic_write_text, dumps
from ..masks import model_signature, save_masks
from ..models import all_prunable, default_device, load_model
from ..progress import Progress, ensure
from ..pruning import owl, prune, restore, selected_modules
from ..steps import apply_step
from .config import Cell, StudyConfig, settings_hash, eval_config, eval_signature, plan, reference_cell
from .folder import (cell_dir, finished_rows, item_scores, mask_agreement_rows, paired_rows, record_fields,
                     write_agreement, write_cell, write_paired, write_tables)

EvaluateFn = Callable[[Any, Any, Progress], list]


def default_evaluate(loaded, ev, progress) -> list:
    """The evaluation of a cell: :func:`polyprune.evaluation.evaluate` on the model as it is."""
    return evaluate(loaded.model, loaded.tokenizer, ev, progress, model_name=loaded.spec)


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
    return {k: float(m.weight.detach().double().sum()) for k, m in all_prunable(model).items()}


def run_study(cfg: StudyConfig, progress: Progress | None = None, log: Callable[[str], None] = print,
              loaded=None, evaluate_fn: EvaluateFn | None = None, runner: Callable | None = None) -> StudyResult:
    """Run (or resume) a study; see the module docstring.

    Args:
        cfg: the study.
        progress: overall progress and cooperative cancel.
        log: receives one line per event.
        loaded: an already loaded :class:`~polyprune.models.LoadedModel` (else ``cfg.model`` is loaded).
        evaluate_fn: ``evaluate_fn(loaded, eval_config, progress) -> [records]`` where a record has
            ``task, language, metric, value, n`` (:class:`~polyprune.evaluation.Result`);
            default :func:`default_evaluate`.
        runner: what runs the unfinished cells, with :func:`run_cells`'s arguments and result
            (default :func:`run_cells`, one after another in this process; :class:`~polyprune.study.ray.RayRunner`
            runs each cell as a Ray task). It fills ``done`` as cells finish.

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
    ev = eval_config(cfg.evaluation)
    eval_sig = eval_signature(ev)
    out = Path(cfg.out).expanduser()
    if evaluate_fn is None and ev.enabled:
        check_data(ev)  # no data folder or a missing file: fail before anything is written or loaded
    for spec in {settings_hash(c.calibration): c.calibration for c in cells if c.config().needs_calibration}.values():
        check_spec(spec)
    if out.exists() and not out.is_dir():
        raise PolypruneError(f"The study folder {out} is an existing file", "choose a folder for the study's results")
    if out.is_dir() and any(out.iterdir()) and not (out / "study.json").exists():
        raise PolypruneError(f"The study folder {out} already holds files that are not a study",
                             "choose a new folder for the study (its out: setting, or --out)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.json", dumps(cfg.to_dict()))
    ref = reference_cell(cells, cfg.reference)
    done = {c.id: finished_rows(out, c.id, eval_sig) for c in cells}
    for c in cells:
        if done[c.id] is None and (cell_dir(out, c.id) / "results.json").exists():
            log(f"Cell {c.label}: its files are damaged or were evaluated with other settings; it runs again")
    dense_rows = finished_rows(out, "dense", eval_sig) if ev.enabled else []
    todo = [c for c in cells if done[c.id] is None]
    skipped = [c.id for c in cells if done[c.id] is not None]
    log(f"Study: {len(cells)} cells ({len(cfg.calibration)} calibration sources x {len(cfg.methods)} methods x "
        f"{len(cfg.sparsities)} sparsities); {len(skipped)} done, {len(todo)} to run; output in {out}")
    if not ev.enabled:
        log("No evaluation tasks given: the study saves masks and mask agreement only")
    ran: list[str] = []

    def collect_rows() -> list[dict]:
        rows = list((finished_rows(out, "dense", eval_sig) or []) if ev.enabled else [])
        for c in cells:
            if done.get(c.id):
                rows += done[c.id]
        return rows

    try:
        if todo or dense_rows is None:
            ran = (runner or run_cells)(cfg, cells, todo, ev, eval_sig, out, done, progress, log, loaded, evaluate_fn,
                                        dense_rows)
    finally:
        rows = collect_rows()
        write_tables(out, rows)
        finished = {c.id for c in cells if done.get(c.id) is not None}
        agreement_rows = mask_agreement_rows(out, cells, ref, finished)
        write_agreement(out, agreement_rows)
        paired = paired_rows(out, cells, ref, finished, iters=max(ev.bootstrap, 1), seed=cfg.seed)
        write_paired(out, paired)
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
    eval_sig = eval_signature(eval_config(cfg.evaluation))
    out = Path(cfg.out).expanduser()
    return cells, {c.id for c in cells if out.is_dir() and finished_rows(out, c.id, eval_sig) is not None}


def run_cells(cfg, cells, todo, ev, eval_sig, out, done, progress, log, loaded, evaluate_fn, dense_rows) -> list[str]:
    """Evaluate the dense model (when ``dense_rows`` is ``None`` and evaluation is on) and run the
    cells ``todo`` one after another on one model, writing each cell's folder as it finishes and
    recording its rows in ``done``; returns the ids of the cells run. The model is loaded here
    when ``loaded`` is ``None``."""
    if evaluate_fn is None:
        evaluate_fn = default_evaluate
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
        key = settings_hash(spec)
        if key not in cals:
            cals[key] = build_calibration(spec, loaded.tokenizer)
        return cals[key]

    if dense_rows is None:
        log("Evaluating the dense model")
        t = time.perf_counter()
        recs = evaluate_fn(loaded, ev, progress.sub(pos, pos + unit))
        rows = [{"cell": "dense", "calibration": "dense", "calibration_kind": "", "method": "dense", "sparsity": 0.0,
                 "pattern": "", **record_fields(r), "dense": None, "delta": None, "overall_sparsity": 0.0,
                 "prune_seconds": 0.0, "eval_seconds": time.perf_counter() - t} for r in recs]
        write_cell(out, "dense", {"model": cfg.model, "model_info": sig}, rows, eval_sig, item_scores(recs))
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
            key = settings_hash([cell.calibration, pc.owl_m, pc.skip, pc.skip_blocks, pc.batch_size])
            if key not in ratios_cache:
                ratios_cache[key] = owl.outlier_ratios(model, cal, selected_modules(model, pc), pc.owl_m, pc.batch_size,
                                                   sub.sub(0, 0.1))
            ratios = ratios_cache[key]
        t = time.perf_counter()
        res = prune(model, pc, cal, sub.sub(0.1, 0.4), contrast=contrast, outlier_ratios=ratios)
        prune_s = time.perf_counter() - t
        undo = []
        try:
            for k, (name, settings) in enumerate(cell.steps):  # changes after the pruning, e.g. Lens
                log(f"  {name}")
                undo.append(apply_step(name, loaded, settings, sub.sub(0.4 + 0.1 * k / len(cell.steps),
                                                                       0.4 + 0.1 * (k + 1) / len(cell.steps))))
            log(f"  pruned in {prune_s:.1f} s, sparsity {res.overall:.4f}; evaluating")
            t = time.perf_counter()
            recs = evaluate_fn(loaded, ev, sub.sub(0.5, 0.98)) if ev.enabled else []
            eval_s = time.perf_counter() - t
            d = cell_dir(out, cell.id)
            save_masks(res, d / "masks.safetensors", sig, extra={"cell": cell.id, "label": cell.label})
            rows = []
            for r in recs:
                f = record_fields(r)
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
                    "steps": cell.steps,
                    "prune_seconds": prune_s, "eval_seconds": eval_s}
            write_cell(out, cell.id, info, rows, eval_sig, item_scores(recs))
            done[cell.id] = rows
            ran.append(cell.id)
        finally:
            for u in reversed(undo):
                u.restore()
            restore(model, res.records)
            del res
            if _fingerprint(model) != dense_fp:  # pragma: no cover - would be a bug in restore()
                raise RuntimeError("the dense weights were not restored exactly after a study cell")
    return ran
