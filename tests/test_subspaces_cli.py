"""``polyprune subspaces`` and ``polyprune lens`` (issue 13), driven through their own parsers."""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tokenizer, save_tiny
from polyprune.errors import PolypruneError
from polyprune.models import find_blocks
from polyprune.cli import main
from polyprune.subspaces.cli import add_parsers
from test_subspaces import LANGS, TEXTS, naive_decomposition, naive_means, write_texts


def parse(argv):
    ap = argparse.ArgumentParser(prog="polyprune")
    add_parsers(ap.add_subparsers(dest="cmd"))
    return ap.parse_args(argv)


def test_subspaces_command_writes_the_file(tmp_path):
    model_dir = save_tiny(tmp_path, "llama")
    src = write_texts(tmp_path)
    out = tmp_path / "sub"
    a = parse(["subspaces", "--model", str(model_dir), "--languages", "eng_Latn,Swahili,hin_Deva", "--texts", src,
               "--samples", "5", "--seq-len", "24", "--batch-size", "2", "--out", str(out), "--device", "cpu"])
    assert a.func(a) == 0
    assert {p.name for p in out.iterdir()} >= {"subspaces.npz", "subspaces.json", "blocks.csv", "distances.csv"}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ref = naive_means(model, make_tokenizer(), TEXTS, 24)
    with np.load(out / "subspaces.npz", allow_pickle=False) as z:
        assert z["languages"].tolist() == LANGS
        np.testing.assert_allclose(z["means"], ref, rtol=1e-5, atol=1e-5)
        for l in range(ref.shape[0]):
            agn, P = naive_decomposition(ref[l])
            np.testing.assert_allclose(z["agnostic"][l], agn, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(z["specific"][l].T @ z["specific"][l], P, atol=1e-5)
        settings = json.loads(str(z["settings"]))
    assert settings["central"] == "eng_Latn" and settings["seq_len"] == 24
    info = json.loads((out / "subspaces.json").read_text())
    assert info["languages"] == LANGS and len(info["blocks"]) == 2
    with open(out / "distances.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 9 and rows[0]["language_a"] == "eng_Latn"


def test_lens_command_exports(tmp_path, capsys):
    model_dir = save_tiny(tmp_path, "gemma3")
    src = write_texts(tmp_path)
    out = tmp_path / "lens"
    a = parse(["lens", "--model", str(model_dir), "--central", "eng_Latn", "--target", "swh_Latn,hin_Deva",
               "--top-blocks", "1", "--texts", src, "--samples", "4", "--seq-len", "24", "--space-samples", "5",
               "--lr", "0.01", "--accumulation", "2", "--out", str(out), "--device", "cpu"])
    assert a.func(a) == 0
    err = capsys.readouterr().err
    assert "Lens trained blocks 3 of 3 in 2 steps" in err and "reload check" in err
    source = AutoModelForCausalLM.from_pretrained(str(model_dir)).state_dict()
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    prefix, _ = find_blocks(reloaded)
    changed = {k for k, v in reloaded.state_dict().items() if not torch.equal(v, source[k])}
    assert changed and all(k.startswith(f"{prefix}.2.") for k in changed)
    card = (out / "README.md").read_text()
    assert "## Lens (language subspaces)" in card and "| accumulation | 2 |" in card
    assert json.loads((out / "lens_config.json").read_text())["config"]["texts"] == src


@pytest.mark.parametrize("argv, message", [
    (["subspaces", "--languages", "eng_Latn"], "at least two languages"),
    (["subspaces", "--languages", "eng_Latn,swh_Latn", "--central", "fra_Latn"], "central language fra_Latn is not among"),
    (["subspaces", "--languages", "eng_Latn,swh_Latn", "--samples", "9"], "but 9 were asked for"),
    (["lens", "--target", "eng_Latn"], "central language eng_Latn is also a target"),
    (["lens", "--target", "swh_Latn", "--samples", "9"], "but 9 were asked for"),
    (["lens", "--target", "swh_Latn", "--top-blocks", "5", "--samples", "2", "--space-samples", "2"],
     "top_blocks is 5, but the model has only 2 blocks"),
])
def test_bad_input_writes_nothing(tmp_path, argv, message):
    model_dir = save_tiny(tmp_path, "llama")
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    a = parse(argv + ["--model", str(model_dir), "--texts", write_texts(tmp_path), "--out", str(out),
                      "--device", "cpu"])
    with pytest.raises(PolypruneError, match=message):
        a.func(a)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".txt")) == \
        [n for n in before if not n.endswith(".txt")]


def test_existing_folder_needs_overwrite(tmp_path, capsys):
    model_dir = save_tiny(tmp_path, "llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code = main(["subspaces", "--model", str(model_dir), "--languages", "eng_Latn,swh_Latn", "--texts",
                 write_texts(tmp_path), "--samples", "2", "--out", str(out), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "polyprune: error: The output folder" in err and "was not written by Polyprune" in err
    assert (out / "mine.txt").read_text() == "keep"
