"""The application state: what is loaded, measured and pruned, with signals for the views.

Panels *show* this state and ask for changes through jobs; they never keep their own copy of a
model or a result. All results are the core's own objects (``LoadedModel``, ``CalibrationSet``,
``FeatureResult``, ``PruneResult``, ``EvalRecord``), so what a plot shows is the core's number.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from PySide6.QtCore import QObject, Signal

from polyprune.demos import CalibrationSet, DemoConfig
from polyprune.evaluation import EvalRecord, compare
from polyprune.features import FeatureResult
from polyprune.models import LoadedModel
from polyprune.pruning import PruneResult
from polyprune.recipe import EvalConfig, Recipe


@dataclass
class FeatureComparison:
    """Two feature settings compared: per-layer overlap of their top dimensions.

    Attributes:
        label_a, label_b: plain names of the two settings ("English→French translation").
        other: the second setting's :class:`FeatureResult` (the first is ``AppState.features``).
        overlap: ``[n_layers + 1]`` share of top dimensions in common, in [0, 1].
        ratio: share of hidden dimensions compared (Kim et al.: 0.4).
    """

    label_a: str
    label_b: str
    other: FeatureResult
    overlap: Any
    ratio: float


@dataclass
class EvalState:
    """Evaluation records of the dense and the pruned model, and the settings they were made with."""

    dense: list[EvalRecord] = field(default_factory=list)
    pruned: list[EvalRecord] = field(default_factory=list)
    dense_key: str | None = None
    pruned_key: str | None = None

    def rows(self) -> list[dict]:
        """``polyprune.evaluation.compare`` rows (dense, pruned, delta) for the table and chart."""
        if self.dense:
            return compare(self.dense, self.pruned)
        return [{"task": r.task, "language": r.language, "metric": r.metric, "dense": None,
                 "pruned": r.value, "delta": None} for r in self.pruned]


def eval_key(cfg: EvalConfig) -> str:
    """A key of the evaluation settings that decide the numbers (dense results are reused by it)."""
    d = asdict(cfg)
    return repr((sorted(d["ppl"]), sorted(d["xnli"]), d["limit"], d.get("ppl_limit"), d["data"], d["split"]))


class AppState(QObject):
    """Everything the session holds, with a signal per change.

    Signals:
        model_loaded(object): a :class:`LoadedModel` (``None`` when unloaded).
        calibration_changed(object): a :class:`CalibrationSet` (``None`` when settings changed).
        features_ready(object): a :class:`FeatureResult`.
        comparison_ready(object): a :class:`FeatureComparison`.
        pruned(object): a :class:`PruneResult`.
        reverted(): the model is dense again.
        evaluated(object): the :class:`EvalState`.
        exported(str): the export folder.
        busy_changed(bool, str): a model job started (True, its name) or ended.
        recipe_changed(): settings were replaced from a recipe file.
    """

    model_loaded = Signal(object)
    calibration_changed = Signal(object)
    features_ready = Signal(object)
    comparison_ready = Signal(object)
    pruned = Signal(object)
    reverted = Signal()
    evaluated = Signal(object)
    exported = Signal(str)
    busy_changed = Signal(bool, str)
    recipe_changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.loaded: LoadedModel | None = None
        self.info: dict | None = None
        self.demo_config: DemoConfig = DemoConfig(samples=16, seq_len=256)
        self.calibration_text: str | None = None
        self.calibration: CalibrationSet | None = None
        self.calibration_key: str | None = None
        self.features: FeatureResult | None = None
        self.features_calibration: CalibrationSet | None = None
        self.comparison: FeatureComparison | None = None
        self.prune_result: PruneResult | None = None
        self.eval = EvalState()
        self.export_path: str | None = None
        self.export_report: dict | None = None
        self.busy = False
        self.busy_name = ""
        self.recipe = Recipe()

    # --- setters that emit --------------------------------------------------------------
    def set_model(self, loaded: LoadedModel | None) -> None:
        """A new model replaces everything measured on the previous one."""
        self.loaded = loaded
        self.info = loaded.info() if loaded is not None else None
        self.calibration = None
        self.calibration_key = None
        self.features = None
        self.features_calibration = None
        self.comparison = None
        self.prune_result = None
        self.eval = EvalState()
        self.export_path = None
        self.model_loaded.emit(loaded)
        self.calibration_changed.emit(None)
        self.evaluated.emit(self.eval)

    def set_calibration(self, cal: CalibrationSet | None, key: str | None) -> None:
        """Record the tokenized demonstrations and the settings key they were built from."""
        self.calibration = cal
        self.calibration_key = key
        self.calibration_changed.emit(cal)

    def set_features(self, result: FeatureResult, cal: CalibrationSet) -> None:
        """Record measured feature magnitudes (and the calibration set they came from)."""
        self.features = result
        self.features_calibration = cal
        self.comparison = None
        self.features_ready.emit(result)

    def set_comparison(self, comp: FeatureComparison) -> None:
        """Record the comparison of two feature settings."""
        self.comparison = comp
        self.comparison_ready.emit(comp)

    def set_pruned(self, result: PruneResult) -> None:
        """Record a finished pruning; earlier pruned evaluation results no longer apply."""
        self.prune_result = result
        self.eval.pruned = []
        self.eval.pruned_key = None
        self.pruned.emit(result)
        self.evaluated.emit(self.eval)

    def set_reverted(self) -> None:
        """The model is dense again."""
        self.prune_result = None
        self.eval.pruned = []
        self.eval.pruned_key = None
        self.reverted.emit()
        self.evaluated.emit(self.eval)

    def set_eval(self, ev: EvalState) -> None:
        """Record evaluation results."""
        self.eval = ev
        self.evaluated.emit(ev)

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

    # --- derived ------------------------------------------------------------------------
    @property
    def is_pruned(self) -> bool:
        """True while the model holds a pruning that can be reverted."""
        return self.prune_result is not None

    def report(self) -> dict:
        """A run report in the shape of ``polyprune.pipeline.run``'s (for the model card)."""
        from polyprune.pipeline import versions

        rec = self.recipe
        report: dict = {"recipe": rec.to_dict(), "seed": rec.seed, "versions": versions()}
        if self.loaded is not None:
            report["model"] = (self.info or {}) | {"name": self.loaded.meta.get("name", self.loaded.spec)}
        if self.calibration is not None:
            report["calibration"] = {k: v for k, v in self.calibration.meta.items()}
        if self.prune_result is not None:
            report["pruning"] = self.prune_result.summary()
        else:
            report["pruning"] = {"config": {"method": "none (dense)"}, "overall_sparsity": 0.0}
        report["evaluation"] = self.eval.rows()
        report["evaluation_records"] = {"dense": [r.to_dict() for r in self.eval.dense],
                                        "pruned": [r.to_dict() for r in self.eval.pruned]}
        return report
