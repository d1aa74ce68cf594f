"""Tests for polyprune.evaluation.results: the one result structure, JSON/CSV round trips, compare."""
from __future__ import annotations

import json
import math

import pytest

from polyprune.errors import PolypruneError
from polyprune.evaluation.results import (Result, compare, load_csv, load_json, load_results, new_run_id, save_csv,
                                          save_json, save_results)


def sample():
    return [
        Result("xnli", "fr", "acc", 0.5, 0.4, 0.6, 200, "demo", "run1", {"stderr": 0.035, "split": "test"}),
        Result("xnli", "fr", "rankc", 0.81234567890123, None, None, 200, "demo", "run1", {"reference": "en"}),
        Result("flores_ppl", "swh_Latn", "perplexity", 42.0, n=10, model="demo", run_id="run1",
               extra={"tokens": 500, "nll": 1868.8}),
        Result("xcopa", "sw", "error", float("nan"), n=0, model="demo", run_id="run1",
               error="/d/xcopa/test.sw.jsonl, line 3: field 'label' is 2, out of range"),
        Result("pawsx", "zh", "acc_norm", 0.55, n=7, extra={"nested": {"x": [1, 2.5, float("inf")]}, "t": "é, \"q\""}),
    ]


def same(a: Result, b: Result):
    assert (a.task, a.language, a.metric, a.n, a.model, a.run_id, a.error, a.ci_low, a.ci_high) == \
           (b.task, b.language, b.metric, b.n, b.model, b.run_id, b.error, b.ci_low, b.ci_high)
    assert (math.isnan(a.value) and math.isnan(b.value)) or a.value == b.value


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_round_trip(tmp_path, suffix):
    rs = sample()
    path = save_results(rs, tmp_path / f"sub/results{suffix}")
    back = load_results(path)
    assert len(back) == len(rs)
    for a, b in zip(rs, back):
        same(a, b)
    assert back[0].extra == {"stderr": 0.035, "split": "test"}
    assert back[4].extra == {"nested": {"x": [1, 2.5, None]}, "t": "é, \"q\""}  # inf -> null
    assert back[3].error.startswith("/d/xcopa") and not back[3].ok


def test_json_is_a_list_of_records_with_a_signature(tmp_path):
    p = save_json(sample(), tmp_path / "r.json")
    whole = json.loads(p.read_text(encoding="utf-8"))  # strict JSON: no NaN
    assert whole["polyprune"]["kind"] == "evaluation results"  # what lets --overwrite replace it later
    data = whole["results"]
    assert isinstance(data, list)
    for rec in data:
        assert {"task", "language", "metric", "value", "n"} <= set(rec)
    assert data[3]["value"] is None and data[3]["metric"] == "error"
    # minimal foreign records load; unknown keys go to extra
    (tmp_path / "m.json").write_text(json.dumps([{"task": "t", "language": "en", "metric": "acc", "value": 1,
                                                  "n": 3, "seed": 7}]), encoding="utf-8")
    r, = load_json(tmp_path / "m.json")
    assert (r.value, r.n, r.extra) == (1.0, 3, {"seed": 7})


def test_load_errors(tmp_path):
    with pytest.raises(PolypruneError, match="not found"):
        load_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(PolypruneError, match="not valid JSON"):
        load_json(tmp_path / "bad.json")
    (tmp_path / "b2.json").write_text(json.dumps([{"task": "t", "language": "en", "metric": "acc", "value": 1},
                                                  {"task": "t", "metric": "acc", "value": 1}]), encoding="utf-8")
    with pytest.raises(PolypruneError, match=r"record 2: field 'language'"):
        load_json(tmp_path / "b2.json")
    (tmp_path / "b.csv").write_text("task,language\nx,y\n", encoding="utf-8")
    with pytest.raises(PolypruneError, match="missing column"):
        load_csv(tmp_path / "b.csv")


def test_compare():
    dense = [Result("xnli", "en", "acc", 0.5, 0.4, 0.6, 10), Result("xnli", "fr", "acc", 0.4, n=10),
             Result("flores_ppl", "eng_Latn", "perplexity", 10.0, n=4),
             Result("xcopa", "sw", "error", float("nan"), error="boom")]
    pruned = [Result("flores_ppl", "eng_Latn", "perplexity", 12.5, n=4),
              Result("xnli", "en", "acc", 0.45, 0.35, 0.55, 10),
              Result("xnli", "sw", "acc", 0.3, n=10)]
    rows = compare(dense, pruned)
    assert [(r["task"], r["language"]) for r in rows] == [("xnli", "en"), ("xnli", "fr"),
                                                          ("flores_ppl", "eng_Latn"), ("xnli", "sw")]
    assert rows[0]["delta"] == pytest.approx(-0.05) and rows[0]["rel_delta"] == pytest.approx(-0.1)
    assert rows[0]["dense_ci"] == [0.4, 0.6] and rows[0]["pruned_ci"] == [0.35, 0.55]
    assert rows[1]["pruned"] is None and rows[1]["delta"] is None
    assert rows[2]["delta"] == pytest.approx(2.5)
    assert rows[3]["dense"] is None and rows[3]["pruned"] == 0.3


def test_run_ids_differ():
    assert new_run_id() != new_run_id()


def test_csv_escapes(tmp_path):
    r = Result("custom,task", "en", "acc", 1 / 3, n=3, model='a "model", with commas')
    p = save_csv([r], tmp_path / "r.csv")
    back, = load_csv(p)
    assert back.task == "custom,task" and back.model == 'a "model", with commas' and back.value == 1 / 3
