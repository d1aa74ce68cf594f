"""The application state: the one owner of what is loaded, built, measured, pruned and evaluated.

Panels *show* this state and ask for changes through jobs that call one core stage each; a job's
result is recorded here (in the window's thread) by one of the setters, which emits the signal
the views listen to. Every result is the core's own object (``LoadedModel``, ``CalibrationSet``,
``FeatureRun``, :class:`~polyprune.session.Session` with its ``Variant``\\ s,
``EvaluationTable``), so what a plot shows is the core's number.
"""
from __future__ import annotations

import copy
import json
from collections import OrderedDict

from PySide6.QtCore import QObject, Signal

from polyprune.calibration import CalibrationSet
from polyprune.evaluation import Result
from polyprune.models import LoadedModel
from polyprune.pipeline import FeatureRun
from polyprune.pruning import PruneResult
from polyprune.recipe import PruneConfig, Recipe
from polyprune.session import DENSE_ID, EvaluationTable, Session, Variant, variant_report

#: How many calibration sets are kept (each is a few hundred kilobytes of token ids).
CALIBRATION_CACHE = 4


def spec_key(spec: dict) -> str:
    """A key of a calibration spec (the same settings give the same key)."""
    return json.dumps(spec, sort_keys=True, default=str)


class AppState(QObject):
    """Everything the session holds, with a signal per change.

    Signals:
        model_loaded(object): a :class:`LoadedModel` (``None`` when unloaded).
        calibration_changed(object): a newly built :class:`CalibrationSet`.
        features_ready(object): a :class:`~polyprune.pipeline.FeatureRun` (one setting).
        comparison_ready(object): a ``FeatureRun`` with a second setting and the overlap.
        variants_changed(): a variant was added, renamed or deleted.
        active_changed(object): the model now holds this :class:`~polyprune.session.Variant`.
        evaluated(object): an :class:`~polyprune.session.EvaluationTable`.
        exported(str): the export folder.
        busy_changed(bool, str): a model job started (True, its name) or ended.
        recipe_changed(): settings were replaced from a recipe file.
        model_note_changed(object): a change made in place outside the variants (``"Lens"``), or
            ``None`` once it is undone; other model jobs are refused while it stands.
    """

    model_loaded = Signal(object)
    calibration_changed = Signal(object)
    features_ready = Signal(object)
    comparison_ready = Signal(object)
    variants_changed = Signal()
    active_changed = Signal(object)
    evaluated = Signal(object)
    exported = Signal(str)
    busy_changed = Signal(bool, str)
    recipe_changed = Signal()
    model_note_changed = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.loaded: LoadedModel | None = None
        self.info: dict | None = None
        self.session: Session | None = None
        self.calibrations: OrderedDict[str, CalibrationSet] = OrderedDict()
        self.calibration: CalibrationSet | None = None
        self.features_run: FeatureRun | None = None
        self.features_variant: str = ""
        self.feature_labels: tuple[str, str] = ("A", "B")
        self.results: dict[str, dict[str, list[Result]]] = {}  # evaluation key -> variant id -> results
        self.table: EvaluationTable | None = None
        self.export_path: str | None = None
        self.export_report: dict | None = None
        self.busy = False
        self.busy_name = ""
        self.recipe = Recipe()
        self.model_note: str | None = None

    # --- model --------------------------------------------------------------------------
    def set_model(self, loaded: LoadedModel | None) -> None:
        """A new model replaces everything built and measured on the previous one."""
        self.loaded = loaded
        self.info = loaded.info() if loaded is not None else None
        self.session = Session(loaded) if loaded is not None else None
        self.calibrations.clear()
        self.calibration = None
        self.features_run = None
        self.results = {}
        self.table = None
        self.export_path = None
        self.model_note = None
        self.model_loaded.emit(loaded)
        self.model_note_changed.emit(None)
        self.variants_changed.emit()
        self.active_changed.emit(self.active)
        self.evaluated.emit(None)

    def set_model_note(self, note: str | None) -> None:
        """Record a change a panel made to the model in place outside the variants (Lens), or
        ``None`` when it was undone. While it stands the model is not any variant: other panels'
        jobs are refused (see ``MainWindow.run_job``) so no result is filed under the wrong model."""
        self.model_note = note
        self.model_note_changed.emit(note)

    # --- calibration --------------------------------------------------------------------
    def cached_calibration(self, spec: dict) -> CalibrationSet | None:
        """The calibration set already built for ``spec`` (for this model's tokenizer), or ``None``."""
        return self.calibrations.get(spec_key(spec))

    def store_calibration(self, spec: dict, cal: CalibrationSet | None) -> None:
        """Remember a calibration set built for ``spec``."""
        if cal is None:
            return
        key = spec_key(spec)
        new = key not in self.calibrations
        self.calibrations[key] = cal
        self.calibrations.move_to_end(key)
        while len(self.calibrations) > CALIBRATION_CACHE:
            self.calibrations.popitem(last=False)
        self.calibration = cal
        if new:
            self.calibration_changed.emit(cal)

    # --- features -----------------------------------------------------------------------
    def set_features(self, run: FeatureRun, label: str = "A") -> None:
        """Record measured feature magnitudes (and the variant they were measured on)."""
        self.features_run = run
        self.feature_labels = (label, "B")
        self.features_variant = self.active.name if self.active is not None else ""
        self.store_calibration(run.calibration.meta.get("spec") or {}, run.calibration)
        self.features_ready.emit(run)

    def set_comparison(self, run: FeatureRun, labels: tuple[str, str] = ("A", "B")) -> None:
        """Record the comparison of two feature settings (named ``labels``)."""
        self.features_run = run
        self.feature_labels = labels
        self.comparison_ready.emit(run)

    @property
    def features(self):
        """The measured :class:`~polyprune.features.FeatureResult` of the first setting (or ``None``)."""
        return self.features_run.result if self.features_run is not None else None

    @property
    def features_calibration(self) -> CalibrationSet | None:
        return self.features_run.calibration if self.features_run is not None else None

    @property
    def comparison(self) -> FeatureRun | None:
        """The feature run when it holds a second setting, else ``None``."""
        run = self.features_run
        return run if run is not None and run.other is not None else None

    # --- variants -----------------------------------------------------------------------
    @property
    def active(self) -> Variant | None:
        """The variant the model holds now."""
        return self.session.active if self.session is not None else None

    @property
    def variants(self) -> list[Variant]:
        return list(self.session.variants) if self.session is not None else []

    @property
    def prune_result(self) -> PruneResult | None:
        """The pruning the model holds now (``None`` while it is dense)."""
        return self.active.result if self.active is not None else None

    @property
    def is_pruned(self) -> bool:
        return self.prune_result is not None

    def add_variant(self, variant: Variant) -> None:
        """Record a finished pruning as a new variant (the model holds it)."""
        self.session.add(variant)
        self.variants_changed.emit()
        self.active_changed.emit(self.session.active)

    def set_active(self) -> None:
        """The model's variant changed (after a job moved it)."""
        self.active_changed.emit(self.active)
        self.variants_changed.emit()

    def rename_variant(self, vid: str, name: str) -> None:
        """Rename a variant.

        Raises:
            PolypruneError: an empty or taken name.
        """
        self.session.rename(vid, name)
        self.variants_changed.emit()

    def forget_variant(self, vid: str) -> None:
        """Delete a variant the model does not hold, with its evaluation results."""
        self.session.remove(vid)
        for per in self.results.values():
            per.pop(vid, None)
        if self.table is not None and vid in self.table.results:
            self.table = None
            self.evaluated.emit(None)
        self.variants_changed.emit()

    # --- evaluation ---------------------------------------------------------------------
    def known_results(self, key: str) -> dict[str, list[Result]]:
        """Results made with the evaluation settings ``key``, by variant id (still existing ones)."""
        ids = {v.id for v in self.variants}
        return {vid: rs for vid, rs in self.results.get(key, {}).items() if vid in ids}

    def set_evaluation(self, table: EvaluationTable) -> None:
        """Record an evaluation (its results are reused while the settings stay the same)."""
        self.results.setdefault(table.key, {}).update(table.results)
        self.table = table
        self.evaluated.emit(table)

    def dense_results(self) -> list[Result]:
        """The dense model's results of the last evaluation."""
        return list(self.table.results.get(DENSE_ID, [])) if self.table is not None else []

    def variant_results(self, vid: str | None = None) -> list[Result]:
        """A variant's results in the last evaluation (default: the variant the model holds)."""
        if self.table is None:
            return []
        vid = vid or (self.active.id if self.active is not None else DENSE_ID)
        return list(self.table.results.get(vid, [])) if vid != DENSE_ID else []

    # --- export and busy ----------------------------------------------------------------
    def set_exported(self, path: str, report: dict) -> None:
        """Record where the model was exported, with the report written there."""
        self.export_path = path
        self.export_report = report
        self.exported.emit(path)

    def set_busy(self, busy: bool, name: str) -> None:
        """Show whether a model job runs (buttons that would start one are disabled)."""
        self.busy = busy
        self.busy_name = name if busy else ""
        self.busy_changed.emit(busy, name)

    def recipe_for(self, variant: Variant) -> Recipe:
        """The recipe that makes ``variant``: its own pruning and calibration settings with the
        current model, evaluation and export settings (the dense model: no pruning)."""
        now = self.recipe
        r = copy.deepcopy(variant.recipe if variant.recipe is not None else now)
        for name in ("model", "device", "dtype", "trust_remote_code", "out", "export", "overwrite", "reload_check"):
            setattr(r, name, getattr(now, name))
        r.evaluation = copy.deepcopy(now.evaluation)
        if variant.is_dense:
            r.pruning = PruneConfig(method="magnitude", sparsity=0.0)
            r.contrast = None
        return r

    def report(self, variant: Variant | None = None) -> dict:
        """The run report of a variant (default: the one the model holds), for the model card."""
        variant = variant or self.active
        table = self.table if self.table is not None and variant is not None and variant.id in self.table.results \
            else None
        recipe = self.recipe_for(variant)
        return variant_report(self.session, variant, recipe, table, seed=recipe.seed)
