"""The slimming stages: what a GUI button or a CLI command calls, one call per stage.

* :func:`project` — the plan and the projected size of each part, before anything is built.
* :func:`slim` — plan, build, evaluate before and after, export (safetensors + tokenizer + model
  card + report, optionally GGUF), all or nothing.
* :func:`tradeoff` — held-out NLL change per kept language against vocabulary size.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..datasets import data_dir, flores_dir, read_text_lines, sentences, tokenize_texts
from ..errors import PolypruneError
from ..export import export, reload_check
from ..fileio import check_output, dumps, output_folder
from ..models import find_blocks
from ..progress import Progress, ensure
from ..evaluation import evaluate_tasks, get_task
from .blocks import block_influence, least_influential
from .config import SlimConfig
from .gguf_export import check_support, roundtrip_check, write_gguf
from .plan import SlimPlan, apply_plan, cast, head_params, part_sizes
from .report import (card_section, generation_speed, model_card, nll_change, restricted_nll, sentence_nll,
                     sizes_table)
from .scripts import scripts_of_languages
from .tokenizer_trim import build_tokenizer, read_tokenizer_json, trimmed_json
from .vocab import choose_vocab, corpus_counts, mandatory_ids, nested_sizes, script_ids

KIND = "slimmed-model"
FALLBACK_PROMPT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest."


@dataclass
class Projection:
    """A plan and the parameters/bytes of each part before and after it (nothing built yet)."""

    plan: SlimPlan
    sizes: list[dict]
    notes: list[str] = field(default_factory=list)


@dataclass
class SlimResult:
    """What :func:`slim` did: the output folder, the plan, and the report (also in ``report.json``)."""

    out: Path | None
    plan: SlimPlan
    report: dict


# --------------------------------------------------------------------------------------------
# texts
# --------------------------------------------------------------------------------------------
def _flores(cfg: SlimConfig) -> str:
    if cfg.corpus.startswith("flores:"):
        return cfg.corpus
    return f"flores:{flores_dir(data_dir(cfg.data))}"


def corpus_texts(cfg: SlimConfig, languages: list[str]) -> dict[str, list[str]]:
    """The corpus per kept language (a single file without ``{lang}``: under the key ``"corpus"``).

    Raises:
        PolypruneError: a missing file or folder, a language FLORES lacks.
    """
    src = cfg.corpus
    if src == "flores" or src.startswith("flores:"):
        flores = _flores(cfg)
        out = {lang: sentences(flores, lang, "dev") for lang in languages}
    else:
        path = src[5:] if src.startswith("file:") else src
        if "{lang}" in path:
            out = {lang: read_text_lines(path.replace("{lang}", lang), what="Corpus file") for lang in languages}
        else:
            out = {"corpus": read_text_lines(path, what="Corpus file")}
    if cfg.corpus_sentences is not None:
        out = {k: v[:cfg.corpus_sentences] for k, v in out.items()}
    return out


def heldout_texts(cfg: SlimConfig, languages: list[str], n: int) -> dict[str, list[str]]:
    """The first ``n`` FLORES-200 devtest sentences of each kept language.

    Raises:
        PolypruneError: no data folder, or fewer sentences (fix: eval_sentences 0).
    """
    root = flores_dir(data_dir(cfg.data))
    out = {}
    for lang in languages:
        s = sentences(f"flores:{root}", lang, "devtest")
        if len(s) < n:
            raise PolypruneError(f"FLORES devtest has {len(s)} {lang} sentences, fewer than the {n} asked for",
                                 f"evaluate at most {len(s)} sentences per language")
        out[lang] = s[:n]
    return out


def _batches(tokenizer, texts: list[str], max_tokens: int = 128, batch_size: int = 8):
    seqs = [s for s in tokenize_texts(tokenizer, texts, max_tokens) if s]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for k in range(0, len(seqs), batch_size):
        chunk = seqs[k:k + batch_size]
        T = max(map(len, chunk))
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for b, s in enumerate(chunk):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        out.append((ids, mask))
    return out


# --------------------------------------------------------------------------------------------
# plan and projection
# --------------------------------------------------------------------------------------------
def make_plan(loaded, cfg: SlimConfig, progress: Progress | None = None):
    """Choose the kept tokens and the blocks to remove.

    Returns:
        ``(plan, tj)``: the :class:`~polyprune.slimming.plan.SlimPlan` and the parsed source
        ``tokenizer.json`` (``None`` when the vocabulary is kept and no GGUF is asked for).

    Raises:
        PolypruneError: any bad setting or input (see :class:`SlimConfig`, :func:`choose_vocab`).
    """
    progress = ensure(progress)
    cfg.validate()
    languages = cfg.languages()
    scripts = scripts_of_languages(languages)
    plan = SlimPlan(languages, scripts, heads=cfg.heads, dtype=cfg.dtype)
    tj = None
    texts = None
    if cfg.vocab != "none" or cfg.gguf:
        progress.update(0, 4, "reading the tokenizer")
        tj = read_tokenizer_json(loaded.tokenizer)
    if cfg.vocab in ("corpus", "size") or cfg.remove_blocks:
        texts = corpus_texts(cfg, languages)
    if cfg.vocab != "none":
        flat = [t for v in texts.values() for t in v] if texts else None
        plan.vocab = choose_vocab(loaded.tokenizer, tj, cfg.vocab, scripts, flat, cfg.vocab_size,
                                  progress=progress.sub(0.05, 0.5))
    if cfg.remove_blocks:
        _, blocks = find_blocks(loaded.model)
        least_influential([0.0] * len(blocks), cfg.remove_blocks)  # refuse removing every block before measuring
        sample = [t for v in texts.values() for t in v[:cfg.influence_sentences]]
        plan.influence = block_influence(loaded.model, _batches(loaded.tokenizer, sample),
                                         progress.sub(0.5, 1.0))
        plan.remove_blocks = least_influential(plan.influence, cfg.remove_blocks)
    progress.update(4, 4, "plan ready")
    return plan, tj


def projected_sizes(model, plan: SlimPlan) -> dict[str, int]:
    """Parameters per part after ``plan``, computed without building the model."""
    before = part_sizes(model)
    after = dict(before)
    if plan.vocab is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        for part in ("embedding", "lm_head"):
            after[part] = before[part] * len(plan.vocab.keep) // rows if before[part] else 0
    _, blocks = find_blocks(model)
    for i in plan.remove_blocks:
        after["blocks"] -= sum(p.numel() for p in blocks[i].parameters())
    if isinstance(plan.heads, dict):  # {block: [query heads]} (the heads helper's hard cut), blocks kept only
        n = sum(len(v) for b, v in plan.heads.items() if int(b) not in plan.remove_blocks)
        after["blocks"] -= n * head_params(model)
    return after


def project(loaded, cfg: SlimConfig, progress: Progress | None = None) -> Projection:
    """Stage: the plan and the size of each part before and after it (nothing is built or written)."""
    plan, _ = make_plan(loaded, cfg, progress)
    dtype = loaded.dtype
    rows = sizes_table(part_sizes(loaded.model), projected_sizes(loaded.model, plan), dtype, cfg.dtype)
    notes = []
    if cfg.heads:
        notes.append(f"Head removal is not connected yet (projected only): one query head holds "
                     f"{head_params(loaded.model):,} parameters.")
    return Projection(plan, rows, notes)


# --------------------------------------------------------------------------------------------
# the slimming stage
# --------------------------------------------------------------------------------------------
def _evaluate(model, tokenizer, cfg: SlimConfig, heldout: dict, languages: list[str], progress: Progress) -> dict:
    out: dict = {"nll": {}, "tasks": []}
    n = max(len(heldout), 1) + (1 if cfg.tasks or cfg.translation else 0)
    for k, (lang, texts) in enumerate(heldout.items()):
        out["nll"][lang] = sentence_nll(model, tokenizer, texts, progress=progress.sub(k / n, (k + 1) / n))
    runs = []  # (tasks with their languages, limit)
    mc = {}
    for t in cfg.tasks:
        task = get_task(t)
        ok = []
        for lang in languages:
            try:
                ok.append(task.language(lang))
            except PolypruneError:
                pass
        if ok:
            mc[t] = ok
    if mc:
        runs.append((mc, cfg.task_limit))
    mt = [lang for lang in languages if lang != "eng_Latn"]
    if cfg.translation and mt:
        runs.append(({"flores_mt": mt}, cfg.translation_limit))
    for k, (langs, limit) in enumerate(runs):
        rows = evaluate_tasks(model, tokenizer, list(langs), langs, str(data_dir(cfg.data)), limit=limit,
                              bootstrap=cfg.bootstrap, seed=cfg.seed, on_error="record",
                              progress=progress.sub((n - 1 + k / len(runs)) / n, (n - 1 + (k + 1) / len(runs)) / n))
        out["tasks"] += [r.to_dict() for r in rows]
    return out


def slim(loaded, cfg: SlimConfig, progress: Progress | None = None) -> SlimResult:
    """Stage: slim the loaded model for the kept languages and export it.

    Steps: validate settings and the output folder; plan (:func:`make_plan`); build the slimmed
    model and tokenizer (the loaded model is not changed); refuse an unsupported GGUF request; evaluate
    the source and the slimmed model on the kept languages (held-out sentence NLL, tasks,
    translation, speed); write the folder (safetensors in ``cfg.dtype``, tokenizer, model card,
    ``report.json``, ``slim_config.json``, ``kept_tokens.json``, optional GGUF with its round-trip
    check) atomically. With ``cfg.out = None`` nothing is written (a dry run with measurements).

    Raises:
        PolypruneError: bad settings or input, an unsupported GGUF request, a bad output folder;
            nothing is written then.
        Cancelled: on cancel; nothing is written.
    """
    progress = ensure(progress)
    cfg.validate()
    if cfg.out:
        check_output(cfg.out, sources=[loaded.path], overwrite=cfg.overwrite, kind="folder", what="output folder")
    languages = cfg.languages()
    heldout = heldout_texts(cfg, languages, cfg.eval_sentences) if cfg.eval_sentences else {}
    plan, tj = make_plan(loaded, cfg, progress.sub(0.0, 0.2))
    progress.sub(0.2, 0.2).update(0, 1, "building the slimmed model")
    model = apply_plan(loaded.model, plan)
    tokenizer = loaded.tokenizer
    new_tj = tj
    if plan.vocab is not None and cfg.vocab != "none":
        data = trimmed_json(tj, plan.vocab.keep)
        tokenizer = build_tokenizer(loaded.tokenizer, data, plan.vocab.id_map())
        new_tj = read_tokenizer_json(tokenizer)
    samples = [t for v in heldout.values() for t in v[:3]] or [FALLBACK_PROMPT]
    pre = check_support(model, new_tj, loaded.tokenizer) if cfg.gguf else None
    report: dict = {"model": {"spec": loaded.spec, "name": loaded.meta.get("name", loaded.spec)},
                    "slim": cfg.to_dict(), "plan": plan.to_dict(), "recipe": {"slim": cfg.to_dict()}}
    report["sizes"] = sizes_table(part_sizes(loaded.model), part_sizes(model), loaded.dtype, cfg.dtype)
    progress.sub(0.2, 0.2).update(0, 1, "evaluating the source model")
    before = _evaluate(loaded.model, loaded.tokenizer, cfg, heldout, languages, progress.sub(0.2, 0.45))
    if cfg.speed:
        prompt = samples[0]
        sp_b = generation_speed(loaded.model, loaded.tokenizer, prompt, cfg.speed_tokens, cfg.speed_runs,
                                progress.sub(0.45, 0.5))
        sp_a = generation_speed(model, tokenizer, prompt, cfg.speed_tokens, cfg.speed_runs, progress.sub(0.5, 0.55))
        report["speed"] = {"before": sp_b, "after": sp_a, "new_tokens": cfg.speed_tokens, "dtype": loaded.dtype,
                           "device": loaded.device, "speedup": sp_a["tokens_per_s"] / sp_b["tokens_per_s"]}
    cast(model, cfg.dtype)
    progress.sub(0.55, 0.55).update(0, 1, "evaluating the slimmed model")
    after = _evaluate(model, tokenizer, cfg, heldout, languages, progress.sub(0.55, 0.8))
    report["quality"] = [dict(language=lang, **nll_change(before["nll"][lang], after["nll"][lang], cfg.bootstrap,
                                                          cfg.seed)) for lang in heldout]
    report["tasks"] = _pair_tasks(before["tasks"], after["tasks"])
    out = None
    if cfg.out:
        out = _write(loaded, cfg, plan, model, tokenizer, new_tj, pre, samples, report, progress.sub(0.8, 1.0))
    progress.update(1, 1, "slimming done")
    return SlimResult(out, plan, report)


def _pair_tasks(before: list[dict], after: list[dict]) -> list[dict]:
    key = lambda r: (r["task"], r["language"], r["metric"])  # noqa: E731
    a = {key(r): r for r in after}
    rows = []
    for r in before:
        s = a.get(key(r))
        if s is None or r["metric"] == "error":
            continue
        rows.append({"task": r["task"], "language": r["language"], "metric": r["metric"], "before": r["value"],
                     "before_ci": [r.get("ci_low"), r.get("ci_high")], "after": s["value"],
                     "after_ci": [s.get("ci_low"), s.get("ci_high")], "delta": s["value"] - r["value"], "n": r["n"]})
    return rows


def _write(loaded, cfg, plan, model, tokenizer, tj, pre, samples, report, progress) -> Path:
    with output_folder(cfg.out, kind=KIND, sources=[loaded.path], overwrite=cfg.overwrite) as tmp:
        ckpt = tmp / "checkpoint"
        export(model, tokenizer, ckpt, report, source=loaded.path, progress=progress.sub(0.0, 0.4),
               card_extra=card_section(report))
        for f in ckpt.iterdir():
            shutil.move(str(f), str(tmp / f.name))
        ckpt.rmdir()
        report["files"] = {"safetensors_bytes": sum(f.stat().st_size for f in tmp.glob("*.safetensors"))}
        model.float()
        report["reload_max_abs_logit"] = reload_check(model, tmp, tokenizer, samples[0])
        if cfg.gguf:
            name = f"model-{cfg.gguf}.gguf"
            write_gguf(tmp, tmp / name, cfg.gguf, tj, tokenizer, samples, pre, progress.sub(0.4, 0.8))
            progress.sub(0.8, 0.8).update(0, 1, "reading the GGUF back")
            check = roundtrip_check(model, tokenizer, tmp / name, cfg.gguf, samples)
            report["gguf"] = {"file": name, "type": cfg.gguf, "bytes": (tmp / name).stat().st_size, "check": check}
        if plan.vocab is not None:
            (tmp / "kept_tokens.json").write_text(json.dumps(plan.vocab.keep), encoding="utf-8")
        (tmp / "slim_config.json").write_text(dumps(cfg.to_dict()) + "\n", encoding="utf-8")
        (tmp / "report.json").write_text(dumps(report) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(report), encoding="utf-8")
    return Path(cfg.out).expanduser().resolve()


# --------------------------------------------------------------------------------------------
# trade-off curve
# --------------------------------------------------------------------------------------------
def default_sizes(mandatory: int, script_size: int, points: int = 8) -> list[int]:
    """``points`` vocabulary sizes spread geometrically from ``max(2 x mandatory, script/12)`` to the
    script vocabulary."""
    lo = max(2 * mandatory, script_size // 12)
    if lo >= script_size:
        return [script_size]
    r = (script_size / lo) ** (1 / (points - 1))
    return sorted({min(script_size, int(round(lo * r ** k))) for k in range(points)})


def tradeoff(loaded, cfg: SlimConfig, progress: Progress | None = None) -> list[dict]:
    """Stage: held-out sentence NLL change per kept language against vocabulary size.

    Vocabularies: the nested ``size``-mode vocabularies of ``cfg.curve_sizes`` (default :func:`default_sizes`),
    the ``script`` vocabulary and the ``corpus`` vocabulary (ranking corpus = ``cfg.corpus``);
    held-out text = the first ``cfg.eval_sentences`` FLORES devtest sentences per language.

    Returns:
        Rows ``{vocab, size, language, change_pct, ci_low, ci_high, nll_before, nll_after, n,
        params}`` (``params``: the model's parameters with that vocabulary).

    Raises:
        PolypruneError: bad settings, no data, a size outside [mandatory, script vocabulary].
    """
    from tokenizers import Tokenizer

    progress = ensure(progress)
    cfg.validate()
    if not cfg.eval_sentences:
        raise PolypruneError("The trade-off curve needs held-out sentences", "set eval_sentences to 1 or more")
    languages = cfg.languages()
    scripts = scripts_of_languages(languages)
    tok = loaded.tokenizer
    tj = read_tokenizer_json(tok)
    progress.sub(0.0, 0.0).update(0, 1, "classifying tokens")
    classes = tj.token_scripts()
    corpus = [t for v in corpus_texts(cfg, languages).values() for t in v]
    counts = corpus_counts(tok, corpus)
    order, must = nested_sizes(tj, classes, scripts, counts)
    in_script = script_ids(tj, classes, scripts)
    sizes = sorted(set(cfg.curve_sizes or default_sizes(len(must), len(in_script))))
    for s in sizes:
        if s < len(must) or s > len(in_script):
            raise PolypruneError(f"A vocabulary of {s} tokens is outside {len(must)}..{len(in_script)} (special and "
                                 "byte tokens .. every token of the kept scripts)",
                                 f"give sizes between {len(must)} and {len(in_script)}")
    vocabs = [("size", sorted(must | set(order[:s - len(must)]))) for s in sizes]
    vocabs.append(("script", sorted(in_script)))
    corpus_choice = choose_vocab(tok, tj, "corpus", scripts, corpus, classes=classes)
    vocabs.append(("corpus", corpus_choice.keep))
    heldout = heldout_texts(cfg, languages, cfg.eval_sentences)
    cache: dict = {}
    base = {lang: restricted_nll(loaded.model, [tok(t)["input_ids"] for t in texts], None, cache)
            for lang, texts in heldout.items()}
    rows_emb = loaded.model.get_input_embeddings().weight.shape
    other = sum(part_sizes(loaded.model).values()) - part_sizes(loaded.model)["embedding"] - \
        part_sizes(loaded.model)["lm_head"]
    tied = part_sizes(loaded.model)["lm_head"] == 0
    rows = []
    for k, (label, keep) in enumerate(vocabs):
        sub = progress.sub(k / len(vocabs), (k + 1) / len(vocabs))
        sub.update(0, 1, f"{label} vocabulary of {len(keep):,} tokens")
        trimmed = Tokenizer.from_str(json.dumps(trimmed_json(tj, keep)))
        keep_t = torch.tensor(keep, dtype=torch.long)
        for lang, texts in heldout.items():
            seqs = [[keep[i] for i in trimmed.encode(t).ids] for t in texts]
            after = restricted_nll(loaded.model, seqs, keep_t, cache, progress=sub)
            ch = nll_change(base[lang], after, cfg.bootstrap, cfg.seed)
            rows.append({"vocab": label, "size": len(keep), "language": lang, **ch,
                         "params": other + len(keep) * rows_emb[1] * (1 if tied else 2)})
    progress.update(1, 1, "trade-off curve done")
    return rows


def mandatory_count(loaded) -> int:
    """Special and byte tokens of the loaded tokenizer (the smallest vocabulary size)."""
    return len(mandatory_ids(read_tokenizer_json(loaded.tokenizer)))
