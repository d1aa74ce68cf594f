"""Export (atomic, reloadable, identical logits), recipes and the command line."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import save_tiny, shared_data_dir
from polyprune.cli import main
from polyprune.calibration import tokenize
from polyprune.errors import PolypruneError
from polyprune.export import export, model_card, reload_check
from polyprune.models import load_model
from polyprune.pruning import prune
from polyprune.recipe import PruneConfig
from polyprune.recipe import Recipe, load_recipe, save_recipe


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "bloom", "xglm"])
def test_export_reloads_with_identical_logits(tmp_path, family):
    from transformers import AutoModelForCausalLM
    src = save_tiny(tmp_path, family)
    lm = load_model(str(src))
    cal = tokenize(["hello world", "bonjour le monde entier"], lm.tokenizer, 16)
    res = prune(lm.model, PruneConfig(sparsity=0.5), cal)
    out = export(lm.model, lm.tokenizer, tmp_path / "out", {"pruning": res.summary()}, source=src).path
    assert (out / "README.md").exists() and (out / "pruning_config.json").exists()
    assert reload_check(lm.model, out, lm.tokenizer) == 0.0
    re = AutoModelForCausalLM.from_pretrained(out)
    for name in res.records:
        w = dict(re.named_modules())[name].weight
        assert float((w == 0).float().mean()) >= 0.5
    assert not list(tmp_path.glob(".out.*"))  # no temporary folders left


def test_export_refuses_source_and_existing(tmp_path):
    src = save_tiny(tmp_path, "llama")
    lm = load_model(str(src))
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(PolypruneError, match="overwrite the source"):
        export(lm.model, lm.tokenizer, src, {}, source=src, overwrite=True)
    (tmp_path / "mine").mkdir()  # a folder Polyprune did not write is never replaced, even when asked
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PolypruneError, match="already exists and was not written by Polyprune"):
        export(lm.model, lm.tokenizer, tmp_path / "mine", {}, source=src, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    export(lm.model, lm.tokenizer, tmp_path / "exists", {}, source=src)
    with pytest.raises(PolypruneError, match="already exists"):
        export(lm.model, lm.tokenizer, tmp_path / "exists", {}, source=src)
    export(lm.model, lm.tokenizer, tmp_path / "exists", {}, source=src, overwrite=True)  # an earlier export: replaced
    assert (tmp_path / "exists" / "config.json").exists()
    assert sorted(p.name for p in src.iterdir()) == before


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    src = save_tiny(tmp_path, "llama")
    lm = load_model(str(src))

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(lm.tokenizer, "save_pretrained", boom)
    with pytest.raises(PolypruneError, match="No space left"):
        export(lm.model, lm.tokenizer, tmp_path / "out", {}, source=src)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_model_card_lists_settings_and_results():
    card = model_card({"seed": 3, "model": {"name": "m"},
                       "pruning": {"config": {"method": "wanda", "sparsity": 0.5, "pattern": "2:4"},
                                   "overall_sparsity": 0.5, "module_sparsity": {"a.b": 0.5},
                                   "calibration": {"kind": "translation", "src": "fra_Latn", "tgt": "eng_Latn",
                                                   "shots": 4, "samples": 32, "seq_len": 256}},
                       "evaluation": [{"task": "xnli", "language": "fr", "metric": "acc", "dense": 0.5,
                                       "pruned": 0.4, "delta": -0.1}]})
    for needle in ("wanda", "2:4", "fra_Latn", "| 32 |", "| 256", "xnli", "a.b", "| 3 |"):
        assert needle in card


def test_recipe_roundtrip_and_unknown_keys(tmp_path):
    r = Recipe(model="x", pruning=PruneConfig(method="magnitude", sparsity=0.3))
    for suffix in (".json", ".yaml"):
        p = save_recipe(r, tmp_path / f"r{suffix}")
        assert load_recipe(p) == r
    (tmp_path / "bad.yaml").write_text("modle: demo\n")
    with pytest.raises(PolypruneError, match="Unknown setting 'modle'"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("pruning: {sparsty: 0.5}\n")
    with pytest.raises(PolypruneError, match="sparsty"):
        load_recipe(tmp_path / "bad2.yaml")


def test_cli_prune_writes_export_report_recipe(tmp_path, capsys):
    src = save_tiny(tmp_path, "gpt2")
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(f"line {i} with some text, bonjour, habari" for i in range(6)), encoding="utf-8")
    out = tmp_path / "pruned"
    rc = main(["prune", "--model", str(src), "--dtype", "float32", "--calibration-text", str(text),
               "--samples", "4", "--seq-len", "16", "--sparsity", "0.5", "--method", "wanda",
               "--pattern", "2:4", "--seed", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pruning"]["config"]["pattern"] == "2:4"
    assert report["export"]["reload_max_abs_logit_diff"] == 0.0
    assert report["calibration"]["kind"] == "text" and report["seed"] == 1
    assert load_recipe(out / "recipe.yaml").pruning.pattern == "2:4"
    # replay the resolved recipe headless into another folder
    rc = main(["run", str(out / "recipe.yaml"), "--out", str(tmp_path / "again")])
    assert rc == 0
    a = json.loads((tmp_path / "again" / "report.json").read_text())
    assert a["pruning"]["module_sparsity"] == report["pruning"]["module_sparsity"]


@pytest.mark.parametrize("args,needle", [
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--sparsity", "1.5"], "outside [0, 1)"),
    (["--pattern", "2:4", "--sparsity", "0.3"], "2/4"),
    (["--seq-len", "4"], "under 8"),
    (["--samples", "50"], "has 36"),
    (["--src", "fra_Latx"], "fra_Latx"),
])
def test_cli_bad_input_exits_2_with_message(tmp_path, capsys, args, needle):
    src = save_tiny(tmp_path, "llama")
    base = ["prune", "--model", str(src), "--shots", "1", "--samples", "4", "--seq-len", "16", "--out", str(tmp_path / "o")]
    rc = main(base + args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "fix:" in err
    assert not (tmp_path / "o").exists()


def test_cli_export_into_source_refused(tmp_path, capsys):
    src = save_tiny(tmp_path, "llama")
    rc = main(["export", "--model", str(src), "--out", str(src)])
    assert rc == 2 and "source" in capsys.readouterr().err


def test_cli_inspect(tmp_path, capsys):
    src = save_tiny(tmp_path, "llama")
    rc = main(["inspect", "--model", str(src), "--shots", "1", "--samples", "4", "--seq-len", "32",
               "--compare-monolingual", "--top-k", "3", "--out", str(tmp_path / "feat")])
    assert rc == 0
    rep = json.loads((tmp_path / "feat" / "report.json").read_text())
    assert len(rep["top"]) == 3 and len(rep["overlap_monolingual"]) == 3  # 2 blocks + embeddings
    assert (tmp_path / "feat" / "features.npz").exists() and (tmp_path / "feat" / "features.csv").exists()


@pytest.mark.skipif(shared_data_dir() is None, reason="real data not found (../shared/data)")
def test_cli_evaluate_records(tmp_path):
    src = save_tiny(tmp_path, "llama")
    out = tmp_path / "ev.json"
    rc = main(["evaluate", "--model", str(src), "--tasks", "xnli", "--languages", "en,sw", "--limit", "3",
               "--data", str(shared_data_dir()), "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    acc = [(r["task"], r["language"], r["n"]) for r in rows if r["metric"] == "acc"]
    assert acc == [("xnli", "en", 3), ("xnli", "sw", 3)]
    assert all({"task", "language", "metric", "value", "n"} <= set(r) for r in rows)
    assert {r["metric"] for r in rows} >= {"acc", "acc_norm"}


def test_cli_masks_apply_to_another_copy(tmp_path):
    from transformers import AutoModelForCausalLM
    src = save_tiny(tmp_path, "llama")
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(f"sample {i}: bonjour, habari, hello" for i in range(4)), encoding="utf-8")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(src), "--calibration-text", str(text), "--samples", "4",
                 "--seq-len", "16", "--out", str(out)]) == 0
    assert main(["export", "--model", str(src), "--masks", str(out / "masks.safetensors"),
                 "--out", str(tmp_path / "again")]) == 0
    a = AutoModelForCausalLM.from_pretrained(out)
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_cli_sparsegpt_owl(tmp_path):
    src = save_tiny(tmp_path, "llama")
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(f"sample {i}: bonjour, habari, hello" for i in range(8)), encoding="utf-8")
    rc = main(["prune", "--model", str(src), "--calibration-text", str(text), "--samples", "8", "--seq-len", "16",
               "--method", "sparsegpt", "--layerwise", "owl", "--owl-lambda", "0.05", "--out", str(tmp_path / "sg")])
    assert rc == 0
    rep = json.loads((tmp_path / "sg" / "report.json").read_text())
    assert rep["pruning"]["config"]["method"] == "sparsegpt" and abs(rep["pruning"]["overall_sparsity"] - 0.5) < 0.02
