"""Lens: improve target languages by fine-tuning only the top blocks (Zhao et al. 2024, arXiv
2410.04407, §3.2-3.3 and §4.1; methods.md §8; public code circle-hit/Lens).

Only the top ``k`` blocks train; embeddings, the other blocks, the final norm and the LM head are
frozen. With ``h`` the last entry of transformers' ``hidden_states`` (the last block's output
after the final norm, the space the subspaces were measured in), ``a^ = a / ||a||`` the unit
agnostic direction and ``B`` the specific basis of the last block, ``P x = B^T B x``, each
example (one row of parallel sentences) gives:

* retain   = MSE( mean_t h_c(t), mean_t h0_c(t) ) over the central sentence's real tokens, where
  ``h0`` is the model before Lens (the public code also averages over padding);
* align    = MSE( (h_x . a^) a^, (h_c . a^) a^ ) at the last tokens, per target ``x``;
* separate = MSE( P h_x - P h0_x, s * dir_x ) at the last token, per target, with ``dir_x`` the
  target's direction (its mean projection on the specific subspace minus the central language's)
  and ``s`` the direction scale;

loss = w_retain * retain + sum over targets (w_align * align + w_separate * separate); MSE is the
mean over the ``d`` hidden dimensions. The public code names *align* "push" and *separate*
"pull"; the names here follow the paper's wording.

The "frozen copy" of the paper needs no second model: the blocks below the top ``k`` never change,
so the frozen top blocks would see the same inputs and give what the model gave before training;
those states (``h0``) are computed once before the first step.

Training as in the paper (and the transformers Trainer the public code runs): batch 1, gradients
accumulated over ``accumulation`` examples, AdamW (betas 0.9/0.999, eps 1e-8; weight decay on
matrices only, not on norms and biases), the transformers cosine schedule with linear warm-up over
``ceil(warmup x steps)`` steps, gradient clipping at ``max_grad_norm``; dropout is off. Models in
bfloat16/float16 train float32 master copies of the top blocks' weights.

:func:`apply_lens` keeps a CPU copy of the top blocks' parameters: cancel, failure and divergence
(a loss that is not finite) put them back bit for bit, and :meth:`LensResult.restore` undoes a
finished Lens.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from polyprune.datasets import language_texts, load_pairs, tokenize_texts
from polyprune.errors import PolypruneError
from polyprune.export import export
from polyprune.fileio import check_output
from polyprune.fileio import dumps
from polyprune.languages import language_name
from polyprune.models import base_model, find_blocks
from polyprune.progress import Progress, ensure

from .config import LensConfig
from .space import FILE_NAME, Subspaces, compute_subspaces, load_subspaces

PAIR_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".tab")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def training_rows(cfg: LensConfig) -> list[dict[str, str]]:
    """The first ``cfg.samples`` parallel rows ``{language: sentence}`` (central and every target).

    ``file:PATH`` with ``{lang}`` reads line-aligned text files; ``file:PATH.jsonl|.tsv|.csv`` reads
    one column per language code; FLORES and the built-in set are parallel by line.

    Raises:
        PolypruneError: a missing source, a missing language, or fewer rows than asked for.
    """
    langs = [cfg.central, *cfg.targets]
    kind, _, arg = cfg.texts.partition(":")
    if kind == "file" and "{lang}" not in arg and Path(arg).suffix.lower() in PAIR_SUFFIXES:
        rows: list[dict[str, str]] | None = None
        for t in cfg.targets:
            pairs = load_pairs(cfg.texts, cfg.central, t)
            if rows is None:
                rows = [{cfg.central: c} for c, _ in pairs]
            if len(pairs) != len(rows):
                raise PolypruneError(f"{arg} has {len(rows)} rows with {cfg.central} but {len(pairs)} with {t}",
                                     "give every language a sentence in every row")
            for r, (_, x) in zip(rows, pairs):
                r[t] = x
        rows = rows or []
        if len(rows) < cfg.samples:
            raise PolypruneError(f"{arg} has {len(rows)} parallel rows, but {cfg.samples} were asked for",
                                 f"ask for at most {len(rows)} examples (samples), or add rows")
        return rows[:cfg.samples]
    texts = {g: language_texts(cfg.texts, g, cfg.samples, cfg.split) for g in langs}
    return [{g: texts[g][i] for g in langs} for i in range(cfg.samples)]


def final_states(model, ids: list[int]) -> torch.Tensor:
    """``[T, d]``: the last entry of ``hidden_states`` (last block's output as transformers returns
    it) for one sentence, in the model's dtype, with gradients where the model has them."""
    dev = next(model.parameters()).device
    out = base_model(model)(input_ids=torch.tensor([ids], device=dev), output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1][0]


# --------------------------------------------------------------------------------------------
# losses and schedule
# --------------------------------------------------------------------------------------------
@dataclass
class LensGeometry:
    """The last block's subspaces as float32 tensors: unit agnostic direction ``[d]``, specific
    basis ``[r, d]`` and each target's direction ``{code: [d]}``."""

    agnostic: torch.Tensor
    specific: torch.Tensor
    directions: dict[str, torch.Tensor]

    @classmethod
    def from_subspaces(cls, sub: Subspaces, central: str, targets: list[str], device) -> "LensGeometry":
        a = sub.agnostic[-1] / np.linalg.norm(sub.agnostic[-1])
        dirs = sub.directions(central)[-1]

        def t(x):
            return torch.tensor(np.asarray(x), dtype=torch.float32, device=device)

        return cls(t(a), t(sub.specific[-1]), {g: t(dirs[sub.index(g)]) for g in targets})

    def project_agnostic(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.agnostic)[..., None] * self.agnostic

    def project_specific(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.specific.T) @ self.specific


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over all elements (``torch.nn.MSELoss()``)."""
    return ((x - y) ** 2).mean()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The transformers cosine schedule with linear warm-up: the learning-rate factor of optimizer
    step ``step`` (0-based) of ``total``, after ``warmup`` warm-up steps (the first step of a
    warm-up has factor 0, as in transformers)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass
class LensResult:
    """What :func:`apply_lens` did, and how to undo it.

    Attributes:
        config: the validated settings (:class:`LensConfig` as a dict).
        blocks: indices (0-based) of the trained blocks.
        subspaces: the subspaces the losses used (their last block).
        history: one row per training example in visiting order: ``epoch``, ``step`` (optimizer
            step it belongs to), ``example`` (row index), ``lr``, ``retain``, ``align``,
            ``separate``, ``loss`` (the weighted total).
        before, after: per target, on the training rows, ``align_gap`` (mean ``|(h_x - h_c) . a^|``
            at the last tokens), ``shift`` (mean ``(P h_x - P h0_x) . dir_x / ||dir_x||^2``, the
            share of the direction moved: 0 before, ``direction_scale`` is the goal) and
            ``retain_drift`` (mean ``||mean_t h_c - mean_t h0_c|| / ||mean_t h0_c||``).
        trained_parameters: number of weights trained.
        steps: optimizer steps taken.
        seconds: wall time.
        saved: ``[(parameter, CPU copy)]`` of the top blocks before Lens (for :meth:`restore`).
    """

    config: dict
    blocks: list[int]
    subspaces: Subspaces
    history: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    trained_parameters: int = 0
    steps: int = 0
    seconds: float = 0.0
    saved: list = field(default_factory=list, repr=False)

    def restore(self) -> None:
        """Put the top blocks' parameters back exactly as they were before Lens."""
        with torch.no_grad():
            for p, old in self.saved:
                p.copy_(old)

    def summary(self) -> dict:
        """A JSON-able summary for reports and the model card (no tensors)."""
        last = self.history[-1] if self.history else {}
        return {"config": self.config, "blocks": self.blocks, "trained_parameters": self.trained_parameters,
                "steps": self.steps, "examples": len(self.history), "seconds": round(self.seconds, 2),
                "before": self.before, "after": self.after,
                "final_losses": {k: last.get(k) for k in ("retain", "align", "separate", "loss")},
                "subspace_languages": self.subspaces.languages}

    def history_csv(self) -> str:
        """The training history as CSV text."""
        buf = io.StringIO()
        cols = ["epoch", "step", "example", "lr", "retain", "align", "separate", "loss"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in self.history:
            w.writerow(r)
        return buf.getvalue()


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------
def _subspaces_for(loaded, cfg: LensConfig, subspaces: Subspaces | None, n_blocks: int, d: int,
                   progress: Progress) -> Subspaces:
    if subspaces is None and cfg.subspaces:
        subspaces = load_subspaces(cfg.subspaces)
    if subspaces is None:
        return compute_subspaces(loaded, cfg.space_config(), progress)
    for g in [cfg.central, *cfg.targets]:
        subspaces.index(g)
    if subspaces.n_blocks != n_blocks or subspaces.dim != d:
        raise PolypruneError(f"The subspaces have {subspaces.n_blocks} blocks of size {subspaces.dim}, the model "
                             f"{n_blocks} of size {d}", "measure the subspaces on this model")
    return subspaces


def _probe(model, tokenized: list[dict[str, list[int]]], cfg: LensConfig, geo: LensGeometry,
           ref_c: torch.Tensor, ref_t: dict[str, torch.Tensor], progress: Progress) -> dict:
    """Mean align gap, shift and retain drift over the training rows (no gradients)."""
    gaps = {t: [] for t in cfg.targets}
    shifts = {t: [] for t in cfg.targets}
    drift = []
    with torch.no_grad():
        for i, row in enumerate(tokenized):
            progress.update(i, len(tokenized), f"Measuring the training rows {i + 1}/{len(tokenized)}")
            h_c = final_states(model, row[cfg.central]).float()
            drift.append(float((h_c.mean(0) - ref_c[i]).norm() / ref_c[i].norm().clamp_min(1e-30)))
            for t in cfg.targets:
                h_t = final_states(model, row[t]).float()[-1]
                gaps[t].append(float(((h_t - h_c[-1]) @ geo.agnostic).abs()))
                dv = geo.directions[t]
                moved = geo.project_specific(h_t - ref_t[t][i])
                shifts[t].append(float(moved @ dv / (dv @ dv).clamp_min(1e-30)))
    return {t: {"align_gap": float(np.mean(gaps[t])), "shift": float(np.mean(shifts[t])),
                "retain_drift": float(np.mean(drift))} for t in cfg.targets}


def apply_lens(loaded, cfg: LensConfig, progress: Progress | None = None,
               subspaces: Subspaces | None = None) -> LensResult:
    """Apply Lens to a loaded model in place, reversibly (see the module docstring).

    Args:
        loaded: a :class:`polyprune.models.LoadedModel` (dense or pruned; any dtype and device).
        cfg: the settings; ``cfg.subspaces`` or ``subspaces`` give the subspaces, else they are
            measured first (central, targets and ``space_languages``).
        subspaces: subspaces measured on this model (must hold central and targets).

    Returns:
        :class:`LensResult`; its :meth:`~LensResult.restore` undoes Lens bit for bit.

    Raises:
        PolypruneError: bad settings, ``top_blocks`` larger than the number of blocks, fewer
            sentences than asked for, subspaces without the languages, or training that diverges
            (a loss that is not finite); the model is then left as it was.
        Cancelled: through ``progress``; the model is left as it was.
    """
    with torch.inference_mode(False):  # the losses need autograd even if the caller is in inference mode
        return _apply(loaded, cfg, ensure(progress), subspaces)


def _apply(loaded, cfg: LensConfig, progress: Progress, subspaces: Subspaces | None) -> LensResult:
    t0 = time.monotonic()
    cfg = cfg.validate()
    model, tok = loaded.model, loaded.tokenizer
    _, blocks = find_blocks(model)
    n = len(blocks)
    k = cfg.blocks_for(n)
    top = list(range(n - k, n))
    d = int(model.get_input_embeddings().weight.shape[1])
    device = next(model.parameters()).device

    progress.update(0, 1, "Reading training sentences")
    rows = training_rows(cfg)
    total = -(-len(rows) // cfg.accumulation) * cfg.epochs
    if all(lr_factor(s, total, math.ceil(cfg.warmup * total)) == 0 for s in range(total)):
        raise PolypruneError(f"With {len(rows)} examples and accumulation {cfg.accumulation}, Lens takes {total} "
                             f"optimizer step(s), all of them warm-up steps at learning rate 0",
                             "use more training examples (samples) or set warmup to 0")
    langs = [cfg.central, *cfg.targets]
    tokenized = [{g: ids for g, ids in zip(langs, tokenize_texts(tok, [r[g] for g in langs], cfg.seq_len))}
                 for r in rows]
    for i, r in enumerate(tokenized):
        for g, ids in r.items():
            if not ids:
                raise PolypruneError(f"Training row {i + 1} has no {g} tokens", "remove empty sentences from the texts")
    sub = _subspaces_for(loaded, cfg, subspaces, n, d, progress.sub(0.0, 0.25))
    geo = LensGeometry.from_subspaces(sub, cfg.central, cfg.targets, device)

    # the model before Lens: central token-mean states and targets' last-token states (the frozen copy)
    ref_c = torch.zeros(len(tokenized), d, device=device)
    ref_c_last = torch.zeros(len(tokenized), d, device=device)
    ref_t = {t: torch.zeros(len(tokenized), d, device=device) for t in cfg.targets}
    ref_progress = progress.sub(0.25, 0.35)
    with torch.no_grad():
        for i, row in enumerate(tokenized):
            ref_progress.update(i, len(tokenized), f"States before Lens {i + 1}/{len(tokenized)}")
            h_c = final_states(model, row[cfg.central]).float()
            ref_c[i], ref_c_last[i] = h_c.mean(0), h_c[-1]
            for t in cfg.targets:
                ref_t[t][i] = final_states(model, row[t]).float()[-1]
    before = {t: {"align_gap": float(((ref_t[t] - ref_c_last) @ geo.agnostic).abs().mean()), "shift": 0.0,
                  "retain_drift": 0.0} for t in cfg.targets}

    params = [p for b in top for p in blocks[b].parameters()]
    result = LensResult(config=cfg.to_dict(), blocks=top, subspaces=sub, before=before,
                        trained_parameters=sum(p.numel() for p in params),
                        saved=[(p, p.detach().to("cpu", copy=True)) for p in params])
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        with torch.inference_mode(False), torch.enable_grad():
            _train(model, tokenized, cfg, geo, ref_c, ref_t, params, result, progress.sub(0.35, 0.95))
        result.after = _probe(model, tokenized, cfg, geo, ref_c, ref_t, progress.sub(0.95, 1.0))
    except BaseException:
        result.restore()
        raise
    finally:
        for p, f in flags:
            p.requires_grad_(f)
            p.grad = None
        model.train(was_training)
    result.seconds = time.monotonic() - t0
    progress.update(1, 1, f"Lens done: {result.steps} steps on blocks {top[0] + 1}-{top[-1] + 1}")
    return result


def _train(model, tokenized, cfg: LensConfig, geo: LensGeometry, ref_c, ref_t, params, result: LensResult,
           progress: Progress) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.eval()  # no dropout
    # float32 master weights for half-precision models; float32 models train their own tensors
    masters = [p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True) for p in params]
    zeros = [(m, p == 0) for m, p in zip(masters, params) if cfg.keep_zeros and p.dim() >= 2 and bool((p == 0).any())]
    groups = [{"params": [m for m in masters if m.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [m for m in masters if m.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    n = len(tokenized)
    per_epoch = -(-n // cfg.accumulation)
    total = per_epoch * cfg.epochs
    warm = math.ceil(cfg.warmup * total)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(n) if cfg.shuffle else np.arange(n)
        for j, i in enumerate(order.tolist()):
            progress.update(epoch * n + j, cfg.epochs * n, f"Lens epoch {epoch + 1}, example {j + 1}/{n}, step {step + 1}/{total}")
            group = min(cfg.accumulation, n - (j // cfg.accumulation) * cfg.accumulation)
            row = tokenized[i]
            h_c = final_states(model, row[cfg.central]).float()
            parts = {"retain": mse(h_c.mean(0), ref_c[i]), "align": h_c.new_zeros(()), "separate": h_c.new_zeros(())}
            for t in cfg.targets:
                h_t = final_states(model, row[t]).float()[-1]
                parts["align"] = parts["align"] + mse(geo.project_agnostic(h_t), geo.project_agnostic(h_c[-1]))
                moved = geo.project_specific(h_t) - geo.project_specific(ref_t[t][i])
                parts["separate"] = parts["separate"] + mse(moved, cfg.direction_scale * geo.directions[t])
            loss = (cfg.retain_weight * parts["retain"] + cfg.align_weight * parts["align"]
                    + cfg.separate_weight * parts["separate"])
            lr = cfg.lr * lr_factor(step, total, warm)
            result.history.append({"epoch": epoch, "step": step, "example": i, "lr": lr,
                                   **{key: float(v.detach()) for key, v in parts.items()}, "loss": float(loss.detach())})
            if not torch.isfinite(loss):
                raise PolypruneError(f"Lens training diverged: the loss became {float(loss.detach())} at example {j + 1} "
                                     f"(optimizer step {step + 1}); the model was left as it was",
                                     "lower the learning rate (lr) or the loss weights and run Lens again")
            (loss / group).backward()
            if (j + 1) % cfg.accumulation and j + 1 < n:
                continue
            for m, p in zip(masters, params):
                if m is not p:
                    m.grad = None if p.grad is None else p.grad.float()
                    p.grad = None
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(masters, cfg.max_grad_norm)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for m, mask in zeros:
                    m.masked_fill_(mask, 0.0)
                for m, p in zip(masters, params):
                    if m is not p:
                        p.copy_(m)
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    raise PolypruneError(f"Lens training diverged: weights became infinite or NaN at optimizer step "
                                         f"{step + 1}; the model was left as it was",
                                         "lower the learning rate (lr) or the loss weights and run Lens again")
            step += 1
    result.steps = step
    progress.update(1, 1, "Lens trained")


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def lens_card(result: LensResult) -> str:
    """The model card's Lens section (Markdown): every setting, the trained blocks, before/after."""
    c = result.config

    def names(codes):
        return ", ".join(f"{language_name(x)} ({x})" for x in codes)

    lines = ["## Lens (language subspaces)", "",
             "The top blocks of this model were fine-tuned with Lens (Zhao et al. 2024, arXiv 2410.04407) by "
             "Polyprune: the target languages were drawn towards the central language along the language-agnostic "
             "direction (*align*) and moved along their own direction in the language-specific subspace "
             "(*separate*), while the central language's states were kept (*retain*). Everything outside the "
             "trained blocks is unchanged.", "",
             "| setting | value |", "|---|---|",
             f"| central language | {names([c['central']])} |",
             f"| target languages | {names(c['targets'])} |",
             f"| trained blocks | {', '.join(str(b + 1) for b in result.blocks)} of {result.subspaces.n_blocks} "
             f"({result.trained_parameters:,} weights) |",
             f"| subspace languages | {names(result.subspaces.languages)} |"]
    for key in ("texts", "split", "samples", "seq_len", "space_texts", "space_samples", "space_seq_len", "subspaces",
                "lr", "epochs", "accumulation", "warmup", "weight_decay", "max_grad_norm", "retain_weight",
                "align_weight", "separate_weight", "direction_scale", "keep_zeros", "shuffle", "seed"):
        lines.append(f"| {key} | {c.get(key)} |")
    lines += [f"| optimizer steps | {result.steps} |", "", "| target | align gap before | after | shift before | after "
              "| central drift after |", "|---|---|---|---|---|---|"]
    for t in c["targets"]:
        b, a = result.before.get(t, {}), result.after.get(t, {})
        lines.append(f"| {t} | {b.get('align_gap', float('nan')):.4g} | {a.get('align_gap', float('nan')):.4g} | "
                     f"{b.get('shift', float('nan')):.3g} | {a.get('shift', float('nan')):.3g} | "
                     f"{a.get('retain_drift', float('nan')):.3g} |")
    lines += ["", "`lens_config.json` holds every setting and `subspaces.npz` the subspaces used.", ""]
    return "\n".join(lines)


def export_lens(loaded, result: LensResult, out: str | Path, *, overwrite: bool = False,
                report: dict | None = None, progress: Progress | None = None) -> Path:
    """Write the model after Lens as ``polyprune export`` does (safetensors, tokenizer, model card,
    ``pruning_config.json``), plus ``lens_config.json``, ``lens_history.csv`` and ``subspaces.npz``.

    Args:
        loaded: the model Lens was applied to.
        result: what :func:`apply_lens` returned.
        out: the export folder (must not exist unless ``overwrite``; never the source folder).
        report: a run report to extend (e.g. with the pruning before Lens); default: the model's facts.

    Raises:
        PolypruneError: a bad target folder or a failed write (nothing is left behind).
    """
    report = dict(report or {"model": loaded.info() | {"name": loaded.meta.get("name", loaded.spec)},
                             "pruning": {"config": {"method": "none (dense)"}, "overall_sparsity": 0.0}})
    report["lens"] = result.summary()
    extra = {"lens_config.json": dumps(result.summary()) + "\n", "lens_history.csv": result.history_csv(),
             FILE_NAME: result.subspaces.to_bytes()}
    return export(loaded.model, loaded.tokenizer, out, report, source=loaded.path, overwrite=overwrite,
                  progress=progress, extra_files=extra, card_extra=lens_card(result)).path


def check_export_target(loaded_or_path, out: str | Path, overwrite: bool = False) -> Path:
    """Check an export folder before training (see :func:`polyprune.fileio.check_output`).

    Raises:
        PolypruneError: the folder is the source model's or inside it, or exists without ``overwrite``.
    """
    source = getattr(loaded_or_path, "path", loaded_or_path)
    return check_output(out, sources=[source], overwrite=overwrite, what="export folder")
