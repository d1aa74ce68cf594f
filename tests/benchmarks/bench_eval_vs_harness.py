"""Benchmark: our multiple-choice evaluation against lm-evaluation-harness, same model, same data.

Not a test (pytest does not collect ``bench_*.py``). Run it as a script::

    .venv/bin/python tests/benchmarks/bench_eval_vs_harness.py --limit 200 --out bench_eval.json
    # options: --model DIR (default: the demo model, Gemma 3 270M) --tasks xnli
    #          --languages en,fr,sw --data DIR --batch-size 16 --threads N --repeats R --skip-harness

Needs ``lm-eval`` (``pip install lm-eval==0.4.13``; it does not upgrade torch). For every
``(task, language)`` it writes a local harness task configuration into a temporary folder: a
YAML that ``include``s the harness's own task file (e.g. ``lm_eval/tasks/xnli/xnli_en.yaml``, so
``doc_to_text``/``doc_to_choice``/``process_docs``/``target_delimiter`` are the harness's) and
replaces only the dataset with ``dataset_path: json`` and ``data_files`` pointing at
``<data>/<task>/<split>.<lang>.jsonl``. The harness runs through its Python API
(``lm_eval.simple_evaluate`` on an ``HFLM`` loaded from the same model folder, float32, CPU
unless CUDA is available, ``batch_size=B`` requests, ``limit=N``, ``log_samples=True``), and ours
through :func:`polyprune.evaluation.evaluate_tasks` on :func:`polyprune.models.load_model` of the same
folder, with ``batch_size=B`` documents (each with all its choices: 3B XNLI requests per
forward pass; our peak memory is bounded by the engine's LM-head chunk of at most 2,048 scored
rows, not by the batch, whereas the harness forms ``[B, tokens, vocab]`` float32 logits and
their log-softmax). Reported per language: the accuracies under the same names (``acc``,
``acc_norm`` by characters, ``acc_bytes`` by bytes), whether
they are identical, per-document prediction agreement and the largest absolute log-likelihood
difference; both evaluation wall times (model loading excluded,
reported separately; with ``--repeats R`` both run alternately R times and the minimum of each
counts, which damps a shared machine's noise) and ``ratio = ours / harness`` (target: at most
0.5). On a CPU shared with other jobs, ``--threads 1`` avoids OpenMP oversubscription, which
distorts both timings. Exit status 1 when an accuracy differs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

#: Our task name -> the harness's task-file name pattern inside ``lm_eval/tasks``.
HARNESS_FILES = {
    "xnli": "xnli/xnli_{lang}.yaml",
    "pawsx": "paws-x/paws_{lang}.yaml",
    "xcopa": "xcopa/default_{lang}.yaml",
    "xstorycloze": "xstorycloze/default_{lang}.yaml",
    "xwinograd": "xwinograd/xwinograd_{lang}.yaml",
}


def check_lm_eval():
    """Import ``lm_eval`` or exit with the install command."""
    try:
        import lm_eval  # noqa: F401
        return lm_eval
    except ImportError:
        sys.exit("lm-evaluation-harness is not installed: pip install lm-eval==0.4.13 "
                 "(into this virtualenv; it keeps the installed torch)")


def harness_task_name(task: str, lang: str) -> str:
    return f"pp_{task}_{lang}"


def write_harness_configs(tmpdir: Path, task_langs: list[tuple[str, str]], files: dict) -> list[str]:
    """Write one YAML per ``(task, lang)`` into ``tmpdir``; returns the harness task names.

    ``files[(task, lang)]`` is the local JSON Lines file. The YAML includes the harness's own
    task file by absolute path (its ``!function`` references resolve next to that file) and
    overrides only the dataset (``json`` with ``data_files``) and the splits.
    """
    import yaml
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    names = []
    for task, lang in task_langs:
        inc = root / HARNESS_FILES[task].format(lang=lang)
        if not inc.is_file():
            raise FileNotFoundError(f"harness task file not found: {inc}")
        name = harness_task_name(task, lang)
        cfg = {"include": str(inc), "task": name, "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": {"test": str(files[(task, lang)])}},
               "training_split": None, "validation_split": None, "test_split": "test",
               "fewshot_split": None,
               # the harness's tasks list only acc; ask for its char- and byte-normalised ones too
               "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                               for m in ("acc", "acc_norm", "acc_bytes")]}
        (tmpdir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        names.append(name)
    return names


def run_harness(lm, task_langs, files, limit, tmpdir: Path) -> tuple[dict, float]:
    """Run the harness on ``task_langs``; returns ``({(task, lang): info}, seconds)``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = write_harness_configs(tmpdir, task_langs, files)
    tm = TaskManager(include_path=str(tmpdir), include_defaults=False)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=tm,
                                  log_samples=True, bootstrap_iters=0, num_fewshot=0)
    seconds = time.perf_counter() - t0
    info = {}
    for (task, lang), name in zip(task_langs, names):
        res = out["results"][name]
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        info[(task, lang)] = {"acc": res.get("acc,none"), "acc_norm": res.get("acc_norm,none"),
                              "acc_bytes": res.get("acc_bytes,none"),
                              "n": len(samples), "lls": lls,
                              "pred": [max(range(len(x)), key=lambda j: x[j]) for x in lls]}
    return info, seconds


def compare(ours: dict, theirs: dict) -> dict:
    """Per-language comparison rows."""
    rows = {}
    for key, h in theirs.items():
        o = ours[key]
        agree = sum(a == b for a, b in zip(o["pred"], h["pred"]))
        max_diff = max((abs(a - b) for x, y in zip(o["lls"], h["lls"]) for a, b in zip(x, y)), default=0.0)
        rows[f"{key[0]}/{key[1]}"] = {
            "n": o["n"], "n_harness": h["n"],
            "acc_ours": o["acc"], "acc_harness": h["acc"], "acc_identical": o["acc"] == h["acc"],
            "acc_norm_ours": o.get("acc_norm"), "acc_norm_harness": h["acc_norm"],
            "acc_norm_identical": o.get("acc_norm") == h["acc_norm"],
            "acc_bytes_ours": o.get("acc_bytes"), "acc_bytes_harness": h["acc_bytes"],
            "acc_bytes_identical": o.get("acc_bytes") == h["acc_bytes"],
            "predictions_agree": f"{agree}/{len(h['pred'])}", "max_abs_ll_diff": max_diff}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the demo model)")
    ap.add_argument("--tasks", default="xnli")
    ap.add_argument("--languages", default="en,fr,sw")
    ap.add_argument("--data", default=None, help="data folder (default: $POLYPRUNE_DATA or ../shared/data)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run ours and the harness alternately this many times; report the minimum of each")
    ap.add_argument("--skip-harness", action="store_true", help="time ours only")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    a = ap.parse_args(argv)

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from polyprune.models import ensure_demo_model, load_model
    from polyprune.evaluation import get_task, evaluate_tasks

    data = Path(a.data or os.environ.get("POLYPRUNE_DATA")
                or Path(__file__).resolve().parents[3] / "shared" / "data")
    if not data.is_dir():
        sys.exit(f"data folder not found: {data} (set --data or POLYPRUNE_DATA)")
    model_dir = Path(a.model) if a.model else ensure_demo_model()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    langs = [s.strip() for s in a.languages.split(",") if s.strip()]
    task_langs, files = [], {}
    for t in tasks:
        task = get_task(t)
        for lang in langs:
            code = task.language(lang)
            task_langs.append((task.name, code))
            files[(task.name, code)] = task.file(data, code, a.split)

    t0 = time.perf_counter()
    loaded = load_model(str(model_dir), device=device, dtype="float32")
    load_ours = time.perf_counter() - t0
    lm = load_h = None
    if not a.skip_harness:
        check_lm_eval()
        from lm_eval.models.huggingface import HFLM

        t0 = time.perf_counter()
        lm = HFLM(pretrained=str(model_dir), dtype="float32", batch_size=a.batch_size, device=device)
        load_h = time.perf_counter() - t0

    def run_ours():
        names = list(dict.fromkeys(n for n, _ in task_langs))
        return evaluate_tasks(loaded.model, loaded.tokenizer, names,
                              {n: [c for m, c in task_langs if m == n] for n in names}, data,
                              split=a.split, limit=a.limit, batch_size=a.batch_size,
                              metrics=("acc", "acc_norm", "acc_bytes"), bootstrap=0,
                              log_samples=True, model_name=str(model_dir))

    # alternate ours and the harness `repeats` times; the minimum of each is reported
    ours_times, harness_times, theirs = [], [], None
    for rep in range(a.repeats):
        t0 = time.perf_counter()
        results = run_ours()
        ours_times.append(time.perf_counter() - t0)
        print(f"[{rep + 1}/{a.repeats}] ours: {ours_times[-1]:.1f} s", flush=True)
        if lm is not None:
            with tempfile.TemporaryDirectory() as tmp:
                theirs, sec = run_harness(lm, task_langs, files, a.limit, Path(tmp))
            harness_times.append(sec)
            print(f"[{rep + 1}/{a.repeats}] harness: {sec:.1f} s", flush=True)
    ours = {}
    for r in results:
        if r.metric == "error":
            sys.exit(f"our evaluation failed for {r.task}/{r.language}: {r.error}")
        d = ours.setdefault((r.task, r.language), {"n": r.n})
        d[r.metric] = r.value
        if r.metric == "acc":
            d["lls"], d["pred"] = r.extra["lls"], r.extra["pred"]
    ours_s = min(ours_times)
    report = {"model": str(model_dir), "device": device, "tasks": tasks, "languages": langs,
              "limit": a.limit, "batch_size": a.batch_size, "torch_threads": torch.get_num_threads(),
              "repeats": a.repeats, "python": platform.python_version(), "torch": torch.__version__,
              "ours_seconds": ours_s, "ours_all_seconds": ours_times, "ours_load_seconds": load_ours}
    print(f"ours: {ours_s:.1f} s (min of {len(ours_times)}; load {load_ours:.1f} s)")
    for key, d in ours.items():
        print(f"  {key[0]}/{key[1]}: acc {d['acc']:.4f} acc_norm (chars) {d['acc_norm']:.4f} "
              f"acc_bytes {d['acc_bytes']:.4f} (n={d['n']})")
    status = 0
    if lm is not None:
        import lm_eval

        harness_s = min(harness_times)
        rows = compare(ours, theirs)
        ratio = ours_s / harness_s if harness_s > 0 else float("nan")
        report.update(harness_seconds=harness_s, harness_all_seconds=harness_times,
                      harness_load_seconds=load_h, ratio=ratio,
                      lm_eval=getattr(lm_eval, "__version__", "?"), per_language=rows,
                      all_identical=all(r["acc_identical"] and r["acc_norm_identical"] and r["acc_bytes_identical"]
                                        for r in rows.values()))
        print(f"harness: {harness_s:.1f} s (min of {len(harness_times)}; load {load_h:.1f} s); "
              f"ratio ours/harness = {ratio:.3f}")
        for k, r in rows.items():
            print(f"  {k}: acc ours {r['acc_ours']:.4f} harness {r['acc_harness']:.4f} "
                  f"identical={r['acc_identical']}; acc_norm(chars) identical={r['acc_norm_identical']}; "
                  f"acc_bytes identical={r['acc_bytes_identical']}; predictions {r['predictions_agree']} "
                  f"max |dll| {r['max_abs_ll_diff']:.2e}")
        status = 0 if report["all_identical"] else 1
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {a.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
