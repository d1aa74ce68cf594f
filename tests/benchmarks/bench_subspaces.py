"""The finding of issue 13: does Lens help Swahili and Hindi on the demo model, and does English stay?

Four models, each evaluated on the same items: the dense demo model, the dense model after Lens,
the model after 50 % Wanda pruning, and the pruned model after Lens (zeros kept). Lens: central
eng_Latn, targets swh_Latn and hin_Deva together, every other setting the paper's default
(:class:`polyprune.subspaces.LensConfig`). Evaluation: XNLI and XStoryCloze (en, sw, hi; acc and
acc_norm) and FLORES-200 devtest perplexity (eng_Latn, swh_Latn, hin_Deva), first ``--limit``
items each; every model after Lens is compared with the model before it by a paired bootstrap of
the difference (same resampled items for both, 1000 resamples).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_subspaces.py \\
        --out runs/lens_finding --limit 200

Each model's item scores are written to ``OUT/<model>/items.json`` as soon as it is evaluated; a
rerun skips the models already evaluated (Lens and pruning are deterministic and run again).
Options ``--lr``, ``--top-blocks``, ``--align-weight``, ``--separate-weight`` change Lens; copy
``dense/items.json`` of an earlier run into a new OUT to reuse the dense evaluation.

Writes ``OUT/paired.csv``, ``OUT/paired.md``, ``OUT/lens_<model>.json`` and ``OUT/paired.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import zlib
from pathlib import Path

import torch

from polyprune.calibration import build
from polyprune.datasets import default_data_dir
from polyprune.models import load_model
from polyprune.pruning import PruneConfig, prune
from polyprune.study import paired_difference
from polyprune.subspaces import LensConfig, apply_lens
from polyprune.evaluation import evaluate_tasks

TASKS = {"xnli": ["en", "sw", "hi"], "xstorycloze": ["en", "sw", "hi"],
         "flores_ppl": ["eng_Latn", "swh_Latn", "hin_Deva"]}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def evaluate(loaded, data, limit: int) -> dict:
    """``{task|language|metric: {"value", "correct" | ("nll", "tokens")}}`` on the first ``limit`` items."""
    rows = evaluate_tasks(loaded.model, loaded.tokenizer, list(TASKS), TASKS, data, limit=limit, batch_size=16,
                          metrics=("acc", "acc_norm"), bootstrap=0, item_scores=True, model_name="demo")
    out = {}
    for r in rows:
        if r.error:
            raise SystemExit(f"{r.task} {r.language}: {r.error}")
        if r.metric == "rankc":
            continue
        item = {"value": r.value, "n": r.n}
        if "item_correct" in r.extra:
            item["correct"] = r.extra["item_correct"]
        else:
            item["nll"], item["tokens"] = r.extra["item_nll"], r.extra["item_tokens"]
        out[f"{r.task}|{r.language}|{r.metric}"] = item
    return out


def evaluated(out: Path, name: str, loaded, data, limit: int) -> dict:
    f = out / name / "items.json"
    if f.is_file():
        log(f"{name}: evaluation found in {f}")
        return json.loads(f.read_text())
    t = time.monotonic()
    items = evaluate(loaded, data, limit)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(items))
    log(f"{name}: evaluated in {time.monotonic() - t:.0f} s")
    return items


def lens(loaded, out: Path, name: str, cfg: LensConfig):
    t = time.monotonic()
    res = apply_lens(loaded, cfg)
    (out / f"lens_{name}.json").write_text(json.dumps(res.summary() | {"history": res.history}, indent=1))
    log(f"Lens on {name}: blocks {res.blocks}, {res.steps} steps, {time.monotonic() - t:.0f} s; "
        f"before {res.before}; after {res.after}")
    return res


def paired(after: dict, before: dict, comparison: str) -> list[dict]:
    rows = []
    for key, a in after.items():
        b = before[key]
        task, lang, metric = key.split("|")
        diff, lo, hi = paired_difference(a, b, iters=1000, seed=[0, zlib.crc32(key.encode())])
        rows.append({"comparison": comparison, "task": task, "language": lang, "metric": metric, "n": a["n"],
                     "before": b["value"], "after": a["value"], "difference": diff, "ci_low": lo, "ci_high": hi})
    return rows


def figure(rows: list[dict], path: Path) -> None:
    """Paired differences with 95 % intervals, one panel per comparison (accuracy in points, perplexity)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import numpy as np
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])  # noqa: F841
    win = pg.GraphicsLayoutWidget()
    win.setBackground("w")
    win.resize(1400, 800)
    comparisons = list(dict.fromkeys(r["comparison"] for r in rows))
    for c, comp in enumerate(comparisons):
        for m, (metric, scale, unit) in enumerate([("acc", 100, "accuracy change (points)"),
                                                   ("perplexity", 1, "perplexity change")]):
            sel = [r for r in rows if r["comparison"] == comp and r["metric"] == metric]
            p = win.addPlot(row=m, col=c, title=f"{comp}: {metric}")
            x = np.arange(len(sel))
            y = np.array([r["difference"] for r in sel]) * scale
            lo = y - np.array([r["ci_low"] for r in sel]) * scale
            hi = np.array([r["ci_high"] for r in sel]) * scale - y
            p.addItem(pg.BarGraphItem(x=x, height=y, width=0.6, brush="#4C78A8"))
            p.addItem(pg.ErrorBarItem(x=x, y=y, top=hi, bottom=lo, beam=0.2, pen=pg.mkPen("#222", width=1.5)))
            p.addLine(y=0, pen=pg.mkPen("#888"))
            p.getAxis("bottom").setTicks([[(i, f"{r['task'].replace('flores_ppl', 'flores')} {r['language']}")
                                           for i, r in enumerate(sel)]])
            p.getAxis("bottom").setStyle(hideOverlappingLabels=False)
            for ax in ("left", "bottom"):
                p.getAxis(ax).setTextPen("#333")
            p.setLabel("left", unit)
    win.grab().save(str(path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/lens_finding")
    ap.add_argument("--limit", type=int, default=200, help="items per task and language (FLORES sentences too)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--skip-pruned", action="store_true")
    ap.add_argument("--figure-only", action="store_true", help="redraw OUT/paired.png from OUT/paired.csv")
    ap.add_argument("--lr", type=float, default=None, help="Lens learning rate (default: the paper's)")
    ap.add_argument("--top-blocks", type=int, default=None)
    ap.add_argument("--align-weight", type=float, default=None)
    ap.add_argument("--separate-weight", type=float, default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.figure_only:
        with open(out / "paired.csv", newline="") as fh:
            rows = [{k: (float(v) if k in ("difference", "ci_low", "ci_high") else v) for k, v in r.items()}
                    for r in csv.DictReader(fh)]
        figure(rows, out / "paired.png")
        return 0
    data = Path(a.data) if a.data else default_data_dir()
    loaded = load_model("demo")
    cfg = LensConfig(central="eng_Latn", targets=["swh_Latn", "hin_Deva"], texts=f"flores:{data / 'flores200'}",
                     space_texts=f"flores:{data / 'flores200'}", top_blocks=a.top_blocks)
    for name in ("lr", "align_weight", "separate_weight"):
        if getattr(a, name) is not None:
            setattr(cfg, name, getattr(a, name))
    (out / "settings.json").write_text(json.dumps({"limit": a.limit, "tasks": TASKS, "lens": cfg.validate().to_dict(),
                                                   "torch_threads": torch.get_num_threads()}, indent=1))
    rows = []
    dense = evaluated(out, "dense", loaded, data, a.limit)
    res = lens(loaded, out, "dense", cfg)
    rows += paired(evaluated(out, "dense_lens", loaded, data, a.limit), dense, "Lens vs dense")
    res.restore()
    if not a.skip_pruned:
        cal = build({"kind": "monolingual", "lang": "eng_Latn", "samples": 32, "seq_len": 256}, loaded.tokenizer)
        t = time.monotonic()
        pr = prune(loaded.model, PruneConfig(method="wanda", sparsity=0.5), cal)
        log(f"Wanda 50 %: {pr.overall:.4f} of the pruned layers' weights removed in {time.monotonic() - t:.0f} s")
        pruned = evaluated(out, "wanda50", loaded, data, a.limit)
        lens(loaded, out, "wanda50", cfg)
        rows += paired(evaluated(out, "wanda50_lens", loaded, data, a.limit), pruned, "Lens vs Wanda 50 %")
    with open(out / "paired.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| comparison | task | language | metric | n | before | after | difference [95 % CI] |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = r["metric"] != "perplexity"
        f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
        lines.append(f"| {r['comparison']} | {r['task']} | {r['language']} | {r['metric']} | {r['n']} | {f(r['before'])} | "
                     f"{f(r['after'])} | {'+' if r['difference'] >= 0 else ''}{f(r['difference'])} "
                     f"[{f(r['ci_low'])}, {f(r['ci_high'])}] |")
    (out / "paired.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(rows, out / "paired.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
