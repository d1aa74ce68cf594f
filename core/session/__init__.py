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

from .compare import EvaluationTable, chance_level, comparison_rows, eval_key, evaluate_variants, item_scores, verdict
from .extras import (CalibrationPreview, TryResult, compare_features, cut_offset, flores_prompt, preview_calibration,
                     study_rows_so_far, try_variants)
from .variants import (ACCURACY_METRICS, BETTER, CHANCE, DENSE_ID, METHOD_NAMES, NO_CHANGE, NO_INTERVAL, WORSE, Session,
                       Variant, default_name, export_variant, labelled, prune_variant, variant_report)

__all__ = ["EvaluationTable", "chance_level", "comparison_rows", "eval_key", "evaluate_variants", "item_scores",
           "verdict", "CalibrationPreview", "TryResult", "compare_features", "cut_offset", "flores_prompt",
           "preview_calibration", "study_rows_so_far", "try_variants", "ACCURACY_METRICS", "BETTER", "CHANCE",
           "DENSE_ID", "METHOD_NAMES", "NO_CHANGE", "NO_INTERVAL", "WORSE", "Session", "Variant", "default_name",
           "export_variant", "labelled", "prune_variant", "variant_report"]
