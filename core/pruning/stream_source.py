"""The streamed model: a skeleton on the ``meta`` device that gets real weights one block at a time
(:class:`BlockStream`), and the store of calibration activations (memory or disk). See
:mod:`polyprune.pruning.streaming` for how a run uses them."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import NAMES, CheckpointReader, Lazy, ShardWriter
from ..errors import PolypruneError
from ..memory import release_memory
from ..models import DTYPES, base_model, find_blocks, resolve_local
from ..progress import Progress
from .sequential import BlockInputs
from .sequential import capture as capture_inputs


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
