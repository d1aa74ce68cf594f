"""The whole workflow as plain functions: ``run(recipe, progress) -> report``.

load model → build calibration data → (feature magnitudes) → (dense evaluation) → prune →
(pruned evaluation) → export + reload check → ``report.json`` and ``recipe.yaml`` beside the
outputs. The CLI and the GUI both drive these functions; nothing here imports Qt.
"""
from __future__ import annotations

import json
import platform
from dataclasses import replace
import time
from pathlib import Path

import torch

from . import __version__
from .demos import CalibrationSet, build_calibration
from .errors import PolypruneError
from .evaluation import EvalRecord, compare, flores_perplexity, xnli_accuracy
from .export import check_target, export, reload_check
from .features import FeatureResult, feature_magnitudes, overlap, top_k
from .models import LoadedModel, load_model
from .progress import Progress, ensure
from .pruning import PruneResult, measured_sparsity, prune
from .recipe import EvalConfig, Recipe, default_data_dir, save_recipe


def versions() -> dict:
    import transformers
    return {"polyprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def calibration_for(recipe: Recipe, loaded: LoadedModel) -> CalibrationSet:
    """The recipe's calibration set (a calibration spec, demonstrations or raw text) for this model's tokenizer."""
    if recipe.calibration:
        from .calibration import build
        return build(recipe.calibration, loaded.tokenizer, {"samples": recipe.demos.samples, "seq_len": recipe.demos.seq_len})
    return build_calibration(recipe.demos, loaded.tokenizer, recipe.calibration_text)


def _data_dir(cfg: EvalConfig) -> Path:
    d = Path(cfg.data).expanduser() if cfg.data else default_data_dir()
    if d is None or not d.is_dir():
        raise PolypruneError("No evaluation data folder found" + (f" at {d}" if d else ""),
                             "set evaluation.data (--data DIR) to a folder with flores200/ and xnli/, or set POLYPRUNE_DATA")
    return d


def evaluate(loaded: LoadedModel, cfg: EvalConfig, progress: Progress | None = None) -> list[EvalRecord]:
    """FLORES perplexity and XNLI accuracy for the languages in ``cfg`` on the model as it is."""
    progress = ensure(progress)
    data = _data_dir(cfg)
    records: list[EvalRecord] = []
    n_ppl, n_x = len(cfg.ppl), len(cfg.xnli)
    split = n_ppl / max(n_ppl + n_x, 1)
    if cfg.ppl:
        flores = data / "flores200" if (data / "flores200").is_dir() else data
        records += flores_perplexity(loaded.model, loaded.tokenizer, flores, cfg.ppl, split=cfg.split,
                                     limit=cfg.ppl_limit, batch_size=cfg.batch_size, progress=progress.sub(0, split),
                                     bootstrap=cfg.bootstrap, item_scores=cfg.item_scores)
    if cfg.xnli:
        xdir = data / "xnli" if (data / "xnli").is_dir() else data
        records += xnli_accuracy(loaded.model, loaded.tokenizer, xdir, cfg.xnli, limit=cfg.limit,
                                 batch_size=cfg.batch_size, progress=progress.sub(split, 1 if not cfg.tasks else 0.5))
    if cfg.tasks:
        from .results import to_eval_record
        from .tasks import evaluate_tasks
        res = evaluate_tasks(loaded.model, loaded.tokenizer, cfg.tasks, cfg.languages or None, data,
                             split=cfg.task_split, limit=cfg.limit, batch_size=cfg.batch_size, metrics=cfg.metrics,
                             bootstrap=cfg.bootstrap, progress=progress.sub(0.5 if (cfg.ppl or cfg.xnli) else 0, 1),
                             on_error="raise", model_name=loaded.spec, translation=cfg.translation,
                             item_scores=cfg.item_scores)
        records += [to_eval_record(r) for r in res]
    return records


def inspect_features(loaded: LoadedModel, recipe: Recipe, progress: Progress | None = None) -> dict:
    """Feature magnitudes of the recipe's calibration set (and optionally monolingual prompts).

    Returns ``{"result": FeatureResult, "mono": FeatureResult | None, "overlap": [n_layers+1] | None}``.
    """
    progress = ensure(progress)
    cal = calibration_for(recipe, loaded)
    bs = recipe.pruning.batch_size
    res = feature_magnitudes(loaded.model, cal, batch_size=bs, progress=progress.sub(0, 0.5))
    mono = ov = None
    if recipe.features.compare_monolingual and not recipe.calibration_text:
        mcfg = replace(recipe.demos, monolingual=True)
        mcal = build_calibration(mcfg, loaded.tokenizer)
        mono = feature_magnitudes(loaded.model, mcal, batch_size=bs, progress=progress.sub(0.5, 1))
        ov = overlap(res.magnitudes, mono.magnitudes, ratio=recipe.features.ratio)
    return {"result": res, "mono": mono, "overlap": ov, "calibration": cal}


def features_summary(res: FeatureResult, k: int) -> list[dict]:
    """Per layer, the top-k dimensions and their magnitudes (for reports)."""
    idx = top_k(res.magnitudes, k)
    return [{"layer": layer, "dims": idx[layer].tolist(),
             "values": [round(float(res.magnitudes[layer, j]), 4) for j in idx[layer]]}
            for layer in range(res.n_layers)]


def run(recipe: Recipe, progress: Progress | None = None, loaded: LoadedModel | None = None,
        log=print) -> dict:
    """Execute a recipe end to end and return its report (also written as ``report.json``).

    Raises:
        PolypruneError: any bad input, detected before heavy work where possible (an existing
            export folder, for instance, is refused before the model is loaded).
        Cancelled: through ``progress``; the model is left dense.
    """
    progress = ensure(progress)
    t_start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    recipe.pruning.validate()
    out = Path(recipe.out).expanduser() if recipe.out else None
    if out is not None and recipe.export:
        check_target(out, None, recipe.overwrite)
    timings = {}
    report: dict = {"recipe": recipe.to_dict(), "seed": recipe.seed, "versions": versions()}

    t = time.perf_counter()
    if loaded is None:
        loaded = load_model(recipe.model, recipe.device, recipe.dtype, recipe.trust_remote_code, progress.sub(0, 0.1))
    if out is not None and recipe.export and loaded.path is not None:
        check_target(out, loaded.path, recipe.overwrite)
    timings["load_s"] = time.perf_counter() - t
    report["model"] = loaded.info() | {"name": loaded.meta.get("name", recipe.model)}
    log(f"Model: {report['model']['architecture']}, {report['model']['n_blocks']} blocks, "
        f"hidden {report['model']['hidden_size']}, {report['model']['parameters'] / 1e6:.1f}M parameters")

    cal = None
    if recipe.pruning.needs_calibration or recipe.features.enabled:
        cal = calibration_for(recipe, loaded)
        report["calibration"] = {k: v for k, v in cal.meta.items() if k != "pair_indices"} | {
            "pair_indices": cal.meta.get("pair_indices"), "first_sample": cal.texts[0][:500]}
        log(f"Calibration: {len(cal)} samples, {cal.n_tokens} tokens (length {recipe.demos.seq_len}, "
            f"{cal.truncated} truncated)")

    if recipe.features.enabled and cal is not None:
        t = time.perf_counter()
        feats = inspect_features(loaded, recipe, progress.sub(0.1, 0.2))
        report["features"] = {"top": features_summary(feats["result"], recipe.features.top_k),
                              "overlap_monolingual": None if feats["overlap"] is None else feats["overlap"].tolist()}
        if out is not None:
            feats["result"].save(out.parent / f"{out.name}-features" / "features")
        timings["features_s"] = time.perf_counter() - t

    ev = recipe.evaluation
    if ev.enabled and ev.optional and not ev.data and default_data_dir() is None:
        log("No evaluation data found (set POLYPRUNE_DATA to a folder with flores200/ and xnli/); skipping evaluation")
        ev = replace(ev, ppl=[], xnli=[])
    dense_records: list[EvalRecord] = []
    if ev.enabled and ev.dense:
        t = time.perf_counter()
        log("Evaluating the dense model")
        dense_records = evaluate(loaded, ev, progress.sub(0.2, 0.45))
        timings["eval_dense_s"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"Pruning: {recipe.pruning.method}, {recipe.pruning.pattern}, sparsity {recipe.pruning.sparsity}")
    contrast = None
    if recipe.pruning.method == "wanda_refined":
        if not recipe.contrast:
            raise PolypruneError("The refined metric needs a contrast set",
                                 "set contrast: {kind: text, file: code.txt} in the recipe, or --contrast-text FILE")
        from .calibration import build
        contrast = build(recipe.contrast, loaded.tokenizer, {"samples": recipe.demos.samples, "seq_len": recipe.demos.seq_len})
    result: PruneResult = prune(loaded.model, recipe.pruning, cal, progress.sub(0.45, 0.6), contrast=contrast)
    timings["prune_s"] = time.perf_counter() - t
    report["pruning"] = result.summary()
    log(f"Pruned in {result.seconds:.1f} s; sparsity over pruned layers {result.overall:.4f}")

    pruned_records: list[EvalRecord] = []
    if ev.enabled:
        t = time.perf_counter()
        log("Evaluating the pruned model")
        pruned_records = evaluate(loaded, ev, progress.sub(0.6, 0.9))
        timings["eval_pruned_s"] = time.perf_counter() - t
    report["evaluation"] = compare(dense_records, pruned_records) if dense_records else \
        [r.to_dict() | {"pruned": r.value} for r in pruned_records]
    report["evaluation_records"] = {"dense": [r.to_dict() for r in dense_records],
                                    "pruned": [r.to_dict() for r in pruned_records]}

    if out is not None:
        if recipe.export:
            t = time.perf_counter()
            report["masks"] = str((out / "masks.safetensors").resolve())
            report["timings"] = timings
            export(loaded.model, loaded.tokenizer, out, report, source=loaded.path, overwrite=recipe.overwrite,
                   progress=progress.sub(0.9, 0.97))
            timings["export_s"] = time.perf_counter() - t
            report["export"] = {"path": str(out.resolve())}
            if recipe.reload_check:
                diff = reload_check(loaded.model, out, loaded.tokenizer)
                report["export"]["reload_max_abs_logit_diff"] = diff
                log(f"Export reloads; largest logit difference {diff:.3g}")
        else:
            out.mkdir(parents=True, exist_ok=True)
        timings["total_s"] = time.perf_counter() - t_start
        report["timings"] = timings
        write_outputs(out, recipe, report)
        save_masks(result, out / "masks.safetensors", loaded.model)
    report["timings"] = timings | {"total_s": time.perf_counter() - t_start}
    progress.update(1, 1, "Done")
    report["_result"] = result
    return report


def write_outputs(folder: Path, recipe: Recipe, report: dict) -> None:
    """Write ``recipe.yaml`` (resolved) and ``report.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, folder / "recipe.yaml")
    clean = {k: v for k, v in report.items() if not k.startswith("_")}
    (folder / "report.json").write_text(json.dumps(clean, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


def save_masks(result: PruneResult, path: Path, model=None) -> Path:
    """Save the mask set (packed bits with the model's signature, see :mod:`polyprune.masks`)."""
    from .masks import save_masks as _save

    return _save(result, path, model)
