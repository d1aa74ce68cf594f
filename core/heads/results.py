"""The result of a heads run and its files: ``head_scores.csv`` (columns exactly
``language,layer,head,ablation,taylor``), ``head_scores.npz``, ``head_settings.json``,
``classification.csv``/``.json`` and, with cross-effects, ``cross_effects.csv``/``.npz``.

Missing kinds are empty CSV cells (NaN in the ``.npz``). Folders are written atomically through
:func:`polyprune.fileio.output_folder`.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PolypruneError
from ..fileio import dumps, output_folder
from .classify import HeadClasses, classify
from .config import HeadsConfig
from .cross import CrossEffects
from .locate import BlockAttention, HeadLayout
from .scoring import HeadScores
from .stats import agreement

SCORES_CSV = "head_scores.csv"
SCORES_NPZ = "head_scores.npz"
SETTINGS_JSON = "head_settings.json"
CLASSES_CSV = "classification.csv"
CLASSES_JSON = "classification.json"
CROSS_CSV = "cross_effects.csv"
CROSS_NPZ = "cross_effects.npz"
KIND = "heads"


@dataclass
class HeadsResult:
    """Everything a heads run produced.

    Attributes:
        config: the validated settings. layout: the heads found. scores: per-language scores.
        classes: the classification by ``config.ranking_kind()``. cross: the cross-effect matrix or None.
        model: a description of the model (spec, name, architecture).
    """

    config: HeadsConfig
    layout: HeadLayout
    scores: HeadScores
    classes: HeadClasses
    cross: CrossEffects | None = None
    model: dict = field(default_factory=dict)

    def timings(self) -> dict:
        """Seconds per stage: ``taylor``, ``ablation``, ``cross``."""
        t = dict(self.scores.seconds)
        if self.cross is not None:
            t["cross"] = self.cross.seconds
        return t

    def cpu_timings(self) -> dict:
        """CPU seconds of this process per stage (what other processes on the machine do not change)."""
        t = dict(self.scores.cpu_seconds)
        if self.cross is not None:
            t["cross"] = self.cross.cpu_seconds
        return t


def _num(v: float) -> str:
    return "" if v is None or not np.isfinite(v) else repr(float(v))


def csv_text(header, rows) -> str:
    """CSV text (floats written with full precision, NaN as an empty cell)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_num(x) if isinstance(x, (float, np.floating)) else x for x in r])
    return buf.getvalue()


def score_rows(scores: HeadScores) -> list[tuple]:
    """``(language, layer, head, ablation, taylor)`` for every language, block and head."""
    L, H = scores.shape
    return [(lang, l, h, float(scores.ablation[k, l, h]), float(scores.taylor[k, l, h]))
            for k, lang in enumerate(scores.languages) for l in range(L) for h in range(H)]


def save_results(res: HeadsResult, out: str | Path, overwrite: bool = False, sources=()) -> Path:
    """Write a heads run into the folder ``out`` (atomically; see the module docstring).

    Raises:
        PolypruneError: the folder exists (without ``overwrite``), is not a Polyprune output, lies in
            a source, or cannot be written.
    """
    s = res.scores
    with output_folder(out, kind=KIND, sources=sources, overwrite=overwrite, what="heads output folder") as tmp:
        (tmp / SCORES_CSV).write_text(csv_text(["language", "layer", "head", "ablation", "taylor"], score_rows(s)), encoding="utf-8")
        np.savez(tmp / SCORES_NPZ, languages=np.array(s.languages), ablation=s.ablation, taylor=s.taylor, nll=s.nll,
                 tokens=s.tokens, sentences=s.sentences)
        settings = {"settings": res.config.to_dict(), "model": res.model, "layout": res.layout.to_dict(),
                    "ranking_kind": res.classes.kind, "seconds": res.timings(),
                    "cpu_seconds": res.cpu_timings(),
                    "nll": dict(zip(s.languages, s.nll.tolist())), "tokens": dict(zip(s.languages, s.tokens.tolist())),
                    "taylor_vs_ablation": agreement(s.ablation, s.taylor, s.languages, res.classes.k)}
        (tmp / SETTINGS_JSON).write_text(dumps(settings) + "\n", encoding="utf-8")
        c = res.classes
        (tmp / CLASSES_CSV).write_text(csv_text(["layer", "head", "class", "language", "top_sets"], c.rows()), encoding="utf-8")
        (tmp / CLASSES_JSON).write_text(dumps({
            "kind": c.kind, "top_share": c.top_share, "min_shared": c.min_shared, "k": c.k,
            "top": {k: [list(x) for x in v] for k, v in c.top.items()},
            "specific": {k: [list(x) for x in v] for k, v in c.specific.items()},
            "shared": [list(x) for x in c.shared]}) + "\n", encoding="utf-8")
        if res.cross is not None:
            x = res.cross
            (tmp / CROSS_CSV).write_text(csv_text(
                ["removed_language", "measured_language", "n_removed", "nll_base", "nll", "delta_nll", "ci_low", "ci_high",
                 "ppl_ratio", "predicted_delta"], x.rows()), encoding="utf-8")
            np.savez(tmp / CROSS_NPZ, languages=np.array(x.languages), nll_base=x.nll_base, nll=x.nll, delta=x.delta,
                     ci_low=x.ci_low, ci_high=x.ci_high, predicted=x.predicted, specificity=x.specificity,
                     spec_low=x.spec_low, spec_high=x.spec_high, sentences=x.sentences, tokens=x.tokens,
                     removed=np.array(dumps({k: [list(h) for h in v] for k, v in x.removed.items()})),
                     split=np.array(x.split), seconds=np.array(x.seconds))
    return Path(out).expanduser().resolve()


def load_results(folder: str | Path) -> HeadsResult:
    """Read a folder written by :func:`save_results`.

    Raises:
        PolypruneError: the folder or one of its files is missing or unreadable.
    """
    f = Path(folder).expanduser()
    if not (f / SCORES_NPZ).is_file() or not (f / SETTINGS_JSON).is_file():
        raise PolypruneError(f"{f} holds no head scores ({SCORES_NPZ} and {SETTINGS_JSON})",
                             "give the folder written by 'polyprune heads --out DIR'")
    try:
        z = np.load(f / SCORES_NPZ)
        meta = json.loads((f / SETTINGS_JSON).read_text(encoding="utf-8"))
        cfg = HeadsConfig.from_dict(meta["settings"])
        lay = meta["layout"]
        layout = HeadLayout(lay["n_blocks"], lay["n_heads"], lay["n_kv_heads"], lay["head_dim"], lay["hidden_size"],
                            [BlockAttention(i, "", n, []) for i, n in enumerate(lay["out_proj"])])
        scores = HeadScores([str(x) for x in z["languages"]], z["ablation"], z["taylor"], z["nll"], z["tokens"],
                            z["sentences"], {k: v for k, v in meta.get("seconds", {}).items() if k != "cross"},
                            {k: v for k, v in meta.get("cpu_seconds", {}).items() if k != "cross"})
        kind = meta.get("ranking_kind") or cfg.ranking_kind()
        classes = classify(scores.get(kind), scores.languages, cfg.top_share, cfg.min_shared, kind)
        cross = None
        if (f / CROSS_NPZ).is_file():
            x = np.load(f / CROSS_NPZ)
            removed = {k: [tuple(h) for h in v] for k, v in json.loads(str(x["removed"])).items()}
            cross = CrossEffects([str(s) for s in x["languages"]], removed, x["nll_base"], x["nll"], x["delta"], x["ci_low"],
                                 x["ci_high"], x["predicted"], x["specificity"], x["spec_low"], x["spec_high"],
                                 x["sentences"], x["tokens"], str(x["split"]), float(x["seconds"]),
                                 float(meta.get("cpu_seconds", {}).get("cross") or 0.0))
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise PolypruneError(f"Could not read the head scores in {f}: {e}",
                             "write the folder again with 'polyprune heads --out DIR'") from e
    return HeadsResult(cfg, layout, scores, classes, cross, meta.get("model", {}))
