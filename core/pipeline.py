"""The workflow as stage functions, and ``run(recipe, progress) -> report``.

Each *stage* is one call that the command line and the window both make, so neither composes core
steps itself:

* :func:`build_calibration` — the recipe's calibration set for a model's tokenizer;
* :func:`measure_features` — feature magnitudes of a calibration setting (and of a second one, with
  their overlap);
* :func:`prune_model` — calibration (and contrast) set built, model pruned in place;
* :func:`evaluate` — the model as it is; :func:`evaluate_variant` — a pruned model and, through an
  exact dense view, the dense model (SparseGPT's updated weights given back bit for bit);
* :func:`export_model` — the whole export folder, checked, moved into place last.

:func:`run` chains them for a recipe: load → calibration → (features) → (dense evaluation) →
prune → (pruned evaluation) → export, writing ``report.json`` and ``recipe.yaml`` beside the
outputs. Nothing here imports Qt.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import psutil
import torch
import transformers

from . import __version__
from .calibration import CalibrationSet, build, check as check_spec, normalize_spec
from .datasets import data_dir, default_data_dir
from .errors import PolypruneError
from .evaluation import Result, compare, evaluate as evaluate_config, evaluate_tasks, save_results
from .evaluation.runner import check_data, check_tasks
from .export import ExportResult, export, write_report_folder
from .features import FeatureResult, feature_magnitudes, overlap, top_k
from .fileio import check_output, output_folder, write_json
from .masks import apply_masks, load_masks
from .models import LoadedModel, check_sequence_length, find_blocks, load_model
from .progress import Progress, ensure
from .pruning import PruneResult, dense_view, prune
from .pruning.sequential import capture_bytes
from .recipe import EvalConfig, FeatureConfig, Recipe, check_metrics, demos_spec
from .steps import StepChanges, check_step_settings, run_step, slim_step


def versions() -> dict:
    """Versions of Polyprune, torch, transformers and Python (for reports)."""
    return {"polyprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
def build_calibration(loaded: LoadedModel, spec: dict, progress: Progress | None = None) -> CalibrationSet:
    """The calibration set of a spec (:func:`polyprune.calibration.build`) for the model's tokenizer.

    Raises:
        PolypruneError: a bad spec, missing data, or a calibration length longer than the model's
            context.
    """
    progress = ensure(progress)
    progress.update(0, 1, "Building the calibration set")
    check_sequence_length(loaded.model.config, int(normalize_spec(spec)["seq_len"]))
    cal = build(spec, loaded.tokenizer)
    progress.update(1, 1, f"Calibration set: {len(cal)} samples, {cal.n_tokens} tokens")
    return cal


@dataclass
class FeatureRun:
    """Feature magnitudes of one setting (``result`` on ``calibration``) and optionally of a second
    one (``other`` on ``other_calibration``) with the per-layer ``overlap`` of their top features."""

    result: FeatureResult
    calibration: CalibrationSet
    other: FeatureResult | None = None
    other_calibration: CalibrationSet | None = None
    overlap: object = None
    ratio: float = 0.4


def measure_features(loaded: LoadedModel, spec: dict, cfg: FeatureConfig, other_spec: dict | None = None,
                     batch_size: int = 8, progress: Progress | None = None,
                     calibration: CalibrationSet | None = None) -> FeatureRun:
    """Measure feature magnitudes (Kim et al. 2024, §4) of the calibration ``spec`` and, when
    ``other_spec`` is given, of a second setting and the overlap of their top ``cfg.ratio`` share.

    Raises:
        PolypruneError: a bad spec or setting.
        Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    share = 0.5 if other_spec is not None else 1.0
    cal = calibration if calibration is not None else build_calibration(loaded, spec, progress.sub(0, 0.05))
    res = feature_magnitudes(loaded.model, cal, batch_size=batch_size, progress=progress.sub(0.05, share),
                             exclude_special=cfg.exclude_special, tokenizer=loaded.tokenizer)
    run = FeatureRun(res, cal, ratio=cfg.ratio)
    if other_spec is not None:
        run.other_calibration = build_calibration(loaded, other_spec, progress.sub(share, share + 0.02))
        run.other = feature_magnitudes(loaded.model, run.other_calibration, batch_size=batch_size,
                                       progress=progress.sub(share + 0.02, 1.0), exclude_special=cfg.exclude_special,
                                       tokenizer=loaded.tokenizer)
        run.overlap = overlap(res.magnitudes, run.other.magnitudes, ratio=cfg.ratio)
    return run


def prune_model(loaded: LoadedModel, recipe: Recipe, progress: Progress | None = None,
                calibration: CalibrationSet | None = None, keep_dense: bool = True) -> tuple[PruneResult, CalibrationSet | None]:
    """Prune the loaded model in place as the recipe says (calibration and contrast sets built first).

    Returns:
        ``(result, calibration set)`` (the set is ``None`` for methods without calibration).

    Raises:
        PolypruneError: invalid settings or data (before any weight changes).
        Cancelled: through ``progress``; the model is then exactly as before.
    """
    progress = ensure(progress)
    cfg = recipe.pruning
    cfg.validate()
    cal = calibration
    if cal is None and cfg.needs_calibration and cfg.sparsity > 0:
        cal = build_calibration(loaded, recipe.calibration_spec(), progress.sub(0, 0.03))
    contrast = None
    if cfg.method == "wanda_refined":
        spec = recipe.contrast_spec()
        if spec is None:
            raise PolypruneError("The refined metric (wanda_refined) needs a contrast set",
                                 "set the contrast text (--contrast-text FILE, or contrast: {kind: text, file: ...} "
                                 "in the recipe), or use the wanda method")
        contrast = build_calibration(loaded, spec, progress.sub(0.03, 0.05))
    check_memory(loaded, cfg, [c for c in (cal, contrast) if c is not None])
    result = prune(loaded.model, cfg, cal, progress.sub(0.05, 1.0), contrast=contrast, keep_dense=keep_dense)
    return result, cal


def check_memory(loaded: LoadedModel, cfg, sets: list[CalibrationSet]) -> None:
    """Refuse a pruning whose cached block inputs would not fit in the memory available now.

    Raises:
        PolypruneError: naming what the cache needs and what is free, and the settings to lower.
    """
    if not sets or loaded.device != "cpu":
        return
    hidden = int(loaded.model.get_input_embeddings().weight.shape[1])
    dtype_bytes = next(loaded.model.parameters()).element_size()
    need = sum(capture_bytes(len(c), int(c.input_ids.shape[1]), hidden, dtype_bytes, cfg.batch_size) for c in sets)
    free = psutil.virtual_memory().available
    if need > 0.9 * free:
        raise PolypruneError(f"Pruning would cache about {need / 2 ** 30:.1f} GiB of block inputs, but only "
                             f"{free / 2 ** 30:.1f} GiB of memory is free",
                             "use fewer calibration samples (--samples), a shorter calibration length (--seq-len) "
                             "or a smaller batch size (--batch-size)")


def evaluate(loaded: LoadedModel, cfg: EvalConfig, progress: Progress | None = None) -> list[Result]:
    """Evaluate the model as it is now (:func:`polyprune.evaluation.evaluate`)."""
    return evaluate_config(loaded.model, loaded.tokenizer, cfg, progress, model_name=loaded.spec)


@dataclass
class Comparison:
    """Dense and pruned results on the same settings, and their side-by-side rows."""

    dense: list[Result] = field(default_factory=list)
    pruned: list[Result] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """:func:`polyprune.evaluation.compare` rows (dense, pruned, change, intervals)."""
        return compare(self.dense, self.pruned)


def evaluate_variant(loaded: LoadedModel, cfg: EvalConfig, result: PruneResult | None, want_dense: bool = True,
                     dense: list[Result] | None = None, progress: Progress | None = None) -> Comparison:
    """Evaluate a pruned model and (unless ``dense`` results are given or ``want_dense`` is off) the
    dense model through :func:`polyprune.pruning.dense_view`, which gives back the very pruned
    weights afterwards. Without a ``result`` the model is dense and evaluated once.

    Raises:
        PolypruneError: bad settings or data. Cancelled: through ``progress`` (the model keeps
            its pruned weights).
    """
    progress = ensure(progress)
    if result is None:
        return Comparison(dense=evaluate(loaded, cfg, progress))
    out = Comparison(dense=list(dense or []))
    if want_dense and not out.dense:
        with dense_view(loaded.model, result.records):
            out.dense = evaluate(loaded, cfg, progress.sub(0, 0.5))
        progress = progress.sub(0.5, 1.0)
    out.pruned = evaluate(loaded, cfg, progress)
    return out


def export_model(loaded: LoadedModel, report: dict, out: str | Path, *, recipe: Recipe | None = None,
                 result: PruneResult | None = None, overwrite: bool = False, check: bool = True,
                 progress: Progress | None = None, log: Callable[[str], None] | None = None,
                 replace_hint: str = "pass --overwrite", extra_files: dict | None = None,
                 card_extra: str = "", write_more: Callable[[Path], object] | None = None) -> ExportResult:
    """Export the model as it is (with its masks and recipe) to ``out``; see :func:`polyprune.export.export`."""
    return export(loaded.model, loaded.tokenizer, out, report, source=loaded.path, overwrite=overwrite,
                  progress=progress, recipe=recipe, masks=result, mask_model_info=loaded.model, check=check, log=log,
                  replace_hint=replace_hint, extra_files=extra_files, card_extra=card_extra, write_more=write_more)


def calibration_report(cal: CalibrationSet) -> dict:
    """What a report records of a calibration set: how it was built, never its text (raw text may
    be private; a text file is recorded by name, size and hash)."""
    return {k: v for k, v in cal.meta.items() if k != "spec"} | {"spec": cal.meta.get("spec")}


def features_summary(res: FeatureResult, k: int) -> list[dict]:
    """Per layer, the top-k dimensions and their magnitudes (for reports)."""
    idx = top_k(res.magnitudes, k)
    return [{"layer": layer, "dims": idx[layer].tolist(),
             "values": [round(float(res.magnitudes[layer, j]), 4) for j in idx[layer]]}
            for layer in range(res.n_layers)]


def monolingual_spec(recipe: Recipe) -> dict | None:
    """The monolingual counterpart of the recipe's demonstrations (for the features overlap), or
    ``None`` when the recipe calibrates on other data."""
    if recipe.calibration or recipe.calibration_text:
        return None
    return demos_spec(replace(recipe.demos, monolingual=not recipe.demos.monolingual))


# --------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------
def check_recipe(recipe: Recipe) -> Path | None:
    """Validate what can be validated before the model is loaded; return the output folder.

    Raises:
        PolypruneError: bad settings, an output folder that may not be written, no data.
    """
    recipe.check_steps()
    check_step_settings(recipe)
    recipe.pruning.validate()
    recipe.evaluation.validate()
    if not (recipe.calibration or recipe.calibration_text):
        recipe.demos.validate()
    out = Path(recipe.out).expanduser() if recipe.out else None
    if out is not None:
        check_output(out, sources=[recipe.model] if Path(recipe.model).expanduser().exists() else [],
                     overwrite=recipe.overwrite, what="output folder")
    if "prune" in recipe.steps and recipe.pruning.method == "wanda_refined" and not recipe.contrast:
        raise PolypruneError("The refined metric (wanda_refined) needs a contrast set",
                             "set the contrast text (--contrast-text FILE, or contrast: {kind: text, file: ...} in the "
                             "recipe), or use the wanda method")
    pruning = "prune" in recipe.steps
    if (pruning and recipe.pruning.needs_calibration) or recipe.features.enabled:
        check_spec(recipe.calibration_spec())
    if pruning and recipe.pruning.method == "wanda_refined":
        check_spec(recipe.contrast_spec())
    ev = recipe.evaluation
    if ev.enabled and not (ev.optional and not ev.data and default_data_dir() is None):
        check_data(ev)
    return out


def run(recipe: Recipe, progress: Progress | None = None, loaded: LoadedModel | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Execute a recipe end to end and return its report (also written as ``report.json``).

    Raises:
        PolypruneError: any bad input, detected before heavy work where possible (settings, data
            folder and output folder are checked before the model is loaded).
        Cancelled: through ``progress``; the model is left dense and nothing is written.
    """
    progress = ensure(progress)
    if recipe.max_memory is not None and loaded is None:  # block streaming (issue 15): never load it whole
        from .pruning.streaming import run_streamed
        return run_streamed(recipe, progress, log)
    t_start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    out = check_recipe(recipe)
    if out is not None:
        log(f"Output folder: {out.resolve()}")
    timings: dict = {}
    report: dict = {"recipe": recipe.to_dict(), "seed": recipe.seed, "versions": versions()}

    t = time.perf_counter()
    own_model = loaded is None  # a model loaded here is never needed dense again (issue 15: no removed values kept)
    if loaded is None:
        loaded = load_model(recipe.model, recipe.device, recipe.dtype, recipe.trust_remote_code, progress.sub(0, 0.1))
    if out is not None:
        check_output(out, sources=[loaded.path], overwrite=recipe.overwrite, what="output folder")
    recipe.pruning.validate(len(find_blocks(loaded.model)[1]))
    timings["load_s"] = time.perf_counter() - t
    report["model"] = loaded.info() | loaded.meta
    log(f"Model: {report['model']['architecture']}, {report['model']['n_blocks']} blocks, "
        f"hidden {report['model']['hidden_size']}, {report['model']['parameters'] / 1e6:.1f}M parameters")

    cal = None
    if ("prune" in recipe.steps and recipe.pruning.needs_calibration) or recipe.features.enabled:
        cal = build_calibration(loaded, recipe.calibration_spec(), progress.sub(0.1, 0.12))
        report["calibration"] = calibration_report(cal)
        log(f"Calibration: {len(cal)} samples, {cal.n_tokens} tokens (length {cal.meta.get('seq_len')}, "
            f"{cal.truncated} truncated)")

    if recipe.features.enabled and cal is not None:
        t = time.perf_counter()
        mono = monolingual_spec(recipe) if recipe.features.compare_monolingual else None
        feats = measure_features(loaded, recipe.calibration_spec(), recipe.features, mono,
                                 recipe.pruning.batch_size, progress.sub(0.12, 0.2), calibration=cal)
        report["features"] = {"top": features_summary(feats.result, recipe.features.top_k),
                              "overlap_monolingual": None if feats.overlap is None else feats.overlap.tolist()}
        report["_features"] = feats
        timings["features_s"] = time.perf_counter() - t

    ev = recipe.evaluation
    if ev.enabled and ev.optional and not ev.data and default_data_dir() is None:
        log("No evaluation data found (set POLYPRUNE_DATA to a folder with flores200/ and xnli/); skipping evaluation")
        ev = replace(ev, ppl=[], xnli=[], tasks=[])
    comparison = Comparison()
    if ev.enabled and ev.dense:
        t = time.perf_counter()
        log("Evaluating the dense model")
        comparison.dense = evaluate(loaded, ev, progress.sub(0.2, 0.45))
        timings["eval_dense_s"] = time.perf_counter() - t

    result, changes = None, StepChanges()
    span = (0.45, 0.6)
    for k, step in enumerate(recipe.steps):
        sub = progress.sub(span[0] + (span[1] - span[0]) * k / len(recipe.steps),
                           span[0] + (span[1] - span[0]) * (k + 1) / len(recipe.steps))
        t = time.perf_counter()
        if step == "prune":
            log(f"Pruning: {recipe.pruning.method}, {recipe.pruning.pattern}, sparsity {recipe.pruning.sparsity}")
            result, _ = prune_model(loaded, recipe, sub, calibration=cal, keep_dense=not own_model)
            report["pruning"] = result.summary()
            log(f"Pruned in {result.seconds:.1f} s; sparsity over pruned layers {result.overall:.4f}")
        elif step == "slim":  # the last step: it writes its own, smaller checkpoint
            report = slim_step(loaded, recipe, report, progress.sub(span[0], 1.0), log)
            report["timings"] = timings | changes.timings | {"total_s": time.perf_counter() - t_start}
            progress.update(1, 1, "Done")
            return report
        else:
            run_step(step, loaded, recipe, changes, report, sub, log)
        timings[f"{step}_s"] = time.perf_counter() - t

    if "prune" not in recipe.steps:
        report.setdefault("summary", f"Changed with Polyprune's steps: {', '.join(recipe.steps)}.")
    if ev.enabled:
        t = time.perf_counter()
        log("Evaluating the " + ("pruned" if recipe.steps == ["prune"] else "changed") + " model")
        comparison.pruned = evaluate(loaded, ev, progress.sub(0.6, 0.9))
        timings["eval_pruned_s"] = time.perf_counter() - t
    report["evaluation"] = comparison.rows()
    report["evaluation_records"] = {"dense": [r.to_dict() for r in comparison.dense],
                                    "pruned": [r.to_dict() for r in comparison.pruned]}
    report["timings"] = timings
    if out is not None:
        t = time.perf_counter()
        feats = report.get("_features")
        more = (lambda tmp: feats.result.save(tmp / "features" / "features")) if feats is not None else None
        if recipe.export:
            res = export_model(loaded, report, out, recipe=recipe, result=result, overwrite=recipe.overwrite,
                               check=recipe.reload_check, progress=progress.sub(0.9, 0.99), log=log, write_more=more,
                               extra_files=changes.files, card_extra="\n".join(changes.card))
            if res.reload_diff is not None:
                log(f"Export reloads; largest logit difference {res.reload_diff:.3g}")
        else:
            write_report_folder(out, report, recipe=recipe, masks=result, mask_model_info=loaded.model,
                                source=loaded.path, overwrite=recipe.overwrite, log=log, write_more=more)
        timings["export_s"] = time.perf_counter() - t
    report["timings"] = timings | {"total_s": time.perf_counter() - t_start}
    progress.update(1, 1, "Done")
    report["_result"] = result
    return report


# --------------------------------------------------------------------------------------------
# the commands that are one stage each
# --------------------------------------------------------------------------------------------
def inspect(recipe: Recipe, out: str | Path, other_spec: dict | None = None, other_name: str = "monolingual",
            batch_size: int = 8, overwrite: bool = False, progress: Progress | None = None) -> dict:
    """``polyprune inspect``: load the model, measure feature magnitudes of the recipe's calibration
    set (and of ``other_spec``, with the overlap) and write them with a report to ``out``.

    Raises:
        PolypruneError: bad settings or data, an output folder that may not be written.
    """
    progress = ensure(progress)
    recipe.demos.validate()
    check_output(out, overwrite=overwrite, what="output folder")
    check_spec(recipe.calibration_spec())
    if other_spec is not None:
        check_spec(other_spec)
    loaded = load_model(recipe.model, recipe.device, recipe.dtype, recipe.trust_remote_code, progress.sub(0, 0.3))
    check_output(out, sources=[loaded.path], overwrite=overwrite, what="output folder")
    run = measure_features(loaded, recipe.calibration_spec(), recipe.features, other_spec, batch_size,
                           progress.sub(0.3, 1.0))
    report = {"recipe": recipe.to_dict(), "model": loaded.info() | loaded.meta, "versions": versions(),
              "calibration": calibration_report(run.calibration),
              "top": features_summary(run.result, recipe.features.top_k)}
    if run.overlap is not None:
        report[f"overlap_{other_name}"] = run.overlap.tolist()
    with output_folder(out, kind="features", sources=[loaded.path], overwrite=overwrite) as tmp:
        report["files"] = [f.name for f in run.result.save(tmp / "features")]
        if run.other is not None:
            run.other.save(tmp / f"features_{other_name}")
        write_json(tmp / "report.json", report)
    return report


def export_masks(spec: str, masks_path: str | None, out: str | Path, device: str, dtype: str,
                 trust_remote_code: bool = False, overwrite: bool = False,
                 progress: Progress | None = None) -> ExportResult:
    """``polyprune export``: load a model, apply a saved mask set (checked against the model before
    any weight changes) and export it.

    Raises:
        PolypruneError: a bad model, mask file or output folder.
    """
    progress = ensure(progress)
    check_output(out, sources=[spec] if Path(spec).expanduser().exists() else [], overwrite=overwrite,
                 what="export folder")
    masks = load_masks(masks_path) if masks_path else None
    loaded = load_model(spec, device, dtype, trust_remote_code, progress.sub(0, 0.4))
    report = {"model": loaded.info() | loaded.meta, "versions": versions(),
              "pruning": {"config": {"method": f"masks from {Path(masks_path).name}" if masks_path else "none"}}}
    records = None
    if masks is not None:
        records = apply_masks(loaded.model, masks)
        report["pruning"]["overall_sparsity"] = masks.sparsity()
    return export(loaded.model, loaded.tokenizer, out, report, source=loaded.path, overwrite=overwrite,
                  progress=progress.sub(0.4, 1.0), masks=records, mask_model_info=loaded.model)


def evaluate_command(model: str, tasks: list[str], languages, data: str | None, *, device: str = "cpu",
                     dtype: str = "float32", trust_remote_code: bool = False, split: str | None = None,
                     limit: int | None = None, ppl_limit: int | None = None, batch_size: int = 16,
                     metrics: list[str] | None = None, bootstrap: int = 1000, seed: int = 0,
                     translation: dict | None = None, out: str | None = None, overwrite: bool = False,
                     settings: dict | None = None, progress: Progress | None = None) -> list[Result]:
    """``polyprune evaluate``: check tasks, languages, data files and the results file, load the
    model, evaluate (a failing ``(task, language)`` becomes an error row, the others go on) and save.

    Raises:
        PolypruneError: nothing to evaluate, an unknown task, language or metric, a missing file,
            a results file that may not be written — all before the model is loaded.
    """
    progress = ensure(progress)
    if not tasks:
        raise PolypruneError("Nothing to evaluate",
                             "give --tasks (xnli,pawsx,xcopa,xstorycloze,xwinograd,flores_ppl,flores_mt) and --languages")
    folder = data_dir(data)
    metrics = check_metrics(metrics or EvalConfig().metrics)
    check_tasks(tasks, languages, folder, split)
    if out:
        check_output(out, sources=[model] if Path(model).expanduser().exists() else [], kind="file",
                     overwrite=overwrite, what="results file")
    loaded = load_model(model, device, dtype, trust_remote_code, progress.sub(0, 0.1))
    if out:
        check_output(out, sources=[loaded.path], kind="file", overwrite=overwrite, what="results file")
    results = evaluate_tasks(loaded.model, loaded.tokenizer, tasks, languages, folder, split=split, limit=limit,
                             ppl_limit=ppl_limit, batch_size=batch_size, metrics=metrics, bootstrap=bootstrap,
                             seed=seed, progress=progress.sub(0.1, 1), on_error="record", model_name=model,
                             translation=translation)
    if out:
        save_results(results, out, settings)
    return results
