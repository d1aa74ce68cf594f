"""Block streaming: prune (and measure perplexity of) a model that does not fit in memory.

llm-compressor's sequential onloading, for Polyprune's engine: the model is built as a *skeleton*
whose parameters live on the ``meta`` device (no memory), and :class:`BlockStream` — the
:class:`~polyprune.pruning.sequential.BlockSource` of :func:`polyprune.pruning.sequential.run` —
gives it real weights one block at a time:

* ``capture``: the embedding rows of the calibration tokens only (read row by row from the
  checkpoint; never the whole embedding matrix), the other pre-block modules (positional
  embeddings, embedding norms) and block 0 are read; :func:`~polyprune.pruning.sequential.capture`
  records block 0's inputs and every block's call arguments; the hidden states go to an
  :class:`Activations` store (CPU memory, or files in a temporary folder when the budget says so);
* ``open(i)``: block ``i``'s tensors are read from the safetensors shards
  (:class:`~polyprune.checkpoint.CheckpointReader`) onto the compute device, cast to the model dtype;
* ``close(i)``: the (pruned) block is written to its output shard
  (:class:`~polyprune.checkpoint.ShardWriter`) and its tensors go back to ``meta``.

Everything else is the in-memory engine unchanged: :func:`polyprune.pruning.prune` with
``source=stream`` runs the same method modules (``attach``/``prune_block``), OWL's dense pass, the
same :func:`~polyprune.pruning.sequential.run_block`, on the same batches in the same order and in
the same dtype, so masks and weights equal those of the in-memory run bit for bit (the tests
check this on five model families). Records keep masks only
(:meth:`~polyprune.pruning.ModuleRecord.drop_values`): the dense weights stay in the source.

Memory is planned before anything is read (:func:`plan_memory`): the largest block, the method's
statistics and working buffers, the calibration activations and block arguments, one batch's
forward pass and the packed masks, against ``max_memory``; activations move to disk when only that
makes the plan fit, and a budget that cannot be met is refused with what it would take. Free disk
space for the output (and spilled activations) is checked before anything is written. On CUDA the
blocks and one batch live on the GPU, in the model's dtype (statistics in float32 as always), and
the activations stay in CPU memory (or on disk).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..calibration import CalibrationSet
from ..checkpoint import NAMES, CheckpointReader, Lazy, ShardWriter, read_header
from ..errors import PolypruneError
from ..fileio import check_free_space, check_output, dumps, output_folder
from ..memory import MemoryPlan, format_size, parse_size, peak_rss_now, release_memory, rss_bytes
from ..models import DTYPES, base_model, find_blocks, prunable_linears, resolve_local, weight_matrix
from ..progress import Progress, ensure
from ..recipe import PruneConfig
from . import prune as prune_model
from .records import PruneResult
from .sequential import BlockInputs, capture as capture_inputs


# --------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------
class Activations:
    """Hidden states ``[B, L, d]`` per batch, kept off the compute device: in CPU memory, or in
    files of ``folder`` (spilled to disk). Reading one (``acts[b]``, iteration) gives it on
    ``device``; assigning one stores it. Stands in for the list ``BlockInputs.hidden``.
    """

    def __init__(self, device: str | torch.device = "cpu", folder: Path | None = None):
        self.device = torch.device(device)
        self.folder = Path(folder) if folder is not None else None
        self.items: list = []

    def __len__(self) -> int:
        return len(self.items)

    def append(self, t: torch.Tensor) -> None:
        self.items.append(None)
        self[len(self.items) - 1] = t

    def __setitem__(self, b: int, t: torch.Tensor) -> None:
        t = t.detach()
        if self.folder is None:
            self.items[b] = t if t.device.type == "cpu" else t.to("cpu")
            return
        path = self.folder / f"{id(self):x}-{b}.bin"
        t = t.to("cpu").contiguous()
        with open(path, "wb") as fh:
            fh.write(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        self.items[b] = (path, tuple(t.shape), t.dtype)

    def __getitem__(self, b: int) -> torch.Tensor:
        item = self.items[b]
        if isinstance(item, torch.Tensor):
            return item if self.device.type == "cpu" else item.to(self.device)
        path, shape, dtype = item
        t = torch.empty(shape, dtype=dtype)
        if t.numel():
            with open(path, "rb", buffering=0) as fh:
                view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                got = 0
                while got < len(view):
                    got += fh.readinto(view[got:])
        return t if self.device.type == "cpu" else t.to(self.device)

    def __iter__(self):
        for b in range(len(self.items)):
            yield self[b]

    @property
    def nbytes(self) -> int:
        total = 0
        for item in self.items:
            if isinstance(item, torch.Tensor):
                total += item.numel() * item.element_size()
        return total


# --------------------------------------------------------------------------------------------
# the skeleton and its block source
# --------------------------------------------------------------------------------------------
def build_skeleton(config, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM of ``config`` with every parameter on ``meta`` (no memory, no initialisation
    work) and its buffers (rotary tables, embedding scales) real, in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


class CompactEmbedding(nn.Module):
    """The model's input embedding with only the rows of ``ids`` (sorted, unique) in memory: token
    ``t`` is looked up as row ``searchsorted(ids, t)`` of the same module, so scales and any other
    arithmetic of the embedding module apply unchanged."""

    def __init__(self, inner: nn.Module, ids: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.ids = ids
        self.saved = (inner._parameters["weight"], getattr(inner, "padding_idx", None))
        inner._parameters["weight"] = nn.Parameter(rows, requires_grad=False)
        if hasattr(inner, "padding_idx"):
            inner.padding_idx = None  # an index into the full matrix; it only affects gradients

    def forward(self, input_ids: torch.Tensor, *args, **kwargs):
        return self.inner(torch.searchsorted(self.ids, input_ids.to(self.ids.device).contiguous()), *args, **kwargs)

    def release(self) -> nn.Module:
        """Put the full (meta) weight back into the wrapped module and return it."""
        self.inner._parameters["weight"], pad = self.saved
        if hasattr(self.inner, "padding_idx"):
            self.inner.padding_idx = pad
        return self.inner


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    path, _, leaf = name.rpartition(".")
    mod = model.get_submodule(path) if path else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        mod._buffers[leaf] = value


def _get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    path, _, leaf = name.rpartition(".")
    mod = model.get_submodule(path) if path else model
    t = mod._parameters.get(leaf)
    return (t if t is not None else mod._buffers[leaf]).detach()


class BlockStream:
    """A checkpoint's causal LM with one block in memory at a time (see the module docstring).

    Args:
        folder: a local Hugging Face folder with safetensors weights.
        device: where blocks run (``cpu``, ``cuda[:N]``, ``mps``).
        dtype: the compute dtype (``float32``, ``bfloat16``, ``float16``); tensors are cast on read.
        trust_remote_code: as :func:`polyprune.models.load_model`.
        spill: a folder for activations that do not fit in memory (``None``: keep them in memory).

    Attributes:
        model: the skeleton (meta parameters); pass it to :func:`polyprune.pruning.prune` with
            ``source=self``.
        writer: a :class:`~polyprune.checkpoint.ShardWriter`; when set, ``close(i)`` writes block
            ``i`` to shard ``i + 1`` (shard ``n_blocks + 1`` holds everything else).

    Raises:
        PolypruneError: no config or no safetensors weights, or tensor names the skeleton cannot
            be matched with.
    """

    def __init__(self, folder: str | Path, device: str = "cpu", dtype: str = "float32",
                 trust_remote_code: bool = False, spill: Path | None = None):
        from transformers import AutoConfig

        self.folder = Path(folder)
        self.reader = CheckpointReader(self.folder)
        try:
            self.config = AutoConfig.from_pretrained(str(self.folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise PolypruneError(f"Could not read the model config in {self.folder}: {str(e).splitlines()[0]}",
                                 "check that config.json is a valid Hugging Face config") from None
        if dtype not in DTYPES:
            raise PolypruneError(f"Unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.device = torch.device(device)
        self.trust_remote_code = trust_remote_code
        self.model = build_skeleton(self.config, self.dtype, trust_remote_code)
        self.prefix, self.blocks = find_blocks(self.model)
        self.spill = spill
        self.writer: ShardWriter | None = None
        self._open: set[int] = set()
        self._opened_at: dict[int, float] = {}
        #: Seconds from reading to freeing each block, in the order blocks were closed.
        self.block_seconds: list[float] = []
        self._tokenizer = None
        self._map_names()
        for mod in self.model.modules():  # real buffers (rotary tables, scales) go to the device once
            for k, b in list(mod._buffers.items()):
                if b is not None and b.device.type != "meta" and b.device != self.device:
                    mod._buffers[k] = b.to(self.device)

    # -- names ---------------------------------------------------------------------------
    def _map_names(self) -> None:
        """``self.names``: model tensor name -> checkpoint name, for every parameter and persistent
        buffer found in the checkpoint (with or without the base-model prefix; tied parameters
        resolve to the tensor they share)."""
        state = self.model.state_dict(keep_vars=True)
        pre = getattr(self.model, "base_model_prefix", "") or ""
        names: dict[str, str] = {}
        for k in state:
            cands = [k]
            if pre and k.startswith(pre + "."):
                cands.append(k[len(pre) + 1:])
            elif pre:
                cands.append(f"{pre}.{k}")
            hit = next((c for c in cands if c in self.reader), None)
            if hit is not None:
                names[k] = hit
        by_obj: dict[int, str] = {}
        for k, v in state.items():
            if k in names:
                by_obj.setdefault(id(v), names[k])
        params = {k for k, _ in self.model.named_parameters(remove_duplicate=False)}
        for k, v in state.items():
            if k not in names and id(v) in by_obj:
                names[k] = by_obj[id(v)]  # tied (e.g. the LM head and the embedding)
        self.names = names
        self.block_keys: list[list[str]] = []
        for i in range(len(self.blocks)):
            p = f"{self.prefix}.{i}."
            keys = [k for k in state if k.startswith(p)]
            missing = [k for k in keys if k in params and k not in names]
            if missing:
                raise PolypruneError(f"Block streaming cannot find {missing[0]} in the checkpoint {self.folder} "
                                     f"({type(self.model).__name__} stores its tensors under other names)",
                                     "run without --max-memory (the model is then loaded whole)")
            self.block_keys.append([k for k in keys if k in names])
        in_blocks = {k for ks in self.block_keys for k in ks}
        base = base_model(self.model)
        base_path = next((n for n, m in self.model.named_modules() if m is base), "")
        emb = self.model.get_input_embeddings()
        self.embedding_key = next(k for k, v in state.items() if v is emb.weight)
        if self.embedding_key not in names:
            raise PolypruneError(f"Block streaming cannot find the input embedding {self.embedding_key} in {self.folder}",
                                 "run without --max-memory (the model is then loaded whole)")
        bp = base_path + "." if base_path else ""
        self.pre_keys = [k for k in state if k.startswith(bp) and k not in in_blocks and k != self.embedding_key
                         and k in names]
        self.block_ckpt = [sorted({names[k] for k in ks}) for ks in self.block_keys]
        used = {c for cs in self.block_ckpt for c in cs}
        self.rest_ckpt = [c for c in self.reader.tensors if c not in used]

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (a pad token set as :func:`polyprune.models.load_model` does)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            try:
                tok = AutoTokenizer.from_pretrained(str(self.folder), trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as e:
                raise PolypruneError(f"Could not load the tokenizer in {self.folder}: {e}",
                                     "save the tokenizer in the model folder (tokenizer.json or tokenizer.model)") from None
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            self._tokenizer = tok
        return self._tokenizer

    # -- tensors -------------------------------------------------------------------------
    def _load(self, key: str) -> None:
        t = self.reader.read(self.names[key], self.dtype, self.device)
        _set_tensor(self.model, key, t)

    def _unload(self, key: str) -> None:
        t = _get_tensor(self.model, key)
        _set_tensor(self.model, key, torch.empty(t.shape, dtype=t.dtype, device="meta"))

    def block_bytes(self, i: int) -> int:
        """Bytes of block ``i``'s tensors in the compute dtype."""
        return self.reader.nbytes(self.block_ckpt[i], self.dtype)

    # -- BlockSource ---------------------------------------------------------------------
    def capture(self, model: nn.Module, batches: list) -> BlockInputs:
        """Block 0's inputs and every block's call arguments (:func:`~polyprune.pruning.sequential.capture`)
        with only the calibration tokens' embedding rows in memory; hidden states in an
        :class:`Activations` store."""
        emb = self.model.get_input_embeddings()
        ids = torch.unique(torch.cat([b[0].reshape(-1) for b in batches]))
        rows = self.reader.read_rows(self.names[self.embedding_key], ids, self.dtype).to(self.device)
        for k in self.pre_keys:
            self._load(k)
        compact = CompactEmbedding(emb, ids.to(self.device), rows)
        self.model.set_input_embeddings(compact)
        self.open(0)
        try:
            inputs = capture_inputs(self.model, batches, device=self.device)
        finally:
            self.model.set_input_embeddings(compact.release())
            for k in self.pre_keys:
                self._unload(k)
            del compact, rows
        store = Activations(self.device, self.spill)
        for h in inputs.hidden:
            store.append(h)
        inputs.hidden = store  # type: ignore[assignment]
        release_memory(str(self.device))
        return inputs

    def open(self, i: int) -> nn.Module:
        """Read block ``i`` onto the device (idempotent) and return it."""
        if i not in self._open:
            self._opened_at[i] = time.perf_counter()
            for k in self.block_keys[i]:
                self._load(k)
            self._open.add(i)
        return self.blocks[i]

    def close(self, i: int) -> None:
        """Write block ``i`` to its shard (when writing) and free its tensors."""
        if self.writer is not None:
            tensors = {}
            for k in self.block_keys[i]:
                c = self.names[k]
                if c not in tensors:
                    tensors[c] = _get_tensor(self.model, k).to("cpu")
            self.writer.write(i + 1, dict(sorted(tensors.items())))
            del tensors
        for k in self.block_keys[i]:
            self._unload(k)
        self._open.discard(i)
        release_memory(str(self.device))
        if i in self._opened_at:
            self.block_seconds.append(time.perf_counter() - self._opened_at.pop(i))

    # -- output --------------------------------------------------------------------------
    def write_rest(self) -> None:
        """Copy every tensor outside the blocks (embeddings, final norm, LM head, ...) to the last
        shard, cast to the compute dtype, piece by piece."""
        n = len(self.blocks) + 1
        lazy = {}
        for c in sorted(self.rest_ckpt):
            info = self.reader.tensors[c]
            dt = self.dtype if info.torch_dtype.is_floating_point else info.torch_dtype
            lazy[c] = Lazy(NAMES[dt], info.shape, lambda fh, c=c: self.reader.copy_to(c, fh, self.dtype))
        self.writer.write(n, lazy)

    def output_bytes(self) -> int:
        """Bytes of the output checkpoint (every tensor in the compute dtype)."""
        return self.reader.nbytes(None, self.dtype)


def open_stream(spec: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False,
                progress: Progress | None = None) -> BlockStream:
    """A :class:`BlockStream` for a model spec (``demo``, a local folder, a ``.gguf`` file converted
    once; see :mod:`polyprune.models`). Reads only the config and the shard headers.

    Raises:
        PolypruneError: a hub id (download it first), no safetensors weights, unknown names.
    """
    folder = resolve_local(spec, progress)
    if folder is None:
        raise PolypruneError(f"Block streaming reads local checkpoints, and {spec!r} is a hub id",
                             "download the model to a folder first (e.g. huggingface-cli download) and give that folder")
    return BlockStream(folder, device, dtype, trust_remote_code)


# --------------------------------------------------------------------------------------------
# memory plan
# --------------------------------------------------------------------------------------------
def _elsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def plan_memory(stream: BlockStream, cfg: PruneConfig | None, sets: list[CalibrationSet], budget: int | None,
                batch_size: int = 8, what: str = "pruning") -> MemoryPlan:
    """What a streamed run keeps in memory at its peak (see the module docstring), and where the
    activations go: in memory when that fits ``budget``, else on disk.

    The parts (bytes): the largest block in the compute dtype; the method's statistics over one
    block (Wanda: ``4·in`` per linear; SparseGPT: ``4·in²`` per linear, an upper bound since
    q/k/v share one) and the working buffers of the largest linear (two float32 score matrices,
    :data:`polyprune.pruning.masking.SELECT_BYTES_PER_WEIGHT` per weight of a row chunk, the mask
    and the removed values; SparseGPT: three float32 copies of the weight and three ``in²``
    matrices); the calibration activations ``N·L·d`` per set (or two batches when on disk); one
    batch's forward pass (input, output, MLP ``B·L·I·4``, attention scores and their softmax
    ``2·B·H·L²`` float32; measured on the 3.3 GB Llama: 838 MB above the process's baseline against
    a plan of 752 MB before these last two terms were raised, 832 MB after);
    the block call arguments (position embeddings ``2·N·L·head_dim`` float32 and masks ``N·L²``
    per layer type); the embedding rows of the calibration tokens; the packed masks (1 bit per
    prunable weight).

    Raises:
        PolypruneError: when even with activations on disk the plan exceeds ``budget`` (the
            message says what it would take).
    """
    from .masking import SELECT_BYTES_PER_WEIGHT, SELECT_CHUNK_BYTES

    cfgm = stream.config
    text = cfgm.get_text_config() if hasattr(cfgm, "get_text_config") else cfgm
    esz = _elsize(stream.dtype)
    d = int(stream.model.get_input_embeddings().weight.shape[1])
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 1)
    head_dim = int(getattr(text, "head_dim", 0) or d // heads)
    lin = [{k: weight_matrix(m).shape for k, m in prunable_linears(b).items()} for b in stream.blocks]
    inter = max(max(max(s) for s in ls.values()) for ls in lin if ls)
    layer_types = len(set(getattr(text, "layer_types", None) or ["x"]))
    eager = getattr(cfgm, "_attn_implementation", "eager") == "eager"
    parts: dict[str, int] = {}
    parts["largest block"] = max(stream.block_bytes(i) for i in range(len(stream.blocks)))
    method = cfg.method if cfg is not None else None
    rows, cols = max((s[0] * s[1], tuple(s)) for ls in lin for s in ls.values())[1]
    if method == "sparsegpt":
        parts["statistics (Hessians)"] = max(sum(4 * s[1] ** 2 for s in ls.values()) for ls in lin)
        parts["SparseGPT working buffers"] = 3 * rows * cols * 4 * 3 + 3 * cols * cols * 4 + rows * cols
    elif method is not None:
        parts["statistics"] = max(sum(4 * s[1] for s in ls.values()) for ls in lin) * max(len(sets), 1)
        parts["scores and mask selection"] = (2 * 4 * rows * cols + min(SELECT_CHUNK_BYTES, rows * cols * SELECT_BYTES_PER_WEIGHT)
                                              + rows * cols * (1 + esz))
    n_tok = sum(len(s) * int(s.input_ids.shape[1]) for s in sets)
    L = max((int(s.input_ids.shape[1]) for s in sets), default=1)
    B = min(batch_size, max((len(s) for s in sets), default=1))
    acts = n_tok * d * esz
    parts["block call arguments"] = sum(len(s) * int(s.input_ids.shape[1]) for s in sets) * (
        2 * head_dim * 4 + L * (esz if eager else 1)) * layer_types
    parts["one batch's forward pass"] = B * L * (2 * d + 4 * inter) * esz + 2 * B * heads * L * L * 4
    parts["embedding rows"] = min(n_tok, int(stream.reader.tensors[stream.names[stream.embedding_key]].shape[0])) * d * esz
    if cfg is not None:
        parts["masks (1 bit per weight)"] = sum(s[0] * s[1] for ls in lin for s in ls.values()) // 8
    plan = MemoryPlan(dict(parts, **{"calibration activations": acts}), budget)
    two = 2 * B * L * d * esz
    if plan.fits or two >= acts:
        plan.check(f"{what} {stream.folder.name} by streaming one block at a time")
        return plan
    disk = MemoryPlan(dict(parts, **{"calibration activations (2 batches; the rest on disk)": two}), budget,
                      activations_on_disk=True, disk_bytes=acts)
    disk.notes.append(f"the calibration activations ({format_size(acts)}) do not fit the budget with the rest "
                      f"({plan.describe()}): they are kept on disk")
    disk.check(f"{what} {stream.folder.name} by streaming one block at a time")
    return disk


# --------------------------------------------------------------------------------------------
# streamed pruning into an output folder
# --------------------------------------------------------------------------------------------
@dataclass
class StreamedPrune:
    """Outcome of :func:`prune_streamed`: the pruning result (masks only), the output folder, the
    memory plan and what was measured (``peak_rss_bytes``: the process's peak resident memory so
    far, ``VmHWM``; ``baseline_rss_bytes``: its resident memory when the call started — Python,
    torch, transformers, tokenizer and calibration set; ``block_seconds`` per block)."""

    result: PruneResult
    path: Path
    plan: MemoryPlan
    peak_rss_bytes: int
    baseline_rss_bytes: int
    block_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def memory_report(self) -> dict:
        return self.plan.to_dict() | {"peak_rss_bytes": self.peak_rss_bytes,
                                      "baseline_rss_bytes": self.baseline_rss_bytes,
                                      "peak_above_baseline_bytes": self.peak_rss_bytes - self.baseline_rss_bytes,
                                      "block_seconds": self.block_seconds, "seconds": self.seconds}


def prune_streamed(stream: BlockStream, cfg: PruneConfig, out: str | Path, *, calibration: CalibrationSet | None,
                   contrast: CalibrationSet | None = None, max_memory=None, overwrite: bool = False,
                   progress: Progress | None = None, log: Callable[[str], None] | None = None,
                   report: dict | None = None, write_more: Callable[[Path], object] | None = None,
                   outlier_ratios: list | None = None) -> StreamedPrune:
    """Prune the checkpoint of ``stream`` block by block into the checkpoint folder ``out``.

    The output folder is what :func:`polyprune.export.export` writes (safetensors shards with
    their index, config, tokenizer, ``masks.safetensors``, ``report.json``, ``pruning_config.json``,
    model card), assembled in a temporary folder and moved into place last; it loads with stock
    ``from_pretrained``. Before anything is read: settings, the memory plan against
    ``max_memory``, the output path and the free disk space are checked.

    Args:
        stream: the model (:func:`open_stream`).
        cfg: pruning settings (every method, OWL, N:M, skips).
        out: the output folder (never the source; replaced only with ``overwrite``).
        calibration, contrast: as :func:`polyprune.pruning.prune`.
        max_memory: the budget (``"4GB"``, bytes, or ``None`` for no budget).
        report: the run report to write (``pruning`` and ``memory`` are filled in).
        write_more: called with the temporary folder to add files.
        outlier_ratios: precomputed OWL ratios (else OWL runs its dense streamed pass first).

    Raises:
        PolypruneError: bad settings, a budget that cannot be met, an output that may not be
            written, too little disk space; nothing is left at ``out``.
        Cancelled: through ``progress``; nothing is left at ``out``, the source is untouched.
    """
    progress = ensure(progress)
    log = log or (lambda m: None)
    t0 = time.perf_counter()
    cfg.validate(len(stream.blocks))
    budget = parse_size(max_memory) if max_memory is not None else None
    sets = [s for s in (calibration, contrast) if s is not None and cfg.needs_calibration]
    plan = plan_memory(stream, cfg, sets, budget, cfg.batch_size)
    plan.check(f"pruning {stream.folder.name} by streaming one block at a time")
    out_path = check_output(out, sources=[stream.folder], overwrite=overwrite, what="output folder")
    check_free_space(out_path.parent, stream.output_bytes() + plan.disk_bytes,
                     f"The pruned checkpoint ({format_size(stream.output_bytes())})"
                     + (f" and the spilled activations ({format_size(plan.disk_bytes)})" if plan.disk_bytes else ""))
    log(f"Streaming {len(stream.blocks)} blocks on {stream.device} ({stream.dtype_name}); memory plan: {plan.describe()}"
        + (f" (budget {format_size(budget)})" if budget else ""))
    for note in plan.notes:
        log("Note: " + note)
    baseline = rss_bytes()
    block_s: list[float] = []
    spill = None
    report = report if report is not None else {}
    with output_folder(out_path, kind="export", sources=[stream.folder], overwrite=overwrite, log=log) as tmp:
        try:
            if plan.activations_on_disk:
                spill = Path(tempfile.mkdtemp(prefix=".activations-", dir=tmp))
            stream.spill = spill
            stream.writer = ShardWriter(tmp, len(stream.blocks) + 1)
            stream.block_seconds = []
            res = prune_model(stream.model, cfg, calibration, progress.sub(0, 0.95), contrast=contrast,
                              outlier_ratios=outlier_ratios, source=stream)
            block_s = list(stream.block_seconds)
            progress.update(0.96, 1, "Writing embeddings and the rest of the checkpoint")
            stream.write_rest()
            stream.writer.finish()
        finally:
            stream.writer = None
            stream.spill = None
            if spill is not None:
                shutil.rmtree(spill, ignore_errors=True)
        _check_output_index(stream, tmp)
        _write_config(stream, tmp)
        stream.tokenizer.save_pretrained(tmp)
        for name in ("generation_config.json",):
            if (stream.folder / name).is_file():
                shutil.copy2(stream.folder / name, tmp / name)
        peak = peak_rss_now()
        sp = StreamedPrune(res, out_path, plan, peak, baseline, block_s, time.perf_counter() - t0)
        _write_reports(stream, tmp, res, report, sp, write_more)
    progress.update(1, 1, f"Pruned checkpoint written to {out_path}")
    return sp


def _check_output_index(stream: BlockStream, folder: Path) -> None:
    """Every source tensor is in the output with its shape (a structural reload check that reads
    only the headers)."""
    index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]
    headers: dict[str, dict] = {}
    for name, info in stream.reader.tensors.items():
        f = index.get(name)
        if f is None:
            raise PolypruneError(f"The streamed output lacks the tensor {name}", "this is a bug; please report it")
        if f not in headers:
            headers[f] = read_header(folder / f)[0]
        if tuple(headers[f][name]["shape"]) != info.shape:
            raise PolypruneError(f"The streamed output has {name} in the wrong shape", "this is a bug; please report it")


def _write_config(stream: BlockStream, folder: Path) -> None:
    cfg = stream.config
    cfg.dtype = stream.dtype
    cfg.save_pretrained(folder)


def _write_reports(stream: BlockStream, tmp: Path, res: PruneResult, report: dict, sp: StreamedPrune,
                   write_more) -> None:
    from ..export import CARD_NAME, CONFIG_NAME, model_card
    from ..masks import model_signature, save_masks

    report["pruning"] = res.summary()
    report["memory"] = sp.memory_report()
    report.setdefault("model", {"name": str(stream.folder), "spec": str(stream.folder)})
    report["export"] = {"path": str(sp.path), "streamed": True, "shards": len(stream.blocks) + 1}
    save_masks(res, tmp / "masks.safetensors", model_signature(stream.model))
    report["masks"] = "masks.safetensors"
    if write_more is not None:
        write_more(tmp)
    clean = {k: v for k, v in report.items() if not k.startswith("_")}
    (tmp / "report.json").write_text(dumps(clean), encoding="utf-8")
    (tmp / CONFIG_NAME).write_text(dumps((report.get("recipe") or {}) | {"report": {k: v for k, v in clean.items()
                                                                                   if k != "recipe"}}), encoding="utf-8")
    (tmp / CARD_NAME).write_text(model_card(report), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# streamed evaluation: perplexity without the model in memory
# --------------------------------------------------------------------------------------------
#: Rows of scored positions sent through the LM head at once.
HEAD_ROWS = 2048
#: Vocabulary rows of the LM head read at once (bounds the float32 logits to ``HEAD_ROWS x 4096``).
HEAD_VOCAB_ROWS = 4096


def _final_hidden(stream: BlockStream, batches: list, inputs: BlockInputs) -> list[torch.Tensor]:
    """The base model's output (final norm applied) per batch, from the last block's outputs in
    ``inputs.hidden``: the base model is run with every block replaced by a pass-through that
    returns, at the last block, the stored output — so whatever the model does after its blocks
    (final norm, scaling) is its own code."""
    model = stream.model
    base = base_model(model)
    last = len(stream.blocks) - 1
    block = stream.open(last)
    out0 = inputs.calls[last][0].raw(block, inputs.hidden[0])
    as_tuple, width = isinstance(out0, (tuple, list)), (len(out0) if isinstance(out0, (tuple, list)) else 1)
    del out0
    stream.close(last)
    emb = model.get_input_embeddings()
    ids_all = torch.unique(torch.cat([b[0].reshape(-1) for b in batches]))
    rows = stream.reader.read_rows(stream.names[stream.embedding_key], ids_all, stream.dtype).to(stream.device)
    for k in stream.pre_keys:
        stream._load(k)
    compact = CompactEmbedding(emb, ids_all.to(stream.device), rows)
    model.set_input_embeddings(compact)
    results = []
    try:
        for b, (ids, att) in enumerate(batches):
            h = inputs.hidden[b]

            def make(i: int, h: torch.Tensor = h):
                def forward(*args, **kwargs):
                    x = args[0] if args else kwargs["hidden_states"]
                    v = h if i == last else x
                    return (v,) + (None,) * (width - 1) if as_tuple else v
                return forward

            for i, blk in enumerate(stream.blocks):
                blk.forward = make(i)
            try:
                o = base(input_ids=ids.to(stream.device), attention_mask=att.to(stream.device), use_cache=False)
            finally:
                for blk in stream.blocks:
                    if "forward" in blk.__dict__:
                        del blk.forward
            results.append((o.last_hidden_state if hasattr(o, "last_hidden_state") else o[0]).to("cpu"))
    finally:
        model.set_input_embeddings(compact.release())
        for k in stream.pre_keys:
            stream._unload(k)
    return results


def _head_name(stream: BlockStream) -> tuple[str, str | None]:
    """Checkpoint names of the LM head's weight (the embedding's when tied) and bias."""
    head = stream.model.get_output_embeddings()
    state = stream.model.state_dict(keep_vars=True)
    wkey = next(k for k, v in state.items() if v is head.weight)
    bkey = next((k for k, v in state.items() if getattr(head, "bias", None) is not None and v is head.bias), None)
    cfgm = stream.config
    tied = any(getattr(c, "tie_word_embeddings", False) for c in (cfgm, getattr(cfgm, "text_config", None)) if c is not None)
    if wkey not in stream.names and tied:
        return stream.names[stream.embedding_key], None
    if wkey not in stream.names:
        raise PolypruneError(f"Block streaming cannot find the LM head {wkey} in {stream.folder}",
                             "evaluate without --max-memory")
    return stream.names[wkey], (stream.names.get(bkey) if bkey else None)


def streamed_hidden(stream: BlockStream, batches: list, progress: Progress | None = None) -> list[torch.Tensor]:
    """The base model's output (``last_hidden_state``, final norm applied) for each batch
    ``(input_ids [B, T], attention_mask [B, T])``, on the CPU, with one block in memory at a time."""
    from .sequential import run

    holder: dict = {}

    def per_block(i, block, inputs) -> bool:
        holder["inputs"] = inputs[0]
        return False

    run(stream.model, [batches], per_block, ensure(progress), "Evaluating,", source=stream)
    return _final_hidden(stream, batches, holder["inputs"])


def head_logits(stream: BlockStream, rows: torch.Tensor, progress: Progress | None = None):
    """Yield ``(v0, r0, logits)``: float32 logits ``[<=HEAD_ROWS, <=HEAD_VOCAB_ROWS]`` of hidden ``rows``
    ``[R, d]`` (rows ``r0...``) for vocabulary entries ``v0...``, with the LM head read from the
    checkpoint in chunks (bias and final logit soft-capping applied as the model does)."""
    progress = ensure(progress)
    wname, bname = _head_name(stream)
    cfgm = stream.config
    cap = next((float(c.final_logit_softcapping) for c in (cfgm, getattr(cfgm, "text_config", None))
                if c is not None and getattr(c, "final_logit_softcapping", None) is not None), None)
    vocab = stream.reader.tensors[wname].shape[0]
    bias = stream.reader.read(bname, stream.dtype) if bname else None
    chunks = list(range(0, vocab, HEAD_VOCAB_ROWS))
    for n, v0 in enumerate(chunks):
        progress.update(n, len(chunks), "Applying the LM head")
        v1 = min(v0 + HEAD_VOCAB_ROWS, vocab)
        W = stream.reader.read_slice(wname, v0, v1, stream.dtype).to(stream.device)
        bb = bias[v0:v1].to(stream.device) if bias is not None else None
        for r0 in range(0, rows.shape[0], HEAD_ROWS):
            x = rows[r0:r0 + HEAD_ROWS].to(stream.device)
            logits = (x @ W.t() if bb is None else torch.addmm(bb, x, W.t())).float()
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            yield v0, r0, logits.cpu()
        del W
    progress.update(len(chunks), len(chunks), "LM head applied")


@torch.inference_mode()
def streamed_logits(folder: str | Path, input_ids: torch.Tensor, device: str = "cpu", dtype: str = "float32",
                    trust_remote_code: bool = False) -> torch.Tensor:
    """Logits ``[T, vocab]`` (float32) of one text ``input_ids`` ``[T]`` under the checkpoint in
    ``folder``, read one block at a time (a reload check that needs one block's memory)."""
    stream = BlockStream(folder, device, dtype, trust_remote_code)
    ids = input_ids.reshape(1, -1).to(torch.long)
    (h,) = streamed_hidden(stream, [(ids, torch.ones_like(ids))])
    rows = h[0]
    out = torch.empty(rows.shape[0], stream.reader.tensors[_head_name(stream)[0]].shape[0])
    for v0, r0, logits in head_logits(stream, rows):
        out[r0:r0 + logits.shape[0], v0:v0 + logits.shape[1]] = logits
    return out


@torch.inference_mode()
def streamed_loglikelihoods(stream: BlockStream, requests: list[tuple[list[int], list[int]]], batch_size: int = 8,
                            progress: Progress | None = None) -> list[tuple[float, int, bool]]:
    """:func:`polyprune.evaluation.engine.loglikelihoods` (ungrouped, no truncation) with one block
    in memory at a time: requests sorted by length (longest first) and batched, every block run over
    all batches, then the LM head applied in vocabulary chunks read from the checkpoint
    (``log p = logit - logsumexp``, accumulated chunk by chunk in float32). Equal to the in-memory
    numbers up to float rounding of the chunked log-sum-exp.

    Returns:
        ``(logprob_sum [nats], n_continuation_tokens, is_greedy)`` per request, in input order.
    """
    progress = ensure(progress)
    inputs_ids, targets = [], []
    for i, (ctx, cont) in enumerate(requests):
        if not ctx:
            raise ValueError(f"request {i} has an empty context; pass [bos_token_id] instead")
        tokens = list(ctx) + list(cont)
        inputs_ids.append(tokens[:-1])
        targets.append(list(cont))
    todo = sorted((i for i in range(len(requests)) if targets[i]), key=lambda i: -len(inputs_ids[i]))
    results: list = [(0.0, 0, True) if not targets[i] else None for i in range(len(requests))]
    if not todo:
        return results
    pad = getattr(stream.config, "pad_token_id", None)
    pad = pad if isinstance(pad, int) and pad >= 0 else 0
    batches, where = [], []  # where: per scored row (request, batch, position)
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        T = max(len(inputs_ids[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            L, C = len(inputs_ids[i]), len(targets[i])
            ids[b, :L] = torch.tensor(inputs_ids[i])
            att[b, :L] = 1
            where.extend((i, len(batches), b, p, t) for p, t in zip(range(L - C, L), targets[i]))
        batches.append((ids, att))
    final = streamed_hidden(stream, batches, progress.sub(0, 0.85))
    rows = torch.stack([final[bi][b, p] for _, bi, b, p, _ in where])  # [R, d]
    tgt = torch.tensor([t for *_, t in where], dtype=torch.long)
    del final
    R = rows.shape[0]
    lse = torch.full((R,), float("-inf"))
    tlog = torch.empty(R)
    best = torch.full((R,), float("-inf"))
    arg = torch.zeros(R, dtype=torch.long)
    for v0, r0, logits in head_logits(stream, rows, progress.sub(0.85, 1.0)):
        sl = slice(r0, r0 + logits.shape[0])
        v1 = v0 + logits.shape[1]
        lse[sl] = torch.logaddexp(lse[sl], torch.logsumexp(logits, 1))
        t = tgt[sl]
        inside = (t >= v0) & (t < v1)
        if bool(inside.any()):
            tlog[sl][inside] = logits[inside, t[inside] - v0]
        m, a = logits.max(1)
        better = m > best[sl]
        best[sl] = torch.where(better, m, best[sl])
        arg[sl] = torch.where(better, a + v0, arg[sl])
    lp = (tlog - lse).double()
    greedy = arg == tgt
    acc: dict[int, list] = {}
    for k, (i, *_rest) in enumerate(where):
        a = acc.setdefault(i, [0.0, 0, True])
        a[0] += float(lp[k]); a[1] += 1; a[2] = a[2] and bool(greedy[k])
    for i, (s_, n_, g_) in acc.items():
        results[i] = (s_, n_, g_)
    progress.update(1, 1, "Evaluated")
    return results


def streamed_flores_perplexity(stream: BlockStream, data_dir, languages: list[str], *, split: str = "devtest",
                               limit: int | None = None, batch_size: int = 8, bootstrap: int = 0, seed: int = 0,
                               item_scores: bool = False, progress: Progress | None = None) -> list:
    """:func:`polyprune.evaluation.perplexity.flores_perplexity` with one block in memory at a time,
    every language in one streamed pass (methods.md §5: token-level perplexity, sentence-bootstrap
    interval). Returns one ``flores_ppl`` :class:`~polyprune.evaluation.Result` per language."""
    from ..datasets import flores_dir as find_flores_dir, flores_file, read_flores
    from ..evaluation.engine import prefix_id, special_ids
    from ..evaluation.results import Result
    from ..evaluation.stats import perplexity_ci, seed_for
    from ..languages import resolve_language

    root = find_flores_dir(data_dir)
    codes = [lang if flores_file(root, split, lang) is not None else resolve_language(lang) for lang in languages]
    tok = stream.tokenizer
    special = special_ids(tok)
    requests, owner = [], []
    n_texts = {}
    for code in codes:
        texts = [s for s in read_flores(root, code, split, limit) if s.strip()]
        n_texts[code] = len(texts)
        for text in texts:
            ids = list(tok(text)["input_ids"])
            if not ids or ids[0] not in special:
                ids = [prefix_id(tok)] + ids
            if len(ids) >= 2:
                requests.append((ids[:1], ids[1:]))
                owner.append(code)
    res = streamed_loglikelihoods(stream, requests, batch_size, progress)
    out = []
    for code in codes:
        items = [(-r[0], int(r[1])) for r, o in zip(res, owner) if o == code]
        nll, tokens = sum(a for a, _ in items), sum(b for _, b in items)
        if not tokens:
            raise PolypruneError(f"No tokens to score in FLORES {code}", "check the data folder")
        lo = hi = None
        if bootstrap:
            lo, hi = perplexity_ci([a for a, _ in items], [b for _, b in items], iters=bootstrap,
                                   seed=seed_for(seed, "flores_ppl", code))
        extra = {"tokens": tokens, "nll": nll, "split": split, "streamed": True}
        if item_scores:
            extra["item_nll"] = [a for a, _ in items]
            extra["item_tokens"] = [b for _, b in items]
        out.append(Result("flores_ppl", code, "perplexity", math.exp(nll / tokens), lo, hi, n_texts[code], extra=extra))
    return out


# --------------------------------------------------------------------------------------------
# a recipe, streamed (``polyprune prune --max-memory``, ``max_memory:`` in a recipe)
# --------------------------------------------------------------------------------------------
def run_streamed(recipe, progress: Progress | None = None, log: Callable[[str], None] = print) -> dict:
    """:func:`polyprune.pipeline.run` for a recipe with ``max_memory``: the model is never loaded
    whole. Calibration → (dense FLORES perplexity, streamed) → streamed pruning into the output
    checkpoint → (pruned perplexity, streamed from the new shards before the folder is moved into
    place) → report. Feature magnitudes and the zero-shot tasks need the whole model and are
    refused up front (evaluate the pruned checkpoint afterwards with ``polyprune evaluate``).

    Raises:
        PolypruneError: as :func:`polyprune.pipeline.run`, plus a budget that cannot be met (before
            any weight is read), an unsupported evaluation, no output folder.
        Cancelled: nothing is written; the source is untouched.
    """
    from ..calibration import build
    from ..datasets import data_dir as resolve_data_dir, default_data_dir
    from ..evaluation import compare
    from ..export import write_report_folder
    from ..masks import model_signature
    from ..models import DEMO_META, DEMO_NAME, DEMO_SPEC, model_info
    from ..pipeline import calibration_report, check_recipe, versions

    progress = ensure(progress)
    t_start = time.perf_counter()
    budget = parse_size(recipe.max_memory)
    if recipe.features.enabled:
        raise PolypruneError("Feature magnitudes need the whole model and are not measured in a streamed run (--max-memory)",
                             "measure them with polyprune inspect, or leave out --max-memory")
    ev = recipe.evaluation
    if ev.xnli or ev.tasks:
        raise PolypruneError("A streamed run (--max-memory) evaluates FLORES perplexity only",
                             "leave out --eval-xnli/--tasks (evaluate the pruned checkpoint afterwards with polyprune "
                             "evaluate), or leave out --max-memory")
    if not recipe.out:
        raise PolypruneError("A streamed run writes the pruned checkpoint block by block and needs an output folder",
                             "give --out")
    torch.manual_seed(recipe.seed)
    out = check_recipe(recipe)
    if ev.ppl and ev.optional and not ev.data and default_data_dir() is None:
        log("No evaluation data found; skipping evaluation")
        ev = type(ev)(**{**asdict(ev), "ppl": []})
    data = resolve_data_dir(ev.data) if ev.ppl else None
    stream = open_stream(recipe.model, recipe.device, recipe.dtype, recipe.trust_remote_code, progress.sub(0, 0.02))
    meta = {"name": DEMO_NAME, **DEMO_META} if recipe.model == DEMO_SPEC else {"name": recipe.model}
    report: dict = {"recipe": recipe.to_dict(), "seed": recipe.seed, "versions": versions(),
                    "model": model_info(stream.model) | {"spec": recipe.model, "device": recipe.device,
                                                         "dtype": recipe.dtype, "path": str(stream.folder)} | meta}
    log(f"Model: {report['model']['architecture']}, {report['model']['n_blocks']} blocks, "
        f"{report['model']['parameters'] / 1e6:.1f}M parameters; streamed one block at a time")
    cfg = recipe.pruning
    cal = contrast = None
    if cfg.needs_calibration and (cfg.sparsity > 0 or cfg.layerwise == "owl"):
        cal = build(recipe.calibration_spec(), stream.tokenizer)
        report["calibration"] = calibration_report(cal)
        log(f"Calibration: {len(cal)} samples, {cal.n_tokens} tokens")
    if cfg.method == "wanda_refined":
        spec = recipe.contrast_spec()
        if spec is None:
            raise PolypruneError("The refined metric (wanda_refined) needs a contrast set",
                                 "set the contrast text (--contrast-text FILE), or use the wanda method")
        contrast = build(spec, stream.tokenizer)
    sets = [s for s in (cal, contrast) if s is not None]
    plan_memory(stream, cfg, sets, budget, cfg.batch_size).check(f"pruning {stream.folder.name} by streaming")
    timings: dict = {}
    dense = []
    if ev.ppl and ev.dense:
        t = time.perf_counter()
        log("Evaluating the dense model (streamed)")
        dense = streamed_flores_perplexity(stream, data, ev.ppl, split=ev.split, limit=ev.ppl_limit,
                                           batch_size=ev.batch_size, bootstrap=ev.bootstrap, seed=recipe.seed,
                                           progress=progress.sub(0.02, 0.3))
        timings["eval_dense_s"] = time.perf_counter() - t
    pruned: list = []

    def evaluate_output(tmp: Path) -> None:
        if not ev.ppl:
            return
        t = time.perf_counter()
        log("Evaluating the pruned model (streamed from the new shards)")
        out_stream = BlockStream(tmp, recipe.device, recipe.dtype, recipe.trust_remote_code)
        pruned.extend(streamed_flores_perplexity(out_stream, data, ev.ppl, split=ev.split, limit=ev.ppl_limit,
                                                 batch_size=ev.batch_size, bootstrap=ev.bootstrap, seed=recipe.seed,
                                                 progress=progress.sub(0.85, 0.99)))
        timings["eval_pruned_s"] = time.perf_counter() - t
        report["evaluation"] = compare(dense, pruned)
        report["evaluation_records"] = {"dense": [r.to_dict() for r in dense], "pruned": [r.to_dict() for r in pruned]}

    t = time.perf_counter()
    log(f"Pruning: {cfg.method}, {cfg.pattern}, sparsity {cfg.sparsity}")
    if recipe.export:
        sp = prune_streamed(stream, cfg, out, calibration=cal, contrast=contrast, max_memory=budget,
                            overwrite=recipe.overwrite, progress=progress.sub(0.3, 0.85), log=log, report=report,
                            write_more=evaluate_output)
        res = sp.result
    else:
        sp = None
        res = prune_model(stream.model, cfg, cal, progress.sub(0.3, 0.85), contrast=contrast, source=stream)
        report["pruning"] = res.summary()
        write_report_folder(out, report, recipe=recipe, masks=res, mask_model_info=model_signature(stream.model),
                            source=stream.folder, overwrite=recipe.overwrite, log=log)
    timings["prune_s"] = time.perf_counter() - t
    if sp is not None:
        mem = sp.memory_report()
        log(f"Pruned in {timings['prune_s']:.1f} s; sparsity {res.overall:.4f}; peak memory "
            f"{format_size(mem['peak_rss_bytes'])} ({format_size(mem['peak_above_baseline_bytes'])} above the "
            f"{format_size(mem['baseline_rss_bytes'])} the process held before; plan {format_size(mem['planned_bytes'])})")
    report["timings"] = timings | {"total_s": time.perf_counter() - t_start}
    report.setdefault("evaluation", [])
    progress.update(1, 1, "Done")
    report["_result"] = res
    return report
