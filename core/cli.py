"""The ``polyprune`` command line: every command, one error handler.

Commands: ``prune``, ``inspect`` (feature magnitudes), ``evaluate``, ``export``, ``run RECIPE``,
``study STUDY``, ``demo`` and ``gui``; feature packages add theirs through
:data:`COMMAND_MODULES` (each has ``add_parsers(subparsers)``). Progress bars go to stderr.

The error contract: every expected failure (bad input, a path that may not be written, missing
data) prints one sentence naming the problem and one naming the fix, and exits 2 with no
traceback; Ctrl-C cancels cooperatively (the model is restored, nothing is written) and exits 130;
anything else is a bug: its traceback is printed and the exit status is 1.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from dataclasses import replace
from importlib import resources
from pathlib import Path

from .arguments import add_demo_args, add_eval_args, add_model_args, positive_int, recipe_from_args, split_list
from .errors import Cancelled, PolypruneError
from .fileio import fresh_folder
from .progress import tqdm_progress
from .recipe import METRICS, EvalConfig, FeatureConfig, PruneConfig, Recipe

#: Feature packages that add subcommands (module path, imported lazily to keep ``--help`` fast).
COMMAND_MODULES: list[str] = ["polyprune.heads.cli", "polyprune.subspaces.cli", "polyprune.slimming.cli"]


_P, _E = PruneConfig(), EvalConfig()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def _print_report(report: dict) -> None:
    rows = report.get("evaluation") or []
    if rows:
        _log("\n{:<11} {:<9} {:<10} {:>6} {:>10} {:>10} {:>9}".format("task", "language", "metric", "n", "dense",
                                                                     "pruned", "change"))
        for r in rows:
            f = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
            _log("{:<11} {:<9} {:<10} {:>6} {:>10} {:>10} {:>9}".format(r["task"], r["language"], r["metric"], r["n"],
                                                                       f(r.get("dense")), f(r.get("pruned")),
                                                                       f(r.get("delta"))))


def cmd_run(recipe: Recipe, desc: str = "polyprune") -> int:
    from .pipeline import run

    prog = tqdm_progress(desc)
    try:
        report = run(recipe, prog, log=lambda m: prog.bar.write(m, file=sys.stderr))
    finally:
        prog.bar.close()
    _print_report(report)
    if recipe.out:
        _log(f"\nWrote {Path(recipe.out).expanduser().resolve()} (report.json, recipe.yaml"
             + (", the pruned model)" if recipe.export else ", masks)"))
    return 0


def cmd_prune(a) -> int:
    recipe = recipe_from_args(a)
    recipe.export = not a.no_export
    return cmd_run(recipe, "prune")


def cmd_inspect(a) -> int:
    from .pipeline import inspect, monolingual_spec
    from .recipe import demos_spec

    recipe = recipe_from_args(a)
    recipe.features = FeatureConfig(enabled=True, top_k=a.top_k, compare_monolingual=a.compare_monolingual,
                                    ratio=a.ratio, exclude_special=a.exclude_special)
    other = demos_spec(replace(recipe.demos, src=a.compare_src)) if a.compare_src else \
        monolingual_spec(recipe) if a.compare_monolingual else None
    prog = tqdm_progress("inspect")
    try:
        report = inspect(recipe, a.out, other, "compare_src" if a.compare_src else "monolingual", a.batch_size,
                         a.overwrite, prog)
    finally:
        prog.bar.close()
    for row in report["top"]:
        _log(f"layer {row['layer']:>2}: top dims {row['dims'][:8]} values {row['values'][:8]}")
    for key in ("overlap_compare_src", "overlap_monolingual"):
        if key in report:
            _log("overlap with the second setting per layer: " + " ".join(f"{v:.2f}" for v in report[key]))
    _log(f"Wrote {Path(a.out).resolve()} ({', '.join(report['files'])}, report.json)")
    return 0


def cmd_evaluate(a) -> int:
    from .pipeline import evaluate_command

    tasks, langs = split_list(a.tasks), (split_list(a.languages) or None)
    if a.eval_ppl or a.eval_xnli:  # the prune command's flags work here too
        per = {t: langs for t in tasks}
        if a.eval_ppl:
            per["flores_ppl"] = split_list(a.eval_ppl)
        if a.eval_xnli:
            per["xnli"] = split_list(a.eval_xnli)
        tasks, langs = list(per), per
    prog = tqdm_progress("evaluate")
    try:
        results = evaluate_command(
            a.model, tasks, langs, a.data, device=a.device or _default_device(), dtype=a.dtype,
            trust_remote_code=a.trust_remote_code, split=a.split, limit=a.limit,
            ppl_limit=a.ppl_limit if a.ppl_limit is not None else a.limit, batch_size=a.eval_batch_size,
            metrics=split_list(a.metrics), bootstrap=a.bootstrap, seed=a.seed,
            translation={"shots": a.mt_shots, "max_new_tokens": a.max_new_tokens, "directions": a.mt_directions},
            out=a.out, overwrite=a.overwrite, settings={k: v for k, v in vars(a).items() if k != "func"}, progress=prog)
    finally:
        prog.bar.close()
    for r in results:
        ci = f" [{r.ci_low:.4f}, {r.ci_high:.4f}]" if r.ci_low is not None else ""
        _log(f"{r.task:<12} {r.language:<18} ERROR {r.error}" if r.error else
             f"{r.task:<12} {r.language:<18} {r.metric:<14} {r.value:.4f}{ci}  (n={r.n})")
    if a.out:
        _log(f"Wrote {Path(a.out).expanduser().resolve()}")
    return 1 if any(r.error for r in results) else 0


def _default_device() -> str:
    from .models import default_device
    return default_device()


def cmd_export(a) -> int:
    from .pipeline import export_masks

    prog = tqdm_progress("export")
    try:
        res = export_masks(a.model, a.masks, a.out, a.device or _default_device(), a.dtype, a.trust_remote_code,
                           a.overwrite, prog)
    finally:
        prog.bar.close()
    _log(f"Exported to {res.path}; reload check: largest logit difference {res.reload_diff:.3g}")
    return 0


def cmd_recipe(a) -> int:
    from .recipe import load_recipe

    path = a.recipe if a.cmd == "run" else demo_recipe_path()
    recipe = load_recipe(path, trust_remote_code=getattr(a, "trust_remote_code", False))
    if getattr(recipe, "requested_trust_remote_code", False) and not recipe.trust_remote_code:
        _log("Note: the recipe asks for trust_remote_code; a recipe file cannot switch it on. "
             "Pass --trust-remote-code if you trust the model's authors.")
    if a.out:
        recipe.out = str(Path(a.out).expanduser().resolve())
    elif a.cmd == "demo":
        recipe.out = str(fresh_folder(Path("runs") / "demo"))
    elif recipe.out and Path(recipe.out).exists() and not a.overwrite:
        new = fresh_folder(Path(recipe.out))
        _log(f"Note: {recipe.out} already exists; writing to {new} (give --out to choose, or --overwrite to replace "
             "an earlier Polyprune output)")
        recipe.out = str(new)
    recipe.overwrite = bool(a.overwrite)
    return cmd_run(recipe, a.cmd)


def cmd_study(a) -> int:
    from .study import load_agreement, load_paired, load_rows, load_study, print_summary, run_study

    if a.show:
        folder = Path(a.study)
        if folder.is_file():
            folder = Path(a.out or load_study(folder).out)
        print_summary(load_rows(folder), load_agreement(folder), paired=load_paired(folder))
        return 0
    cfg = load_study(a.study)
    if getattr(cfg, "requested_trust_remote_code", False) and not a.trust_remote_code:
        _log("Note: the study asks for trust_remote_code; a study file cannot switch it on. "
             "Pass --trust-remote-code if you trust the model's authors.")
    cfg.trust_remote_code = a.trust_remote_code
    if a.out:
        cfg.out = a.out
    if a.device:
        cfg.device = a.device
    prog = tqdm_progress("study")
    log = lambda m: prog.bar.write(m, file=sys.stderr)  # noqa: E731
    try:
        if a.ray is not None:  # --- studies on Ray (issue 15): one Ray task per cell
            from .study.ray import failed_cells, run_study_ray
            res = run_study_ray(cfg, a.ray or None, prog, log=log)
        else:
            res = run_study(cfg, prog, log=log)
    finally:
        prog.bar.close()
    print_summary(res.rows, res.agreement, paired=res.paired)
    if a.ray is not None:
        failed = failed_cells(res.out, res.cells)
        for cid, msg in failed.items():
            _log(f"Cell {cid} failed: {msg}")
        if failed:
            _log(f"{len(failed)} cell(s) failed (see cells/<id>/failed.json); run the study again to retry them")
            return 1
    _log(f"\nWrote {res.out / 'results.csv'}, {res.out / 'results.jsonl'}, {res.out / 'paired.csv'} and "
         f"{res.out / 'mask_agreement.csv'}")
    return 0


def cmd_gui(a) -> int:
    try:  # imported lazily: the core never needs Qt widgets
        from polyprune.gui.app import launch
    except ImportError as e:
        raise PolypruneError(f"The desktop application is not available ({e})",
                             "install the GUI dependencies (pip install PySide6-Essentials pyqtgraph) or use the "
                             "subcommands, see polyprune --help") from e
    return launch(getattr(a, "model", None), getattr(a, "screenshots", None), getattr(a, "study", None))


def demo_recipe_path() -> Path:
    return Path(str(resources.files("polyprune.resources") / "demo_recipe.yaml"))


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with the error contract: a bad argument is a :class:`PolypruneError` (exit 2,
    one line naming the problem, one naming the fix), not argparse's usage dump."""

    def error(self, message: str):  # noqa: D102 - argparse hook
        raise PolypruneError(f"{self.prog}: {message}", f"see '{self.prog} --help' for the options and their values")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="polyprune",
                description="Prune, inspect and slim multilingual LLMs with translation demonstrations.")
    sub = ap.add_subparsers(dest="cmd", parser_class=Parser)

    p = sub.add_parser("prune", help="prune a model (Wanda, SparseGPT, magnitude, refined metric) and export it")
    add_model_args(p)
    add_demo_args(p)
    g = p.add_argument_group("pruning")
    g.add_argument("--method", default=_P.method, choices=["magnitude", "wanda", "sparsegpt", "wanda_refined"],
                   help="wanda_refined: Kim et al.'s |W|*a/sqrt(b) with --contrast-text as the contrast set")
    g.add_argument("--sparsity", type=float, default=_P.sparsity, help="share of weights removed per layer, in [0, 1)")
    g.add_argument("--pattern", default=_P.pattern, help="unstructured, 2:4 or 4:8")
    g.add_argument("--group", default=_P.group, choices=["row", "layer"], help="comparison group for unstructured pruning")
    g.add_argument("--skip", default=None, help="comma-separated glob patterns of modules to leave dense")
    g.add_argument("--skip-blocks", default=None, help="comma-separated block indices (0 = first) to leave dense")
    g.add_argument("--batch-size", type=positive_int, default=_P.batch_size, help="calibration samples per forward pass")
    g.add_argument("--damping", type=float, default=_P.damping, help="SparseGPT damping (share of the mean Hessian diagonal)")
    g.add_argument("--blocksize", type=positive_int, default=_P.blocksize, help="SparseGPT column block size")
    g.add_argument("--layerwise", default=_P.layerwise, choices=["uniform", "owl"], help="OWL outlier-weighted layer sparsities")
    g.add_argument("--owl-m", type=float, default=_P.owl_m, help="OWL outlier threshold M (times the mean score)")
    g.add_argument("--owl-lambda", type=float, default=_P.owl_lambda, help="OWL spread of layer sparsities (+/- lambda)")
    g.add_argument("--contrast-text", default=None, metavar="FILE", help="contrast set for wanda_refined (one sample per line)")
    g.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="stream the model one block at a time within this memory budget (e.g. 4GB, 1.5GiB): "
                        "for models larger than memory; refused up front when the budget cannot be met")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--features", action="store_true", help="also save feature magnitudes")
    add_eval_args(p)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder that Polyprune wrote")
    p.add_argument("--no-export", action="store_true", help="write only the report, recipe and masks, not the pruned model")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("inspect", help="measure large-magnitude features of demonstrations")
    add_model_args(p)
    add_demo_args(p)
    p.add_argument("--batch-size", type=positive_int, default=_P.batch_size)
    p.add_argument("--top-k", type=positive_int, default=FeatureConfig().top_k)
    p.add_argument("--compare-monolingual", action="store_true", help="also measure monolingual prompts and report the overlap")
    p.add_argument("--compare-src", default=None, help="also measure with another source language and report the overlap")
    p.add_argument("--ratio", type=float, default=FeatureConfig().ratio, help="share of dimensions compared in overlaps")
    p.add_argument("--exclude-special", action="store_true", help="leave special tokens (BOS, EOS) out of the statistics")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder that Polyprune wrote")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("evaluate", help="zero-shot tasks, FLORES perplexity and translation")
    add_model_args(p)
    add_eval_args(p)
    p.add_argument("--tasks", default=None, help="comma-separated: xnli, pawsx, xcopa, xstorycloze, xwinograd, flores_ppl, flores_mt, or a custom task spec .json")
    p.add_argument("--languages", default=None, help="languages for --tasks (default: every language with a file)")
    p.add_argument("--split", default=None, help="task split (default: test for xnli/xcopa/xwinograd, dev for pawsx, eval for xstorycloze)")
    p.add_argument("--metrics", default=",".join(_E.metrics),
                   help=f"{', '.join(METRICS)}: acc_norm by characters and acc_bytes by bytes, as lm-evaluation-harness; "
                        "prompt_mean is Kim et al.'s")
    p.add_argument("--bootstrap", type=int, default=_E.bootstrap, help="bootstrap resamples for 95%% confidence intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mt-shots", type=int, default=4, help="flores_mt: demonstrations per prompt")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="flores_mt: greedy decoding length")
    p.add_argument("--mt-directions", default="both", choices=["both", "xx-en", "en-xx"])
    p.add_argument("--out", default=None, help="write results as JSON (or CSV by suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file that Polyprune wrote")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a model (optionally with a saved mask set applied)")
    add_model_args(p)
    p.add_argument("--masks", default=None, help="masks.safetensors written by 'polyprune prune'")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing export that Polyprune wrote")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="run a recipe (JSON or YAML)")
    p.add_argument("recipe")
    p.add_argument("--out", default=None, help="override the recipe's output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder that Polyprune wrote")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code shipped with the checkpoint (a recipe file cannot switch this on)")
    p.set_defaults(func=cmd_recipe)

    p = sub.add_parser("study", help="calibration sources x methods x sparsities: polyprune study STUDY [--out DIR]")
    p.add_argument("study", help="study file (YAML or JSON), or a study folder with --show")
    p.add_argument("--out", default=None, help="override the study's output folder")
    p.add_argument("--device", default=None, help="cpu, cuda[:N] or mps")
    p.add_argument("--show", action="store_true", help="only print the tables of an existing study folder")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code shipped with the checkpoint (a study file cannot switch this on)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run every cell as a Ray task: on the cluster at ADDRESS (host:port, ray://host:port, auto), "
                        "or on a local Ray cluster started on this machine when no address is given")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("demo", help="run the built-in demo recipe headless (demo model, built-in demonstrations)")
    p.add_argument("--out", default=None, help="output folder (default: a new folder runs/demo, runs/demo-2, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder that Polyprune wrote")
    p.set_defaults(func=cmd_recipe)

    p = sub.add_parser("gui", help="open the desktop application")
    p.add_argument("--model", default=None, help="model to load at start ('demo' for the demo model)")
    p.add_argument("--screenshots", default=None, metavar="DIR",
                   help="run the workflow with the defaults a new user gets, save one PNG per panel and exit")
    p.add_argument("--study", default=None, metavar="DIR", help="show the results of a study folder in the Studies panel")
    p.set_defaults(func=cmd_gui)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return ap


def report_error(e: PolypruneError) -> None:
    """Print a user error as the error contract says (one line problem, one line fix)."""
    print(f"\npolyprune: error: {e.problem}", file=sys.stderr)
    if e.fix:
        print(f"  fix: {e.fix}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run a command; return the exit status (0 done, 1 bug, 2 bad input, 130 cancelled)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # our own progress bar replaces transformers' per-step bars
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - logging set-up is optional
        pass
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        a = build_parser().parse_args(argv)
        if a.cmd is None:
            return cmd_gui(a)
        return a.func(a)
    except PolypruneError as e:
        report_error(e)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("\npolyprune: cancelled; the model was left as it was and nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("\npolyprune: error: out of memory\n  fix: use fewer samples, a shorter calibration length or a smaller "
              "batch size", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a bug: show it so it can be reported
        traceback.print_exc()
        print("\npolyprune: this is a bug in Polyprune (the traceback above has the details); please report it",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
