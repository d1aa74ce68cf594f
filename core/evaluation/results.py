"""One result structure for every evaluation: multiple-choice tasks, perplexity, translation.

A :class:`Result` is one number: ``(task, language, metric)`` with its value, an optional 95%
confidence interval, the number of examples it rests on, the model and the run that produced it.
Lists of results are saved as JSON (``{"polyprune": {...}, "results": [records]}``, each record with
at least ``task``, ``language``, ``metric``, ``value``, ``n``; what ``polyprune evaluate --out
FILE.json`` writes) or CSV (plain columns that ``pandas.read_csv`` reads as is, with the settings in
a sidecar ``FILE.csv.polyprune.json``), and put side by side with :func:`compare` — the one way a
dense and a pruned model (or any two variants) are compared.

A failed ``(task, language)`` in a multi-task run is a :class:`Result` too: ``metric == "error"``,
``value`` NaN, ``error`` holding the message (file, line and field where the input was at fault).

Qt-free; imports nothing heavy.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import PolypruneError
from ..fileio import atomic_write_text, jsonable, write_json

__all__ = ["Result", "new_run_id", "to_records", "save_json", "load_json", "save_csv", "load_csv", "save_results",
           "load_results", "compare"]

#: Column order of CSV files (``extra`` is a JSON-encoded object in its cell).
CSV_COLUMNS = ("task", "language", "metric", "value", "ci_low", "ci_high", "n", "model", "run_id",
               "error", "extra")


@dataclass
class Result:
    """One evaluation number.

    Attributes:
        task: ``"xnli"``, ``"pawsx"``, ``"xcopa"``, ``"xstorycloze"``, ``"xwinograd"``,
            ``"flores_ppl"``, ``"flores_mt"``, or a custom task's name.
        language: the task's language code (two-letter code of the dataset, FLORES-200 code for
            perplexity, ``"fra_Latn-eng_Latn"`` for a translation direction).
        metric: ``"acc"``, ``"acc_norm"`` (normalised by characters, as lm-evaluation-harness),
            ``"acc_bytes"`` (by UTF-8 bytes), ``"prompt_mean"``, ``"rankc"``, ``"perplexity"``,
            ``"chrf++"``, ``"bleu"``, or ``"error"``.
        value: the metric's value (accuracies and RankC are fractions in [0, 1]; chrF++ and BLEU
            are sacreBLEU's 0-100 scores); NaN for an error row.
        ci_low, ci_high: bounds of the bootstrap 95% confidence interval, or ``None``.
        n: number of examples (documents, sentences, parallel items).
        model: model name or path.
        run_id: identifier shared by all results of one run (see :func:`new_run_id`).
        extra: further JSON-ready numbers (``stderr``, ``tokens``, per-sample predictions...).
        error: for ``metric == "error"``: the message; else ``None``.
    """

    task: str
    language: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    model: str = ""
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """``True`` unless this row records an error."""
        return self.error is None

    def key(self) -> tuple[str, str, str]:
        """``(task, language, metric)``: what :func:`compare` matches on."""
        return (self.task, self.language, self.metric)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready ``dict``: NaN/inf values become ``None`` (JSON has no NaN)."""
        d = asdict(self)
        for k in ("value", "ci_low", "ci_high"):
            d[k] = _finite_or_none(d[k])
        d["extra"] = jsonable(d["extra"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "record") -> "Result":
        """Build from a dict as written by :meth:`to_dict` (unknown keys go to ``extra``).

        Raises:
            PolypruneError: a required key (task, language, metric, value, n) is missing or
                has the wrong type; ``where`` names the file and record in the message.
        """
        if not isinstance(d, dict):
            raise PolypruneError(f"{where}: not a JSON object", "each result must be an object "
                                 "with task, language, metric, value and n")
        for k in ("task", "language", "metric"):
            if not isinstance(d.get(k), str):
                raise PolypruneError(f"{where}: field {k!r} is missing or not a string",
                                     "each result needs task, language, metric, value and n")
        if "value" not in d:
            raise PolypruneError(f"{where}: field 'value' is missing",
                                 "each result needs task, language, metric, value and n")
        known = {f.name for f in fields(cls)}
        extra = dict(d.get("extra") or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        try:
            value = _float(d.get("value"))
            n = int(d.get("n") or 0)
        except (TypeError, ValueError):
            raise PolypruneError(f"{where}: field 'value' or 'n' is not a number",
                                 "value must be a number (or null) and n an integer") from None
        return cls(task=d["task"], language=d["language"], metric=d["metric"], value=value,
                   ci_low=_opt_float(d.get("ci_low")), ci_high=_opt_float(d.get("ci_high")),
                   n=n, model=str(d.get("model") or ""), run_id=str(d.get("run_id") or ""),
                   extra=extra, error=d.get("error") or None)


def _finite_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _float(v) -> float:
    if v is None or v == "":
        return float("nan")
    return float(v)


def _opt_float(v) -> float | None:
    if v is None or v == "":
        return None
    return float(v)


def new_run_id() -> str:
    """A fresh run identifier: UTC time plus 6 random hex digits, e.g. ``20260101T120000-1a2b3c``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def to_records(results: Iterable[Result]) -> list[dict[str, Any]]:
    """``[r.to_dict() for r in results]``."""
    return [r.to_dict() for r in results]


def save_json(results: Iterable[Result], path, settings: dict | None = None) -> Path:
    """Write ``results`` as strict JSON ``{"polyprune": ..., "settings": ..., "results": [records]}``
    atomically; returns the path."""
    return write_json(Path(path).expanduser(), {"settings": settings or {}, "results": to_records(results)},
                      kind="evaluation results")


def load_json(path) -> list[Result]:
    """Read a JSON file written by :func:`save_json` (or any list of records with at least
    task, language, metric, value; also accepts ``{"results": [...]}``).

    Raises:
        PolypruneError: missing file, invalid JSON, or a record without the required fields
            (file and record number are named).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise PolypruneError(f"Results file not found: {p}", "give a JSON file written by polyprune evaluate --out")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PolypruneError(f"{p}: not valid JSON ({exc.msg}, line {exc.lineno})",
                             "give a JSON file written by polyprune evaluate --out") from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        data = data["results"]
    if not isinstance(data, list):
        raise PolypruneError(f"{p}: expected a JSON list of result records",
                             "give a JSON file written by polyprune evaluate --out")
    return [Result.from_dict(d, f"{p}, record {i + 1}") for i, d in enumerate(data)]


def save_csv(results: Iterable[Result], path, settings: dict | None = None) -> Path:
    """Write ``results`` as CSV with columns :data:`CSV_COLUMNS` (``extra`` JSON-encoded;
    NaN and ``None`` as empty cells) and the settings in a sidecar ``<name>.polyprune.json``."""
    p = Path(path).expanduser()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        d = r.to_dict()
        row = []
        for c in CSV_COLUMNS:
            v = d[c]
            if c == "extra":
                v = json.dumps(v, ensure_ascii=False, sort_keys=True) if v else ""
            elif v is None:
                v = ""
            elif isinstance(v, float):
                v = repr(v)
            row.append(v)
        w.writerow(row)
    atomic_write_text(p, buf.getvalue())
    write_json(p.with_name(p.name + ".polyprune.json"), {"settings": settings or {}, "columns": list(CSV_COLUMNS)},
               kind="settings of " + p.name)
    return p


def load_csv(path) -> list[Result]:
    """Read a CSV file written by :func:`save_csv`.

    Raises:
        PolypruneError: missing file, missing columns, or a bad row (file and line named).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise PolypruneError(f"Results file not found: {p}", "give a CSV file written by polyprune")
    with open(p, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("task", "language", "metric", "value") if c not in (reader.fieldnames or [])]
        if missing:
            raise PolypruneError(f"{p}: missing column(s) {', '.join(missing)}",
                                 "the header must include task, language, metric, value, n")
        out = []
        for row in reader:
            where = f"{p}, line {reader.line_num}"
            d: dict[str, Any] = dict(row)
            try:
                d["extra"] = json.loads(row["extra"]) if row.get("extra") else {}
            except json.JSONDecodeError:
                raise PolypruneError(f"{where}: column 'extra' is not valid JSON",
                                     "leave it empty or write a JSON object") from None
            out.append(Result.from_dict(d, where))
    return out


def save_results(results: Iterable[Result], path, settings: dict | None = None) -> Path:
    """Save by suffix: ``.csv`` as CSV, anything else as JSON."""
    p = Path(path)
    return save_csv(results, p, settings) if p.suffix.lower() == ".csv" else save_json(results, p, settings)


def load_results(path) -> list[Result]:
    """Load by suffix: ``.csv`` as CSV, anything else as JSON."""
    p = Path(path)
    return load_csv(p) if p.suffix.lower() == ".csv" else load_json(p)


def compare(dense: Sequence[Result], pruned: Sequence[Result]) -> list[dict[str, Any]]:
    """Two sets of results side by side (dense vs pruned, or any reference vs variant), matched on
    ``(task, language, metric)``.

    Returns:
        Dicts with ``task, language, metric, n, dense, pruned, delta, rel_delta, dense_ci,
        pruned_ci``: ``delta = pruned - dense``; ``rel_delta = delta / |dense|`` (``None`` when
        dense is 0); ``*_ci`` are ``[low, high]`` or ``None``. Order: ``dense`` first, then
        rows only in ``pruned``. A side that is missing (or an error row) gives ``None`` there
        and in the deltas. Error rows themselves are skipped.
    """
    def ok(r: Result) -> bool:
        return r.ok and r.metric != "error"

    p_map = {r.key(): r for r in pruned if ok(r)}
    rows, seen = [], set()

    def row(d: Result | None, p: Result | None) -> dict[str, Any]:
        ref = d if d is not None else p
        dv = _finite_or_none(d.value) if d is not None else None
        pv = _finite_or_none(p.value) if p is not None else None
        delta = pv - dv if dv is not None and pv is not None else None
        rel = delta / abs(dv) if delta is not None and dv else None
        return {"task": ref.task, "language": ref.language, "metric": ref.metric,
                "n": ref.n, "dense": dv, "pruned": pv, "delta": delta, "rel_delta": rel,
                "dense_ci": [d.ci_low, d.ci_high] if d is not None and d.ci_low is not None else None,
                "pruned_ci": [p.ci_low, p.ci_high] if p is not None and p.ci_low is not None else None}

    for d in dense:
        if not ok(d) or d.key() in seen:
            continue
        seen.add(d.key())
        rows.append(row(d, p_map.get(d.key())))
    for p in pruned:
        if ok(p) and p.key() not in seen:
            seen.add(p.key())
            rows.append(row(None, p))
    return rows
