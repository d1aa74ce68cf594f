"""``polyprune subspaces`` and ``polyprune lens``.

    polyprune subspaces --model M --languages eng_Latn,swh_Latn,hin_Deva --texts flores:DIR \\
        --split dev --samples 300 --seq-len 64 --out DIR
    polyprune lens --model M --central eng_Latn --target swh_Latn[,...] --top-blocks K \\
        --texts flores:DIR --samples 200 --out DIR

``subspaces`` writes ``DIR/subspaces.npz`` (arrays ``languages``, ``means``, ``agnostic``,
``specific``, the per-sentence coordinates and the settings as JSON), ``DIR/subspaces.json``
(settings and per-block summary), ``DIR/blocks.csv`` and ``DIR/distances.csv``. ``lens`` writes
an export as ``polyprune export`` does, with ``lens_config.json``, ``lens_history.csv`` and
``subspaces.npz`` inside and a Lens section in the model card.

Heavy modules are imported inside the commands, so ``polyprune --help`` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path

from polyprune.arguments import add_model_args, load_from_args
from polyprune.fileio import check_output, output_folder
from polyprune.languages import resolve_language
from polyprune.progress import tqdm_progress

from .config import LensConfig, SubspacesConfig

SUB_DEFAULTS = SubspacesConfig()
LENS_DEFAULTS = LensConfig()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def add_parsers(subparsers) -> None:
    """Add the ``subspaces`` and ``lens`` subcommands to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("subspaces", help="measure language subspaces per block (Lens) and write DIR/subspaces.npz",
                              description="Per block: each language's mean last-token representation, the "
                                          "language-agnostic vector and the language-specific subspace "
                                          "(Zhao et al. 2024, Lens).")
    add_model_args(p, dtype=None)
    p.add_argument("--languages", required=True, help="at least two FLORES-200 codes or names, comma-separated")
    p.add_argument("--central", default=None,
                   help="language directions are measured from (default: eng_Latn if given, else the first)")
    p.add_argument("--texts", default=SUB_DEFAULTS.texts,
                   help="flores (the data folder), flores:DIR, builtin, or file:PATH with {lang} (one sentence a line)")
    p.add_argument("--split", default=SUB_DEFAULTS.split, choices=["dev", "devtest"])
    p.add_argument("--samples", type=int, default=SUB_DEFAULTS.samples, help="first N sentences per language")
    p.add_argument("--seq-len", type=int, default=SUB_DEFAULTS.seq_len, help="tokens kept per sentence")
    p.add_argument("--batch-size", type=int, default=SUB_DEFAULTS.batch_size)
    p.add_argument("--out", required=True, help="output folder (DIR/subspaces.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier Polyprune output folder")
    p.set_defaults(func=run_subspaces)

    p = subparsers.add_parser("lens", help="improve target languages by fine-tuning the top blocks (Lens) and export",
                              description="Lens (Zhao et al. 2024): fine-tune only the top blocks so the targets "
                                          "align with the central language in the language-agnostic direction and "
                                          "move along their own direction in the language-specific subspace, "
                                          "while the central language is retained.")
    add_model_args(p, dtype=None)
    p.add_argument("--central", default=LENS_DEFAULTS.central, help="central language (the paper: English)")
    p.add_argument("--target", required=True, help="target language(s), comma-separated")
    p.add_argument("--top-blocks", type=int, default=None,
                   help="how many of the last blocks train (default: 2 of 32 scaled to the model, at least 1)")
    p.add_argument("--texts", default=LENS_DEFAULTS.texts,
                   help="parallel training sentences: flores, flores:DIR, builtin, file:PATH with {lang}, or "
                        "file:PATH.jsonl|.tsv|.csv with a column per language code")
    p.add_argument("--split", default=LENS_DEFAULTS.split, choices=["dev", "devtest"])
    p.add_argument("--samples", type=int, default=LENS_DEFAULTS.samples, help="training examples (the paper: 200)")
    p.add_argument("--seq-len", type=int, default=LENS_DEFAULTS.seq_len, help="tokens kept per training sentence")
    g = p.add_argument_group("subspaces")
    g.add_argument("--subspaces", default=None, metavar="FILE", help="use a saved subspaces.npz instead of measuring")
    g.add_argument("--space-languages", default=None, help="further languages for the subspaces")
    g.add_argument("--space-texts", default=None, help="sentences for the subspaces (default: --texts)")
    g.add_argument("--space-samples", type=int, default=LENS_DEFAULTS.space_samples)
    g.add_argument("--space-seq-len", type=int, default=LENS_DEFAULTS.space_seq_len)
    g = p.add_argument_group("training")
    g.add_argument("--lr", type=float, default=LENS_DEFAULTS.lr)
    g.add_argument("--epochs", type=int, default=LENS_DEFAULTS.epochs)
    g.add_argument("--accumulation", type=int, default=LENS_DEFAULTS.accumulation, help="examples per optimizer step")
    g.add_argument("--warmup", type=float, default=LENS_DEFAULTS.warmup, help="share of steps for linear warm-up")
    g.add_argument("--weight-decay", type=float, default=LENS_DEFAULTS.weight_decay)
    g.add_argument("--max-grad-norm", type=float, default=LENS_DEFAULTS.max_grad_norm, help="0: no clipping")
    g.add_argument("--retain-weight", type=float, default=LENS_DEFAULTS.retain_weight)
    g.add_argument("--align-weight", type=float, default=LENS_DEFAULTS.align_weight)
    g.add_argument("--separate-weight", type=float, default=LENS_DEFAULTS.separate_weight)
    g.add_argument("--direction-scale", type=float, default=LENS_DEFAULTS.direction_scale)
    g.add_argument("--no-keep-zeros", action="store_true", help="let weights that are exactly zero train too")
    g.add_argument("--no-shuffle", action="store_true")
    g.add_argument("--seed", type=int, default=LENS_DEFAULTS.seed)
    p.add_argument("--out", required=True, help="export folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_lens)


def subspaces_config(a) -> SubspacesConfig:
    """The :class:`SubspacesConfig` of ``polyprune subspaces`` arguments, validated."""
    langs = [resolve_language(x) for x in _list(a.languages)]
    central = a.central or ("eng_Latn" if "eng_Latn" in langs or not langs else langs[0])
    return SubspacesConfig(languages=langs, central=central, texts=a.texts, split=a.split, samples=a.samples,
                           seq_len=a.seq_len, batch_size=a.batch_size).validate()


def lens_config(a) -> LensConfig:
    """The :class:`LensConfig` of ``polyprune lens`` arguments, validated."""
    return LensConfig(central=a.central, targets=_list(a.target), top_blocks=a.top_blocks, texts=a.texts,
                      split=a.split, samples=a.samples, seq_len=a.seq_len,
                      space_languages=_list(a.space_languages), space_texts=a.space_texts,
                      space_samples=a.space_samples, space_seq_len=a.space_seq_len, subspaces=a.subspaces,
                      lr=a.lr, epochs=a.epochs, accumulation=a.accumulation, warmup=a.warmup,
                      weight_decay=a.weight_decay, max_grad_norm=a.max_grad_norm, retain_weight=a.retain_weight,
                      align_weight=a.align_weight, separate_weight=a.separate_weight,
                      direction_scale=a.direction_scale, keep_zeros=not a.no_keep_zeros,
                      shuffle=not a.no_shuffle, seed=a.seed).validate()


def run_subspaces(a) -> int:
    """``polyprune subspaces``: measure and write ``--out/subspaces.npz``.

    Raises:
        PolypruneError: bad languages or sentences (before the model is loaded), a bad output folder.
    """
    from .space import compute_subspaces, read_texts, save_folder

    cfg = subspaces_config(a)
    texts = read_texts(cfg)  # fewer sentences than asked for fails before the model loads
    src = Path(a.model) if Path(a.model).exists() else None
    check_output(a.out, sources=[src], overwrite=a.overwrite)
    prog = tqdm_progress("subspaces")
    try:
        loaded = load_from_args(a, prog.sub(0, 0.2))
        check_output(a.out, sources=[loaded.path], overwrite=a.overwrite)
        sub = compute_subspaces(loaded, cfg, prog.sub(0.2, 1.0), texts=texts)
        with output_folder(a.out, kind="subspaces", sources=[loaded.path], overwrite=a.overwrite) as tmp:
            files = save_folder(sub, tmp)
    finally:
        prog.bar.close()
    share = sub.specific_share()
    sizes = sub.direction_sizes()
    _log(f"{'block':>5} {'specific share':>15} " + " ".join(f"{x:>10}" for x in sub.languages))
    for l in range(sub.n_blocks):
        _log(f"{l + 1:>5} {share[l]:>15.3f} " + " ".join(f"{sizes[l, k]:>10.3f}" for k in range(len(sub.languages))))
    _log(f"(language columns: direction size from {sub.central}, in within-language spreads)")
    _log(f"Wrote {', '.join(str(Path(a.out) / f) for f in files)}")
    return 0


def run_lens(a) -> int:
    """``polyprune lens``: apply Lens and export the model to ``--out``.

    Raises:
        PolypruneError: bad settings (before the model is loaded), a bad export folder, ``--top-blocks``
            larger than the model, too few sentences, diverging training.
    """
    from polyprune.export import reload_check

    from .lens import apply_lens, check_export_target, export_lens, training_rows
    from .space import read_texts

    cfg = lens_config(a)
    training_rows(cfg)  # missing or too few sentences fail before the model loads
    if cfg.subspaces is None:
        read_texts(cfg.space_config())
    check_export_target(Path(a.model) if Path(a.model).exists() else None, a.out, a.overwrite)
    prog = tqdm_progress("lens")
    try:
        loaded = load_from_args(a, prog.sub(0, 0.1))
        check_export_target(loaded, a.out, a.overwrite)
        result = apply_lens(loaded, cfg, prog.sub(0.1, 0.9))
        out = export_lens(loaded, result, a.out, overwrite=a.overwrite, progress=prog.sub(0.9, 0.98))
        diff = reload_check(loaded.model, out, loaded.tokenizer)
    finally:
        prog.bar.close()
    _log(f"Lens trained blocks {', '.join(str(b + 1) for b in result.blocks)} of {result.subspaces.n_blocks} "
         f"in {result.steps} steps ({result.seconds:.0f} s)")
    for t in cfg.targets:
        b, f = result.before[t], result.after[t]
        _log(f"  {t}: align gap {b['align_gap']:.4g} -> {f['align_gap']:.4g}; shift along its direction "
             f"{f['shift']:.3g} (goal {cfg.direction_scale}); {cfg.central} drift {f['retain_drift']:.3g}")
    _log(f"Exported to {out}; reload check: largest logit difference {diff:.3g}")
    return 0
