"""``polyprune slim`` / ``polyprune slim-curve`` through a parser built with ``add_parsers``."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyprune.errors import PolypruneError
from polyprune.slimming.cli import add_parsers
from slim_helpers import LATIN, save_lm, spm_bpe, tiny_lm


def _parse(argv):
    ap = argparse.ArgumentParser(prog="polyprune")
    add_parsers(ap.add_subparsers(dest="cmd"))
    return ap.parse_args(argv)


@pytest.fixture(scope="module", params=["llama", "gemma3"])  # untied and tied embeddings
def folder(tmp_path_factory, request):
    tok = spm_bpe()
    return save_lm(tmp_path_factory.mktemp("cli") / "src", tiny_lm(request.param, len(tok)), tok)


def test_slim_cli(folder, tmp_path, capsys, data_dir):
    out = tmp_path / "out"
    a = _parse(["slim", "--model", str(folder), "--keep", "eng_Latn,swh_Latn", "--vocab", "script",
                "--dtype", "float16", "--eval-sentences", "4", "--no-speed", "--data", str(data_dir), "--out", str(out)])
    assert a.func(a) == 0
    text = capsys.readouterr().out
    assert "eng_Latn: held-out sentence NLL" in text and "total" in text
    model = AutoModelForCausalLM.from_pretrained(out)
    assert str(model.dtype) == "torch.float16"
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    # the same run again needs --overwrite
    with pytest.raises(PolypruneError, match="already exists"):
        a.func(a)


def test_slim_cli_dry_run_and_settings(folder, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(LATIN))
    settings = tmp_path / "slim.yaml"
    settings.write_text(f"slim:\n  keep: [eng_Latn]\n  vocab: corpus\n  corpus: file:{corpus}\n  remove_blocks: 1\n")
    a = _parse(["slim", "--model", str(folder), "--settings", str(settings), "--dry-run"])
    assert a.func(a) == 0
    text = capsys.readouterr().out
    assert "vocabulary: corpus" in text and "blocks removed: [" in text and "embedding" in text
    assert not list(tmp_path.glob("out*"))


def test_slim_cli_bad_input(folder, tmp_path):
    for argv, msg in [(["--keep", "eng_Latn", "--vocab", "size"], "vocabulary size"),
                      (["--keep", "klingon"], "Unknown language"),
                      (["--keep", "eng_Latn"], "No output folder")]:
        a = _parse(["slim", "--model", str(folder), *argv])
        with pytest.raises(PolypruneError, match=msg):
            a.func(a)


def test_slim_curve_cli(folder, tmp_path, data_dir):
    out = tmp_path / "curve.csv"
    a = _parse(["slim-curve", "--model", str(folder), "--keep", "eng_Latn", "--eval-sentences", "3",
                "--corpus-sentences", "20", "--data", str(data_dir), "--sizes", "300,350", "--out", str(out)])
    assert a.func(a) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["vocab"] for r in rows] == ["size", "size", "script", "corpus"]
    assert float(rows[2]["change_pct"]) <= 1e-6  # the script vocabulary is exact on Latin text
    side = json.loads((tmp_path / "curve.csv.polyprune.json").read_text())
    assert len(side["rows"]) == 4
