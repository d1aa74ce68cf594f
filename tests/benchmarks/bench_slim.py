"""Benchmark: what slimming the demo model costs and gains, measured on this machine.

Not a test (pytest does not collect ``bench_*.py``). Run it as a script, one part at a time::

    nice -n 19 env OMP_NUM_THREADS=1 POLYPRUNE_DATA=../shared/data .venv/bin/python \\
        tests/benchmarks/bench_slim.py PART --out runs/bench_slim [--model demo] [--sentences 200]

Parts:

* ``check DIR`` — the "done when" check of a folder written by ``polyprune slim --vocab script``:
  reload with stock ``AutoModelForCausalLM``/``AutoTokenizer``, parameters against the source,
  every FLORES dev sentence of the kept languages tokenized into the same pieces (mapped ids),
  logits at those tokens equal to the source's on the first ``--logit-sentences`` of them.
* ``curve LANGS`` — the trade-off curve (:func:`polyprune.slimming.run.tradeoff`) for the kept
  languages ``LANGS`` (e.g. ``eng_Latn,swh_Latn``) on ``--sentences`` held-out devtest sentences each;
  writes ``curve-<langs>.json``.
* ``plan LANGS`` — one slimming plan per ``--blocks K`` value (script vocabulary + K blocks),
  each fully measured by :func:`polyprune.slimming.run.slim` without writing a model (sizes,
  held-out NLL per language with intervals, generation speed before/after); writes
  ``plan-<langs>-<K>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _dump(path: Path, obj) -> None:
    from polyprune.fileio import dumps

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(obj) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def _progress(name: str):
    from polyprune.progress import Progress

    t0 = time.perf_counter()
    return Progress(lambda f, m: print(f"{time.perf_counter() - t0:8.0f} s {100 * f:5.1f} % {m}", file=sys.stderr,
                                       flush=True), min_interval=30)


def check(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polyprune.datasets import flores_dir, sentences
    from polyprune.models import load_model

    folder = Path(args.target)
    src = load_model(args.model)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    keep = json.loads((folder / "kept_tokens.json").read_text())
    new_id = {o: n for n, o in enumerate(keep)}
    n_src = sum(p.numel() for p in src.model.parameters())
    n_new = sum(p.numel() for p in model.parameters())
    report = json.loads((folder / "report.json").read_text())
    langs = report["plan"]["languages"]
    root = f"flores:{flores_dir()}"
    out = {"params_source": n_src, "params_slim": n_new, "ratio": n_new / n_src, "languages": {}}
    for lang in langs:
        texts = sentences(root, lang, "dev")
        same = sum([new_id.get(i, -1) for i in src.tokenizer(t)["input_ids"]] == tok(t)["input_ids"] for t in texts)
        worst = 0.0
        for t in texts[:args.logit_sentences]:
            a = src.tokenizer(t)["input_ids"]
            with torch.inference_mode():
                ref = src.model(input_ids=torch.tensor([a])).logits[0][:, torch.tensor(keep)]
                got = model(input_ids=torch.tensor([tok(t)["input_ids"]])).logits[0]
            worst = max(worst, float((ref - got).abs().max()))
        out["languages"][lang] = {"dev_sentences": len(texts), "same_pieces": same,
                                  "logit_sentences": min(args.logit_sentences, len(texts)), "max_abs_logit_diff": worst}
    out["heldout"] = report.get("quality")
    return out


def curve(args) -> dict:
    from polyprune.models import load_model
    from polyprune.slimming.config import SlimConfig
    from polyprune.slimming.run import tradeoff

    loaded = load_model(args.model)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    cfg = SlimConfig(keep=args.target.split(","), eval_sentences=args.sentences, bootstrap=1000, curve_sizes=sizes)
    t0 = time.perf_counter()
    rows = tradeoff(loaded, cfg, _progress("curve"))
    return {"settings": cfg.to_dict(), "seconds": time.perf_counter() - t0, "rows": rows}


def plan(args) -> dict:
    from polyprune.models import load_model
    from polyprune.slimming.config import SlimConfig
    from polyprune.slimming.run import slim

    loaded = load_model(args.model)
    cfg = SlimConfig(keep=args.target.split(","), vocab=args.vocab, vocab_size=args.vocab_size,
                     remove_blocks=args.blocks, eval_sentences=args.sentences, speed_runs=3, speed_tokens=64,
                     bootstrap=1000, dtype=args.dtype)
    t0 = time.perf_counter()
    res = slim(loaded, cfg, _progress("plan"))
    return {"seconds": time.perf_counter() - t0, "report": res.report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["check", "curve", "plan"])
    ap.add_argument("target", help="check: the slimmed folder; curve/plan: kept languages, e.g. eng_Latn,swh_Latn")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--out", default="runs/bench_slim")
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--logit-sentences", type=int, default=100)
    ap.add_argument("--sizes", default=None)
    ap.add_argument("--vocab", default="script")
    ap.add_argument("--vocab-size", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = {"check": check, "curve": curve, "plan": plan}[args.part](args)
    res["wall_seconds"] = time.perf_counter() - t0
    tag = Path(args.target).name if args.part == "check" else args.target.replace(",", "+")
    extra = f"-{args.vocab}-{args.blocks}" if args.part == "plan" else ""
    _dump(Path(args.out) / f"{args.part}-{tag}{extra}.json", res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("rows", "report")}, indent=1, default=str)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
