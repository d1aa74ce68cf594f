"""Recipe steps: pruning followed by head removal (and the other steps' settings checked first)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from polyprune.cli import main
from polyprune.errors import PolypruneError
from polyprune.pipeline import check_recipe
from polyprune.recipe import Recipe


def write_recipe(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_prune_then_remove_heads(tmp_path):
    src = save_tiny(tmp_path, "llama")
    r = write_recipe(tmp_path / "r.yaml", f"""
model: {src}
demos: {{shots: 1, samples: 4, seq_len: 16}}
pruning: {{method: wanda, sparsity: 0.5}}
steps: [prune, remove_heads]
heads: {{removal: {{heads: "0:1;1:0,3", cut: soft, measure: false}}}}
""")
    assert main(["run", str(r), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert json.loads((out / "removed_heads.json").read_text()) == {"0": [1], "1": [0, 3]}
    card = (out / "README.md").read_text()
    assert "## Removed attention heads" in card and "## Pruning" in card
    m = AutoModelForCausalLM.from_pretrained(out)
    d = m.config.hidden_size // m.config.num_attention_heads
    for b, hs in {0: [1], 1: [0, 3]}.items():
        w = m.model.layers[b].self_attn.o_proj.weight
        for h in hs:
            assert torch.all(w[:, h * d:(h + 1) * d] == 0)
        kept = [h for h in range(m.config.num_attention_heads) if h not in hs]
        assert all(torch.any(w[:, h * d:(h + 1) * d] != 0) for h in kept)
    rep = json.loads((out / "report.json").read_text())
    assert rep["heads"]["removed"] == {"0": [1], "1": [0, 3]} and rep["pruning"]["overall_sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("kw,needle", [
    (dict(steps=["prune", "prune"]), "twice"),
    (dict(steps=["dance"]), "Unknown step"),
    (dict(steps=["slim", "prune"], slim={"keep": ["eng_Latn"]}), "last"),
    (dict(steps=["remove_heads"]), "no heads section"),
    (dict(steps=["remove_heads"], heads={"removal": {"heads": "0:1", "cut": "hard"}}), "hard cut"),
    (dict(steps=["remove_heads"], heads={"removal": {"heads": "0:1"}, "colour": 3}), "colour"),
])
def test_bad_steps_fail_before_loading(kw, needle):
    with pytest.raises(PolypruneError, match=needle):
        check_recipe(Recipe(model="/nowhere/at/all", **kw))


def test_study_cell_with_head_removal_step(tmp_path):
    """A study cell can remove heads after its pruning; the dense weights come back afterwards."""
    from polyprune import study as S
    from polyprune.models import load_model

    src = save_tiny(tmp_path, "llama")
    loaded = load_model(str(src))
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    d = tmp_path / "data" / "flores200" / "devtest"
    d.mkdir(parents=True)
    (d / "eng_Latn.devtest").write_text("".join(f"Sentence {i} is here, with words.\n" for i in range(5)))
    cfg = S.StudyConfig(model=str(src), calibration=[{"kind": "monolingual", "lang": "eng_Latn", "source": "builtin",
                                                      "samples": 2, "seq_len": 16, "shots": 1}],
                        methods=["wanda", {"method": "wanda", "label": "wanda+heads",
                                           "steps": [{"remove_heads": {"removal": {"heads": "0:0,1", "measure": False}}}]},
                                 {"method": "none", "label": "heads only",
                                  "steps": [{"remove_heads": {"removal": {"heads": "0:0,1", "measure": False}}}]}],
                        sparsities=[0.5], evaluation={"ppl": ["eng_Latn"], "data": str(tmp_path / "data"), "bootstrap": 0},
                        out=str(tmp_path / "study"))
    res = S.run_study(cfg, log=lambda m: None, loaded=loaded)
    by = {r["method"]: r["value"] for r in res.rows if r["cell"] != "dense"}
    dense = next(r["value"] for r in res.rows if r["cell"] == "dense")
    assert set(by) == {"wanda", "wanda+heads", "heads only"} and len(res.cells) == 3
    assert by["wanda+heads"] != by["wanda"] and by["heads only"] != dense
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(PolypruneError, match="single steps"):
        S.plan(S.StudyConfig(calibration=cfg.calibration, methods=[{"method": "wanda", "steps": {"lens": {}}}]))


def test_prune_then_lens(tmp_path):
    """Recipe steps ``[prune, lens]``: the export holds the pruned model with only the top block trained,
    Lens's settings in report and card; blocks below the top are the pruned weights, bit for bit."""
    from safetensors.torch import load_file

    from test_subspaces import write_texts

    src = save_tiny(tmp_path, "llama")
    texts = write_texts(tmp_path)
    common = f"""
model: {src}
demos: {{shots: 1, samples: 4, seq_len: 16}}
pruning: {{method: wanda, sparsity: 0.5}}
"""
    lens = (f"lens: {{central: eng_Latn, targets: [swh_Latn], top_blocks: 1, texts: '{texts}', samples: 4, seq_len: 24,"
            f" space_samples: 5, space_seq_len: 24, lr: 0.001, accumulation: 2, shuffle: false}}\n")
    assert main(["run", str(write_recipe(tmp_path / "p.yaml", common)), "--out", str(tmp_path / "pruned")]) == 0
    r = write_recipe(tmp_path / "r.yaml", common + "steps: [prune, lens]\n" + lens)
    assert main(["run", str(r), "--out", str(tmp_path / "out")]) == 0
    pruned, lensed = load_file(tmp_path / "pruned" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert pruned.keys() == lensed.keys()
    top = AutoModelForCausalLM.from_pretrained(src).config.num_hidden_layers - 1
    changed = {k for k in pruned if not torch.equal(pruned[k], lensed[k])}
    assert changed and all(k.startswith(f"model.layers.{top}.") for k in changed), changed
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["lens"]["config"]["targets"] == ["swh_Latn"] and rep["pruning"]["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "Lens" in (tmp_path / "out" / "README.md").read_text()


def test_bad_lens_step_fails_before_loading():
    with pytest.raises(PolypruneError, match="top_blocks"):
        check_recipe(Recipe(model="/nowhere/at/all", steps=["prune", "lens"], lens={"top_blocks": 0}))


@pytest.mark.parametrize("name", ["calibration_language.yaml", "lens_after_pruning.yaml"])
def test_bundled_studies_plan(name):
    """The example studies shipped in resources/studies parse, and their steps' settings are valid."""
    from importlib.resources import files

    from polyprune import study as S

    cfg = S.load_study(str(files("polyprune.resources") / "studies" / name))
    cells = S.plan(cfg)
    assert cells and S.reference_cell(cells, cfg.reference) in cells
    if name == "lens_after_pruning.yaml":
        assert [c.no_pruning for c in cells] == [False, False, True]
        assert [s[0] for c in cells for s in c.steps] == ["lens", "lens"]
