"""Benchmark: how long the GUI event loop stalls while the demo model is pruned in a job.

Not a test (pytest does not collect ``bench_*.py``). Run it as a script::

    QT_QPA_PLATFORM=offscreen .venv/bin/python tests/benchmarks/bench_gui_stall.py --out stall.json

It loads the demo model (Gemma 3 270M), builds 32 calibration samples of 256 tokens (FLORES-200
dev, 4 shots, when ``$POLYPRUNE_DATA`` or ../shared/data has it; else the built-in pairs with
1 shot), then prunes 50% with Wanda through the application's :class:`~polyprune.jobs.JobRunner`
while a 5 ms ``QTimer`` in the GUI thread records when it fires. The progress signal is connected
to a progress bar in a visible main window, as in the application. Reported: the longest and the
99th-percentile gap between ticks while pruning (target: at most 50 ms), the tick count and the
pruning time, and for the five longest gaps what the job was doing and how much garbage
collection fell inside them (every collection is timed through ``gc.callbacks``), plus the load
average, since on a shared machine other processes competing for the cores cause stalls too.
``--threads N`` sets ``torch.set_num_threads`` (default: the application's choice, all cores but
one; ``--threads 0`` keeps torch's default) and ``--bare`` prunes through a plain ``JobRunner``
instead of the main window.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _calibration(tokenizer, samples: int, seq_len: int):
    from polyprune.calibration import build
    from polyprune.datasets import default_data_dir
    from polyprune.recipe import DemoConfig, demos_spec

    data = default_data_dir()
    flores = data / "flores200" if data is not None else None
    if flores is not None and (flores / "dev" / "eng_Latn.dev").exists():
        cfg = DemoConfig(source=f"flores:{flores}", src="eng_Latn", tgt="fra_Latn", shots=4,
                         samples=samples, seq_len=seq_len)
    else:
        cfg = DemoConfig(source="builtin", src="eng_Latn", tgt="fra_Latn", shots=1,
                         samples=min(samples, 36), seq_len=seq_len)
    return cfg, build(demos_spec(cfg), tokenizer)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and optionally write the numbers as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--tick-ms", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the run; default: as the application does "
                         "(polyprune.gui.app.gui_torch_threads: all cores but one); 0: torch's default")
    ap.add_argument("--bare", action="store_true",
                    help="prune through a bare JobRunner and a minimal window instead of the application's "
                         "main window and its Pruning panel")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = ap.parse_args(argv)

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import gc

    import numpy as np
    import torch
    from PySide6.QtCore import QElapsedTimer, Qt, QTimer
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QProgressBar, QVBoxLayout, QWidget

    from polyprune.jobs import JobRunner
    from polyprune.models import load_model
    from polyprune.pruning import prune
    from polyprune.recipe import PruneConfig, demos_spec

    if a.threads is None:
        from polyprune.gui.app import gui_torch_threads
        torch.set_num_threads(gui_torch_threads())
    elif a.threads > 0:
        torch.set_num_threads(a.threads)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    print(f"Loading {a.model} ...", flush=True)
    loaded = load_model(a.model)
    cfg, cal = _calibration(loaded.tokenizer, a.samples, a.seq_len)

    # Record every garbage collection (start, duration, thread) to tell GC pauses from other stalls.
    gc_events: list[tuple[float, float, str, int]] = []
    gc_start: dict = {}

    def gc_cb(phase, info):
        import threading as _t
        now = clock.nsecsElapsed() / 1e6
        if phase == "start":
            gc_start[_t.get_ident()] = now
        else:
            t0 = gc_start.pop(_t.get_ident(), now)
            gc_events.append((t0, now - t0, _t.current_thread().name, info.get("generation", -1)))
    print(f"Calibration: {len(cal)} samples x {cal.input_ids.shape[1]} tokens from {cfg.source} ({cfg.shots} shots)",
          flush=True)

    clock = QElapsedTimer()
    clock.start()
    ticks: list[float] = []
    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(a.tick_ms)
    timer.timeout.connect(lambda: ticks.append(clock.nsecsElapsed() / 1e6))
    outcome: dict = {}
    n_progress = [0]
    messages: list[tuple[float, str]] = []
    window: dict = {}

    def record(frac: float, msg: str):
        n_progress[0] += 1
        messages.append((clock.nsecsElapsed() / 1e6, msg))

    if a.bare:
        # A minimal window: a progress bar and a label fed by the job's signals.
        win = QMainWindow()
        body = QWidget()
        lay = QVBoxLayout(body)
        label = QLabel("Pruning ...")
        bar = QProgressBar()
        bar.setRange(0, 1000)
        lay.addWidget(label)
        lay.addWidget(bar)
        win.setCentralWidget(body)
        win.resize(600, 120)
        win.show()
        runner = JobRunner()

        def on_progress(frac: float, msg: str):
            record(frac, msg)
            bar.setValue(int(frac * 1000))
            label.setText(msg)

        def job(progress):
            t0 = time.perf_counter()
            res = prune(loaded.model, PruneConfig(method="wanda", sparsity=a.sparsity), cal, progress)
            return res, time.perf_counter() - t0

        def finished(value):
            res, secs = value
            outcome.update(prune_s=secs, overall_sparsity=res.overall)
            app.quit()

        def failed(problem, fix, tb):
            outcome.update(error=problem, traceback=tb)
            app.quit()

        runner.progress.connect(on_progress)

        def start_pruning():
            runner.start("Pruning", job, on_finished=finished, on_failed=failed)
    else:
        # The application's main window: the model is handed to its state, the demonstrations are
        # set in the Demonstrations panel, and the Pruning panel's own action prunes (progress bars,
        # log, status bar and plots update as for a user).
        import tempfile

        from PySide6.QtCore import QSettings

        from polyprune.gui.main_window import MainWindow

        tmp = tempfile.mkdtemp(prefix="polyprune-bench-")
        win = MainWindow(settings=QSettings(f"{tmp}/settings.ini", QSettings.IniFormat), restore=False)
        win.show()
        win.state.set_model(loaded)
        win.demos_panel.apply_config(cfg, None)
        win.state.store_calibration(demos_spec(cfg), cal)
        win.tabs.setCurrentWidget(win.pruning_panel)
        win.pruning_panel.sparsity.setValue(a.sparsity)
        runner = win.runner
        runner.progress.connect(record)

        def start_pruning():
            if runner.active_jobs():  # let the demonstrations preview finish first
                QTimer.singleShot(50, start_pruning)
                return
            window["start_ms"] = clock.nsecsElapsed() / 1e6
            job = win.pruning_panel.prune()
            if job is None:
                outcome.update(error=str(win.errors[-1:]), traceback="")
                app.quit()
                return

            def ended():
                res = win.state.prune_result
                if res is None:
                    outcome.update(error=f"pruning {job.status}: {job.error}", traceback=str(job.error))
                else:
                    outcome.update(prune_s=res.seconds, overall_sparsity=res.overall)
                app.quit()
            job.done.connect(ended)

    def begin():
        gc.callbacks.append(gc_cb)
        timer.start()
        window["start_ms"] = clock.nsecsElapsed() / 1e6
        start_pruning()

    QTimer.singleShot(200, begin)  # let the window show first
    app.exec()
    timer.stop()
    gc.callbacks.remove(gc_cb)
    runner.wait()
    if not a.bare:
        win.close()
    if "error" in outcome:
        print(outcome["traceback"], file=sys.stderr)
        return 1
    t = np.array([x for x in ticks if x >= window["start_ms"]])
    gaps = np.diff(t)
    worst = []
    for i in np.argsort(-gaps)[:5]:
        start, end = float(t[i]), float(t[i + 1])
        msg = next((m for ts, m in reversed(messages) if ts <= start), "")
        gcs = [e for e in gc_events if e[0] < end and e[0] + e[1] > start]
        worst.append({"gap_ms": round(float(gaps[i]), 2), "at_s": round((start - window["start_ms"]) / 1000, 2),
                      "during": msg, "gc_ms_inside": round(sum(e[1] for e in gcs), 2)})
    gc_pauses = [e[1] for e in gc_events]
    numbers = {
        "model": a.model,
        "mode": "bare JobRunner" if a.bare else "main window, Pruning panel",
        "calibration": {"source": cfg.source, "shots": cfg.shots, "samples": len(cal),
                        "tokens_per_sample": int(cal.input_ids.shape[1]), "real_tokens": cal.n_tokens},
        "sparsity": a.sparsity,
        "tick_interval_ms": a.tick_ms,
        "ticks": int(len(t)),
        "progress_signals": n_progress[0],
        "max_gap_ms": round(float(gaps.max()), 2),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 2),
        "p50_gap_ms": round(float(np.percentile(gaps, 50)), 2),
        "gaps_over_50ms": int((gaps > 50).sum()),
        "worst_gaps": worst,
        "gc_collections": len(gc_events),
        "gc_longest_ms": round(max(gc_pauses), 2) if gc_pauses else 0.0,
        "prune_s": round(outcome["prune_s"], 2),
        "overall_sparsity": outcome["overall_sparsity"],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "qt_platform": app.platformName(),
        "target_max_gap_ms": 50,
    }
    numbers["meets_target"] = numbers["max_gap_ms"] <= 50
    print(json.dumps(numbers, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
