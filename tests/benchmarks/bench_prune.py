"""Benchmark: Wanda pruning time against the floor of two dense block-by-block passes.

Any sequential method (Wanda, SparseGPT) must run every block at least twice over the
calibration set: once to gather statistics from the block's input and once, after pruning, to
produce the next block's input. This script times

* ``prune``: :func:`polyprune.pruning.prune` (capture + statistics pass + masks + output pass),
* ``floor``: block-input capture plus two plain passes of every block over the same batches,

on fresh copies of the same model, and reports the ratio and peak memory (process RSS high-water
mark; CUDA peak allocation on a GPU). Default: the demo model with eng→fra FLORES dev
demonstrations, 4 shots, 32 samples × 256 tokens, 50% unstructured (the core issue's setting).

    python tests/benchmarks/bench_prune.py --out bench_prune.json [--model demo] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def floor_pass(model, cal, batch_size: int, device: str) -> float:
    """Seconds for capture + two dense passes of every block (no hooks, no pruning)."""
    from polyprune.pruning.sequential import capture
    from polyprune.models import find_blocks

    _sync(device)
    t = time.perf_counter()
    inputs = capture(model, list(cal.batches(batch_size)))
    _, blocks = find_blocks(model)
    for i, block in enumerate(blocks):
        for b, h in enumerate(inputs.hidden):
            inputs.calls[i][b].call(block, h)  # pass 1 (statistics in a real method)
        for b, h in enumerate(inputs.hidden):
            inputs.hidden[b] = inputs.calls[i][b].call(block, h)  # pass 2 (next block's input)
    _sync(device)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--demos", default=None, help="default: flores:<shared>/flores200 if present, else builtin")
    ap.add_argument("--src", default="eng_Latn")
    ap.add_argument("--tgt", default="fra_Latn")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from polyprune.calibration import sources
    from polyprune.datasets import default_data_dir
    from polyprune.models import load_model
    from polyprune.pruning import prune, restore
    from polyprune.recipe import DemoConfig, PruneConfig

    demos = a.demos
    if demos is None:
        data = default_data_dir()
        demos = f"flores:{data / 'flores200'}" if data and (data / "flores200").is_dir() else "builtin"
    shots = a.shots if demos != "builtin" else 1
    samples = a.samples if demos != "builtin" else min(a.samples, 36)
    lm = load_model(a.model, a.device, a.dtype)
    cal = sources.demos(lm.tokenizer, DemoConfig(source=demos, src=a.src, tgt=a.tgt, shots=shots, samples=samples,
                                                          seq_len=a.seq_len))
    cfg = PruneConfig(method=a.method, sparsity=a.sparsity, pattern=a.pattern, batch_size=a.batch_size)
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    prune_times, floor_times = [], []
    floor_pass(lm.model, cal, a.batch_size, a.device)  # warm-up (allocator, kernels)
    for r in range(a.repeats):
        floor_times.append(floor_pass(lm.model, cal, a.batch_size, a.device))
        _sync(a.device)
        t = time.perf_counter()
        res = prune(lm.model, cfg, cal)
        _sync(a.device)
        prune_times.append(time.perf_counter() - t)
        restore(lm.model, res.records)  # bit-identical dense weights for the next repeat
        print(f"repeat {r + 1}: prune {prune_times[-1]:.2f} s, floor {floor_times[-1]:.2f} s", file=sys.stderr)

    p, f = statistics.median(prune_times), statistics.median(floor_times)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "model": a.model, "device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(),
        "calibration": {"source": demos, "src": a.src, "tgt": a.tgt, "shots": shots, "samples": len(cal),
                        "seq_len": a.seq_len, "real_tokens": cal.n_tokens},
        "pruning": {"method": a.method, "pattern": a.pattern, "sparsity": a.sparsity, "batch_size": a.batch_size},
        "prune_seconds": prune_times, "floor_seconds": floor_times,
        "prune_median_s": p, "floor_median_s": f, "ratio": p / f,
        "peak_rss_mb": rss_mb,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if a.device.startswith("cuda") else None,
        "target_ratio": 1.3,
    }
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
