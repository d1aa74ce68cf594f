"""Language subspaces (issue 13): representations, decomposition, derived plots, files, bad input.

Every number is compared with a naive reference written here: one forward per sentence through
the full causal LM with ``output_hidden_states=True``, explicit loops, numpy SVDs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from polyprune.errors import PolypruneError
from polyprune.models import LoadedModel
from polyprune.subspaces import (FILE_NAME, LensConfig, SubspacesConfig, compute_subspaces, last_token_states,
                                 load_subspaces)

LANGS = ["eng_Latn", "swh_Latn", "hin_Deva"]
# Sentences of very different lengths (so batches are padded), some longer than SEQ_LEN tokens.
TEXTS = {
    "eng_Latn": ["Hi.", "The cat sat on the mat near the door.", "A",
                 "Language models read text one token at a time, left to right.", "Good morning to you all"],
    "swh_Latn": ["Habari.", "Paka aliketi juu ya mkeka karibu na mlango.", "Ndiyo",
                 "Mifano ya lugha husoma maandishi ishara moja kwa wakati.", "Habari za asubuhi"],
    "hin_Deva": ["नमस्ते।", "बिल्ली दरवाजे के पास चटाई पर बैठी थी।", "हाँ",
                 "भाषा मॉडल एक समय में एक टोकन पढ़ते हैं।", "सुप्रभात"],
}
SEQ_LEN = 24


def write_texts(tmp_path, texts=TEXTS):
    for lang, lines in texts.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"file:{tmp_path}/{{lang}}.txt"


def loaded_tiny(family, tokenizer, seed=0):
    return LoadedModel(make_tiny_model(family, seed), tokenizer, f"tiny-{family}", None, "cpu", "float32")


def naive_states(model, tokenizer, texts, seq_len):
    """[n_sentences, n_blocks, d] float64: hidden_states[1:] at the last token, one forward each."""
    out = []
    for t in texts:
        ids = tokenizer(t)["input_ids"][:seq_len]
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        out.append(np.stack([h[0, -1].double().numpy() for h in hs[1:]]))
    return np.stack(out)


def naive_decomposition(means_l):
    """One block: means_l [K, d] -> (a [d], projector [d, d]) by the issue's formulas, step by step."""
    M = means_l.T
    K = M.shape[1]
    ones = np.ones((1, K))
    mu = M.mean(axis=1).reshape(-1, 1)
    u, s, vt = np.linalg.svd(M - mu @ ones)
    r = K - 1
    Mp = mu @ ones + u[:, :r] @ np.diag(s[:r]) @ vt[:r, :]
    a = np.linalg.pinv(Mp).T @ np.ones(K)
    a = a / np.sum(a ** 2)
    u2, _, _ = np.linalg.svd(Mp - a.reshape(-1, 1) @ ones)
    B = u2[:, :r]
    return a, B @ B.T


def naive_means(model, tokenizer, texts, seq_len):
    return np.stack([naive_states(model, tokenizer, texts[lang], seq_len).mean(axis=0) for lang in LANGS], axis=1)


def test_matches_naive_reference(family, tokenizer, tmp_path):
    """Means, agnostic vector and specific projector equal the naive per-sentence reference."""
    loaded = loaded_tiny(family, tokenizer)
    cfg = SubspacesConfig(languages=LANGS, central="eng_Latn", texts=write_texts(tmp_path), samples=5,
                          seq_len=SEQ_LEN, batch_size=4)
    sub = compute_subspaces(loaded, cfg)
    ref_means = naive_means(loaded.model, tokenizer, TEXTS, SEQ_LEN)  # [n_blocks, K, d]
    n_blocks = len(loaded.model.config.to_dict().get("layer_types") or []) or ref_means.shape[0]
    assert sub.means.shape == ref_means.shape == (n_blocks, 3, 32)
    assert sub.means.dtype == np.float64
    np.testing.assert_allclose(sub.means, ref_means, rtol=1e-5, atol=1e-5)
    assert sub.agnostic.shape == (n_blocks, 32) and sub.specific.shape == (n_blocks, 2, 32)
    for l in range(n_blocks):
        a, P = naive_decomposition(ref_means[l])
        np.testing.assert_allclose(sub.agnostic[l], a, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(sub.specific[l].T @ sub.specific[l], P, atol=1e-5)
        np.testing.assert_allclose(sub.specific[l] @ sub.specific[l].T, np.eye(2), atol=1e-10)  # orthonormal rows


@pytest.mark.parametrize("family", ["llama", "gemma3", "bloom", "xglm", "gpt2"])
def test_batched_states_equal_single_forwards(family, tokenizer):
    """Right-padded batches give each sentence's own last-token states (rotary, ALiBi, positions)."""
    model = make_tiny_model(family)
    texts = TEXTS["eng_Latn"] + TEXTS["hin_Deva"]
    ids = [tokenizer(t)["input_ids"][:40] for t in texts]
    assert len({len(i) for i in ids}) > 5  # really padded
    got = last_token_states(model, ids, batch_size=10).double().numpy()  # [n_blocks, N, d]
    ref = naive_states(model, tokenizer, texts, 40).transpose(1, 0, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_derived_quantities_match_naive(tokenizer, tmp_path):
    """Sentence coordinates, directions, distances and the specific share from per-sentence states."""
    loaded = loaded_tiny("llama", tokenizer)
    cfg = SubspacesConfig(languages=LANGS, central="swh_Latn", texts=write_texts(tmp_path), samples=5,
                          seq_len=SEQ_LEN, batch_size=3)
    sub = compute_subspaces(loaded, cfg)
    states = {lang: naive_states(loaded.model, tokenizer, TEXTS[lang], SEQ_LEN) for lang in LANGS}  # [N, L, d]
    allh = np.concatenate([states[g] for g in LANGS])  # [S, L, d]
    assert sub.sentences == TEXTS["eng_Latn"] + TEXTS["swh_Latn"] + TEXTS["hin_Deva"]
    assert sub.sentence_language.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    for l in range(sub.n_blocks):
        B = sub.specific[l]
        P = B.T @ B
        # each sentence's coordinates
        for i in range(allh.shape[0]):
            np.testing.assert_allclose(sub.specific_coords[l, i], B @ allh[i, l], rtol=1e-5, atol=1e-5)
            a = sub.agnostic[l]
            np.testing.assert_allclose(sub.agnostic_coords[l, i], allh[i, l] @ a / np.linalg.norm(a), rtol=1e-5, atol=1e-5)
        # direction: mean of the sentences' projections minus the central language's
        proj = {g: np.mean([P @ h[l] for h in states[g]], axis=0) for g in LANGS}
        for k, g in enumerate(LANGS):
            np.testing.assert_allclose(sub.directions()[l, k], proj[g] - proj["swh_Latn"], rtol=1e-5, atol=1e-5)
        # distances in within-language spreads
        within = np.mean([np.sum((h[l] - states[g][:, l].mean(0)) ** 2) for g in LANGS for h in states[g]])
        for j, g in enumerate(LANGS):
            for k, q in enumerate(LANGS):
                dist = np.linalg.norm(B @ (states[g][:, l].mean(0) - states[q][:, l].mean(0))) / np.sqrt(within)
                assert sub.distances()[l, j, k] == pytest.approx(dist, rel=1e-5, abs=1e-6)
        # specific share of the variance around the overall mean
        c = allh[:, l].mean(0)
        num = sum(np.sum((P @ (h[l] - c)) ** 2) for h in allh)
        den = sum(np.sum((h[l] - c) ** 2) for h in allh)
        assert sub.specific_share()[l] == pytest.approx(num / den, rel=1e-5)
        assert 0 < sub.specific_share()[l] <= 1
    assert sub.direction_sizes()[:, 1] == pytest.approx(np.zeros(sub.n_blocks), abs=1e-12)


def test_save_and_reload(tokenizer, tmp_path):
    """subspaces.npz holds the issue's arrays (no pickles) and the settings as strict JSON."""
    loaded = loaded_tiny("gemma3", tokenizer)
    cfg = SubspacesConfig(languages=LANGS[:2], central="eng_Latn", texts=write_texts(tmp_path), samples=4,
                          seq_len=SEQ_LEN, batch_size=2)
    sub = compute_subspaces(loaded, cfg)
    path = sub.save(tmp_path)
    assert path.name == FILE_NAME
    with np.load(path, allow_pickle=False) as z:
        assert z["languages"].tolist() == LANGS[:2]
        assert z["means"].shape == (3, 2, 32) and z["agnostic"].shape == (3, 32) and z["specific"].shape == (3, 1, 32)
        settings = json.loads(str(z["settings"]))
    assert settings["languages"] == LANGS[:2] and settings["samples"] == 4 and settings["n_blocks"] == 3
    back = load_subspaces(path)
    for name in ("means", "agnostic", "specific", "specific_coords", "agnostic_coords", "total_variance",
                 "within_variance", "sentence_language"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sub, name))
    assert back.sentences == sub.sentences and back.central == "eng_Latn"
    np.testing.assert_array_equal(back.distances(), sub.distances())


def test_subspaces_cpu_bfloat16_runs(tokenizer, tmp_path):
    """A bfloat16 model gives float64 subspaces close to the float32 ones."""
    loaded = loaded_tiny("llama", tokenizer)
    cfg = SubspacesConfig(languages=LANGS, texts=write_texts(tmp_path), samples=5, seq_len=SEQ_LEN)
    ref = compute_subspaces(loaded, cfg)
    loaded.model.to(torch.bfloat16)
    sub = compute_subspaces(loaded, cfg)
    assert sub.means.dtype == np.float64
    np.testing.assert_allclose(sub.means, ref.means, rtol=0.1, atol=0.1)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def test_fewer_than_two_languages(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    with pytest.raises(PolypruneError, match="at least two languages") as e:
        compute_subspaces(loaded, SubspacesConfig(languages=["eng_Latn"], texts=write_texts(tmp_path), samples=2))
    assert "--languages" in e.value.fix


def test_central_not_among_languages(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    with pytest.raises(PolypruneError, match="central language fra_Latn is not among"):
        compute_subspaces(loaded, SubspacesConfig(languages=LANGS, central="fra_Latn", texts=write_texts(tmp_path),
                                                  samples=2))


def test_fewer_sentences_than_asked(tokenizer, tmp_path):
    loaded = loaded_tiny("llama", tokenizer)
    source = write_texts(tmp_path, TEXTS | {"swh_Latn": TEXTS["swh_Latn"][:3]})
    with pytest.raises(PolypruneError, match="has 3 swh_Latn sentences, but 4 were asked for") as e:
        compute_subspaces(loaded, SubspacesConfig(languages=LANGS, texts=source, samples=4))
    assert "at most 3" in e.value.fix


def test_fewer_given_texts_than_asked(tokenizer):
    loaded = loaded_tiny("llama", tokenizer)
    with pytest.raises(PolypruneError, match="There are 5 eng_Latn sentences, but 6 were asked for"):
        compute_subspaces(loaded, SubspacesConfig(languages=LANGS, samples=6), texts=TEXTS)


@pytest.mark.parametrize("change, message", [
    ({"languages": ["eng_Latn", "klingon"]}, "Unknown language 'klingon'"),
    ({"languages": ["eng_Latn", "en"]}, "names eng_Latn twice"),
    ({"samples": 0}, "samples must be an integer at least 1"),
    ({"samples": 2.5}, "samples must be an integer"),
    ({"seq_len": 1}, "seq_len must be an integer at least 2"),
    ({"split": "test"}, "Unknown FLORES split 'test'"),
    ({"languages": 5}, "languages must be a list of languages"),
    ({"texts": ""}, "texts must be a non-empty text"),
])
def test_subspaces_config_rejects(change, message):
    with pytest.raises(PolypruneError, match=message):
        SubspacesConfig(**change).validate()


def test_config_from_dict():
    cfg = SubspacesConfig.from_dict({"languages": "English,Swahili", "central": "en", "samples": 10})
    assert cfg.languages == ["eng_Latn", "swh_Latn"] and cfg.central == "eng_Latn"
    with pytest.raises(PolypruneError, match="Unknown subspaces setting"):
        SubspacesConfig.from_dict({"langs": ["en"]})
    lens = LensConfig.from_dict({"targets": ["sw", "hi"], "space_languages": ["fr", "en"]})
    assert lens.targets == ["swh_Latn", "hin_Deva"] and lens.space_languages == ["fra_Latn"]
    assert lens.space_config().languages == ["eng_Latn", "swh_Latn", "hin_Deva", "fra_Latn"]
