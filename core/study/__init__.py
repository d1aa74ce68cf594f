"""Studies: calibration sources x methods x sparsities on one model, evaluated, in one table.

Kim et al. (2024) and Kurz et al. (2024) ask which calibration data keeps a pruned model good in
other languages, and find that no method and no language wins everywhere (methods.md §1, §6). A
study runs that comparison on the user's own model and languages in one go::

    model: demo
    calibration:
      - {kind: translation, langs: [fra_Latn], direction: both}
      - {kind: monolingual, lang: eng_Latn}
      - {kind: mix, proportions: {eng_Latn: 0.5, fra_Latn: 0.25, swh_Latn: 0.25}}
    calibration_defaults: {samples: 32, seq_len: 256, shots: 4, source: auto}
    methods: [wanda, sparsegpt, wanda+owl]      # or {method: sparsegpt, damping: 0.02, label: ...}
    sparsities: [0.5]
    pattern: unstructured
    pruning: {batch_size: 8}                     # shared PruneConfig settings
    evaluation: {ppl: [eng_Latn, fra_Latn, swh_Latn], ppl_limit: 200}
    reference: 0                                 # the cell masks are compared with (index, id or dict)
    out: runs/study

How it runs (:func:`run_study`): every setting is validated before the model is loaded; the model
is loaded once and evaluated dense once; for each *cell* (calibration spec, method, sparsity in
that order) the model is pruned, evaluated, its masks saved, and the dense weights put back from
the pruning records (bit-identical, checked against a fingerprint; never reloaded from disk).
Calibration sets are built once per spec and OWL's outlier ratios once per calibration set.

Output folder::

    study.json                  the resolved configuration
    cells/<cell id>/cell.json   settings, calibration metadata, sparsities, timings
    cells/<cell id>/results.json    the cell's rows (written last: a cell is done when it exists)
    cells/<cell id>/masks.safetensors
    results.jsonl, results.csv  one row per (cell, task, language, metric), dense rows first
    mask_agreement.csv          per module and per block, every cell against the reference cell
    paired.csv                  every cell minus the reference cell per task, language and metric, with a
                                paired bootstrap 95% interval (same items resampled for both cells)
    cells/<cell id>/items.json  each item's score (0/1 per document, nll and tokens per sentence)

Layout: :mod:`.config` (settings, grid), :mod:`.run` (running, resuming), :mod:`.folder` (the files).

Resume and stop: a cell id is a hash of everything that determines its pruned model (model, dtype,
seed, normalized calibration spec, contrast spec, pruning settings). Running a study again skips
cells whose ``results.json`` exists for the same evaluation settings (a changed evaluation
re-runs the cells). Cancelling through ``progress`` stops between or within cells; the current
cell is abandoned (its weights restored), finished cells stay on disk and the tables are written.
"""
from __future__ import annotations

from ..evaluation.stats import paired_difference
from .config import Cell, StudyConfig, load_study, parse_method, plan, reference_cell, study_from_text
from .folder import (HeatmapTable, heat_scores, heatmap_table, heatmaps, load_agreement, load_paired, load_rows,
                     lower_is_better, print_summary, write_tables)
from .run import StudyResult, run_study, study_status

__all__ = ["Cell", "StudyConfig", "load_study", "parse_method", "plan", "reference_cell", "study_from_text",
           "HeatmapTable", "heat_scores", "heatmap_table", "heatmaps", "load_agreement", "load_paired", "load_rows",
           "lower_is_better", "print_summary", "write_tables", "StudyResult", "run_study", "study_status",
           "paired_difference"]
