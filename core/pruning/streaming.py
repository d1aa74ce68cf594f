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
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..calibration import CalibrationSet, build
from ..checkpoint import ShardWriter, read_header
from ..datasets import data_dir as resolve_data_dir
from ..datasets import default_data_dir
from ..errors import PolypruneError
from ..evaluation import compare
from ..evaluation.streamed import streamed_flores_perplexity
from ..export import CARD_NAME, CONFIG_NAME, model_card, write_report_folder
from ..fileio import check_free_space, check_output, dumps, output_folder
from ..masks import model_signature, save_masks
from ..memory import MemoryPlan, format_size, parse_size, peak_rss_now, rss_bytes
from ..models import (
    DEMO_META,
    DEMO_NAME,
    DEMO_SPEC,
    model_info,
    prunable_linears,
    weight_matrix,
)
from ..pipeline import calibration_report, check_recipe, versions
from ..progress import Progress, ensure
from ..recipe import PruneConfig
from . import prune as prune_model
from .masking import SELECT_BYTES_PER_WEIGHT, SELECT_CHUNK_BYTES
from .records import PruneResult
from .stream_source import BlockStream, open_stream


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
