"""Memory budgets: ``--max-memory 4GB`` parsed, a run's memory estimated up front, and measured.

A budget is decided before anything is loaded, from the model's shapes
(:func:`polyprune.pruning.streaming.plan_memory` fills a :class:`MemoryPlan`): when the plan does
not fit, the run stops with what it would take. The budget covers what grows with the model and
the calibration set (weights, activations, statistics, masks, working buffers); the process's
fixed overhead (Python, torch and transformers loaded, about 0.3-0.5 GB) is measured at the start
of a run (:func:`rss_bytes`) and reported beside it.

Sizes: ``GB``/``MB``/``KB`` are powers of 1000 (as accelerate's ``max_memory`` and disk vendors),
``GiB``/``MiB``/``KiB`` powers of 1024; a bare number is bytes. Standard library only: recipes
validate with it.
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import resource
import sys
from dataclasses import dataclass, field

from .errors import PolypruneError

UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
         "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(text) -> int:
    """``"4GB"`` -> 4_000_000_000; ``"1.5 GiB"``, ``"512MB"``, ``"2g"``, ``1000000`` (bytes).

    Raises:
        PolypruneError: not a size, or not positive.
    """
    if isinstance(text, bool):
        raise PolypruneError(f"The memory budget {text!r} is not a size", "write e.g. 4GB, 1.5GiB or 512MB")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).lower() not in UNITS:
            raise PolypruneError(f"The memory budget {text!r} is not a size", "write e.g. 4GB, 1.5GiB or 512MB")
        value, unit = float(m.group(1)), m.group(2).lower()
    n = int(value * UNITS[unit])
    if n <= 0:
        raise PolypruneError(f"The memory budget {text!r} is not positive", "write e.g. 4GB, 1.5GiB or 512MB")
    return n


def format_size(n: int | float) -> str:
    """Bytes as ``"1.23 GB"`` / ``"456 MB"`` / ``"12 kB"`` (powers of 1000, as :func:`parse_size`)."""
    n = float(n)
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            v = n / f
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n:.0f} B"


@dataclass
class MemoryPlan:
    """What a run keeps in memory at its peak, part by part, against a budget.

    Attributes:
        parts: ``{what: bytes}`` resident at the peak (e.g. ``"one block (float32)": 205_520_896``).
        budget: the budget in bytes (``None``: no budget).
        activations_on_disk: the calibration activations are kept in a temporary folder on disk.
        disk_bytes: disk space for those activations.
        notes: further lines for the report (what was decided and why).
    """

    parts: dict[str, int] = field(default_factory=dict)
    budget: int | None = None
    activations_on_disk: bool = False
    disk_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    def describe(self) -> str:
        """``"one block 206 MB + statistics 3 MB + ... = 450 MB"``."""
        return " + ".join(f"{k} {format_size(v)}" for k, v in self.parts.items() if v) + f" = {format_size(self.total)}"

    def to_dict(self) -> dict:
        return {"budget_bytes": self.budget, "planned_bytes": self.total, "parts": dict(self.parts),
                "activations_on_disk": self.activations_on_disk, "activation_disk_bytes": self.disk_bytes,
                "notes": list(self.notes)}

    def check(self, what: str = "this run") -> None:
        """Raise when the plan does not fit the budget, saying what it would take.

        Raises:
            PolypruneError: ``total > budget``.
        """
        if self.fits:
            return
        raise PolypruneError(f"A memory budget of {format_size(self.budget)} is too small for {what}: it needs "
                             f"{self.describe()}",
                             f"raise --max-memory (max_memory in a recipe) to at least {format_size(self.total * 1.02)}, "
                             "or use fewer calibration samples, a shorter calibration length or a smaller batch size")


def rss_bytes() -> int:
    """Resident memory of this process now (bytes)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes; ``ru_maxrss``, KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def peak_rss_now() -> int:
    """``VmHWM`` of this process (bytes): its peak resident memory since it started."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


_LIBC = None


def release_memory(device: str | None = None) -> None:
    """Give freed memory back to the system: garbage-collect, return glibc's free heap pages
    (``malloc_trim``; large frees otherwise stay in the process), and empty the CUDA cache."""
    global _LIBC
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            if _LIBC is None:
                _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim(0)
        except (OSError, AttributeError):
            pass
    if device is not None and str(device).startswith("cuda"):
        import torch
        torch.cuda.empty_cache()
