"""A working session on one loaded model: its *variants* and the stages the window's buttons start.

A *variant* is the dense model or one pruning of it with the settings that made it. A session keeps
any number of them; the model holds exactly one at a time (:attr:`Session.active`), the others are
kept as their pruning records (:mod:`polyprune.pruning.records`): mask-only methods (magnitude,
Wanda, the refined metric) as packed mask bits only, weight-changing methods (SparseGPT) with the
values they give to the kept weights. Moving between variants (:meth:`Session.activate`) is exact
in both directions: the dense weights and every variant's pruned weights come back bit for bit.

Each function below is one *stage*: what one button of the window (or one command) starts, run in a
worker thread with a :class:`~polyprune.progress.Progress` for progress and cooperative cancel:

* :func:`prune_variant` — prune the dense model into a new variant; on cancel or failure the model
  goes back to the variant it held before and nothing is lost;
* :func:`evaluate_variants` — evaluate several variants (each through an exact view of its
  weights) and compare each with the dense model: 95% intervals, a paired bootstrap of the
  difference on the same items, the chance level and a plain verdict per cell;
* :func:`try_variants` — greedy outputs of several variants for one prompt or one FLORES sentence;
* :func:`compare_features` — a second feature setting measured and compared with a first one;
* :func:`preview_calibration` — the first calibration samples of a setting, with their lengths;
* :func:`study_rows_so_far` — the rows of a running study's finished cells;
* :func:`export_variant` — one variant exported with its report, recipe and masks.

Nothing here imports Qt; the window (:mod:`polyprune.gui`) only starts these and shows the results.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .calibration import CalibrationSet, build, normalize_spec
from .calibration.prompts import build_prompts
from .calibration.sources import read_calibration_text
from .datasets import flores_dir, load_pairs, read_flores
from .errors import PolypruneError
from .evaluation import Result, compare
from .evaluation.stats import paired_difference, seed_for
from .evaluation.translation import build_prompt, generate_greedy, select_demo_indices
from .export import ExportResult
from .features import feature_magnitudes, overlap
from .languages import language_name, resolve_language
from .models import LoadedModel
from .pipeline import FeatureRun, build_calibration, evaluate, export_model, prune_model, versions
from .progress import Progress, ensure
from .pruning import PruneResult, detach, reapply
from .recipe import DemoConfig, EvalConfig, FeatureConfig, Recipe, settings_from_dict
from .study import StudyConfig, lower_is_better, plan
from .study.config import eval_config, eval_signature
from .study.folder import finished_rows

#: Accuracy of guessing, per multiple-choice task (XNLI has three labels, the others two choices).
CHANCE = {"xnli": 1 / 3, "pawsx": 0.5, "xcopa": 0.5, "xstorycloze": 0.5, "xwinograd": 0.5}
#: Metrics that are shares of correct answers (chance level applies).
ACCURACY_METRICS = ("acc", "acc_norm", "acc_bytes", "prompt_mean")
#: Plain verdicts of :func:`verdict`.
WORSE, BETTER, NO_CHANGE, NO_INTERVAL = ("worse than dense", "better than dense", "no detectable change",
                                         "no paired interval")
DENSE_ID = "dense"
METHOD_NAMES = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT",
                "wanda_refined": "Refined Wanda"}


# --------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """The dense model or one pruning of it.

    Attributes:
        id: ``"dense"`` or ``"v1"``, ``"v2"``, ... (never reused within a session).
        name: what the user calls it (editable).
        result: the :class:`~polyprune.pruning.PruneResult` (``None`` for the dense model).
        recipe: the settings that made it (a copy, for reports and ``recipe.yaml``).
        calibration: the calibration set's metadata (``None`` without calibration).
        created: ``time.time()`` when it was made.
    """

    id: str
    name: str
    result: PruneResult | None = None
    recipe: Recipe | None = None
    calibration: dict | None = None
    created: float = field(default_factory=time.time)

    @property
    def is_dense(self) -> bool:
        return self.result is None

    def nbytes(self) -> int:
        """Memory this variant costs besides the model: mask bits, plus for a variant the model holds
        now the values that give the dense weights back, and for a stored SparseGPT variant its kept
        weights (see :mod:`polyprune.pruning.records`)."""
        return 0 if self.result is None else self.result.nbytes()

    def stored_nbytes(self) -> int:
        """Memory the variant costs while the model holds another one: its mask bits, plus the kept
        weights of a weight-changing method (SparseGPT)."""
        if self.result is None:
            return 0
        n = 0
        for rec in self.result.records.values():
            n += rec.packed.nbytes
            if rec.updates_weights:
                t = rec.original if rec.original is not None else rec.kept
                n += (rec.numel - rec.n_removed) * (t.element_size() if t is not None else 4)
        return n

    def describe(self) -> str:
        """``"Wanda, unstructured, 50.0 % removed; calibration demos eng→fra"`` (or ``"dense"``)."""
        if self.result is None:
            return "dense: every weight as loaded"
        cfg = self.result.config
        text = (f"{METHOD_NAMES.get(cfg['method'], cfg['method'])}, {cfg['pattern']}"
                f"{', OWL' if cfg.get('layerwise') == 'owl' else ''}, {100 * self.result.overall:.1f} % removed")
        cal = self.calibration or {}
        if cal.get("label"):
            text += f"; calibration {cal['label']}"
        if self.result.contrast:
            text += f"; contrast {self.result.contrast.get('label', self.result.contrast.get('kind'))}"
        return text


def default_name(cfg: dict, calibration: dict | None) -> str:
    """A variant's first name: ``"Wanda 50% · demos eng→fra"``."""
    name = f"{METHOD_NAMES.get(cfg['method'], cfg['method'])} {100 * cfg['sparsity']:.3g}%"
    if cfg.get("pattern", "unstructured") != "unstructured":
        name += f" {cfg['pattern']}"
    if cfg.get("layerwise") == "owl":
        name += " OWL"
    if calibration and calibration.get("label"):
        name += f" · {calibration['label']}"
    return name


class Session:
    """The variants of one loaded model and which one the model holds.

    Only one stage at a time may use a session (the window runs one model job at a time).

    Args:
        loaded: the model, dense as loaded.
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.dense = Variant(DENSE_ID, "Dense model")
        self.variants: list[Variant] = [self.dense]
        self.active: Variant = self.dense
        self._count = 0

    def get(self, vid: str) -> Variant:
        """The variant with id ``vid``.

        Raises:
            PolypruneError: no such variant (deleted).
        """
        for v in self.variants:
            if v.id == vid:
                return v
        raise PolypruneError(f"There is no variant {vid!r} any more", "choose one of the variants in the list")

    def next_id(self) -> str:
        """A new variant id (``v1``, ``v2``, ...)."""
        self._count += 1
        return f"v{self._count}"

    def activate(self, variant: Variant) -> None:
        """Put ``variant``'s weights into the model (exact: detach the current pruning, then put the
        new one on the dense weights)."""
        if variant is self.active:
            return
        model = self.loaded.model
        if self.active.result is not None:
            detach(model, self.active.result.records)
        self.active = self.dense
        if variant.result is not None:
            reapply(model, variant.result.records)
        self.active = variant

    @contextmanager
    def holding(self, variant: Variant) -> Iterator[Variant]:
        """Inside the block the model holds ``variant``; afterwards the variant it held before
        (whatever happened inside)."""
        previous = self.active
        self.activate(variant)
        try:
            yield variant
        finally:
            self.activate(previous)

    def add(self, variant: Variant) -> Variant:
        """Add a variant made by :func:`prune_variant` (in the window: once the job has finished)."""
        if variant not in self.variants:
            self.variants.append(variant)
        return variant

    def remove(self, vid: str) -> Variant:
        """Delete a variant (the model goes back to dense if it held it); the dense model stays.

        Raises:
            PolypruneError: the dense model, or an unknown id.
        """
        v = self.get(vid)
        if v.is_dense:
            raise PolypruneError("The dense model cannot be deleted", "delete a pruned variant instead")
        if v is self.active:
            self.activate(self.dense)
        self.variants.remove(v)
        return v

    def rename(self, vid: str, name: str) -> Variant:
        """Give a variant a new name.

        Raises:
            PolypruneError: an empty name, or one another variant has.
        """
        v = self.get(vid)
        name = " ".join(str(name).split())
        if not name:
            raise PolypruneError("A variant needs a name", "type a name for the variant")
        if any(o is not v and o.name == name for o in self.variants):
            raise PolypruneError(f"Another variant is already called {name!r}", "choose a name no other variant has")
        v.name = name
        return v

    def unique_name(self, name: str) -> str:
        """``name``, or ``name (2)``, ``name (3)``, ... if a variant has it."""
        taken = {v.name for v in self.variants}
        if name not in taken:
            return name
        k = 2
        while f"{name} ({k})" in taken:
            k += 1
        return f"{name} ({k})"

    def nbytes(self) -> int:
        """Memory of every variant's records together."""
        return sum(v.nbytes() for v in self.variants)


def labelled(progress: Progress, start: float, end: float, label: str, units: Sequence[str] = ()) -> Progress:
    """A sub-range of ``progress`` whose messages start with ``label``.

    With ``units`` (task names), a message ``"<task> <language>"`` (how the evaluation runner
    announces each task and language) is remembered and put before the messages that follow, so
    every message names variant, task and language: ``"Dense model · xnli fr · scoring"``.
    """
    child = progress.sub(start, end)
    cb = child.callback
    if cb is None:
        return child
    current = [""]

    def report(frac: float, msg: str) -> None:
        words = msg.split()
        if len(words) == 2 and words[0] in units:
            current[0] = msg
            cb(frac, f"{label} · {msg}")
            return
        head = f"{label} · {current[0]}" if current[0] else label
        cb(frac, f"{head} · {msg}" if msg else head)
    child.callback = report
    return child


# --------------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------------
def prune_variant(session: Session, recipe: Recipe, progress: Progress | None = None,
                  calibration: CalibrationSet | None = None,
                  name: str | None = None) -> tuple[Variant, CalibrationSet | None]:
    """Prune the dense model as ``recipe`` says into a new variant (the model then holds it).

    The variant the model held is first put aside (its records keep it, exactly); the dense model
    is pruned with :func:`polyprune.pipeline.prune_model`. On cancel or failure the pruning is
    undone and the previous variant put back, so nothing is lost. The new variant is returned, not
    added: :meth:`Session.add` records it (the window does so when the job has finished).

    Returns:
        ``(variant, calibration set or None)``.

    Raises:
        PolypruneError: bad settings or data (nothing changed). Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    recipe.pruning.validate()
    previous = session.active
    session.activate(session.dense)
    try:
        result, cal = prune_model(session.loaded, recipe, progress, calibration=calibration)
    except BaseException:
        session.activate(previous)  # prune_model has restored the dense weights already
        raise
    cal_meta = dict(cal.meta) if cal is not None else None
    v = Variant(session.next_id(), "", result, copy.deepcopy(recipe), cal_meta)
    v.name = session.unique_name(name or default_name(result.config, cal_meta))
    session.active = v
    return v, cal


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def item_scores(r: Result) -> dict | None:
    """The per-item scores of a result for :func:`~polyprune.evaluation.stats.paired_difference`
    (``None`` when it has none, e.g. corpus BLEU)."""
    x = r.extra or {}
    if "item_correct" in x:
        return {"correct": x["item_correct"]}
    if "item_nll" in x and "item_tokens" in x:
        return {"nll": x["item_nll"], "tokens": x["item_tokens"]}
    return None


def chance_level(task: str, metric: str) -> float | None:
    """Accuracy of guessing for a multiple-choice task and metric (``None`` where it does not apply)."""
    return CHANCE.get(task) if metric in ACCURACY_METRICS else None


def verdict(metric: str, low: float | None, high: float | None) -> str:
    """A plain verdict from the paired 95% interval of ``variant - dense``: worse or better than
    dense when the interval lies on one side of 0, else no detectable change."""
    if low is None or high is None:
        return NO_INTERVAL
    down_is_good = lower_is_better(metric)
    if low > 0:
        return WORSE if down_is_good else BETTER
    if high < 0:
        return BETTER if down_is_good else WORSE
    return NO_CHANGE


def comparison_rows(dense: Sequence[Result], variant: Sequence[Result], *, iters: int = 1000,
                    seed: int = 0) -> list[dict]:
    """:func:`polyprune.evaluation.compare` rows of ``variant`` against ``dense``, each with the
    paired bootstrap of the difference on the same items and a verdict.

    Added keys: ``diff`` (variant − dense, as the paired bootstrap computes it), ``diff_ci``
    (``[low, high]`` or ``None``), ``verdict`` (:func:`verdict`), ``chance`` (:func:`chance_level`)
    and ``at_chance`` (the dense interval reaches down to the chance level: the task cannot show a
    loss for this language and model).
    """
    d_map = {r.key(): r for r in dense if r.ok}
    v_map = {r.key(): r for r in variant if r.ok}
    rows = []
    for row in compare(dense, variant):
        key = (row["task"], row["language"], row["metric"])
        a, b = v_map.get(key), d_map.get(key)
        diff, ci = row["delta"], None
        sa, sb = (item_scores(a), item_scores(b)) if a is not None and b is not None else (None, None)
        if sa is not None and sb is not None and iters > 0:
            try:
                diff, lo, hi = paired_difference(sa, sb, iters=iters, seed=seed_for(seed, *key, "paired"))
                ci = [lo, hi]
            except ValueError:  # different items (e.g. different limits): no paired interval
                ci = None
        chance = chance_level(row["task"], row["metric"])
        lo_dense = (row.get("dense_ci") or [None])[0]
        rows.append(row | {"diff": diff, "diff_ci": ci,
                           "verdict": verdict(row["metric"], *(ci or (None, None))) if row["dense"] is not None
                           and row["pruned"] is not None else NO_INTERVAL,
                           "chance": chance,
                           "at_chance": chance is not None and lo_dense is not None and lo_dense <= chance})
    return rows


@dataclass
class EvaluationTable:
    """Results of several variants on the same settings, and each pruned variant against dense.

    Attributes:
        key: the evaluation settings the results belong to (:func:`eval_key`).
        results: ``{variant id: [Result]}``.
        rows: one :func:`comparison_rows` row per (task, language, metric) and pruned variant, with
            ``variant`` (its id) added; in :func:`polyprune.evaluation.compare` order, variants inner.
        seconds: time the evaluation took.
    """

    key: str
    results: dict[str, list[Result]]
    rows: list[dict]
    seconds: float = 0.0


def eval_key(cfg: EvalConfig) -> str:
    """A key of everything in ``cfg`` that decides the numbers (results are reused by it)."""
    d = asdict(cfg)
    d.pop("dense", None)
    d.pop("optional", None)
    d.pop("batch_size", None)
    return repr(sorted((k, repr(v)) for k, v in d.items()))


def evaluate_variants(session: Session, variants: Sequence[Variant], cfg: EvalConfig,
                      progress: Progress | None = None,
                      known: dict[str, list[Result]] | None = None) -> EvaluationTable:
    """Evaluate variants on ``cfg`` and compare every pruned one with the dense model.

    Each variant is evaluated while the model holds its exact weights (:meth:`Session.holding`);
    afterwards the model holds the variant it held before, bit for bit (SparseGPT included). The
    dense model is always part of the table (it is the reference); results in ``known`` (by variant
    id, made with the same settings) are reused instead of evaluated again. Progress messages name
    the variant, the task and the language.

    Raises:
        PolypruneError: bad settings or data. Cancelled: through ``progress`` (the model holds the
            variant it held before).
    """
    progress = ensure(progress)
    cfg.validate()
    if not cfg.enabled:
        raise PolypruneError("No task is ticked", "tick at least one task and language to evaluate")
    known = dict(known or {})
    wanted = [session.dense] + [v for v in variants if not v.is_dense]
    todo = [v for v in wanted if v.id not in known]
    t0 = time.perf_counter()
    results = {v.id: known[v.id] for v in wanted if v.id in known}
    # dense first: the model moves dense -> v1 -> v2 ... -> back, each move exact
    for k, v in enumerate(todo):
        sub = labelled(progress, k / len(todo), (k + 1) / len(todo), v.name, list(cfg.units()))
        with session.holding(v):
            results[v.id] = evaluate(session.loaded, cfg, sub)
    rows = []
    per_variant = {v.id: comparison_rows(results[DENSE_ID], results[v.id], iters=max(cfg.bootstrap, 0))
                   for v in wanted if not v.is_dense}
    dense_rows = compare(results[DENSE_ID], [])
    for i, base in enumerate(dense_rows):
        key = (base["task"], base["language"], base["metric"])
        for vid, vrows in per_variant.items():
            match = next((r for r in vrows if (r["task"], r["language"], r["metric"]) == key), None)
            if match is not None:
                rows.append(match | {"variant": vid})
    if not per_variant:  # only the dense model: its own rows
        for base in dense_rows:
            chance = chance_level(base["task"], base["metric"])
            lo = (base.get("dense_ci") or [None])[0]
            rows.append(base | {"variant": DENSE_ID, "diff": None, "diff_ci": None, "verdict": NO_INTERVAL,
                                "chance": chance, "at_chance": chance is not None and lo is not None and lo <= chance})
    progress.update(1, 1, "Evaluation done")
    return EvaluationTable(eval_key(cfg), results, rows, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# trying variants out
# --------------------------------------------------------------------------------------------
@dataclass
class TryResult:
    """Greedy outputs of several variants for one prompt.

    Attributes:
        prompt: the text given to the model.
        outputs: ``{variant id: generated text}``.
        source, reference: for a FLORES sentence, the sentence and its reference translation.
    """

    prompt: str
    outputs: dict[str, str]
    source: str | None = None
    reference: str | None = None


def flores_prompt(data: str | Path | None, src: str, tgt: str, index: int, shots: int = 4,
                  split: str = "devtest") -> tuple[str, str, str]:
    """The few-shot translation prompt of FLORES sentence ``index`` from ``src`` to ``tgt``, exactly
    as the ``flores_mt`` task builds it (:mod:`polyprune.evaluation.translation`: ``shots`` short
    ``dev`` pairs as demonstrations).

    Returns:
        ``(prompt, source sentence, reference translation)``.

    Raises:
        PolypruneError: no FLORES folder, unknown language, index out of range.
    """
    root = flores_dir(data)
    s, t = resolve_language(src), resolve_language(tgt)
    if s == t:
        raise PolypruneError(f"Translating {language_name(s)} into itself", "choose two different languages")
    dev_s, dev_t = read_flores(root, s, "dev"), read_flores(root, t, "dev")
    demos = [(dev_s[i], dev_t[i]) for i in select_demo_indices(dev_s, dev_t, shots)]
    sources, refs = read_flores(root, s, split), read_flores(root, t, split)
    if not 0 <= index < len(sources):
        raise PolypruneError(f"FLORES {split} has sentences 1 to {len(sources)}, not {index + 1}",
                             f"choose a sentence number from 1 to {len(sources)}")
    return build_prompt(demos, sources[index], language_name(s), language_name(t)), sources[index], refs[index]


def try_variants(session: Session, variants: Sequence[Variant], prompt: str | None = None, *,
                 flores: dict | None = None, max_new_tokens: int = 48, progress: Progress | None = None) -> TryResult:
    """Greedy continuations of one prompt by each variant, side by side.

    Args:
        prompt: free text (the output stops at the first newline only for FLORES prompts).
        flores: instead of ``prompt``: ``{"data": folder, "src": code, "tgt": code, "index": i}``
            (0-based sentence of ``devtest``; see :func:`flores_prompt`).
        max_new_tokens: at most this many new tokens per output.

    Raises:
        PolypruneError: an empty prompt, no variant, bad FLORES settings. Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    source = reference = None
    stop = None
    if flores is not None:
        prompt, source, reference = flores_prompt(flores.get("data"), flores["src"], flores["tgt"],
                                                  int(flores.get("index", 0)), int(flores.get("shots", 4)))
        stop = "\n"
    if not prompt or not prompt.strip():
        raise PolypruneError("The prompt is empty", "type a prompt, or choose a FLORES sentence")
    if not variants:
        raise PolypruneError("No variant is chosen", "tick at least one variant to try")
    outputs = {}
    for k, v in enumerate(variants):
        sub = labelled(progress, k / len(variants), (k + 1) / len(variants), v.name)
        with session.holding(v):
            outputs[v.id] = generate_greedy(session.loaded.model, session.loaded.tokenizer, [prompt], batch_size=1,
                                            max_new_tokens=max_new_tokens, stop=stop, progress=sub)[0]
    progress.update(1, 1, "Done")
    return TryResult(prompt, outputs, source, reference)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------
def compare_features(loaded: LoadedModel, first: FeatureRun, other_spec: dict, cfg: FeatureConfig,
                     batch_size: int = 8, progress: Progress | None = None) -> FeatureRun:
    """Measure a second calibration setting and compare it with ``first`` (already measured):
    the per-layer overlap of their top ``cfg.ratio`` dimensions (Kim et al. 2024, §4).

    Returns:
        A :class:`~polyprune.pipeline.FeatureRun` with ``first``'s result and the second setting in
        ``other``/``other_calibration``/``overlap``.

    Raises:
        PolypruneError: a bad spec. Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    cal = build_calibration(loaded, other_spec, progress.sub(0, 0.05))
    other = feature_magnitudes(loaded.model, cal, batch_size=batch_size, progress=progress.sub(0.05, 1.0),
                               exclude_special=cfg.exclude_special, tokenizer=loaded.tokenizer)
    return FeatureRun(first.result, first.calibration, other, cal, overlap(first.result.magnitudes, other.magnitudes,
                                                                             ratio=cfg.ratio), cfg.ratio)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def variant_report(session: Session, variant: Variant, recipe: Recipe, table: EvaluationTable | None = None,
                   seed: int = 0) -> dict:
    """A run report (the shape :func:`polyprune.pipeline.run` writes) of one variant: model facts
    (with the source model's name and licence), calibration, pruning and its evaluation against
    the dense model when ``table`` has both."""
    loaded = session.loaded
    report: dict = {"recipe": recipe.to_dict(), "seed": seed, "versions": versions(),
                    "model": loaded.info() | loaded.meta | {"name": loaded.meta.get("name", loaded.spec)},
                    "variant": {"id": variant.id, "name": variant.name}}
    if variant.calibration is not None:
        report["calibration"] = {k: v for k, v in variant.calibration.items() if k != "spec"} | {
            "spec": variant.calibration.get("spec")}
    if variant.result is not None:
        report["pruning"] = variant.result.summary()
    else:
        report["pruning"] = {"config": {"method": "none (dense)"}, "overall_sparsity": 0.0}
    rows, recs = [], {"dense": [], "pruned": []}
    if table is not None:
        rows = [{k: r[k] for k in ("task", "language", "metric", "n", "dense", "pruned", "delta", "dense_ci",
                                   "pruned_ci", "diff_ci", "verdict")}
                for r in table.rows if r.get("variant") == variant.id]
        recs["dense"] = [r.to_dict() for r in table.results.get(DENSE_ID, [])]
        if not variant.is_dense:
            recs["pruned"] = [r.to_dict() for r in table.results.get(variant.id, [])]
    report["evaluation"] = rows
    report["evaluation_records"] = recs
    return report


def export_variant(session: Session, variant: Variant, out: str | Path, recipe: Recipe, report: dict, *,
                   overwrite: bool = False, check: bool = True, progress: Progress | None = None,
                   replace_hint: str = "pass --overwrite", log: Callable[[str], None] | None = None) -> ExportResult:
    """Export one variant (weights, tokenizer, model card, report, recipe, masks) with
    :func:`polyprune.pipeline.export_model`; the model holds that variant while it is written and
    the variant it held before afterwards.

    Raises:
        PolypruneError: a bad target folder, a failed write (named), a reload that differs; nothing
            is left at the target. Cancelled: through ``progress``.
    """
    with session.holding(variant):
        return export_model(session.loaded, report, out, recipe=recipe, result=variant.result, overwrite=overwrite,
                            check=check, progress=progress, log=log, replace_hint=replace_hint)


# --------------------------------------------------------------------------------------------
# calibration preview
# --------------------------------------------------------------------------------------------
@dataclass
class CalibrationPreview:
    """The first samples of a calibration setting as the model will read them.

    Attributes:
        texts: the first samples (strings).
        counts: tokens of every sample (``None`` without a tokenizer).
        cuts: for each shown sample, the character offset where ``seq_len`` cuts it (``None``: whole).
        samples: how many samples the setting has.
        available: sentence pairs the source has (pair sources only).
        seq_len: the calibration length in tokens.
    """

    texts: list[str]
    counts: list[int] | None
    cuts: list[int | None]
    samples: int
    available: int | None
    seq_len: int


def cut_offset(tokenizer, text: str, seq_len: int) -> int | None:
    """Character offset where ``text`` is cut at ``seq_len`` tokens (``None`` if it fits or the
    tokenizer has no offsets)."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    ids = enc["input_ids"]
    if len(ids) <= seq_len:
        return None
    ends = [e for s, e in enc["offset_mapping"][:seq_len] if e > 0]
    return max(ends) if ends else 0


def preview_calibration(spec: dict, tokenizer=None, shown: int = 3) -> CalibrationPreview:
    """The first ``shown`` samples of the calibration ``spec`` (:func:`polyprune.calibration.build`
    spec) and the token count of every sample. Pair sources and text files need no tokenizer;
    other kinds (mixes) are built with it.

    Raises:
        PolypruneError: what building the set would raise (too few pairs, unknown language, a
            missing file, ...); a mix without a tokenizer.
    """
    s = normalize_spec(spec)
    kind = s["kind"]
    available = None
    if kind == "demos":
        cfg = settings_from_dict(DemoConfig, {k: v for k, v in s.items() if k not in ("kind", "label")},
                                 "demonstration settings")
        pairs = load_pairs(cfg.source, cfg.src, cfg.tgt, cfg.split, cfg.src_column, cfg.tgt_column)
        available = len(pairs)
        eos = (tokenizer.eos_token or "") if tokenizer is not None else "<eos>"
        texts, _ = build_prompts(cfg, eos=eos, pairs=pairs)
    elif kind == "text":
        texts = read_calibration_text(s["file"], s["samples"])
    elif tokenizer is None:
        raise PolypruneError("A preview of this calibration set needs the model's tokenizer",
                             "load a model (Model panel) to see the preview")
    else:
        texts = build(spec, tokenizer).texts
    counts = cuts = None
    if tokenizer is not None:
        counts = [len(x) for x in tokenizer(texts)["input_ids"]]
        cuts = [cut_offset(tokenizer, t, s["seq_len"]) for t in texts[:shown]]
    return CalibrationPreview(texts[:shown], counts, cuts or [], len(texts), available, s["seq_len"])


# --------------------------------------------------------------------------------------------
# studies
# --------------------------------------------------------------------------------------------
def study_rows_so_far(cfg: StudyConfig) -> list[dict]:
    """The result rows of a study's cells finished so far (dense first, grid order), read from its
    folder while the study runs (the study's own tables are written when it stops).

    Raises:
        PolypruneError: invalid study settings.
    """
    out = Path(cfg.out).expanduser()
    if not out.is_dir():
        return []
    sig = eval_signature(eval_config(cfg.evaluation))
    rows = list(finished_rows(out, "dense", sig) or [])
    for cell in plan(cfg):
        rows += finished_rows(out, cell.id, sig) or []
    return rows
