"""Block streaming against the in-memory engine, on tiny models saved as several shards.

The reference is the in-memory run (``load_model`` + :func:`polyprune.pruning.prune`, itself checked
against a naive reference in test_pruning.py): a streamed run must give the same masks bit for bit
and an output checkpoint that reloads (stock ``from_pretrained``) to the same weights. Perplexity is
compared with a naive per-text forward of the whole model. Bad input: a budget too small (refused
before any tensor is read), a disk too small, an output folder that exists, a cancelled run.
"""
from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch

from conftest import FAMILIES, make_tiny_model, make_tokenizer
from polyprune.calibration import tokenize
from polyprune.checkpoint import CheckpointReader, write_safetensors
from polyprune.errors import Cancelled, PolypruneError
from polyprune.memory import format_size, parse_size
from polyprune.models import load_model
from polyprune.progress import Progress
from polyprune.pruning import prune
from polyprune.evaluation.streamed import streamed_loglikelihoods
from polyprune.pruning.stream_source import Activations, BlockStream
from polyprune.pruning.streaming import plan_memory, prune_streamed
from polyprune.recipe import PruneConfig
from transformers import AutoModelForCausalLM

TEXTS = [
    "English: The cat sleeps on the warm mat.</s>French: Le chat dort sur le tapis chaud.</s>",
    "English: Rain is expected tomorrow.</s>French: De la pluie est prévue demain.</s>",
    "Swahili: Habari za asubuhi, rafiki yangu.</s>",
    "中文：今天天气很好。</s>English: The weather is nice today.</s>",
    "short",
]


def sharded(tmp_path, family, dtype=torch.float32):
    """A tiny model saved in 3-5 safetensors shards with its tokenizer."""
    path = tmp_path / f"{family}-src"
    make_tiny_model(family).to(dtype).save_pretrained(path, max_shard_size="40KB")
    make_tokenizer().save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) >= 3
    return path


def same_result(path, out, cfg, cal, contrast=None, dtype="float32"):
    lm = load_model(str(path), "cpu", dtype)
    ref = prune(lm.model, cfg, cal, contrast=contrast)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=lm.model.dtype)
    a, b = lm.model.state_dict(), reloaded.state_dict()
    return ref, a, b


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_wanda_equals_in_memory(tmp_path, family):
    path = sharded(tmp_path, family)
    cal = tokenize(TEXTS, make_tokenizer(), 48)
    cfg = PruneConfig(method="wanda", sparsity=0.5, batch_size=2)
    sp = prune_streamed(BlockStream(path), cfg, tmp_path / "out", calibration=cal, max_memory="1GB")
    ref, a, b = same_result(path, tmp_path / "out", cfg, cal)
    assert set(ref.records) == set(sp.result.records)
    for k, rec in ref.records.items():
        assert torch.equal(rec.mask, sp.result.records[k].mask), k
        assert sp.result.records[k].removed is None  # masks only: the dense values stay on disk
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert sp.result.overall == pytest.approx(ref.overall)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.safetensors.index.json", "config.json", "masks.safetensors", "report.json", "README.md",
            "tokenizer.json"} <= files


@pytest.mark.parametrize("settings", [
    dict(method="sparsegpt", blocksize=16), dict(method="magnitude"), dict(method="wanda", pattern="2:4", sparsity=0.5),
    dict(method="wanda", layerwise="owl", owl_m=2.0), dict(method="wanda_refined"),
    dict(method="wanda", skip=["*.mlp.*"], skip_blocks=[1]),
])
def test_streamed_methods_equal_in_memory(tmp_path, settings):
    path = sharded(tmp_path, "llama")
    tok = make_tokenizer()
    cal = tokenize(TEXTS, tok, 48)
    contrast = tokenize(["def f(x):", "    return x * 2", "for i in range(3): print(i)"], tok, 32) \
        if settings["method"] == "wanda_refined" else None
    cfg = PruneConfig(**({"sparsity": 0.5, "batch_size": 2} | settings))
    sp = prune_streamed(BlockStream(path), cfg, tmp_path / "out", calibration=cal, contrast=contrast)
    ref, a, b = same_result(path, tmp_path / "out", cfg, cal, contrast)
    for k, rec in ref.records.items():
        assert torch.equal(rec.mask, sp.result.records[k].mask), k
    assert all(torch.equal(a[k], b[k]) for k in a)
    if settings.get("layerwise") == "owl":
        assert sp.result.target_sparsity == ref.target_sparsity


def test_activations_on_disk_and_bfloat16(tmp_path):
    path = sharded(tmp_path, "gemma3")
    cal = tokenize(TEXTS, make_tokenizer(), 48)
    cfg = PruneConfig(method="wanda", sparsity=0.5, batch_size=2)
    stream = BlockStream(path, dtype="bfloat16")
    plan = plan_memory(stream, cfg, [cal], None, cfg.batch_size)
    budget = plan.total - 1  # everything but the activations fits: they go to disk
    sp = prune_streamed(stream, cfg, tmp_path / "out", calibration=cal, max_memory=budget)
    assert sp.plan.activations_on_disk and sp.plan.disk_bytes == plan.parts["calibration activations"]
    assert not list((tmp_path / "out").glob(".activations-*"))
    ref, a, b = same_result(path, tmp_path / "out", cfg, cal, dtype="bfloat16")
    for k, rec in ref.records.items():
        assert torch.equal(rec.mask, sp.result.records[k].mask), k
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_activation_store_round_trips(tmp_path):
    for folder in (None, tmp_path):
        acts = Activations("cpu", folder)
        xs = [torch.randn(2, 5, 3).to(torch.bfloat16), torch.randn(1, 7, 3)]
        for x in xs:
            acts.append(x)
        assert [torch.equal(a, x) for a, x in zip(acts, xs)] == [True, True]
        acts[0] = xs[1]
        assert torch.equal(acts[0], xs[1]) and len(acts) == 2


def naive_nll(model, ids):
    """Sum of -log p(token t | tokens < t) over one text, from one full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return -sum(float(lp[t, ids[t + 1]]) for t in range(len(ids) - 1)), len(ids) - 1


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_loglikelihoods_match_a_full_forward(tmp_path, family):
    path = sharded(tmp_path, family)
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    reqs = []
    for t in TEXTS:
        ids = [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]
        reqs.append((ids[:1], ids[1:]))
    got = streamed_loglikelihoods(BlockStream(path), reqs, batch_size=2)
    for (ctx, cont), (lp, n, _) in zip(reqs, got):
        nll, count = naive_nll(model, ctx + cont)
        assert n == count and -lp == pytest.approx(nll, rel=1e-5, abs=1e-4)


def test_budget_too_small_is_refused_before_reading(tmp_path, monkeypatch):
    path = sharded(tmp_path, "llama")
    cal = tokenize(TEXTS, make_tokenizer(), 48)
    stream = BlockStream(path)

    def no_read(*a, **k):
        raise AssertionError("a tensor was read")
    monkeypatch.setattr(CheckpointReader, "read", no_read)
    monkeypatch.setattr(CheckpointReader, "read_rows", no_read)
    with pytest.raises(PolypruneError, match="too small") as e:
        prune_streamed(stream, PruneConfig(method="wanda"), tmp_path / "out", calibration=cal, max_memory="20kB")
    need = plan_memory(stream, PruneConfig(method="wanda"), [cal], None)
    assert "largest block" in e.value.problem and "--max-memory" in e.value.fix
    assert f"at least {format_size(need.total * 1.02)}" in e.value.fix
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_no_room_on_disk_is_refused_before_writing(tmp_path, monkeypatch):
    path = sharded(tmp_path, "llama")
    cal = tokenize(TEXTS, make_tokenizer(), 48)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(PolypruneError, match="GiB free"):
        prune_streamed(BlockStream(path), PruneConfig(method="wanda"), tmp_path / "out", calibration=cal)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_existing_output_and_cancel_leave_nothing(tmp_path):
    path = sharded(tmp_path, "llama")
    cal = tokenize(TEXTS, make_tokenizer(), 48)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("not Polyprune's")
    with pytest.raises(PolypruneError, match="not written by Polyprune"):
        prune_streamed(BlockStream(path), PruneConfig(method="wanda"), tmp_path / "taken", calibration=cal)
    with pytest.raises(PolypruneError, match="source"):
        prune_streamed(BlockStream(path), PruneConfig(method="wanda"), path / "inside", calibration=cal)
    prog = Progress(min_interval=0)
    prog.callback = lambda f, m: prog.cancel() if "block 2" in m else None
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    with pytest.raises(Cancelled):
        prune_streamed(BlockStream(path), PruneConfig(method="wanda"), tmp_path / "out", calibration=cal, progress=prog)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    assert before == {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def test_no_safetensors_is_explained(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(PolypruneError, match="no safetensors") as e:
        CheckpointReader(tmp_path / "m")
    assert "without --max-memory" in e.value.fix


def test_written_shards_read_back(tmp_path):
    ts = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, 2).to(torch.bfloat16),
          "e": torch.zeros(0, 3)}
    write_safetensors(tmp_path / "x.safetensors", ts)
    from safetensors.torch import load_file
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in ts.items())
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "x.safetensors").read_bytes())
    r = CheckpointReader(tmp_path)
    assert torch.equal(r.read("a"), ts["a"]) and torch.equal(r.read_rows("a", torch.tensor([0, 2])), ts["a"][[0, 2]])
    assert torch.equal(r.read_slice("a", 1, 3), ts["a"][1:3])


@pytest.mark.parametrize("text,value", [("4GB", 4 * 10 ** 9), ("1.5 GiB", int(1.5 * 2 ** 30)), ("512mb", 512 * 10 ** 6),
                                        (1000, 1000), ("2g", 2 * 10 ** 9)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "4 parsecs", True])
def test_parse_size_rejects(text):
    with pytest.raises(PolypruneError, match="memory budget"):
        parse_size(text)


def test_cli_prune_with_max_memory(tmp_path, capsys):
    from polyprune.cli import main
    from polyprune.masks import load_masks

    path = sharded(tmp_path, "gemma3")
    text = tmp_path / "cal.txt"
    text.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    from test_study import small_flores
    data = small_flores(tmp_path)
    common = ["prune", "--model", str(path), "--device", "cpu", "--calibration-text", str(text), "--samples", "5",
              "--seq-len", "48", "--batch-size", "2", "--eval-ppl", "eng_Latn,fra_Latn", "--data", str(data)]
    assert main(common + ["--max-memory", "10kB", "--out", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err
    assert "too small" in err and "--max-memory" in err and not (tmp_path / "small").exists()
    assert main(common + ["--max-memory", "1GB", "--out", str(tmp_path / "streamed")]) == 0
    assert main(common + ["--out", str(tmp_path / "memory")]) == 0
    a = load_masks(tmp_path / "streamed" / "masks.safetensors").masks
    b = load_masks(tmp_path / "memory" / "masks.safetensors").masks
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    import json
    rep = json.loads((tmp_path / "streamed" / "report.json").read_text())
    assert rep["memory"]["budget_bytes"] == 10 ** 9 and rep["export"]["streamed"]
    assert rep["recipe"]["max_memory"] == "1GB"
    # streamed FLORES perplexity (dense from the source, pruned from the new shards) = in memory
    mem = json.loads((tmp_path / "memory" / "report.json").read_text())
    assert len(rep["evaluation"]) == len(mem["evaluation"]) == 2
    for r1, r2 in zip(rep["evaluation"], mem["evaluation"]):
        assert r1["language"] == r2["language"]
        for k in ("dense", "pruned"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-5)
    assert main(common[:-4] + ["--eval-xnli", "en", "--max-memory", "1GB", "--out", str(tmp_path / "x")]) == 2
    assert "FLORES perplexity only" in capsys.readouterr().err


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_logits_and_reload_check(tmp_path, family):
    from polyprune.export import reload_check
    from polyprune.evaluation.streamed import streamed_logits

    path = sharded(tmp_path, family)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([1, 70, 71, 72, 40, 90, 2])
    with torch.no_grad():
        full = model(input_ids=ids[None]).logits[0].float()
    assert torch.allclose(streamed_logits(path, ids), full, atol=1e-5, rtol=1e-5)
    tok = make_tokenizer()
    assert reload_check(model, path, tok) < 1e-5
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "mlp" in n or "fc" in n).mul_(3)
    assert reload_check(model, path, tok) > 1e-3  # the check sees a difference
