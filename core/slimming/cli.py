"""``polyprune slim`` and ``polyprune slim-curve``.

``polyprune slim --model M --keep eng_Latn,swh_Latn --vocab script|corpus|size|none [--corpus FILE|flores:DIR]
[--vocab-size N] [--remove-blocks K] [--dtype float32|bfloat16|float16] [--gguf F16|BF16|Q8_0] --out DIR``
slims and exports (``--dry-run``: print the plan and projected sizes, write nothing).
``polyprune slim-curve --model M --keep ... [--sizes N,N,...] --out FILE.csv`` writes the
vocabulary trade-off curve (and ``FILE.csv.polyprune.json`` with the settings and rows).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..arguments import add_model_args
from ..errors import PolypruneError
from .config import DTYPES, GGUF_TYPES, TASKS, VOCAB_MODES, SlimConfig


def _slim_args(p: argparse.ArgumentParser) -> None:
    d = SlimConfig()
    g = p.add_argument_group("what to keep")
    g.add_argument("--settings", default=None, metavar="FILE",
                   help="slim settings (YAML/JSON, the keys of SlimConfig); options given here override them")
    g.add_argument("--keep", default=None, help="languages to keep, e.g. eng_Latn,swh_Latn (codes, names or en,sw)")
    g.add_argument("--vocab", default=None, choices=VOCAB_MODES,
                   help=f"script: every token of the kept scripts (exact on their text); corpus: the tokens --corpus "
                        f"needs (exact on it); size: the best --vocab-size tokens; none (default {d.vocab})")
    g.add_argument("--corpus", default=None, help=f"flores, flores:DIR, file:PATH or FILE (default {d.corpus})")
    g.add_argument("--corpus-sentences", type=int, default=None, help="sentences per language read from the corpus")
    g.add_argument("--vocab-size", type=int, default=None, help="tokens to keep with --vocab size")
    g.add_argument("--remove-blocks", type=int, default=None, help="remove the K least influential blocks (ShortGPT)")
    g.add_argument("--influence-sentences", type=int, default=None, help="sentences per language for block influence")
    g = p.add_argument_group("output")
    g.add_argument("--dtype", default=None, choices=DTYPES, help=f"precision of the written weights (default {d.dtype})")
    g.add_argument("--gguf", default=None, choices=GGUF_TYPES, help="also write model-TYPE.gguf (llama.cpp)")
    g.add_argument("--out", default=None, help="output folder (a new one, or a Polyprune output with --overwrite)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing Polyprune output folder")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-sentences", type=int, default=None,
                   help=f"held-out FLORES devtest sentences per language (default {d.eval_sentences}; 0 skips)")
    g.add_argument("--tasks", default=None, help=f"zero-shot tasks before and after: {','.join(TASKS)}")
    g.add_argument("--task-limit", type=int, default=None, help=f"documents per task and language (default {d.task_limit})")
    g.add_argument("--translation", action="store_true", default=None, help="few-shot FLORES translation with English")
    g.add_argument("--no-speed", dest="speed", action="store_false", default=None, help="skip the tokens/s measurement")
    g.add_argument("--data", default=None, help="data folder with flores200/ (default: $POLYPRUNE_DATA or shared/data)")
    g.add_argument("--seed", type=int, default=None)


def config_from_args(a) -> SlimConfig:
    """A validated :class:`SlimConfig` from ``--settings`` plus the options given."""
    base = {}
    if a.settings:
        from ..fileio import read_settings_file
        base = read_settings_file(a.settings, "slim settings") or {}
        if not isinstance(base, dict):
            raise PolypruneError(f"The slim settings file {a.settings} is not a mapping", "write key: value lines")
        base = dict(base.get("slim", base))
    names = {f.name for f in fields(SlimConfig)}
    for name in names:
        v = getattr(a, name, None)
        if v is not None:
            base[name] = v
    if isinstance(base.get("keep"), str):
        base["keep"] = [s.strip() for s in base["keep"].split(",") if s.strip()]
    if isinstance(base.get("tasks"), str):
        base["tasks"] = [s.strip() for s in base["tasks"].split(",") if s.strip()]
    return SlimConfig.from_dict(base)


def add_parsers(subparsers) -> None:
    """Add ``slim`` and ``slim-curve`` to the ``polyprune`` sub-commands."""
    p = subparsers.add_parser("slim", help="a smaller, faster model for the languages you keep (vocabulary, blocks, "
                                           "dtype, GGUF)")
    add_model_args(p, dtype_flag="--load-dtype", dtype_help="precision the model is loaded in", device="cpu")
    _slim_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and projected sizes; write nothing")
    p.set_defaults(func=run_slim)
    p = subparsers.add_parser("slim-curve", help="held-out NLL change per kept language against vocabulary size")
    add_model_args(p, dtype_flag="--load-dtype", dtype_help="precision the model is loaded in", device="cpu")
    _slim_args(p)
    p.add_argument("--sizes", dest="curve_sizes", default=None,
                   help="vocabulary sizes, e.g. 20000,50000,100000 (default: 8 sizes)")
    p.set_defaults(func=run_slim_curve)


def _load(a):
    from ..models import load_model
    from ..progress import tqdm_progress

    prog = tqdm_progress("loading")
    try:
        return load_model(a.model, device=a.device, dtype=a.load_dtype, trust_remote_code=a.trust_remote_code,
                          progress=prog)
    finally:
        prog.bar.close()


def _table(rows: list[dict]) -> str:
    out = [f"{'part':<10} {'params before':>15} {'after':>15} {'MB before':>10} {'MB after':>10} {'ratio':>6}"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        out.append(f"{r['part']:<10} {r['params_before']:>15,} {r['params_after']:>15,} {r['bytes_before'] / 1e6:>10.1f} "
                   f"{r['bytes_after'] / 1e6:>10.1f} {ratio:>6}")
    return "\n".join(out)


def run_slim(a) -> int:
    """``polyprune slim``: slim and export, or print the plan with ``--dry-run``.

    Raises:
        PolypruneError: bad settings or input (nothing written).
    """
    from ..progress import tqdm_progress
    from .run import project, slim

    cfg = config_from_args(a)
    if not a.dry_run and not cfg.out:
        raise PolypruneError("No output folder given", "give --out DIR (or --dry-run to only see the plan)")
    loaded = _load(a)
    prog = tqdm_progress("slim")
    try:
        if a.dry_run:
            proj = project(loaded, cfg, prog)
            prog.bar.close()
            plan = proj.plan
            print(f"kept languages: {', '.join(plan.languages)} (scripts {', '.join(plan.scripts)})")
            if plan.vocab:
                print(f"vocabulary: {plan.vocab.mode}, {plan.vocab.size:,} of {plan.vocab.source_size:,} tokens "
                      f"({plan.vocab.mandatory:,} special and byte tokens)")
            if plan.influence:
                print("block influence: " + " ".join(f"{i}:{b:.3f}" for i, b in enumerate(plan.influence)))
                print(f"blocks removed: {plan.remove_blocks}")
            print(_table(proj.sizes))
            for n in proj.notes:
                print(n)
            return 0
        res = slim(loaded, cfg, prog)
    finally:
        prog.bar.close()
    r = res.report
    print(_table(r["sizes"]))
    for q in r.get("quality", []):
        ci = f" (95% CI {q['ci_low']:+.2f} % to {q['ci_high']:+.2f} %)" if q.get("ci_low") is not None else ""
        print(f"{q['language']}: held-out sentence NLL {q['change_pct']:+.2f} %{ci} over {q['n']} sentences")
    for t in r.get("tasks", []):
        print(f"{t['task']} {t['language']} {t['metric']}: {t['before']:.4g} -> {t['after']:.4g} ({t['delta']:+.4g})")
    if r.get("speed"):
        s = r["speed"]
        print(f"generation speed: {s['before']['tokens_per_s']:.1f} -> {s['after']['tokens_per_s']:.1f} tokens/s "
              f"(x{s['speedup']:.2f}, {s['dtype']} on {s['device']})")
    if r.get("gguf"):
        g, c = r["gguf"], r["gguf"]["check"]
        print(f"GGUF {g['file']}: {g['bytes'] / 1e6:.1f} MB; read back by transformers: same tokens {c['tokens_equal']}, "
              f"max |dlogit| {c['max_abs']:.4g} (format rounding alone {c['reference_max_abs']:.4g}), "
              f"{'OK' if c['ok'] else 'NOT within the format precision'}")
    print(f"written to {res.out}")
    return 0


def run_slim_curve(a) -> int:
    """``polyprune slim-curve``: write the trade-off curve as CSV (``--out FILE.csv``) and JSON.

    Raises:
        PolypruneError: bad settings or input.
    """
    from pathlib import Path

    from ..fileio import atomic_write_text, check_output, write_json
    from ..progress import tqdm_progress
    from .run import tradeoff

    out = getattr(a, "out", None)
    a.out = None
    cfg = config_from_args(a)
    if not out:
        raise PolypruneError("No output file given", "give --out FILE.csv")
    out = Path(out).expanduser()
    if out.suffix.lower() != ".csv":
        raise PolypruneError(f"The curve is written as CSV, but {out.name} does not end in .csv", "give --out FILE.csv")
    check_output(out, kind="file", what="curve file", overwrite=a.overwrite)
    loaded = _load(a)
    prog = tqdm_progress("trade-off curve")
    try:
        rows = tradeoff(loaded, cfg, prog)
    finally:
        prog.bar.close()
    cols = ["vocab", "size", "params", "language", "change_pct", "ci_low", "ci_high", "nll_before", "nll_after", "n"]
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else str(r.get(c)) for c in cols) for r in rows]
    write_json(out.with_name(out.name + ".polyprune.json"), {"settings": cfg.to_dict(), "rows": rows}, kind="slim-curve")
    atomic_write_text(out, "\n".join(lines) + "\n")
    for r in rows:
        print(f"{r['vocab']:<7} {r['size']:>8,} tokens {r['params']:>12,} params  {r['language']}: "
              f"{r['change_pct']:+.2f} % [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]")
    print(f"written to {out}", file=sys.stderr)
    return 0
