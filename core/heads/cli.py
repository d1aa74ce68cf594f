"""``polyprune heads`` and ``polyprune remove-heads`` (wired into the main CLI with :func:`add_parsers`).

Examples::

    polyprune heads --model demo --languages eng_Latn,swh_Latn,zho_Hans --texts flores:DIR --split dev \\
        --samples 32 --seq-len 64 --cross --out runs/heads
    polyprune remove-heads --model demo --drop swh_Latn --keep eng_Latn,fra_Latn --cut soft --out runs/no-swh
    polyprune remove-heads --model demo --heads "3:0,2;7:1" --cut hard --nearest --out runs/cut
"""
from __future__ import annotations

import argparse
import sys

from ..arguments import add_model_args, load_from_args
from ..errors import PolypruneError
from ..languages import language_name
from ..progress import tqdm_progress
from .config import KINDS, RANK_BY, HeadsConfig, RemovalConfig
from .stats import agreement

_D = HeadsConfig()
_R = RemovalConfig()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _score_args(p: argparse.ArgumentParser, languages: bool = True) -> None:
    g = p.add_argument_group("sentences and scores")
    if languages:
        g.add_argument("--languages", default=",".join(_D.languages),
                       help="comma-separated FLORES-200 codes or names (default: %(default)s)")
    g.add_argument("--texts", default=_D.texts, help="flores (the data folder), flores:DIR, file:PATH (one sentence a line, "
                   "{lang} replaced by the code), builtin or auto (default: %(default)s)")
    g.add_argument("--split", default=_D.split, help="FLORES split the scores come from (default: %(default)s)")
    g.add_argument("--samples", type=int, default=_D.samples, help="first N sentences per language (default: %(default)s)")
    g.add_argument("--seq-len", type=int, default=_D.seq_len, help="tokens per sentence at most (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=_D.batch_size, help="sentences per forward pass (default: %(default)s)")
    g.add_argument("--kinds", default=",".join(_D.kinds), help=f"scores to compute: {', '.join(KINDS)} (default: %(default)s)")
    g.add_argument("--rank-by", default=_D.rank_by, choices=RANK_BY, help="score that ranks heads (auto: ablation when computed)")
    g.add_argument("--top-share", type=float, default=_D.top_share, help="q: share of all heads in a language's top set (default: %(default)s)")
    g.add_argument("--min-shared", type=int, default=_D.min_shared, help="m: a head in >= m top sets is shared (default: %(default)s)")
    g.add_argument("--cross-split", default=_D.cross_split, help="held-out split for effects (default: %(default)s)")
    g.add_argument("--cross-samples", type=int, default=_D.cross_samples, help="held-out sentences per language (default: %(default)s)")
    g.add_argument("--bootstrap", type=int, default=_D.bootstrap, help="bootstrap resamples for 95%% intervals (default: %(default)s)")
    g.add_argument("--seed", type=int, default=_D.seed)


def add_parsers(sub) -> None:
    """Add the ``heads`` and ``remove-heads`` subcommands to an ``argparse`` subparsers object."""
    p = sub.add_parser("heads", help="score attention heads per language, classify them, measure cross-effects",
                       description="Score every attention head for every language (ablation and taylor), classify heads as "
                                   "specific to one language or shared, and with --cross remove each language's specific "
                                   "heads and measure perplexity on every language (held-out sentences).")
    add_model_args(p)
    _score_args(p)
    p.add_argument("--cross", action="store_true", help="also measure the cross-effect matrix")
    p.add_argument("--out", required=True, help="output folder (head_scores.csv, .npz, settings, classification, cross-effects)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier heads output folder")
    p.set_defaults(func=run_heads)

    p = sub.add_parser("remove-heads", help="remove attention heads (explicit, or those of languages to drop) and export",
                       description="Remove attention heads and export the model as 'polyprune export' does, plus "
                                   "removed_heads.json. Give the heads (--heads \"BLOCK:H,H;BLOCK:H\") or the languages to "
                                   "drop and keep: Polyprune then proposes the heads in the top set of a dropped language "
                                   "and of no kept language.")
    add_model_args(p)
    w = p.add_argument_group("which heads")
    w.add_argument("--heads", default=None, help='explicit heads, e.g. "3:0,2;7:1" (blocks and heads from 0)')
    w.add_argument("--drop", default=None, help="languages the deployment does not need (comma-separated)")
    w.add_argument("--keep", default=None, help="languages that must stay intact (comma-separated)")
    w.add_argument("--scores", default=None, metavar="DIR", help="use the scores of an earlier 'polyprune heads' run")
    w.add_argument("--max-heads", type=int, default=_R.max_heads, help="propose at most N heads (0: no limit)")
    c = p.add_argument_group("cut")
    c.add_argument("--cut", default=_R.cut, choices=["soft", "hard"],
                   help="soft: zero the heads (same size, loads anywhere); hard: delete them (smaller stock checkpoint)")
    c.add_argument("--nearest", action="store_true", help="hard cut: take the nearest set a stock checkpoint can hold")
    c.add_argument("--no-measure", action="store_true", help="skip measuring the effect per language before export")
    _score_args(p, languages=False)
    p.add_argument("--out", required=True, help="export folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_remove_heads)


def _split(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def config_from_args(a) -> HeadsConfig:
    """The :class:`HeadsConfig` of parsed arguments (validated).

    Raises:
        PolypruneError: a bad value, naming the option.
    """
    removal = None
    if hasattr(a, "cut"):
        removal = RemovalConfig(heads=a.heads, drop=_split(a.drop), keep=_split(a.keep), cut=a.cut, nearest=a.nearest,
                                measure=not a.no_measure, max_heads=a.max_heads)
    langs = _split(getattr(a, "languages", None))
    if removal is not None:
        langs = list(dict.fromkeys(_split(a.drop) + _split(a.keep)))
    return HeadsConfig(languages=langs, texts=a.texts, split=a.split, samples=a.samples, seq_len=a.seq_len,
                       batch_size=a.batch_size, kinds=_split(a.kinds), rank_by=a.rank_by, top_share=a.top_share,
                       min_shared=a.min_shared, cross=bool(getattr(a, "cross", False)), cross_split=a.cross_split,
                       cross_samples=a.cross_samples, bootstrap=a.bootstrap, seed=a.seed,
                       removal=removal).validate(need_languages=removal is None)


def _name(code: str) -> str:
    return f"{language_name(code)} ({code})"


def print_summary(res) -> None:
    """Timings, specific heads per language and the cross-effect matrix, on stderr."""
    s, c = res.scores, res.classes
    L, H = s.shape
    _log(f"\n{L} blocks x {H} heads ({res.layout.n_kv_heads} KV heads, head_dim {res.layout.head_dim}); "
         f"{len(s.languages)} languages; ranked by {c.kind}; top set {c.k} heads (q = {c.top_share:g}), shared at m = {c.min_shared}")
    _log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.timings().items()))
    agree = agreement(s.ablation, s.taylor, s.languages, c.k)
    for k, lang in enumerate(s.languages):
        spec = c.specific[lang]
        rho = (f"  taylor vs ablation: Spearman {agree[lang]['spearman']:+.3f}, top-{c.k} overlap "
               f"{agree[lang]['top_overlap']:.2f}") if lang in agree else ""
        _log(f"  {_name(lang):<28} NLL {s.nll[k]:.4f}{rho}  specific: {', '.join(f'{l}:{h}' for l, h in spec) or 'none'}")
    _log(f"  shared: {', '.join(f'{l}:{h}' for l, h in c.shared) or 'none'}")
    x = res.cross
    if x is not None:
        _log(f"\ncross-effects on {x.split} (rows: specific heads removed; columns: language measured; "
             "NLL change in nats/token [95% interval])")
        _log(" " * 10 + "".join(f"{b:>26}" for b in x.languages))
        for a, la in enumerate(x.languages):
            if not x.removed[la]:
                _log(f"{la:<10}  (no specific heads: nothing removed)")
                continue
            cells = "".join(f"{x.delta[a, b]:>+9.4f} [{x.ci_low[a, b]:+.3f},{x.ci_high[a, b]:+.3f}]" for b in range(len(x.languages)))
            _log(f"{la:<10}{cells}   own - others {x.specificity[a]:+.4f} [{x.spec_low[a]:+.4f}, {x.spec_high[a]:+.4f}]")


def run_heads(a) -> int:
    """``polyprune heads``: score, classify, optionally cross-effects; write the folder ``--out``."""
    from ..fileio import check_output
    from .results import save_results
    from .run import score_heads

    cfg = config_from_args(a)
    check_output(a.out, overwrite=a.overwrite, what="heads output folder")
    prog = tqdm_progress("heads")
    try:
        loaded = load_from_args(a, prog.sub(0, 0.05))
        res = score_heads(loaded, cfg, prog.sub(0.05, 1.0))
        out = save_results(res, a.out, overwrite=a.overwrite, sources=[loaded.path])
    finally:
        prog.bar.close()
    print_summary(res)
    _log(f"\nWrote {out}/head_scores.csv, classification.csv" + (", cross_effects.csv" if res.cross is not None else ""))
    return 0


def run_remove_heads(a) -> int:
    """``polyprune remove-heads``: choose, measure, export (soft or hard) with ``removed_heads.json``."""
    from ..fileio import check_output
    from .results import load_results
    from .run import remove_heads

    cfg = config_from_args(a)
    scores = load_results(a.scores) if a.scores else None
    if a.heads and (a.drop or a.keep):
        raise PolypruneError("Both a head list and languages to drop/keep were given",
                             "give either --heads or --drop/--keep, not both")
    check_output(a.out, overwrite=a.overwrite, what="export folder")
    prog = tqdm_progress("remove-heads")
    try:
        loaded = load_from_args(a, prog.sub(0, 0.05))
        res = remove_heads(loaded, cfg, a.out, overwrite=a.overwrite, scores=scores, progress=prog.sub(0.05, 1.0))
    finally:
        prog.bar.close()
    from .removal import count_heads, describe_heads
    _log(f"\nRemoved {count_heads(res.heads)} heads ({res.cut} cut): {describe_heads(res.heads)}")
    if res.requested != res.heads:
        _log(f"  (asked for {describe_heads(res.requested)}; took the nearest set a stock checkpoint can hold)")
    if res.plan is not None:
        _log(f"  rule: {res.plan.rule}")
    for e in res.effects:
        _log(f"  {_name(e.language):<28} NLL {e.nll_base:.4f} -> {e.nll:.4f}  change {e.delta:+.4f} "
             f"[{e.ci_low:+.4f}, {e.ci_high:+.4f}]  perplexity x{e.ppl_ratio:.3f}  predicted {e.predicted:+.4f}")
    _log(f"Parameters {res.params_before:,} -> {res.params_after:,}; exported to {res.out}; "
         f"reload check: largest logit difference {res.reload_diff:.3g}")
    return 0
