"""Benchmark: head scoring times on the demo model (taylor, ablation, cross-effects) and their floors.

Times :func:`polyprune.heads.score_heads` stage by stage on the same sentences and compares each
stage with a floor measured here on those sentences (CPU seconds of this process, so other
processes on a shared machine do not distort the ratios; wall seconds are reported too):

* ``forward``: one plain forward pass (base model + LM head NLL) over every sentence;
* ``taylor``: one forward and one backward pass per batch for all heads (ratio to ``forward``:
  the cost of the backward pass, typically 2-3x);
* ``ablation``: block outputs are recorded once, then each head of block ``l`` replays blocks
  ``0..l-1`` and computes ``l..end`` + the LM head; the naive cost is ``L·H`` full forwards, so the
  ratio ``ablation / (L·H·forward)`` shows what the replay saves (little on Gemma 3, whose
  262,144-entry LM head costs more than its 18 blocks);
* ``cross``: ``K`` intact passes plus one pass per language with specific heads per language
  (``≤ K + K²`` forwards over the held-out sentences).

    nice -n 19 env OMP_NUM_THREADS=1 python tests/benchmarks/bench_heads.py --languages eng_Latn,swh_Latn \\
        --samples 2 --seq-len 24 --out bench_heads.json
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--languages", default="eng_Latn,swh_Latn")
    ap.add_argument("--texts", default="flores")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cross-samples", type=int, default=4)
    ap.add_argument("--out", default=None, help="write the numbers as JSON")
    a = ap.parse_args(argv)

    from polyprune.heads import HeadsConfig, find_heads, score_heads
    from polyprune.heads.scoring import language_sentence_nll, load_texts
    from polyprune.models import pad_id
    from polyprune.models import load_model

    langs = [x for x in a.languages.split(",") if x]
    loaded = load_model(a.model)
    model, tok = loaded.model, loaded.tokenizer
    cfg = HeadsConfig(languages=langs, texts=a.texts, samples=a.samples, seq_len=a.seq_len, batch_size=a.batch_size,
                      cross=True, cross_samples=a.cross_samples, bootstrap=200).validate()
    layout = find_heads(model)
    texts = load_texts(tok, cfg.texts, cfg.languages, cfg.samples, cfg.split, cfg.seq_len)
    pad = pad_id(model, tok)
    t, c = time.perf_counter(), time.process_time()
    for lt in texts:
        language_sentence_nll(model, layout, lt, cfg.batch_size, pad)
    forward, forward_cpu = time.perf_counter() - t, time.process_time() - c
    res = score_heads(loaded, cfg)
    tm, cpu = res.timings(), res.cpu_timings()
    L, H = layout.n_blocks, layout.n_heads
    tokens = int(res.scores.tokens.sum())
    out = {
        "model": a.model, "languages": langs, "samples": a.samples, "seq_len": a.seq_len, "tokens": tokens,
        "blocks": L, "heads": H, "torch_threads": torch.get_num_threads(),
        "forward_s": forward, "taylor_s": tm.get("taylor"), "ablation_s": tm.get("ablation"), "cross_s": tm.get("cross"),
        "forward_cpu_s": forward_cpu, "taylor_cpu_s": cpu.get("taylor"), "ablation_cpu_s": cpu.get("ablation"),
        "cross_cpu_s": cpu.get("cross"),
        "taylor_over_forward_cpu": cpu["taylor"] / forward_cpu,
        "ablation_over_naive_cpu": cpu["ablation"] / (L * H * forward_cpu),
        "ablation_cpu_s_per_token": cpu["ablation"] / tokens,
        "cross_forwards": len(langs) + sum(1 for v in res.classes.specific.values() if v) * len(langs),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
    }
    print(json.dumps(out, indent=2))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
