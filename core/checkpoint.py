"""Checkpoint tensors one at a time: read from safetensors shards, write output shards as they finish.

Block streaming (:mod:`polyprune.pruning.streaming`) never holds a whole model: it reads the
tensors of one decoder block when that block runs and writes the block to its output shard as soon
as it is done. This module does the file side of that, for the safetensors format that Hugging
Face checkpoints use (``model.safetensors``, or shards listed in ``model.safetensors.index.json``).

The format is simple and fixed: 8 bytes (little-endian u64) header length ``n``, ``n`` bytes of
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
tensor bytes (offsets relative to the end of the header). Tensors are read with plain positioned
file reads straight into a fresh tensor (:meth:`CheckpointReader.read`), not through a memory map,
so that bytes once read do not stay mapped into the process and count against its memory; and
written straight from the tensor's memory (:func:`write_safetensors`), with no serialised copy.
A file of shards with its index is what ``from_pretrained`` reads.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .errors import PolypruneError

#: safetensors dtype names -> torch dtypes.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
NAMES = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
#: Bytes read or written per chunk when a tensor is copied piecewise (64 MiB).
CHUNK_BYTES = 64 * 2 ** 20


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lies: ``file``, its safetensors ``dtype`` name, ``shape`` and absolute byte
    range ``[start, end)`` in the file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def read_header(path: str | Path) -> tuple[dict, int]:
    """``(header dict, byte offset of the data)`` of a safetensors file.

    Raises:
        PolypruneError: not a readable safetensors file.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 2 ** 20:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        raise PolypruneError(f"{p} is not a readable safetensors file ({e})",
                             "check that the checkpoint is complete (re-download or re-save it)") from None
    return header, 8 + n


class CheckpointReader:
    """Every tensor of a safetensors checkpoint folder, read on demand.

    Args:
        folder: a Hugging Face model folder with ``model.safetensors`` or
            ``model.safetensors.index.json`` and its shards.

    Attributes:
        tensors: ``{checkpoint name: TensorInfo}``.

    Raises:
        PolypruneError: no safetensors weights (e.g. only ``pytorch_model.bin``), a shard missing
            or unreadable.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise PolypruneError(f"Cannot read {index} ({e})", "check that the checkpoint is complete") from None
            files = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE).is_file():
            files = [SINGLE]
        else:
            others = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if len(others) == 1:
                files = others
            else:
                bins = sorted(p.name for p in self.folder.glob("*.bin"))
                raise PolypruneError(f"{self.folder} has no safetensors weights"
                                     + (f" (it has {', '.join(bins[:2])})" if bins else ""),
                                     "block streaming reads safetensors checkpoints: load the model once without "
                                     "--max-memory and save it (e.g. with polyprune export), or run without --max-memory")
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = self.folder / name
            if not path.is_file():
                raise PolypruneError(f"The checkpoint shard {path} is missing", "re-download or re-save the checkpoint")
            header, base = read_header(path)
            size = path.stat().st_size
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                b, e = meta["data_offsets"]
                if meta["dtype"] not in DTYPES or base + e > size:
                    raise PolypruneError(f"Tensor {key} in {path} has dtype {meta['dtype']} or lies past the end of the file",
                                         "check that the checkpoint is complete (re-download or re-save it)")
                self.tensors[key] = TensorInfo(path, meta["dtype"], tuple(int(s) for s in meta["shape"]), base + b, base + e)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def nbytes(self, names: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> int:
        """Bytes of the named tensors (all by default), as stored or as ``dtype`` (floating ones)."""
        total = 0
        for n in (self.tensors if names is None else names):
            info = self.tensors[n]
            if dtype is not None and info.torch_dtype.is_floating_point:
                total += info.numel * torch.empty((), dtype=dtype).element_size()
            else:
                total += info.nbytes
        return total

    def read(self, name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """The tensor ``name``, read into fresh memory (floating tensors cast to ``dtype``), on ``device``."""
        info = self.tensors[name]
        t = torch.empty(info.shape, dtype=info.torch_dtype)
        if info.nbytes:
            read_into(info.file, info.start, t)
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t.to(device) if str(device) != "cpu" else t

    def read_rows(self, name: str, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``rows`` (int64 ``[R]``, sorted, unique) of the 2-D tensor ``name``: ``[R, cols]`` on the CPU.

        Used to embed calibration tokens without reading a whole embedding matrix.
        """
        info = self.tensors[name]
        cols = info.shape[1]
        out = torch.empty((len(rows), cols), dtype=info.torch_dtype)
        row_bytes = cols * out.element_size()
        with open(info.file, "rb", buffering=0) as fh:
            for k, r in enumerate(rows.tolist()):
                _readinto(fh, info.start + r * row_bytes, out[k])
        if dtype is not None and out.is_floating_point() and out.dtype != dtype:
            out = out.to(dtype)
        return out

    def read_slice(self, name: str, r0: int, r1: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``[r0, r1)`` of the tensor ``name`` (along its first dimension), on the CPU."""
        info = self.tensors[name]
        out = torch.empty((r1 - r0,) + tuple(info.shape[1:]), dtype=info.torch_dtype)
        per_row = out[0].numel() * out.element_size() if r1 > r0 else 0
        if out.numel():
            read_into(info.file, info.start + r0 * per_row, out)
        if dtype is not None and out.is_floating_point() and out.dtype != dtype:
            out = out.to(dtype)
        return out

    def copy_to(self, name: str, fh, dtype: torch.dtype | None = None) -> None:
        """Write tensor ``name`` (cast to ``dtype`` when floating) to the open file ``fh``, in chunks of
        :data:`CHUNK_BYTES`, never holding the whole tensor."""
        info = self.tensors[name]
        src = info.torch_dtype
        item = torch.empty((), dtype=src).element_size()
        per = max(1, CHUNK_BYTES // item)
        with open(info.file, "rb", buffering=0) as inp:
            for a in range(0, info.numel, per):
                n = min(per, info.numel - a)
                chunk = torch.empty(n, dtype=src)
                _readinto(inp, info.start + a * item, chunk)
                if dtype is not None and chunk.is_floating_point() and chunk.dtype != dtype:
                    chunk = chunk.to(dtype)
                fh.write(_bytes_view(chunk))


def _bytes_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _readinto(fh, offset: int, t: torch.Tensor) -> None:
    view = _bytes_view(t)
    fh.seek(offset)
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise PolypruneError(f"{fh.name} ended early while reading a tensor", "check that the checkpoint is complete")
        got += n


def read_into(path: Path, offset: int, t: torch.Tensor) -> None:
    """Fill the contiguous CPU tensor ``t`` with the bytes at ``offset`` of ``path``."""
    with open(path, "rb", buffering=0) as fh:
        _readinto(fh, offset, t)


@dataclass
class Lazy:
    """A tensor written later by ``write(fh)`` (e.g. :meth:`CheckpointReader.copy_to`) with the given
    safetensors ``dtype`` name and ``shape``."""

    dtype: str
    shape: tuple[int, ...]
    write: Callable

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=DTYPES[self.dtype]).element_size()
        for s in self.shape:
            n *= int(s)
        return n


def write_safetensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> int:
    """Write ``{name: tensor | Lazy}`` as one safetensors file, in the given order, straight from the
    tensors' memory (no serialised copy). The file is written beside ``path`` and renamed into
    place last, so a reader never sees half a file. Returns the data bytes written.

    Raises:
        PolypruneError: the disk is full or the folder cannot be written.
    """
    p = Path(path)
    header: dict = {"__metadata__": {k: str(v) for k, v in (metadata or {"format": "pt"}).items()}}
    offset = 0
    for name, t in tensors.items():
        if isinstance(t, Lazy):
            dtype, shape, nbytes = t.dtype, list(t.shape), t.nbytes
        else:
            dtype, shape, nbytes = NAMES[t.dtype], list(t.shape), t.numel() * t.element_size()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for name, t in tensors.items():
                start = fh.tell()
                if isinstance(t, Lazy):
                    t.write(fh)
                else:
                    fh.write(_bytes_view(t))
                written = fh.tell() - start
                want = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
                if written != want:
                    raise RuntimeError(f"wrote {written} bytes for {name}, expected {want}")
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (28, 122):
            raise PolypruneError(f"The disk is full: could not write {p}", "free some disk space or choose another folder") from None
        raise PolypruneError(f"Could not write {p}: {e}", "check write permission and free disk space") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return offset


def shard_name(k: int, n: int) -> str:
    """Hugging Face shard file name ``model-0000k-of-0000n.safetensors`` (1-based ``k``)."""
    return f"model-{k:05d}-of-{n:05d}.safetensors"


class ShardWriter:
    """Output shards written one at a time, and the index that lists them.

    Args:
        folder: where the shards go (the temporary output folder).
        n_shards: how many shards the checkpoint will have (known up front, so names are final).
    """

    def __init__(self, folder: str | Path, n_shards: int):
        self.folder = Path(folder)
        self.n_shards = n_shards
        self.weight_map: dict[str, str] = {}
        self.sizes: dict[str, int] = {}

    def write(self, k: int, tensors: dict) -> Path:
        """Write shard ``k`` (1-based; replaces an earlier write of the same shard)."""
        name = shard_name(k, self.n_shards)
        for key in [key for key, v in self.weight_map.items() if v == name]:
            del self.weight_map[key]
        self.sizes[name] = write_safetensors(self.folder / name, tensors)
        for key in tensors:
            self.weight_map[key] = name
        return self.folder / name

    def finish(self) -> Path:
        """Write ``model.safetensors.index.json`` (every shard must have been written).

        Raises:
            RuntimeError: a shard was never written (a bug in the caller).
        """
        missing = [k for k in range(1, self.n_shards + 1) if shard_name(k, self.n_shards) not in self.sizes]
        if missing:
            raise RuntimeError(f"output shards {missing} were never written")
        index = {"metadata": {"total_size": sum(self.sizes.values())},
                 "weight_map": dict(sorted(self.weight_map.items()))}
        path = self.folder / INDEX
        path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return path
