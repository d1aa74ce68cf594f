"""Stage functions of the heads feature: what one CLI command or one GUI button calls.

* :func:`score_heads` — scores, classification and (optionally) the cross-effect matrix;
* :func:`remove_heads` — choose heads (explicit or by the keep/drop rule), measure their effect,
  export a soft- or hard-cut checkpoint with ``removed_heads.json``;
* :func:`apply_removal` — a reversible soft removal for study cells (``.restore()`` undoes it).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import PolypruneError
from ..export import export, reload_check
from ..fileio import check_output
from ..fileio import jsonable
from ..languages import language_name
from ..models import LoadedModel, pad_id
from ..progress import Progress, ensure
from .classify import classify
from .config import HeadsConfig, RemovalConfig, format_heads_spec, parse_heads_spec
from .cross import LanguageEffect, cross_effects, effects
from .locate import HeadLayout, find_heads
from .removal import (Heads, RemovalPlan, SoftRemoval, check_heads, count_heads, describe_heads, hard_cut,
                      nearest_stock, not_stock_error, predicted_effects, propose_removal, stock_problem)
from .results import HeadsResult
from .scoring import compute_scores, load_texts

REMOVED_JSON = "removed_heads.json"


def _model_desc(loaded: LoadedModel) -> dict:
    return {"spec": loaded.spec, "name": loaded.meta.get("name", loaded.spec),
            "model_type": getattr(loaded.model.config, "model_type", None)}


def score_heads(loaded: LoadedModel, cfg: HeadsConfig, progress: Progress | None = None) -> HeadsResult:
    """Score every head for every language, classify them and, with ``cfg.cross``, measure the
    cross-effect matrix on held-out sentences. The model is left exactly as it was.

    Raises:
        PolypruneError: a bad setting, an unknown language, fewer sentences than asked (scoring or
            held-out split; both checked before any model work), heads that cannot be found.
        Cancelled: on cancel (the model is restored).
    """
    progress = ensure(progress)
    cfg = copy.deepcopy(cfg).validate()
    model, tok = loaded.model, loaded.tokenizer
    progress.update(0, 1, "Reading sentences")
    texts = load_texts(tok, cfg.texts, cfg.languages, cfg.samples, cfg.split, cfg.seq_len)
    heldout = load_texts(tok, cfg.texts, cfg.languages, cfg.cross_samples, cfg.cross_split, cfg.seq_len) if cfg.cross else None
    layout = find_heads(model)
    pad = pad_id(model, tok)
    end = 0.8 if cfg.cross else 1.0
    scores = compute_scores(model, layout, texts, cfg.kinds, cfg.batch_size, pad, progress.sub(0.01, end))
    kind = cfg.ranking_kind()
    classes = classify(scores.get(kind), scores.languages, cfg.top_share, cfg.min_shared, kind)
    cross = None
    if heldout is not None:
        cross = cross_effects(model, layout, classes.specific, heldout, cfg.batch_size, pad, cfg.bootstrap, cfg.seed,
                              scores.taylor, cfg.cross_split, progress.sub(end, 1.0))
    progress.update(1, 1, "Heads scored")
    return HeadsResult(cfg, layout, scores, classes, cross, _model_desc(loaded))


@dataclass
class RemovalResult:
    """What :func:`remove_heads` did.

    Attributes:
        heads: the removed heads ``{block: [heads]}``. requested: the heads asked for (differs from
            ``heads`` when the nearest stock set was taken). cut: soft or hard. plan: the keep/drop
            proposal (None for an explicit list). effects: measured effect per language (held-out).
        predicted: first-order effect per scored language. params_before/after: parameter counts
            of the export. out: the export folder. reload_diff: max |Δlogit| of the reloaded export
            against the soft-removed model. seconds: wall time.
    """

    heads: Heads
    requested: Heads
    cut: str
    plan: RemovalPlan | None = None
    effects: list[LanguageEffect] = field(default_factory=list)
    predicted: dict[str, float] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    out: Path | None = None
    reload_diff: float | None = None
    seconds: float = 0.0

    def removed_json(self) -> str:
        """``removed_heads.json``: ``{"<block>": [heads]}``."""
        return json.dumps({str(b): hs for b, hs in sorted(self.heads.items())}, indent=2) + "\n"


def _count(model) -> int:
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def choose_heads(loaded: LoadedModel, cfg: HeadsConfig, scores: HeadsResult | None = None,
                 progress: Progress | None = None) -> tuple[HeadLayout, Heads, RemovalPlan | None, HeadsResult | None]:
    """The heads a removal takes: ``cfg.removal.heads``, else the keep/drop rule on ``scores``
    (scored here on keep + drop when not given). Returns ``(layout, heads, plan, scores)``.

    Raises:
        PolypruneError: bad settings, languages not scored, a removal that empties a block.
    """
    progress = ensure(progress)
    r: RemovalConfig = cfg.removal
    layout = find_heads(loaded.model)
    if r.heads:
        return layout, check_heads(layout, parse_heads_spec(r.heads)), None, scores
    if scores is None:
        langs = list(dict.fromkeys(r.drop + r.keep))
        scores = score_heads(loaded, replace(cfg, languages=langs, cross=False), progress)
    kind = cfg.ranking_kind() if cfg.ranking_kind() in scores.scores.kinds() else scores.classes.kind
    plan = propose_removal(scores.scores, r.keep, r.drop, cfg.top_share, kind, r.max_heads)
    if not plan.heads:
        raise PolypruneError(f"No head matters for {', '.join(map(language_name, r.drop))} without mattering for a kept language",
                             "raise the top share (--top-share), or keep fewer languages")
    return layout, check_heads(layout, plan.heads), plan, scores


def remove_heads(loaded: LoadedModel, cfg: HeadsConfig, out: str | Path, *, overwrite: bool = False,
                 scores: HeadsResult | None = None, progress: Progress | None = None) -> RemovalResult:
    """Remove heads and export the model as ``polyprune export`` does, plus ``removed_heads.json``.

    Steps: check the export folder; choose the heads (:func:`choose_heads`); for a hard cut check
    that a stock checkpoint can hold them (else stop, naming the nearest set, or take it with
    ``removal.nearest``); measure the effect on every kept/dropped (or scored) language on the
    held-out split (``removal.measure``); export; reload and compare logits with the soft-removed
    model. The loaded model is restored bit-exactly afterwards.

    Raises:
        PolypruneError: see :func:`choose_heads`, :func:`polyprune.fileio.check_output`, and a hard
            cut that cannot be stored as a stock checkpoint (nothing is written then).
    """
    progress = ensure(progress)
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg).validate(need_languages=False)
    if cfg.removal is None:
        raise PolypruneError("No removal settings were given", 'give --heads "BLOCK:H,H" or --drop LANGS')
    r = cfg.removal
    check_output(out, sources=[loaded.path], overwrite=overwrite, what="export folder")
    model, tok = loaded.model, loaded.tokenizer
    layout, heads, plan, scores = choose_heads(loaded, cfg, scores, progress.sub(0.0, 0.5))
    requested = heads
    if r.cut == "hard":
        problem = stock_problem(model, layout, heads)
        if problem:
            near = nearest_stock(model, layout, heads, plan.priority if plan else None)
            if not (r.nearest and near):
                raise not_stock_error(model, layout, heads, problem, plan.priority if plan else None)
            heads = check_heads(layout, near)
    order = [(b, h) for b, hs in heads.items() for h in hs]
    res = RemovalResult(heads, requested, r.cut, plan)
    if scores is not None:
        res.predicted = predicted_effects(scores.scores, order)
    langs = list(dict.fromkeys(r.drop + r.keep)) or (scores.scores.languages if scores is not None else [])
    if r.measure and langs:
        heldout = load_texts(tok, cfg.texts, langs, cfg.cross_samples, cfg.cross_split, cfg.seq_len)
        pred = np.array([[res.predicted.get(lt.language, np.nan) for lt in heldout]])
        eff, _ = effects(model, layout, heldout, [order], cfg.batch_size, pad_id(model, tok), cfg.bootstrap, cfg.seed,
                         pred, progress.sub(0.5, 0.8))
        res.effects = eff[0]
    res.params_before = _count(model)
    report = {"model": loaded.info() | loaded.meta,  # strict JSON below
              "summary": f"Attention heads removed with Polyprune ({r.cut} cut): {count_heads(heads)} heads; the "
                         "section 'Removed attention heads' below lists them with the measured effect per language.",
              "tags": ["attention-heads-removed", f"{r.cut}-cut"],
              "pruning": {"config": {"method": f"attention head removal ({r.cut} cut)"}, "overall_sparsity": None},
              "heads": {"removed": {str(b): hs for b, hs in heads.items()}, "requested": {str(b): hs for b, hs in requested.items()},
                        "cut": r.cut, "rule": plan.rule if plan else "explicit list",
                        "settings": cfg.to_dict(), "layout": layout.to_dict(),
                        "effects": [e.__dict__ for e in res.effects], "predicted": res.predicted}}
    report = jsonable(report)
    progress.check()
    soft = SoftRemoval(model, layout, heads)
    try:
        if r.cut == "soft":
            res.params_after = res.params_before
            res.out = export(model, tok, out, report, source=loaded.path, overwrite=overwrite,
                             progress=progress.sub(0.8, 0.95), extra_files={REMOVED_JSON: res.removed_json()},
                             card_extra=model_card_section(res, layout)).path
        else:
            cut = hard_cut(model, layout, heads)  # deletes the columns the soft removal zeroed
            res.params_after = _count(cut.model)
            report["heads"] |= {"params_removed": cut.params_removed, "num_attention_heads": cut.n_heads,
                                "num_key_value_heads": cut.n_kv_heads}
            res.out = export(cut.model, tok, out, report, source=loaded.path, overwrite=overwrite,
                             progress=progress.sub(0.8, 0.95), extra_files={REMOVED_JSON: res.removed_json()},
                             card_extra=model_card_section(res, layout)).path
            del cut
        progress.update(0, 1, "Reloading the export to check it")
        res.reload_diff = reload_check(model, res.out, tok)
    finally:
        soft.restore()
    res.seconds = time.perf_counter() - t0
    progress.update(1, 1, f"Exported to {res.out}")
    return res


def model_card_section(res: RemovalResult, layout: HeadLayout) -> str:
    """The model card's "Removed attention heads" section (Markdown)."""
    lines = ["## Removed attention heads", "",
             f"{count_heads(res.heads)} of {layout.n_total} query heads were removed ({res.cut} cut): "
             f"{describe_heads(res.heads)}. The list is in `{REMOVED_JSON}` (`{{\"block\": [heads]}}`, counting from 0).", ""]
    if res.cut == "soft":
        lines += ["Soft cut: the heads' columns of the attention output projection are zero; the checkpoint has the "
                  "original shapes and loads anywhere.", ""]
    else:
        lines += [f"Hard cut: the heads' query rows and output-projection columns are deleted "
                  f"({res.params_before - res.params_after:,} parameters fewer); the config's head counts are changed.", ""]
    if res.requested != res.heads:
        lines += [f"Requested: {describe_heads(res.requested)}; the nearest set a stock checkpoint can hold was removed.", ""]
    if res.plan is not None:
        lines += [f"Chosen by Polyprune's rule: {res.plan.rule}.", ""]
    if res.effects:
        lines += ["| language | NLL before | NLL after | change (nats/token) | 95 % interval | perplexity ratio | predicted (taylor) |",
                  "|---|---|---|---|---|---|---|"]
        for e in res.effects:
            lines.append(f"| {language_name(e.language)} | {e.nll_base:.4f} | {e.nll:.4f} | {e.delta:+.4f} | "
                         f"[{e.ci_low:+.4f}, {e.ci_high:+.4f}] | {e.ppl_ratio:.3f} | {e.predicted:+.4f} |")
        lines.append("")
    return "\n".join(lines)


def apply_removal(loaded: LoadedModel, cfg: HeadsConfig, progress: Progress | None = None,
                  scores: HeadsResult | None = None) -> SoftRemoval:
    """Soft-remove the heads of ``cfg.removal`` in place (a study cell); ``.restore()`` undoes it
    bit-exactly. The returned object also carries ``.plan`` (None for an explicit list).

    Raises:
        PolypruneError: see :func:`choose_heads`.
    """
    cfg = copy.deepcopy(cfg).validate(need_languages=False)
    if cfg.removal is None:
        raise PolypruneError("No removal settings were given", "add heads.removal with heads or drop/keep languages")
    layout, heads, plan, _ = choose_heads(loaded, cfg, scores, progress)
    soft = SoftRemoval(loaded.model, layout, heads)
    soft.plan = plan  # type: ignore[attr-defined]
    return soft


def hard_cut_option(loaded: LoadedModel, heads: Heads, priority=None) -> dict:
    """Whether a hard cut of ``heads`` gives a stock checkpoint, for display before exporting:
    ``{"ok": bool, "problem": str | None, "nearest": Heads | None, "spec": str}``."""
    layout = find_heads(loaded.model)
    heads = check_heads(layout, heads)
    problem = stock_problem(loaded.model, layout, heads)
    near = nearest_stock(loaded.model, layout, heads, priority) if problem else None
    return {"ok": problem is None, "problem": problem, "nearest": near,
            "spec": format_heads_spec(near) if near else None}
