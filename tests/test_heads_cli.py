"""The heads CLI: an argparse parser built with add_parsers, each subcommand's func called directly."""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
from conftest import save_tiny
from test_heads import SENTENCES, write_texts
from transformers import AutoModelForCausalLM

from polyprune.errors import PolypruneError
from polyprune.heads.cli import add_parsers
from polyprune.heads.results import load_results
from polyprune.heads.stats import rankdata, spearman


def parse(argv):
    ap = argparse.ArgumentParser(prog="polyprune")
    add_parsers(ap.add_subparsers(dest="cmd"))
    return ap.parse_args(argv)


def test_heads_then_remove_heads(tmp_path, capsys):
    model = save_tiny(tmp_path, "llama")
    src = write_texts(tmp_path)
    out = tmp_path / "heads"
    a = parse(["heads", "--model", str(model), "--languages", "eng_Latn,fra_Latn,Chinese (Simplified)", "--texts", src,
               "--split", "dev", "--samples", "3", "--seq-len", "12", "--top-share", "0.25", "--cross",
               "--cross-split", "dev", "--cross-samples", "4", "--bootstrap", "50", "--out", str(out)])
    assert a.func(a) == 0
    err = capsys.readouterr().err
    assert "cross-effects on dev" in err and "Spearman" in err and "timings: taylor" in err
    rows = list(csv.DictReader(open(out / "head_scores.csv", encoding="utf-8")))
    assert {r["language"] for r in rows} == set(SENTENCES) and len(rows) == 3 * 2 * 4
    res = load_results(out)
    assert res.cross is not None and res.cross.delta.shape == (3, 3)
    settings = json.loads((out / "head_settings.json").read_text())
    assert set(settings["taylor_vs_ablation"]) == set(SENTENCES)
    for lang, v in settings["taylor_vs_ablation"].items():
        k = res.scores.index(lang)
        assert v["spearman"] == pytest.approx(spearman(res.scores.ablation[k], res.scores.taylor[k]))
    # remove-heads with the saved scores, soft cut
    a = parse(["remove-heads", "--model", str(model), "--drop", "zho_Hans", "--keep", "eng_Latn,fra_Latn", "--scores",
               str(out), "--texts", src, "--cross-split", "dev", "--cross-samples", "4", "--bootstrap", "50",
               "--top-share", "0.25", "--cut", "soft", "--out", str(tmp_path / "exp")])
    assert a.func(a) == 0
    removed = json.loads((tmp_path / "exp" / "removed_heads.json").read_text())
    from polyprune.heads.removal import propose_removal
    plan = propose_removal(res.scores, ["eng_Latn", "fra_Latn"], ["zho_Hans"], 0.25, "ablation")
    assert removed == {str(b): hs for b, hs in plan.heads.items()}
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "exp")
    for b, hs in plan.heads.items():
        w = re.model.layers[b].self_attn.o_proj.weight
        for h in hs:
            assert (w[:, h * 8:(h + 1) * 8] == 0).all()
    assert "perplexity x" in capsys.readouterr().err


def test_remove_heads_hard_explicit(tmp_path):
    model = save_tiny(tmp_path, "llama")
    a = parse(["remove-heads", "--model", str(model), "--heads", "0:1,3;1:0,2", "--cut", "hard", "--out", str(tmp_path / "h")])
    assert a.func(a) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "h").config.num_attention_heads == 2


def test_cli_bad_input(tmp_path):
    model = save_tiny(tmp_path, "gemma3")
    a = parse(["remove-heads", "--model", str(model), "--heads", "0:1;1:1;2:1", "--cut", "hard", "--out", str(tmp_path / "h")])
    with pytest.raises(PolypruneError, match="cannot be stored as a stock checkpoint") as e:
        a.func(a)
    assert "--nearest" in e.value.fix and not (tmp_path / "h").exists()
    a = parse(["remove-heads", "--model", str(model), "--heads", "0:1", "--drop", "swh_Latn", "--out", str(tmp_path / "h")])
    with pytest.raises(PolypruneError, match="Both a head list and languages"):
        a.func(a)
    a = parse(["heads", "--model", str(model), "--languages", "eng_Latn,narnian", "--out", str(tmp_path / "o")])
    with pytest.raises(PolypruneError, match="Unknown language 'narnian'"):
        a.func(a)
    a = parse(["heads", "--model", str(model), "--top-share", "2", "--out", str(tmp_path / "o")])
    with pytest.raises(PolypruneError, match="top share"):
        a.func(a)
    assert not (tmp_path / "o").exists()


def test_spearman_reference():
    assert list(rankdata([3, 1, 2, 2])) == [4, 1, 2.5, 2.5]
    x, y = np.array([1., 2, 3, 4, 5]), np.array([5., 6, 7, 8, 7])
    # textbook formula without ties would not apply (y has a tie); Pearson of average ranks:
    rx, ry = np.array([1, 2, 3, 4, 5.]), np.array([1, 2, 3.5, 5, 3.5])
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert spearman(x, -x) == pytest.approx(-1)
