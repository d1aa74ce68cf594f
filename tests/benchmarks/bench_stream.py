"""Benchmark: block streaming against the in-memory engine, and the in-memory prune against its floor.

Issue 15. Three measurements, each in a fresh process so that peak memory is its own:

* ``run`` — one ``polyprune prune`` (:func:`polyprune.pipeline.run` on a recipe: load or stream,
  calibration, Wanda, export with its reload check), in memory or with ``--max-memory``: wall time,
  CPU time, peak RSS (``VmHWM``), the RSS before the model (Python + torch + transformers), CUDA
  peak on a GPU, seconds per block. ``--masks-like DIR`` compares the masks with another run's.
* ``floor`` — the in-memory prune against its floor (capture + two dense passes of every block over
  the same batches, no hooks): median of ``--repeats``, with where the rest of the time goes (Wanda
  statistics hooks, mask selection, masking). ``--sort-selection`` times the earlier full-sort mask
  selection for comparison (same masks).
* ``all`` — the set reported in issue 15: the demo model (16 x 256) and the 3.3 GB model
  (``make_big_model.py``) in memory and streamed, plus the floor ratio; writes JSON and a Markdown table.

    python tests/benchmarks/bench_stream.py all --big /tmp/polyprune-big --out /tmp/bench_stream
    python tests/benchmarks/bench_stream.py run --model demo --max-memory 0.5GB --out /tmp/x
    python tests/benchmarks/bench_stream.py floor --model demo --repeats 3

Run long jobs niced with one thread on shared machines (``nice -n 19 env OMP_NUM_THREADS=1``).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

def _flores() -> str:
    from polyprune.datasets import default_data_dir
    data = default_data_dir()
    return str(data / "flores200") if data is not None and (data / "flores200").is_dir() else ""


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _calibration(a) -> dict:
    source = f"flores:{a.flores}" if a.flores and Path(a.flores).is_dir() else "builtin"
    return {"kind": "monolingual", "lang": "eng_Latn", "source": source, "samples": a.samples, "seq_len": a.seq_len,
            "shots": 4}


def cmd_run(a) -> dict:
    """One prune run in this process (see the module docstring)."""
    from polyprune.pipeline import run
    from polyprune.progress import Progress
    from polyprune.recipe import EvalConfig, PruneConfig, Recipe

    base_rss = _status_mb("VmRSS")
    t_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    recipe = Recipe(model=a.model, device=a.device, dtype=a.dtype, calibration=_calibration(a),
                    pruning=PruneConfig(method=a.method, sparsity=a.sparsity, batch_size=a.batch_size),
                    evaluation=EvalConfig(), out=a.out, overwrite=True, max_memory=a.max_memory)
    marks: list[tuple[str, float]] = []

    def cb(frac, msg):
        if msg.startswith("Pruning block") or msg in ("Pruning done", "Capturing block inputs"):
            if not marks or marks[-1][0] != msg:
                marks.append((msg, time.perf_counter()))

    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    report = run(recipe, Progress(cb, 0.0), log=lambda m: print(m, file=sys.stderr))
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    if a.max_memory:
        blocks = report["memory"]["block_seconds"]
    else:
        blocks = [b[1] - a_[1] for a_, b in zip(marks, marks[1:]) if a_[0].startswith("Pruning block")]
    out = {"model": a.model, "mode": "streamed" if a.max_memory else "in memory", "max_memory": a.max_memory,
           "device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(),
           "calibration": f"{a.samples} x {a.seq_len}", "wall_s": wall, "prune_s": report["timings"].get("prune_s"),
           "cpu_user_s": ru.ru_utime - t_cpu0.ru_utime, "cpu_sys_s": ru.ru_stime - t_cpu0.ru_stime,
           "peak_rss_mb": _status_mb("VmHWM"), "rss_before_model_mb": base_rss,
           "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if a.device.startswith("cuda") else None,
           "block_s": blocks, "block_s_median": statistics.median(blocks) if blocks else None,
           "overall_sparsity": report["pruning"]["overall_sparsity"], "out": a.out}
    if a.max_memory:
        out["memory_plan_mb"] = report["memory"]["planned_bytes"] / 2 ** 20
        out["activations_on_disk"] = report["memory"]["activations_on_disk"]
    if a.masks_like:
        from polyprune.masks import load_masks
        m1 = load_masks(Path(a.out) / "masks.safetensors", unpack=False)
        m2 = load_masks(Path(a.masks_like) / "masks.safetensors", unpack=False)
        out["masks_identical_to"] = a.masks_like
        out["masks_identical"] = set(m1.packed) == set(m2.packed) and all(
            (m1.packed[k] == m2.packed[k]).all() for k in m1.packed)
    return out


def cmd_floor(a) -> dict:
    """In-memory prune against capture + two dense passes (see the module docstring)."""
    from polyprune.calibration import build
    from polyprune.models import find_blocks, load_model
    from polyprune.pruning import masking, prune, records, restore, wanda
    from polyprune.pruning.sequential import capture
    from polyprune.recipe import PruneConfig

    lm = load_model(a.model, a.device, a.dtype)
    cal = build(_calibration(a), lm.tokenizer)
    cfg = PruneConfig(method=a.method, sparsity=a.sparsity, batch_size=a.batch_size)
    spent = {"statistics hooks": 0.0, "mask selection": 0.0, "masking (apply, pack)": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    if a.sort_selection:
        def sort_rows(score, k):
            idx = torch.sort(score, dim=1, stable=True)[1][:, :k]
            return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
        masking.lowest_per_row = sort_rows
    wanda.ColumnStats.add = timed(wanda.ColumnStats.add, "statistics hooks")
    wanda.select_mask = timed(wanda.select_mask, "mask selection")
    wanda.apply_mask = timed(records.apply_mask, "masking (apply, pack)")

    @torch.inference_mode()
    def floor() -> float:
        c = time.process_time()
        t = time.perf_counter()
        inputs = capture(lm.model, list(cal.batches(a.batch_size)))
        _, blocks = find_blocks(lm.model)
        for i, block in enumerate(blocks):
            for b, h in enumerate(inputs.hidden):
                inputs.calls[i][b].call(block, h)
            for b, h in enumerate(inputs.hidden):
                inputs.hidden[b] = inputs.calls[i][b].call(block, h)
        fl_cpu.append(time.process_time() - c)
        return time.perf_counter() - t

    fl_cpu: list[float] = []
    pr_cpu: list[float] = []
    floor()  # warm-up
    fl_cpu.clear()
    fl, pr, parts = [], [], []
    for r in range(a.repeats):
        fl.append(floor())
        for k in spent:
            spent[k] = 0.0
        t, c = time.perf_counter(), time.process_time()
        res = prune(lm.model, cfg, cal)
        pr.append(time.perf_counter() - t)
        pr_cpu.append(time.process_time() - c)
        parts.append(dict(spent))
        restore(lm.model, res.records)
        print(f"repeat {r + 1}: prune {pr[-1]:.2f} s ({pr_cpu[-1]:.2f} s CPU), floor {fl[-1]:.2f} s "
              f"({fl_cpu[-1]:.2f} s CPU), {spent}", file=sys.stderr)
    f, p = statistics.median(fl), statistics.median(pr)
    return {"model": a.model, "device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(),
            "calibration": f"{len(cal)} x {a.seq_len} ({cal.n_tokens} real tokens)", "method": a.method,
            "selection": "full stable sort (before)" if a.sort_selection else "k-th smallest threshold, numpy introselect (after)",
            "prune_s": pr, "floor_s": fl, "prune_median_s": p, "floor_median_s": f, "ratio": p / f,
            "prune_cpu_s": pr_cpu, "floor_cpu_s": fl_cpu,
            "ratio_cpu": statistics.median(pr_cpu) / statistics.median(fl_cpu),
            "breakdown_median_s": {k: statistics.median(x[k] for x in parts) for k in spent}, "target_ratio": 1.1}


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__] + args + ["--json"]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cmd_all(a) -> dict:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--device", a.device, "--dtype", a.dtype]
    rows = []
    demo = ["--model", "demo", "--samples", "16", "--seq-len", "256"] + common
    rows.append(_child(["run"] + demo + ["--out", str(out / "demo-memory")]))
    rows.append(_child(["run"] + demo + ["--max-memory", a.demo_budget, "--out", str(out / "demo-streamed"),
                                         "--masks-like", str(out / "demo-memory")]))
    if a.big:
        big = ["--model", a.big, "--samples", str(a.big_samples), "--seq-len", "256"] + common
        rows.append(_child(["run"] + big + ["--out", str(out / "big-memory")]))
        rows.append(_child(["run"] + big + ["--max-memory", a.big_budget, "--out", str(out / "big-streamed"),
                                            "--masks-like", str(out / "big-memory")]))
    floors = [_child(["floor", "--model", "demo", "--samples", "16", "--seq-len", "256", "--repeats", str(a.repeats)]
                     + common + extra) for extra in ([], ["--sort-selection"])]
    result = {"runs": rows, "floor": floors}
    (out / "bench_stream.json").write_text(json.dumps(result, indent=2))
    lines = ["| model | mode | budget | wall s | CPU s | peak RSS MB | RSS before model MB | median s/block | masks = in memory |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['model']).name} | {r['mode']} | {r['max_memory'] or '-'} | {r['wall_s']:.0f} | "
                     f"{r['cpu_user_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['rss_before_model_mb']:.0f} | "
                     f"{r['block_s_median']:.2f} | {r.get('masks_identical', '-')} |")
    for f in floors:
        lines.append(f"\nfloor ({f['selection']}): prune {f['prune_median_s']:.2f} s, floor {f['floor_median_s']:.2f} s, "
                     f"ratio {f['ratio']:.2f}, by CPU time {f['ratio_cpu']:.2f} (target 1.1); breakdown {f['breakdown_median_s']}")
    (out / "bench_stream.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "floor", "all"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--method", default="wanda")
        p.add_argument("--sparsity", type=float, default=0.5)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--flores", default=_flores())
        p.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")
        if name in ("run", "floor"):
            p.add_argument("--model", default="demo")
            p.add_argument("--samples", type=int, default=16)
            p.add_argument("--seq-len", type=int, default=256)
        if name == "run":
            p.add_argument("--max-memory", default=None)
            p.add_argument("--out", required=True)
            p.add_argument("--masks-like", default=None)
        if name == "floor":
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--sort-selection", action="store_true")
        if name == "all":
            p.add_argument("--big", default=None, help="the model of make_big_model.py")
            p.add_argument("--big-samples", type=int, default=8)
            p.add_argument("--big-budget", default="1.5GB")
            p.add_argument("--demo-budget", default="0.5GB")
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    res = {"run": cmd_run, "floor": cmd_floor, "all": cmd_all}[a.cmd](a)
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
