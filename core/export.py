"""Exporting a pruned model: safetensors + tokenizer + model card + ``pruning_config.json``.

The export is atomic: everything is written into a temporary folder next to the target, which is
renamed into place only when complete, so a failed write never leaves a half-written folder. The
source checkpoint is never written to, and an existing folder is replaced only when asked.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import PolypruneError
from .progress import Progress, ensure

CARD_NAME = "README.md"
CONFIG_NAME = "pruning_config.json"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(report: dict) -> str:
    """A Markdown model card from a run report (see :func:`polyprune.pipeline.run`)."""
    p = report.get("pruning", {})
    cfg = p.get("config", {})
    cal = p.get("calibration") or {}
    lines = [
        "---",
        "tags: [pruned, polyprune, " + str(cfg.get("method", "")) + "]",
        f"base_model: {report.get('model', {}).get('spec', '')}",
        "---",
        f"# {report.get('model', {}).get('name', 'Model')} — pruned with Polyprune",
        "",
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
            data = f"raw text lines from `{cal.get('file')}`"
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
    lines += ["", "## Reproduce", "", "`pruning_config.json` holds every setting; run it again with",
              "`polyprune run pruning_config.json`.", ""]
    return "\n".join(lines)


def check_target(out_dir: str | Path, source: str | Path | None, overwrite: bool = False) -> Path:
    """Validate an export folder before any work is done.

    Raises:
        PolypruneError: target equals (or lies inside) the source model folder, or exists and
            ``overwrite`` is false.
    """
    out = Path(out_dir).expanduser().resolve()
    if source is not None:
        src = Path(source).expanduser().resolve()
        if out == src or src in out.parents or out in src.parents:
            raise PolypruneError(f"The export folder {out} would overwrite the source model {src}",
                                 "choose a new folder for the pruned model; the source checkpoint is never modified")
    if out.exists() and not overwrite:
        raise PolypruneError(f"The export folder {out} already exists",
                             "choose a new folder, or pass --overwrite to replace it")
    return out


def export(model, tokenizer, out_dir: str | Path, report: dict, *, source: str | Path | None = None,
           overwrite: bool = False, progress: Progress | None = None, extra_files: dict | None = None,
           card_extra: str = "") -> Path:
    """Save the model (safetensors), tokenizer, model card and ``pruning_config.json`` atomically.

    Args:
        model: the pruned causal LM.
        tokenizer: its tokenizer.
        out_dir: target folder (must not exist unless ``overwrite``).
        report: the run report (recipe, pruning summary, evaluation rows) for the card and config.
        source: the source model folder, which is never written to.
        extra_files: further files of the export, ``{name: str | bytes}`` (e.g. ``removed_heads.json``).
        card_extra: Markdown appended to the model card (a section of the feature that made the model).

    Raises:
        PolypruneError: a bad target (see :func:`check_target`) or a failed write (disk full,
            permissions); in that case nothing is left behind.
    """
    progress = ensure(progress)
    out = check_target(out_dir, source, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        progress.update(0, 3, f"Writing weights to {out}")
        if getattr(model, "hf_quantizer", None) is not None:  # de-quantised GGUF: plain weights now
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        progress.update(1, 3, "Writing model card")
        (tmp / CARD_NAME).write_text(model_card(report) + (("\n" + card_extra) if card_extra else ""), encoding="utf-8")
        for name, body in (extra_files or {}).items():
            (tmp / name).write_bytes(body if isinstance(body, bytes) else str(body).encode("utf-8"))
        (tmp / CONFIG_NAME).write_text(json.dumps(report.get("recipe", {}) | {"report": _jsonable(report)},
                                                  indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        progress.update(2, 3, "Moving into place")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except PolypruneError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PolypruneError(f"Export to {out} failed: {e}", "check free disk space and write permission; nothing was written") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress.update(3, 3, f"Exported to {out}")
    return out


def _jsonable(report: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in report.items() if k != "recipe"}, default=str))


@torch.inference_mode()
def reload_check(model, out_dir: str | Path, tokenizer, text: str = "Polyprune checks the export: Bonjour, habari, 你好.") -> float:
    """Reload the export with ``AutoModelForCausalLM.from_pretrained`` and return the largest
    absolute logit difference against ``model`` on ``text`` (0.0 means identical)."""
    from transformers import AutoModelForCausalLM

    dev = next(model.parameters()).device
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=next(model.parameters()).dtype).to(dev).eval()
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(dev)
    a = model(input_ids=ids).logits.float()
    b = reloaded(input_ids=ids).logits.float()
    del reloaded
    return float((a - b).abs().max())
