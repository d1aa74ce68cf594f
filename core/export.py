"""Exporting a model: safetensors + tokenizer + model card + ``pruning_config.json`` + report,
recipe and masks, as one folder that appears whole or not at all.

Everything is assembled in a temporary folder beside the target (:func:`polyprune.fileio.output_folder`),
the export is reloaded with stock ``AutoModelForCausalLM.from_pretrained`` and compared with the
model in memory, and only then is the folder renamed into place. A failed, cancelled or killed
export leaves nothing at the target; the source checkpoint is never written to; an existing folder
is replaced only when it is a Polyprune output and the user asked to replace it. A model with
non-finite weights is not exported (the module is named).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM

from .errors import PolypruneError
from .fileio import dumps, output_folder
from .masks import save_masks
from .models import DTYPES
from .progress import Progress, ensure
from .recipe import save_recipe

CARD_NAME = "README.md"
CONFIG_NAME = "pruning_config.json"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(report: dict) -> str:
    """A Markdown model card from a run report (see :func:`polyprune.pipeline.run`).

    A report of a pruning gets the pruning table; a report of another change (head removal,
    Lens, slimming) says what was done in ``report["summary"]`` and carries its own section
    (``card_extra`` of :func:`export`). Calibration text is named by file, size and hash only.
    """
    p = report.get("pruning") or {}
    cfg = p.get("config") or {}
    cal = p.get("calibration") or {}
    model = report.get("model") or {}
    pruned = cfg.get("method") in ("magnitude", "wanda", "sparsegpt", "wanda_refined")
    tags = ["polyprune"] + (["pruned", str(cfg.get("method"))] if pruned else list(report.get("tags") or []))
    lines = [
        "---",
        "tags: [" + ", ".join(tags) + "]",
        f"base_model: {model.get('base_model') or model.get('spec', '')}",
        *([f"license: {model['license']}"] if model.get("license") else []),
        "---",
        f"# {model.get('name', 'Model')} — {'pruned' if pruned else 'changed'} with Polyprune",
        "",
    ]
    if report.get("summary"):
        lines += [str(report["summary"]), ""]
    if pruned:
        lines += [
            "This checkpoint was pruned with Polyprune (Wanda-style pruning for multilingual LLMs). Pruned weights are",
            "stored as zeros, so the files are the same size as the dense model's.",
            "",
            "## Pruning",
            "",
            "| setting | value |",
            "|---|---|",
            f"| method | {cfg.get('method')}{' (Wanda, Sun et al. 2024)' if cfg.get('method') == 'wanda' else ''} |",
            f"| sparsity ratio | {cfg.get('sparsity')} |",
            f"| pattern | {cfg.get('pattern')} (comparison group: {'N:M groups' if cfg.get('pattern') != 'unstructured' else 'each output row' if cfg.get('group') == 'row' else 'whole layer'}) |",
            f"| measured sparsity (pruned layers) | {_fmt(p.get('overall_sparsity'))} |",
            f"| skipped modules | {', '.join(cfg.get('skip') or []) or 'none'} |",
            f"| skipped blocks | {', '.join(map(str, cfg.get('skip_blocks') or [])) or 'none'} |",
            f"| seed | {report.get('seed')} |",
        ]
    if cal:
        kind = cal.get("kind")
        if kind == "text":
            data = (f"raw text lines from `{Path(str(cal.get('file'))).name}` ({cal.get('bytes')} bytes, "
                    f"sha256 {str(cal.get('sha256'))[:16]}…)")
        else:
            data = (f"{kind} demonstrations ({cal.get('src')} → {cal.get('tgt')}, direction {cal.get('direction')}, "
                    f"{cal.get('shots')} shots) from `{cal.get('source')}` split {cal.get('split')}")
        lines += [
            f"| calibration data | {data} |",
            f"| calibration languages | {', '.join(sorted({c for c in (cal.get('src'), cal.get('tgt')) if c})) or 'n/a'} |",
            f"| samples | {cal.get('samples')} |",
            f"| calibration length (tokens) | {cal.get('seq_len')} ({cal.get('tokens')} real tokens, {cal.get('truncated')} samples truncated) |",
        ]
    ev = report.get("evaluation") or []
    if ev:
        lines += ["", "## Evaluation", "", "| task | language | metric | dense | pruned | delta |", "|---|---|---|---|---|---|"]
        for r in ev:
            lines.append(f"| {r['task']} | {r['language']} | {r['metric']} | {_fmt(r.get('dense'))} | {_fmt(r.get('pruned'))} | {_fmt(r.get('delta'))} |")
    ms = p.get("module_sparsity") or {}
    if ms:
        lines += ["", "## Measured sparsity per module", "", "| module | sparsity |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in ms.items()]
    if report.get("recipe"):
        lines += ["", "## Reproduce", "", "`recipe.yaml` holds every setting; run it again with",
                  "`polyprune run recipe.yaml --out NEW_FOLDER`.", ""]
    notice = report.get("model", {}).get("notice")
    if notice:
        lines += ["## License", "", notice, ""]
    return "\n".join(lines)


#: Largest logit difference accepted by the reload check, relative to the largest logit, by the
#: model's dtype (float32 reloads exactly; in half precision another attention kernel may round
#: differently).
RELOAD_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@dataclass
class ExportResult:
    """Where an export went and how its reload check came out (largest ``|Δlogit|``, ``None`` when
    not checked)."""

    path: Path
    reload_diff: float | None


def check_finite(model) -> None:
    """Refuse a model whose weights hold NaN or infinity.

    Raises:
        PolypruneError: naming the first parameter that is not finite.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            # in chunks: isfinite makes an |x| copy and two boolean maps (1 GB for Gemma 3's embedding at once)
            flat = p.detach().reshape(-1)
            step = 1 << 22
            if p.is_floating_point() and not all(bool(torch.isfinite(flat[i:i + step]).all())
                                                 for i in range(0, flat.numel(), step)):
                raise PolypruneError(f"The model's weights {name} hold NaN or infinite values, so the export would be broken",
                                     "check the source checkpoint (it may be damaged) and the settings that produced "
                                     "this model; nothing was written")


def export(model, tokenizer, out_dir: str | Path, report: dict, *, source: str | Path | None = None,
           overwrite: bool = False, progress: Progress | None = None, extra_files: dict | None = None,
           card_extra: str = "", recipe=None, masks=None, mask_model_info=None, check: bool = True,
           log: Callable[[str], None] | None = None, replace_hint: str = "pass --overwrite",
           write_more: Callable[[Path], object] | None = None) -> ExportResult:
    """Write a checkpoint folder: weights (safetensors), tokenizer, model card, ``pruning_config.json``,
    ``report.json``, ``recipe.yaml`` and ``masks.safetensors`` (when given), atomically.

    Args:
        model: the causal LM to save (as it is in memory).
        tokenizer: its tokenizer.
        out_dir: target folder (see :func:`polyprune.fileio.check_output` for what may be replaced).
        report: the run report (recipe, model, pruning summary, evaluation rows) for the card, the
            config and ``report.json``; ``report["export"]`` is filled in.
        source: the source model folder, which is never written to.
        extra_files: further files, ``{name: str | bytes}`` (e.g. ``removed_heads.json``).
        card_extra: Markdown appended to the model card (a section of the feature that made the model).
        recipe: a :class:`~polyprune.recipe.Recipe` written as ``recipe.yaml`` (with ``out`` cleared,
            so it replays into a new folder).
        masks: a mask set (``PruneResult`` or records) written as ``masks.safetensors``.
        mask_model_info: the model (or its signature) recorded in the mask file.
        check: reload the written folder and compare its logits with ``model`` before it is moved
            into place (:data:`RELOAD_TOLERANCE`).
        write_more: called with the temporary folder to add further files (e.g. feature magnitudes).

    Returns:
        :class:`ExportResult`.

    Raises:
        PolypruneError: a bad target, non-finite weights, a failed write (disk full, permissions),
            or a reload that differs; in every case nothing is left at the target.
        Cancelled: through ``progress``; nothing is left at the target.
    """
    progress = ensure(progress)
    check_finite(model)
    diff = None
    with output_folder(out_dir, kind="export", sources=[source], overwrite=overwrite, what="export folder",
                       replace_hint=replace_hint, log=log) as tmp:
        out = Path(out_dir).expanduser().resolve()
        progress.update(0, 4, f"Writing weights for {out}")
        if getattr(model, "hf_quantizer", None) is not None:  # de-quantised GGUF: plain weights now
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        except (OSError, RuntimeError) as e:
            raise PolypruneError(f"Export to {out} failed while writing the weights: {e}",
                                 "check free disk space and write permission; nothing was written") from e
        progress.update(1, 4, "Writing model card, recipe and masks")
        _write_common(tmp, report, recipe, masks, mask_model_info, extra_files, write_more)
        if check:
            progress.update(2, 4, "Reloading the export to check it")
            diff, scale = reload_compare(model, tmp, tokenizer)
            dtype = next(model.parameters()).dtype
            tol = RELOAD_TOLERANCE.get(dtype, 1e-2) * max(1.0, scale)
            if not math.isfinite(diff) or diff > tol:
                raise PolypruneError(f"The export does not reload as the model in memory (largest logit difference "
                                     f"{diff:.3g}, tolerance {tol:g})",
                                     "this is unexpected: keep the log and report it; nothing was written")
        report["export"] = {"path": str(out), "reload_max_abs_logit_diff": diff}
        (tmp / CARD_NAME).write_text(model_card(report) + (("\n" + card_extra) if card_extra else ""), encoding="utf-8")
        clean = {k: v for k, v in report.items() if not k.startswith("_")}
        (tmp / CONFIG_NAME).write_text(dumps((report.get("recipe") or {}) | {"report": {k: v for k, v in clean.items()
                                                                                       if k != "recipe"}}), encoding="utf-8")
        (tmp / "report.json").write_text(dumps(clean), encoding="utf-8")
        progress.update(3, 4, "Moving into place")
    progress.update(4, 4, f"Exported to {out}")
    return ExportResult(out, diff)


def _write_common(tmp: Path, report: dict, recipe, masks, mask_model_info, extra_files, write_more) -> None:
    for name, body in (extra_files or {}).items():
        (tmp / name).write_bytes(body if isinstance(body, bytes) else str(body).encode("utf-8"))
    if masks is not None:
        save_masks(masks, tmp / "masks.safetensors", mask_model_info)
        report["masks"] = "masks.safetensors"
    if recipe is not None:
        save_recipe(replace(recipe, out=None, overwrite=False), tmp / "recipe.yaml")
    if write_more is not None:
        write_more(tmp)


def write_report_folder(out_dir: str | Path, report: dict, *, recipe=None, masks=None, mask_model_info=None,
                        source: str | Path | None = None, overwrite: bool = False,
                        log: Callable[[str], None] | None = None,
                        write_more: Callable[[Path], object] | None = None) -> Path:
    """A run's outputs without the weights (``--no-export``): ``report.json``, ``recipe.yaml`` and
    ``masks.safetensors``, under the same rules as :func:`export`."""
    with output_folder(out_dir, kind="report", sources=[source], overwrite=overwrite, what="output folder",
                       log=log) as tmp:
        _write_common(tmp, report, recipe, masks, mask_model_info, None, write_more)
        (tmp / "report.json").write_text(dumps({k: v for k, v in report.items() if not k.startswith("_")}),
                                         encoding="utf-8")
    return Path(out_dir).expanduser().resolve()


CHECK_TEXT = "Polyprune checks the export: Bonjour, habari, 你好."


@torch.inference_mode()
def reload_compare(model, out_dir: str | Path, tokenizer, text: str = CHECK_TEXT) -> tuple[float, float]:
    """Read the export back and return ``(largest absolute logit difference against model, largest
    absolute logit)`` on ``text``.

    The export is read one block at a time (:func:`polyprune.evaluation.streamed.streamed_logits`:
    its config through ``AutoConfig``, a skeleton of the stock model class, every tensor matched by
    name), so the check needs one block's memory instead of a second copy of the model (issue 15).
    Checkpoints whose tensor names the streamed reader cannot match are reloaded whole with stock
    ``AutoModelForCausalLM.from_pretrained`` instead."""
    from .evaluation.streamed import streamed_logits  # here: streaming writes its checkpoints through this module

    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    names = {v: k for k, v in DTYPES.items()}
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if dtype in names:
        try:
            b = streamed_logits(out_dir, ids[0], device=str(dev), dtype=names[dtype])
        except PolypruneError:
            pass  # names the streamed reader does not know: reload whole below
        else:
            a = model(input_ids=ids.to(dev)).logits.float()[0].cpu()
            return float((a - b).abs().max()), float(a.abs().max())
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=dtype).to(dev).eval()
    ids = ids.to(dev)
    a = model(input_ids=ids).logits.float()
    b = reloaded(input_ids=ids).logits.float()
    del reloaded
    return float((a - b).abs().max()), float(a.abs().max())


def reload_check(model, out_dir: str | Path, tokenizer, text: str = CHECK_TEXT) -> float:
    """The largest absolute logit difference between ``model`` and its reloaded export on ``text``
    (0.0 means identical); see :func:`reload_compare`."""
    return reload_compare(model, out_dir, tokenizer, text)[0]
