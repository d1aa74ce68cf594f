"""Variants of one loaded model: the dense model and each pruning, moved between exactly; the
prune-into-a-variant and export-a-variant stages."""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ..calibration import CalibrationSet
from ..errors import PolypruneError
from ..export import ExportResult
from ..models import LoadedModel
from ..pipeline import export_model, prune_model, versions
from ..progress import Progress, ensure
from ..pruning import PruneResult, detach, reapply
from ..recipe import Recipe

if TYPE_CHECKING:  # the evaluation table is built by .compare, which imports this module
    from .compare import EvaluationTable

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
