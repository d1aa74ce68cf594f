"""Calibration sources (monolingual, translation, mix, text), their specs, and the refined metric."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, make_tiny_model, make_tokenizer
from polyprune import calibration as C
from polyprune.calibration import sources as S
from polyprune.calibration import tokenize
from polyprune.datasets import builtin_pairs
from polyprune.errors import PolypruneError
from polyprune.models import find_blocks, prunable_linears, weight_matrix
from polyprune.pruning import prune
from polyprune.pruning.wanda_refined import REFINED_EPS
from polyprune.recipe import PruneConfig


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
def test_monolingual_builtin(tok):
    cal = S.monolingual(tok, "fr", samples=4, seq_len=64, shots=2, source="builtin")
    sents = [a for a, _ in builtin_pairs("fra_Latn", "fra_Latn")]
    assert len(cal) == 4
    assert cal.texts[1] == f"{sents[2]} {sents[3]}"
    assert cal.meta["sentence_indices"][1] == [2, 3]
    assert cal.meta["lang"] == "fra_Latn"
    demo = S.monolingual(tok, "fra_Latn", samples=1, seq_len=64, shots=2, source="builtin", style="demo")
    assert demo.texts[0].startswith("French: " + sents[0] + "</s>French: ")


def test_monolingual_flores(tok, data_dir):
    cal = S.monolingual(tok, "swh_Latn", samples=8, seq_len=32, shots=4, source=f"flores:{data_dir / 'flores200'}")
    assert len(cal) == 8 and cal.input_ids.shape[1] == 32 and cal.truncated == 8
    too_many = 997 // 4 + 1
    with pytest.raises(PolypruneError, match="has 997 sentences"):
        S.monolingual(tok, "swh_Latn", samples=too_many, seq_len=32, source=f"flores:{data_dir / 'flores200'}")


def test_too_small_and_empty_sources(tok, tmp_path):
    with pytest.raises(PolypruneError, match="has 36 sentences, but 20 samples x 2 sentences need 40"):
        S.monolingual(tok, "eng_Latn", samples=20, shots=2, source="builtin")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "eng_Latn.dev").write_text("\n\n")
    with pytest.raises(PolypruneError, match="is empty"):
        S.monolingual(tok, "eng_Latn", samples=1, source=f"flores:{tmp_path}")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(PolypruneError, match="no non-empty lines"):
        S.text(tok, empty, samples=1)
    few = tmp_path / "few.txt"
    few.write_text("a b c\nd e f\n")
    with pytest.raises(PolypruneError, match="has 2 non-empty lines"):
        S.text(tok, few, samples=3)
    with pytest.raises(PolypruneError, match="need 40 sentence pairs but the source has 36"):
        S.translation(tok, ["fra_Latn"], samples=10, shots=4, source="builtin")


def test_translation_languages_and_direction(tok):
    cal = S.translation(tok, ["fra_Latn", "deu_Latn"], samples=5, seq_len=128, shots=2, source="builtin",
                        direction="both")
    assert cal.meta["counts"] == {"fra_Latn": 3, "deu_Latn": 2}
    assert cal.texts[0].startswith("French: ") and "English: " in cal.texts[0]
    assert cal.texts[1].startswith("English: ")  # both: alternating directions
    assert cal.texts[3].startswith("German: ")
    fwd = S.translation(tok, "fra_Latn", samples=2, shots=1, source="builtin", direction="forward")
    assert all(t.startswith("French: ") for t in fwd.texts)
    with pytest.raises(PolypruneError, match="into itself"):
        S.translation(tok, ["eng_Latn"], samples=2, source="builtin")


def test_largest_remainder():
    assert S.largest_remainder({"a": 0.5, "b": 0.25, "c": 0.25}, 7) == {"a": 3, "b": 2, "c": 2}
    assert S.largest_remainder({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10) == {"a": 4, "b": 3, "c": 3}
    counts = S.largest_remainder({"a": 0.7, "b": 0.2, "c": 0.1}, 13)
    assert sum(counts.values()) == 13 and counts == {"a": 9, "b": 3, "c": 1}


def test_mix(tok):
    cal = S.mix(tok, {"eng_Latn": 0.5, "fr": 0.25, "swh_Latn": 0.25}, samples=7, seq_len=64, shots=2,
                source="builtin")
    assert cal.meta["counts"] == {"eng_Latn": 3, "fra_Latn": 2, "swh_Latn": 2}
    assert len(cal) == 7
    idx = cal.meta["sentence_indices"]
    flat = [i for lang in idx.values() for s in lang for i in s]
    assert len(flat) == len(set(flat)) == 14  # disjoint lines across languages
    fra = [a for a, _ in builtin_pairs("fra_Latn", "fra_Latn")]
    assert cal.texts[3] == f"{fra[6]} {fra[7]}"


@pytest.mark.parametrize("props,needle", [
    ({"eng_Latn": 0.5, "fra_Latn": 0.4}, "sum to 0.9, not 1"),
    ({"eng_Latn": 1.2, "fra_Latn": -0.2}, "share of fra_Latn"),
    ({}, "needs proportions"),
    ({"eng_Latn": 0.5, "en": 0.5}, "twice"),
    ({"eng_Latn": "half", "fra_Latn": 0.5}, "not a number"),
])
def test_bad_mix(tok, props, needle):
    with pytest.raises(PolypruneError, match=needle):
        S.mix(tok, props, samples=2, source="builtin")


def test_mix_sum_tolerance(tok):
    S.check_proportions({"eng_Latn": 1 / 3, "fra_Latn": 1 / 3, "deu_Latn": 1 / 3 + 5e-7})
    with pytest.raises(PolypruneError):
        S.check_proportions({"eng_Latn": 0.5, "fra_Latn": 0.5 + 2e-6})


def test_specs_and_labels(tok, tmp_path):
    f = tmp_path / "code.txt"
    f.write_text("def f(x):\n    return x + 1\nprint(f(2))\n")
    cases = [
        ({"kind": "translation", "langs": ["fra_Latn"], "direction": "both"}, "translation fra↔eng"),
        ({"kind": "translation", "lang": "swh_Latn", "direction": "forward"}, "translation swh→eng"),
        ({"kind": "translation", "langs": ["fr"], "direction": "reverse"}, "translation eng→fra"),
        ({"kind": "monolingual", "lang": "English"}, "mono eng"),
        ({"kind": "monolingual", "lang": "zho_Hans"}, "mono zho_Hans"),
        ({"kind": "mix", "proportions": {"eng_Latn": 0.5, "fra_Latn": 0.25, "swh_Latn": 0.25}}, "mix eng50 fra25 swh25"),
        ({"kind": "text", "file": str(f)}, "text code.txt"),
        ({"kind": "monolingual", "lang": "eng_Latn", "label": "English text"}, "English text"),
    ]
    defaults = {"samples": 3, "seq_len": 32, "shots": 2, "source": "builtin"}
    for spec, label in cases:
        norm = C.normalize_spec(spec, defaults)
        assert norm["label"] == label
        assert C.normalize_spec(norm) == norm  # idempotent
        cal = C.build(spec, tok, defaults)
        assert len(cal) == 3 and cal.meta["label"] == label


@pytest.mark.parametrize("spec,needle", [
    ({"kind": "poetry"}, "Unknown calibration kind"),
    ({"kind": "monolingual", "lang": "eng_Latn", "langs": ["x"]}, "Unknown key"),
    ({"kind": "monolingual"}, "needs a language"),
    ({"kind": "monolingual", "lang": "klingon"}, "Unknown language"),
    ({"kind": "translation"}, "needs languages"),
    ({"kind": "translation", "langs": ["fra_Latn"], "direction": "sideways"}, "Unknown direction"),
    ({"kind": "text"}, "needs a file"),
    ({"kind": "mix", "proportions": {"eng_Latn": 0.3}}, "sum to 0.3"),
    ("eng_Latn", "must be a mapping"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(PolypruneError, match=needle):
        C.normalize_spec(spec, {"source": "builtin"})


# --------------------------------------------------------------------------------------------
# Kim et al.'s refined metric: |W| · a / sqrt(b)
# --------------------------------------------------------------------------------------------
BASE = [
    "English: The cat sleeps on the warm mat.</s>French: Le chat dort sur le tapis chaud.</s>",
    "English: Rain is expected tomorrow.</s>French: De la pluie est prévue demain.</s>",
    "Swahili: Habari za asubuhi, rafiki yangu.</s>English: Good morning, my friend.</s>",
]
CONTRAST = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)",
    "import os\nprint(os.getcwd())",
    "x = [y ** 2 for y in range(5)]",
]


def naive_refined(model, base, contrast, sparsity):
    """Per block, whole-model forwards (earlier blocks already pruned) of each set, one sample at a
    time, padding cut off; a = mean over samples of Σ_t x², b likewise; per-row sort of the score."""
    prefix, blocks = find_blocks(model)
    masks = {}

    def stats(lin, cal):
        sums = {n: torch.zeros(m.weight.shape[1] if isinstance(m, torch.nn.Linear) else m.weight.shape[0],
                               dtype=torch.float64) for n, m in lin.items()}

        def mk(n):
            def hook(mod, inp, out):
                sums[n] += (inp[0].double().reshape(-1, inp[0].shape[-1]) ** 2).sum(0)
            return hook
        hs = [m.register_forward_hook(mk(n)) for n, m in lin.items()]
        with torch.no_grad():
            for s in range(len(cal)):
                L = int(cal.attention_mask[s].sum())
                model(input_ids=cal.input_ids[s:s + 1, :L], attention_mask=cal.attention_mask[s:s + 1, :L])
        for h in hs:
            h.remove()
        return {n: v / len(cal) for n, v in sums.items()}

    for i, block in enumerate(blocks):
        lin = prunable_linears(block)
        a, b = stats(lin, base), stats(lin, contrast)
        for n, m in lin.items():
            W = weight_matrix(m)
            score = W.double().abs() * (a[n] / torch.sqrt(b[n].clamp_min(REFINED_EPS)))[None, :]
            k = int(W.shape[1] * sparsity)
            mask = torch.zeros_like(W, dtype=torch.bool)
            mask.scatter_(1, torch.sort(score, dim=1, stable=True)[1][:, :k], True)
            with torch.no_grad():
                W[mask] = 0
            masks[f"{prefix}.{i}.{n}"] = mask
    return masks


@pytest.mark.parametrize("family", FAMILIES)
def test_refined_metric_matches_naive(family, tok):
    base, contrast = tokenize(BASE, tok, 64), tokenize(CONTRAST, tok, 64)
    model = make_tiny_model(family)
    ref = naive_refined(copy.deepcopy(model), base, contrast, 0.5)
    res = prune(model, PruneConfig(method="wanda_refined", sparsity=0.5, batch_size=2), base, contrast=contrast)
    assert set(res.records) == set(ref)
    for name, rec in res.records.items():
        agree = (rec.mask == ref[name]).float().mean().item()
        assert agree > 0.995, f"{family} {name}: {agree:.4f}"
    assert res.contrast is not None and res.summary()["contrast"]["samples"] == 4


def test_refined_base_is_explicit(tok):
    """Swapping base and contrast changes the masks: the base is the `calibration` argument."""
    base, contrast = tokenize(BASE, tok, 64), tokenize(CONTRAST, tok, 64)
    r1 = prune(make_tiny_model("llama"), PruneConfig(method="wanda_refined", sparsity=0.5), base, contrast=contrast)
    r2 = prune(make_tiny_model("llama"), PruneConfig(method="wanda_refined", sparsity=0.5), contrast, contrast=base)
    differ = sum(not torch.equal(r1.records[k].mask, r2.records[k].mask) for k in r1.records)
    assert differ > 0


def test_refined_needs_contrast(tok):
    with pytest.raises(PolypruneError, match="contrast"):
        prune(make_tiny_model("gpt2"), PruneConfig(method="wanda_refined"), tokenize(BASE, tok, 64))
