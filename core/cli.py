"""The ``polyprune`` command line (Qt-free except ``polyprune gui``, which imports the GUI lazily).

Commands: ``inspect`` (feature magnitudes), ``prune``, ``evaluate``, ``export``, ``run RECIPE``,
``demo`` and ``gui``. Progress bars go to stderr; bad input prints one plain message and exits 2;
Ctrl-C cancels cooperatively (the model is restored) and exits 130.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path

from .errors import Cancelled, PolypruneError
from .progress import tqdm_progress as _progress


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _langs(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="demo", help="'demo', a local Hugging Face folder, a .gguf file or a hub id")
    g.add_argument("--device", default=None, help="cpu, cuda[:N] or mps (default: cuda if available)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--trust-remote-code", action="store_true", help="run model code shipped with the checkpoint")


def add_demo_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration data (translation demonstrations)")
    g.add_argument("--demos", default="builtin", help="builtin, flores:DIR, hub[:DATASET] or file:PATH")
    g.add_argument("--src", default="eng_Latn", help="source language (FLORES code, name or 2-letter code)")
    g.add_argument("--tgt", default="fra_Latn", help="target language")
    g.add_argument("--direction", default="forward", choices=["forward", "reverse", "both"])
    g.add_argument("--shots", type=int, default=4, help="sentence pairs per sample")
    g.add_argument("--samples", type=int, default=32, help="number of calibration samples")
    g.add_argument("--seq-len", type=int, default=256, help="calibration length in tokens")
    g.add_argument("--template", default=None, help="per-pair template with {src_name} {src} {tgt_name} {tgt} {eos}")
    g.add_argument("--monolingual", action="store_true", help="source side only")
    g.add_argument("--split", default="dev", help="FLORES split for demonstrations")
    g.add_argument("--shuffle", action="store_true", help="draw pairs in a seeded random order")
    g.add_argument("--src-column", default=None)
    g.add_argument("--tgt-column", default=None)
    g.add_argument("--calibration-text", default=None, metavar="FILE",
                   help="use the first --samples non-empty lines of FILE verbatim instead of demonstrations")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-ppl", default=None, metavar="LANGS", help="FLORES devtest perplexity, e.g. eng_Latn,fra_Latn")
    g.add_argument("--eval-xnli", default=None, metavar="LANGS", help="zero-shot XNLI, e.g. en,fr,sw")
    g.add_argument("--limit", type=int, default=None, help="first N examples per language (zero-shot tasks)")
    g.add_argument("--ppl-limit", type=int, default=None, help="first N FLORES sentences per language (default: all)")
    g.add_argument("--data", default=None, help="folder with flores200/ and xnli/ (default: $POLYPRUNE_DATA or ../shared/data)")
    g.add_argument("--eval-batch-size", type=int, default=16)
    g.add_argument("--no-dense-eval", action="store_true", help="skip evaluating the dense model first")


def _recipe_from_args(a) -> "Recipe":
    from .demos import DEFAULT_TEMPLATE, DemoConfig
    from .models import default_device
    from .pruning import PruneConfig
    from .recipe import EvalConfig, FeatureConfig, Recipe

    demos = DemoConfig(source=a.demos, src=a.src, tgt=a.tgt, direction=a.direction, shots=a.shots,
                       samples=a.samples, seq_len=a.seq_len, template=a.template or DEFAULT_TEMPLATE,
                       monolingual=a.monolingual, split=a.split, shuffle=a.shuffle,
                       seed=getattr(a, "seed", 0), src_column=a.src_column, tgt_column=a.tgt_column)
    pruning = PruneConfig(method=getattr(a, "method", "wanda"), sparsity=getattr(a, "sparsity", 0.5),
                          pattern=getattr(a, "pattern", "unstructured"), group=getattr(a, "group", "row"),
                          skip=_langs(getattr(a, "skip", None)),
                          skip_blocks=[int(x) for x in _langs(getattr(a, "skip_blocks", None))],
                          batch_size=getattr(a, "batch_size", 8), damping=getattr(a, "damping", 0.01),
                          blocksize=getattr(a, "blocksize", 128), layerwise=getattr(a, "layerwise", "uniform"),
                          owl_m=getattr(a, "owl_m", 5.0), owl_lambda=getattr(a, "owl_lambda", 0.08))
    ev = EvalConfig(ppl=_langs(getattr(a, "eval_ppl", None)), xnli=_langs(getattr(a, "eval_xnli", None)),
                    limit=getattr(a, "limit", None), ppl_limit=getattr(a, "ppl_limit", None),
                    data=getattr(a, "data", None),
                    batch_size=getattr(a, "eval_batch_size", 16), dense=not getattr(a, "no_dense_eval", False))
    return Recipe(model=a.model, device=a.device or default_device(), dtype=a.dtype,
                  trust_remote_code=a.trust_remote_code, seed=getattr(a, "seed", 0), demos=demos,
                  calibration_text=a.calibration_text, pruning=pruning,
                  features=FeatureConfig(enabled=getattr(a, "features", False)), evaluation=ev,
                  out=getattr(a, "out", None), overwrite=getattr(a, "overwrite", False),
                  contrast={"kind": "text", "file": a.contrast_text} if getattr(a, "contrast_text", None) else None)


def _print_report(report: dict) -> None:
    rows = report.get("evaluation") or []
    if rows:
        _log("\n{:<11} {:<9} {:<10} {:>10} {:>10} {:>9}".format("task", "language", "metric", "dense", "pruned", "delta"))
        for r in rows:
            f = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
            _log("{:<11} {:<9} {:<10} {:>10} {:>10} {:>9}".format(r["task"], r["language"], r["metric"],
                                                                   f(r.get("dense")), f(r.get("pruned", r.get("value"))), f(r.get("delta"))))


def cmd_run(recipe, desc="polyprune") -> int:
    from .pipeline import run

    prog = _progress(desc)
    try:
        report = run(recipe, prog, log=lambda m: prog.bar.write(m, file=sys.stderr))
    finally:
        prog.bar.close()
    _print_report(report)
    if recipe.out:
        _log(f"\nWrote {Path(recipe.out) / 'report.json'} and recipe.yaml")
    return 0


def cmd_inspect(a) -> int:
    from .features import overlap
    from .models import load_model
    from .pipeline import features_summary, inspect_features, versions, write_outputs

    recipe = _recipe_from_args(a)
    recipe.features.enabled = True
    recipe.features.top_k = a.top_k
    recipe.features.compare_monolingual = a.compare_monolingual
    recipe.features.ratio = a.ratio
    prog = _progress("inspect")
    try:
        loaded = load_model(recipe.model, recipe.device, recipe.dtype, recipe.trust_remote_code, prog.sub(0, 0.3))
        feats = inspect_features(loaded, recipe, prog.sub(0.3, 0.7))
        other = None
        if a.compare_src:
            cal_b = replace(recipe, demos=replace(recipe.demos, src=a.compare_src))
            other = inspect_features(loaded, cal_b, prog.sub(0.7, 1.0))["result"]
    finally:
        prog.bar.close()
    out = Path(a.out)
    files = feats["result"].save(out / "features")
    report = {"recipe": recipe.to_dict(), "model": loaded.info(), "versions": versions(),
              "calibration": feats["calibration"].meta, "top": features_summary(feats["result"], a.top_k),
              "files": [str(f) for f in files]}
    if feats["mono"] is not None:
        feats["mono"].save(out / "features_monolingual")
        report["overlap_monolingual"] = feats["overlap"].tolist()
    if other is not None:
        other.save(out / f"features_{a.compare_src}")
        report["overlap_compare_src"] = overlap(feats["result"].magnitudes, other.magnitudes, ratio=a.ratio).tolist()
    write_outputs(out, recipe, report)
    for row in report["top"]:
        _log(f"layer {row['layer']:>2}: top dims {row['dims'][:8]} values {row['values'][:8]}")
    if "overlap_monolingual" in report:
        _log("overlap translation vs monolingual per layer: " + " ".join(f"{v:.2f}" for v in report["overlap_monolingual"]))
    if "overlap_compare_src" in report:
        _log(f"overlap {recipe.demos.src} vs {a.compare_src} per layer: " + " ".join(f"{v:.2f}" for v in report["overlap_compare_src"]))
    _log(f"Wrote {', '.join(report['files'])} and {out / 'report.json'}")
    return 0


def cmd_evaluate(a) -> int:
    from .models import default_device, load_model
    from .recipe import default_data_dir
    from .results import save_results
    from .tasks import evaluate_tasks

    tasks, langs = _langs(a.tasks), (_langs(a.languages) or None)
    if a.eval_ppl or a.eval_xnli:  # the prune command's flags work here too
        per = {t: langs for t in tasks}
        if a.eval_ppl:
            per["flores_ppl"] = _langs(a.eval_ppl)
        if a.eval_xnli:
            per["xnli"] = _langs(a.eval_xnli)
        tasks, langs = list(per), per
    if not tasks:
        raise PolypruneError("Nothing to evaluate",
                             "give --tasks (xnli,pawsx,xcopa,xstorycloze,xwinograd,flores_ppl,flores_mt) and --languages")
    data = Path(a.data).expanduser() if a.data else default_data_dir()
    if data is None or not data.is_dir():
        raise PolypruneError("No evaluation data folder found",
                             "give --data DIR (with xnli/, pawsx/, xcopa/, ..., flores200/) or set POLYPRUNE_DATA")
    prog = _progress("evaluate")
    try:
        loaded = load_model(a.model, a.device or default_device(), a.dtype, a.trust_remote_code, prog.sub(0, 0.1))
        results = evaluate_tasks(loaded.model, loaded.tokenizer, tasks, langs, data, split=a.split, limit=a.limit,
                                 batch_size=a.eval_batch_size, metrics=_langs(a.metrics), bootstrap=a.bootstrap,
                                 seed=a.seed, progress=prog.sub(0.1, 1), on_error="record", model_name=a.model,
                                 translation={"shots": a.mt_shots, "max_new_tokens": a.max_new_tokens,
                                              "directions": a.mt_directions})
    finally:
        prog.bar.close()
    for r in results:
        ci = f" [{r.ci_low:.4f}, {r.ci_high:.4f}]" if r.ci_low is not None else ""
        _log(f"{r.task:<12} {r.language:<18} ERROR {r.error}" if r.error else
             f"{r.task:<12} {r.language:<18} {r.metric:<14} {r.value:.4f}{ci}  (n={r.n})")
    if a.out:
        _log(f"Wrote {save_results(results, a.out)}")
    return 1 if any(r.error for r in results) else 0


def cmd_export(a) -> int:
    from .export import check_target, export, reload_check
    from .models import default_device, load_model

    loaded_path = None if a.model == "demo" else a.model
    check_target(a.out, loaded_path if loaded_path and Path(loaded_path).exists() else None, a.overwrite)
    prog = _progress("export")
    try:
        loaded = load_model(a.model, a.device or default_device(), a.dtype, a.trust_remote_code, prog.sub(0, 0.4))
        check_target(a.out, loaded.path, a.overwrite)
        report = {"model": loaded.info(), "pruning": {"config": {"method": "masks" if a.masks else "none"}}}
        if a.masks:
            from .masks import apply_masks, load_masks
            ms = load_masks(a.masks)
            apply_masks(loaded.model, ms)
            report["pruning"]["overall_sparsity"] = ms.sparsity()
        out = export(loaded.model, loaded.tokenizer, a.out, report, source=loaded.path, overwrite=a.overwrite,
                     progress=prog.sub(0.4, 0.9))
        diff = reload_check(loaded.model, out, loaded.tokenizer)
    finally:
        prog.bar.close()
    _log(f"Exported to {out}; reload check: largest logit difference {diff:.3g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="polyprune", description="Prune and inspect multilingual LLMs with translation demonstrations.")
    sub = ap.add_subparsers(dest="cmd")

    p = sub.add_parser("prune", help="prune a model (Wanda or magnitude) and export it")
    add_model_args(p)
    add_demo_args(p)
    g = p.add_argument_group("pruning")
    g.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt", "wanda_refined"],
                   help="wanda_refined: Kim et al.'s |W|*a/sqrt(b) with --contrast-text as the contrast set")
    g.add_argument("--sparsity", type=float, default=0.5, help="share of weights removed per layer, in [0, 1)")
    g.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8")
    g.add_argument("--group", default="row", choices=["row", "layer"], help="comparison group for unstructured pruning")
    g.add_argument("--skip", default=None, help="comma-separated glob patterns of modules to leave dense")
    g.add_argument("--skip-blocks", default=None, help="comma-separated block indices to leave dense")
    g.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward pass")
    g.add_argument("--damping", type=float, default=0.01, help="SparseGPT damping (share of the mean Hessian diagonal)")
    g.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    g.add_argument("--layerwise", default="uniform", choices=["uniform", "owl"], help="OWL outlier-weighted layer sparsities")
    g.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (times the mean score)")
    g.add_argument("--owl-lambda", type=float, default=0.08, help="OWL spread of layer sparsities (+/- lambda)")
    g.add_argument("--contrast-text", default=None, metavar="FILE", help="contrast set for wanda_refined (one sample per line)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--features", action="store_true", help="also save feature magnitudes")
    add_eval_args(p)
    p.add_argument("--out", required=True, help="export folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-export", action="store_true", help="write only the report, not the pruned model")

    p = sub.add_parser("inspect", help="measure large-magnitude features of demonstrations")
    add_model_args(p)
    add_demo_args(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--compare-monolingual", action="store_true", help="also measure monolingual prompts and report the overlap")
    p.add_argument("--compare-src", default=None, help="also measure with another source language and report the overlap")
    p.add_argument("--ratio", type=float, default=0.4, help="share of dimensions compared in overlaps")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("evaluate", help="FLORES perplexity and zero-shot XNLI")
    add_model_args(p)
    add_eval_args(p)
    p.add_argument("--tasks", default=None, help="comma-separated: xnli, pawsx, xcopa, xstorycloze, xwinograd, flores_ppl, flores_mt, or a custom task spec .json")
    p.add_argument("--languages", default=None, help="languages for --tasks (default: every language with a file)")
    p.add_argument("--split", default=None, help="task split (default: test for xnli/xcopa/xwinograd, dev for pawsx, eval for xstorycloze)")
    p.add_argument("--metrics", default="acc,acc_norm", help="acc, acc_norm (by UTF-8 bytes), acc_norm_chars (the harness's), prompt_mean (Kim et al.)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% confidence intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mt-shots", type=int, default=4, help="flores_mt: demonstrations per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="flores_mt: greedy decoding length")
    p.add_argument("--mt-directions", default="both", choices=["both", "xx-en", "en-xx"])
    p.add_argument("--out", default=None, help="write results as JSON (or CSV by suffix)")

    p = sub.add_parser("export", help="export a model (optionally with a saved mask set applied)")
    add_model_args(p)
    p.add_argument("--masks", default=None, help="masks.safetensors written by 'polyprune prune'")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("run", help="run a recipe (JSON or YAML)")
    p.add_argument("recipe")
    p.add_argument("--out", default=None, help="override the recipe's output folder")
    p.add_argument("--overwrite", action="store_true")

    sub.add_parser("study", help="calibration sources x methods x sparsities: polyprune study RECIPE [--out DIR]", add_help=False)

    p = sub.add_parser("demo", help="run the built-in demo recipe headless (demo model, built-in demonstrations)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--overwrite", action="store_true", default=True)

    p = sub.add_parser("gui", help="open the desktop application")
    p.add_argument("--model", default=None, help="model to load at start ('demo' for the demo model)")
    p.add_argument("--screenshots", default=None, metavar="DIR", help="run the workflow with small settings, save one PNG per panel and exit")
    p.add_argument("--study", default=None, metavar="DIR", help="show the results of a study folder in the Studies panel")
    return ap


def demo_recipe_path() -> Path:
    return Path(str(resources.files("polyprune.resources") / "demo_recipe.yaml"))


def main(argv: list[str] | None = None) -> int:
    import os
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # our own progress bar replaces transformers' per-step bars
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:
        pass
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["study"]:
        from .study import study_main  # reports its own errors and cancellation
        return study_main(argv[1:])
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        if a.cmd is None or a.cmd == "gui":
            try:  # imported lazily: the core never needs Qt widgets
                from polyprune.gui.app import launch
            except ImportError as e:
                raise PolypruneError(f"The desktop application is not available ({e})",
                                     "install the GUI dependencies (pip install PySide6-Essentials pyqtgraph) or use the subcommands, see polyprune --help") from e
            return launch(getattr(a, "model", None), getattr(a, "screenshots", None), getattr(a, "study", None))
        if a.cmd == "prune":
            recipe = _recipe_from_args(a)
            recipe.export = not a.no_export
            return cmd_run(recipe, "prune")
        if a.cmd == "inspect":
            return cmd_inspect(a)
        if a.cmd == "evaluate":
            return cmd_evaluate(a)
        if a.cmd == "export":
            return cmd_export(a)
        if a.cmd in ("run", "demo"):
            from .recipe import load_recipe
            recipe = load_recipe(a.recipe if a.cmd == "run" else demo_recipe_path())
            if a.out:
                recipe.out = a.out
            if a.overwrite:
                recipe.overwrite = True
            return cmd_run(recipe, a.cmd)
    except PolypruneError as e:
        print(f"\npolyprune: error: {e.problem}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("\npolyprune: cancelled; the model was left as it was", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
