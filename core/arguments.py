"""The command line's shared options: model, calibration and evaluation arguments, and the
recipe they make. Every command module (``polyprune.cli``, ``heads.cli``, ``subspaces.cli``,
``slimming.cli``) builds its parsers from these, so an option means the same everywhere."""
from __future__ import annotations

import argparse

from .errors import PolypruneError
from .recipe import DemoConfig, EvalConfig, FeatureConfig, PruneConfig, Recipe

_D, _P, _E = DemoConfig(), PruneConfig(), EvalConfig()


def split_list(text: str | None) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not a positive number (give 1 or more)")
    return v


def block_list(text: str | None) -> list[int]:
    """``"0, 3-5"`` -> ``[0, 3, 4, 5]``.

    Raises:
        PolypruneError: not a list of block numbers.
    """
    out: list[int] = []
    for part in split_list((text or "").replace(";", ",")):
        try:
            if "-" in part[1:]:
                a, b = (int(x) for x in part.split("-", 1))
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise PolypruneError(f"'{part}' is not a block number",
                                 "list block numbers separated by commas, with ranges like 3-5 (0 is the first block)") from None
    return sorted(set(out))


def add_model_args(p: argparse.ArgumentParser, *, dtype: str | None = "float32", dtype_flag: str = "--dtype",
                   dtype_help: str | None = None, device: str | None = None) -> None:
    """The model options every command shares (``--model``, ``--device``, the precision,
    ``--trust-remote-code``); ``dtype=None`` means bfloat16 on a GPU, float32 on the CPU (see
    :func:`load_from_args`). Commands in other packages (heads, subspaces, slimming) use it too."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="demo", help="'demo', a local Hugging Face folder, a .gguf file or a hub id")
    g.add_argument("--device", default=device,
                   help="cpu, cuda[:N] or mps" + ("" if device else " (default: cuda if available)"))
    g.add_argument(dtype_flag, default=dtype, choices=["float32", "bfloat16", "float16"],
                   help=dtype_help or ("default: bfloat16 on a GPU, float32 on the CPU" if dtype is None else None))
    g.add_argument("--trust-remote-code", action="store_true", help="run model code shipped with the checkpoint")


def load_from_args(a, progress=None, dtype: str | None = None):
    """Load the model that :func:`add_model_args` options name (``dtype`` overrides ``a.dtype``).

    Raises:
        PolypruneError: see :func:`polyprune.models.load_model`.
    """
    from .models import default_device, load_model

    device = a.device or default_device()
    dtype = dtype or a.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return load_model(a.model, device, dtype, a.trust_remote_code, progress)


def add_demo_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration data (translation demonstrations)")
    g.add_argument("--demos", default=_D.source, help="builtin, flores:DIR, hub[:DATASET] or file:PATH")
    g.add_argument("--src", default=_D.src, help="source language (FLORES code, name or 2-letter code)")
    g.add_argument("--tgt", default=_D.tgt, help="target language")
    g.add_argument("--direction", default=_D.direction, choices=["forward", "reverse", "both"])
    g.add_argument("--shots", type=int, default=_D.shots, help="sentence pairs per sample")
    g.add_argument("--samples", type=int, default=_D.samples, help="number of calibration samples")
    g.add_argument("--seq-len", type=int, default=_D.seq_len, help="calibration length in tokens")
    g.add_argument("--template", default=None, help="per-pair template with {src_name} {src} {tgt_name} {tgt} {eos}")
    g.add_argument("--monolingual", action="store_true", help="source side only")
    g.add_argument("--split", default=_D.split, help="FLORES split for demonstrations")
    g.add_argument("--shuffle", action="store_true", help="draw pairs in a seeded random order")
    g.add_argument("--src-column", default=None)
    g.add_argument("--tgt-column", default=None)
    g.add_argument("--calibration-text", default=None, metavar="FILE",
                   help="use the first --samples non-empty lines of FILE verbatim instead of demonstrations")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-ppl", default=None, metavar="LANGS", help="FLORES devtest perplexity, e.g. eng_Latn,fra_Latn")
    g.add_argument("--eval-xnli", default=None, metavar="LANGS", help="zero-shot XNLI, e.g. en,fr,sw")
    g.add_argument("--limit", type=positive_int, default=None, help="first N examples per language (zero-shot tasks)")
    g.add_argument("--ppl-limit", type=positive_int, default=None,
                   help="first N FLORES sentences per language (default: all)")
    g.add_argument("--data", default=None, help="folder with flores200/ and xnli/ (default: $POLYPRUNE_DATA or ../shared/data)")
    g.add_argument("--eval-batch-size", type=positive_int, default=_E.batch_size)
    g.add_argument("--no-dense-eval", action="store_true", help="skip evaluating the dense model first")


def recipe_from_args(a) -> Recipe:
    """The :class:`Recipe` of ``prune``/``inspect`` arguments (defaults from the dataclasses)."""
    from .models import default_device

    demos = DemoConfig(source=a.demos, src=a.src, tgt=a.tgt, direction=a.direction, shots=a.shots,
                       samples=a.samples, seq_len=a.seq_len, template=a.template or _D.template,
                       monolingual=a.monolingual, split=a.split, shuffle=a.shuffle,
                       seed=getattr(a, "seed", 0), src_column=a.src_column, tgt_column=a.tgt_column)
    pruning = PruneConfig(method=getattr(a, "method", _P.method), sparsity=getattr(a, "sparsity", _P.sparsity),
                          pattern=getattr(a, "pattern", _P.pattern), group=getattr(a, "group", _P.group),
                          skip=split_list(getattr(a, "skip", None)),
                          skip_blocks=block_list(getattr(a, "skip_blocks", None)),
                          batch_size=getattr(a, "batch_size", _P.batch_size), damping=getattr(a, "damping", _P.damping),
                          blocksize=getattr(a, "blocksize", _P.blocksize),
                          layerwise=getattr(a, "layerwise", _P.layerwise),
                          owl_m=getattr(a, "owl_m", _P.owl_m), owl_lambda=getattr(a, "owl_lambda", _P.owl_lambda))
    ev = EvalConfig(ppl=split_list(getattr(a, "eval_ppl", None)), xnli=split_list(getattr(a, "eval_xnli", None)),
                    limit=getattr(a, "limit", None), ppl_limit=getattr(a, "ppl_limit", None),
                    data=getattr(a, "data", None), batch_size=getattr(a, "eval_batch_size", _E.batch_size),
                    dense=not getattr(a, "no_dense_eval", False))
    return Recipe(model=a.model, device=a.device or default_device(), dtype=a.dtype,
                  trust_remote_code=a.trust_remote_code, seed=getattr(a, "seed", 0), demos=demos,
                  calibration_text=a.calibration_text, pruning=pruning,
                  features=FeatureConfig(enabled=getattr(a, "features", False)), evaluation=ev,
                  out=getattr(a, "out", None), overwrite=getattr(a, "overwrite", False),
                  contrast={"kind": "text", "file": a.contrast_text} if getattr(a, "contrast_text", None) else None,
                  max_memory=getattr(a, "max_memory", None))
