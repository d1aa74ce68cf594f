"""Tests for polyprune.languages and the built-in translation pairs."""
from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path

import pytest

from polyprune.errors import PolypruneError
from polyprune.languages import (
    FLORES_LANGUAGES,
    TASK_TO_FLORES,
    display_label,
    language_name,
    resolve_language,
    search_languages,
)

PAIR_LANGUAGES = [
    "eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "por_Latn", "swh_Latn",
    "zho_Hans", "hin_Deva", "arb_Arab", "rus_Cyrl", "jpn_Jpan",
]


def _data_dir() -> Path:
    env = os.environ.get("POLYPRUNE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def test_204_codes():
    assert len(FLORES_LANGUAGES) == 204


@pytest.mark.data
def test_codes_match_flores_dev_files():
    dev = _data_dir() / "flores200" / "dev"
    if not dev.is_dir():
        pytest.skip(f"FLORES-200 data not found at {dev} (set POLYPRUNE_DATA to the shared data folder)")
    stems = {p.name[: -len(".dev")] for p in dev.glob("*.dev")}
    assert stems == set(FLORES_LANGUAGES)


def test_names_unique_and_nonempty():
    names = list(FLORES_LANGUAGES.values())
    assert all(n.strip() for n in names)
    assert len(set(names)) == len(names)
    assert len({n.lower() for n in names}) == len(names)


def test_known_names():
    assert FLORES_LANGUAGES["eng_Latn"] == "English"
    assert FLORES_LANGUAGES["swh_Latn"] == "Swahili"
    assert FLORES_LANGUAGES["zho_Hans"] == "Chinese (Simplified)"
    assert FLORES_LANGUAGES["zho_Hant"] == "Chinese (Traditional)"
    assert FLORES_LANGUAGES["arb_Arab"] == "Modern Standard Arabic"
    assert FLORES_LANGUAGES["arb_Latn"] == "Modern Standard Arabic (Romanized)"


def test_task_codes_map_to_flores():
    assert len(TASK_TO_FLORES) == 28
    assert set(TASK_TO_FLORES.values()) <= set(FLORES_LANGUAGES)
    assert TASK_TO_FLORES["jp"] == TASK_TO_FLORES["ja"] == "jpn_Jpan"


@pytest.mark.parametrize(
    "text, code",
    [
        ("fra_Latn", "fra_Latn"),
        ("FRA_latn", "fra_Latn"),
        ("  swh_latn ", "swh_Latn"),
        ("fr", "fra_Latn"),
        ("SW", "swh_Latn"),
        ("zh", "zho_Hans"),
        ("jp", "jpn_Jpan"),
        ("French", "fra_Latn"),
        ("french", "fra_Latn"),
        ("Swahili", "swh_Latn"),
        ("chinese (traditional)", "zho_Hant"),
        ("Swahili — swh_Latn", "swh_Latn"),
    ],
)
def test_resolve_language(text, code):
    assert resolve_language(text) == code


def test_language_name():
    assert language_name("hin_Deva") == "Hindi"
    assert language_name("de") == "German"
    with pytest.raises(PolypruneError):
        language_name("French")  # names are not codes


def test_unknown_code_suggests_close_match():
    with pytest.raises(PolypruneError) as info:
        language_name("fra_Lat")
    err = info.value
    assert "fra_Lat" in err.problem
    assert err.fix and "fra_Latn" in err.fix
    with pytest.raises(PolypruneError) as info:
        resolve_language("Swahilli")
    assert "swh_Latn" in info.value.fix


def test_unknown_without_match_explains_format():
    with pytest.raises(PolypruneError) as info:
        resolve_language("qqqqqqqqqq")
    assert "fra_Latn" in info.value.fix


def test_search_empty_returns_all_sorted_by_name():
    rows = search_languages("")
    assert len(rows) == 204
    names = [name.lower() for _, name in rows]
    assert names == sorted(names)


def test_search_prefix_first_then_alphabetical():
    rows = search_languages("ara")
    codes = [c for c, _ in rows]
    assert "arb_Arab" in codes and "ace_Arab" in codes  # code and name matches
    for code, name in rows:
        assert "ara" in code.lower() or "ara" in name.lower()
    rows = search_languages("ar")
    prefix = [name for _, name in rows if name.lower().startswith("ar")]
    assert [name for _, name in rows[: len(prefix)]] == prefix
    assert prefix == sorted(prefix, key=str.lower)
    assert search_languages("SWAH") == [("swh_Latn", "Swahili")]
    assert search_languages("zzzz") == []


def test_display_label():
    assert display_label("swh_Latn") == "Swahili \u2014 swh_Latn"
    assert resolve_language(display_label("zho_Hant")) == "zho_Hant"


def _load_pairs() -> list[dict]:
    path = files("polyprune.resources") / "builtin_pairs.jsonl"
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_builtin_pairs():
    rows = _load_pairs()
    assert len(rows) >= 36
    assert [r["id"] for r in rows] == list(range(len(rows)))
    for row in rows:
        codes = [k for k in row if k != "id"]
        assert set(codes) <= set(FLORES_LANGUAGES), row["id"]
        for lang in PAIR_LANGUAGES:
            assert isinstance(row.get(lang), str) and row[lang].strip(), (row["id"], lang)
        assert 10 <= len(row["eng_Latn"].split()) <= 25
    # sentences are distinct
    assert len({r["eng_Latn"] for r in rows}) == len(rows)
